"""Max and average pooling compiled by Numba, NCHW, one (image, channel) plane at a time.

The loops are serial: pooling is memory-bound, and serial bodies compile in a fraction of the time
of parallel ones (first-step compile budget) and do not stall when another process holds a core.

Index conventions: output pixel (i, j), tap (u, v) reads input row i*sh + u - ph and column
j*sw + v - pw; taps outside [0, h) x [0, w) are padding: they never win a max (-inf padding) and
count as zeros in an average (PyTorch's count_include_pad=True). Tap number = u*kw + v (row-major);
the max tie rule is "first maximum in that order", and a NaN wins (as np.argmax), so NaNs propagate.
Backward bodies zero each gradient plane while it is in cache, then scatter into it: no separate
zero-fill pass over the whole array (where PyTorch spends ~10% of its step).
"""

from __future__ import annotations

import numpy as np
from numba import njit

JIT = dict(cache=True, fastmath=False, nogil=True)


@njit(**JIT)
def _max_2x2_plane(x, y, argmax):
    """One plane of _max_forward_body for 2x2 windows, stride 2, no padding: window (i, j) reads
    rows 2i, 2i + 1 and columns 2j, 2j + 1. Selects only (`|`, `&`): no data-dependent branch,
    which on real data mispredicted (5x slower, measured on the fused kernel's twin)."""
    oh, ow = y.shape
    for i in range(oh):
        x0, x1 = x[2 * i], x[2 * i + 1]
        yr, ar = y[i], argmax[i]
        for j in range(ow):
            best = x0[2 * j]  # tap 0 starts the window
            arg = 0
            val = x0[2 * j + 1]
            win = (val > best) | ((val != val) & (best == best))  # first max wins; NaN once
            best = val if win else best
            arg = 1 if win else arg
            val = x1[2 * j]
            win = (val > best) | ((val != val) & (best == best))
            best = val if win else best
            arg = 2 if win else arg
            val = x1[2 * j + 1]
            win = (val > best) | ((val != val) & (best == best))
            best = val if win else best
            arg = 3 if win else arg
            yr[j] = best
            ar[j] = arg


@njit(**JIT)
def _max_forward_body(x, kh, kw, sh, sw, ph, pw, y, argmax):
    """y[b, ch, i, j] = max over taps of x; argmax[b, ch, i, j] = its tap number u*kw + v."""
    n, c, h, w = x.shape
    oh, ow = y.shape[2], y.shape[3]
    fast = kh == 2 and kw == 2 and sh == 2 and sw == 2 and ph == 0 and pw == 0
    for p in range(n * c):
        b, ch = p // c, p % c  # one (image, channel) plane
        if fast:
            _max_2x2_plane(x[b, ch], y[b, ch], argmax[b, ch])
            continue
        for i in range(oh):
            for j in range(ow):
                best = x[b, ch, 0, 0]  # placeholder, replaced by the first tap inside
                arg = -1
                for u in range(kh):
                    yy = i * sh + u - ph  # input row of tap row u
                    if yy < 0 or yy >= h:
                        continue
                    for v in range(kw):
                        xx = j * sw + v - pw  # input column of tap column v
                        if xx < 0 or xx >= w:
                            continue
                        val = x[b, ch, yy, xx]
                        # strict '>' keeps the first maximum; a NaN replaces a number, once
                        # (`|`/`&` rather than `or`/`and`: selects, not mispredicted branches)
                        if (arg < 0) | (val > best) | ((val != val) & (best == best)):
                            best, arg = val, u * kw + v
                y[b, ch, i, j] = best
                argmax[b, ch, i, j] = arg


@njit(**JIT)
def _max_backward_body(gy, argmax, kw, sh, sw, ph, pw, gx):
    """gx[b, ch, i*sh + u - ph, j*sw + v - pw] += gy[b, ch, i, j] where u*kw + v = argmax[...]."""
    n, c, h, w = gx.shape
    oh, ow = gy.shape[2], gy.shape[3]
    for p in range(n * c):
        b, ch = p // c, p % c
        gx[b, ch] = 0
        for i in range(oh):
            for j in range(ow):
                a = argmax[b, ch, i, j]
                yy = i * sh + a // kw - ph  # the winning tap's input row
                xx = j * sw + a % kw - pw  # and column
                gx[b, ch, yy, xx] += gy[b, ch, i, j]


@njit(**JIT)
def _avg_forward_body(x, kh, kw, sh, sw, ph, pw, y):
    """y[b, ch, i, j] = (sum of the taps inside the input) / (kh*kw)."""
    n, c, h, w = x.shape
    oh, ow = y.shape[2], y.shape[3]
    for p in range(n * c):
        b, ch = p // c, p % c
        for i in range(oh):
            for j in range(ow):
                s = 0.0  # accumulated in float64, rounded once on the store
                for u in range(kh):
                    yy = i * sh + u - ph
                    if yy < 0 or yy >= h:
                        continue
                    for v in range(kw):
                        xx = j * sw + v - pw
                        if 0 <= xx < w:
                            s += x[b, ch, yy, xx]
                y[b, ch, i, j] = s / (kh * kw)


@njit(**JIT)
def _avg_backward_body(gy, kh, kw, sh, sw, ph, pw, gx):
    """gx[b, ch, i*sh + u - ph, j*sw + v - pw] += gy[b, ch, i, j] / (kh*kw) for every tap inside."""
    n, c, h, w = gx.shape
    oh, ow = gy.shape[2], gy.shape[3]
    for p in range(n * c):
        b, ch = p // c, p % c
        gx[b, ch] = 0
        for i in range(oh):
            for j in range(ow):
                share = gy[b, ch, i, j] / (kh * kw)
                for u in range(kh):
                    yy = i * sh + u - ph
                    if yy < 0 or yy >= h:
                        continue
                    for v in range(kw):
                        xx = j * sw + v - pw
                        if 0 <= xx < w:
                            gx[b, ch, yy, xx] += share


def _out_shape(x_shape, kernel_size, stride, padding):
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    n, c, h, w = x_shape
    return n, c, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


def max_pool2d_forward(x, kernel_size, stride, padding):
    """See kernels.numpy_cpu.pool.max_pool2d_forward: (y, argmax int32), both (n, c, oh, ow)."""
    shape = _out_shape(x.shape, kernel_size, stride, padding)
    y = np.empty(shape, dtype=x.dtype)
    argmax = np.empty(shape, dtype=np.int32)
    _max_forward_body(np.ascontiguousarray(x), *kernel_size, *stride, *padding, y, argmax)
    return y, argmax


def max_pool2d_backward(gy, argmax, x_shape, kernel_size, stride, padding):
    """See kernels.numpy_cpu.pool.max_pool2d_backward: gx (n, c, h, w)."""
    gx = np.empty(tuple(x_shape), dtype=gy.dtype)
    gy, argmax = np.ascontiguousarray(gy), np.ascontiguousarray(argmax)
    _max_backward_body(gy, argmax, kernel_size[1], *stride, *padding, gx)
    return gx


def avg_pool2d_forward(x, kernel_size, stride, padding):
    """See kernels.numpy_cpu.pool.avg_pool2d_forward: y (n, c, oh, ow)."""
    y = np.empty(_out_shape(x.shape, kernel_size, stride, padding), dtype=x.dtype)
    _avg_forward_body(np.ascontiguousarray(x), *kernel_size, *stride, *padding, y)
    return y


def avg_pool2d_backward(gy, x_shape, kernel_size, stride, padding):
    """See kernels.numpy_cpu.pool.avg_pool2d_backward: gx (n, c, h, w)."""
    gx = np.empty(tuple(x_shape), dtype=gy.dtype)
    _avg_backward_body(np.ascontiguousarray(gy), *kernel_size, *stride, *padding, gx)
    return gx
