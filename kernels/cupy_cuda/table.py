"""KERNELS of the cupy_cuda flavour: the xp-generic numpy_cpu kernels, overridden by CuPy's own.

Imported by engine/backend.py only, after it has checked that CuPy sees a GPU.
"""

from __future__ import annotations

import cupy  # noqa: F401  (the flavour runs on CuPy arrays; without CuPy it is unavailable)

from kernels import build_table
from kernels.numpy_cpu import GENERIC

from .launchers import KERNELS as OWN

KERNELS = build_table("cupy_cuda", {**GENERIC, **OWN})
