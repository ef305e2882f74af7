"""Input generators shared by the tests: tie-free pooling inputs, ReLU inputs away from 0."""

from __future__ import annotations

import numpy as np


def distinct(rng: np.random.Generator, shape, step: float = 0.01) -> np.ndarray:
    """A shuffled grid of distinct values `step` apart: no ties within a finite-difference eps."""
    n = int(np.prod(shape))
    return (rng.permutation(n) * step - n * step / 2).reshape(shape).astype(np.float64)


def away_from_zero(rng: np.random.Generator, shape, margin: float = 0.1) -> np.ndarray:
    """Normal values with |x| >= margin, so ReLU's kink is never inside a difference step."""
    x = rng.standard_normal(shape)
    return np.where(np.abs(x) < margin, np.sign(x + 1e-12) * margin * 2, x)
