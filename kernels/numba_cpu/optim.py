"""Optimizer updates compiled by Numba, in place on flat views: PyTorch's SGD and Adam rules.

Parameters of the models here are small (the seed CNN's largest is 102,400 floats), so the bodies
run serially: a parallel region costs more than it saves at that size. Element k of every array is
updated independently. Non-contiguous arrays (never produced by the engine) go to numpy_cpu.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from kernels.numpy_cpu import optim as reference

JIT = dict(cache=True, fastmath=False, nogil=True)


@njit(**JIT)
def _sgd_body(p, g, v, lr, momentum, nesterov, weight_decay):
    """d = g + wd p; v = mu v + d; step = d + mu v (nesterov) or v (mu > 0) or d; p -= lr step.
    v has length 0 when momentum is 0 (no velocity buffer)."""
    for k in range(p.size):
        d = g[k] + weight_decay * p[k]
        if momentum != 0:
            v[k] = momentum * v[k] + d
            d = d + momentum * v[k] if nesterov else v[k]
        p[k] -= lr * d


@njit(**JIT)
def _adam_body(p, g, m, v, lr_t, beta1, beta2, eps, root_bc2, weight_decay):
    """d = g + wd p; m = b1 m + (1-b1) d; v = b2 v + (1-b2) d^2;
    p -= lr_t m / (sqrt(v) / root_bc2 + eps), lr_t = lr / (1 - b1^t), root_bc2 = sqrt(1 - b2^t)."""
    for k in range(p.size):
        d = g[k] + weight_decay * p[k]
        m[k] = beta1 * m[k] + (1 - beta1) * d
        v[k] = beta2 * v[k] + (1 - beta2) * (d * d)
        p[k] -= lr_t * (m[k] / (np.sqrt(v[k]) / root_bc2 + eps))


def _flat(*arrays):
    """1-D views of C-contiguous arrays, or None if any is not (an in-place update needs views)."""
    if all(a.flags.c_contiguous for a in arrays):
        return [a.reshape(-1) for a in arrays]
    return None


def sgd_update(p, g, v, lr, momentum, nesterov, weight_decay):
    """See kernels.numpy_cpu.optim.sgd_update (in place on p and v)."""
    g = np.ascontiguousarray(g, dtype=p.dtype)
    views = _flat(p, g) if v is None else _flat(p, g, v)
    if views is None:
        return reference.sgd_update(p, g, v, lr, momentum, nesterov, weight_decay)
    vv = views[2] if v is not None else np.empty(0, dtype=p.dtype)
    _sgd_body(
        views[0],
        views[1],
        vv,
        float(lr),
        float(momentum if v is not None else 0.0),
        bool(nesterov),
        float(weight_decay),
    )
    return None


def adam_update(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay):
    """See kernels.numpy_cpu.optim.adam_update (in place on p, m and v)."""
    g = np.ascontiguousarray(g, dtype=p.dtype)
    views = _flat(p, g, m, v)
    if views is None:
        return reference.adam_update(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay)
    lr_t = lr / (1 - beta1**step)
    root_bc2 = (1 - beta2**step) ** 0.5
    _adam_body(
        *views,
        float(lr_t),
        float(beta1),
        float(beta2),
        float(eps),
        float(root_bc2),
        float(weight_decay),
    )
    return None
