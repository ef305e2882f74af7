"""The fused conv2d + bias + ReLU + max-pool kernels per flavour: the seed CNN's two conv blocks at
batch 64 and 256 (what nn.Sequential runs for Conv2d -> ReLU -> MaxPool2d).

FLOPs are the convolution's (forward: one pass; backward: weight pass, plus the input pass when
gx is needed, as for conv2 in training). The forward check compares y only: an argmax may
legitimately differ where two window values tie within float32 rounding.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import harness
from kernels import numpy_cpu

SHAPES = [  # label, x shape, W shape, need_gx (the first layer's input needs no gradient)
    *[(f"seed_block1_b{b}", (b, 1, 28, 28), (32, 1, 3, 3), False) for b in (64, 256)],
    *[(f"seed_block2_b{b}", (b, 32, 13, 13), (64, 32, 3, 3), True) for b in (64, 256)],
]
POOL = ((2, 2), (2, 2), (0, 0))
CONV = ((1, 1), (0, 0))


def _inputs(xs, ws):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xs).astype(np.float32)
    W = (rng.standard_normal(ws) * np.sqrt(2 / np.prod(ws[1:]))).astype(np.float32)
    b = np.zeros(ws[0], np.float32)
    return x, W, b


@pytest.mark.parametrize("flavour", harness.cpu_flavours())
@pytest.mark.parametrize("label,xs,ws,need_gx", SHAPES, ids=[s[0] for s in SHAPES])
def test_fused_forward(benchmark, gemm_ceiling, flavour, label, xs, ws, need_gx):
    x, W, b = _inputs(xs, ws)
    args = (x, W, b, *CONV, *POOL)
    fn = harness.kernel(flavour, "conv2d_relu_max_pool2d_forward")
    ref = numpy_cpu.REFERENCE["conv2d_relu_max_pool2d_forward"](*args)
    harness.assert_close(fn(*args)[0], ref[0], f"{flavour}: fused forward y")
    benchmark.pedantic(fn, args=args, rounds=10, warmup_rounds=2, iterations=1)
    oh, ow = xs[2] - ws[2] + 1, xs[3] - ws[3] + 1
    flops = harness.conv_flops(xs, ws, (xs[0], ws[0], oh, ow))
    benchmark.extra_info.update(
        harness.extra_info(
            benchmark.stats.stats.median,
            flops,
            harness.nbytes(x, W, *ref),
            gemm_ceiling,
            flavour=flavour,
        )
    )


@pytest.mark.parametrize("flavour", harness.cpu_flavours())
@pytest.mark.parametrize("label,xs,ws,need_gx", SHAPES, ids=[s[0] for s in SHAPES])
def test_fused_backward(benchmark, gemm_ceiling, flavour, label, xs, ws, need_gx):
    x, W, b = _inputs(xs, ws)
    y, argmax = numpy_cpu.REFERENCE["conv2d_relu_max_pool2d_forward"](x, W, b, *CONV, *POOL)
    gy = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    args = (gy, y, argmax, x, W, *CONV, *POOL, need_gx)
    harness.run_kernel(
        benchmark,
        flavour,
        "conv2d_relu_max_pool2d_backward",
        args,
        harness.conv_flops(xs, ws, (xs[0], ws[0], xs[2] - 2, xs[3] - 2)) * (2 if need_gx else 1),
        harness.nbytes(gy, y, argmax, x, W),
        gemm_ceiling,
    )
