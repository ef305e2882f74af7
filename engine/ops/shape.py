"""Shape ops: reshape, transpose, indexing, flatten, cat, constant pad. Their gradients only move
numbers around."""

from __future__ import annotations

import numpy as np

from engine.errors import ArgumentError
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


class CatFn(Function):
    """y = concatenate(xs, axis): the inputs agree on every axis but `axis` (a non-negative int).

    y has the promoted dtype; backward splits gy at the inputs' offsets along `axis` and casts
    each piece back to its input's dtype.
    """

    def forward(self, *xs, axis):
        # the split points and dtypes are all that backward needs
        self.axis, self.sizes = axis, [x.shape[axis] for x in xs]
        self.dtypes = [x.dtype for x in xs]
        return self.xp.concatenate(xs, axis=axis)

    def backward(self, gy):
        # y is the inputs laid end to end: dy/dx_i = 1 on x_i's slab, so gx_i = gy[slab i]
        grads, start = [], 0
        for i, (size, dtype) in enumerate(zip(self.sizes, self.dtypes, strict=True)):
            index = (slice(None),) * self.axis + (slice(start, start + size),)
            grads.append(gy[index].astype(dtype) if self.needs_grad[i] else None)
            start += size
        return tuple(grads)


class PadFn(Function):
    """y = x with `widths[a] = (before, after)` constant `value` elements added on each axis a
    (all widths >= 0); same dtype. Backward crops gy back to x's slab."""

    def forward(self, x, *, widths, value):
        # backward only needs where x sits inside y
        self.index = tuple(
            slice(before, before + size) for (before, _), size in zip(widths, x.shape, strict=True)
        )
        return self.xp.pad(x, widths, mode="constant", constant_values=value)

    def backward(self, gy):
        # dy/dx = 1 inside x's slab, 0 on the padding: gx = gy cropped to the slab
        return (gy[self.index],)


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


def cat(tensors, axis: int = 0) -> Tensor:
    """Concatenate a sequence of tensors along `axis` (negatives allowed), like torch.cat.

    All inputs need the same number of axes and the same size on every axis but `axis`; the
    result has the promoted dtype. Raises ArgumentError naming the first input that differs.
    """
    if isinstance(tensors, Tensor) or not isinstance(tensors, (list, tuple)):
        raise ArgumentError(f"cat: tensors must be a list or tuple of tensors, got {type(tensors)}")
    if not tensors:
        raise ArgumentError("cat: tensors is empty; give at least one tensor")
    xs = [as_tensor(x) for x in tensors]
    ndim = xs[0].ndim
    if ndim == 0:
        raise ArgumentError("cat: tensors[0] is 0-d; zero-dimensional tensors cannot be joined")
    if not -ndim <= axis < ndim:
        raise ArgumentError(f"cat: axis {axis} out of range for {ndim}-d tensors")
    axis %= ndim
    first = xs[0].shape
    for i, x in enumerate(xs[1:], start=1):
        off = [s for a, s in enumerate(x.shape) if a != axis]
        if x.ndim != ndim or off != [s for a, s in enumerate(first) if a != axis]:
            raise ArgumentError(
                f"cat: tensors[{i}] has shape {x.shape}, tensors[0] has {first}: they must match "
                f"on every axis but axis {axis}"
            )
    return xs[0] if len(xs) == 1 else CatFn.apply(*xs, axis=axis)


def pad(x, pad, value: float = 0.0) -> Tensor:
    """Constant padding as torch.nn.functional.pad(mode="constant"): `pad` holds (before, after)
    pairs from the LAST axis backwards, e.g. (1, 1) pads w, (1, 1, 2, 0) pads w by 1 and 1 and h
    by 2 before. Widths are non-negative ints (no cropping); x (..., h, w) -> same dtype.
    """
    x = as_tensor(x)
    pad = tuple(pad) if isinstance(pad, (list, tuple)) else pad
    if not isinstance(pad, tuple) or not all(
        isinstance(p, (int, np.integer)) and not isinstance(p, bool) for p in pad
    ):
        raise ArgumentError(f"pad: pad must be a tuple of ints, got {pad!r}")
    if len(pad) % 2 or len(pad) > 2 * x.ndim:
        raise ArgumentError(
            f"pad: pad needs an even length of at most 2 * x.ndim = {2 * x.ndim} (pairs from the "
            f"last axis backwards), got {len(pad)} values {pad}"
        )
    if any(p < 0 for p in pad):
        raise ArgumentError(f"pad: widths must be >= 0 (cropping is not supported), got {pad}")
    widths = [(0, 0)] * x.ndim
    for i in range(len(pad) // 2):
        widths[x.ndim - 1 - i] = (int(pad[2 * i]), int(pad[2 * i + 1]))
    if not any(before or after for before, after in widths):
        return x
    return PadFn.apply(x, widths=tuple(widths), value=float(value))
