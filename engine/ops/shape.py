"""Shape ops: reshape, transpose, indexing, flatten. Their gradients only move numbers around."""

from __future__ import annotations

from engine.function import Function
from engine.tensor import Tensor, as_tensor


class ReshapeFn(Function):
    """y = x.reshape(shape) (one -1 allowed), same size, dtype and row-major element order."""

    def forward(self, x, *, shape):
        self.x_shape = x.shape  # the gradient is gy reshaped back
        return x.reshape(shape)

    def backward(self, gy):
        # reshape keeps the row-major order: dy_i/dx_i = 1, so gx = gy in x's shape
        return (gy.reshape(self.x_shape),)


class TransposeFn(Function):
    """y = x.transpose(axes): axis i of y is axis axes[i] of x; axes None reverses all axes."""

    def forward(self, x, *, axes):
        self.axes = axes  # backward applies the inverse permutation
        return x.transpose(axes)

    def backward(self, gy):
        # y[..., i, ...] = x[permuted]: gx = gy transposed by the inverse permutation
        if self.axes is None:
            return (gy.transpose(),)
        inverse = [0] * len(self.axes)
        for i, a in enumerate(self.axes):
            inverse[a] = i
        return (gy.transpose(inverse),)


class GetItemFn(Function):
    """y = x[index] with NumPy's indexing rules (ints, slices, arrays, masks); same dtype.

    Backward scatters gy into zeros of x's shape: elements picked twice (fancy indexing)
    receive the sum of their gradients, elements never picked receive 0.
    """

    def forward(self, x, *, index):
        # backward builds zeros like x and scatters gy at the same index: x itself is not needed
        self.x_shape, self.x_dtype, self.index = x.shape, x.dtype, index
        return x[index]

    def backward(self, gy):
        # dy_j/dx_i = 1 where index picks x_i for y_j: scatter-add (a repeated pick sums)
        gx = self.xp.zeros(self.x_shape, dtype=self.x_dtype)
        self.xp.add.at(gx, self.index, gy)
        return (gx,)


def reshape(x, shape) -> Tensor:
    """x with the same elements in `shape` (one -1 allowed); x itself if the shape is unchanged."""
    x = as_tensor(x)
    return x if x.shape == tuple(shape) else ReshapeFn.apply(x, shape=tuple(shape))


def transpose(x, axes=None) -> Tensor:
    """Permute axes (reverse them when axes is None), like ndarray.transpose."""
    x = as_tensor(x)
    if axes is not None and sorted(axes) != list(range(x.ndim)):
        raise ValueError(f"transpose axes {axes} are not a permutation of {x.ndim} axes")
    return TransposeFn.apply(x, axes=axes)


def getitem(x, index) -> Tensor:
    """x[index] by NumPy's rules; Tensors inside the index act as constant int/bool arrays."""
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
