"""A ResNet-18 training step with batch norm, 64x64 images, batch 32: the numpy and numba flavours
and PyTorch eager (torch.set_num_threads(2)) in one process, interleaved round by round, so a
neighbour's load hits every contender alike. First losses are checked to agree before timing.

    python -m benchmarks.bench_resnet [--width 64] [--batch 32] [--size 64] [--rounds 5] [--before]

--before adds "numba_before": the numba flavour with its tap-GEMM conv2d path switched off
(kernels/numba_cpu/conv.py TAPS_MAX_PIXELS and TAPS_GX_MAX_PIXELS 0: Winograd and the chunked
GEMM instead), the tree before that change, interleaved. (Until that change, --before switched
off the register-blocked direct path instead; benchmarks/README says which run used which.)

One step = zero_grad, forward (training-mode batch norm), cross-entropy, backward, SGD update
(lr 0: every timed step does the same work on the same weights; see benchmarks/seed_step.py).
"""

from __future__ import annotations

import argparse
import os

import numpy as np

import models
from benchmarks import harness
from benchmarks.seed_step import EngineStep, TorchStep
from engine import optim


def _data(batch: int, size: int):
    rng = np.random.default_rng(0)
    return rng.standard_normal((batch, 1, size, size)).astype(np.float32), rng.integers(0, 2, batch)


class EngineResNet(EngineStep):
    """resnet18_2d on one kernel flavour ("numpy" | "numba"); the step is the seed CNN's."""

    def __init__(self, flavour: str, width: int, batch: int, size: int):
        self.flavour, self.program = flavour, True  # as a training program runs (seed_step)
        self.model = models.get("resnet18_2d", width=width, rng=np.random.default_rng(0))
        self.opt = optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.opt.lr = 0.0  # weights frozen (the optimizer refuses lr 0 when built)
        self.x, self.t = _data(batch, size)


class BeforeNumbaResNet(EngineResNet):
    """The numba flavour without the tap-GEMM conv2d path (Winograd and chunked GEMM there)."""

    SWITCHES = ("TAPS_MAX_PIXELS", "TAPS_GX_MAX_PIXELS")

    def train_step(self) -> float:
        from kernels.numba_cpu import conv

        saved = {name: getattr(conv, name) for name in self.SWITCHES}
        for name in self.SWITCHES:
            setattr(conv, name, 0)
        try:
            return super().train_step()
        finally:
            for name, value in saved.items():
                setattr(conv, name, value)


class TorchResNet(TorchStep):
    """The same network and weights in PyTorch eager, float32; the step is the seed CNN's."""

    def __init__(self, torch, width: int, batch: int, size: int):
        from tests.models.test_resnet import torch_resnet18

        self.torch = torch
        self.model = torch_resnet18(torch, 1, 2, width).float()
        state = models.get("resnet18_2d", width=width, rng=np.random.default_rng(0)).state_dict()
        self.model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.0, momentum=0.9)
        x, t = _data(batch, size)
        self.x, self.t = torch.from_numpy(x), torch.from_numpy(t)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=64, help="64: torchvision's resnet18")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--before", action="store_true", help="add numba without the tap-GEMM conv2d")
    args = p.parse_args(argv)
    for key, value in harness.environment().items():
        print(f"{key}: {value}")
    print(f"load: {os.getloadavg()} (1, 5, 15 min) on {os.cpu_count()} CPUs")
    shape = (args.width, args.batch, args.size)
    steps = {f: EngineResNet(f, *shape) for f in harness.cpu_flavours()}
    if args.before and "numba" in steps:
        steps["numba_before"] = BeforeNumbaResNet("numba", *shape)
    torch = harness.import_torch()
    if torch is not None:
        steps["torch"] = TorchResNet(torch, *shape)
    first, times = harness.interleaved_steps(steps, args.rounds)
    median = {who: float(np.median(t)) for who, t in times.items()}
    print(
        f"resnet18_2d width {args.width}, batch {args.batch}, {args.size}x{args.size}, "
        f"{args.rounds} interleaved rounds, first loss {first['numpy']:.5f}"
    )
    for who, t in times.items():
        p10, p90 = np.percentile(t, [10, 90])
        print(
            f"  {who:11s} median {median[who]:.3f} s/step (p10 {p10:.3f}, p90 {p90:.3f}), "
            f"{args.batch / median[who]:.1f} img/s"
        )
    if "numba" in median:
        print(f"  numba vs numpy: {median['numpy'] / median['numba']:.2f}x faster")
        if "torch" in median:
            print(
                f"  numba vs torch eager: {median['torch'] / median['numba']:.2f}x "
                "(>= 1 means as fast or faster)"
            )
        if "numba_before" in median:
            print(f"  numba vs numba_before: {median['numba_before'] / median['numba']:.2f}x")


if __name__ == "__main__":
    main()
