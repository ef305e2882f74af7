"""Inference with nothing but NumPy: the way to embed a trained medgrad model in another program.

    from engine.deploy import load
    net = load("runs/demo/model.npz")        # verified: SHA-256, no pickle
    probs = net.predict_proba(images)        # images float32 (n, c, h, w), prepared as in training

This module imports NumPy and the file reader (engine.checkpoint, engine.safeio) only: no autograd,
no kernel backend, so neither Numba nor CuPy nor pydicom is ever loaded. It runs the layer list the
model file stores (Conv2d, Linear, ReLU, Sigmoid, Tanh, MaxPool2d, AvgPool2d, Flatten, Dropout)
with the same arithmetic as the engine's NumPy kernels: im2col + one matrix product per conv.
"""

from __future__ import annotations

import os

import numpy as np

from engine.checkpoint import Checkpoint, load_checkpoint
from engine.errors import SerializationError


def _pad(x: np.ndarray, ph: int, pw: int, value: float = 0.0) -> np.ndarray:
    if not (ph or pw):
        return x
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def _windows(x: np.ndarray, kh: int, kw: int, sh: int, sw: int) -> np.ndarray:
    """x (n, c, h, w) -> (n, c, oh, ow, kh, kw): every kh x kw window at stride (sh, sw), a view."""
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
    return win[:, :, ::sh, ::sw]


def conv2d(x, W, b, stride, padding) -> np.ndarray:
    """y[n, o, i, j] = sum_{c,u,v} x_pad[n, c, i sh + u, j sw + v] W[o, c, u, v] + b[o]."""
    oc, c, kh, kw = W.shape
    cols = _windows(_pad(x, *padding), kh, kw, *stride)  # (n, c, oh, ow, kh, kw)
    n, _, oh, ow = cols.shape[:4]
    cols = cols.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * kh * kw)  # im2col rows
    y = cols @ W.reshape(oc, -1).T
    if b is not None:
        y += b
    return np.ascontiguousarray(y.reshape(n, oh, ow, oc).transpose(0, 3, 1, 2))


def max_pool2d(x, kernel_size, stride, padding) -> np.ndarray:
    """Max over each window; padding counts as -inf, so it never wins."""
    return _windows(_pad(x, *padding, value=-np.inf), *kernel_size, *stride).max(axis=(4, 5))


def avg_pool2d(x, kernel_size, stride, padding) -> np.ndarray:
    """Mean over each window; padded zeros count in the mean (PyTorch's default)."""
    return _windows(_pad(x, *padding), *kernel_size, *stride).mean(axis=(4, 5))


def _sigmoid(x):
    return np.exp(-np.logaddexp(0, -x))  # 1 / (1 + e^-x) without overflow


ACTIVATIONS = {"ReLU": lambda x: np.maximum(x, 0), "Sigmoid": _sigmoid, "Tanh": np.tanh,
               "Flatten": lambda x: x.reshape(len(x), -1), "Dropout": lambda x: x}  # fmt: skip


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
