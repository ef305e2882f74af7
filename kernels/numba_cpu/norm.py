"""Normalisation kernels compiled by Numba: one-pass statistics, normalise (optionally rectified),
backward (optionally masked by the ReLU's output), over the (p, q, r) view of
kernels/numpy_cpu/norm.py (reduced over axes 0 and 2, one result per slice j < q).

Tasks are (slice, chunk) pairs, so that a few long slices (batch norm at 64 channels, instance
norm with n*c = 32 slices of 64^3 voxels) still spread over every thread. The launchers view x as
(p, q, r1, r2) with r = r1 r2 (`_layout`): slice j is p r1 rows of r2 contiguous elements, and a
chunk is a run of whole rows, about CHUNK elements; the inner loops always run a full row from 0,
which keeps them free of negative-index checks (vectorised). The chunking depends on the shape
only, never on the thread count: results are the same on any number of threads. Each chunk's sums
go to its own row of a float64 `partial` array, which the launcher adds up per slice. Moments take
one pass with a shift (the slice's first value, the same for all its chunks): var = E[(x - s)^2] -
E[x - s]^2 in float64, which keeps the cancellation of the unshifted formula away unless
|s - mean| / std reaches ~1e6. A backward over slices of one chunk does its sums and then gx per
slice, while the slice is in cache.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import njit

from .tasks import run_tasks

JIT = dict(cache=True, fastmath=False, nogil=True)
CHUNK = 1 << 15  # elements of one task: 128 KiB of float32, enough to amortise a task's start
# the masked-out gradient: float32, so that `v if y > 0 else ZERO` keeps gy's type and, with v
# loaded before, compiles to a select (else a mispredicted branch per element: 5x slower)
ZERO = np.float32(0)
MIN_ROW = 256  # shortest row worth splitting a slice's axis 2 for (shorter: rows of r)


@lru_cache(maxsize=256)
def _layout(p: int, r: int) -> tuple[int, int, int]:
    """(r1, r2, nch): axis 2 as r1 rows of r2 (r = r1 r2; r2 the largest divisor of r not above
    CHUNK, unless that is below MIN_ROW: then r1 = 1), and nch chunks per slice, each a run of
    the p r1 rows, about CHUNK elements."""
    r1 = 1
    if r > CHUNK:  # the fewest rows of at most CHUNK and at least MIN_ROW elements, if any
        r1 = next((d for d in range(-(-r // CHUNK), r // MIN_ROW + 1) if r % d == 0), 1)
    rows = p * r1
    return r1, r // r1, max(1, min(rows, -(-(p * r) // CHUNK)))


@njit(**JIT)
def _moments_body(x, shift, partial, nch, lo, hi):
    """partial[t] = (sum d, sum d^2), d = x - shift[j], over chunk t % nch of slice j = t // nch,
    for tasks t in [lo, hi); x (p, q, r1, r2), chunk c = rows [R c / nch, R (c + 1) / nch) of
    the R = p r1 rows (i, u) -> i r1 + u."""
    p, _, r1, r2 = x.shape
    rows = p * r1
    for t in range(lo, hi):
        j, c = t // nch, t % nch
        s0 = shift[j]
        s = 0.0
        ss = 0.0
        row0, row1 = rows * c // nch, rows * (c + 1) // nch
        i, u = row0 // r1, row0 % r1  # row i r1 + u; each next row carries u into i
        for _ in range(row1 - row0):
            for k in range(r2):
                d = np.float64(x[i, j, u, k]) - s0
                s += d
                ss += d * d
            u, i = (0, i + 1) if u + 1 == r1 else (u + 1, i)
        partial[t, 0] = s
        partial[t, 1] = ss


@njit(**JIT)
def _forward_body(x, scale, offset, y, relu, nch, lo, hi):
    """y = x scale[j] + offset[j] (then max(., 0) when relu) over the chunks t in [lo, hi);
    scale = rstd w and offset = b - mean scale, float64. The relu test sits outside the inner
    loops."""
    p, _, r1, r2 = x.shape
    rows = p * r1
    for t in range(lo, hi):
        j, c = t // nch, t % nch
        sc, off = scale[j], offset[j]
        row0, row1 = rows * c // nch, rows * (c + 1) // nch
        i, u = row0 // r1, row0 % r1  # row i r1 + u; each next row carries u into i
        for _ in range(row1 - row0):
            if relu:
                for k in range(r2):
                    y[i, j, u, k] = max(x[i, j, u, k] * sc + off, 0.0)
            else:
                for k in range(r2):
                    y[i, j, u, k] = x[i, j, u, k] * sc + off
            u, i = (0, i + 1) if u + 1 == r1 else (u + 1, i)


@njit(inline="always", **JIT)
def _grad_sums(gy, x, y, j, row0, row1, m, relu):
    """(sum g, sum g (x - m)) over rows [row0, row1) of slice j; g = gy, or gy where y > 0 when
    relu (the ReLU's derivative; y is the rectified output, unread otherwise)."""
    r1, r2 = x.shape[2], x.shape[3]
    sg = 0.0
    sgx = 0.0
    i, u = row0 // r1, row0 % r1  # row i r1 + u; each next row carries u into i
    for _ in range(row1 - row0):
        if relu:
            for k in range(r2):
                v = gy[i, j, u, k]  # loaded first: a load inside the select stays a branch
                g = np.float64(v if y[i, j, u, k] > 0 else ZERO)
                sg += g
                sgx += g * (np.float64(x[i, j, u, k]) - m)
        else:
            for k in range(r2):
                g = np.float64(gy[i, j, u, k])
                sg += g
                sgx += g * (np.float64(x[i, j, u, k]) - m)
        u, i = (0, i + 1) if u + 1 == r1 else (u + 1, i)
    return sg, sgx


@njit(inline="always", **JIT)
def _grad_apply(gy, x, y, gx, j, row0, row1, ca, cb, cc, relu):
    """gx = ca g + cb x + cc over rows [row0, row1) of slice j, g masked as in _grad_sums."""
    r1, r2 = x.shape[2], x.shape[3]
    i, u = row0 // r1, row0 % r1  # row i r1 + u; each next row carries u into i
    for _ in range(row1 - row0):
        if relu:
            for k in range(r2):
                v = gy[i, j, u, k]
                g = v if y[i, j, u, k] > 0 else ZERO
                gx[i, j, u, k] = ca * g + cb * x[i, j, u, k] + cc
        else:
            for k in range(r2):
                gx[i, j, u, k] = ca * gy[i, j, u, k] + cb * x[i, j, u, k] + cc
        u, i = (0, i + 1) if u + 1 == r1 else (u + 1, i)


@njit(**JIT)
def _backward_slices_body(gy, x, y, mean, rstd, weight, gx, gweight, gbias, relu, lo, hi):
    """Whole slices j in [lo, hi) (one chunk each): the sums, then gx, while the slice is still
    in cache. gx = w rstd (g - gbias / N - xhat gweight / N) = ca g + cb x + cc per slice."""
    p, _, r1, r2 = x.shape
    count = p * r1 * r2
    for j in range(lo, hi):
        m, s = mean[j], rstd[j]
        sg, sgx = _grad_sums(gy, x, y, j, 0, p * r1, m, relu)
        gbias[j] = sg
        gweight[j] = sgx * s  # sum g xhat
        ca = s * weight[j]  # d y / d xhat times d xhat / d x
        cb = -ca * s * s * sgx / count  # the xhat gweight / N term, per unit of (x - mean)
        cc = -ca * sg / count - cb * m
        _grad_apply(gy, x, y, gx, j, 0, p * r1, ca, cb, cc, relu)


@njit(**JIT)
def _backward_sums_body(gy, x, y, mean, partial, relu, nch, lo, hi):
    """partial[t] = (sum g, sum g (x - mean[j])) over chunk t (slices of several chunks)."""
    rows = x.shape[0] * x.shape[2]
    for t in range(lo, hi):
        j, c = t // nch, t % nch
        row0, row1 = rows * c // nch, rows * (c + 1) // nch
        partial[t, 0], partial[t, 1] = _grad_sums(gy, x, y, j, row0, row1, mean[j], relu)


@njit(**JIT)
def _backward_apply_body(gy, x, y, ca, cb, cc, gx, relu, nch, lo, hi):
    """gx = ca[j] g + cb[j] x + cc[j] over chunk t, g masked as in the sums."""
    rows = x.shape[0] * x.shape[2]
    for t in range(lo, hi):
        j, c = t // nch, t % nch
        row0, row1 = rows * c // nch, rows * (c + 1) // nch
        _grad_apply(gy, x, y, gx, j, row0, row1, ca[j], cb[j], cc[j], relu)


def _per_slice(v, q, fill):
    """A (q,) float64 array: v, or `fill` everywhere when v is None."""
    return np.full(q, float(fill)) if v is None else np.asarray(v, dtype=np.float64)


def _rows(a, p, q, r1, r2):
    """The (p, q, r1, r2) view of a contiguous (p, q, r) array (None stays None)."""
    return None if a is None else a.reshape(p, q, r1, r2)


def _slice_sums(partial, q, nch):
    """Per-slice sums (q,), (q,) of the per-chunk rows of partial (q nch, 2)."""
    sums = partial.reshape(q, nch, 2).sum(axis=1)
    return sums[:, 0], sums[:, 1]


def norm_moments(x):
    """See kernels.numpy_cpu.norm.norm_moments."""
    x = np.ascontiguousarray(x)
    p, q, r = x.shape
    r1, r2, nch = _layout(p, r)
    shift = x[0, :, 0].astype(np.float64)
    partial = np.empty((q * nch, 2))
    run_tasks(_moments_body, q * nch, _rows(x, p, q, r1, r2), shift, partial, nch)
    s, ss = _slice_sums(partial, q, nch)
    count = p * r
    m = s / count
    return (shift + m).astype(x.dtype), np.maximum(ss / count - m * m, 0.0).astype(x.dtype)


def _forward(x, mean, rstd, weight, bias, relu):
    x = np.ascontiguousarray(x)
    p, q, r = x.shape
    scale = _per_slice(rstd, q, 1) * _per_slice(weight, q, 1)
    offset = _per_slice(bias, q, 0) - _per_slice(mean, q, 0) * scale
    y = np.empty_like(x)
    r1, r2, nch = _layout(p, r)
    x4, y4 = _rows(x, p, q, r1, r2), _rows(y, p, q, r1, r2)
    run_tasks(_forward_body, q * nch, x4, scale, offset, y4, relu, nch)
    return y


def norm_forward(x, mean, rstd, weight, bias):
    """See kernels.numpy_cpu.norm.norm_forward."""
    return _forward(x, mean, rstd, weight, bias, False)


def norm_relu_forward(x, mean, rstd, weight, bias):
    """See kernels.numpy_cpu.compose.norm_relu_forward."""
    return _forward(x, mean, rstd, weight, bias, True)


def _backward(gy, y, x, mean, rstd, weight, relu):
    """Sums of g and g (x - mean) per slice (g = gy, masked by y > 0 when relu), so gbias = sum g
    and gweight = rstd sum g (x - mean); then gx = w rstd (g - gbias / N - xhat gweight / N) =
    ca g + cb x + cc per slice, N = p r. Slices of one chunk: one task does both per slice;
    longer slices: the chunks' sums, added per slice, then the chunks' gx."""
    x = np.ascontiguousarray(x)
    p, q, r = x.shape
    gy = np.ascontiguousarray(gy, dtype=x.dtype)
    y = x if y is None else np.ascontiguousarray(y, dtype=x.dtype)  # y unread without relu
    m, s, w = _per_slice(mean, q, 0), _per_slice(rstd, q, 1), _per_slice(weight, q, 1)
    r1, r2, nch = _layout(p, r)
    count, gx = p * r, np.empty_like(x)
    arrays = [_rows(a, p, q, r1, r2) for a in (gy, x, y)]
    gx4 = _rows(gx, p, q, r1, r2)
    if nch == 1:
        gw, gb = np.empty(q), np.empty(q)
        run_tasks(_backward_slices_body, q, *arrays, m, s, w, gx4, gw, gb, relu)
        return gx, gw.astype(x.dtype), gb.astype(x.dtype)
    partial = np.empty((q * nch, 2))
    run_tasks(_backward_sums_body, q * nch, *arrays, m, partial, relu, nch)
    sg, sgx = _slice_sums(partial, q, nch)
    ca = s * w
    cb = -ca * s * s * sgx / count
    cc = -ca * sg / count - cb * m
    run_tasks(_backward_apply_body, q * nch, *arrays, ca, cb, cc, gx4, relu, nch)
    return gx, (sgx * s).astype(x.dtype), sg.astype(x.dtype)


def norm_backward(gy, x, mean, rstd, weight):
    """See kernels.numpy_cpu.norm.norm_backward."""
    return _backward(gy, None, x, mean, rstd, weight, False)


def norm_relu_backward(gy, y, x, mean, rstd, weight):
    """See kernels.numpy_cpu.compose.norm_relu_backward."""
    return _backward(gy, y, x, mean, rstd, weight, True)
