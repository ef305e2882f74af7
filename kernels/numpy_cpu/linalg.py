"""Matrix products: the dense layers' and matmul's GEMMs, as one kernel so a flavour can route them.

numpy_cpu's is `xp.matmul` (OpenBLAS here, cuBLAS for CuPy arrays through GENERIC); the cupy_cuda
flavour sends 2-D products to its own GEMM when that is selected (kernels/cupy_cuda/gemm.py), which
is what lets a CUDA graph record a dense layer (CuPy cannot capture cuBLAS).
"""

from __future__ import annotations

from .xp import array_module


def matmul(a, b):
    """a (..., m, k) @ b (..., k, n) -> (..., m, n), batch axes broadcast, a's and b's common
    dtype; either operand may be a transposed (non-contiguous) view."""
    return array_module(a).matmul(a, b)
