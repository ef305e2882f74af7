"""Save and load parameter dicts without pickle: `.npz` written and read with allow_pickle=False."""

from __future__ import annotations

import os

import numpy as np

from engine.errors import SerializationError
from engine.safeio import load_npz


def save_state_dict(state: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    """Write name -> array to an uncompressed `.npz`; object arrays are refused (they need pickle)."""
    for name, a in state.items():
        if np.asarray(a).dtype.hasobject:
            raise SerializationError(f"{name}: object arrays cannot be saved without pickle")
    with open(path, "wb") as f:
        np.savez(f, **{name: np.asarray(a) for name, a in state.items()})


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a `.npz` written by save_state_dict; anything pickled, truncated, oversized or not an
    npz is refused with SerializationError naming the file (see engine.safeio)."""
    return load_npz(path)
