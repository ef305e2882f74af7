"""Leaky ReLU and GELU compiled by Numba: flat elementwise loops over C-contiguous views, serial
(memory-bound, as kernels/numba_cpu/elementwise.py explains); GELU's erf is math.erf."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

JIT = dict(cache=True, fastmath=False, nogil=True)
_INV_SQRT2 = 1 / math.sqrt(2)
_INV_SQRT2PI = 1 / math.sqrt(2 * math.pi)


@njit(**JIT)
def _leaky_forward_body(x, slope, y):
    """y[k] = x[k] if x[k] > 0 else slope x[k]."""
    for k in range(x.size):
        v = x[k]
        y[k] = v if v > 0 else v * slope


@njit(**JIT)
def _leaky_backward_body(gy, x, slope, gx):
    """gx[k] = gy[k] if x[k] > 0 else slope gy[k]."""
    for k in range(gy.size):
        gx[k] = gy[k] if x[k] > 0 else gy[k] * slope


@njit(**JIT)
def _gelu_forward_body(x, y):
    """y[k] = x Phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2."""
    for k in range(x.size):
        v = np.float64(x[k])
        y[k] = v * 0.5 * (1.0 + math.erf(v * _INV_SQRT2))


@njit(**JIT)
def _gelu_backward_body(gy, x, gx):
    """gx[k] = gy (Phi(x) + x phi(x)), phi(x) = exp(-x^2 / 2) / sqrt(2 pi)."""
    for k in range(x.size):
        v = np.float64(x[k])
        cdf = 0.5 * (1.0 + math.erf(v * _INV_SQRT2))
        gx[k] = gy[k] * (cdf + v * math.exp(-0.5 * v * v) * _INV_SQRT2PI)


def _flat(a, dtype=None):
    return np.ascontiguousarray(a, dtype=dtype).reshape(-1)


def leaky_relu_forward(x, negative_slope):
    """See kernels.numpy_cpu.activation.leaky_relu_forward."""
    y = np.empty(x.shape, x.dtype)
    _leaky_forward_body(_flat(x), x.dtype.type(negative_slope), y.reshape(-1))
    return y


def leaky_relu_backward(gy, x, negative_slope):
    """See kernels.numpy_cpu.activation.leaky_relu_backward."""
    gx = np.empty(gy.shape, gy.dtype)
    _leaky_backward_body(_flat(gy), _flat(x), gy.dtype.type(negative_slope), gx.reshape(-1))
    return gx


def gelu_forward(x):
    """See kernels.numpy_cpu.activation.gelu_forward."""
    y = np.empty(x.shape, x.dtype)
    _gelu_forward_body(_flat(x), y.reshape(-1))
    return y


def gelu_backward(gy, x):
    """See kernels.numpy_cpu.activation.gelu_backward."""
    gx = np.empty(gy.shape, gy.dtype)
    _gelu_backward_body(_flat(gy), _flat(x), gx.reshape(-1))
    return gx
