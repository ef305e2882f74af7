"""Fused conv2d + bias + ReLU + max-pool: the reference kernels, composed from the unfused ones.

They define what a fast flavour's fused kernel must return, bit for bit in its integer argmax:
the max-pool runs over the *rectified* conv output, so a window whose values are all <= 0 has
y = 0 and argmax = its first tap (the tie rule of max_pool2d_forward). Written against `xp`.
"""

from __future__ import annotations

from ._xp import array_module
from .conv import conv2d_forward
from .elementwise import relu_forward
from .pool import max_pool2d_backward, max_pool2d_forward


def conv2d_relu_max_pool2d_forward(x, W, b, stride, padding, pool_size, pool_stride, pool_padding):
    """(y, argmax) = max_pool2d_forward(relu(conv2d_forward(x, W, b)), pool_size, ...).
    x (n, c, h, w), W (oc, c, kh, kw), b (oc,) or None -> y (n, oc, qh, qw) and argmax int32
    (n, oc, qh, qw), the tap u*pkw + v of each window of the conv output (n, oc, oh, ow)."""
    z = relu_forward(conv2d_forward(x, W, b, stride, padding))
    return max_pool2d_forward(z, pool_size, pool_stride, pool_padding)


def relu_max_pool2d_backward(gy, y, argmax, conv_shape, pool_size, pool_stride, pool_padding):
    """Gradient w.r.t. the conv output (before ReLU): gz (conv_shape) = max_pool2d_backward of
    gy * (y > 0). y > 0 at a window means its argmax tap was rectified-positive, so the ReLU passes it."""
    xp = array_module(gy)
    g = xp.where(y > 0, gy, 0)
    return max_pool2d_backward(g, argmax, conv_shape, pool_size, pool_stride, pool_padding)
