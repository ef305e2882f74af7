"""Int8 x int8 -> int32 matrix product for quantized inference, compiled by Numba (the fast path
engine.deploy picks when Numba imports; kernels/numpy_cpu/int8.py is the reference)."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(parallel=True, cache=True, fastmath=False)
def _int8_matmul(a, b, c):  # pragma: no cover - compiled
    m, k = a.shape
    n = b.shape[1]
    for i in numba.prange(m):  # one output row per task
        row = np.zeros(n, np.int32)
        for t in range(k):  # row += a[i, t] * b[t, :]: contiguous, vectorised over n
            w = np.int32(a[i, t])
            if w != 0:
                for j in range(n):
                    row[j] += w * np.int32(b[t, j])
        c[i, :] = row


def int8_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a int8 (m, k), b int8 (k, n) -> int32 (m, n), accumulated in int32 (numpy_cpu's doc)."""
    c = np.empty((a.shape[0], b.shape[1]), np.int32)
    _int8_matmul(np.ascontiguousarray(a), np.ascontiguousarray(b), c)
    return c


@numba.njit(parallel=True, cache=True, fastmath=False)
def _int8_matmul_nt(a, bt, c):  # pragma: no cover - compiled
    m, k = a.shape
    n = bt.shape[0]
    for task in numba.prange(m * n):  # one output element per task: a dot product
        i, j = task // n, task % n
        acc = np.int32(0)
        for t in range(k):  # both rows contiguous: an integer reduction LLVM vectorises
            acc += np.int32(a[i, t]) * np.int32(bt[j, t])
        c[i, j] = acc


def int8_matmul_nt(a: np.ndarray, bt: np.ndarray) -> np.ndarray:
    """a int8 (m, k), bt int8 (n, k) -> int32 (m, n) = a @ bt^T (numpy_cpu's doc)."""
    c = np.empty((a.shape[0], bt.shape[0]), np.int32)
    _int8_matmul_nt(np.ascontiguousarray(a), np.ascontiguousarray(bt), c)
    return c
