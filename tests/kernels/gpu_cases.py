"""Parity cases for the GPU kernel flavours, against kernels/numpy_cpu, on tiny shapes.

One case list serves three runners: the Numba-CUDA launchers under the CUDA simulator
(test_cuda_sim.py), the CuPy sources built with g++ on the CPU (test_cupy_sources.py), and both
flavours on a real GPU (test_gpu.py). A case takes a kernel table `k` and two converters: `dev`
moves a NumPy input to the table's device, `host` brings a result back. Stride, padding, non-square
windows and batch 1 are all covered; tolerances come from the TOL table of tests/conftest.py.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from kernels import GENERIC_ON_GPU, KERNEL_NAMES
from kernels.numpy_cpu import KERNELS as REF
from tests.conftest import TOL
from tests.helpers import distinct

DTYPES = [np.float32, np.float64]
CONV = [  # x shape, W shape, stride, padding
    ((2, 2, 5, 4), (3, 2, 3, 2), (1, 1), (0, 0)),
    ((1, 2, 5, 5), (2, 2, 3, 3), (2, 2), (1, 1)),  # batch 1, stride 2, padding 1
    ((2, 1, 4, 6), (2, 1, 2, 3), (1, 2), (0, 1)),  # non-square everything
]
POOL = [  # x shape, kernel_size, stride, padding
    ((2, 2, 4, 6), (2, 2), (2, 2), (0, 0)),
    ((1, 2, 5, 5), (3, 3), (2, 2), (1, 1)),
    ((2, 1, 4, 5), (2, 3), (1, 2), (1, 1)),  # overlapping windows, non-square
]


def _same(a):
    return a


def check(got, expected, dtype, host=_same, scale: float = 1.0) -> None:
    """got (on any device) == expected (NumPy) in dtype, shape and value, to TOL parity."""
    got = host(got)
    assert got.dtype == expected.dtype, (got.dtype, expected.dtype)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    if dtype == np.float64:
        tol = TOL["parity64"]
    else:  # float32: atol scaled with the reduction length
        tol = {"atol": TOL["parity32"]["atol"] * scale, "rtol": TOL["parity32"]["rtol"]}
    np.testing.assert_allclose(got, expected, **tol)


def _im2col_col2im(geometry, k, rng, dtype, dev, host):
    x_shape, W_shape, stride, padding = geometry
    x = rng.standard_normal(x_shape).astype(dtype)
    ks = W_shape[2:]
    cols = k["im2col"](dev(x), ks, stride, padding)
    check(cols, REF["im2col"](x, ks, stride, padding), dtype, host)
    g = rng.standard_normal(host(cols).shape).astype(dtype)
    check(
        k["col2im"](dev(g), x_shape, ks, stride, padding),
        REF["col2im"](g, x_shape, ks, stride, padding),
        dtype,
        host,
    )


def _conv2d(geometry, bias, k, rng, dtype, dev, host):
    x_shape, W_shape, stride, padding = geometry
    x = rng.standard_normal(x_shape).astype(dtype)
    W = rng.standard_normal(W_shape).astype(dtype)
    b = rng.standard_normal(W_shape[0]).astype(dtype) if bias else None
    y = k["conv2d_forward"](dev(x), dev(W), None if b is None else dev(b), stride, padding)
    y_ref = REF["conv2d_forward"](x, W, b, stride, padding)
    check(y, y_ref, dtype, host)
    gy = rng.standard_normal(y_ref.shape).astype(dtype)
    check(
        k["conv2d_backward_input"](dev(gy), dev(W), x_shape, stride, padding),
        REF["conv2d_backward_input"](gy, W, x_shape, stride, padding),
        dtype,
        host,
    )
    check(
        k["conv2d_backward_weight"](dev(gy), dev(x), W_shape[2:], stride, padding),
        REF["conv2d_backward_weight"](gy, x, W_shape[2:], stride, padding),
        dtype,
        host,
        scale=4,
    )  # (a sum over n*oh*ow, up to 40 products)


def _max_pool2d(geometry, k, rng, dtype, dev, host):
    x_shape, kernel_size, stride, padding = geometry
    x = distinct(rng, x_shape).astype(dtype)  # no ties: the argmax is unambiguous
    y, argmax = k["max_pool2d_forward"](dev(x), kernel_size, stride, padding)
    y_ref, argmax_ref = REF["max_pool2d_forward"](x, kernel_size, stride, padding)
    check(y, y_ref, dtype, host)
    assert host(argmax).dtype == np.int32
    np.testing.assert_array_equal(host(argmax), argmax_ref)
    gy = rng.standard_normal(y_ref.shape).astype(dtype)
    check(
        k["max_pool2d_backward"](dev(gy), argmax, x_shape, kernel_size, stride, padding),
        REF["max_pool2d_backward"](gy, argmax_ref, x_shape, kernel_size, stride, padding),
        dtype,
        host,
    )


def _max_pool2d_ties(k, rng, dtype, dev, host):
    x = np.zeros((1, 1, 4, 4), dtype=dtype)  # every window a tie: the first tap must win
    _, argmax = k["max_pool2d_forward"](dev(x), (2, 2), (2, 2), (0, 0))
    np.testing.assert_array_equal(host(argmax), 0)


def _avg_pool2d(geometry, k, rng, dtype, dev, host):
    x_shape, kernel_size, stride, padding = geometry
    x = rng.standard_normal(x_shape).astype(dtype)
    y_ref = REF["avg_pool2d_forward"](x, kernel_size, stride, padding)
    check(k["avg_pool2d_forward"](dev(x), kernel_size, stride, padding), y_ref, dtype, host)
    gy = rng.standard_normal(y_ref.shape).astype(dtype)
    check(
        k["avg_pool2d_backward"](dev(gy), x_shape, kernel_size, stride, padding),
        REF["avg_pool2d_backward"](gy, x_shape, kernel_size, stride, padding),
        dtype,
        host,
    )


FUSED = [  # x shape, W shape, stride, padding, pool size, pool stride, pool padding
    ((2, 2, 6, 6), (3, 2, 3, 3), (1, 1), (0, 0), (2, 2), (2, 2), (0, 0)),  # the seed CNN's block
    ((2, 1, 7, 7), (2, 1, 3, 3), (1, 1), (0, 0), (2, 2), (2, 2), (0, 0)),  # odd: last row dropped
    ((1, 2, 7, 6), (3, 2, 3, 2), (1, 1), (1, 0), (3, 3), (2, 2), (1, 1)),  # overlapping, padded
    ((2, 2, 4, 7), (2, 2, 2, 3), (1, 2), (0, 1), (1, 2), (1, 2), (0, 1)),  # non-square everything
]


def _fused(geometry, bias, k, rng, dtype, dev, host):
    """conv2d_relu_max_pool2d forward and backward (with and without gx) against numpy_cpu's
    composition. x, W and b are small integers, so every conv sum is exact in any summation
    order: the argmax (ties included, first tap wins) must match exactly. The negative bias
    rectifies many windows to all zeros."""
    x_shape, W_shape, stride, padding, *pool = geometry
    x = rng.integers(-2, 3, x_shape).astype(dtype)
    W = rng.integers(-2, 3, W_shape).astype(dtype)
    b = rng.integers(-4, 2, W_shape[0]).astype(dtype) if bias else None
    fwd = "conv2d_relu_max_pool2d_forward"
    y, argmax = k[fwd](dev(x), dev(W), None if b is None else dev(b), stride, padding, *pool)
    y_ref, argmax_ref = REF[fwd](x, W, b, stride, padding, *pool)
    check(y, y_ref, dtype, host)
    assert host(argmax).dtype == np.int32
    np.testing.assert_array_equal(host(argmax), argmax_ref)
    assert (y_ref == 0).any() and (y_ref > 0).any()  # both sides of the ReLU are exercised
    gy = rng.standard_normal(y_ref.shape).astype(dtype)
    for need_gx in (True, False):
        got = k["conv2d_relu_max_pool2d_backward"](
            dev(gy), y, argmax, dev(x), dev(W), stride, padding, *pool, need_gx
        )
        ref = REF["conv2d_relu_max_pool2d_backward"](
            gy, y_ref, argmax_ref, x, W, stride, padding, *pool, need_gx
        )
        assert (got[0] is None) == (not need_gx)
        if need_gx:
            check(got[0], ref[0], dtype, host)
        check(got[1], ref[1], dtype, host, scale=4)  # gW: a sum over n*oh*ow taps
        check(got[2], ref[2], dtype, host)


def _relu(k, rng, dtype, dev, host):
    x = rng.standard_normal((3, 4, 5)).astype(dtype)
    x[0, 0, :2] = 0  # the kink itself: y = 0, gradient 0
    x_view = dev(x).transpose(2, 0, 1)  # non-contiguous input
    y = k["relu_forward"](x_view)
    check(y, REF["relu_forward"](x.transpose(2, 0, 1)), dtype, host)
    gy = rng.standard_normal(host(y).shape).astype(dtype)
    check(k["relu_backward"](dev(gy), y), REF["relu_backward"](gy, host(y)), dtype, host)


def _softmax_cross_entropy(n, classes, k, rng, dtype, dev, host):
    logits = (rng.standard_normal((n, classes)) * 30).astype(dtype)  # large: the max shift
    t = rng.integers(0, classes, n)
    loss, probs = k["softmax_cross_entropy_forward"](dev(logits), dev(t))
    loss_ref, probs_ref = REF["softmax_cross_entropy_forward"](logits, t)
    check(loss, loss_ref, dtype, host)
    check(probs, probs_ref, dtype, host)
    gloss = np.asarray(0.7, dtype=dtype)
    check(
        k["softmax_cross_entropy_backward"](probs, dev(t), dev(gloss)),
        REF["softmax_cross_entropy_backward"](probs_ref, t, gloss),
        dtype,
        host,
    )


def _softmax_cross_entropy_bad_targets(k, rng, dtype, dev, host):
    """A target outside [0, k) is never read (no out-of-bounds access): its row's loss and
    gradient are NaN, the other rows' are untouched. The op checks targets on the CPU only."""
    logits = rng.standard_normal((4, 3)).astype(dtype)
    t = np.array([0, 3, 2, -1])
    loss, probs = k["softmax_cross_entropy_forward"](dev(logits), dev(t))
    assert np.isnan(host(loss))
    g = host(k["softmax_cross_entropy_backward"](probs, dev(t), dev(np.asarray(1.0, dtype))))
    assert np.isnan(g[[1, 3]]).all() and np.isfinite(g[[0, 2]]).all()
    good = np.array([0, 2])
    expected = REF["softmax_cross_entropy_backward"](host(probs)[good], t[good], 1.0) * 2 / 4
    check(g[good], expected.astype(dtype), dtype)


def _sgd(momentum, nesterov, weight_decay, k, rng, dtype, dev, host):
    p, g = (rng.standard_normal((3, 5)).astype(dtype) for _ in range(2))
    v = rng.standard_normal((3, 5)).astype(dtype) if momentum else None
    p_dev, g_dev, v_dev = dev(p), dev(g), None if v is None else dev(v)
    for _ in range(2):  # two steps: the velocity carries over
        k["sgd_update"](p_dev, g_dev, v_dev, 0.1, momentum, nesterov, weight_decay)
        REF["sgd_update"](p, g, v, 0.1, momentum, nesterov, weight_decay)
    check(p_dev, p, dtype, host)
    if momentum:
        check(v_dev, v, dtype, host)


def _adam(weight_decay, k, rng, dtype, dev, host):
    p, g = (rng.standard_normal((4, 3)).astype(dtype) for _ in range(2))
    m, v = np.zeros_like(p), np.zeros_like(p)
    on_dev = [dev(a) for a in (p, g, m, v)]
    for step in (1, 2, 3):
        k["adam_update"](*on_dev, step, 1e-2, 0.9, 0.999, 1e-8, weight_decay)
        REF["adam_update"](p, g, m, v, step, 1e-2, 0.9, 0.999, 1e-8, weight_decay)
    for got, expected in zip(on_dev, (p, g, m, v), strict=True):
        check(got, expected, dtype, host)


CASES = {
    **{f"im2col_col2im-{i}": partial(_im2col_col2im, geo) for i, geo in enumerate(CONV)},
    **{f"conv2d-{i}-bias": partial(_conv2d, geo, True) for i, geo in enumerate(CONV)},
    **{f"conv2d-{i}-nobias": partial(_conv2d, geo, False) for i, geo in enumerate(CONV)},
    **{f"max_pool2d-{i}": partial(_max_pool2d, geo) for i, geo in enumerate(POOL)},
    "max_pool2d-ties": _max_pool2d_ties,
    **{f"avg_pool2d-{i}": partial(_avg_pool2d, geo) for i, geo in enumerate(POOL)},
    **{f"conv2d_relu_max_pool2d-{i}": partial(_fused, geo, True) for i, geo in enumerate(FUSED)},
    "conv2d_relu_max_pool2d-nobias": partial(_fused, FUSED[0], False),
    "relu": _relu,
    "softmax_cross_entropy-5x7": partial(_softmax_cross_entropy, 5, 7),
    "softmax_cross_entropy-1x3": partial(_softmax_cross_entropy, 1, 3),
    "softmax_cross_entropy-bad_targets": _softmax_cross_entropy_bad_targets,
    "sgd-plain": partial(_sgd, 0.0, False, 0.0),
    "sgd-weight_decay": partial(_sgd, 0.0, False, 0.1),
    "sgd-momentum": partial(_sgd, 0.9, False, 0.0),
    "sgd-nesterov": partial(_sgd, 0.9, True, 0.01),
    "adam": partial(_adam, 0.0),
    "adam-weight_decay": partial(_adam, 0.01),
}

# the kernels the cases exercise: the runners check this equals KERNEL_NAMES
COVERED = {
    "im2col",
    "col2im",
    "conv2d_forward",
    "conv2d_backward_input",
    "conv2d_backward_weight",
    "max_pool2d_forward",
    "max_pool2d_backward",
    "avg_pool2d_forward",
    "avg_pool2d_backward",
    "relu_forward",
    "relu_backward",
    "softmax_cross_entropy_forward",
    "softmax_cross_entropy_backward",
    "sgd_update",
    "adam_update",
    "conv2d_relu_max_pool2d_forward",
    "conv2d_relu_max_pool2d_backward",
}


def uncovered() -> list[str]:
    """Kernel names of the contract that no case exercises (should be empty)."""
    return sorted((set(KERNEL_NAMES) - GENERIC_ON_GPU) ^ COVERED)


def run(case: str, k, dtype, dev=_same, host=_same) -> None:
    """Run one case on kernel table `k` (a dict or namespace of kernels) with a fixed seed."""
    table = k if isinstance(k, dict) else vars(k)
    CASES[case](table, np.random.default_rng(0), dtype, dev, host)
