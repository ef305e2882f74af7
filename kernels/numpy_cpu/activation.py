"""Leaky ReLU and GELU kernels, written against `xp` (NumPy or CuPy arrays alike). GELU's erf
comes from scipy.special on NumPy arrays and cupyx.scipy.special on CuPy ones, imported lazily."""

from __future__ import annotations

import math

from .xp import array_module


def leaky_relu_forward(x, negative_slope):
    """y = x where x > 0, else negative_slope * x; same shape and dtype."""
    return array_module(x).where(x > 0, x, x * negative_slope)


def leaky_relu_backward(gy, x, negative_slope):
    """gx = gy where x > 0, else negative_slope * gy (at x == 0: the slope, as PyTorch)."""
    return array_module(gy).where(x > 0, gy, gy * negative_slope)


def _erf(x):
    """erf elementwise: NumPy has none, so scipy.special's (cupyx.scipy.special's for CuPy)."""
    if array_module(x).__name__ == "cupy":
        from cupyx.scipy.special import erf
    else:
        from scipy.special import erf
    return erf(x)


def gelu_forward(x):
    """y = x Phi(x) = x (1 + erf(x / sqrt 2)) / 2, the exact (erf) form; same shape and dtype."""
    return (x * (0.5 * (1 + _erf(x * (1 / math.sqrt(2)))))).astype(x.dtype, copy=False)


def gelu_backward(gy, x):
    """gx = gy (Phi(x) + x phi(x)), phi(x) = exp(-x^2 / 2) / sqrt(2 pi); gy's dtype."""
    xp = array_module(x)
    cdf = 0.5 * (1 + _erf(x * (1 / math.sqrt(2))))
    pdf = xp.exp(-0.5 * x * x) * (1 / math.sqrt(2 * math.pi))
    return (gy * (cdf + x * pdf)).astype(gy.dtype, copy=False)
