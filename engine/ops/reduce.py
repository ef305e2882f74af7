"""Reductions: sum and mean over axes, with the gradient broadcast back to the input's shape."""

from __future__ import annotations

import math

from engine.function import Function
from engine.tensor import Tensor, as_tensor


def _axes(axis, ndim: int) -> tuple[int, ...]:
    """axis (None, an int or a sequence of ints, negatives allowed) -> sorted non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    for a in axes:
        if not -ndim <= a < max(ndim, 1):
            raise ValueError(f"axis {a} out of range for a tensor of {ndim} dims")
    return tuple(sorted(a % ndim for a in axes)) if ndim else ()


class SumFn(Function):
    """y = x summed over `axes` (sorted, non-negative ints); same dtype as x.

    keepdims=True keeps each reduced axis with size 1; otherwise y drops them (0-d for all axes).
    Empty `axes` is the identity. The gradient broadcasts gy back over the reduced axes.
    """

    def forward(self, x, *, axes, keepdims):
        # the gradient is gy broadcast back: it needs only the geometry, not x
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
    """Sum over `axis` (None: all axes, an int, or a tuple), like ndarray.sum; same dtype."""
    x = as_tensor(x)
    return SumFn.apply(x, axes=_axes(axis, x.ndim), keepdims=keepdims)


def mean(x, axis=None, keepdims: bool = False) -> Tensor:
    """sum / count over the reduced axes (same `axis`, `keepdims` as sum); same dtype.
    count is the product of the reduced sizes, so a reduced axis of size 0 gives nan."""
    x = as_tensor(x)
    axes = _axes(axis, x.ndim)
    count = math.prod(x.shape[a] for a in axes)
    return sum(x, axis=axes, keepdims=keepdims) / count
