"""numba_cpu's norm kernels beyond parity: slices split into chunks give the same bits on one
thread as on two (the chunking depends on the shape only), a constant slice has variance exactly 0
and its own value as mean, and a large offset keeps the variance (the shifted one-pass sums)."""

from __future__ import annotations

import numpy as np
import pytest

from engine import backend

pytestmark = pytest.mark.skipif(
    "cpu:numba" not in backend.available(), reason="Numba is not installed"
)


@pytest.fixture(scope="module")
def kn():
    from kernels.numba_cpu import norm

    return norm


def _run_all(kn, x, gy, w, b):
    mean, var = kn.norm_moments(x)
    rstd = 1 / np.sqrt(var + 1e-5)
    y = kn.norm_relu_forward(x, mean, rstd, w, b)
    return [mean, var, y, *kn.norm_relu_backward(gy, y, x, mean, rstd, w)]


@pytest.mark.parametrize("shape", [(3, 2, 25000), (1, 3, 70000)], ids=["bn", "in"])
def test_norm_kernels_same_on_one_and_two_threads(kn, rng, monkeypatch, shape):
    assert kn._layout(shape[0], shape[2])[2] > 1  # the case is about slices of several chunks
    x, gy = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    w, b = rng.standard_normal(shape[1]), rng.standard_normal(shape[1])
    runs = []
    for n in ("1", "2"):
        monkeypatch.setenv("NUMBA_NUM_THREADS", n)
        runs.append(_run_all(kn, x, gy, w, b))
    for one, two in zip(*runs, strict=True):
        np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_norm_moments_constant_and_offset_slices(kn, rng, dtype):
    x = np.empty((2, 3, 40000), dtype)  # two chunks per slice
    x[:, 0] = 7.1
    x[:, 1] = rng.standard_normal((2, 40000)) + 1e4
    x[:, 2] = -3.3
    mean, var = kn.norm_moments(x)
    assert mean[0] == dtype(7.1) and mean[2] == dtype(-3.3)
    assert var[0] == 0 and var[2] == 0
    ref = x[:, 1].astype(np.float64)
    np.testing.assert_allclose(var[1], ref.var(), rtol=1e-5 if dtype == np.float32 else 1e-10)
    np.testing.assert_allclose(mean[1], ref.mean(), rtol=1e-7 if dtype == np.float32 else 1e-12)
