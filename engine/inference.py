"""Sliding-window inference of a segmentation model over a whole image or volume, as MONAI's
`sliding_window_inference`: overlapping windows, Gaussian or constant blending, flip TTA."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

from engine import backend
from engine.errors import ArgumentError
from engine.function import no_grad
from engine.tensor import Tensor

BLENDS = ("gaussian", "constant")


def scan_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Window starts along one axis, MONAI's placement: step = roi when roi covers the axis, else
    max(int(roi (1 - overlap)), 1); windows at 0, step, 2 step, ... until one reaches the end,
    the last moved back to end flush with the edge (start = size - roi). size >= roi."""
    step = roi if roi >= size else max(int(roi * (1 - overlap)), 1)
    starts = [0]
    while starts[-1] + roi < size:
        starts.append(starts[-1] + step)
    return [min(s, size - roi) for s in starts]


def importance_map(roi_size: tuple[int, ...], blend: str, sigma_scale: float = 0.125):
    """float32 weights of shape roi_size: all ones ("constant"), or the separable Gaussian
    prod_a exp(-x_a^2 / (2 (sigma_scale roi_a)^2)), x_a = i - (roi_a - 1) / 2 (MONAI's), clipped
    from below at max(its smallest value, 1e-3) so that no voxel is weighted 0."""
    if blend == "constant":
        return np.ones(roi_size, np.float32)
    w = np.ones((), np.float64)
    for roi in roi_size:
        x = np.arange(roi) - (roi - 1) / 2
        g = np.exp(-(x**2) / (2 * (sigma_scale * roi) ** 2))
        w = np.multiply.outer(w, g)
    return np.maximum(w, max(w.min(), 1e-3)).astype(np.float32)


def _as_probabilities(logits: np.ndarray) -> np.ndarray:
    """Softmax over axis 1 of (b, k, *spatial), or the sigmoid when k = 1 (one foreground
    channel)."""
    z = logits.astype(np.float64)
    if z.shape[1] == 1:
        return np.exp(-np.logaddexp(0, -z))
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _predictor(model) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[], None]]:
    """(window batch (b, c, *roi) NumPy -> logits NumPy, restore) for an engine Module (run in
    eval mode on its parameters' device and dtype; restore puts back its training flag) or any
    callable on NumPy arrays, e.g. an engine.deploy model."""
    from engine import nn

    if not isinstance(model, nn.Module):
        return (lambda x: np.asarray(model(x))), (lambda: None)
    params = model.parameters()
    device = backend.device_of(params[0].data) if params else "cpu"
    dtype = params[0].data.dtype if params else np.float32
    was_training = model.training
    model.eval()

    def run(x: np.ndarray) -> np.ndarray:
        y = model(Tensor(backend.to_device(x.astype(dtype), device)))
        return backend.to_device(y.data, "cpu")

    return run, lambda: model.train(was_training)


def _check(volume: np.ndarray, roi_size, overlap: float, blend: str, batch_size: int):
    """The roi as a tuple with one positive int per spatial axis of volume (c, *spatial)."""
    if volume.ndim < 2:
        raise ArgumentError(
            f"sliding_window_inference: volume must be (c, *spatial), got {volume.shape}"
        )
    nd = volume.ndim - 1
    roi = (roi_size,) * nd if isinstance(roi_size, (int, np.integer)) else tuple(roi_size)
    if len(roi) != nd or any(int(r) < 1 for r in roi):
        raise ArgumentError(
            f"sliding_window_inference: roi_size {roi_size} must give {nd} positive sizes for a "
            f"volume of shape {volume.shape} (c, *spatial)"
        )
    if not 0 <= overlap < 1:
        raise ArgumentError(f"sliding_window_inference: overlap must be in [0, 1), got {overlap}")
    if blend not in BLENDS:
        raise ArgumentError(f"sliding_window_inference: blend={blend!r}: expected one of {BLENDS}")
    if batch_size < 1:
        raise ArgumentError(f"sliding_window_inference: batch_size must be >= 1, got {batch_size}")
    return tuple(int(r) for r in roi)


def sliding_window_inference(
    model,
    volume: np.ndarray,
    roi_size,
    overlap: float = 0.5,
    blend: str = "gaussian",
    batch_size: int = 1,
    tta_flips: bool = False,
    num_classes: int | None = None,
    sigma_scale: float = 0.125,
) -> np.ndarray:
    """Class probabilities float32 (k, *spatial) of a whole image (c, h, w) or volume (c, d, h, w).

    model: an engine Module mapping (b, c, *roi_size) to logits (b, k, *roi_size) (run under
    no_grad in eval mode, its training flag restored after), or a NumPy callable (engine.deploy).
    Windows of roi_size (an int or one size per spatial axis) are placed as MONAI's (see
    scan_starts; overlap in [0, 1)); a volume smaller than the window is zero-padded evenly on
    both sides and the result cropped back. Each window's logits become probabilities (softmax
    over classes; the sigmoid when k = 1), which are blended with the importance map (Gaussian,
    sigma = sigma_scale * roi, or constant) and divided by the summed weights. Only batch_size
    windows (times 2^nd flips with tta_flips) exist at once beside the (k, *spatial) result.
    tta_flips: each window is also predicted flipped along every subset of its spatial axes,
    flipped back, and the probabilities averaged. num_classes: checked against the model's k.
    """
    volume = np.asarray(volume)
    roi = _check(volume, roi_size, overlap, blend, batch_size)
    nd = len(roi)
    spatial = volume.shape[1:]
    # zero-pad axes smaller than the window: floor half before, the rest after (MONAI's)
    pad = [max(r - s, 0) for r, s in zip(roi, spatial, strict=True)]
    before = [p // 2 for p in pad]
    padded = np.pad(volume, [(0, 0)] + [(b, p - b) for b, p in zip(before, pad, strict=True)])
    size = padded.shape[1:]
    corners = list(
        itertools.product(*(scan_starts(s, r, overlap) for s, r in zip(size, roi, strict=True)))
    )
    weight = importance_map(roi, blend, sigma_scale)
    flips = [()]
    if tta_flips:
        axes = range(2, 2 + nd)
        flips = [c for n in range(nd + 1) for c in itertools.combinations(axes, n)]
    predict, restore = _predictor(model)
    out = norm = None
    try:
        with no_grad():
            for first in range(0, len(corners), batch_size):
                batch = corners[first : first + batch_size]
                windows = [
                    tuple(slice(s, s + r) for s, r in zip(corner, roi, strict=True))
                    for corner in batch
                ]
                x = np.stack([padded[(slice(None), *w)] for w in windows])
                probs = 0
                for axes in flips:  # flip, predict, flip back
                    y = _as_probabilities(predict(np.flip(x, axes) if axes else x))
                    probs = probs + (np.flip(y, axes) if axes else y)
                probs = probs / len(flips)
                if out is None:
                    k = probs.shape[1]
                    if num_classes is not None and k != num_classes:
                        raise ArgumentError(
                            f"sliding_window_inference: the model outputs {k} channels, "
                            f"num_classes={num_classes}"
                        )
                    if probs.shape[2:] != roi:
                        raise ArgumentError(
                            f"sliding_window_inference: the model maps a {roi} window to "
                            f"{probs.shape[2:]}; it must keep the spatial size"
                        )
                    out = np.zeros((k, *size), np.float32)
                    norm = np.zeros(size, np.float32)
                for w, p in zip(windows, probs, strict=True):
                    out[(slice(None), *w)] += weight * p
                    norm[w] += weight
    finally:
        restore()
    out /= norm
    crop = tuple(slice(b, b + s) for b, s in zip(before, spatial, strict=True))
    return out[(slice(None), *crop)]
