"""Save and load parameter dicts without pickle: `.npz` written and read with allow_pickle=False."""

from __future__ import annotations

import os

import numpy as np

from engine.checkpoint import atomic_write
from engine.errors import SerializationError
from engine.safeio import load_npz


def save_state_dict(state: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    """Write name -> array to an uncompressed `.npz`, atomically (a killed save leaves the old file
    or the new one); object arrays are refused (they need pickle). Model files with architecture,
    preprocessing and a checksum are engine.checkpoint's."""
    arrays = {name: np.asarray(a) for name, a in state.items()}
    for name, a in arrays.items():
        if a.dtype.hasobject:
            raise SerializationError(f"{name}: object arrays cannot be saved without pickle")
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a `.npz` written by save_state_dict; anything pickled, truncated, oversized or not an
    npz is refused with SerializationError naming the file (see engine.safeio)."""
    return load_npz(path)
