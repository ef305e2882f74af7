"""Weight initialisers. Each takes an explicit np.random.Generator: library code never seeds globals."""

from __future__ import annotations

import math

import numpy as np


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) of a dense (out, in) or conv (oc, c, kh, kw) weight."""
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def he_normal(shape, rng: np.random.Generator, dtype=np.float32) -> np.ndarray:
    """N(0, 2 / fan_in): keeps activation variance through ReLU layers (He et al. 2015)."""
    fan_in, _ = fans(tuple(shape))
    return (rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)).astype(dtype)


def xavier_uniform(shape, rng: np.random.Generator, dtype=np.float32) -> np.ndarray:
    """U(-a, a), a = sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio 2010), for tanh/sigmoid layers."""
    fan_in, fan_out = fans(tuple(shape))
    a = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-a, a, size=shape).astype(dtype)


INITIALISERS = {"he": he_normal, "glorot": xavier_uniform}
