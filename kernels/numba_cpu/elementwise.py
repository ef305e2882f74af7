"""ReLU and softmax cross-entropy compiled by Numba: flat elementwise loops and row loops.

The elementwise bodies work on flat C-contiguous views (index k runs over every element in memory
order); the launchers reshape, so one compiled signature per dtype serves every shape. They run
serially: they are memory-bound (one core already streams the seed CNN's 22 MB activations in
about 1 ms), and on this shared 2-core machine a parallel region's barrier costs more than it
saves whenever another process holds a core (measured 1 ms serial vs 1-8 ms parallel).
"""

from __future__ import annotations

import numpy as np
from numba import njit

JIT = dict(cache=True, fastmath=False, nogil=True)


@njit(**JIT)
def _relu_forward_body(x, y):
    """y[k] = max(x[k], 0); NaN stays NaN, as np.maximum."""
    for k in range(x.size):
        v = x[k]
        y[k] = v if (v > 0) | (v != v) else 0  # `|`, not `or`: a select, not a branch


@njit(**JIT)
def _relu_backward_body(gy, y, gx):
    """gx[k] = gy[k] where y[k] > 0, else 0."""
    for k in range(gy.size):
        gx[k] = gy[k] if y[k] > 0 else 0


@njit(**JIT)
def _xent_forward_body(logits, t, losses, probs):
    """Row r: m = max_k z[r, k]; s = sum_k exp(z[r, k] - m); probs[r] = exp(z[r] - m) / s;
    losses[r] = log(s) - (z[r, t[r]] - m). Subtracting the row max keeps exp in range."""
    n, k = logits.shape
    for r in range(n):
        m = logits[r, 0]
        for q in range(1, k):
            m = max(m, logits[r, q])
        s = 0.0  # the exp-sum of a row, accumulated in float64
        for q in range(k):
            e = np.exp(logits[r, q] - m)
            probs[r, q] = e
            s += e
        for q in range(k):
            probs[r, q] = probs[r, q] / s
        losses[r] = np.log(s) - (logits[r, t[r]] - m)


@njit(**JIT)
def _xent_backward_body(probs, t, scale, g):
    """g[r, q] = (probs[r, q] - [q == t[r]]) * scale, scale = gloss / n."""
    n, k = probs.shape
    for r in range(n):
        for q in range(k):
            g[r, q] = probs[r, q] * scale
        g[r, t[r]] = (probs[r, t[r]] - 1) * scale


def relu_forward(x):
    """See kernels.numpy_cpu.elementwise.relu_forward."""
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    _relu_forward_body(x.reshape(-1), y.reshape(-1))
    return y


def relu_backward(gy, y):
    """See kernels.numpy_cpu.elementwise.relu_backward."""
    gy, y = np.ascontiguousarray(gy), np.ascontiguousarray(y)
    gx = np.empty_like(gy)
    _relu_backward_body(gy.reshape(-1), y.reshape(-1), gx.reshape(-1))
    return gx


def softmax_cross_entropy_forward(logits, t):
    """See kernels.numpy_cpu.elementwise.softmax_cross_entropy_forward: (loss 0-d, probs)."""
    logits = np.ascontiguousarray(logits)
    probs = np.empty_like(logits)
    losses = np.empty(logits.shape[0], dtype=np.float64)
    _xent_forward_body(logits, np.ascontiguousarray(t, dtype=np.int64), losses, probs)
    return np.asarray(losses.mean(), dtype=logits.dtype), probs


def softmax_cross_entropy_backward(probs, t, gloss):
    """See kernels.numpy_cpu.elementwise.softmax_cross_entropy_backward: glogits (n, k)."""
    probs = np.ascontiguousarray(probs)
    g = np.empty_like(probs)
    scale = float(gloss) / probs.shape[0]
    _xent_backward_body(probs, np.ascontiguousarray(t, dtype=np.int64), scale, g)
    return g
