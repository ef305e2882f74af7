"""bench_norm's baseline: kernels/numba_cpu/norm.py as it was before issue 12 (commit 6324abc),
kept verbatim: one task per slice, so few long slices leave threads idle, and no fused ReLU.

The docstring of that module follows. Normalisation kernels compiled by Numba: one-pass
statistics, normalise, backward, over the (p, q, r) view of kernels/numpy_cpu/norm.py (reduced
over axes 0 and 2, one result per j < q).

Each body handles the slices j in [lo, hi), so run_tasks splits q over threads: batch norm's
channels, or the (sample, group) rows of instance, group and layer norm. Sums are accumulated in
float64 whatever the array dtype; the moments take one pass, shifted by the slice's first value
(var = E[(x - s)^2] - E[x - s]^2), which avoids the cancellation of the unshifted formula.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from kernels.numba_cpu.tasks import run_tasks

JIT = dict(cache=True, fastmath=False, nogil=True)


@njit(**JIT)
def _moments_body(x, mean, var, lo, hi):
    """mean[j], var[j] (biased) of x[:, j, :] for j in [lo, hi), one pass with a shift."""
    p, _, r = x.shape
    count = p * r
    for j in range(lo, hi):
        shift = np.float64(x[0, j, 0])
        s = 0.0  # sum of (x - shift)
        ss = 0.0  # sum of (x - shift)^2
        for i in range(p):
            for k in range(r):
                d = np.float64(x[i, j, k]) - shift
                s += d
                ss += d * d
        m = s / count
        mean[j] = shift + m
        var[j] = max(ss / count - m * m, 0.0)


@njit(**JIT)
def _forward_body(x, mean, rstd, weight, bias, y, lo, hi):
    """y[i, j, k] = x[i, j, k] a + b with a = rstd[j] weight[j], b = bias[j] - mean[j] a."""
    p, _, r = x.shape
    for j in range(lo, hi):
        a = np.float64(rstd[j]) * weight[j]
        b = bias[j] - mean[j] * a
        for i in range(p):
            for k in range(r):
                y[i, j, k] = x[i, j, k] * a + b


@njit(**JIT)
def _backward_body(gy, x, mean, rstd, weight, gx, gweight, gbias, lo, hi):
    """Pass 1: gbias[j] = sum gy, gweight[j] = sum gy xhat over slice j. Pass 2: gx = weight rstd
    (gy - gbias / N - xhat gweight / N), written as A gy + B x + C with xhat = (x - mean) rstd."""
    p, _, r = x.shape
    count = p * r
    for j in range(lo, hi):
        m, s = np.float64(mean[j]), np.float64(rstd[j])
        sg = 0.0
        sgx = 0.0  # sum gy (x - mean); times rstd it is gweight
        for i in range(p):
            for k in range(r):
                g = np.float64(gy[i, j, k])
                sg += g
                sgx += g * (np.float64(x[i, j, k]) - m)
        gbias[j] = sg
        gweight[j] = sgx * s
        a = s * weight[j]  # d y / d xhat times d xhat / d x
        b = -a * s * s * sgx / count  # the xhat gweight / N term, per unit of (x - mean)
        c = -a * sg / count - b * m
        for i in range(p):
            for k in range(r):
                gx[i, j, k] = a * gy[i, j, k] + b * x[i, j, k] + c


def _per_slice(v, q, dtype, fill):
    """A (q,) array of x's dtype: v contiguous, or `fill` everywhere when v is None."""
    return np.full(q, fill, dtype) if v is None else np.ascontiguousarray(v, dtype=dtype)


def norm_moments(x):
    """See kernels.numpy_cpu.norm.norm_moments."""
    x = np.ascontiguousarray(x)
    q = x.shape[1]
    mean, var = np.empty(q, x.dtype), np.empty(q, x.dtype)
    run_tasks(_moments_body, q, x, mean, var)
    return mean, var


def norm_forward(x, mean, rstd, weight, bias):
    """See kernels.numpy_cpu.norm.norm_forward."""
    x = np.ascontiguousarray(x)
    q, dt = x.shape[1], x.dtype
    y = np.empty_like(x)
    args = (_per_slice(v, q, dt, f) for v, f in ((mean, 0), (rstd, 1), (weight, 1), (bias, 0)))
    run_tasks(_forward_body, q, x, *args, y)
    return y


def norm_backward(gy, x, mean, rstd, weight):
    """See kernels.numpy_cpu.norm.norm_backward."""
    x = np.ascontiguousarray(x)
    q, dt = x.shape[1], x.dtype
    gy = np.ascontiguousarray(gy, dtype=dt)
    gx, gweight, gbias = np.empty_like(x), np.empty(q, dt), np.empty(q, dt)
    stats = (_per_slice(v, q, dt, 1) for v in (mean, rstd, weight))
    run_tasks(_backward_body, q, gy, x, *stats, gx, gweight, gbias)
    return gx, gweight, gbias
