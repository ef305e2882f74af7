"""Where a seed-CNN training step's time goes: wall time per named kernel and per op, one flavour.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.profile_step --batch 256

Every kernel of the flavour's table and every Function's forward/backward is wrapped with a timer
(for this process only); kernel time is nested inside its op's time. The remainder ("outside ops")
is graph bookkeeping, Tensor wrapping, the loss and the optimizer loop in Python.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np

from benchmarks import harness
from benchmarks.seed_step import EngineStep
from engine import backend
from engine.function import Function

_totals: dict[str, float] = defaultdict(float)
_live: dict[tuple, list] = defaultdict(list)  # fused block (gy shape) -> fraction of live windows


def _timed(label: str, fn, by_shape: bool = False):
    """fn wrapped to add its wall time to _totals[label] (label + the first argument's shape
    when by_shape: kernels are told apart per layer)."""

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            key = f"{label} {tuple(args[0].shape)}" if by_shape and args else label
            _totals[key] += time.perf_counter() - t0

    return wrapper


def _instrument(flavour: str) -> None:
    """Wrap the flavour's kernels and every Function subclass's forward/backward with timers."""
    with backend.use_kernels(flavour):
        k = backend.backend_for("cpu").k
    for name, fn in list(vars(k).items()):
        setattr(k, name, _timed(f"kernel {name}", fn, by_shape=True))
    fused_backward = k.conv2d_relu_max_pool2d_backward

    def spy(gy, y, *args):
        # the share of pooling windows that pass a gradient (ReLU alive): what the numba
        # flavour's window-driven backward costs in proportion to
        _live[tuple(gy.shape)].append(float((y > 0).mean()))
        return fused_backward(gy, y, *args)

    k.conv2d_relu_max_pool2d_backward = spy
    stack = list(Function.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        for method in ("forward", "backward"):
            if method in vars(cls):
                setattr(cls, method, _timed(f"op {cls.__name__}.{method}", vars(cls)[method]))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flavour", default="numba", help="kernel flavour (default numba)")
    parser.add_argument("--batch", type=int, default=256, help="batch size (default 256)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    parser.add_argument("--infer", action="store_true", help="profile inference instead")
    args = parser.parse_args(argv)
    harness.tune_malloc()
    step = EngineStep(args.flavour, args.batch)
    fn = step.infer if args.infer else step.train_step
    for _ in range(3):  # compile and warm up before instrumenting
        fn()
    _instrument(args.flavour)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    total = sum(times)
    print(
        f"{args.flavour} b{args.batch} {'infer' if args.infer else 'train'}: median step "
        f"{1e3 * np.median(times):.1f} ms ({args.batch / np.median(times):,.0f} img/s)"
    )
    ops = sum(v for key, v in _totals.items() if key.startswith("op "))
    for key, v in sorted(_totals.items(), key=lambda kv: -kv[1]):
        print(f"{100 * v / total:5.1f}%  {1e3 * v / args.steps:7.2f} ms  {key}")
    print(
        f"{100 * (total - ops) / total:5.1f}%  {1e3 * (total - ops) / args.steps:7.2f} ms  "
        "outside ops (bookkeeping, optimizer loop)"
    )
    for shape, fractions in _live.items():
        print(f"pooling windows passing a gradient, block {shape}: {np.mean(fractions):.1%}")


if __name__ == "__main__":
    main()
