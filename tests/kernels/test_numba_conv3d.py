"""numba_cpu's conv3d paths: which geometry takes the register-blocked direct kernel
(kernels/numba_cpu/conv3d_direct.py), and that its sums do not depend on the thread count.
Parity of every path with numpy_cpu is in test_parity.py (the CONV3D cases in cases.py)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")

from kernels.numba_cpu import conv3d  # noqa: E402
from kernels.numpy_cpu import REFERENCE  # noqa: E402


@pytest.mark.parametrize(
    "c,k,stride,ow,dtype,path",
    [
        (16, (3, 3, 3), (1, 1, 1), 64, np.float32, "direct"),
        (5, (3, 3, 3), (1, 1, 1), 13, np.float64, "direct"),
        (4, (2, 2, 2), (1, 1, 1), 8, np.float32, "direct"),
        (16, (3, 3, 3), (2, 2, 2), 32, np.float32, "gemm"),  # strided: im2col + GEMM
        (16, (2, 2, 2), (2, 2, 2), 32, np.float32, "gemm"),  # the U-Net's up conv's backward
        (2, (1, 1, 1), (1, 1, 1), 64, np.float32, "gemm"),  # too few taps per output
        (16, (3, 3, 3), (1, 1, 1), 3, np.float32, "gemm"),  # a row shorter than half a vector
    ],
)
def test_conv3d_choose_path(c, k, stride, ow, dtype, path):
    assert conv3d.choose_path(c, k, stride, ow, dtype) == path


def test_conv3d_direct_results_do_not_depend_on_threads(monkeypatch, rng):
    x = rng.standard_normal((2, 3, 5, 4, 11))
    W = rng.standard_normal((5, 3, 3, 3, 3))
    gy = rng.standard_normal((2, 5, 5, 4, 11))
    s, p = (1, 1, 1), (1, 1, 1)
    results = []
    for threads in ("1", "2", "3"):
        monkeypatch.setenv("NUMBA_NUM_THREADS", threads)
        results.append(
            (
                conv3d.conv3d_forward(x, W, None, s, p),
                conv3d.conv3d_backward_input(gy, W, x.shape, s, p),
                conv3d.conv3d_backward_weight(gy, x, (3, 3, 3), s, p),
            )
        )
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            np.testing.assert_array_equal(a, b)
    gW = results[0][2]
    np.testing.assert_allclose(
        gW, REFERENCE["conv3d_backward_weight"](gy, x, (3, 3, 3), s, p), rtol=1e-10, atol=1e-10
    )


def test_conv3d_direct_keeps_nan_and_inf_in_place(rng):
    """The direct forward multiplies every tap (no skipped zeros): a NaN or an infinity in x
    reaches exactly the outputs whose window holds it, as in numpy_cpu's im2col product."""
    x = rng.standard_normal((1, 2, 4, 4, 9)).astype(np.float32)
    x[0, 1, 2, 1, 4] = np.nan
    x[0, 0, 0, 3, 8] = np.inf
    W = np.abs(rng.standard_normal((3, 2, 3, 3, 3))).astype(np.float32)
    got = conv3d.conv3d_forward(x, W, None, (1, 1, 1), (1, 1, 1))
    ref = REFERENCE["conv3d_forward"](x, W, None, (1, 1, 1), (1, 1, 1))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(ref))
    finite = np.isfinite(ref)
    np.testing.assert_allclose(got[finite], ref[finite], rtol=1e-5, atol=1e-5)
