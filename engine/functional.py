"""The functional API, `import engine.functional as F`: the lowercase wrappers of engine/ops/."""

from __future__ import annotations

from engine.ops.conv import conv2d, conv3d, conv_transpose2d, conv_transpose3d
from engine.ops.elementwise import (
    add,
    cast,
    div,
    dropout,
    exp,
    log,
    mul,
    neg,
    pow,
    relu,
    sigmoid,
    sub,
    tanh,
)
from engine.ops.fused import conv2d_relu_max_pool2d
from engine.ops.linalg import linear, matmul
from engine.ops.loss import (
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    log_softmax,
    mse_loss,
    softmax,
    softmax_cross_entropy,
)
from engine.ops.pool import avg_pool2d, max_pool2d
from engine.ops.reduce import mean, sum
from engine.ops.shape import flatten, getitem, reshape, transpose

__all__ = [
    "add",
    "avg_pool2d",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cast",
    "conv2d",
    "conv2d_relu_max_pool2d",
    "conv3d",
    "conv_transpose2d",
    "conv_transpose3d",
    "div",
    "dropout",
    "exp",
    "flatten",
    "getitem",
    "linear",
    "log",
    "log_softmax",
    "matmul",
    "max_pool2d",
    "mean",
    "mse_loss",
    "mul",
    "neg",
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
