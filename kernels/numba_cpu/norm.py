"""Normalisation kernels compiled by Numba: one-pass statistics, normalise (optionally rectified),
backward (optionally masked by the ReLU's output), over the (p, q, r) view of
kernels/numpy_cpu/norm.py (reduced over axes 0 and 2, one result per slice j < q).

Tasks are (slice, chunk) pairs: slice j's p*r elements, taken in (i, k) order, split into
`_chunks(p, r)` contiguous chunks of about CHUNK elements, so that a few long slices (batch norm
at 64 channels, instance norm with n*c = 32 slices of 64^3 voxels) still spread over every thread.
The chunking depends on the shape only, never on the thread count: results are the same on any
number of threads. Each chunk's sums go to its own row of a float64 `partial` array, which the
launcher adds up per slice. Moments take one pass with a shift (the slice's first value, the same
for all its chunks): var = E[(x - s)^2] - E[x - s]^2 in float64, which keeps the cancellation of
the unshifted formula away unless |s - mean| / std reaches ~1e6.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .tasks import run_tasks

JIT = dict(cache=True, fastmath=False, nogil=True)
CHUNK = 1 << 15  # elements of one task: 128 KiB of float32, enough to amortise a task's start


def _chunks(p: int, r: int) -> int:
    """Chunks per slice of p*r elements: ceil(p r / CHUNK), at least 1."""
    return max(1, -(-(p * r) // CHUNK))


@njit(**JIT)
def _moments_body(x, shift, partial, nch, lo, hi):
    """partial[t] = (sum d, sum d^2), d = x - shift[j], over chunk t % nch of slice j = t // nch,
    for tasks t in [lo, hi). A chunk is the flat range [a, b) of (i, k) -> i r + k."""
    p, _, r = x.shape
    for t in range(lo, hi):
        j, c = t // nch, t % nch
        a, b = p * r * c // nch, p * r * (c + 1) // nch
        s0 = np.float64(shift[j])
        s = 0.0
        ss = 0.0
        for i in range(a // r, (b + r - 1) // r):  # the rows i that the chunk touches
            for k in range(max(a - i * r, 0), min(b - i * r, r)):
                d = np.float64(x[i, j, k]) - s0
                s += d
                ss += d * d
        partial[t, 0] = s
        partial[t, 1] = ss


@njit(**JIT)
def _forward_body(x, scale, offset, y, relu, nch, lo, hi):
    """y[i, j, k] = x[i, j, k] scale[j] + offset[j] (then max(., 0) when relu) over the chunks
    t in [lo, hi); scale = rstd w and offset = b - mean scale, float64."""
    p, _, r = x.shape
    for t in range(lo, hi):
        j, c = t // nch, t % nch
        a, b = p * r * c // nch, p * r * (c + 1) // nch
        sc, off = scale[j], offset[j]
        for i in range(a // r, (b + r - 1) // r):
            for k in range(max(a - i * r, 0), min(b - i * r, r)):
                v = x[i, j, k] * sc + off
                if relu and not v > 0:
                    v = 0.0
                y[i, j, k] = v


@njit(**JIT)
def _backward_sums_body(gy, x, y, mean, partial, relu, nch, lo, hi):
    """partial[t] = (sum g, sum g (x - mean[j])) over chunk t, g = gy, or gy where y > 0 when
    relu (the ReLU's derivative; y is the rectified output, unread otherwise)."""
    p, _, r = x.shape
    for t in range(lo, hi):
        j, c = t // nch, t % nch
        a, b = p * r * c // nch, p * r * (c + 1) // nch
        m = mean[j]
        sg = 0.0
        sgx = 0.0
        for i in range(a // r, (b + r - 1) // r):
            for k in range(max(a - i * r, 0), min(b - i * r, r)):
                g = np.float64(gy[i, j, k])
                if relu and not y[i, j, k] > 0:
                    g = 0.0
                sg += g
                sgx += g * (np.float64(x[i, j, k]) - m)
        partial[t, 0] = sg
        partial[t, 1] = sgx


@njit(**JIT)
def _backward_apply_body(gy, x, y, ca, cb, cc, gx, relu, nch, lo, hi):
    """gx[i, j, k] = ca[j] g + cb[j] x + cc[j] over chunk t, g masked as in the sums."""
    p, _, r = x.shape
    for t in range(lo, hi):
        j, c = t // nch, t % nch
        a, b = p * r * c // nch, p * r * (c + 1) // nch
        a1, b1, c1 = ca[j], cb[j], cc[j]
        for i in range(a // r, (b + r - 1) // r):
            for k in range(max(a - i * r, 0), min(b - i * r, r)):
                g = gy[i, j, k]
                if relu and not y[i, j, k] > 0:
                    g = 0.0
                gx[i, j, k] = a1 * g + b1 * x[i, j, k] + c1


def _per_slice(v, q, fill):
    """A (q,) float64 array: v, or `fill` everywhere when v is None."""
    return np.full(q, float(fill)) if v is None else np.asarray(v, dtype=np.float64)


def _slice_sums(partial, q, nch):
    """Per-slice sums (q,), (q,) of the per-chunk rows of partial (q nch, 2)."""
    sums = partial.reshape(q, nch, 2).sum(axis=1)
    return sums[:, 0], sums[:, 1]


def norm_moments(x):
    """See kernels.numpy_cpu.norm.norm_moments."""
    x = np.ascontiguousarray(x)
    p, q, r = x.shape
    nch = _chunks(p, r)
    shift = x[0, :, 0].astype(np.float64)
    partial = np.empty((q * nch, 2))
    run_tasks(_moments_body, q * nch, x, shift, partial, nch)
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
    nch = _chunks(p, r)
    run_tasks(_forward_body, q * nch, x, scale, offset, y, relu, nch)
    return y


def norm_forward(x, mean, rstd, weight, bias):
    """See kernels.numpy_cpu.norm.norm_forward."""
    return _forward(x, mean, rstd, weight, bias, False)


def norm_relu_forward(x, mean, rstd, weight, bias):
    """See kernels.numpy_cpu.compose.norm_relu_forward."""
    return _forward(x, mean, rstd, weight, bias, True)


def _backward(gy, y, x, mean, rstd, weight, relu):
    """Pass 1: sums of g and g (x - mean) per slice (g = gy, masked by y > 0 when relu), so
    gbias = sum g and gweight = rstd sum g (x - mean). Pass 2: gx = w rstd (g - gbias / N - xhat
    gweight / N), written as ca g + cb x + cc per slice, N = p r."""
    x = np.ascontiguousarray(x)
    p, q, r = x.shape
    gy = np.ascontiguousarray(gy, dtype=x.dtype)
    y = x if y is None else np.ascontiguousarray(y, dtype=x.dtype)  # y unread without relu
    m, s, w = _per_slice(mean, q, 0), _per_slice(rstd, q, 1), _per_slice(weight, q, 1)
    nch, count = _chunks(p, r), p * r
    partial = np.empty((q * nch, 2))
    run_tasks(_backward_sums_body, q * nch, gy, x, y, m, partial, relu, nch)
    sg, sgx = _slice_sums(partial, q, nch)
    ca = s * w  # d y / d xhat times d xhat / d x
    cb = -ca * s * s * sgx / count  # the xhat gweight / N term, per unit of (x - mean)
    cc = -ca * sg / count - cb * m
    gx = np.empty_like(x)
    run_tasks(_backward_apply_body, q * nch, gy, x, y, ca, cb, cc, gx, relu, nch)
    return gx, (sgx * s).astype(x.dtype), sg.astype(x.dtype)


def norm_backward(gy, x, mean, rstd, weight):
    """See kernels.numpy_cpu.norm.norm_backward."""
    return _backward(gy, None, x, mean, rstd, weight, False)


def norm_relu_backward(gy, y, x, mean, rstd, weight):
    """See kernels.numpy_cpu.compose.norm_relu_backward."""
    return _backward(gy, y, x, mean, rstd, weight, True)
