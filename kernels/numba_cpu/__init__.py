"""Numba CPU kernels: the fast CPU path. Compiled on first use per dtype and cached on disk.

The table is numpy_cpu's with the names below replaced, so any kernel not written here falls back
to the NumPy reference. Only engine/backend.py imports this package (it needs Numba).
"""

from __future__ import annotations

from kernels import build_table, numpy_cpu

from .activation import gelu_backward, gelu_forward, leaky_relu_backward, leaky_relu_forward
from . import conv3d
from .conv import col2im, conv2d_backward_input, conv2d_backward_weight, conv2d_forward, im2col
from .elementwise import (
    relu_backward,
    relu_forward,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)
from .fused import conv2d_relu_max_pool2d_backward, conv2d_relu_max_pool2d_forward
from .norm import norm_backward, norm_forward, norm_moments
from .optim import adam_update, sgd_update
from .pool import avg_pool2d_backward, avg_pool2d_forward, max_pool2d_backward, max_pool2d_forward
from .pool3d import avg_pool3d_backward, avg_pool3d_forward, max_pool3d_backward, max_pool3d_forward
from .resample import interpolate_backward, interpolate_forward

OWN = {
    "im2col": im2col,
    "col2im": col2im,
    "conv2d_forward": conv2d_forward,
    "conv2d_backward_input": conv2d_backward_input,
    "conv2d_backward_weight": conv2d_backward_weight,
    "conv3d_forward": conv3d.conv3d_forward,
    "conv3d_backward_input": conv3d.conv3d_backward_input,
    "conv3d_backward_weight": conv3d.conv3d_backward_weight,
    "max_pool2d_forward": max_pool2d_forward,
    "max_pool2d_backward": max_pool2d_backward,
    "avg_pool2d_forward": avg_pool2d_forward,
    "avg_pool2d_backward": avg_pool2d_backward,
    "relu_forward": relu_forward,
    "relu_backward": relu_backward,
    "softmax_cross_entropy_forward": softmax_cross_entropy_forward,
    "softmax_cross_entropy_backward": softmax_cross_entropy_backward,
    "sgd_update": sgd_update,
    "adam_update": adam_update,
    "conv2d_relu_max_pool2d_forward": conv2d_relu_max_pool2d_forward,
    "conv2d_relu_max_pool2d_backward": conv2d_relu_max_pool2d_backward,
    "max_pool3d_forward": max_pool3d_forward,
    "max_pool3d_backward": max_pool3d_backward,
    "avg_pool3d_forward": avg_pool3d_forward,
    "avg_pool3d_backward": avg_pool3d_backward,
    "interpolate_forward": interpolate_forward,
    "interpolate_backward": interpolate_backward,
    "norm_moments": norm_moments,
    "norm_forward": norm_forward,
    "norm_backward": norm_backward,
    "leaky_relu_forward": leaky_relu_forward,
    "leaky_relu_backward": leaky_relu_backward,
    "gelu_forward": gelu_forward,
    "gelu_backward": gelu_backward,
}

KERNELS = build_table("numba_cpu", {**numpy_cpu.KERNELS, **OWN})
