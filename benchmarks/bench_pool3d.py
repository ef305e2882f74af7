"""3-D max pooling and trilinear upsampling on a segmentation-sized volume batch (2, 32, 64, 64, 64),
float32: the numpy and numba flavours' kernels and PyTorch eager, in one process.

max_pool3d: 2x2x2 windows, stride 2 (forward: y and argmax; backward: gx from gy and argmax).
interpolate: trilinear, scale factor 2, align_corners False (output (2, 32, 128, 128, 128)).
Every contender is first checked against the numpy_cpu kernel. Memory-bound: `gb_s` in extra_info
counts each array read or written once. PyTorch rows are skipped, never faked, without PyTorch.
`python -m benchmarks.bench_pool3d --runs 3` interleaves the contenders round-robin and prints the
median of each and the ratios (per run, then their median) to numpy and to PyTorch.
"""

from __future__ import annotations

import argparse
import functools
import time

import numpy as np
import pytest

from benchmarks import harness
from kernels import numpy_cpu

SHAPE = (2, 32, 64, 64, 64)
POOL = ((2, 2, 2), (2, 2, 2), (0, 0, 0))  # kernel_size, stride, padding
UP = ((128, 128, 128), "trilinear", False, (2.0, 2.0, 2.0))  # size, mode, align_corners, scales
NAMES = ["max_pool3d_forward", "max_pool3d_backward", "interpolate_forward", "interpolate_backward"]
CONTENDERS = [*harness.cpu_flavours(), "torch"]


@functools.cache
def _arrays():
    """x, the pool's gy and argmax, and the upsampling's gy (float32, seeded)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SHAPE, dtype=np.float32)
    y, argmax = numpy_cpu.max_pool3d_forward(x, *POOL)
    gy_pool = rng.standard_normal(y.shape, dtype=np.float32)
    gy_up = rng.standard_normal((*SHAPE[:2], *UP[0]), dtype=np.float32)
    return x, gy_pool, argmax, gy_up


def _args(name: str) -> tuple:
    x, gy_pool, argmax, gy_up = _arrays()
    return {
        "max_pool3d_forward": (x, *POOL),
        "max_pool3d_backward": (gy_pool, argmax, SHAPE, *POOL),
        "interpolate_forward": (x, *UP),
        "interpolate_backward": (gy_up, SHAPE, *UP[1:]),
    }[name]


def _moved(name: str) -> int:
    """Bytes each call must read and write at least once."""
    x, gy_pool, argmax, gy_up = _arrays()
    pool = harness.nbytes(x, gy_pool, argmax)  # forward: x -> y, argmax; backward the reverse
    return {"max_pool3d_forward": pool, "max_pool3d_backward": pool}.get(
        name, x.nbytes + gy_up.nbytes
    )


@functools.cache
def reference(name: str):
    """The numpy_cpu kernel's result: what every contender must match."""
    return numpy_cpu.REFERENCE[name](*_args(name))


def _torch_call(torch, name: str):
    """A zero-argument call doing `name`'s work in PyTorch eager (backward: autograd.grad on a
    retained graph, so only the backward runs), and how to compare its result with ours."""
    tf = torch.nn.functional
    x, gy_pool, _, gy_up = (torch.from_numpy(a) for a in _arrays())
    if name.startswith("max_pool3d"):
        op = functools.partial(tf.max_pool3d, kernel_size=2, stride=2)
        gy = gy_pool
    else:
        op = functools.partial(tf.interpolate, scale_factor=2.0, mode="trilinear")
        gy = gy_up
    if name.endswith("forward"):
        return lambda: op(x).numpy()
    xg = x.clone().requires_grad_(True)
    y = op(xg)
    return lambda: torch.autograd.grad(y, xg, gy, retain_graph=True)[0].numpy()


def call(who: str, name: str):
    """Zero-argument callable of contender `who` ("numpy", "numba" or "torch") for kernel `name`;
    pytest skips the torch rows where PyTorch is not installed."""
    if who == "torch":
        torch = harness.import_torch()
        if torch is None:
            pytest.skip("PyTorch is not installed: no comparison row")
        return _torch_call(torch, name)
    fn, args = harness.kernel(who, name), _args(name)
    return lambda: fn(*args)


def check(who: str, name: str, fn) -> None:
    """A fast wrong kernel is worthless: y (and gx) against numpy_cpu's (argmax as well, ours)."""
    got, ref = fn(), reference(name)
    if who == "torch" and name == "max_pool3d_forward":
        ref = ref[0]  # torch's forward returns y only
    harness.assert_close(got, ref, f"{who}:{name}")


@pytest.mark.parametrize("who", CONTENDERS)
@pytest.mark.parametrize("name", NAMES)
def test_pool3d_interpolate(benchmark, gemm_ceiling, who, name):
    fn = call(who, name)
    check(who, name, fn)
    benchmark.pedantic(fn, rounds=5, warmup_rounds=1, iterations=1)
    benchmark.extra_info.update(
        harness.extra_info(
            benchmark.stats.stats.median, 0, _moved(name), gemm_ceiling, contender=who
        )
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="interleaved rounds per contender")
    parser.add_argument("--names", default=",".join(NAMES), help="comma-separated kernel names")
    args = parser.parse_args(argv)
    for key, value in harness.environment().items():
        print(f"{key}: {value}")
    who_all = [w for w in CONTENDERS if w != "torch" or harness.import_torch() is not None]
    print(f"shape {SHAPE} float32, {args.runs} interleaved runs: median ms per call; Nx base =")
    print("base time / this time (above 1: faster than base)")
    for name in args.names.split(","):
        calls = {who: call(who, name) for who in who_all}
        for who, fn in calls.items():
            check(who, name, fn)
        runs = {who: [] for who in calls}
        for _ in range(args.runs):
            for who, fn in calls.items():
                time.sleep(0.3)  # let idle BLAS/OpenMP workers stop spinning before the next one
                runs[who].append(float(np.median(harness.time_calls(fn, warmup=1, repeat=3))))
        for who, seconds in runs.items():
            t = np.array(seconds)
            row = f"{name:22s} {who:6s} {np.median(t) * 1e3:9.1f} ms"
            for base in ("numpy", "torch"):
                if base in runs and base != who:
                    row += f"  {np.median(np.array(runs[base]) / t):6.2f}x {base}"
            print(row)


if __name__ == "__main__":
    main()
