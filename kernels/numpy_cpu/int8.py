"""Int8 arithmetic for quantized inference (engine.deploy's Quant* layers): the NumPy reference."""

from __future__ import annotations

import numpy as np


def int8_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a int8 (m, k), b int8 (k, n) -> int32 (m, n): c[i, j] = sum_t a[i, t] b[t, j], every
    product and sum in int32 (|c| <= k 127^2: exact for k < 133,000). NumPy's integer matmul
    has no BLAS: this is the slow, always-present fallback of the Numba kernel."""
    return a.astype(np.int32) @ b.astype(np.int32)


def quantize_int8(x: np.ndarray, scale: float) -> np.ndarray:
    """Symmetric per-tensor quantization: int8 clip(rint(x / scale), -127, 127) (ties to even)."""
    return np.clip(np.rint(x / np.float32(scale)), -127, 127).astype(np.int8)


def int8_matmul_nt(a: np.ndarray, bt: np.ndarray) -> np.ndarray:
    """a int8 (m, k), bt int8 (n, k) -> int32 (m, n) = a @ bt^T in int32 (Linear's weight
    layout (out, in), read as it is stored)."""
    return a.astype(np.int32) @ bt.astype(np.int32).T
