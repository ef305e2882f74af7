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


def conv3d(x, spec: dict, arrays: _Arrays, prefix: str) -> np.ndarray:
    """conv2d's formula over volumes: x (n, c, d, h, w), W (oc, c, kd, kh, kw)."""
    W, b = arrays[prefix + "weight"], arrays[prefix + "bias"] if spec["bias"] else None
    return numpy_cpu.KERNELS["conv3d_forward"](
        x, W, b, tuple(spec["stride"]), tuple(spec["padding"])
    )


def conv_transpose(x, spec: dict, arrays: _Arrays, prefix: str) -> np.ndarray:
    """ConvTranspose2d/3d: the adjoint of the conv with weight W (c_in, c_out, *k), i.e. that
    conv's backward-input kernel, o_a = (size_a - 1) s_a - 2 p_a + k_a + op_a, then the bias."""
    W = arrays[prefix + "weight"]
    stride, padding = tuple(spec["stride"]), tuple(spec["padding"])
    geometry = zip(x.shape[2:], stride, padding, W.shape[2:], spec["output_padding"], strict=True)
    out = [(size - 1) * s - 2 * p + k + op for size, s, p, k, op in geometry]
    adjoint = numpy_cpu.KERNELS[f"conv{x.ndim - 2}d_backward_input"]
    y = adjoint(x, W, (len(x), W.shape[1], *out), stride, padding)
    return y + arrays[prefix + "bias"].reshape(-1, *(1,) * (x.ndim - 2)) if spec["bias"] else y


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


def sequential(x, spec: dict, arrays: _Arrays, prefix: str) -> np.ndarray:
    """The children in order; child i's arrays are named prefix + "i." + name."""
    for i, child in enumerate(spec["layers"]):
        x = FORWARD[child["type"]](x, child, arrays, f"{prefix}{i}.")
    return x


def _sigmoid(x, *_):
    return np.exp(-np.logaddexp(0, -x))  # 1 / (1 + e^-x) without overflow


FORWARD: dict[str, Callable[..., np.ndarray]] = {
    "Conv2d": conv2d,
    "Conv3d": conv3d,
    "ConvTranspose2d": conv_transpose,
    "ConvTranspose3d": conv_transpose,
    "Linear": linear,
    "MaxPool2d": max_pool2d,
    "AvgPool2d": avg_pool2d,
    "ReLU": lambda x, *_: np.maximum(x, 0),
    "Sigmoid": _sigmoid,
    "Tanh": lambda x, *_: np.tanh(x),
    "Flatten": lambda x, *_: x.reshape(len(x), -1),
    "Dropout": lambda x, *_: x,  # identity at inference
    "Sequential": sequential,
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
