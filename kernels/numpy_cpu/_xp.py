"""array_module(): NumPy or CuPy, read off an array's type, so generic kernels serve both devices."""

from __future__ import annotations

import sys
from types import ModuleType

import numpy as np


def array_module(a) -> ModuleType:
    """Return `cupy` for a CuPy array, else `numpy`. Never imports CuPy: an array of it means it is loaded."""
    if type(a).__module__.partition(".")[0] == "cupy":
        return sys.modules["cupy"]
    return np


def out_size(size: int, k: int, s: int, p: int) -> int:
    """Output length of a window op along one axis: (size + 2p - k) // s + 1."""
    return (size + 2 * p - k) // s + 1
