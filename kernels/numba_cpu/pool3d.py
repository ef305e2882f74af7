"""3-D max and average pooling compiled by Numba, NCDHW, one (image, channel) volume per task.

Index conventions: output voxel (i, j, q), tap (t, u, v) reads input depth i*sd + t - pd, row
j*sh + u - ph and column q*sw + v - pw; taps outside the volume are padding: they never win a max
(-inf padding) and count as zeros in an average (PyTorch's count_include_pad=True). Tap number =
(t*kh + u)*kw + v (row-major); the max tie rule is "first maximum in that order", and a NaN wins
(as np.argmax), so NaNs propagate: window.better, the rule every numba_cpu pooling kernel shares. Padding is at most half the kernel, so every window
holds at least one tap inside the volume, and that first inside tap starts the running maximum.
Volumes are split over the thread pool (`run_tasks`); backward bodies zero each gradient volume
before scattering into it, so no task writes another's memory.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from kernels.numpy_cpu.xp import out_size

from .tasks import run_tasks
from .window import better, window_span

JIT = dict(cache=True, fastmath=False, nogil=True)


@njit(inline="always", cache=True, fastmath=False, nogil=True)
def _take(val, tap, best, arg):
    """(best, arg) after visiting tap number `tap` holding val, by window.better."""
    win = better(val, best)
    return (val if win else best), (tap if win else arg)


@njit(**JIT)
def _max_2x2x2_volume(xs, ys, am):
    """One volume of _max_forward_body for 2x2x2 windows, stride 2, no padding: window (i, j, q)
    reads depths 2i + t, rows 2j + u, columns 2q + v, tap (t*2 + u)*2 + v. Selects only, over four
    contiguous input rows per output row, so the loop over q vectorises."""
    od, oh, ow = ys.shape
    for i in range(od):
        for j in range(oh):
            r0, r1 = xs[2 * i, 2 * j], xs[2 * i, 2 * j + 1]  # t = 0: u = 0, 1
            r2, r3 = xs[2 * i + 1, 2 * j], xs[2 * i + 1, 2 * j + 1]  # t = 1: u = 0, 1
            yr, ar = ys[i, j], am[i, j]
            for q in range(ow):
                best, arg = r0[2 * q], 0  # tap 0 starts the window
                best, arg = _take(r0[2 * q + 1], 1, best, arg)
                best, arg = _take(r1[2 * q], 2, best, arg)
                best, arg = _take(r1[2 * q + 1], 3, best, arg)
                best, arg = _take(r2[2 * q], 4, best, arg)
                best, arg = _take(r2[2 * q + 1], 5, best, arg)
                best, arg = _take(r3[2 * q], 6, best, arg)
                best, arg = _take(r3[2 * q + 1], 7, best, arg)
                yr[q], ar[q] = best, arg


@njit(**JIT)
def _max_forward_body(x, kd, kh, kw, sd, sh, sw, pd, ph, pw, y, argmax, lo, hi):
    """Volumes p in [lo, hi): y[b, ch, i, j, q] = max over the window's inside taps, argmax[...]
    = the winning tap's number (t*kh + u)*kw + v."""
    _, c, d, h, w = x.shape
    od, oh, ow = y.shape[2], y.shape[3], y.shape[4]
    fast = (kd == 2) & (kh == 2) & (kw == 2) & (sd == 2) & (sh == 2) & (sw == 2)
    fast = fast & (pd == 0) & (ph == 0) & (pw == 0)
    for p in range(lo, hi):
        xs, ys, am = x[p // c, p % c], y[p // c, p % c], argmax[p // c, p % c]
        if fast:
            _max_2x2x2_volume(xs, ys, am)
            continue
        for i in range(od):
            t0, ta, tb = window_span(i, kd, sd, pd, d)  # depths [ta, tb) inside; tap t = dd - t0
            for j in range(oh):
                u0, ua, ub = window_span(j, kh, sh, ph, h)
                for q in range(ow):
                    v0, va, vb = window_span(q, kw, sw, pw, w)
                    best = xs[ta, ua, va]  # the first inside tap starts the window
                    arg = ((ta - t0) * kh + ua - u0) * kw + va - v0
                    for dd in range(ta, tb):
                        for yy in range(ua, ub):
                            for xx in range(va, vb):
                                val = xs[dd, yy, xx]
                                win = better(val, best)
                                best = val if win else best
                                tap = ((dd - t0) * kh + yy - u0) * kw + xx - v0
                                arg = tap if win else arg
                    ys[i, j, q] = best
                    am[i, j, q] = arg


@njit(**JIT)
def _max_2x2x2_backward_volume(gs, am, gxs, zero):
    """One volume of _max_backward_body for 2x2x2 windows, stride 2, no padding: the windows tile
    the volume, so every input voxel is written once, gy where argmax names it, else 0 (selects
    over four contiguous output rows; no zero-fill pass). A last odd depth, row or column lies in
    no window: the caller zeroes the volume first when there is one. zero: gx's typed zero (a
    literal 0 would make float32 selects float64; gy * 0 is NaN for an infinite gy)."""
    od, oh, ow = gs.shape
    for i in range(od):
        for j in range(oh):
            r0, r1 = gxs[2 * i, 2 * j], gxs[2 * i, 2 * j + 1]
            r2, r3 = gxs[2 * i + 1, 2 * j], gxs[2 * i + 1, 2 * j + 1]
            gr, ar = gs[i, j], am[i, j]
            for q in range(ow):
                g, a = gr[q], ar[q]
                r0[2 * q], r0[2 * q + 1] = (g if a == 0 else zero), (g if a == 1 else zero)
                r1[2 * q], r1[2 * q + 1] = (g if a == 2 else zero), (g if a == 3 else zero)
                r2[2 * q], r2[2 * q + 1] = (g if a == 4 else zero), (g if a == 5 else zero)
                r3[2 * q], r3[2 * q + 1] = (g if a == 6 else zero), (g if a == 7 else zero)


@njit(**JIT)
def _max_backward_body(gy, argmax, kd, kh, kw, sd, sh, sw, pd, ph, pw, zero, gx, lo, hi):
    """Volumes p in [lo, hi): gx[b, ch, i*sd + t - pd, j*sh + u - ph, q*sw + v - pw] +=
    gy[b, ch, i, j, q] for the tap (t, u, v) that argmax names."""
    _, c, d, h, w = gx.shape
    od, oh, ow = gy.shape[2], gy.shape[3], gy.shape[4]
    fast = (kd == 2) & (kh == 2) & (kw == 2) & (sd == 2) & (sh == 2) & (sw == 2)
    fast = fast & (pd == 0) & (ph == 0) & (pw == 0)
    tiled = (d == 2 * od) & (h == 2 * oh) & (w == 2 * ow)
    for p in range(lo, hi):
        gs, am, gxs = gy[p // c, p % c], argmax[p // c, p % c], gx[p // c, p % c]
        if not (fast & tiled):
            gxs[:] = 0
        if fast:
            _max_2x2x2_backward_volume(gs, am, gxs, zero)
            continue
        for i in range(od):
            for j in range(oh):
                for q in range(ow):
                    a = am[i, j, q]
                    t, u, v = a // (kh * kw), (a // kw) % kh, a % kw  # the winning tap
                    gxs[i * sd + t - pd, j * sh + u - ph, q * sw + v - pw] += gs[i, j, q]


@njit(**JIT)
def _avg_forward_body(x, kd, kh, kw, sd, sh, sw, pd, ph, pw, y, lo, hi):
    """Volumes p in [lo, hi): y[b, ch, i, j, q] = (sum of the inside taps) / (kd*kh*kw)."""
    _, c, d, h, w = x.shape
    od, oh, ow = y.shape[2], y.shape[3], y.shape[4]
    for p in range(lo, hi):
        xs, ys = x[p // c, p % c], y[p // c, p % c]
        for i in range(od):
            _, ta, tb = window_span(i, kd, sd, pd, d)
            for j in range(oh):
                _, ua, ub = window_span(j, kh, sh, ph, h)
                for q in range(ow):
                    _, va, vb = window_span(q, kw, sw, pw, w)
                    s = 0.0  # accumulated in float64, rounded once on the store
                    for dd in range(ta, tb):
                        for yy in range(ua, ub):
                            for xx in range(va, vb):
                                s += xs[dd, yy, xx]
                    ys[i, j, q] = s / (kd * kh * kw)


@njit(**JIT)
def _avg_backward_body(gy, kd, kh, kw, sd, sh, sw, pd, ph, pw, gx, lo, hi):
    """Volumes p in [lo, hi): every inside tap of window (i, j, q) gets gy / (kd*kh*kw)."""
    _, c, d, h, w = gx.shape
    od, oh, ow = gy.shape[2], gy.shape[3], gy.shape[4]
    for p in range(lo, hi):
        gs, gxs = gy[p // c, p % c], gx[p // c, p % c]
        gxs[:] = 0
        for i in range(od):
            _, ta, tb = window_span(i, kd, sd, pd, d)
            for j in range(oh):
                _, ua, ub = window_span(j, kh, sh, ph, h)
                for q in range(ow):
                    _, va, vb = window_span(q, kw, sw, pw, w)
                    share = gs[i, j, q] / (kd * kh * kw)
                    for dd in range(ta, tb):
                        for yy in range(ua, ub):
                            for xx in range(va, vb):
                                gxs[dd, yy, xx] += share


def _out_shape(x_shape, kernel_size, stride, padding):
    return (*x_shape[:2], *map(out_size, x_shape[2:], kernel_size, stride, padding))


def max_pool3d_forward(x, kernel_size, stride, padding):
    """See kernels.numpy_cpu.pool.max_pool_forward: (y, argmax int32), both (n, c, od, oh, ow)."""
    shape = _out_shape(x.shape, kernel_size, stride, padding)
    y, argmax = np.empty(shape, dtype=x.dtype), np.empty(shape, dtype=np.int32)
    args = (np.ascontiguousarray(x), *kernel_size, *stride, *padding, y, argmax)
    run_tasks(_max_forward_body, shape[0] * shape[1], *args)
    return y, argmax


def max_pool3d_backward(gy, argmax, x_shape, kernel_size, stride, padding):
    """See kernels.numpy_cpu.pool.max_pool_backward: gx (n, c, d, h, w)."""
    gx = np.empty(tuple(x_shape), dtype=gy.dtype)
    gy, argmax = np.ascontiguousarray(gy), np.ascontiguousarray(argmax)
    args = (gy, argmax, *kernel_size, *stride, *padding, gy.dtype.type(0), gx)
    run_tasks(_max_backward_body, x_shape[0] * x_shape[1], *args)
    return gx


def avg_pool3d_forward(x, kernel_size, stride, padding):
    """See kernels.numpy_cpu.pool.avg_pool_forward: y (n, c, od, oh, ow)."""
    shape = _out_shape(x.shape, kernel_size, stride, padding)
    y = np.empty(shape, dtype=x.dtype)
    args = (np.ascontiguousarray(x), *kernel_size, *stride, *padding, y)
    run_tasks(_avg_forward_body, shape[0] * shape[1], *args)
    return y


def avg_pool3d_backward(gy, x_shape, kernel_size, stride, padding):
    """See kernels.numpy_cpu.pool.avg_pool_backward: gx (n, c, d, h, w)."""
    gx = np.empty(tuple(x_shape), dtype=gy.dtype)
    args = (np.ascontiguousarray(gy), *kernel_size, *stride, *padding, gx)
    run_tasks(_avg_backward_body, x_shape[0] * x_shape[1], *args)
    return gx
