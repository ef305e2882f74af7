"""Patch-based segmentation training, NumPy only: random crops centred on foreground or background
(MONAI's RandCropByPosNegLabel idea) and augmentation applied identically to image and mask."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.errors import ArgumentError

# Arrays: image (c, *spatial) float, mask (*spatial) integer labels (0 = background); spatial is
# (h, w) or (d, h, w). Every random choice comes from the caller's np.random.Generator.


def _check_pair(image: np.ndarray, mask: np.ndarray, name: str) -> None:
    if image.ndim != mask.ndim + 1 or image.shape[1:] != mask.shape:
        raise ArgumentError(
            f"{name}: image {image.shape} must be (c, *spatial) over mask {mask.shape} (*spatial)"
        )


def _patch_size(patch_size, nd: int, name: str) -> tuple[int, ...]:
    size = (patch_size,) * nd if isinstance(patch_size, (int, np.integer)) else tuple(patch_size)
    if len(size) != nd or min(int(s) for s in size) < 1:
        raise ArgumentError(f"{name}: patch_size {patch_size} must give {nd} positive sizes")
    return tuple(int(s) for s in size)


def pad_to(image: np.ndarray, mask: np.ndarray, size, pad_value: float | None = None):
    """(image, mask) padded evenly on both sides (floor half before) along the spatial axes
    shorter than `size`; image with pad_value (default: each channel's minimum, e.g. air in
    CT), mask with 0. Axes at least as long are left as they are."""
    _check_pair(image, mask, "pad_to")
    size = _patch_size(size, mask.ndim, "pad_to")
    widths = [
        (max(p - s, 0) // 2, max(p - s, 0) - max(p - s, 0) // 2)
        for p, s in zip(size, mask.shape, strict=True)
    ]
    if not any(a or b for a, b in widths):
        return image, mask
    lows = [float(ch.min()) if ch.size else 0.0 for ch in image]
    image = np.stack(
        [
            np.pad(ch, widths, constant_values=low if pad_value is None else pad_value)
            for ch, low in zip(image, lows, strict=True)
        ]
    )
    return image, np.pad(mask, widths, constant_values=0)


def sample_crop_starts(mask: np.ndarray, patch_size, num_samples: int, pos: float, neg: float, rng):
    """(starts int64 (num_samples, nd), positive bool (num_samples,)): the first corner of each
    crop of patch_size inside mask (*spatial), mask at least patch_size on every axis.

    Each crop is positive with probability pos / (pos + neg): centred on a foreground voxel
    (mask > 0) drawn uniformly, else on a background voxel; the centre c gives start
    c - patch // 2, clipped into [0, size - patch] so the crop stays inside the volume (the
    drawn voxel stays inside the crop). With no foreground (or no background) every crop falls
    back to the kind that exists, as MONAI's."""
    size = _patch_size(patch_size, mask.ndim, "sample_crop_starts")
    if any(p > s for p, s in zip(size, mask.shape, strict=True)):
        raise ArgumentError(
            f"sample_crop_starts: mask {mask.shape} smaller than patch {size}: pad_to first"
        )
    if pos < 0 or neg < 0 or pos + neg <= 0:
        raise ArgumentError(f"sample_crop_starts: pos={pos}, neg={neg} must be >= 0, not both 0")
    fg = np.flatnonzero(mask.ravel() > 0)
    bg = np.flatnonzero(mask.ravel() <= 0)
    positive = rng.random(num_samples) < pos / (pos + neg)
    if not len(fg):
        positive[:] = False
    if not len(bg):
        positive[:] = True
    flat = np.where(
        positive,
        fg[rng.integers(0, max(len(fg), 1), num_samples)] if len(fg) else 0,
        bg[rng.integers(0, max(len(bg), 1), num_samples)] if len(bg) else 0,
    )
    centres = np.stack(np.unravel_index(flat, mask.shape), axis=1)
    high = np.array(mask.shape) - np.array(size)
    starts = np.clip(centres - np.array(size) // 2, 0, high)
    return starts.astype(np.int64), positive


def rand_crop_by_pos_neg(
    image: np.ndarray,
    mask: np.ndarray,
    patch_size,
    rng: np.random.Generator,
    num_samples: int = 1,
    pos: float = 1.0,
    neg: float = 1.0,
    pad_value: float | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """num_samples crops [(image patch (c, *patch_size), mask patch (*patch_size))] of image
    (c, *spatial) and mask (*spatial), a share pos / (pos + neg) centred on foreground (see
    sample_crop_starts); a volume smaller than the patch is padded first (pad_to)."""
    _check_pair(image, mask, "rand_crop_by_pos_neg")
    size = _patch_size(patch_size, mask.ndim, "rand_crop_by_pos_neg")
    image, mask = pad_to(image, mask, size, pad_value)
    starts, _ = sample_crop_starts(mask, size, num_samples, pos, neg, rng)
    out = []
    for start in starts:
        window = tuple(slice(s, s + p) for s, p in zip(start, size, strict=True))
        out.append((image[(slice(None), *window)].copy(), mask[window].copy()))
    return out


@dataclass(frozen=True)
class Augmentation:
    """Random spatial transforms applied identically to image (c, *spatial) and mask (*spatial),
    then an intensity change of the image only: call aug(image, mask, rng) -> (image, mask).

    In order: a flip of each spatial axis (probability flip_prob each); a rotation by k x 90
    degrees (k in 1..3) in the plane of spatial axes rot90_plane (rot90_prob); a small affine
    about the centre (affine_prob): rotation in the same plane by U(-max_rotate_deg,
    max_rotate_deg) degrees and a scale 1 + U(-max_scale, max_scale) per axis, resampled by
    scipy.ndimage.affine_transform with image_order (1: linear) for the image and order 0
    (nearest) for the mask, outside the volume each channel's minimum and label 0; intensity
    (intensity_prob): image * (1 + U(-intensity_scale, intensity_scale)) + U(-intensity_shift,
    intensity_shift). The mask keeps its dtype, the image its dtype."""

    flip_prob: float = 0.5
    rot90_prob: float = 0.5
    rot90_plane: tuple[int, int] = (-2, -1)
    affine_prob: float = 0.2
    max_rotate_deg: float = 10.0
    max_scale: float = 0.1
    image_order: int = 1
    intensity_prob: float = 0.5
    intensity_shift: float = 0.1
    intensity_scale: float = 0.1

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
        _check_pair(image, mask, "Augmentation")
        nd = mask.ndim
        a, b = (axis % nd for axis in self.rot90_plane)
        if a == b:
            raise ArgumentError(
                f"Augmentation: rot90_plane {self.rot90_plane} names one axis twice"
            )
        for axis in range(nd):
            if rng.random() < self.flip_prob:
                image, mask = np.flip(image, axis + 1), np.flip(mask, axis)
        if rng.random() < self.rot90_prob:
            k = int(rng.integers(1, 4))
            image, mask = np.rot90(image, k, (a + 1, b + 1)), np.rot90(mask, k, (a, b))
        if rng.random() < self.affine_prob:
            image, mask = self._affine(image, mask, (a, b), rng)
        image = np.ascontiguousarray(image)
        if rng.random() < self.intensity_prob:
            scale = 1 + rng.uniform(-self.intensity_scale, self.intensity_scale)
            shift = rng.uniform(-self.intensity_shift, self.intensity_shift)
            image = (image * scale + shift).astype(image.dtype)
        return image, np.ascontiguousarray(mask)

    def _affine(self, image, mask, plane, rng):
        """Rotation in `plane` and per-axis scale about the centre: output voxel o samples input
        M o + (centre - M centre), M = R diag(1 / scale)."""
        from scipy import ndimage

        nd = mask.ndim
        theta = np.deg2rad(rng.uniform(-self.max_rotate_deg, self.max_rotate_deg))
        rotation = np.eye(nd)
        a, b = plane
        rotation[a, a] = rotation[b, b] = np.cos(theta)
        rotation[a, b], rotation[b, a] = -np.sin(theta), np.sin(theta)
        scale = 1 + rng.uniform(-self.max_scale, self.max_scale, nd)
        matrix = rotation @ np.diag(1 / scale)
        centre = (np.array(mask.shape) - 1) / 2
        offset = centre - matrix @ centre
        low = float(image.min()) if image.size else 0.0

        def move(a, order, cval):
            return ndimage.affine_transform(
                a, matrix, offset, order=order, mode="constant", cval=cval
            )

        image = np.stack([move(ch, self.image_order, low) for ch in image]).astype(image.dtype)
        return image, move(mask, 0, 0).astype(mask.dtype)
