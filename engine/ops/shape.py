"""Shape ops: reshape, transpose, indexing, flatten. Their gradients only move numbers around."""

from __future__ import annotations

from engine.function import Function
from engine.tensor import Tensor, as_tensor


class ReshapeFn(Function):
    def forward(self, x, *, shape):
        self.x_shape = x.shape
        return x.reshape(shape)

    def backward(self, gy):
        return (gy.reshape(self.x_shape),)


class TransposeFn(Function):
    def forward(self, x, *, axes):
        self.axes = axes
        return x.transpose(axes)

    def backward(self, gy):
        # the inverse permutation undoes the transpose
        if self.axes is None:
            return (gy.transpose(),)
        inverse = [0] * len(self.axes)
        for i, a in enumerate(self.axes):
            inverse[a] = i
        return (gy.transpose(inverse),)


class GetItemFn(Function):
    def forward(self, x, *, index):
        self.x_shape, self.x_dtype, self.index = x.shape, x.dtype, index
        return x[index]

    def backward(self, gy):
        # scatter-add: an element picked twice by fancy indexing gets both gradients
        gx = self.xp.zeros(self.x_shape, dtype=self.x_dtype)
        self.xp.add.at(gx, self.index, gy)
        return (gx,)


def reshape(x, shape) -> Tensor:
    x = as_tensor(x)
    return x if x.shape == tuple(shape) else ReshapeFn.apply(x, shape=tuple(shape))


def transpose(x, axes=None) -> Tensor:
    """Permute axes (reverse them when axes is None), like ndarray.transpose."""
    x = as_tensor(x)
    if axes is not None and sorted(axes) != list(range(x.ndim)):
        raise ValueError(f"transpose axes {axes} are not a permutation of {x.ndim} axes")
    return TransposeFn.apply(x, axes=axes)


def getitem(x, index) -> Tensor:
    if isinstance(index, Tensor):
        index = index.data
    if isinstance(index, tuple):
        index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return GetItemFn.apply(x, index=index)


def flatten(x) -> Tensor:
    """(n, d1, d2, ...) -> (n, d1*d2*...): keeps the batch axis."""
    x = as_tensor(x)
    if x.ndim < 1:
        raise ValueError("flatten needs at least one axis (the batch)")
    return reshape(x, (x.shape[0], -1)) if x.ndim != 2 else x
