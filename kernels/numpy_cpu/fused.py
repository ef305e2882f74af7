"""Alias for kernels/numba_cpu/fused.py: numpy_cpu's fused reference kernels, i.e. REFERENCE's."""

from kernels.numpy_cpu import REFERENCE

conv2d_relu_max_pool2d_forward = REFERENCE["conv2d_relu_max_pool2d_forward"]
conv2d_relu_max_pool2d_backward = REFERENCE["conv2d_relu_max_pool2d_backward"]
