"""Norm + ReLU forward and backward per call on the numba_cpu flavour, before vs after issue 12:
instance norm on the block stack's shape (2, 32, 64^3) and batch norm on the ResNet-18 step's
shapes (batch 32, 64x64 images, width 64), float32, at 1 and 2 threads.

    python -m benchmarks.bench_norm [--rounds 5] [--threads 1 2]

Contenders, interleaved round by round in one process (a neighbour's load hits all alike):
- before: benchmarks/norm_before.py (the kernels as they were: one task per slice), instance
  norm's affine weight in NumPy outside the kernels, the ReLU as its own forward and backward;
- unfused: today's kernels (slices chunked over the threads, instance norm's weight tiled per
  slice into the kernels), the ReLU still separate (Sequential.fuse = False);
- fused: norm_relu_forward / norm_relu_backward (Sequential's BatchNorm / InstanceNorm -> ReLU).
Each call is a training step's norm work: moments, forward, then backward with a fixed gy. The
outputs of the three are checked against each other before timing. Figures: the median over the
rounds of the mean wall ms per call (small shapes repeat calls to at least 50 ms per timing), and
in parentheses the process's CPU ms per call (all threads: less sensitive to a loaded machine).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from benchmarks import norm_before as old
from kernels.numba_cpu import elementwise as act
from kernels.numba_cpu import norm as new

EPS = 1e-5
SHAPES = [  # label, x shape, instance norm? (else batch norm)
    ("IN blocks level 1", (2, 32, 64, 64, 64), True),
    ("IN blocks level 2", (2, 64, 32, 32, 32), True),
    ("BN resnet stem", (32, 64, 32, 32), False),
    ("BN resnet layer1", (32, 64, 16, 16), False),
    ("BN resnet layer2", (32, 128, 8, 8), False),
    ("BN resnet layer3", (32, 256, 4, 4), False),
]


def _view(x, instance: bool):
    n, c = x.shape[:2]
    return x.reshape(1, n * c, -1) if instance else x.reshape(n, c, -1)


def before(x, gy, w, b, instance):
    """The pre-issue-12 path of InstanceNormFn / BatchNormFn, then ReLUFn."""
    x3, g3 = _view(x, instance), _view(gy, instance)
    mean, var = old.norm_moments(x3)
    rstd = 1 / np.sqrt(var + EPS)
    if instance:  # GroupNormFn's _affine_forward / _affine_backward on (n, c, s)
        n, c = x.shape[:2]
        xhat = old.norm_forward(x3, mean, rstd, None, None).reshape(n, c, -1)
        y = act.relu_forward(xhat * w[:, None] + b[:, None])
        g = act.relu_backward(gy, y.reshape(gy.shape)).reshape(xhat.shape)
        gw, gb = (g * xhat).sum(axis=(0, 2)), g.sum(axis=(0, 2))
        gx = old.norm_backward((g * w[:, None]).reshape(x3.shape), x3, mean, rstd, None)[0]
        return y.reshape(x.shape), gx, gw, gb
    y = act.relu_forward(old.norm_forward(x3, mean, rstd, w, b))
    gx, gw, gb = old.norm_backward(act.relu_backward(g3, y), x3, mean, rstd, w)
    return y, gx, gw, gb


def after(x, gy, w, b, instance, fused):
    """Today's InstanceNormFn / BatchNormFn: relu separate, or the fused kernels."""
    x3, g3 = _view(x, instance), _view(gy, instance)
    n = x.shape[0]
    mean, var = new.norm_moments(x3)
    rstd = 1 / np.sqrt(var + EPS)
    if instance:
        w, b = np.tile(w, n), np.tile(b, n)
    if fused:
        y = new.norm_relu_forward(x3, mean, rstd, w, b)
        gx, gw, gb = new.norm_relu_backward(g3, y, x3, mean, rstd, w)
    else:
        y = act.relu_forward(new.norm_forward(x3, mean, rstd, w, b))
        gx, gw, gb = new.norm_backward(act.relu_backward(g3, y), x3, mean, rstd, w)
    if instance:
        gw, gb = gw.reshape(n, -1).sum(axis=0), gb.reshape(n, -1).sum(axis=0)
    return y, gx, gw, gb


CONTENDERS = {
    "before": before,
    "unfused": lambda *a: after(*a, fused=False),
    "fused": lambda *a: after(*a, fused=True),
}


def _check(results: dict) -> None:
    ref = results["before"]
    for who, got in results.items():
        for name, a, r in zip(("y", "gx", "gw", "gb"), got, ref, strict=True):
            scale = float(np.abs(r).max()) or 1.0
            err = float(np.abs(a.reshape(r.shape) - r).max()) / scale
            assert err < 1e-3, f"{who} {name}: max error {err:.2e} of the max"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = p.parse_args(argv)
    print(f"load: {os.getloadavg()} (1, 5, 15 min) on {os.cpu_count()} CPUs")
    rng = np.random.default_rng(0)
    for label, shape, instance in SHAPES:
        c = shape[1]
        x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
        gy = rng.standard_normal(shape).astype(np.float32)
        w, b = rng.uniform(0.5, 1.5, c).astype(np.float32), rng.standard_normal(c).astype("f4")
        for threads in args.threads:
            os.environ["NUMBA_NUM_THREADS"] = str(threads)  # read by run_tasks on every call
            _check({who: fn(x, gy, w, b, instance) for who, fn in CONTENDERS.items()})
            t0 = time.perf_counter()
            before(x, gy, w, b, instance)
            reps = max(1, int(0.05 / (time.perf_counter() - t0)))  # calls per timing: >= 50 ms
            times = {who: [] for who in CONTENDERS}
            cpu = {who: [] for who in CONTENDERS}
            for _ in range(args.rounds):
                for who, fn in CONTENDERS.items():
                    t0, c0 = time.perf_counter(), time.process_time()
                    for _ in range(reps):
                        fn(x, gy, w, b, instance)
                    times[who].append((time.perf_counter() - t0) / reps)
                    cpu[who].append((time.process_time() - c0) / reps)
            med = {who: float(np.median(t)) * 1e3 for who, t in times.items()}
            cpu_med = {who: float(np.median(t)) * 1e3 for who, t in cpu.items()}
            print(
                f"{label:18s} {str(shape):22s} {threads} thr: "
                + "  ".join(f"{who} {med[who]:6.1f} ({cpu_med[who]:6.1f})" for who in med)
                + f"  before/fused {med['before'] / med['fused']:.2f}x"
                + f" ({cpu_med['before'] / cpu_med['fused']:.2f}x)"
            )
    print(f"load: {os.getloadavg()}")


if __name__ == "__main__":
    main()
