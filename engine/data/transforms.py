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
    closest input pixel; "bilinear" is the tent filter one input pixel wide; "area" (when
    shrinking) averages the input over each output pixel's footprint [i s, (i + 1) s), weighting
    input pixels by their overlap (OpenCV's INTER_AREA): every input pixel counts equally, so a
    small bright structure keeps its mass instead of falling between samples. When enlarging,
    "area" is bilinear.
    """
    scale = n_in / n_out
    if method == "area" and scale > 1:
        left = np.arange(n_out)[:, None] * scale
        j = np.arange(n_in)[None, :]
        overlap = np.minimum(left + scale, j + 1) - np.maximum(left, j)
        w = np.clip(overlap, 0.0, None)
        return w / w.sum(axis=1, keepdims=True)
    centres = (np.arange(n_out) + 0.5) * scale - 0.5  # output pixel centres in input coordinates
    if method == "nearest":
        w = np.zeros((n_out, n_in))
        w[np.arange(n_out), np.clip(np.floor(centres + 0.5), 0, n_in - 1).astype(int)] = 1.0
        return w
    # tent filter; positions past the edge are clamped onto the border pixel (edge replication)
    w = np.zeros((n_out, n_in))
    lo = np.floor(centres).astype(int)
    frac = centres - lo
    np.add.at(w, (np.arange(n_out), np.clip(lo, 0, n_in - 1)), 1.0 - frac)
    np.add.at(w, (np.arange(n_out), np.clip(lo + 1, 0, n_in - 1)), frac)
    return w


def resize(x: np.ndarray, size: int | tuple[int, int], method: str = "area") -> np.ndarray:
    """Resize the last two axes of x (..., h, w) to size (oh, ow) -> float32 (..., oh, ow).

    method: "area" (default; box average, chosen by measurement, see README "Data"),
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

    scale=(lo, hi): zoom factor (a number s means (1 - s, 1 + s)); rotate: max degrees either way; flip: mirror left-right with
    probability 0.5; intensity: contrast factor 1 + U(-i, i) and a shift U(-i, i) x image std.
    Geometry goes through one scipy.ndimage.affine_transform per image (bilinear, edges
    repeated), so the image stays the same size and centred. All draws come from `rng`, so a
    batch and a generator state give the same result on any thread. float32 in, float32 out.
    """

    def __init__(
        self, scale=(0.9, 1.1), rotate: float = 15.0, flip: bool = True, intensity: float = 0.1
    ):
        lo, hi = (1.0 - scale, 1.0 + scale) if np.isscalar(scale) else scale
        if not 0 < lo <= hi:
            raise ValueError(f"scale must be (lo, hi) with 0 < lo <= hi, got {scale}")
        if rotate < 0 or intensity < 0:
            raise ValueError(f"rotate and intensity must be >= 0, got {rotate}, {intensity}")
        self.scale, self.rotate, self.flip, self.intensity = (lo, hi), rotate, flip, intensity

    def __repr__(self) -> str:
        return (
            f"Augment(scale={self.scale}, rotate={self.rotate}, flip={self.flip}, "
            f"intensity={self.intensity})"
        )

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
