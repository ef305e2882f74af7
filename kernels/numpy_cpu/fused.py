"""Fused conv2d + bias + ReLU + max-pool: the reference kernels, composed from the unfused ones.

They define what a fast flavour's fused kernel must return, bit for bit in its integer argmax:
the max-pool runs over the *rectified* conv output, so a window whose values are all <= 0 has
y = 0 and argmax = its first tap (the tie rule of max_pool2d_forward). Written against `xp`.
"""

from __future__ import annotations

from ._xp import array_module, out_size
from .conv import conv2d_backward_input, conv2d_backward_weight, conv2d_forward
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


def conv2d_relu_max_pool2d_backward(
    gy, y, argmax, x, W, stride, padding, pool_size, pool_stride, pool_padding, need_gx
):
    """The fused layer's backward: gy (n, oc, qh, qw), y and argmax from the forward, x, W ->
    (gx (n, c, h, w) or None when not need_gx, gW (oc, c, kh, kw), gb (oc,)). gz = the gradient
    w.r.t. the conv output (relu_max_pool2d_backward); gx, gW are the conv's backward of gz, and
    gb = sum of gz = sum of gy over the windows with y > 0 (each routes to one conv pixel)."""
    xp = array_module(gy)
    oh = out_size(x.shape[2], W.shape[2], stride[0], padding[0])
    ow = out_size(x.shape[3], W.shape[3], stride[1], padding[1])
    conv_shape = (y.shape[0], y.shape[1], oh, ow)
    gz = relu_max_pool2d_backward(gy, y, argmax, conv_shape, pool_size, pool_stride, pool_padding)
    gx = conv2d_backward_input(gz, W, x.shape, stride, padding) if need_gx else None
    gW = conv2d_backward_weight(gz, x, W.shape[2:], stride, padding)
    gb = xp.where(y > 0, gy, 0).sum(axis=(0, 2, 3)).astype(gy.dtype)
    return gx, gW, gb
