"""Interpolation (nearest, bilinear, trilinear) of NCHW / NCDHW arrays with PyTorch's coordinate
rules, written against `xp`. Separable: each spatial axis is resampled on its own, last axis first.

source_index() is the one place the coordinate rules live; the numba_cpu kernels read its tables.
Along an axis of input length `size` and output length `out`, with the user's scale factor `scale`
(None when a size was given), output index o reads (PyTorch's upsample kernels, CPU):
- out == size: input o (identity; the scale factor is ignored);
- nearest: o // 2 if out == 2 size, else min(floor(o * r), size - 1) in float32, with
  r = 1 / scale if given, else size / out;
- linear, align_corners False: src = max(r (o + 0.5) - 0.5, 0); True: src = o (size - 1) / (out - 1)
  (0 when out == 1); computed in x's dtype. i0 = min(floor(src), size - 1), i1 = i0 + 1 (i0 at
  the last index), lam = clip(src - i0, 0, 1): y = (1 - lam) x[i0] + lam x[i1].
"""

from __future__ import annotations

import math

import numpy as np

from .xp import array_module


def source_index(size: int, out: int, mode: str, align_corners: bool, scale, dtype):
    """Host (NumPy) tables of one axis: (i0 int64 (out,), i1 int64 (out,), lam (out,) of dtype).
    Output o is (1 - lam[o]) x[i0[o]] + lam[o] x[i1[o]]; nearest has i1 = i0 and lam = 0. i0 and
    i1 never decrease with o (the backward relies on it)."""
    dtype = np.dtype(dtype).type
    o = np.arange(out)
    if out == size:
        return o, o, np.zeros(out, dtype)
    if mode == "nearest":
        if out == 2 * size:
            i0 = o >> 1
        else:
            r = np.float32(1.0 / scale) if scale else np.float32(size) / np.float32(out)
            i0 = np.minimum(np.floor(o.astype(np.float32) * r).astype(np.int64), size - 1)
        return i0, i0, np.zeros(out, dtype)
    if align_corners:
        r = dtype(size - 1) / dtype(out - 1) if out > 1 else dtype(0)
        src = r * o.astype(dtype)
    else:
        r = dtype(1.0 / scale) if scale else dtype(size) / dtype(out)
        src = np.maximum(r * (o.astype(dtype) + dtype(0.5)) - dtype(0.5), dtype(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), size - 1)
    lam = np.clip(src - i0.astype(dtype), dtype(0), dtype(1)).astype(dtype)
    return i0, np.where(i0 < size - 1, i0 + 1, i0), lam


def output_size(spatial, size=None, scale_factor=None) -> tuple[tuple, tuple]:
    """(out, scales) of an interpolation of spatial shape `spatial`: give size or scale_factor
    (a number or one per axis; the caller checks that exactly one is given). out = size, or
    floor(in * scale) per axis; scales = the scale factors, or None per axis when size was given."""
    n = len(spatial)
    if size is not None:
        out = tuple(size) if isinstance(size, (tuple, list)) else (size,) * n
        return tuple(int(o) for o in out), (None,) * n
    each = scale_factor if isinstance(scale_factor, (tuple, list)) else (scale_factor,) * n
    scales = tuple(float(s) for s in each)
    return tuple(math.floor(a * s) for a, s in zip(spatial, scales, strict=True)), scales


def tables(in_shape, out_shape, mode, align_corners, scales, dtype) -> list[tuple]:
    """source_index() of every spatial axis: in_shape and out_shape are the spatial shapes."""
    return [
        source_index(size, out, mode, align_corners, scale, dtype)
        for size, out, scale in zip(in_shape, out_shape, scales, strict=True)
    ]


def interpolate_forward(x, size, mode, align_corners, scales):
    """x (n, c, *spatial) -> y (n, c, *size), 2 spatial axes (nearest, bilinear) or 3 (nearest,
    trilinear). scales: the user's scale factor per axis, or None per axis when a size was given;
    align_corners is ignored by nearest. Axis by axis, last first: y = x[i0] (nearest) or
    (1 - lam) x[i0] + lam x[i1] (the tables of source_index)."""
    xp = array_module(x)
    y = x
    axes = tables(x.shape[2:], size, mode, align_corners, scales, x.dtype)
    for axis in range(x.ndim - 1, 1, -1):
        i0, i1, lam = axes[axis - 2]
        first = xp.take(y, xp.asarray(i0), axis=axis)
        if mode == "nearest":
            y = first
            continue
        shape = [1] * x.ndim
        shape[axis] = len(lam)
        lam = xp.asarray(lam).reshape(shape)
        y = (1 - lam) * first + lam * xp.take(y, xp.asarray(i1), axis=axis)
    return xp.ascontiguousarray(y)


def _scatter(g, index, size: int):
    """gx (..., size): gx[..., j] = sum of g[..., o] over the outputs o with index[o] == j. index
    never decreases, so those outputs are one run [lo_j, hi_j) of the last axis."""
    xp = array_module(g)
    lo = np.searchsorted(index, np.arange(size), side="left")
    hi = np.searchsorted(index, np.arange(size), side="right")
    gx = xp.zeros((*g.shape[:-1], size), dtype=g.dtype)
    for j in np.flatnonzero(hi > lo):
        gx[..., j] = g[..., lo[j] : hi[j]].sum(axis=-1)
    return gx


def interpolate_backward(gy, x_shape, mode, align_corners, scales):
    """gy (n, c, *size) -> gx (n, c, *spatial) of interpolate_forward: axis by axis, first axis
    first, gx[i0] += (1 - lam) gy and gx[i1] += lam gy (nearest: gx[i0] += gy)."""
    xp = array_module(gy)
    g = gy
    axes = tables(x_shape[2:], gy.shape[2:], mode, align_corners, scales, gy.dtype)
    for axis in range(2, gy.ndim):
        i0, i1, lam = axes[axis - 2]
        last = xp.moveaxis(g, axis, -1)
        if mode == "nearest":
            gx = _scatter(last, i0, x_shape[axis])
        else:
            lam = xp.asarray(lam)
            gx = _scatter((1 - lam) * last, i0, x_shape[axis])
            gx = gx + _scatter(lam * last, i1, x_shape[axis])
        g = xp.moveaxis(gx, -1, axis)
    return xp.ascontiguousarray(g)
