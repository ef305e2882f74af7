"""Interpolation (nearest, bilinear, trilinear) compiled by Numba, one (image, channel) volume per
task. 2-D inputs run as volumes of depth 1 (depth table: index 0, weight 0).

The coordinate rules are not repeated here: the launchers take the index and weight tables of
kernels.numpy_cpu.resample.source_index, per axis (i0, i1, lam); output o of an axis mixes
(1 - lam[o]) x[i0[o]] + lam[o] x[i1[o]]. The linear bodies run the reference's axis-by-axis
passes (w, then h, then d; backward in reverse) on per-task scratch volumes, so the h and d passes
are contiguous row mixes that vectorise (measured: 8 gathered taps per output point were several
times slower). Backward bodies zero each gradient volume, then scatter into it: no task writes
another's memory.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from kernels.numpy_cpu.resample import tables

from .tasks import run_tasks

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
    """Volumes p in [lo, hi), separably as the reference: along w into tw (d, h, ow), along h
    into th (d, oh, ow), then along d into y; the last two passes mix whole contiguous rows."""
    c, d, h = x.shape[1], x.shape[2], x.shape[3]
    od, oh, ow = y.shape[2], y.shape[3], y.shape[4]
    tw = np.empty((d, h, ow), dtype=y.dtype)  # per-task scratch, reused across its volumes
    th = np.empty((d, oh, ow), dtype=y.dtype)
    for p in range(lo, hi):
        xs, ys = x[p // c, p % c], y[p // c, p % c]
        for a in range(d):
            for b in range(h):
                row, out = xs[a, b], tw[a, b]
                for q in range(ow):
                    out[q] = (1 - wl[q]) * row[w0[q]] + wl[q] * row[w1[q]]
        for a in range(d):
            for j in range(oh):
                r0, r1, lb, out = tw[a, h0[j]], tw[a, h1[j]], hl[j], th[a, j]
                for q in range(ow):
                    out[q] = (1 - lb) * r0[q] + lb * r1[q]
        for i in range(od):
            p0, p1, la = th[d0[i]], th[d1[i]], dl[i]
            for j in range(oh):
                r0, r1, out = p0[j], p1[j], ys[i, j]
                for q in range(ow):
                    out[q] = (1 - la) * r0[q] + la * r1[q]


@njit(**JIT)
def _linear_backward_body(gy, d0, d1, dl, h0, h1, hl, w0, w1, wl, gx, lo, hi):
    """Volumes p in [lo, hi): the transpose of _linear_forward_body, axis by axis in reverse (d,
    then h, then w, as the reference): gd (d, oh, ow), gh (d, h, ow), then the rows of gx."""
    c, d, h = gx.shape[1], gx.shape[2], gx.shape[3]
    od, oh, ow = gy.shape[2], gy.shape[3], gy.shape[4]
    gd = np.empty((d, oh, ow), dtype=gx.dtype)  # per-task scratch, reused across its volumes
    gh = np.empty((d, h, ow), dtype=gx.dtype)
    for p in range(lo, hi):
        gs, gxs = gy[p // c, p % c], gx[p // c, p % c]
        gd[:] = 0
        for i in range(od):
            p0, p1, la = gd[d0[i]], gd[d1[i]], dl[i]
            for j in range(oh):
                g, r0, r1 = gs[i, j], p0[j], p1[j]
                for q in range(ow):
                    r0[q] += (1 - la) * g[q]
                    r1[q] += la * g[q]
        gh[:] = 0
        for a in range(d):
            for j in range(oh):
                g, r0, r1, lb = gd[a, j], gh[a, h0[j]], gh[a, h1[j]], hl[j]
                for q in range(ow):
                    r0[q] += (1 - lb) * g[q]
                    r1[q] += lb * g[q]
        gxs[:] = 0
        for a in range(d):
            for b in range(h):
                g, out = gh[a, b], gxs[a, b]
                for q in range(ow):
                    out[w0[q]] += (1 - wl[q]) * g[q]
                    out[w1[q]] += wl[q] * g[q]


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
