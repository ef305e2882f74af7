"""3-D convolution training steps (forward + backward, 3x3x3, padding 1, float32): the numpy and
numba flavours and PyTorch eager (2 threads) in one process.

    pytest benchmarks/bench_conv3d.py --benchmark-only        # pytest-benchmark, one row each
    python -m benchmarks.bench_conv3d --runs 3                 # interleaved rounds, with ratios

Workloads: an interior layer (2, 32, 32^3) -> 64 channels (gx, gW, gb) and a first layer
(2, 1, 64^3) -> 64 channels (gW, gb: the input is data, as in a training step). Every contender's
output and gradients are first checked against the numpy flavour's on the same data; PyTorch's
rows are skipped (never faked) where it is not installed. The numpy flavour runs with NumPy's BLAS
on 2 threads (seed_step.blas_threads), the numba flavour with its own threads and BLAS on one.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pytest

from benchmarks import harness
from benchmarks.seed_step import blas_threads

WORKLOADS = {  # label: x shape, out channels, input gradient wanted
    "interior_b2_c32_32cube_to64": ((2, 32, 32, 32, 32), 64, True),
    "first_b2_c1_64cube_to64": ((2, 1, 64, 64, 64), 64, False),
}
SETTLE_S = 0.3  # idle BLAS / OpenMP workers spin ~0.1 s after a call (see compare.py)


class EngineConv3dStep:
    """y = conv3d(x, W, b, padding=1); y.backward(gy) on one engine flavour; returns the arrays."""

    def __init__(self, flavour: str, label: str):
        from engine import Tensor, backend

        self.backend = backend
        self.flavour = flavour
        xs, oc, self.need_gx = WORKLOADS[label]
        x, W, gy = _data(xs, oc)
        self.x = Tensor(x, requires_grad=self.need_gx)
        self.W = Tensor(W, requires_grad=True)
        self.b = Tensor(np.zeros(oc, np.float32), requires_grad=True)
        self.gy = gy

    def step(self):
        import engine.functional as F

        with self.backend.use_kernels(self.flavour), blas_threads(self.flavour):
            for t in (self.x, self.W, self.b):
                t.grad = None
            y = F.conv3d(self.x, self.W, self.b, padding=1)
            y.backward(self.gy)
        return y.data, self.W.grad, self.b.grad, self.x.grad


class TorchConv3dStep:
    """The same step in PyTorch eager (torch.set_num_threads(2))."""

    def __init__(self, torch, label: str):
        self.torch = torch
        xs, oc, need_gx = WORKLOADS[label]
        x, W, gy = _data(xs, oc)
        self.x = torch.tensor(x, requires_grad=need_gx)
        self.W = torch.tensor(W, requires_grad=True)
        self.b = torch.zeros(oc, requires_grad=True)
        self.gy = torch.tensor(gy)

    def step(self):
        for t in (self.x, self.W, self.b):
            t.grad = None
        y = self.torch.nn.functional.conv3d(self.x, self.W, self.b, padding=1)
        y.backward(self.gy)
        grads = (self.W.grad, self.b.grad, self.x.grad)
        return (y.detach().numpy(), *(None if g is None else g.numpy() for g in grads))


def _data(xs, oc):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xs).astype(np.float32)
    W = (rng.standard_normal((oc, xs[1], 3, 3, 3)) * 0.1).astype(np.float32)
    gy = rng.standard_normal((xs[0], oc, *xs[2:])).astype(np.float32)
    return x, W, gy


def flops(label: str) -> int:
    """2 multiply-adds per tap and output value, per pass: forward, gW, and gx where wanted."""
    xs, oc, need_gx = WORKLOADS[label]
    one = 2 * xs[0] * oc * int(np.prod(xs[2:])) * xs[1] * 27  # padding 1: output size = input's
    return one * (3 if need_gx else 2)


def contender(who: str, label: str, torch=None):
    if who == "torch":
        return TorchConv3dStep(torch, label)
    return EngineConv3dStep(who, label)


CONTENDERS = [*harness.cpu_flavours(), "torch"]


@pytest.mark.parametrize("who", CONTENDERS)
@pytest.mark.parametrize("label", list(WORKLOADS))
def test_conv3d_step(benchmark, gemm_ceiling, who, label):
    torch = harness.import_torch() if who == "torch" else None
    if who == "torch" and torch is None:
        pytest.skip("PyTorch is not installed: no comparison row")
    step = contender(who, label, torch)
    reference = EngineConv3dStep("numpy", label).step()
    harness.assert_close(step.step(), reference, f"{who} {label}")
    benchmark.pedantic(step.step, rounds=3 if who == "numpy" else 8, warmup_rounds=1, iterations=1)
    seconds = benchmark.stats.stats.median
    benchmark.extra_info.update(
        harness.extra_info(seconds, flops(label), 0, gemm_ceiling, contender=who)
    )


def main(argv=None) -> None:
    """Interleaved rounds: each contender's median step per round, then ratios per round."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round (default 5)")
    args = parser.parse_args(argv)
    torch = harness.import_torch()
    for key, value in harness.environment().items():
        print(f"# {key}: {value}")
    for label in WORKLOADS:
        steps = {who: contender(who, label, torch) for who in CONTENDERS if who != "torch" or torch}
        reference = steps["numpy"].step()
        for who, s in steps.items():
            harness.assert_close(s.step(), reference, f"{who} {label}")
        rows = {who: [] for who in steps}
        for _ in range(args.runs):
            for who, s in steps.items():
                time.sleep(SETTLE_S)
                repeat = 1 if who == "numpy" else args.steps  # numpy: seconds per step
                rows[who].append(
                    float(np.median(harness.time_calls(s.step, warmup=1, repeat=repeat)))
                )
        print(f"\n{label}: {flops(label) / 1e9:.1f} GFLOP per step; median s [min-max], ratios")
        for who, t in rows.items():
            t = np.array(t)
            ratios = {o: np.median(np.array(rows[o]) / t) for o in rows if o != who}
            told = ", ".join(f"{r:.2f}x {o}" for o, r in ratios.items())
            print(f"  {who:6s} {np.median(t):.3f} s [{t.min():.3f}-{t.max():.3f}]  {told}")


if __name__ == "__main__":
    main()
