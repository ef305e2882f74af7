"""numba_cpu's fused conv + ReLU + max-pool block (kernels/numba_cpu/conv_relu_pool): choose_path
picks the kernel each geometry is meant to take, each path equals the numpy_cpu reference, the
fast kernels are the ones that run for the common block, and inputs with NaN or infinities still
get the reference's results.

The fast kernels (polyphase, Winograd, window-driven backward) skip work the dense formula does:
Winograd subtracts input values (inf - inf = NaN where the direct sum keeps inf), and the backward
never multiplies the zero gradients of the pixels that are not a window's argmax (0 * inf = NaN in
the reference). choose_path checks x and W with np.isfinite for those paths and answers
"reference" when either holds a NaN or an infinity.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine import backend
from kernels.numpy_cpu import REFERENCE  # the composition of the unfused kernels
from tests.conftest import TOL

pytestmark = pytest.mark.skipif(
    "cpu:numba" not in backend.available(), reason="Numba is not installed"
)

POOL = ((2, 2), (2, 2), (0, 0))
THIN = ((2, 1, 10, 9), (3, 1, 3, 3), 0)  # x shape, W shape, padding: the polyphase kernels
THICK = ((2, 6, 9, 8), (4, 6, 3, 3), 1)  # the Winograd forward and the window-driven backward

# (x shape, W shape, stride, padding, pool): the path each pass takes, as choose_path documents
GEOMETRIES = {
    "thin_common": (((2, 1, 10, 9), (3, 1, 3, 3), (1, 1), (0, 0), POOL), "polyphase"),
    "thick_common": (((2, 6, 9, 8), (4, 6, 3, 3), (1, 1), (1, 1), POOL), "winograd"),
    "thin_pool3": (
        ((2, 2, 9, 9), (3, 2, 3, 3), (1, 1), (1, 1), ((3, 3), (2, 2), (1, 1))),
        "direct",
    ),
    "thick_pool3": (((2, 5, 9, 8), (4, 5, 3, 3), (1, 1), (1, 1), ((3, 3), (2, 2), (1, 1))), "wide"),
    "thick_stride2": (((2, 5, 11, 9), (4, 5, 3, 3), (2, 2), (1, 1), POOL), "gemm"),
    "thick_5x5": (((2, 2, 12, 11), (3, 2, 5, 5), (1, 1), (2, 2), POOL), "wide"),
}


def _numba():
    from kernels import numba_cpu

    return numba_cpu


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv2d_relu_max_pool2d_path_matches_reference(rng, name, dtype):
    (xs, ws, stride, padding, pool), forward_path = GEOMETRIES[name]
    choose_path = _numba().conv_relu_pool.choose_path
    x, W = rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    assert choose_path("forward", x, W, stride, padding, pool) == forward_path
    thin_common = forward_path == "polyphase"
    for need_gx in (False, True):
        want = "polyphase_grad" if thin_common and not need_gx else "window"
        assert choose_path("backward", x, W, stride, padding, pool, need_gx) == want
    tol = TOL["parity32" if dtype == np.float32 else "parity64"]
    args = (x, W, b, stride, padding, *pool)
    ref = REFERENCE["conv2d_relu_max_pool2d_forward"](*args)
    got = _numba().KERNELS["conv2d_relu_max_pool2d_forward"](*args)
    np.testing.assert_allclose(got[0], ref[0], **tol)
    np.testing.assert_array_equal(got[1], ref[1])
    gy = rng.standard_normal(ref[0].shape).astype(dtype)
    for need_gx in (False, True):
        bargs = (gy, ref[0], ref[1], x, W, stride, padding, *pool, need_gx)
        have = _numba().KERNELS["conv2d_relu_max_pool2d_backward"](*bargs)
        want = REFERENCE["conv2d_relu_max_pool2d_backward"](*bargs)
        for h, r in zip(have, want, strict=True):
            if r is None:
                assert h is None
            else:
                np.testing.assert_allclose(h, r, **tol)


@pytest.mark.parametrize("where", ["x", "W"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_conv2d_relu_max_pool2d_path_is_reference_when_not_finite(rng, where, value):
    (xs, ws, stride, padding, pool), _ = GEOMETRIES["thick_common"]
    choose_path = _numba().conv_relu_pool.choose_path
    x, W = rng.standard_normal(xs), rng.standard_normal(ws)
    (x if where == "x" else W).flat[7] = value
    assert choose_path("forward", x, W, stride, padding, pool) == "reference"
    assert choose_path("backward", x, W, stride, padding, pool, True) == "reference"
    # the paths whose arithmetic is the dense formula's keep running on non-finite inputs
    (xs, ws, stride, padding, pool), _ = GEOMETRIES["thick_pool3"]
    x, W = rng.standard_normal(xs), rng.standard_normal(ws)
    (x if where == "x" else W).flat[7] = value
    assert choose_path("forward", x, W, stride, padding, pool) == "wide"


def _block(rng, geometry, dtype):
    xs, ws, pad = geometry
    x, W = rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)
    return x, W, rng.standard_normal(ws[0]).astype(dtype), ((1, 1), (pad, pad))


@pytest.mark.parametrize(
    "geometry,module,function",
    [
        (THIN, "polyphase", "forward"),
        (THIN, "polyphase", "grad_weight"),
        (THICK, "winograd", "forward"),
        (THICK, "sparse_grad", "grad"),
    ],
)
def test_common_block_takes_its_fast_kernel(rng, monkeypatch, geometry, module, function):
    nb = _numba()
    fast = getattr(nb.conv_relu_pool, module)
    calls = []
    original = getattr(fast, function)
    monkeypatch.setattr(fast, function, lambda *a: calls.append(1) or original(*a))
    x, W, b, conv = _block(rng, geometry, np.float32)
    y, argmax = nb.KERNELS["conv2d_relu_max_pool2d_forward"](x, W, b, *conv, *POOL)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    nb.KERNELS["conv2d_relu_max_pool2d_backward"](gy, y, argmax, x, W, *conv, *POOL, False)
    assert calls, f"{module}.{function} was not used"


@pytest.mark.parametrize("geometry", [THIN, THICK], ids=["thin", "thick"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["x", "W"])
def test_non_finite_inputs_get_the_reference_results(rng, geometry, dtype, value, where):
    nb = _numba()
    x, W, b, conv = _block(rng, geometry, dtype)
    (x if where == "x" else W)[(1, 0, 2, 2) if where == "x" else (1, 0, 1, 1)] = value
    with np.errstate(invalid="ignore", over="ignore"):  # the reference's inf - inf, 0 * inf
        ref = REFERENCE["conv2d_relu_max_pool2d_forward"](x, W, b, *conv, *POOL)
        got = nb.KERNELS["conv2d_relu_max_pool2d_forward"](x, W, b, *conv, *POOL)
        np.testing.assert_allclose(got[0], ref[0], rtol=1e-5, atol=1e-6, equal_nan=True)
        np.testing.assert_array_equal(got[1], ref[1])
        gy = rng.standard_normal(ref[0].shape).astype(dtype)
        for need_gx in (False, True):
            args = (gy, ref[0], ref[1], x, W, *conv, *POOL, need_gx)
            want = REFERENCE["conv2d_relu_max_pool2d_backward"](*args)
            have = nb.KERNELS["conv2d_relu_max_pool2d_backward"](*args)
            for h, r in zip(have, want, strict=True):
                if r is None:
                    assert h is None
                else:
                    np.testing.assert_allclose(h, r, rtol=1e-4, atol=1e-5, equal_nan=True)
