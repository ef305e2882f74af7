"""Max and average pooling compiled by Numba, NCHW, one (image, channel) plane at a time.

Bodies are serial over a range of planes [lo, hi) (serial bodies compile in a fraction of the time of
parallel ones: first-step compile budget); large calls split the planes over the thread pool
(tasks.run_tasks), small ones run in the caller's thread.

Index conventions: output pixel (i, j), tap (u, v) reads input row i*sh + u - ph and column
j*sw + v - pw; taps outside [0, h) x [0, w) are padding: they never win a max (-inf padding) and
count as zeros in an average (PyTorch's count_include_pad=True). Tap number = u*kw + v (row-major);
the max tie rule is "first maximum in that order", and a NaN wins (as np.argmax), so NaNs propagate
(window.better; window.window_span walks the taps inside the input).
Backward bodies zero each gradient plane while it is in cache, then scatter into it: no separate
zero-fill pass over the whole array (where PyTorch spends ~10% of its step).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .tasks import run_tasks
from .window import better, first_max4_scalar, larger, out_size, window_span

JIT = dict(cache=True, fastmath=False, nogil=True)


@njit(**JIT)
def _max_2x2_plane(x, y, argmax):
    """One plane of _max_forward_body for 2x2 windows, stride 2, no padding: window (i, j) reads
    rows 2i, 2i + 1 and columns 2j, 2j + 1. Selects only: no data-dependent branch, which on
    real data mispredicted (5x slower, measured on the fused kernel's twin)."""
    oh, ow = y.shape
    for i in range(oh):
        x0, x1 = x[2 * i], x[2 * i + 1]
        yr, ar = y[i], argmax[i]
        for j in range(ow):
            yr[j], ar[j] = first_max4_scalar(x0[2 * j], x0[2 * j + 1], x1[2 * j], x1[2 * j + 1])


@njit(inline="always", cache=True, fastmath=False, nogil=True)
def _window_max(x, r0, r1, r2, c0, c1, c2, kw):
    """(max, first argmax) of one window of plane x: rows [r1, r2) and columns [c1, c2) inside,
    tap (yy - r0) * kw + xx - c0. The maximum by window.larger, then the first tap holding it
    by integer selects (window.first_max4's scheme: no data-dependent branch), or better's rule
    tap by tap when a tap is NaN."""
    best, nan = x[r1, c1], False  # the first tap inside starts the window
    for yy in range(r1, r2):
        for xx in range(c1, c2):
            val = x[yy, xx]
            best, nan = larger(val, best), nan | (val != val)
    if nan:
        best, arg = x[r1, c1], (r1 - r0) * kw + c1 - c0
        for yy in range(r1, r2):
            for xx in range(c1, c2):
                val = x[yy, xx]
                if better(val, best):
                    best, arg = val, (yy - r0) * kw + xx - c0
        return best, arg
    arg = -1
    for yy in range(r1, r2):
        for xx in range(c1, c2):
            hit = (x[yy, xx] == best) & (arg < 0)
            arg = (yy - r0) * kw + xx - c0 if hit else arg
    return best, arg


@njit(**JIT)
def _max_forward_body(x, kh, kw, sh, sw, ph, pw, y, argmax, lo, hi):
    """Planes p in [lo, hi): y[b, ch, i, j] = max over taps of x; argmax[b, ch, i, j] = its tap
    number u*kw + v."""
    _, c, h, w = x.shape
    oh, ow = y.shape[2], y.shape[3]
    fast = kh == 2 and kw == 2 and sh == 2 and sw == 2 and ph == 0 and pw == 0
    for p in range(lo, hi):
        b, ch = p // c, p % c  # one (image, channel) plane
        if fast:
            _max_2x2_plane(x[b, ch], y[b, ch], argmax[b, ch])
            continue
        xp, yp, ap = x[b, ch], y[b, ch], argmax[b, ch]
        for i in range(oh):
            r0, r1, r2 = window_span(i, kh, sh, ph, h)  # rows [r1, r2) inside; tap u = yy - r0
            for j in range(ow):
                c0, c1, c2 = window_span(j, kw, sw, pw, w)
                yp[i, j], ap[i, j] = _window_max(xp, r0, r1, r2, c0, c1, c2, kw)


@njit(**JIT)
def _max_backward_body(gy, argmax, kw, sh, sw, ph, pw, gx, lo, hi):
    """gx[b, ch, i*sh + u - ph, j*sw + v - pw] += gy[b, ch, i, j] where u*kw + v = argmax[...]."""
    n, c, h, w = gx.shape
    oh, ow = gy.shape[2], gy.shape[3]
    for p in range(lo, hi):
        b, ch = p // c, p % c
        gx[b, ch] = 0
        for i in range(oh):
            for j in range(ow):
                a = argmax[b, ch, i, j]
                yy = i * sh + a // kw - ph  # the winning tap's input row
                xx = j * sw + a % kw - pw  # and column
                gx[b, ch, yy, xx] += gy[b, ch, i, j]


@njit(**JIT)
def _avg_forward_body(x, kh, kw, sh, sw, ph, pw, y, lo, hi):
    """y[b, ch, i, j] = (sum of the taps inside the input) / (kh*kw)."""
    n, c, h, w = x.shape
    oh, ow = y.shape[2], y.shape[3]
    for p in range(lo, hi):
        b, ch = p // c, p % c
        for i in range(oh):
            for j in range(ow):
                s = 0.0  # accumulated in float64, rounded once on the store
                _, r1, r2 = window_span(i, kh, sh, ph, h)
                _, c1, c2 = window_span(j, kw, sw, pw, w)
                for yy in range(r1, r2):
                    for xx in range(c1, c2):
                        s += x[b, ch, yy, xx]
                y[b, ch, i, j] = s / (kh * kw)


@njit(**JIT)
def _avg_backward_body(gy, kh, kw, sh, sw, ph, pw, gx, lo, hi):
    """gx[b, ch, i*sh + u - ph, j*sw + v - pw] += gy[b, ch, i, j] / (kh*kw) for every tap inside."""
    n, c, h, w = gx.shape
    oh, ow = gy.shape[2], gy.shape[3]
    for p in range(lo, hi):
        b, ch = p // c, p % c
        gx[b, ch] = 0
        for i in range(oh):
            for j in range(ow):
                share = gy[b, ch, i, j] / (kh * kw)
                _, r1, r2 = window_span(i, kh, sh, ph, h)
                _, c1, c2 = window_span(j, kw, sw, pw, w)
                for yy in range(r1, r2):
                    for xx in range(c1, c2):
                        gx[b, ch, yy, xx] += share


def _out_shape(x_shape, kernel_size, stride, padding):
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    n, c, h, w = x_shape
    return n, c, out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)


PARALLEL_WORK = 1 << 18  # taps visited (outputs x window) from which planes go to the threads


def _run(body, shape, window, *args) -> None:
    """body(*args, lo, hi) over the n * c planes of an (n, c, oh, ow) output: on the thread pool
    (tasks.run_tasks) when there is enough work to pay for it, else in this thread."""
    planes = shape[0] * shape[1]
    if planes * shape[2] * shape[3] * window[0] * window[1] < PARALLEL_WORK:
        body(*args, 0, planes)
    else:
        run_tasks(body, planes, *args)


def max_pool2d_forward(x, kernel_size, stride, padding):
    """See kernels.numpy_cpu.pool.max_pool2d_forward: (y, argmax int32), both (n, c, oh, ow)."""
    shape = _out_shape(x.shape, kernel_size, stride, padding)
    y = np.empty(shape, dtype=x.dtype)
    argmax = np.empty(shape, dtype=np.int32)
    args = (np.ascontiguousarray(x), *kernel_size, *stride, *padding, y, argmax)
    _run(_max_forward_body, shape, kernel_size, *args)
    return y, argmax


def max_pool2d_backward(gy, argmax, x_shape, kernel_size, stride, padding):
    """See kernels.numpy_cpu.pool.max_pool2d_backward: gx (n, c, h, w)."""
    gx = np.empty(tuple(x_shape), dtype=gy.dtype)
    gy, argmax = np.ascontiguousarray(gy), np.ascontiguousarray(argmax)
    args = (gy, argmax, kernel_size[1], *stride, *padding, gx)
    _run(_max_backward_body, gy.shape, (1, 1), *args)
    return gx


def avg_pool2d_forward(x, kernel_size, stride, padding):
    """See kernels.numpy_cpu.pool.avg_pool2d_forward: y (n, c, oh, ow)."""
    shape = _out_shape(x.shape, kernel_size, stride, padding)
    y = np.empty(shape, dtype=x.dtype)
    args = (np.ascontiguousarray(x), *kernel_size, *stride, *padding, y)
    _run(_avg_forward_body, shape, kernel_size, *args)
    return y


def avg_pool2d_backward(gy, x_shape, kernel_size, stride, padding):
    """See kernels.numpy_cpu.pool.avg_pool2d_backward: gx (n, c, h, w)."""
    gx = np.empty(tuple(x_shape), dtype=gy.dtype)
    gy = np.ascontiguousarray(gy)
    _run(_avg_backward_body, gy.shape, kernel_size, gy, *kernel_size, *stride, *padding, gx)
    return gx
