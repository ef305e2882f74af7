"""Convolution kernels per flavour: the seed CNN's two conv layers at batch 64 and 256, one larger.

Run with `make bench` or `pytest benchmarks/bench_conv.py --benchmark-only`.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import harness

SHAPES = [  # label, x shape, W shape (stride 1, no padding unless given)
    *[(f"seed_conv1_b{b}", (b, 1, 28, 28), (32, 1, 3, 3), (0, 0)) for b in (64, 256)],
    *[(f"seed_conv2_b{b}", (b, 32, 13, 13), (64, 32, 3, 3), (0, 0)) for b in (64, 256)],
    ("large_b32_64x32x32_pad1", (32, 64, 32, 32), (128, 64, 3, 3), (1, 1)),
]
PASSES = ["conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight"]


def _args(name, xs, ws, pad):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xs).astype(np.float32)
    W = rng.standard_normal(ws).astype(np.float32) * 0.1
    oh, ow = xs[2] + 2 * pad[0] - ws[2] + 1, xs[3] + 2 * pad[1] - ws[3] + 1
    gy = rng.standard_normal((xs[0], ws[0], oh, ow)).astype(np.float32)
    b = np.zeros(ws[0], np.float32)
    args = {
        "conv2d_forward": (x, W, b, (1, 1), pad),
        "conv2d_backward_input": (gy, W, xs, (1, 1), pad),
        "conv2d_backward_weight": (gy, x, ws[2:], (1, 1), pad),
    }[name]
    return args, harness.conv_flops(xs, ws, gy.shape), harness.nbytes(x, W, gy)


@pytest.mark.parametrize("flavour", harness.cpu_flavours())
@pytest.mark.parametrize("name", PASSES)
@pytest.mark.parametrize("label,xs,ws,pad", SHAPES, ids=[s[0] for s in SHAPES])
def test_conv(benchmark, gemm_ceiling, flavour, name, label, xs, ws, pad):
    args, flops, moved = _args(name, xs, ws, pad)
    harness.run_kernel(benchmark, flavour, name, args, flops, moved, gemm_ceiling)
