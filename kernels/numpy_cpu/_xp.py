"""Alias of kernels/numpy_cpu/xp.py for modules not yet moved to the public name."""

from kernels.numpy_cpu.xp import array_module, out_size  # noqa: F401
