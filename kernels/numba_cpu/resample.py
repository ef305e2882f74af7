"""Interpolation (nearest, bilinear, trilinear) compiled by Numba, one (image, channel) volume per
task. 2-D inputs run as volumes of depth 1 (depth table: index 0, weight 0).

The coordinate rules are not repeated here: the launchers take the index and weight tables of
kernels.numpy_cpu.resample.source_index, per axis (i0, i1, lam); output o of an axis mixes
(1 - lam[o]) x[i0[o]] + lam[o] x[i1[o]], nested as the reference nests its axis-by-axis passes
(w innermost, then h, then d). Backward bodies zero each gradient volume, then scatter into it:
no task writes another's memory.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from kernels.numpy_cpu.resample import tables

from ._tasks import run_tasks

JIT = dict(cache=True, fastmath=False, nogil=True)


@njit(**JIT)
def _nearest_forward_body(x, d0, h0, w0, y, lo, hi):
    """Volumes p in [lo, hi): y[b, ch, i, j, q] = x[b, ch, d0[i], h0[j], w0[q]]."""
    c = x.shape[1]
    for p in range(lo, hi):
        xs, ys = x[p // c, p % c], y[p // c, p % c]
        for i in range(ys.shape[0]):
            for j in range(ys.shape[1]):
                for q in range(ys.shape[2]):
                    ys[i, j, q] = xs[d0[i], h0[j], w0[q]]


@njit(**JIT)
def _nearest_backward_body(gy, d0, h0, w0, gx, lo, hi):
    """Volumes p in [lo, hi): gx[b, ch, d0[i], h0[j], w0[q]] += gy[b, ch, i, j, q]."""
    c = gx.shape[1]
    for p in range(lo, hi):
        gs, gxs = gy[p // c, p % c], gx[p // c, p % c]
        gxs[:] = 0
        for i in range(gs.shape[0]):
            for j in range(gs.shape[1]):
                for q in range(gs.shape[2]):
                    gxs[d0[i], h0[j], w0[q]] += gs[i, j, q]


@njit(**JIT)
def _linear_forward_body(x, d0, d1, dl, h0, h1, hl, w0, w1, wl, y, lo, hi):
    """Volumes p in [lo, hi): y[i, j, q] = the trilinear mix of the 8 inputs at depths d0[i],
    d1[i], rows h0[j], h1[j], columns w0[q], w1[q] (weights 1 - lam, lam per axis)."""
    c = x.shape[1]
    for p in range(lo, hi):
        xs, ys = x[p // c, p % c], y[p // c, p % c]
        for i in range(ys.shape[0]):
            a0, a1, la = d0[i], d1[i], dl[i]
            for j in range(ys.shape[1]):
                b0, b1, lb = h0[j], h1[j], hl[j]
                for q in range(ys.shape[2]):
                    c0, c1, lc = w0[q], w1[q], wl[q]
                    mc = 1 - lc
                    t00 = mc * xs[a0, b0, c0] + lc * xs[a0, b0, c1]  # along w, depth a0, row b0
                    t01 = mc * xs[a0, b1, c0] + lc * xs[a0, b1, c1]
                    t10 = mc * xs[a1, b0, c0] + lc * xs[a1, b0, c1]
                    t11 = mc * xs[a1, b1, c0] + lc * xs[a1, b1, c1]
                    s0 = (1 - lb) * t00 + lb * t01  # then along h
                    s1 = (1 - lb) * t10 + lb * t11
                    ys[i, j, q] = (1 - la) * s0 + la * s1  # then along d


@njit(**JIT)
def _linear_backward_body(gy, d0, d1, dl, h0, h1, hl, w0, w1, wl, gx, lo, hi):
    """Volumes p in [lo, hi): each output's gy goes to its 8 inputs times the product of their
    axis weights (the transpose of _linear_forward_body)."""
    c = gx.shape[1]
    for p in range(lo, hi):
        gs, gxs = gy[p // c, p % c], gx[p // c, p % c]
        gxs[:] = 0
        for i in range(gs.shape[0]):
            a0, a1, la = d0[i], d1[i], dl[i]
            for j in range(gs.shape[1]):
                b0, b1, lb = h0[j], h1[j], hl[j]
                for q in range(gs.shape[2]):
                    c0, c1, lc = w0[q], w1[q], wl[q]
                    g = gs[i, j, q]
                    g0, g1 = (1 - la) * g, la * g  # along d first, as the reference
                    g00, g01 = (1 - lb) * g0, lb * g0  # then h
                    g10, g11 = (1 - lb) * g1, lb * g1
                    gxs[a0, b0, c0] += (1 - lc) * g00  # then w
                    gxs[a0, b0, c1] += lc * g00
                    gxs[a0, b1, c0] += (1 - lc) * g01
                    gxs[a0, b1, c1] += lc * g01
                    gxs[a1, b0, c0] += (1 - lc) * g10
                    gxs[a1, b0, c1] += lc * g10
                    gxs[a1, b1, c0] += (1 - lc) * g11
                    gxs[a1, b1, c1] += lc * g11


def _volume(shape) -> tuple:
    """(n, c, d, h, w): a 4-D shape gets depth 1."""
    return tuple(shape) if len(shape) == 5 else (*shape[:2], 1, *shape[2:])


def _axes(in_shape, out_shape, mode, align_corners, scales, dtype) -> list:
    """The flat argument list of the bodies' tables, depth first: (i0, [i1, lam]) per axis."""
    axes = tables(in_shape[2:], out_shape[2:], mode, align_corners, scales, dtype)
    if len(axes) == 2:  # depth 1: index 0, weight 0
        axes = [(np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros(1, dtype)), *axes]
    if mode == "nearest":
        return [i0 for i0, _, _ in axes]
    return [a for axis in axes for a in axis]


def interpolate_forward(x, size, mode, align_corners, scales):
    """See kernels.numpy_cpu.resample.interpolate_forward: y (n, c, *size)."""
    out = (*x.shape[:2], *size)
    y = np.empty(out, dtype=x.dtype)
    axes = _axes(x.shape, out, mode, align_corners, scales, x.dtype)
    body = _nearest_forward_body if mode == "nearest" else _linear_forward_body
    xv = np.ascontiguousarray(x).reshape(_volume(x.shape))
    run_tasks(body, out[0] * out[1], xv, *axes, y.reshape(_volume(out)))
    return y


def interpolate_backward(gy, x_shape, mode, align_corners, scales):
    """See kernels.numpy_cpu.resample.interpolate_backward: gx (n, c, *spatial)."""
    gx = np.empty(tuple(x_shape), dtype=gy.dtype)
    axes = _axes(x_shape, gy.shape, mode, align_corners, scales, gy.dtype)
    body = _nearest_backward_body if mode == "nearest" else _linear_backward_body
    gyv = np.ascontiguousarray(gy).reshape(_volume(gy.shape))
    run_tasks(body, gx.shape[0] * gx.shape[1], gyv, *axes, gx.reshape(_volume(x_shape)))
    return gx
