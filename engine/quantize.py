"""Post-training static int8 quantization of a model file: per-output-channel symmetric int8
weights, per-tensor activation scales calibrated on sample images, int32 sums (engine.deploy's
QuantConv2d / QuantConv3d / QuantLinear). The result is a normal verified model file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from engine import deploy
from engine.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from engine.errors import ArgumentError

# float layer type -> its int8 counterpart in engine.deploy.FORWARD
QUANTIZED = {"Conv2d": "QuantConv2d", "Conv3d": "QuantConv3d", "Linear": "QuantLinear"}
QMAX = 127  # symmetric: int8 values in [-127, 127], so -q is always representable


def _calibrate(x, spec: dict, arrays, prefix: str, ranges: dict, percentile: float):
    """Run the float model on x as deploy does, recording for each quantizable layer (by its
    state_dict prefix) the percentile of |its input|. Layers inside containers other than
    Sequential and Residual are run whole and stay float."""
    kind = spec["type"]
    if kind == "Sequential":
        names = spec.get("names") or [str(i) for i in range(len(spec["layers"]))]
        for name, child in zip(names, spec["layers"], strict=True):
            x = _calibrate(x, child, arrays, f"{prefix}{name}.", ranges, percentile)
        return x
    if kind == "Residual":
        y = _calibrate(x, spec["body"], arrays, prefix, ranges, percentile)
        short = spec["shortcut"]
        args = (arrays, prefix + "downsample.", ranges, percentile)
        y = y + (x if short is None else _calibrate(x, short, *args))
        act = spec["activation"]
        return (
            y
            if act is None
            else _calibrate(y, act, arrays, prefix + "activation.", ranges, percentile)
        )
    if kind in QUANTIZED:
        magnitude = np.abs(x)
        high = magnitude.max() if percentile >= 100 else np.percentile(magnitude, percentile)
        ranges.setdefault(prefix, []).append(float(high))
    return deploy.FORWARD[kind](x, spec, arrays, prefix)


def _rewrite(spec: dict, prefix: str, scales: dict) -> dict:
    """The spec with each calibrated layer's type replaced by its int8 type plus input_scale."""
    kind = spec["type"]
    if kind == "Sequential":
        names = spec.get("names") or [str(i) for i in range(len(spec["layers"]))]
        pairs = zip(names, spec["layers"], strict=True)
        layers = [_rewrite(child, f"{prefix}{name}.", scales) for name, child in pairs]
        return {**spec, "layers": layers}
    if kind == "Residual":
        parts = {
            "body": prefix,
            "shortcut": prefix + "downsample.",
            "activation": prefix + "activation.",
        }
        return {**spec, **{k: spec[k] and _rewrite(spec[k], p, scales) for k, p in parts.items()}}
    if prefix in scales and kind in QUANTIZED:
        return {**spec, "type": QUANTIZED[kind], "input_scale": scales[prefix]}
    return spec


def quantize_weight(W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """W float (oc, ...) -> (int8 rint(W / s[o]) clipped to +-127, s float32 (oc,)) with
    s[o] = max |W[o]| / 127 (1 for an all-zero channel): symmetric, per output channel."""
    peak = np.abs(W.reshape(len(W), -1)).max(axis=1)
    scale = np.where(peak > 0, peak / QMAX, 1.0).astype(np.float32)
    shape = (-1, *(1,) * (W.ndim - 1))
    q = np.clip(np.rint(W / scale.reshape(shape)), -QMAX, QMAX).astype(np.int8)
    return q, scale


def quantize(
    ckpt: Checkpoint, images: np.ndarray, *, percentile: float = 100.0, batch_size: int = 64
) -> Checkpoint:
    """The int8 version of a float model file's network, calibrated on images (n, c, ...).

    Each Conv2d/Conv3d/Linear gets input_scale = (the percentile of |its input| over the
    calibration batches, the max when percentile is 100; their mean otherwise) / 127, and its
    weight int8 with weight_scale (oc,) float32; biases stay float32. Other layers run in float.
    """
    if not 50 <= percentile <= 100:
        raise ArgumentError(f"percentile must be in [50, 100], got {percentile}")
    if not ckpt.spec:
        raise ArgumentError(f"{ckpt.path}: holds no layer spec (a custom Module): cannot quantize")
    net = deploy.NumpyModel(ckpt)
    ranges: dict[str, list[float]] = {}
    for start in range(0, len(images), batch_size):
        x = np.asarray(images[start : start + batch_size], net.dtype)
        _calibrate(x, ckpt.spec, net.weights, "", ranges, percentile)
    combine = max if percentile >= 100 else (lambda v: float(np.mean(v)))
    scales = {p: max(combine(v), 1e-12) / QMAX for p, v in ranges.items()}
    weights = dict(ckpt.weights)
    for prefix in scales:
        q, s = quantize_weight(np.asarray(weights[prefix + "weight"], np.float32))
        weights[prefix + "weight"], weights[prefix + "weight_scale"] = q, s
    spec = _rewrite(ckpt.spec, "", scales)
    return Checkpoint(ckpt.path, None, spec, weights, ckpt.preprocessing, ckpt.classes)


class _Frozen:
    """What save_checkpoint needs of a model: a spec and a state_dict (no registry config)."""

    config = None

    def __init__(self, ckpt: Checkpoint):
        self.ckpt = ckpt

    def spec(self) -> dict:
        return self.ckpt.spec

    def state_dict(self) -> dict:
        return self.ckpt.weights


def save_quantized(ckpt: Checkpoint, path: str | os.PathLike, info: dict) -> Path:
    """Write a quantized Checkpoint as a verified model file (info goes to train_state)."""
    return save_checkpoint(
        path,
        _Frozen(ckpt),
        preprocessing=ckpt.preprocessing,
        classes=ckpt.classes,
        train_state={"quantization": info},
    )


def quantize_file(
    model_path, data, out, *, samples: int = 256, percentile: float = 100.0, seed: int = 0
) -> str:
    """`medgrad quantize`: calibrate on `samples` images drawn (seeded) from `data` (a dataset
    folder, or "phantoms"), prepared as the model file records; write `out`; return a summary
    (file sizes, top-1 agreement of int8 with float32 on the calibration images)."""
    from engine.workflow import load_data

    ckpt = load_checkpoint(model_path)
    size = int(ckpt.preprocessing.get("input_size", 28))
    ds = load_data(data, input_size=size, on_error="skip", classes=ckpt.classes)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.permutation(len(ds.images))[:samples])
    images = ds.images[pick]
    qckpt = quantize(ckpt, images, percentile=percentile)
    info = {"scheme": "int8 symmetric, weights per output channel, activations per tensor"}
    info.update(percentile=percentile, samples=len(images), source=str(model_path))
    path = save_quantized(qckpt, out, info)
    agree = np.mean(
        deploy.NumpyModel(qckpt)(images).argmax(1) == deploy.NumpyModel(ckpt)(images).argmax(1)
    )
    before, after = Path(model_path).stat().st_size, path.stat().st_size
    return (
        f"wrote {path}: {after} bytes ({before / after:.1f}x smaller than {before}); "
        f"int8 agrees with float32 on {agree:.1%} of {len(images)} calibration images"
    )
