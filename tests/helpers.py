"""Shared by the tests: tie-free pooling inputs, ReLU inputs away from 0, and the moves that let
one test body run on every device (on_device, to_host)."""

from __future__ import annotations

import numpy as np

from engine.backend import to_device
from engine.tensor import Tensor


def distinct(rng: np.random.Generator, shape, step: float = 0.01) -> np.ndarray:
    """A shuffled grid of distinct values `step` apart: no ties within a finite-difference eps."""
    n = int(np.prod(shape))
    return (rng.permutation(n) * step - n * step / 2).reshape(shape).astype(np.float64)


def away_from_zero(rng: np.random.Generator, shape, margin: float = 0.1) -> np.ndarray:
    """Normal values with |x| >= margin, so ReLU's kink is never inside a difference step."""
    x = rng.standard_normal(shape)
    return np.where(np.abs(x) < margin, np.sign(x + 1e-12) * margin * 2, x)


def on_device(a, device: str):
    """`a` (a NumPy array or a Tensor) on `device` ("cpu" or "cuda"): the same body of a test then
    runs on every backend. Tensors keep requires_grad; None passes through (an absent bias)."""
    if a is None:
        return None
    if isinstance(a, Tensor):
        return a.to(device)
    return to_device(np.asarray(a), device)


def to_host(a) -> np.ndarray:
    """A NumPy copy of `a` (an array on any device, or a Tensor) for np.testing comparisons."""
    return a.numpy() if isinstance(a, Tensor) else to_device(a, "cpu")
