"""NumPy reference kernels: the oracle every other flavour is tested against, and the CPU fallback.

KERNELS holds the required primitives only, all written against `xp` (read off the input array), so
`GENERIC` (the whole table) also serves CuPy arrays wherever cupy_cuda has no kernel of its own.
REFERENCE adds the optional kernels as their compositions (compose.py) on these primitives.
"""

from __future__ import annotations

from kernels import build_table

from .activation import gelu_backward, gelu_forward, leaky_relu_backward, leaky_relu_forward
from .compose import complete
from .conv import (
    col2im,
    conv2d_backward_input,
    conv2d_backward_weight,
    conv2d_forward,
    conv3d_backward_input,
    conv3d_backward_weight,
    conv3d_forward,
    im2col,
)
from .elementwise import (
    relu_backward,
    relu_forward,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)
from .linalg import matmul
from .norm import norm_backward, norm_forward, norm_moments
from .optim import adam_update, sgd_update
from .pool import (
    adaptive_avg_pool_backward,
    adaptive_avg_pool_forward,
    avg_pool2d_backward,
    avg_pool2d_forward,
    avg_pool3d_backward,
    avg_pool3d_forward,
    max_pool2d_backward,
    max_pool2d_forward,
    max_pool3d_backward,
    max_pool3d_forward,
)
from .resample import interpolate_backward, interpolate_forward

KERNELS = build_table(
    "numpy_cpu",
    {
        "im2col": im2col,
        "col2im": col2im,
        "conv2d_forward": conv2d_forward,
        "conv2d_backward_input": conv2d_backward_input,
        "conv2d_backward_weight": conv2d_backward_weight,
        "conv3d_forward": conv3d_forward,
        "conv3d_backward_input": conv3d_backward_input,
        "conv3d_backward_weight": conv3d_backward_weight,
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
        "max_pool3d_forward": max_pool3d_forward,
        "max_pool3d_backward": max_pool3d_backward,
        "avg_pool3d_forward": avg_pool3d_forward,
        "avg_pool3d_backward": avg_pool3d_backward,
        "adaptive_avg_pool_forward": adaptive_avg_pool_forward,
        "adaptive_avg_pool_backward": adaptive_avg_pool_backward,
        "interpolate_forward": interpolate_forward,
        "interpolate_backward": interpolate_backward,
        "norm_moments": norm_moments,
        "norm_forward": norm_forward,
        "norm_backward": norm_backward,
        "leaky_relu_forward": leaky_relu_forward,
        "leaky_relu_backward": leaky_relu_backward,
        "gelu_forward": gelu_forward,
        "gelu_backward": gelu_backward,
        "matmul": matmul,
    },
)

GENERIC = KERNELS
REFERENCE = complete(KERNELS)  # every required and optional name: what parity tests compare with
