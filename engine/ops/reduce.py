"""Reductions: sum and mean over axes, with the gradient broadcast back to the input's shape."""

from __future__ import annotations

import math

from engine.function import Function
from engine.tensor import Tensor, as_tensor


def _axes(axis, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    for a in axes:
        if not -ndim <= a < max(ndim, 1):
            raise ValueError(f"axis {a} out of range for a tensor of {ndim} dims")
    return tuple(sorted(a % ndim for a in axes)) if ndim else ()


class SumFn(Function):
    def forward(self, x, *, axes, keepdims):
        self.x_shape, self.axes, self.keepdims = x.shape, axes, keepdims
        return self.xp.asarray(x.sum(axis=axes, keepdims=keepdims))

    def backward(self, gy):
        # d/dx_i sum(x) = 1: put the reduced axes back (size 1), then broadcast
        if not self.keepdims:
            shape = list(self.x_shape)
            for a in self.axes:
                shape[a] = 1
            gy = gy.reshape(shape)
        return (self.xp.broadcast_to(gy, self.x_shape).copy(),)


def sum(x, axis=None, keepdims: bool = False) -> Tensor:  # noqa: A001 - ndarray's name
    x = as_tensor(x)
    return SumFn.apply(x, axes=_axes(axis, x.ndim), keepdims=keepdims)


def mean(x, axis=None, keepdims: bool = False) -> Tensor:
    """sum / count over the reduced axes."""
    x = as_tensor(x)
    axes = _axes(axis, x.ndim)
    count = math.prod(x.shape[a] for a in axes)
    return sum(x, axis=axes, keepdims=keepdims) / count
