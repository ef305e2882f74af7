"""array_module() (NumPy or CuPy, read off an array's type, so generic kernels serve both devices)
and the window-size arithmetic every flavour shares: out_size(), conv_pool_shapes()."""

from __future__ import annotations

import sys
from types import ModuleType

import numpy as np


def array_module(a) -> ModuleType:
    """Return `cupy` for a CuPy array, else `numpy`. Never imports CuPy: an array of it means it is loaded."""
    if type(a).__module__.partition(".")[0] == "cupy":
        return sys.modules["cupy"]
    return np


def out_size(size: int, k: int, s: int, p: int) -> int:
    """Output length of a window op along one axis: (size + 2p - k) // s + 1."""
    return (size + 2 * p - k) // s + 1


def conv_pool_shapes(x_shape, W_shape, stride, padding, pool_size, pool_stride, pool_padding):
    """(oh, ow, qh, qw) of a conv followed by a pool: x (n, c, h, w), W (oc, c, kh, kw) give the
    conv output (n, oc, oh, ow); the pool's windows over it give (n, oc, qh, qw)."""
    oh = out_size(x_shape[2], W_shape[2], stride[0], padding[0])
    ow = out_size(x_shape[3], W_shape[3], stride[1], padding[1])
    qh = out_size(oh, pool_size[0], pool_stride[0], pool_padding[0])
    qw = out_size(ow, pool_size[1], pool_stride[1], pool_padding[1])
    return oh, ow, qh, qw
