"""Inference with nothing but NumPy: the way to embed a trained medgrad model in another program.

    from engine.deploy import load
    net = load("runs/demo/model.npz")        # verified: SHA-256, no pickle
    probs = net.predict_proba(images)        # images float32 (n, c, h, w), prepared as in training

This module imports NumPy, the file reader (engine.checkpoint, engine.safeio, engine.errors) and the
NumPy reference kernels (kernels.numpy_cpu) only: no autograd, no engine.nn, no kernel backend, so
neither Numba nor CuPy nor pydicom is ever loaded. It runs the layer spec the model file stores
(engine.nn's `model.spec()`) through one table, FORWARD: spec type -> NumPy forward function, using
the same kernels the engine's numpy flavour uses (im2col + one matrix product per conv).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from engine.checkpoint import Checkpoint, load_checkpoint
from engine.errors import SerializationError
from kernels import numpy_cpu
from kernels.numpy_cpu.resample import output_size


class _Arrays(dict):
    """The file's state_dict; a layer asking for an array the file lacks gets SerializationError."""

    def __init__(self, arrays: dict, path):
        super().__init__(arrays)
        self.path = path

    def __missing__(self, name: str):
        raise SerializationError(f"{self.path}: a layer needs array {name!r}, which is missing")


# Each forward function: (x, spec, arrays, prefix) -> y. spec is the layer's dict from spec(),
# arrays the file's state_dict and prefix the layer's state_dict name prefix ("3." for layer 3).


def conv2d(x, spec: dict, arrays: _Arrays, prefix: str) -> np.ndarray:
    """y[n, o, i, j] = sum_{c,u,v} x_pad[n, c, i sh + u, j sw + v] W[o, c, u, v] + b[o]."""
    W, b = arrays[prefix + "weight"], arrays[prefix + "bias"] if spec["bias"] else None
    return numpy_cpu.conv2d_forward(x, W, b, tuple(spec["stride"]), tuple(spec["padding"]))


def linear(x, spec: dict, arrays: _Arrays, prefix: str) -> np.ndarray:
    """y = x W^T + b, x (n, in_features)."""
    y = x @ arrays[prefix + "weight"].T
    return y + arrays[prefix + "bias"] if spec["bias"] else y


def _pool_args(spec: dict) -> tuple:
    return tuple(tuple(spec[k]) for k in ("kernel_size", "stride", "padding"))


def max_pool2d(x, spec: dict, arrays: _Arrays, prefix: str) -> np.ndarray:
    """Max over each window; padding counts as -inf, so it never wins."""
    return numpy_cpu.max_pool2d_forward(x, *_pool_args(spec))[0]


def avg_pool2d(x, spec: dict, arrays: _Arrays, prefix: str) -> np.ndarray:
    """Mean over each window; padded zeros count in the mean (PyTorch's default)."""
    return numpy_cpu.avg_pool2d_forward(x, *_pool_args(spec))


def max_pool3d(x, spec: dict, arrays: _Arrays, prefix: str) -> np.ndarray:
    """Max over each kd x kh x kw window; padding never wins."""
    return numpy_cpu.max_pool3d_forward(x, *_pool_args(spec))[0]


def avg_pool3d(x, spec: dict, arrays: _Arrays, prefix: str) -> np.ndarray:
    """Mean over each kd x kh x kw window; padded zeros count in the mean."""
    return numpy_cpu.avg_pool3d_forward(x, *_pool_args(spec))


def adaptive_avg_pool(x, spec: dict, arrays: _Arrays, prefix: str) -> np.ndarray:
    """Mean over the windows that tile each spatial axis into output_size (2-D or 3-D)."""
    return numpy_cpu.adaptive_avg_pool_forward(x, tuple(spec["output_size"]))


def upsample(x, spec: dict, arrays: _Arrays, prefix: str) -> np.ndarray:
    """F.interpolate's resampling to spec's size or scale_factor, mode and align_corners."""
    out, scales = output_size(x.shape[2:], spec["size"], spec["scale_factor"])
    align = bool(spec["align_corners"])
    return numpy_cpu.interpolate_forward(x, out, spec["mode"], align, scales)


def sequential(x, spec: dict, arrays: _Arrays, prefix: str) -> np.ndarray:
    """The children in order; child i's arrays are named prefix + "i." + name."""
    for i, child in enumerate(spec["layers"]):
        x = FORWARD[child["type"]](x, child, arrays, f"{prefix}{i}.")
    return x


def _sigmoid(x, *_):
    return np.exp(-np.logaddexp(0, -x))  # 1 / (1 + e^-x) without overflow


FORWARD: dict[str, Callable[..., np.ndarray]] = {
    "Conv2d": conv2d,
    "Linear": linear,
    "MaxPool2d": max_pool2d,
    "AvgPool2d": avg_pool2d,
    "ReLU": lambda x, *_: np.maximum(x, 0),
    "Sigmoid": _sigmoid,
    "Tanh": lambda x, *_: np.tanh(x),
    "Flatten": lambda x, *_: x.reshape(len(x), -1),
    "Dropout": lambda x, *_: x,  # identity at inference
    "Sequential": sequential,
    "MaxPool3d": max_pool3d,
    "AvgPool3d": avg_pool3d,
    "AdaptiveAvgPool2d": adaptive_avg_pool,
    "AdaptiveAvgPool3d": adaptive_avg_pool,
    "Upsample": upsample,
}


def _check_types(spec: dict, path) -> None:
    """SerializationError naming the file and the first layer type FORWARD does not know."""
    kind = spec.get("type") if isinstance(spec, dict) else type(spec).__name__
    if not isinstance(kind, str) or kind not in FORWARD:
        raise SerializationError(f"{path}: unknown layer type {kind!r} for NumPy-only inference")
    for child in spec.get("layers", []) if kind == "Sequential" else []:
        _check_types(child, path)


class NumpyModel:
    """A model file's network as plain NumPy functions. Call it on float (n, c, h, w) -> logits."""

    def __init__(self, ckpt: Checkpoint):
        if not ckpt.spec:
            raise SerializationError(
                f"{ckpt.path}: holds no layer spec (a custom Module); use the engine"
            )
        _check_types(ckpt.spec, ckpt.path)
        self.checkpoint, self.spec = ckpt, ckpt.spec
        self.weights = _Arrays(ckpt.weights, ckpt.path)
        self.classes = ckpt.classes
        self.preprocessing = ckpt.preprocessing
        floats = [a.dtype for a in ckpt.weights.values() if a.dtype.kind == "f"]
        self.dtype = floats[0] if floats else np.dtype(np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Logits (n, k) for x (n, c, h, w), computed in the weights' dtype (float32)."""
        x = np.asarray(x, dtype=self.dtype)
        try:
            return FORWARD[self.spec["type"]](x, self.spec, self.weights, "")
        except KeyError as exc:  # a spec without an argument its layer needs
            raise SerializationError(f"{self.checkpoint.path}: layer spec lacks {exc}") from exc

    def predict_proba(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Class probabilities float64 (n, k): softmax of the logits, batch by batch."""
        out = []
        for start in range(0, len(x), batch_size):
            z = self(x[start : start + batch_size]).astype(np.float64)
            z = np.exp(z - z.max(axis=1, keepdims=True))
            out.append(z / z.sum(axis=1, keepdims=True))
        return np.concatenate(out)


def load(path: str | os.PathLike) -> NumpyModel:
    """Read and verify a model file and return its NumPy-only network."""
    return NumpyModel(load_checkpoint(path))
