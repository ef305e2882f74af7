"""Max, average and adaptive average pooling over N spatial axes (NCHW, NCDHW), written against `xp`
so CuPy can reuse them. One copy of the math: the 2-D and 3-D kernel names are the N-d functions.

o = (size + 2 p - k) // s + 1 per axis. Max pooling pads with -inf (padding never wins); average
pooling pads with zeros that count in the mean (PyTorch's count_include_pad=True). Window taps are
numbered row-major over the kernel axes (2-D: idx = u * kw + v; 3-D: (t * kh + u) * kw + v); the
max-pool tie rule is np.argmax's: the first maximum in that order, and the first NaN wins over any
number (so NaNs propagate). The GPU flavours state it once each.
"""

from __future__ import annotations

import itertools

from .xp import array_module, out_size


def _taps(kernel_size):
    """(idx, offsets) of every window tap in row-major order: offsets (u, v) or (t, u, v)."""
    return enumerate(itertools.product(*(range(k) for k in kernel_size)))


def _tap(offsets, stride, out):
    """Index of tap `offsets` of every window in the padded input: a strided view of shape out."""
    return (
        ...,
        *(slice(u, u + s * (o - 1) + 1, s) for u, s, o in zip(offsets, stride, out, strict=True)),
    )


def _out(x_shape, kernel_size, stride, padding):
    """Spatial output shape: one out_size per axis."""
    spatial = x_shape[2:]
    return tuple(map(out_size, spatial, kernel_size, stride, padding))


def _pad(x, padding, value):
    xp = array_module(x)
    if not any(padding):
        return x
    return xp.pad(x, ((0, 0), (0, 0), *((p, p) for p in padding)), constant_values=value)


def _zeros_padded(like, x_shape, padding):
    """Zero gradient of the padded input, like's dtype: (n, c, size + 2 p, ...)."""
    xp = array_module(like)
    spatial = (size + 2 * p for size, p in zip(x_shape[2:], padding, strict=True))
    return xp.zeros((*x_shape[:2], *spatial), dtype=like.dtype)


def _unpad(xpad, x_shape, padding):
    xp = array_module(xpad)
    inside = (slice(p, p + size) for size, p in zip(x_shape[2:], padding, strict=True))
    return xp.ascontiguousarray(xpad[(..., *inside)])


def max_pool_forward(x, kernel_size, stride, padding):
    """x (n, c, *spatial) -> (y (n, c, *out), argmax int32 (n, c, *out)), 2 or 3 spatial axes.
    argmax is the flat row-major tap index (u * kw + v, or (t * kh + u) * kw + v) of the first
    maximum in each window; a NaN wins over any number."""
    xp = array_module(x)
    out = _out(x.shape, kernel_size, stride, padding)
    xpad = _pad(x, padding, -xp.inf)
    taps = xp.empty((*x.shape[:2], *out, _count(kernel_size)), dtype=x.dtype)
    for idx, offsets in _taps(kernel_size):
        taps[..., idx] = xpad[_tap(offsets, stride, out)]
    argmax = taps.argmax(axis=-1).astype(xp.int32)  # argmax returns the first maximum
    y = xp.take_along_axis(taps, argmax[..., None].astype(xp.intp), axis=-1)[..., 0]
    return y, argmax


def max_pool_backward(gy, argmax, x_shape, kernel_size, stride, padding):
    """gy (n, c, *out), argmax -> gx (n, c, *spatial): gx[window's argmax tap] += gy[window]."""
    xp = array_module(gy)
    out = gy.shape[2:]
    gxpad = _zeros_padded(gy, x_shape, padding)
    for idx, offsets in _taps(kernel_size):
        gxpad[_tap(offsets, stride, out)] += xp.where(argmax == idx, gy, 0)
    return _unpad(gxpad, x_shape, padding)


def avg_pool_forward(x, kernel_size, stride, padding):
    """x (n, c, *spatial) -> y (n, c, *out) = sum of the window / (number of taps), padded zeros
    included."""
    xp = array_module(x)
    out = _out(x.shape, kernel_size, stride, padding)
    xpad = _pad(x, padding, 0)
    y = xp.zeros((*x.shape[:2], *out), dtype=x.dtype)
    for _, offsets in _taps(kernel_size):
        y += xpad[_tap(offsets, stride, out)]
    return y / _count(kernel_size)


def avg_pool_backward(gy, x_shape, kernel_size, stride, padding):
    """gy (n, c, *out) -> gx (n, c, *spatial): each window spreads gy / (number of taps) over its
    taps."""
    out = gy.shape[2:]
    gxpad = _zeros_padded(gy, x_shape, padding)
    share = gy / _count(kernel_size)
    for _, offsets in _taps(kernel_size):
        gxpad[_tap(offsets, stride, out)] += share
    return _unpad(gxpad, x_shape, padding)


def _count(kernel_size) -> int:
    count = 1
    for k in kernel_size:
        count *= k
    return count


# The named 2-D and 3-D kernels are the N-d functions above (the rank is len(kernel_size)).
max_pool2d_forward = max_pool3d_forward = max_pool_forward
max_pool2d_backward = max_pool3d_backward = max_pool_backward
avg_pool2d_forward = avg_pool3d_forward = avg_pool_forward
avg_pool2d_backward = avg_pool3d_backward = avg_pool_backward


def adaptive_windows(size: int, out: int) -> list[tuple[int, int]]:
    """[start, end) of each of the `out` windows along an axis of length `size` (PyTorch's rule):
    start = floor(i size / out), end = ceil((i + 1) size / out); windows may overlap by one."""
    return [(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]


def adaptive_avg_pool_forward(x, output_size):
    """x (n, c, *spatial) -> y (n, c, *output_size), 2 or 3 spatial axes: y = the mean of x over
    window i of each axis (adaptive_windows). Separable: the mean is taken axis by axis, last axis
    first; output size 1 everywhere is the global average (one mean over the spatial axes)."""
    xp = array_module(x)
    if all(o == 1 for o in output_size):
        return x.mean(axis=tuple(range(2, x.ndim)), keepdims=True)
    y = x
    for axis in range(x.ndim - 1, 1, -1):
        last = xp.moveaxis(y, axis, -1)
        windows = adaptive_windows(last.shape[-1], output_size[axis - 2])
        means = [last[..., s:e].mean(axis=-1) for s, e in windows]
        y = xp.moveaxis(xp.stack(means, axis=-1), -1, axis)
    return xp.ascontiguousarray(y)


def adaptive_avg_pool_backward(gy, x_shape):
    """gy (n, c, *output_size) -> gx (n, c, *spatial): window i of each axis spreads gy / (its
    length) over its taps (overlapping windows add), axis by axis, first axis first."""
    xp = array_module(gy)
    g = gy
    for axis in range(2, gy.ndim):
        size = x_shape[axis]
        last = xp.moveaxis(g, axis, -1)
        gx = xp.zeros((*last.shape[:-1], size), dtype=gy.dtype)
        for i, (s, e) in enumerate(adaptive_windows(size, last.shape[-1])):
            gx[..., s:e] += (last[..., i] / (e - s))[..., None]
        g = xp.moveaxis(gx, -1, axis)
    return xp.ascontiguousarray(g)
