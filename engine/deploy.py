"""Inference with nothing but NumPy: the way to embed a trained medgrad model in another program.

    from engine.deploy import load
    net = load("runs/demo/model.npz")        # verified: SHA-256, no pickle
    probs = net.predict_proba(images)        # images float32 (n, c, h, w), prepared as in training

This module imports NumPy, the file reader (engine.checkpoint, engine.safeio) and the NumPy
reference kernels (kernels.numpy_cpu) only: no autograd, no kernel backend, so neither Numba nor
CuPy nor pydicom is ever loaded. It runs the layer list the model file stores (Conv2d, Linear, ReLU,
Sigmoid, Tanh, MaxPool2d, AvgPool2d, Flatten, Dropout) through the same kernels the engine's numpy
flavour uses: im2col + one matrix product per conv.
"""

from __future__ import annotations

import os

import numpy as np

from engine.checkpoint import Checkpoint, load_checkpoint
from engine.errors import SerializationError
from kernels import numpy_cpu


def conv2d(x, W, b, stride, padding) -> np.ndarray:
    """y[n, o, i, j] = sum_{c,u,v} x_pad[n, c, i sh + u, j sw + v] W[o, c, u, v] + b[o]."""
    return numpy_cpu.conv2d_forward(x, W, b, tuple(stride), tuple(padding))


def max_pool2d(x, kernel_size, stride, padding) -> np.ndarray:
    """Max over each window; padding counts as -inf, so it never wins."""
    return numpy_cpu.max_pool2d_forward(x, tuple(kernel_size), tuple(stride), tuple(padding))[0]


def avg_pool2d(x, kernel_size, stride, padding) -> np.ndarray:
    """Mean over each window; padded zeros count in the mean (PyTorch's default)."""
    return numpy_cpu.avg_pool2d_forward(x, tuple(kernel_size), tuple(stride), tuple(padding))


def _sigmoid(x):
    return np.exp(-np.logaddexp(0, -x))  # 1 / (1 + e^-x) without overflow


ACTIVATIONS = {
    "ReLU": lambda x: np.maximum(x, 0),
    "Sigmoid": _sigmoid,
    "Tanh": np.tanh,
    "Flatten": lambda x: x.reshape(len(x), -1),
    "Dropout": lambda x: x,
}


class NumpyModel:
    """A model file's network as plain NumPy functions. Call it on float (n, c, h, w) -> logits."""

    def __init__(self, ckpt: Checkpoint):
        if not ckpt.layers:
            raise SerializationError(
                f"{ckpt.path}: holds no layer list (not a Sequential model); use the engine"
            )
        self.checkpoint, self.layers = ckpt, ckpt.layers
        self.weights = ckpt.weights
        self.classes = ckpt.classes
        self.preprocessing = ckpt.preprocessing
        for spec in self.layers:
            kind = spec.get("type")
            if kind not in ("Conv2d", "Linear", "MaxPool2d", "AvgPool2d", *ACTIVATIONS):
                raise SerializationError(f"{ckpt.path}: unknown layer type {kind!r}")
            for key in ("weight", "bias"):
                if spec.get(key) is not None and spec[key] not in self.weights:
                    raise SerializationError(f"{ckpt.path}: layer needs missing array {spec[key]}")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Logits (n, k) for x (n, c, h, w), computed in the weights' dtype (float32)."""
        dtype = self.weights[self.layers[0]["weight"]].dtype if "weight" in self.layers[0] else None
        x = np.asarray(x, dtype=dtype or np.float32)
        for spec in self.layers:
            kind = spec["type"]
            W, b = self.weights.get(spec.get("weight")), self.weights.get(spec.get("bias"))
            if kind == "Conv2d":
                x = conv2d(x, W, b, spec["stride"], spec["padding"])
            elif kind == "Linear":
                x = x @ W.T + b if b is not None else x @ W.T
            elif kind in ("MaxPool2d", "AvgPool2d"):
                pool = max_pool2d if kind == "MaxPool2d" else avg_pool2d
                x = pool(x, spec["kernel_size"], spec["stride"], spec["padding"])
            else:
                x = ACTIVATIONS[kind](x)
        return x

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
