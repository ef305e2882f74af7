"""Int8 x int8 -> int32 matrix product for quantized inference, compiled by Numba (the fast path
engine.deploy picks when Numba imports; kernels/numpy_cpu/int8.py is the reference)."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(parallel=True, cache=True, fastmath=False)
def _int8_matmul(a, bt, c):  # pragma: no cover - compiled
    m, k = a.shape
    n = bt.shape[0]
    for i in numba.prange(m):  # one output row per task; rows of a and bt are contiguous
        for j in range(n):
            acc = np.int32(0)
            for p in range(k):  # an integer reduction: LLVM vectorises it without fastmath
                acc += np.int32(a[i, p]) * np.int32(bt[j, p])
            c[i, j] = acc


def int8_matmul(a: np.ndarray, bt: np.ndarray) -> np.ndarray:
    """a int8 (m, k), bt int8 (n, k) -> int32 (m, n), accumulated in int32 (numpy_cpu's doc)."""
    c = np.empty((a.shape[0], bt.shape[0]), np.int32)
    _int8_matmul(np.ascontiguousarray(a), np.ascontiguousarray(bt), c)
    return c
