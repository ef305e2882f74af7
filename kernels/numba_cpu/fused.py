"""Fused conv2d + bias + ReLU + max-pool compiled by Numba: the conv output never reaches memory.

Why (seed CNN, b256, float32): the unfused layer writes the conv output (22 MB for conv1), reads
and writes it again for ReLU, reads it once more for the pool, and its backward writes a zero-filled
gradient for the pool and multiplies it by the ReLU mask in another pass. Here each task computes
one conv plane (direct path) or one chunk of planes (im2col + GEMM path) into a buffer that stays
in cache, and rectifies and pools it from there; only y (a quarter of the size) and argmax are
written. A 3x3 conv with a 2x2 pool (the common block) has its own kernels: polyphase.py for a thin
input (window by window, in registers), winograd.py otherwise (F(2x2, 3x3): a 2x2 output tile is
one pooling window). The backward never builds the conv-output gradient: polyphase.py for that
thin layer when no input gradient is needed, sparse_grad.py (one axpy per pooling window that
passes a gradient) for everything else.
The semantics are the numpy_cpu composition's, argmax included (kernels/numpy_cpu/fused.py): the
pool runs over rectified values, first maximum in row-major tap order, NaN wins.

Pool geometry: window (i, j), tap (u, v) reads conv row i*sh + u - ph and column j*sw + v - pw;
taps outside the conv output are padding and never win (each window has one inside tap at least).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from kernels.numpy_cpu import fused as reference
from kernels.numpy_cpu._xp import out_size

from . import polyphase, sparse_grad, winograd
from ._tasks import run_tasks
from .conv import (
    DIRECT_MAX_K,
    _c,
    _chunk,
    _direct_plane,
    _im2col_t,
    _im2col_wide,
    _jrange,
    _padded,
    single_threaded_inner_blas,
)

JIT = dict(cache=True, fastmath=False, nogil=True)


@njit(**JIT)
def _relu_pool_plane(z, rs, oh, ow, bias, kh, kw, sh, sw, ph, pw, y, argmax):
    """y[i, j] = max over the window's taps of relu(z[r*rs + c] + bias), conv pixel (r, c);
    argmax[i, j] = the first winning tap u*kw + v. y (qh, qw) and argmax are one plane each.

    The rows y[i] and argmax[i] are the running best, updated tap by tap across the whole row
    (the loop over j is the inner one, on slices, so Numba can vectorise it). Rectified values
    are >= 0 or NaN, so a start of -1 loses to any tap and the first tap inside wins first."""
    if kh == 2 and kw == 2 and sh == 2 and sw == 2 and ph == 0 and pw == 0:
        _relu_pool_2x2(z, rs, bias, y, argmax)  # the CNNs' common pool, 5x faster (measured)
        return
    qh, qw = y.shape
    zero = y.dtype.type(0)  # a typed zero: a literal 0 would turn the float32 selects into float64
    for i in range(qh):
        yr, ar = y[i], argmax[i]
        yr[:] = -1
        ar[:] = -1
        for u in range(kh):
            r = i * sh + u - ph  # conv row of tap row u
            if r < 0 or r >= oh:
                continue
            zr = z[r * rs : r * rs + ow]
            for v in range(kw):
                j0, j1 = _jrange(v, sw, pw, qw, ow)  # windows whose tap column v is inside
                if j1 <= j0:
                    continue
                zs = zr[j0 * sw + v - pw :]  # zs[k*sw] is conv column (j0 + k)*sw + v - pw
                ys, as_ = yr[j0:j1], ar[j0:j1]
                tap = u * kw + v
                for k in range(j1 - j0):
                    val = zs[k * sw] + bias
                    val = val if (val > 0) | (val != val) else zero  # ReLU; NaN stays NaN
                    best = ys[k]
                    # strict '>' keeps the first maximum; a NaN replaces a number, once
                    # (`|`, `&`: selects, not branches, as in _relu_pool_2x2)
                    win = (val > best) | ((val != val) & (best == best))
                    ys[k] = val if win else best
                    as_[k] = tap if win else as_[k]


@njit(inline="always", **JIT)
def _relu_pool_2x2(z, rs, bias, y, argmax):
    """_relu_pool_plane for kernel 2x2, stride 2, no padding: window (i, j) reads conv rows 2i,
    2i + 1 and columns 2j, 2j + 1. Constant strides and selects only, so the loop vectorises."""
    qh, qw = y.shape
    zero = y.dtype.type(0)
    for i in range(qh):
        z0 = z[2 * i * rs : 2 * i * rs + 2 * qw]  # conv row 2i
        z1 = z[(2 * i + 1) * rs : (2 * i + 1) * rs + 2 * qw]  # conv row 2i + 1
        yr, ar = y[i], argmax[i]
        # written out tap by tap, with `|` and `&` rather than `or`/`and`: short-circuit
        # operators become branches, which mispredict on real data (5x slower, measured);
        # these are selects, and the loop vectorises
        for j in range(qw):
            best = z0[2 * j] + bias  # tap 0 always starts the window
            best = best if (best > 0) | (best != best) else zero  # ReLU; NaN stays NaN
            arg = 0
            val = z0[2 * j + 1] + bias
            val = val if (val > 0) | (val != val) else zero
            win = (val > best) | ((val != val) & (best == best))  # first max wins; NaN once
            best = val if win else best
            arg = 1 if win else arg
            val = z1[2 * j] + bias
            val = val if (val > 0) | (val != val) else zero
            win = (val > best) | ((val != val) & (best == best))
            best = val if win else best
            arg = 2 if win else arg
            val = z1[2 * j + 1] + bias
            val = val if (val > 0) | (val != val) else zero
            win = (val > best) | ((val != val) & (best == best))
            best = val if win else best
            arg = 3 if win else arg
            yr[j] = best
            ar[j] = arg


@njit(**JIT)
def _fused_direct_body(
    xpad, W, bias, sh, sw, oh, ow, kh, kw, psh, psw, pph, ppw, y, argmax, lo, hi
):
    """Task p in [lo, hi) = plane (b, o) = divmod(p, oc): conv plane by _direct_plane (no bias)
    into a cache-resident buffer, then ReLU + pool into y[b, o] and argmax[b, o]."""
    oc = W.shape[0]
    z = np.empty(oh * xpad.shape[3] + ow, dtype=y.dtype)
    for p in range(lo, hi):
        b, o = p // oc, p % oc
        rs = _direct_plane(xpad, W, b, o, sh, sw, oh, ow, z)
        _relu_pool_plane(z, rs, oh, ow, bias[o], kh, kw, psh, psw, pph, ppw, y[b, o], argmax[b, o])


@njit(**JIT)
def _fused_gemm_body(
    x,
    Wm,
    bias,
    ckh,
    ckw,
    sh,
    sw,
    ph,
    pw,
    oh,
    ow,
    chunk,
    kh,
    kw,
    psh,
    psw,
    pph,
    ppw,
    y,
    argmax,
    lo,
    hi,
):
    """Task t = images [t*chunk, (t+1)*chunk): K-major im2col of the chunk, one single-threaded
    BLAS call out = Wm @ cols (oc, chunk*P), then ReLU + pool of each plane straight from out."""
    n, oc = x.shape[0], Wm.shape[0]
    npix = oh * ow
    for t in range(lo, hi):
        b0 = t * chunk
        b1 = min(n, b0 + chunk)
        cols = np.empty((Wm.shape[1], (b1 - b0) * npix), dtype=x.dtype)
        _im2col_t(x, b0, b1, ckh, ckw, sh, sw, ph, pw, oh, ow, cols)
        out = np.dot(Wm, cols)
        for b in range(b0, b1):
            for o in range(oc):
                plane = out[o, (b - b0) * npix : (b - b0 + 1) * npix]  # conv plane (b, o), rs = ow
                _relu_pool_plane(
                    plane, ow, oh, ow, bias[o], kh, kw, psh, psw, pph, ppw, y[b, o], argmax[b, o]
                )


@njit(**JIT)
def _pad_crop(x, b0, b1, ph, pw, dst):
    """dst[b - b0] = image b of x zero-padded by (ph, pw) and cropped to dst's (hc, wc)."""
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    hc, wc = dst.shape[2], dst.shape[3]
    wn = max(0, min(w, wc - pw))  # input columns inside the crop
    for b in range(b0, b1):
        for ch in range(c):
            for r in range(hc):
                row = dst[b - b0, ch, r]
                yy = r - ph
                if (yy < 0) | (yy >= h):
                    row[:] = 0
                    continue
                row[:pw] = 0
                src, out = x[b, ch, yy], row[pw:]
                for k in range(wn):
                    out[k] = src[k]
                row[pw + wn :] = 0


@njit(**JIT)
def _fused_wide_body(
    x, Wm, bias, ckh, ckw, ph, pw, oh, ow, chunk, kh, kw, psh, psw, pph, ppw, y, argmax, lo, hi
):
    """_fused_gemm_body for a stride-1 conv, in the wide layout of kernels/numba_cpu/conv.py:
    each chunk's images are padded and cropped to the conv rows/columns the pool reads (oh, ow)
    into a small buffer, then im2col is one memcpy per run and the pool reads each plane with
    row stride wc."""
    n, c, oc = x.shape[0], x.shape[1], Wm.shape[0]
    hc, wc = oh + ckh - 1, ow + ckw - 1
    span = (oh - 1) * wc + ow
    # work buffers allocated once per call, not per chunk: fresh large allocations page-fault
    xcbuf = np.empty((chunk, c, hc, wc), dtype=x.dtype)
    colsbuf = np.empty(Wm.shape[1] * chunk * span, dtype=x.dtype)
    outbuf = np.empty(oc * chunk * span, dtype=x.dtype)
    for t in range(lo, hi):
        b0 = t * chunk
        b1 = min(n, b0 + chunk)
        cols = colsbuf[: Wm.shape[1] * (b1 - b0) * span].reshape(Wm.shape[1], (b1 - b0) * span)
        out = outbuf[: oc * (b1 - b0) * span].reshape(oc, (b1 - b0) * span)
        _pad_crop(x, b0, b1, ph, pw, xcbuf)
        _im2col_wide(xcbuf, 0, b1 - b0, ckh, ckw, span, cols)
        np.dot(Wm, cols, out)
        for b in range(b0, b1):
            for o in range(oc):
                plane = out[o, (b - b0) * span : (b - b0 + 1) * span]
                _relu_pool_plane(
                    plane, wc, oh, ow, bias[o], kh, kw, psh, psw, pph, ppw, y[b, o], argmax[b, o]
                )


def _finite(*arrays) -> bool:
    """Whether the arrays hold only finite values. The fast kernels of the common block skip work
    the dense formula does: Winograd subtracts inputs (inf - inf = NaN where the direct sum keeps
    +-inf), and the backward kernels never multiply the zero gradients of the pixels that are not a
    window's argmax (0 * inf = NaN in the dense formula). With a NaN or an infinity in x (or W),
    the reference composition runs instead, so results stay the reference's IEEE ones. Costs ~1%
    of a seed-CNN step (checking in the kernels' copy loops instead cost ~1 s of compilation)."""
    return all(bool(np.isfinite(a).all()) for a in arrays)


def _pool_reach(o, k, s, p, q):
    """Conv rows (or columns) 0..reach-1 hold every tap the pool reads: the last window's last
    tap is (q - 1)*s + k - 1 - p. Rows beyond (floor mode drops them) are never computed: for
    the seed CNN's conv2, 10 of 11 rows and columns, 16% of its GEMM work (measured 141 -> 118
    columns per image in the wide layout)."""
    return min(o, (q - 1) * s + k - p)


def conv2d_relu_max_pool2d_forward(x, W, b, stride, padding, pool_size, pool_stride, pool_padding):
    """See kernels.numpy_cpu.fused.conv2d_relu_max_pool2d_forward: (y, argmax int32)."""
    (sh, sw), (ph, pw) = stride, padding
    oc, c, ckh, ckw = W.shape
    n, _, h, w = x.shape
    oh, ow = out_size(h, ckh, sh, ph), out_size(w, ckw, sw, pw)
    pool = (*pool_size, *pool_stride, *pool_padding)
    qh = out_size(oh, pool_size[0], pool_stride[0], pool_padding[0])
    qw = out_size(ow, pool_size[1], pool_stride[1], pool_padding[1])
    bias = np.zeros(oc, dtype=x.dtype) if b is None else _c(b)
    if polyphase.applies(c, (ckh, ckw), stride, pool_size, pool_stride, pool_padding, DIRECT_MAX_K):
        return polyphase.forward(_padded(x, ph, pw), _c(W), bias, qh, qw, run_tasks)
    if winograd.applies((ckh, ckw), stride, pool_size, pool_stride, pool_padding):
        single_threaded_inner_blas()
        chunk = _chunk(n, 16 * (c + oc) * qh * qw)  # V and M of a chunk stay in L2
        if _finite(x, W):
            return winograd.forward(_c(x), _c(W), bias, padding, qh, qw, chunk, run_tasks)
        return reference.conv2d_relu_max_pool2d_forward(
            x, W, b, stride, padding, pool_size, pool_stride, pool_padding
        )
    y = np.empty((n, oc, qh, qw), dtype=x.dtype)
    argmax = np.empty((n, oc, qh, qw), dtype=np.int32)
    if c * ckh * ckw <= DIRECT_MAX_K:
        args = (_padded(x, ph, pw), _c(W), bias, sh, sw, oh, ow, *pool, y, argmax)
        run_tasks(_fused_direct_body, n * oc, *args)
    elif sh == 1 and sw == 1:
        single_threaded_inner_blas()
        ohu = _pool_reach(oh, pool_size[0], pool_stride[0], pool_padding[0], qh)
        owu = _pool_reach(ow, pool_size[1], pool_stride[1], pool_padding[1], qw)
        chunk = _chunk(n, c * ckh * ckw * ohu * owu)
        args = (_c(x), _c(W).reshape(oc, -1), bias, ckh, ckw, ph, pw, ohu, owu, chunk)
        run_tasks(_fused_wide_body, -(-n // chunk), *args, *pool, y, argmax)
    else:
        single_threaded_inner_blas()
        chunk = _chunk(n, c * ckh * ckw * oh * ow)
        args = (_c(x), _c(W).reshape(oc, -1), bias, ckh, ckw, sh, sw, ph, pw, oh, ow, chunk)
        run_tasks(_fused_gemm_body, -(-n // chunk), *args, *pool, y, argmax)
    return y, argmax


def conv2d_relu_max_pool2d_backward(
    gy, y, argmax, x, W, stride, padding, pool_size, pool_stride, pool_padding, need_gx
):
    """See kernels.numpy_cpu.fused.conv2d_relu_max_pool2d_backward: (gx or None, gW, gb).
    The full conv-output gradient is never built: a thin 3x3 first layer (no gx) runs the
    polyphase kernel; every other geometry the window-driven kernel of sparse_grad.py. Both skip
    the pixels without a gradient, so when x (or W) holds a NaN or an infinity, whose product with
    those zero gradients is NaN in the dense formula, the reference composition runs instead."""
    (sh, sw), (ph, pw) = stride, padding
    oc, c, ckh, ckw = W.shape
    n, _, h, w = x.shape
    gy, y, argmax = _c(gy), _c(y), _c(argmax)
    if not _finite(x, W):  # the reference's IEEE results (see _finite)
        return reference.conv2d_relu_max_pool2d_backward(
            gy, y, argmax, x, W, stride, padding, pool_size, pool_stride, pool_padding, need_gx
        )
    qh, qw = gy.shape[2:]
    if (
        not need_gx
        and polyphase.applies(
            c, (ckh, ckw), stride, pool_size, pool_stride, pool_padding, DIRECT_MAX_K
        )
        and polyphase.grad_fits(oc, c, qh, qw, gy.dtype.itemsize)
    ):
        gW, gb = polyphase.grad_weight(gy, y, argmax, _padded(x, ph, pw), W.shape, run_tasks)
        return None, gW, gb
    oh, ow = out_size(h, ckh, sh, ph), out_size(w, ckw, sw, pw)
    ohu = _pool_reach(oh, pool_size[0], pool_stride[0], pool_padding[0], qh)
    owu = _pool_reach(ow, pool_size[1], pool_stride[1], pool_padding[1], qw)
    hc, wc = (ohu - 1) * sh + ckh, (owu - 1) * sw + ckw  # padded input rows/columns read
    pool = (*pool_size, *pool_stride, *pool_padding)
    return sparse_grad.grad(
        gy, y, argmax, _c(x), _c(W), stride, padding, pool, hc, wc, need_gx, run_tasks
    )
