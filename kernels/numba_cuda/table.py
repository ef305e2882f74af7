"""KERNELS of the numba_cuda flavour: cupy_cuda's table, overridden by the kernels with a Numba body.

Imported by engine/backend.py only, once CuPy has found a GPU (cupy_cuda imports CuPy at the top).
"""

from __future__ import annotations

from kernels import build_table
from kernels.cupy_cuda.table import KERNELS as CUPY_KERNELS

from .launchers import KERNELS as OWN

KERNELS = build_table("numba_cuda", {**CUPY_KERNELS, **OWN})
