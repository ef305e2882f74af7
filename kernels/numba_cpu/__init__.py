"""Numba CPU kernels: the fast CPU path. Compiled on first use per dtype and cached on disk.

The table is numpy_cpu's with the names below replaced, so any kernel not written here falls back
to the NumPy reference. Only engine/backend.py imports this package (it needs Numba). Importing it
changes nothing in the process; tune_malloc() is the one process-wide setting, and it is opt-in.
"""

from __future__ import annotations

from kernels import build_table, numpy_cpu

from . import conv3d
from .activation import gelu_backward, gelu_forward, leaky_relu_backward, leaky_relu_forward
from .conv import col2im, conv2d_backward_input, conv2d_backward_weight, conv2d_forward, im2col
from .conv_relu_pool import conv2d_relu_max_pool2d_backward, conv2d_relu_max_pool2d_forward
from .elementwise import (
    relu_backward,
    relu_forward,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)
from .norm import norm_backward, norm_forward, norm_moments, norm_relu_backward, norm_relu_forward
from .optim import adam_update, sgd_update
from .pool import avg_pool2d_backward, avg_pool2d_forward, max_pool2d_backward, max_pool2d_forward
from .pool3d import avg_pool3d_backward, avg_pool3d_forward, max_pool3d_backward, max_pool3d_forward
from .resample import interpolate_backward, interpolate_forward
from .tasks import tune_malloc

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
    "norm_relu_forward": norm_relu_forward,
    "norm_relu_backward": norm_relu_backward,
}

__all__ = ["KERNELS", "OWN", "tune_malloc"]

KERNELS = build_table("numba_cpu", {**numpy_cpu.KERNELS, **OWN})
