"""Volume transforms: resampling to a target spacing (scipy.ndimage, imported lazily), intensity
clipping/windowing and normalisation. Arrays are canonical (D, H, W) or (C, D, H, W).
"""

from __future__ import annotations

import numpy as np

from engine.errors import ArgumentError


def resample_to_spacing(
    array: np.ndarray,
    affine: np.ndarray,
    spacing,
    target_spacing,
    *,
    order: int = 1,
    output_shape=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Resample a volume to `target_spacing` (mm, (d, h, w)) -> (array, affine).

    array: (D, H, W) or (C, D, H, W); new size round(n * spacing / target) per axis (at least 1).
    order 1 (trilinear) for images, 0 (nearest) for masks, which keeps the label set and dtype.
    Output voxel o samples the input at o * target / spacing (as SimpleITK and MONAI's Spacing
    do): the first voxel centre stays put, so the affine's origin is unchanged and its columns are
    rescaled to exactly the target spacing; samples past the last voxel repeat the edge.
    output_shape (D, H, W), if given, replaces the rounded size: resampling a prediction back to
    its image's spacing with the image's shape inverts a resampling exactly in geometry.
    """
    from scipy import ndimage

    spacing = np.asarray(spacing, dtype=np.float64)
    target = np.asarray(target_spacing, dtype=np.float64)
    if spacing.shape != (3,) or target.shape != (3,) or (target <= 0).any() or (spacing <= 0).any():
        raise ArgumentError(
            f"spacing and target_spacing must be 3 positive numbers (mm), got {spacing}, {target}"
        )
    if order not in (0, 1, 3):
        raise ArgumentError(f"order must be 0 (masks), 1 or 3 (images), got {order}")
    lead = array.ndim - 3
    n_in = np.asarray(array.shape[lead:])
    n_out = np.maximum(np.round(n_in * spacing / target).astype(np.int64), 1)
    if output_shape is not None:
        if len(output_shape) != 3 or min(output_shape) < 1:
            raise ArgumentError(f"output_shape must be 3 sizes >= 1, got {output_shape}")
        n_out = np.asarray(output_shape, dtype=np.int64)
    step = target / spacing  # input voxels per output voxel, per axis

    def one(x: np.ndarray) -> np.ndarray:
        dtype = x.dtype
        src = x if order == 0 else x.astype(np.float32, copy=False)
        # a diagonal matrix: output index o reads input position step * o (no coordinate grid)
        y = ndimage.affine_transform(
            src, step, output_shape=tuple(n_out), order=order, mode="nearest", prefilter=order > 1
        )
        return y.astype(dtype, copy=False)

    out = one(array) if lead == 0 else np.stack([one(c) for c in array])
    new_affine = np.array(affine, dtype=np.float64, copy=True)
    new_affine[:3, :3] = new_affine[:3, :3] * step[None, :]
    return out, new_affine


def clip_intensity(volume: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Clip values to [lo, hi] (e.g. HU -1000..400) -> float32, same shape."""
    if not lo < hi:
        raise ArgumentError(f"clip needs lo < hi, got {lo}, {hi}")
    return np.clip(volume, lo, hi).astype(np.float32, copy=False)


def hu_window(volume: np.ndarray, center: float, width: float) -> np.ndarray:
    """CT window: clip to center +- width/2 and map linearly to [0, 1] -> float32, same shape."""
    if width <= 0:
        raise ArgumentError(f"window width must be > 0, got {width}")
    lo = center - width / 2.0
    return ((np.clip(volume, lo, lo + width) - lo) / width).astype(np.float32)


def zscore(volume: np.ndarray, mask: np.ndarray | None = None, eps: float = 1e-8) -> np.ndarray:
    """(x - mean) / std per channel -> float32, same shape; statistics over `mask` (a boolean
    (D, H, W), e.g. the body) when given, else over every voxel. A constant volume maps to 0."""
    x = np.asarray(volume, dtype=np.float32)
    channels = x[None] if x.ndim == 3 else x
    out = np.empty_like(channels)
    for i, c in enumerate(channels):
        values = c[mask] if mask is not None else c
        mean, std = float(values.mean()), float(values.std())
        out[i] = (c - mean) / max(std, eps)
    return out[0] if x.ndim == 3 else out
