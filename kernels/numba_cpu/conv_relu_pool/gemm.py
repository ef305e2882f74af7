"""The fused block for any geometry the fast kernels do not take: a direct loop per conv plane for
thin inputs, chunked im2col + one BLAS GEMM per chunk otherwise (the wide layout at stride 1).

Each task computes one conv plane (direct) or one chunk of planes (GEMM) into a buffer that stays
in cache, and rectifies and pools it from there; only y and argmax reach memory. Pool geometry:
window (i, j), tap (u, v) reads conv row i*sh + u - ph and column j*sw + v - pw; taps outside the
conv output are padding and never win (each window has one inside tap at least). Tie rule:
window.better (first maximum in row-major tap order, a NaN wins and sticks).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..conv import direct_plane, im2col_kmajor, im2col_wide
from ..window import better, first_max4, relu, window_span, windows_inside

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
        r0, r1, r2 = window_span(i, kh, sh, ph, oh)  # conv rows [r1, r2) inside; tap u = r - r0
        for r in range(r1, r2):
            zr = z[r * rs : r * rs + ow]
            for v in range(kw):
                j0, j1 = windows_inside(v, sw, pw, qw, ow)  # windows whose tap column v is inside
                zs = zr[j0 * sw + v - pw :]  # zs[k*sw] is conv column (j0 + k)*sw + v - pw
                ys, as_ = yr[j0:j1], ar[j0:j1]
                tap = (r - r0) * kw + v
                for k in range(j1 - j0):
                    val = relu(zs[k * sw] + bias, zero)
                    best = ys[k]
                    win = better(val, best)
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
        for j in range(qw):
            yr[j], ar[j] = first_max4(
                relu(z0[2 * j] + bias, zero),
                relu(z0[2 * j + 1] + bias, zero),
                relu(z1[2 * j] + bias, zero),
                relu(z1[2 * j + 1] + bias, zero),
            )


@njit(**JIT)
def direct_body(xpad, W, bias, sh, sw, oh, ow, kh, kw, psh, psw, pph, ppw, y, argmax, lo, hi):
    """Task p in [lo, hi) = plane (b, o) = divmod(p, oc): conv plane by direct_plane (no bias)
    into a cache-resident buffer, then ReLU + pool into y[b, o] and argmax[b, o]."""
    oc = W.shape[0]
    z = np.empty(oh * xpad.shape[3] + ow, dtype=y.dtype)
    for p in range(lo, hi):
        b, o = p // oc, p % oc
        rs = direct_plane(xpad, W, b, o, sh, sw, oh, ow, z)
        _relu_pool_plane(z, rs, oh, ow, bias[o], kh, kw, psh, psw, pph, ppw, y[b, o], argmax[b, o])


@njit(**JIT)
def gemm_body(
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
        im2col_kmajor(x, b0, b1, ckh, ckw, sh, sw, ph, pw, oh, ow, cols)
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
def wide_body(
    x, Wm, bias, ckh, ckw, ph, pw, oh, ow, chunk, kh, kw, psh, psw, pph, ppw, y, argmax, lo, hi
):
    """gemm_body for a stride-1 conv, in the wide layout of kernels/numba_cpu/conv.py:
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
        im2col_wide(xcbuf, 0, b1 - b0, ckh, ckw, span, cols)
        np.dot(Wm, cols, out)
        for b in range(b0, b1):
            for o in range(oc):
                plane = out[o, (b - b0) * span : (b - b0 + 1) * span]
                _relu_pool_plane(
                    plane, wc, oh, ow, bias[o], kh, kw, psh, psw, pph, ppw, y[b, o], argmax[b, o]
                )
