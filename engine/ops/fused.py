"""Fused layer ops: conv2d + bias + ReLU + max-pool as one Function, and batch / instance norm +
ReLU (an execution detail).

max_pool2d(relu(conv2d(x, W, b))) is the CNN's most common block. As three ops it writes the conv
output, the rectified copy and, in backward, two full-size gradients; fused, the fast kernels keep
the conv output in cache. conv2d_relu_max_pool2d_* are optional kernels: a flavour without its own
launcher runs their one definition, the composition of its own primitives (kernels/numpy_cpu/
compose.py), which engine/backend.py puts in `self.k`, so this Function never asks which it got.
"""

from __future__ import annotations

from engine.function import Function
from engine.ops.conv import conv_args
from engine.ops.norm import apply_batch_norm, apply_instance_norm
from engine.ops.pool import pool_attrs
from engine.tensor import Tensor


class ConvReLUPool2dFn(Function):
    """y = max_pool2d(relu(conv2d(x, W, b))): NCHW, weight (oc, c, kh, kw), first-max tie rule."""

    autocast_inputs = (0, 1)  # x and W: rounded under a bf16/fp16 policy (engine.amp)

    def forward(self, x, W, b=None, *, stride, padding, pool_size, pool_stride, pool_padding):
        self.x, self.W = x, W  # x for gW, W for gx
        self.conv = (stride, padding)
        self.pool = (pool_size, pool_stride, pool_padding)
        y, self.argmax = self.k.conv2d_relu_max_pool2d_forward(x, W, b, stride, padding, *self.pool)
        self.y = y  # y > 0 marks the windows whose maximum the ReLU passed
        return y

    def backward(self, gy):
        # z = conv(x) + b, y = pool(relu(z)): dy/dz routes gy to each window's argmax where
        # y > 0; then the conv's own backward: gx = conv^T(gz, W), gW = gz (x) im2col(x),
        # gb = sum gz = sum of gy over the windows with y > 0 (each routes to one z)
        gx, gW, gb = self.k.conv2d_relu_max_pool2d_backward(
            gy, self.y, self.argmax, self.x, self.W, *self.conv, *self.pool, self.needs_grad[0]
        )
        if len(self.needs_grad) == 2:
            return gx, (gW if self.needs_grad[1] else None)
        return gx, (gW if self.needs_grad[1] else None), (gb if self.needs_grad[2] else None)


def conv2d_relu_max_pool2d(
    x, W, b=None, stride=1, padding=0, pool_size=2, pool_stride=None, pool_padding=0
) -> Tensor:
    """max_pool2d(relu(conv2d(x, W, b, stride, padding)), pool_size, pool_stride, pool_padding)
    as one op. x (n, c, h, w), W (oc, c, kh, kw), b (oc,) or None -> y (n, oc, qh, qw) with
    oh = (h + 2 ph - kh) // sh + 1 for the conv and qh = (oh + 2 pph - pkh) // psh + 1 for the
    pool (pool_stride defaults to pool_size). Arguments are checked as conv2d and max_pool2d do."""
    x, W, b, stride, padding, (oh, ow) = conv_args(x, W, b, stride, padding)
    pool = pool_attrs(
        (x.shape[0], W.shape[0], oh, ow), pool_size, pool_stride, pool_padding, "max_pool2d"
    )
    attrs = dict(
        stride=stride,
        padding=padding,
        pool_size=pool["kernel_size"],
        pool_stride=pool["stride"],
        pool_padding=pool["padding"],
    )
    if b is None:
        return ConvReLUPool2dFn.apply(x, W, **attrs)
    return ConvReLUPool2dFn.apply(x, W, b, **attrs)


def batch_norm_relu(
    x,
    running_mean,
    running_var,
    weight=None,
    bias=None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """relu(batch_norm(x, ...)) as one op: batch_norm's arguments and rules (running statistics
    updated in place in training). The forward writes the rectified output once; the backward
    masks gy by y > 0 inside the normalisation's backward (optional kernels norm_relu_*)."""
    args = (running_mean, running_var, weight, bias, training, momentum, eps)
    return apply_batch_norm(x, *args, relu=True)


def instance_norm_relu(
    x,
    running_mean=None,
    running_var=None,
    weight=None,
    bias=None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """relu(instance_norm(x, ...)) as one op, with instance_norm's arguments and rules; fused as
    batch_norm_relu is."""
    args = (running_mean, running_var, weight, bias, use_input_stats, momentum, eps)
    return apply_instance_norm(x, *args, relu=True)
