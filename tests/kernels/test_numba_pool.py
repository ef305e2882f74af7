"""numba_cpu's 2-D pools split their planes over the thread pool when a call is large
(pool.PARALLEL_WORK): the threaded and the single-threaded runs give numpy_cpu's results (the
max and its argmax bit for bit, the sums of overlapping windows to rounding), whichever threshold
picks them (the parity cases are too small to reach the threads)."""

from __future__ import annotations

import numpy as np
import pytest

from kernels.numpy_cpu import pool as reference

pool = pytest.importorskip("kernels.numba_cpu.pool")

# (kernel, stride, padding): the 2x2 stride-2 plane path and the general window walk
WINDOWS = [((2, 2), (2, 2), (0, 0)), ((3, 3), (2, 2), (1, 1)), ((3, 2), (1, 2), (1, 0))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("window", WINDOWS)
def test_pools_threaded_and_serial_equal_numpy(rng, monkeypatch, dtype, window):
    x = rng.standard_normal((3, 5, 12, 10)).astype(dtype)
    x.flat[rng.choice(x.size, 9, replace=False)] = np.nan  # NaN windows take better's rule
    x[1, 2] = 0.0  # a plane of ties: the first tap wins
    y_ref, arg_ref = reference.max_pool2d_forward(x, *window)
    gy = rng.standard_normal(y_ref.shape).astype(dtype)
    want = {
        "max": (y_ref, arg_ref),
        "max_back": reference.max_pool2d_backward(gy, arg_ref, x.shape, *window),
        "avg": reference.avg_pool2d_forward(np.nan_to_num(x), *window),
        "avg_back": reference.avg_pool2d_backward(gy, x.shape, *window),
    }
    for threshold in (0, 1 << 62):  # every call on the threads, then none
        monkeypatch.setattr(pool, "PARALLEL_WORK", threshold)
        got = {
            "max": pool.max_pool2d_forward(x, *window),
            "max_back": pool.max_pool2d_backward(gy, arg_ref, x.shape, *window),
            "avg": pool.avg_pool2d_forward(np.nan_to_num(x), *window),
            "avg_back": pool.avg_pool2d_backward(gy, x.shape, *window),
        }
        np.testing.assert_array_equal(got["max"][0], want["max"][0])  # NaNs in the same places
        np.testing.assert_array_equal(got["max"][1], want["max"][1])
        tol = 1e-6 if dtype == np.float32 else 1e-12  # sums in another order: rounding only
        np.testing.assert_allclose(got["max_back"], want["max_back"], rtol=tol, atol=tol)
        np.testing.assert_allclose(got["avg"], want["avg"], rtol=tol, atol=tol)
        np.testing.assert_allclose(got["avg_back"], want["avg_back"], rtol=tol, atol=tol)
