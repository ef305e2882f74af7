"""The functional API, `import engine.functional as F`: the lowercase wrappers of engine/ops/."""

from __future__ import annotations

from engine.ops.conv import conv2d, conv3d, conv_transpose2d, conv_transpose3d
from engine.ops.elementwise import (
    add,
    cast,
    div,
    dropout,
    exp,
    gelu,
    leaky_relu,
    log,
    mul,
    neg,
    pow,
    relu,
    sigmoid,
    sub,
    tanh,
)
from engine.ops.fused import batch_norm_relu, conv2d_relu_max_pool2d, instance_norm_relu
from engine.ops.linalg import linear, matmul
from engine.ops.loss import (
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    log_softmax,
    mse_loss,
    softmax,
    softmax_cross_entropy,
)
from engine.ops.norm import batch_norm, group_norm, instance_norm, layer_norm
from engine.ops.pool import (
    adaptive_avg_pool2d,
    adaptive_avg_pool3d,
    avg_pool2d,
    avg_pool3d,
    max_pool2d,
    max_pool3d,
)
from engine.ops.reduce import mean, sum
from engine.ops.resample import interpolate
from engine.ops.segmentation import dice_ce_loss, dice_loss, focal_loss
from engine.ops.shape import cat, flatten, getitem, pad, reshape, transpose

__all__ = [
    "adaptive_avg_pool2d",
    "adaptive_avg_pool3d",
    "add",
    "avg_pool2d",
    "avg_pool3d",
    "batch_norm",
    "batch_norm_relu",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cast",
    "cat",
    "conv2d",
    "conv2d_relu_max_pool2d",
    "dice_ce_loss",
    "dice_loss",
    "conv3d",
    "conv_transpose2d",
    "conv_transpose3d",
    "div",
    "dropout",
    "exp",
    "flatten",
    "focal_loss",
    "gelu",
    "getitem",
    "group_norm",
    "instance_norm",
    "instance_norm_relu",
    "interpolate",
    "layer_norm",
    "leaky_relu",
    "linear",
    "log",
    "log_softmax",
    "matmul",
    "max_pool2d",
    "max_pool3d",
    "mean",
    "mse_loss",
    "mul",
    "neg",
    "pad",
    "pow",
    "relu",
    "reshape",
    "sigmoid",
    "softmax",
    "softmax_cross_entropy",
    "sub",
    "sum",
    "tanh",
    "transpose",
]
