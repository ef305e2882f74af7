"""Pooling and ReLU kernels per flavour on the seed CNN's activations (batch 64, 256) and one larger.

Memory-bound: the figure that matters is GB/s (`gb_s` in extra_info); FLOPs count one per
comparison or addition.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import harness
from kernels import numpy_cpu

SHAPES = [  # label, activation shape before pooling
    *[(f"seed_act1_b{b}", (b, 32, 26, 26)) for b in (64, 256)],
    *[(f"seed_act2_b{b}", (b, 64, 11, 11)) for b in (64, 256)],
    ("large_b32_64x56x56", (32, 64, 56, 56)),
]
K = ((2, 2), (2, 2), (0, 0))  # kernel_size, stride, padding of the seed CNN's pools


def _args(name, shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    y, argmax = numpy_cpu.max_pool2d_forward(x, *K)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    table = {
        "max_pool2d_forward": ((x, *K), x.size, harness.nbytes(x, y, argmax)),
        "max_pool2d_backward": ((gy, argmax, shape, *K), 0, harness.nbytes(gy, argmax, x)),
        "avg_pool2d_forward": ((x, *K), x.size, harness.nbytes(x, y)),
        "avg_pool2d_backward": ((gy, shape, *K), x.size, harness.nbytes(gy, x)),
        "relu_forward": ((x,), x.size, 2 * x.nbytes),
        "relu_backward": ((x, np.maximum(x, 0)), x.size, 3 * x.nbytes),
    }
    return table[name]


@pytest.mark.parametrize("flavour", harness.cpu_flavours())
@pytest.mark.parametrize(
    "name",
    [
        "max_pool2d_forward",
        "max_pool2d_backward",
        "avg_pool2d_forward",
        "avg_pool2d_backward",
        "relu_forward",
        "relu_backward",
    ],
)
@pytest.mark.parametrize("label,shape", SHAPES, ids=[s[0] for s in SHAPES])
def test_pool_relu(benchmark, gemm_ceiling, flavour, name, label, shape):
    args, flops, moved = _args(name, shape)
    harness.run_kernel(benchmark, flavour, name, args, flops, moved, gemm_ceiling)
