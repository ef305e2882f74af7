"""Int8 kernels for quantized inference, compiled by Numba: the fast path engine.deploy picks when
Numba imports (kernels/numpy_cpu/int8.py is the reference and documents each kernel).

Numba types int32 * int32 as int64; every sum below is truncated back to int32 (np.int32(...))
at each step, which is exact (|sum| < 2^31 for k < 133,000) and lets LLVM keep 32-bit lanes.

Two product forms: _gemm_nt (columns x weights, the k loop vectorised: many taps) and
_conv_block / _conv_pool2 (direct from the NHWC input, the output-channel loop vectorised, with
the pool and the epilogue fused: few taps, such as a first conv on one channel, where k = 9 gives
_gemm_nt no vector loop). The bind_* functions return a plan step: the compiled call with its
arguments prepared once, so that a call costs Numba's dispatch only."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numba
import numpy as np

I32 = np.int32


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


@numba.njit(cache=True, boundscheck=False, error_model="numpy")
def _gemm_nt(a, bt, c):  # pragma: no cover - compiled
    """c[i, j] = sum_t a[i, t] bt[j, t], blocked 2 rows x 4 columns: each of a's rows is read
    once per 4 output columns, each bt row once per 2 rows; the t loop is contiguous in both,
    and LLVM vectorises its 8 int32 reductions (8 lanes each)."""
    m, k = a.shape
    n = bt.shape[0]
    m2, n4 = m - m % 2, n - n % 4
    for i in range(0, m2, 2):
        for j in range(0, n4, 4):
            s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = I32(0)
            for t in range(k):
                a0, a1 = I32(a[i, t]), I32(a[i + 1, t])
                b0, b1, b2, b3 = (
                    I32(bt[j, t]),
                    I32(bt[j + 1, t]),
                    I32(bt[j + 2, t]),
                    I32(bt[j + 3, t]),
                )
                s00, s01 = I32(s00 + I32(a0 * b0)), I32(s01 + I32(a0 * b1))
                s02, s03 = I32(s02 + I32(a0 * b2)), I32(s03 + I32(a0 * b3))
                s10, s11 = I32(s10 + I32(a1 * b0)), I32(s11 + I32(a1 * b1))
                s12, s13 = I32(s12 + I32(a1 * b2)), I32(s13 + I32(a1 * b3))
            c[i, j], c[i, j + 1], c[i, j + 2], c[i, j + 3] = s00, s01, s02, s03
            c[i + 1, j], c[i + 1, j + 1], c[i + 1, j + 2], c[i + 1, j + 3] = s10, s11, s12, s13
    for i in range(m):  # the edges: the last row (odd m), the last n % 4 columns
        for j in range(0 if i >= m2 else n4, n):
            s = I32(0)
            for t in range(k):
                s = I32(s + I32(I32(a[i, t]) * I32(bt[j, t])))
            c[i, j] = s


def int8_matmul_nt(a: np.ndarray, bt: np.ndarray) -> np.ndarray:
    """a int8 (m, k), bt int8 (n, k) -> int32 (m, n) = a @ bt^T (numpy_cpu's doc)."""
    c = np.empty((a.shape[0], bt.shape[0]), np.int32)
    _gemm_nt(np.ascontiguousarray(a), np.ascontiguousarray(bt), c)
    return c


def int8_gemm_nt(a: np.ndarray, bt: np.ndarray, out: np.ndarray) -> None:
    """out int32 (m, n) = a @ bt^T; a, bt int8 C-contiguous, out C-contiguous (numpy_cpu's doc)."""
    _gemm_nt(a, bt, out)


@numba.njit(cache=True, boundscheck=False, error_model="numpy")
def quantize_nhwc(x, scale, out):  # pragma: no cover - compiled
    """out int8 = clip(rint(x / scale), -127, 127), x float32 (n, h, w, c) (numpy_cpu's doc)."""
    n, h, w, c = out.shape
    for b in range(n):
        for i in range(h):
            for j in range(w):
                for o in range(c):
                    q = np.rint(x[b, i, j, o] / scale)
                    out[b, i, j, o] = np.int8(min(max(q, np.float32(-127)), np.float32(127)))


@numba.njit(inline="always", boundscheck=False, error_model="numpy")
def _store(m, f, scale, bias, has_bias, relu, out_scale, out, qout, b, i, j):  # pragma: no cover
    """The float32 steps of numpy_cpu's requantize / dequantize for output (b, i, j): the
    pooled int32 sums m (c,) rescaled, plus the bias, ReLU, then quantized into qout[b, i, j]
    (out_scale > 0) or written to out[b, i, j]; f (c,) float32 scratch."""
    c = len(m)
    for o in range(c):  # rescale, bias, ReLU: float32, as the reference
        y = np.float32(m[o]) * scale[o]
        y = y + bias[o] if has_bias else y
        f[o] = max(y, np.float32(0)) if relu else y
    if out_scale > 0:
        for o in range(c):
            q = min(max(np.rint(f[o] / out_scale), np.float32(-127)), np.float32(127))
            qout[b, i, j, o] = np.int8(q)
    else:
        for o in range(c):
            out[b, i, j, o] = f[o]


@numba.njit(cache=True, boundscheck=False, error_model="numpy")
def _epilogue(acc, scale, bias, has_bias, relu, out_scale, out, qout):  # pragma: no cover
    """numpy_cpu's requantize (into qout, out_scale > 0) or dequantize (into out) in one pass:
    per output, the max of the int32 sums over the taps first (exact: the rescale, bias, ReLU
    and quantization are non-decreasing, as scale >= 0), then float32 steps as the reference's.
    acc (taps, n, h, w, c); out / qout (n, h, w, c), any strides; the unused one is (1,1,1,1)."""
    taps, n, h, w, c = acc.shape
    m, f = np.empty(c, np.int32), np.empty(c, np.float32)
    for b in range(n):
        for i in range(h):
            for j in range(w):
                for o in range(c):  # full indices (no slices: no reference counting)
                    m[o] = acc[0, b, i, j, o]
                for t in range(1, taps):  # tap by tap: contiguous rows, vectorised over o
                    for o in range(c):
                        m[o] = max(m[o], acc[t, b, i, j, o])
                _store(m, f, scale, bias, has_bias, relu, out_scale, out, qout, b, i, j)


_NO_BIAS = np.zeros(1, np.float32)


def requantize(acc, scale, bias, relu, out_scale, out) -> None:
    """numpy_cpu's requantize in one compiled pass over the output."""
    unused = np.empty((1, 1, 1, 1), np.float32)
    has_bias = bias is not None
    _epilogue(acc, scale, bias if has_bias else _NO_BIAS, has_bias, relu, out_scale, unused, out)


def dequantize(acc, scale, bias, relu, out) -> None:
    """numpy_cpu's dequantize in one compiled pass over the output."""
    unused = np.empty((1, 1, 1, 1), np.int8)
    has_bias, zero = bias is not None, np.float32(0)
    _epilogue(acc, scale, bias if has_bias else _NO_BIAS, has_bias, relu, zero, out, unused)


@numba.njit(cache=True, boundscheck=False, error_model="numpy")
def _conv_block(
    xpad, wk, sh, sw, p, scale, bias, has_bias, relu, out_scale, out, qout
):  # pragma: no cover
    """numpy_cpu's conv_block, direct: per pooled output (b, i, j), the int32 sums of its p^2
    conv outputs straight from the windows of xpad, vectorised over the output channels (wk
    (kh, kw, c, oc) int16: one broadcast input times one weight row per tap), their max, then
    _store. No columns buffer and no int32 sums in memory: the fast form for few taps (the
    first conv, one input channel: kh kw c = 9), where the blocked product has no vector loop.
    (out or qout) (n, oh, ow, oc); the unused one is (1, 1, 1, 1)."""
    kh, kw, c, oc = wk.shape
    n, oh, ow = qout.shape[:3] if out_scale > 0 else out.shape[:3]
    acc, m, f = np.empty(oc, np.int32), np.empty(oc, np.int32), np.empty(oc, np.float32)
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                for u in range(p):
                    for v in range(p):
                        for o in range(oc):
                            acc[o] = 0
                        y0, x0 = (i * p + u) * sh, (j * p + v) * sw
                        for dy in range(kh):
                            for dx in range(kw):
                                for ch in range(c):
                                    x = I32(xpad[b, y0 + dy, x0 + dx, ch])
                                    for o in range(oc):  # contiguous: vectorised over o
                                        acc[o] = I32(acc[o] + I32(x * I32(wk[dy, dx, ch, o])))
                        if u == 0 and v == 0:
                            for o in range(oc):
                                m[o] = acc[o]
                        else:
                            for o in range(oc):
                                m[o] = max(m[o], acc[o])
                _store(m, f, scale, bias, has_bias, relu, out_scale, out, qout, b, i, j)


@numba.njit(cache=True, boundscheck=False, error_model="numpy")
def _conv_pool2(
    xpad, wk, sh, sw, scale, bias, has_bias, relu, out_scale, out, qout
):  # pragma: no cover
    """_conv_block for a 2 x 2 pool: the tile's 4 conv outputs summed together, so that each
    weight row is loaded once for 4 positions and the o loop does 4 times the work (the loop
    overhead, not the arithmetic, bounds the small-K case)."""
    kh, kw, c, oc = wk.shape
    n, oh, ow = qout.shape[:3] if out_scale > 0 else out.shape[:3]
    a0, a1, a2, a3 = (
        np.empty(oc, np.int32),
        np.empty(oc, np.int32),
        np.empty(oc, np.int32),
        np.empty(oc, np.int32),
    )
    m, f = np.empty(oc, np.int32), np.empty(oc, np.float32)
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                for o in range(oc):
                    a0[o] = a1[o] = a2[o] = a3[o] = 0
                y0, x0 = 2 * i * sh, 2 * j * sw  # the tile's top-left conv output's window
                for dy in range(kh):
                    for dx in range(kw):
                        for ch in range(c):
                            v0 = I32(xpad[b, y0 + dy, x0 + dx, ch])
                            v1 = I32(xpad[b, y0 + dy, x0 + sw + dx, ch])
                            v2 = I32(xpad[b, y0 + sh + dy, x0 + dx, ch])
                            v3 = I32(xpad[b, y0 + sh + dy, x0 + sw + dx, ch])
                            for o in range(oc):  # contiguous: vectorised over o
                                w = I32(wk[dy, dx, ch, o])
                                a0[o] = I32(a0[o] + I32(v0 * w))
                                a1[o] = I32(a1[o] + I32(v1 * w))
                                a2[o] = I32(a2[o] + I32(v2 * w))
                                a3[o] = I32(a3[o] + I32(v3 * w))
                for o in range(oc):
                    m[o] = max(max(a0[o], a1[o]), max(a2[o], a3[o]))
                _store(m, f, scale, bias, has_bias, relu, out_scale, out, qout, b, i, j)


def _conv_call(xpad, wk, stride, pool, scale, bias, relu, out_scale, out) -> Callable[[], None]:
    """The compiled conv kernel with its arguments prepared (numpy_cpu's conv_block's)."""
    wk = np.ascontiguousarray(wk, np.int16)
    has_bias = bias is not None
    bias = bias if has_bias else _NO_BIAS
    if out.dtype == np.int8:
        outs = (np.float32(out_scale), np.empty((1, 1, 1, 1), np.float32), out)
    else:
        outs = (np.float32(0), out, np.empty((1, 1, 1, 1), np.int8))
    (sh, sw), relu = stride, bool(relu)
    if pool == 2:
        return partial(_conv_pool2, xpad, wk, sh, sw, scale, bias, has_bias, relu, *outs)
    return partial(_conv_block, xpad, wk, sh, sw, pool, scale, bias, has_bias, relu, *outs)


def conv_block(xpad, wk, stride, pool, scale, bias, relu, out_scale, out) -> None:
    """numpy_cpu's conv_block in one compiled pass."""
    _conv_call(xpad, wk, stride, pool, scale, bias, relu, out_scale, out)()


def bind_conv_block(xpad, wk, stride, pool, scale, bias, relu, out_scale, out):
    """conv_block(...) as a call with no arguments, prepared once (numpy_cpu's doc); wk int16
    C-contiguous is used as it is, other layouts are converted here, once."""
    return _conv_call(xpad, wk, stride, pool, scale, bias, relu, out_scale, out)


def bind_requantize(acc, scale, bias, relu, out_scale, out):
    """requantize(...) prepared once: the compiled epilogue, no per-call allocation."""
    has_bias, unused = bias is not None, np.empty((1, 1, 1, 1), np.float32)
    bias = bias if has_bias else _NO_BIAS
    args = (np.float32(out_scale), unused, out)
    return partial(_epilogue, acc, scale, bias, has_bias, bool(relu), *args)


def bind_dequantize(acc, scale, bias, relu, out):
    """dequantize(...) prepared once."""
    has_bias, unused = bias is not None, np.empty((1, 1, 1, 1), np.int8)
    bias = bias if has_bias else _NO_BIAS
    return partial(_epilogue, acc, scale, bias, has_bias, bool(relu), np.float32(0), out, unused)


def bind_gemm_nt(a, bt, out):
    """int8_gemm_nt(a, bt, out) prepared once (a, bt int8, out int32, all C-contiguous)."""
    return partial(_gemm_nt, a, bt, out)
