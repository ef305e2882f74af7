"""numba_cpu's plain Winograd conv (kernels/numba_cpu/conv_winograd.py): which convs take it, that
all three passes equal the numpy_cpu reference also when the batch is cut into several chunks, and
that inputs with NaN or infinities get the reference's (dense) results; which convs take the
register-blocked direct kernel (conv3d_direct.py, depth 1) and that its passes match too; and the
same for the tap-GEMM path (conv_taps.py), which comes before Winograd (the Winograd tests turn
it off with TAPS_MAX_PIXELS = 0).

The kernels' general parity is tests/kernels/test_parity.py (the wino_* cases of cases.CONV); this
module checks what that one cannot see: the path taken, the chunk loop, the non-finite rule.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine import backend
from kernels.numpy_cpu import REFERENCE
from tests.conftest import TOL

pytestmark = pytest.mark.skipif(
    "cpu:numba" not in backend.available(), reason="Numba is not installed"
)

SMALL_MAP = ((3, 8, 4, 4), (6, 8, 3, 3), (1, 1))  # x shape, W shape, padding: 4x4 output
PASSES = ("forward", "backward_input", "backward_weight")


def _conv():
    from kernels.numba_cpu import conv

    return conv


def _winograd():
    from kernels.numba_cpu import conv_winograd

    return conv_winograd


@pytest.fixture
def no_taps(monkeypatch):
    """conv_taps off, so the small maps reach the Winograd path behind it."""
    monkeypatch.setattr(_conv(), "TAPS_MAX_PIXELS", 0)
    monkeypatch.setattr(_conv(), "TAPS_GX_MAX_PIXELS", 0)


def _arguments(rng, dtype, xs, ws, padding):
    """Each pass's kernel name and positional arguments for one stride-1 geometry."""
    x, W = rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    oh, ow = xs[2] + 2 * padding[0] - 2, xs[3] + 2 * padding[1] - 2
    gy = rng.standard_normal((xs[0], ws[0], oh, ow)).astype(dtype)
    s = (1, 1)
    return {
        "forward": ("conv2d_forward", (x, W, b, s, padding)),
        "backward_input": ("conv2d_backward_input", (gy, W, xs, s, padding)),
        "backward_weight": ("conv2d_backward_weight", (gy, x, (3, 3), s, padding)),
    }


def _check(name, args, dtype):
    from kernels.numba_cpu import KERNELS

    tol = TOL[f"parity{np.dtype(dtype).itemsize * 8}"]
    np.testing.assert_allclose(KERNELS[name](*args), REFERENCE[name](*args), **tol, err_msg=name)


@pytest.mark.parametrize(
    "c,kernel,stride,padding,pixels,takes",
    [
        (8, (3, 3), (1, 1), (1, 1), 16, True),  # ResNet stage 3 at 4x4
        (512, (3, 3), (1, 1), (1, 1), 4, True),  # stage 4 at 2x2
        (64, (3, 3), (1, 1), (1, 1), 256, False),  # stage 1 at 16x16: the chunked GEMM wins
        (3, (3, 3), (1, 1), (1, 1), 16, False),  # thin: the direct loop (c*9 <= DIRECT_MAX_K)
        (64, (3, 3), (2, 2), (1, 1), 16, False),  # stride 2
        (64, (1, 1), (1, 1), (0, 0), 16, False),  # 1x1
        (64, (3, 3), (1, 1), (3, 3), 16, False),  # padding 3: gx would need a negative one
    ],
)
def test_winograd_ok_takes_small_3x3_stride1_maps(c, kernel, stride, padding, pixels, takes):
    x = np.ones((1, c, 4, 4), np.float32)
    assert _conv().winograd_ok(c, kernel, stride, padding, pixels, x) is takes


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_small_map_passes_run_winograd_and_match_reference(rng, monkeypatch, dtype, no_taps):
    calls = []
    wino = _winograd()
    for fn in PASSES:
        real = getattr(wino, fn)
        monkeypatch.setattr(
            wino, fn, lambda *a, _f=real, _n=fn, **k: calls.append(_n) or _f(*a, **k)
        )
    for name, args in _arguments(rng, dtype, *SMALL_MAP[:2], SMALL_MAP[2]).values():
        _check(name, args, dtype)
    # backward_input runs the forward with the flipped filter, so forward is called twice
    assert sorted(calls) == ["backward_input", "backward_weight", "forward", "forward"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_winograd_chunks_of_images_match_reference(rng, monkeypatch, dtype, no_taps):
    # CHUNK_ELEMS small enough for one image per chunk: 5 chunks, the weight gradient summed
    xs, ws, padding = (5, 6, 3, 4), (7, 6, 3, 3), (1, 1)
    monkeypatch.setattr(_winograd(), "CHUNK_ELEMS", 16 * 7 * 4)
    assert _winograd()._images_per_chunk(5, 7, 4) == 1
    for name, args in _arguments(rng, dtype, xs, ws, padding).values():
        _check(name, args, dtype)


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("where", [0, 1])  # which array of the pass holds the value
@pytest.mark.parametrize("pass_", PASSES)
def test_non_finite_inputs_take_the_dense_path(rng, monkeypatch, value, where, pass_, no_taps):
    # Winograd's inf - inf would give NaN where a dense sum gives inf: such inputs must get
    # exactly what the dense (chunked GEMM) path gives
    from kernels.numba_cpu import KERNELS

    name, args = _arguments(rng, np.float32, *SMALL_MAP[:2], SMALL_MAP[2])[pass_]
    args = list(args)
    args[where] = args[where].copy()
    args[where].flat[5] = value
    got = KERNELS[name](*args)
    monkeypatch.setattr(_conv(), "WINOGRAD_MAX_PIXELS", 0)  # the dense path for every map
    np.testing.assert_array_equal(got, KERNELS[name](*args))
    assert not np.isfinite(got).all()


def test_winograd_conv2d_gradcheck_float64(rng, monkeypatch, no_taps):
    # the op's gradient through the numba flavour on a map that takes Winograd (3x3 output)
    import engine.functional as F
    from engine.gradcheck import check_grad

    calls = []
    wino = _winograd()
    for fn in PASSES:
        real = getattr(wino, fn)
        monkeypatch.setattr(
            wino, fn, lambda *a, _f=real, _n=fn, **k: calls.append(_n) or _f(*a, **k)
        )
    x, W = rng.standard_normal((2, 4, 3, 3)), rng.standard_normal((3, 4, 3, 3))
    b = rng.standard_normal(3)
    with backend.use_kernels("numba"):
        check_grad(lambda x, W, b: F.conv2d(x, W, b, 1, 1), [x, W, b], **TOL["gradcheck"])
    assert {"forward", "backward_input", "backward_weight"} <= set(calls)


# ---- the register-blocked direct kernel (conv3d_direct.py) on 2-D convs ----
@pytest.mark.parametrize(
    "c,kernel,stride,oh,ow,dtype,pass_,takes",
    [
        (64, (3, 3), (1, 1), 16, 16, np.float32, "forward", True),  # ResNet stage 1
        (128, (3, 3), (1, 1), 8, 8, np.float64, "forward", True),  # stage 2
        (128, (3, 3), (1, 1), 8, 8, np.float32, "weight", False),  # 8x8 gW: the GEMM
        (64, (3, 3), (1, 1), 16, 16, np.float32, "weight", True),
        (256, (3, 3), (1, 1), 4, 4, np.float32, "forward", False),  # narrow: Winograd / GEMM
        (64, (3, 3), (2, 2), 16, 16, np.float32, "forward", False),  # stride 2
        (3, (3, 3), (1, 1), 16, 16, np.float32, "forward", False),  # thin: the plane loop
        (64, (3, 3), (1, 1), 16, 16, np.int32, "forward", False),
    ],
)
def test_direct_simd_ok_takes_wide_thick_stride1_maps(
    c, kernel, stride, oh, ow, dtype, pass_, takes
):
    assert _conv().direct_simd_ok(c, kernel, stride, oh, ow, dtype, pass_) is takes


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "xs,ws,padding",
    [
        ((2, 5, 6, 9), (7, 5, 3, 3), (1, 1)),  # ow = 9: one full vector and a partial one
        ((1, 4, 5, 12), (6, 4, 3, 5), (0, 2)),  # non-square kernel, uneven padding
    ],
)
def test_direct_simd_passes_match_reference(rng, monkeypatch, dtype, xs, ws, padding, no_taps):
    from kernels.numba_cpu import conv3d_direct

    calls = []
    for fn in ("conv3d_forward_direct", "conv3d_backward_weight_direct"):
        real = getattr(conv3d_direct, fn)
        monkeypatch.setattr(
            conv3d_direct, fn, lambda *a, _f=real, _n=fn, **k: calls.append(_n) or _f(*a, **k)
        )
    monkeypatch.setattr(_conv(), "DIRECT_SIMD_GW_MIN_PIXELS", 1)  # tiny maps take it too
    x, W = rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    oh = xs[2] + 2 * padding[0] - ws[2] + 1
    ow = xs[3] + 2 * padding[1] - ws[3] + 1
    gy = rng.standard_normal((xs[0], ws[0], oh, ow)).astype(dtype)
    s = (1, 1)
    _check("conv2d_forward", (x, W, b, s, padding), dtype)
    _check("conv2d_backward_input", (gy, W, xs, s, padding), dtype)
    _check("conv2d_backward_weight", (gy, x, ws[2:], s, padding), dtype)
    # forward, and backward_input as the forward of gy with the flipped weight
    assert calls.count("conv3d_forward_direct") == 2
    assert calls.count("conv3d_backward_weight_direct") == 1


# ---- one GEMM per kernel tap (conv_taps.py) ----
@pytest.mark.parametrize(
    "c,kernel,padding,oh,ow,dtype,pass_,takes",
    [
        (512, (3, 3), (1, 1), 2, 2, np.float32, "input", True),  # ResNet stage 4
        (256, (3, 3), (1, 1), 4, 4, np.float64, "forward", True),  # stage 3
        (128, (3, 3), (1, 1), 8, 8, np.float32, "weight", True),  # 8x8 gW
        (128, (3, 3), (1, 1), 8, 8, np.float32, "input", False),  # 8x8 gx: the direct kernel
        (64, (3, 3), (1, 1), 16, 16, np.float32, "forward", False),  # wide: the direct kernel
        (64, (1, 1), (0, 0), 4, 4, np.float32, "forward", False),  # one tap: nothing to skip
        (3, (3, 3), (1, 1), 4, 4, np.float32, "forward", False),  # thin: the plane loop
        (64, (3, 3), (1, 1), 4, 4, np.int32, "forward", False),  # no BLAS for integers
    ],
)
def test_taps_ok_takes_thick_small_maps(c, kernel, padding, oh, ow, dtype, pass_, takes):
    assert _conv().taps_ok(c, kernel, padding, oh, ow, dtype, pass_) is takes


def test_taps_ok_refuses_non_finite_inputs_with_padding():
    x = np.ones((1, 64, 4, 4), np.float32)
    x[0, 0, 0, 0] = np.inf
    assert not _conv().taps_ok(64, (3, 3), (1, 1), 4, 4, np.float32, "forward", x)
    assert _conv().taps_ok(64, (3, 3), (0, 0), 2, 2, np.float32, "forward", x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "xs,ws,stride,padding",
    [
        ((3, 8, 4, 4), (6, 8, 3, 3), (1, 1), (1, 1)),  # a ResNet stage-3 block
        ((2, 12, 2, 2), (5, 12, 3, 3), (1, 1), (1, 1)),  # stage 4: taps facing padding skipped
        ((3, 5, 7, 6), (4, 5, 3, 3), (2, 2), (1, 1)),  # stride 2, odd map
        ((2, 6, 5, 7), (3, 6, 2, 3), (2, 1), (0, 2)),  # non-square kernel, mixed stride/padding
    ],
)
def test_taps_passes_match_reference(rng, monkeypatch, dtype, xs, ws, stride, padding):
    taps = pytest.importorskip("kernels.numba_cpu.conv_taps")
    calls = []
    for fn in PASSES:
        real = getattr(taps, fn)
        monkeypatch.setattr(
            taps, fn, lambda *a, _f=real, _n=fn, **k: calls.append(_n) or _f(*a, **k)
        )
    monkeypatch.setattr(_conv(), "TAPS_GX_MAX_PIXELS", 64)  # every case's gx takes it too
    # one image per chunk and one partial gW per thread: gW sums chunks, then partials
    monkeypatch.setattr(taps, "CHUNK_ELEMS", 1)
    monkeypatch.setattr(taps, "MAX_PARTIALS_PER_THREAD", 1)
    x, W = rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    oh = (xs[2] + 2 * padding[0] - ws[2]) // stride[0] + 1
    ow = (xs[3] + 2 * padding[1] - ws[3]) // stride[1] + 1
    gy = rng.standard_normal((xs[0], ws[0], oh, ow)).astype(dtype)
    _check("conv2d_forward", (x, W, b, stride, padding), dtype)
    _check("conv2d_backward_input", (gy, W, xs, stride, padding), dtype)
    _check("conv2d_backward_weight", (gy, x, ws[2:], stride, padding), dtype)
    assert sorted(calls) == ["backward_input", "backward_weight", "forward"]


def test_taps_conv2d_gradcheck_float64(rng):
    # the op's gradient through the numba flavour on a stride-2 conv that takes conv_taps
    import engine.functional as F
    from engine.gradcheck import check_grad

    x, W = rng.standard_normal((2, 4, 5, 5)), rng.standard_normal((3, 4, 3, 3))
    b = rng.standard_normal(3)
    assert _conv().taps_ok(4, (3, 3), (1, 1), 3, 3, np.float64, "forward", x, W)
    with backend.use_kernels("numba"):
        check_grad(lambda x, W, b: F.conv2d(x, W, b, 2, 1), [x, W, b], **TOL["gradcheck"])


@pytest.mark.parametrize(
    "c,kernel,stride,padding,dtype,takes",
    [
        (64, (1, 1), (2, 2), (0, 0), np.float32, True),  # ResNet's downsample
        (64, (1, 1), (1, 2), (0, 0), np.float64, True),
        (64, (1, 1), (1, 1), (0, 0), np.float32, False),  # stride 1: not measured
        (64, (1, 1), (2, 2), (1, 1), np.float32, False),  # padding
        (64, (3, 3), (2, 2), (0, 0), np.float32, False),
        (16, (1, 1), (2, 2), (0, 0), np.float32, False),  # thin: the plane loop
    ],
)
def test_pointwise_ok_takes_strided_1x1(c, kernel, stride, padding, dtype, takes):
    assert _conv().pointwise_ok(c, kernel, stride, padding, dtype) is takes


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("stride", [(2, 2), (3, 1)])
def test_pointwise_forward_matches_reference(rng, monkeypatch, dtype, stride):
    taps = pytest.importorskip("kernels.numba_cpu.conv_taps")
    calls = []
    real = taps.pointwise_forward
    monkeypatch.setattr(taps, "pointwise_forward", lambda *a: calls.append(1) or real(*a))
    x = rng.standard_normal((3, 40, 7, 6)).astype(dtype)  # odd sizes: the last row / column
    W, b = rng.standard_normal((5, 40, 1, 1)).astype(dtype), rng.standard_normal(5).astype(dtype)
    _check("conv2d_forward", (x, W, b, stride, (0, 0)), dtype)
    assert calls == [1]
