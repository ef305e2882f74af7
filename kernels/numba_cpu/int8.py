"""Int8 kernels for quantized inference, compiled by Numba: the fast path engine.deploy picks when
Numba imports (kernels/numpy_cpu/int8.py is the reference and documents each kernel).

Numba types int32 * int32 as int64; every sum below is truncated back to int32 (np.int32(...))
at each step, which is exact (|sum| < 2^31 for k < 133,000) and lets LLVM keep 32-bit lanes.

Where the CPU has AVX2 (PAIRS), everything runs on one explicit register-blocked micro-kernel on
int16 pairs (vpmaddwd: see simd_int.py), the weights packed once per plan (pack_pairs): the
dense layers' product _gemm_pairs (bind_gemm_nt), and every conv as _conv_pairs (bind_conv_block:
straight from the NHWC codes, 4 windows at a time, with the pool and the epilogue fused). The
plan then keeps its codes in int16 buffers (code_dtype). Elsewhere: _gemm_nt (the same product
in plain loops, LLVM vectorising the k loop; also the one-off int8_matmul_nt / int8_gemm_nt,
which would pay the packing per call), and _conv_block / _conv_pool2 (direct, the output-channel
loop vectorised: convs with few taps, such as a first conv on one channel, where k = 9 gives
_gemm_nt no vector loop). The bind_* functions return a plan step: the compiled call with its
arguments prepared once, so that a call costs Numba's dispatch only."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numba
import numpy as np

from .simd import vload, vstore, vzeros
from .simd_int import HAS_PMADDWD, vmaddwd, vmax32, vpair, vpair_last

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


# ---- the int16-pair micro-kernel (AVX2's vpmaddwd; simd_int.py), used where the CPU has it ----

PAIRS = HAS_PMADDWD  # bind_gemm_nt's choice (tests set it False to run _gemm_nt's plan)
MR, NR = 6, 16  # a block of 6 rows x 16 output columns: 12 int32 x 8 accumulators in registers


def pairs() -> bool:
    """Whether the plan's products and convs run on the vpmaddwd micro-kernel (PAIRS)."""
    return PAIRS


def code_dtype() -> np.dtype:
    """The dtype engine.deploy's int8 plan keeps quantized activations (int8 codes, -127..127)
    in for these kernels: int16 where the micro-kernel reads them (a pair of codes is then one
    32-bit broadcast load; from int8 it is a load, a sign extension and a broadcast, which made
    seed_cnn's second conv 1.3-1.6x slower), else int8."""
    return np.dtype(np.int16 if PAIRS else np.int8)


def pack_pairs(bt: np.ndarray) -> np.ndarray:
    """bt int8 (n, k) -> the weight panels of _gemm_pairs, int16 1-D, laid out as
    (ceil(n / 16), ceil(k / 2), 2, 8, 2): [q, kk, h, j, t] = bt[16 q + 8 h + j, 2 kk + t], zero
    where that is outside bt (k padded to even, n to a multiple of 16). One 16-int16 vector is
    8 output columns x one k-pair, the operand of one vpmaddwd. Done once per plan."""
    n, k = bt.shape
    nq, kp = -(-n // NR), -(-k // 2)
    padded = np.zeros((nq * NR, 2 * kp), np.int16)
    padded[:n, :k] = bt
    return np.ascontiguousarray(padded.reshape(nq, 2, 8, kp, 2).transpose(0, 3, 1, 2, 4)).ravel()


@numba.njit(inline="always", boundscheck=False, error_model="numpy")
def _put(cf, c0, start, stop, acc, tmp):  # pragma: no cover - compiled
    """cf[c0 + t] = acc's lane t for t < stop - start (stop - start in 0..8)."""
    if stop - start == 8:
        vstore(cf, c0, acc)
    elif stop > start:
        vstore(tmp, 0, acc)
        for t in range(stop - start):
            cf[c0 + t] = tmp[t]


@numba.njit(inline="always", boundscheck=False, error_model="numpy")
def _madd6(s, w0, w1, x0, x1, x2, x3, x4, x5):  # pragma: no cover - compiled
    """The 6 x 2 accumulators s (a tuple) plus rows x0..x5 times the panel vectors w0, w1."""
    return (
        vmaddwd(s[0], x0, w0), vmaddwd(s[1], x0, w1),
        vmaddwd(s[2], x1, w0), vmaddwd(s[3], x1, w1),
        vmaddwd(s[4], x2, w0), vmaddwd(s[5], x2, w1),
        vmaddwd(s[6], x3, w0), vmaddwd(s[7], x3, w1),
        vmaddwd(s[8], x4, w0), vmaddwd(s[9], x4, w1),
        vmaddwd(s[10], x5, w0), vmaddwd(s[11], x5, w1),
    )  # fmt: skip


@numba.njit(cache=True, boundscheck=False, error_model="numpy")
def _gemm_pairs(a, panels, c):  # pragma: no cover - compiled
    """c[i, j] = sum_t a[i, t] bt[j, t] with panels = pack_pairs(bt): per block of 6 rows x 16
    columns, 12 int32 x 8 accumulators over all of k, each step one pair (a[i, 2kk],
    a[i, 2kk + 1]) broadcast (vpair) times one panel vector (vmaddwd); an odd k's last element
    pairs with 0 (vpair_last), after the loop, so that the loop has no branch (a branch there
    makes LLVM keep the accumulators in memory). a int8 or int16 (m, k), c int32 (m, n), both
    C-contiguous. The sums are exact int32, as _gemm_nt's."""
    m, k = a.shape
    n = c.shape[1]
    af, cf = a.reshape(m * k), c.reshape(m * n)
    k2, kp, nq = k // 2, (k + 1) // 2, (n + NR - 1) // NR
    tmp = np.empty(8, np.int32)
    m6 = m - m % MR
    for i in range(0, m6, MR):
        for q in range(nq):
            z = vzeros(c)
            s = (z, z, z, z, z, z, z, z, z, z, z, z)
            w = q * kp * 32  # this panel's first vector
            for kk in range(k2):
                t = i * k + 2 * kk
                x0, x1, x2 = vpair(af, t), vpair(af, t + k), vpair(af, t + 2 * k)
                x3, x4, x5 = vpair(af, t + 3 * k), vpair(af, t + 4 * k), vpair(af, t + 5 * k)
                w0, w1 = vload(panels, w + kk * 32), vload(panels, w + kk * 32 + 16)
                s = _madd6(s, w0, w1, x0, x1, x2, x3, x4, x5)
            if kp > k2:  # odd k
                t = i * k + 2 * k2
                x0, x1, x2 = vpair_last(af, t), vpair_last(af, t + k), vpair_last(af, t + 2 * k)
                x3, x4 = vpair_last(af, t + 3 * k), vpair_last(af, t + 4 * k)
                x5 = vpair_last(af, t + 5 * k)
                w0, w1 = vload(panels, w + k2 * 32), vload(panels, w + k2 * 32 + 16)
                s = _madd6(s, w0, w1, x0, x1, x2, x3, x4, x5)
            j = q * NR
            lo, hi = min(j + 8, n), min(j + 16, n)
            for r in range(MR):  # unrolled by LLVM (s is a tuple of registers)
                _put(cf, (i + r) * n + j, j, lo, s[2 * r], tmp)
                _put(cf, (i + r) * n + lo, lo, hi, s[2 * r + 1], tmp)
    for i in range(m6, m):  # the last m % 6 rows, one at a time
        for q in range(nq):
            s0 = s1 = vzeros(c)
            w = q * kp * 32
            for kk in range(k2):
                x = vpair(af, i * k + 2 * kk)
                w0, w1 = vload(panels, w + kk * 32), vload(panels, w + kk * 32 + 16)
                s0, s1 = vmaddwd(s0, x, w0), vmaddwd(s1, x, w1)
            if kp > k2:
                x = vpair_last(af, i * k + 2 * k2)
                w0, w1 = vload(panels, w + k2 * 32), vload(panels, w + k2 * 32 + 16)
                s0, s1 = vmaddwd(s0, x, w0), vmaddwd(s1, x, w1)
            j = q * NR
            lo, hi = min(j + 8, n), min(j + 16, n)
            _put(cf, i * n + j, j, lo, s0, tmp)
            _put(cf, i * n + lo, lo, hi, s1, tmp)


def int8_matmul_nt(a: np.ndarray, bt: np.ndarray) -> np.ndarray:
    """a int8 (m, k), bt int8 (n, k) -> int32 (m, n) = a @ bt^T (numpy_cpu's doc)."""
    c = np.empty((a.shape[0], bt.shape[0]), np.int32)
    _gemm_nt(np.ascontiguousarray(a), np.ascontiguousarray(bt), c)  # no packing per call
    return c


def int8_gemm_nt(a: np.ndarray, bt: np.ndarray, out: np.ndarray) -> None:
    """out int32 (m, n) = a @ bt^T; a, bt int8 C-contiguous, out C-contiguous (numpy_cpu's doc)."""
    _gemm_nt(a, bt, out)  # a single call: packing bt for _gemm_pairs would cost more


@numba.njit(cache=True, boundscheck=False, error_model="numpy")
def quantize_nhwc(x, scale, out):  # pragma: no cover - compiled
    """out = clip(rint(x / scale), -127, 127), x float32 (n, h, w, c) (numpy_cpu's doc); out
    int8, or int16 (the plan's codes on the micro-kernel, code_dtype)."""
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


def row_pairs(wk: np.ndarray) -> np.ndarray:
    """The weights wk (kh, kw, c, oc) as _conv_pairs reads a window: in NHWC a window row's
    taps (dx, ch) are kw c consecutive codes, taken in pairs in place; a row of odd length gets
    one zero weight, so that its last pair's second code (the element after the row) counts
    for nothing. Returns pack_pairs of the (oc, kh run) matrix, run = kw c rounded up to even."""
    kh, kw, c, oc = wk.shape
    run = kw * c + (kw * c) % 2
    rows = np.zeros((kh, run, oc), np.int16)
    rows[:, : kw * c] = wk.reshape(kh, kw * c, oc)
    return pack_pairs(rows.reshape(kh * run, oc).T)


@numba.njit(inline="always", boundscheck=False, error_model="numpy")
def _window_sums(src, o, starts, panels, w, kp, z):  # pragma: no cover - compiled
    """One conv output's int32 sums for one panel's 16 output channels: pair kk of its window
    is (src[o + starts[kk]], the element after it), broadcast (vpair) times one panel vector
    pair (vmaddwd); z an int32 zero vector."""
    s0 = s1 = z
    for kk in range(kp):
        x = vpair(src, o + starts[kk])
        s0 = vmaddwd(s0, x, vload(panels, w + kk * 32))
        s1 = vmaddwd(s1, x, vload(panels, w + kk * 32 + 16))
    return s0, s1


@numba.njit(inline="always", boundscheck=False, error_model="numpy")
def _tile4(src, o0, o1, o2, o3, starts, panels, w, kp, z):  # pragma: no cover - compiled
    """_window_sums for the 4 windows at src[o0..o3] at once: 8 independent accumulators (they
    hide vpmaddwd's latency) and each panel vector loaded once for 4 outputs."""
    a0 = a1 = b0 = b1 = c0 = c1 = d0 = d1 = z
    for kk in range(kp):
        t = starts[kk]
        w0, w1 = vload(panels, w + kk * 32), vload(panels, w + kk * 32 + 16)
        x = vpair(src, o0 + t)
        a0, a1 = vmaddwd(a0, x, w0), vmaddwd(a1, x, w1)
        x = vpair(src, o1 + t)
        b0, b1 = vmaddwd(b0, x, w0), vmaddwd(b1, x, w1)
        x = vpair(src, o2 + t)
        c0, c1 = vmaddwd(c0, x, w0), vmaddwd(c1, x, w1)
        x = vpair(src, o3 + t)
        d0, d1 = vmaddwd(d0, x, w0), vmaddwd(d1, x, w1)
    return a0, a1, b0, b1, c0, c1, d0, d1


@numba.njit(inline="always", boundscheck=False, error_model="numpy")
def _copy_window(xf, o, kh, row, n_run, run, scratch, r):  # pragma: no cover - compiled
    """Row r of scratch (kh run codes) = the window at xf[o], its rows of n_run codes each
    followed by a 0 when run > n_run: what _tile4 reads in place, without reading past xf."""
    for dy in range(kh):
        for t in range(n_run):
            scratch[(r * kh + dy) * run + t] = xf[o + dy * row + t]
        if run > n_run:
            scratch[(r * kh + dy) * run + n_run] = 0


@numba.njit(cache=True, boundscheck=False, error_model="numpy")
def _conv_pairs(
    xpad, kh, kw, panels, sh, sw, p, scale, bias, has_bias, relu, out_scale, out, qout
):  # pragma: no cover - compiled
    """numpy_cpu's conv_block on the vpmaddwd micro-kernel, straight from the windows: a window
    row's kw c taps are consecutive codes in NHWC, multiplied in pairs in place (panels:
    row_pairs of the weights), per panel of 16 output channels into 2 int32 x 8 accumulators
    per conv output, four conv outputs at a time (_tile4): a 2 x 2 pool tile, or 4 neighbours
    along a row without a pool; a pool takes their max (vmax32), then _store. No columns and no
    int32 sums in memory. A row of odd length reads one code past itself (its weight is 0);
    where that would be past the end of xpad (the last windows of the last image) the windows
    are first copied with a 0 there (_copy_window). xpad int8 or int16 C-contiguous (n, hp,
    wp, c); (out or qout) (n, oh, ow, oc), the unused one (1, 1, 1, 1)."""
    n, hp, wp, c = xpad.shape
    xf = xpad.reshape(n * hp * wp * c)
    oh, ow, oc = qout.shape[1:] if out_scale > 0 else out.shape[1:]
    n_run = kw * c  # a window row's codes
    run = n_run + n_run % 2
    kp, nq = kh * run // 2, (oc + NR - 1) // NR
    m, f = np.empty((4, nq * NR), np.int32), np.empty(oc, np.float32)
    row, image, size = wp * c, hp * wp * c, n * hp * wp * c
    step, group = sw * c, 4 if p == 1 else 1  # p = 1: 4 outputs of a row per group
    starts = np.empty(kp, np.int64)  # pair kk: row kk // (run / 2), codes 2 (kk % (run / 2))
    copied = np.empty(kp, np.int64)  # the same in _copy_window's rows
    for kk in range(kp):
        dy, t = divmod(2 * kk, run)
        starts[kk], copied[kk] = dy * row + t, dy * run + t
    scratch = np.empty(4 * kh * run, np.int16)
    z = vzeros(m[0])
    for b in range(n):
        for i in range(oh):
            for j0 in range(0, ow, group):
                o0 = b * image + i * p * sh * row + j0 * p * sw * c  # the first window
                if p == 2 or (p == 1 and j0 + 4 <= ow):  # 4 windows: a tile, or 4 in a row
                    o1 = o0 + step
                    o2 = o0 + sh * row if p == 2 else o1 + step
                    o3 = o2 + step
                    safe = max(o1, o3) + (kh - 1) * row + run <= size
                    if not safe:
                        for r, o in enumerate((o0, o1, o2, o3)):
                            _copy_window(xf, o, kh, row, n_run, run, scratch, r)
                    for q in range(nq):
                        w = q * kp * 32
                        if safe:
                            sums = _tile4(xf, o0, o1, o2, o3, starts, panels, w, kp, z)
                        else:
                            r1, r2, r3 = kh * run, 2 * kh * run, 3 * kh * run
                            sums = _tile4(scratch, 0, r1, r2, r3, copied, panels, w, kp, z)
                        a0, a1, b0, b1, c0, c1, d0, d1 = sums
                        if p == 2:
                            a0 = vmax32(vmax32(a0, b0), vmax32(c0, d0))
                            a1 = vmax32(vmax32(a1, b1), vmax32(c1, d1))
                        else:
                            vstore(m[1], q * NR, b0)
                            vstore(m[1], q * NR + 8, b1)
                            vstore(m[2], q * NR, c0)
                            vstore(m[2], q * NR + 8, c1)
                            vstore(m[3], q * NR, d0)
                            vstore(m[3], q * NR + 8, d1)
                        vstore(m[0], q * NR, a0)
                        vstore(m[0], q * NR + 8, a1)
                else:  # one window at a time: the last outputs of a row, pools of 3+
                    for jj in range(min(group, ow - j0)):
                        for r in range(p * p):
                            o = o0 + jj * step + (r // p) * sh * row + (r % p) * sw * c
                            safe = o + (kh - 1) * row + run <= size
                            if not safe:
                                _copy_window(xf, o, kh, row, n_run, run, scratch, 0)
                            for q in range(nq):
                                w = q * kp * 32
                                if safe:
                                    s0, s1 = _window_sums(xf, o, starts, panels, w, kp, z)
                                else:
                                    s0, s1 = _window_sums(scratch, 0, copied, panels, w, kp, z)
                                if r > 0:
                                    s0 = vmax32(s0, vload(m[jj], q * NR))
                                    s1 = vmax32(s1, vload(m[jj], q * NR + 8))
                                vstore(m[jj], q * NR, s0)
                                vstore(m[jj], q * NR + 8, s1)
                for jj in range(min(group, ow - j0)):
                    sums_of = m[jj, :oc]
                    _store(
                        sums_of, f, scale, bias, has_bias, relu, out_scale, out, qout, b, i, j0 + jj
                    )


def _conv_call(xpad, wk, stride, pool, scale, bias, relu, out_scale, out) -> Callable[[], None]:
    """The compiled conv kernel with its arguments prepared (numpy_cpu's conv_block's)."""
    wk = np.ascontiguousarray(wk, np.int16)
    has_bias = bias is not None
    bias = bias if has_bias else _NO_BIAS
    if out.dtype.kind == "i":  # int8 codes (in int8 or int16): requantize
        outs = (np.float32(out_scale), np.empty((1, 1, 1, 1), np.float32), out)
    else:
        outs = (np.float32(0), out, np.empty((1, 1, 1, 1), np.int8))
    (sh, sw), relu = stride, bool(relu)
    if PAIRS and xpad.flags.c_contiguous:  # the micro-kernel, weights packed here, once
        kh, kw = wk.shape[:2]
        args = (sh, sw, pool, scale, bias, has_bias, relu, *outs)
        return partial(_conv_pairs, xpad, kh, kw, row_pairs(wk), *args)
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
    """int8_gemm_nt(a, bt, out) prepared once (a, bt int8, out int32, all C-contiguous): the
    vpmaddwd micro-kernel with bt packed here, once (PAIRS: the CPU has AVX2), else _gemm_nt."""
    if PAIRS and a.flags.c_contiguous and out.flags.c_contiguous:
        return partial(_gemm_pairs, a, pack_pairs(bt), out)
    return partial(_gemm_nt, a, bt, out)
