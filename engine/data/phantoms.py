"""Deterministic synthetic "lesion present / absent" phantoms: the built-in data needing no download.

Each image is a noisy elliptical body of soft tissue with smooth texture; label 1 images also hold a
round lesion (a Gaussian blob) of random size, contrast and position inside the body. NumPy only.
"""

from __future__ import annotations

import numpy as np


def _smooth_noise(rng: np.random.Generator, n: int, size: int, coarse: int = 7) -> np.ndarray:
    """Low-frequency texture: coarse Gaussian noise upsampled bilinearly to size x size."""
    grid = rng.standard_normal((n, coarse, coarse))
    pos = np.linspace(0, coarse - 1, size)
    i0 = np.minimum(pos.astype(int), coarse - 2)
    f = pos - i0
    rows = grid[:, i0, :] * (1 - f)[None, :, None] + grid[:, i0 + 1, :] * f[None, :, None]
    return rows[:, :, i0] * (1 - f) + rows[:, :, i0 + 1] * f


def make_phantoms(
    n: int,
    size: int = 28,
    seed: int = 0,
    lesion_fraction: float = 0.5,
    return_centres: bool = False,
):
    """-> images float32 (n, 1, size, size) in about [0, 1], labels int64 (n,) (1 = lesion present),
    and with return_centres the (row, col) pixel centre of each lesion (drawn for label 0 too).

    The same (n, size, seed) always gives the same arrays.
    """
    if n < 1 or size < 8:
        raise ValueError(f"make_phantoms needs n >= 1 and size >= 8, got n={n}, size={size}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / (size - 1) * 2 - 1  # [-1, 1]^2
    labels = (rng.random(n) < lesion_fraction).astype(np.int64)
    # body: an ellipse with random half-axes and centre, tissue intensity 0.35-0.5
    ax, ay = rng.uniform(0.7, 0.95, n), rng.uniform(0.6, 0.9, n)
    cx, cy = rng.uniform(-0.08, 0.08, n), rng.uniform(-0.08, 0.08, n)
    r2 = ((xx - cx[:, None, None]) / ax[:, None, None]) ** 2 + (
        (yy - cy[:, None, None]) / ay[:, None, None]
    ) ** 2
    body = 1 / (1 + np.exp((r2 - 1) * 12))  # soft edge
    tissue = rng.uniform(0.35, 0.5, n)[:, None, None] + 0.06 * _smooth_noise(rng, n, size)
    images = body * tissue
    # lesion: a Gaussian blob of radius 1.2-3 px and contrast 0.2-0.45, well inside the body
    radius = rng.uniform(1.2, 3.0, n) / (size - 1) * 2
    angle, dist = rng.uniform(0, 2 * np.pi, n), rng.uniform(0, 0.5, n)
    lx, ly = cx + dist * ax * np.cos(angle), cy + dist * ay * np.sin(angle)
    blob = np.exp(
        -((xx - lx[:, None, None]) ** 2 + (yy - ly[:, None, None]) ** 2)
        / (2 * radius[:, None, None] ** 2)
    )
    images += labels[:, None, None] * rng.uniform(0.2, 0.45, n)[:, None, None] * blob
    images += 0.04 * rng.standard_normal(images.shape)  # acquisition noise
    images = images[:, None].astype(np.float32)
    if return_centres:
        centres = np.stack([(ly + 1) / 2 * (size - 1), (lx + 1) / 2 * (size - 1)], axis=1)
        return images, labels, centres
    return images, labels
