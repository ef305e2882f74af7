"""Convolution by im2col + GEMM over any number of spatial axes: the reference kernels, written
against `xp` so CuPy can reuse them. conv2d_* and conv3d_* are this one N-d core on 2 or 3 axes.

Layout: x (n, c, *size), W (oc, c, *k), size and k with one entry per spatial axis (h, w or d, h, w).
Zero padding of p_a on each side of axis a; o_a = (size_a + 2 p_a - k_a) // s_a + 1. cols rows run
over (n, *o), columns over (c, *k), so `cols @ W.reshape(oc, -1).T` is the convolution in (n, *o, oc)
order. Positions that no window reaches (when (size_a + 2 p_a - k_a) % s_a != 0) get zero gradient.
"""

from __future__ import annotations

import itertools
import math

from .xp import array_module, out_size


def _window(start: int, step: int, count: int) -> slice:
    """The slice that picks `count` window origins `start, start + step, ...` along one axis."""
    return slice(start, start + step * (count - 1) + 1, step)


def _geometry(size, kernel_size, stride, padding):
    """Per-axis output sizes and, for each kernel tap (t_1, .., t_d), the slices of the padded
    input that hold that tap for every output position: [(taps, slices), ...]."""
    out = tuple(map(out_size, size, kernel_size, stride, padding))
    taps = itertools.product(*(range(k) for k in kernel_size))
    return out, [(t, tuple(map(_window, t, stride, out))) for t in taps]


def im2col(x, kernel_size, stride, padding):
    """x (n, c, *size) -> cols (n*prod(o), c*prod(k)); element [(b, *i), (ch, *t)] =
    x_padded[b, ch, i_1 s_1 + t_1, ..., i_d s_d + t_d]. kernel_size, stride, padding: d-tuples."""
    xp = array_module(x)
    n, c, *size = x.shape
    nd = len(size)
    out, taps = _geometry(size, kernel_size, stride, padding)
    pads = ((0, 0), (0, 0), *((p, p) for p in padding))
    xpad = xp.pad(x, pads) if any(padding) else x
    cols = xp.empty((n, *out, c, *kernel_size), dtype=x.dtype)
    every = (slice(None),) * (nd + 2)  # (b, *i, ch)
    for t, windows in taps:
        # every output position's tap t at once: a strided view of the padded input, channels last
        cols[every + t] = xp.moveaxis(xpad[(slice(None), slice(None), *windows)], 1, -1)
    return cols.reshape(n * math.prod(out), c * math.prod(kernel_size))


def col2im(cols, x_shape, kernel_size, stride, padding):
    """The adjoint of im2col: cols (n*prod(o), c*prod(k)) -> x (n, c, *size), overlapping taps
    summed, taps in the padding dropped."""
    xp = array_module(cols)
    n, c, *size = x_shape
    nd = len(size)
    out, taps = _geometry(size, kernel_size, stride, padding)
    cols = cols.reshape(n, *out, c, *kernel_size)
    padded = tuple(s + 2 * p for s, p in zip(size, padding, strict=True))
    xpad = xp.zeros((n, c, *padded), dtype=cols.dtype)
    every = (slice(None),) * (nd + 2)
    for t, windows in taps:
        xpad[(slice(None), slice(None), *windows)] += xp.moveaxis(cols[every + t], -1, 1)
    inner = tuple(slice(p, p + s) for s, p in zip(size, padding, strict=True))
    return xp.ascontiguousarray(xpad[(slice(None), slice(None), *inner)])


def _rows(gy):
    """gy (n, oc, *o) -> (n*prod(o), oc): one row per output position, in im2col's row order."""
    return array_module(gy).moveaxis(gy, 1, -1).reshape(-1, gy.shape[1])


def conv_forward(x, W, b, stride, padding):
    """y[b, o, *i] = sum_{ch, *t} x_pad[b, ch, *(i s + t)] W[o, ch, *t] + b[o];
    x (n, c, *size), W (oc, c, *k), b (oc,) or None -> y (n, oc, *o), C-contiguous."""
    xp = array_module(x)
    oc, k = W.shape[0], W.shape[2:]
    out = tuple(map(out_size, x.shape[2:], k, stride, padding))
    y = im2col(x, k, stride, padding) @ W.reshape(oc, -1).T  # (n*prod(o), oc)
    if b is not None:
        y += b
    return xp.ascontiguousarray(xp.moveaxis(y.reshape(x.shape[0], *out, oc), -1, 1))


def conv_backward_input(gy, W, x_shape, stride, padding):
    """gx = col2im(gy_rows @ W_mat): gy (n, oc, *o), W (oc, c, *k) -> gx of x_shape (n, c, *size)."""
    oc = W.shape[0]
    return col2im(_rows(gy) @ W.reshape(oc, -1), x_shape, W.shape[2:], stride, padding)


def conv_backward_weight(gy, x, kernel_size, stride, padding):
    """gW = gy_rows^T @ im2col(x): gy (n, oc, *o), x (n, c, *size) -> gW (oc, c, *k)."""
    gW = _rows(gy).T @ im2col(x, kernel_size, stride, padding)  # (oc, c*prod(k))
    return gW.reshape(gy.shape[1], x.shape[1], *kernel_size)


# The named kernels: the same core on 2 spatial axes (h, w) and on 3 (d, h, w).
conv2d_forward = conv3d_forward = conv_forward
conv2d_backward_input = conv3d_backward_input = conv_backward_input
conv2d_backward_weight = conv3d_backward_weight = conv_backward_weight
