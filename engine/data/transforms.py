"""Image transforms: deterministic resizing (preprocessing) and random augmentation (training).

Resizing is separable: one (out, in) weight matrix per axis, so a batch is two matrix products.
Augmentation uses scipy.ndimage (imported lazily) with an explicit np.random.Generator.
"""

from __future__ import annotations

import numpy as np

RESIZE_METHODS = ("area", "bilinear", "nearest")


def _weights(n_in: int, n_out: int, method: str) -> np.ndarray:
    """(n_out, n_in) float64 interpolation matrix; each row sums to 1.

    Pixel centres are aligned (half-pixel convention, as PIL and OpenCV). "nearest" picks the
    closest input pixel; "bilinear" is the tent filter of width 1 input pixel; "area" widens the
    tent to the output pixel size when shrinking (PIL's antialiased bilinear), so every input
    pixel contributes and small bright structures are averaged, not skipped.
    """
    scale = n_in / n_out
    centres = (np.arange(n_out) + 0.5) * scale - 0.5  # output pixel centres in input coordinates
    if method == "nearest":
        w = np.zeros((n_out, n_in))
        w[np.arange(n_out), np.clip(np.floor(centres + 0.5), 0, n_in - 1).astype(int)] = 1.0
        return w
    support = max(scale, 1.0) if method == "area" else 1.0
    dist = np.abs(np.arange(n_in)[None, :] - centres[:, None]) / support
    w = np.clip(1.0 - dist, 0.0, None)
    empty = w.sum(axis=1) == 0  # cannot happen for support >= 1, kept as a guard
    w[empty, np.clip(np.round(centres[empty]).astype(int), 0, n_in - 1)] = 1.0
    return w / w.sum(axis=1, keepdims=True)


def resize(x: np.ndarray, size: int | tuple[int, int], method: str = "area") -> np.ndarray:
    """Resize the last two axes of x (..., h, w) to size (oh, ow) -> float32 (..., oh, ow).

    method: "area" (default; antialiased, chosen by measurement, see README "Data"),
    "bilinear" or "nearest". Returns x unchanged (as float32) when the size already matches.
    """
    if method not in RESIZE_METHODS:
        raise ValueError(f"resize method must be one of {RESIZE_METHODS}, got {method!r}")
    oh, ow = (size, size) if isinstance(size, int) else size
    h, w = x.shape[-2:]
    if (h, w) == (oh, ow):
        return np.asarray(x, dtype=np.float32)
    wy = _weights(h, oh, method).astype(np.float32)
    wx = _weights(w, ow, method).astype(np.float32)
    return (wy @ np.asarray(x, dtype=np.float32) @ wx.T).astype(np.float32)


class Augment:
    """Random scaling, rotation, left-right flip and intensity jitter for a batch (n, c, h, w).

    scale=(lo, hi): zoom factor; rotate: max degrees either way; flip: mirror left-right with
    probability 0.5; intensity: contrast factor 1 + U(-i, i) and a shift U(-i, i) x image std.
    Geometry goes through one scipy.ndimage.affine_transform per image (bilinear, edges
    repeated), so the image stays the same size and centred. All draws come from `rng`, so a
    batch and a generator state give the same result on any thread. float32 in, float32 out.
    """

    def __init__(self, scale=(0.9, 1.1), rotate: float = 15.0, flip: bool = True,
                 intensity: float = 0.1):  # fmt: skip
        lo, hi = scale
        if not 0 < lo <= hi:
            raise ValueError(f"scale must be (lo, hi) with 0 < lo <= hi, got {scale}")
        if rotate < 0 or intensity < 0:
            raise ValueError(f"rotate and intensity must be >= 0, got {rotate}, {intensity}")
        self.scale, self.rotate, self.flip, self.intensity = (lo, hi), rotate, flip, intensity

    def __repr__(self) -> str:
        return (f"Augment(scale={self.scale}, rotate={self.rotate}, flip={self.flip}, "
                f"intensity={self.intensity})")  # fmt: skip

    def __call__(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        from scipy import ndimage

        if batch.ndim != 4:
            raise ValueError(f"Augment expects a batch (n, c, h, w), got shape {batch.shape}")
        n, c, h, w = batch.shape
        out = np.empty(batch.shape, dtype=np.float32)
        centre = np.array([(h - 1) / 2, (w - 1) / 2])
        for i in range(n):
            zoom = rng.uniform(*self.scale)
            theta = np.deg2rad(rng.uniform(-self.rotate, self.rotate))
            flip = self.flip and rng.random() < 0.5
            # affine_transform maps output coords o to input coords M o + offset; M is the
            # inverse of "rotate by theta, zoom by s, then mirror columns if flip".
            cos, sin = np.cos(theta), np.sin(theta)
            m = np.array([[cos, sin], [-sin, cos]]) / zoom
            if flip:
                m = m @ np.diag([1.0, -1.0])
            offset = centre - m @ centre
            for j in range(c):
                out[i, j] = ndimage.affine_transform(
                    batch[i, j], m, offset=offset, order=1, mode="nearest"
                )
            if self.intensity > 0:
                contrast = 1.0 + rng.uniform(-self.intensity, self.intensity)
                shift = rng.uniform(-self.intensity, self.intensity)
                mean, std = out[i].mean(), out[i].std()
                out[i] = mean + (out[i] - mean) * contrast + shift * std
        return out
