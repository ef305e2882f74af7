"""Inference with nothing but NumPy: the way to embed a trained medgrad model in another program.

    from engine.deploy import load
    net = load("runs/demo/model.npz")        # verified: SHA-256, no pickle
    probs = net.predict_proba(images)        # images float32 (n, c, h, w), prepared as in training

This module imports NumPy, the file reader (engine.checkpoint, engine.safeio, engine.errors) and the
NumPy reference kernels (kernels.numpy_cpu) only: no autograd, no engine.nn, no kernel backend, so
neither Numba nor CuPy nor pydicom is ever loaded. It runs the layer spec the model file stores
(engine.nn's `model.spec()`) through one table, FORWARD: spec type -> NumPy forward function, using
the same kernels the engine's numpy flavour uses (im2col + one matrix product per conv).
Int8 files (engine.quantize) add the Quant* types: their int32-accumulating product is Numba's
kernel when Numba imports (loaded on the first int8 layer only), NumPy's int32 matmul otherwise.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np

from engine.checkpoint import Checkpoint, load_checkpoint
from engine.errors import SerializationError
from kernels import numpy_cpu
from kernels.numpy_cpu import int8
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


def _tiled_max(x, k: tuple) -> np.ndarray:
    """Max over non-overlapping windows (stride = kernel, no padding), as the maximum of the
    prod(k) strided views (one per tap); rows that fill no window are dropped, as the pool's
    output size rule drops them."""
    out = [a // kk for a, kk in zip(x.shape[2:], k, strict=True)]
    y = None
    for t in np.ndindex(*k):  # tap t of every window: a strided view
        window = (slice(tt, o * kk, kk) for tt, o, kk in zip(t, out, k, strict=True))
        view = x[(slice(None), slice(None), *window)]
        y = view.copy() if y is None else np.maximum(y, view, out=y)
    return y


def max_pool2d(x, spec: dict, arrays: _Arrays, prefix: str) -> np.ndarray:
    """Max over each window; padding counts as -inf, so it never wins."""
    k, stride, padding = _pool_args(spec)
    if k == stride and not any(padding):
        return _tiled_max(x, k)
    return numpy_cpu.max_pool2d_forward(x, k, stride, padding)[0]


def avg_pool2d(x, spec: dict, arrays: _Arrays, prefix: str) -> np.ndarray:
    """Mean over each window; padded zeros count in the mean (PyTorch's default)."""
    return numpy_cpu.avg_pool2d_forward(x, *_pool_args(spec))


def max_pool3d(x, spec: dict, arrays: _Arrays, prefix: str) -> np.ndarray:
    """Max over each kd x kh x kw window; padding never wins."""
    k, stride, padding = _pool_args(spec)
    if k == stride and not any(padding):
        return _tiled_max(x, k)
    return numpy_cpu.max_pool3d_forward(x, k, stride, padding)[0]


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
    """The children in order; child i's arrays are named prefix + "i." + name (or prefix + its
    name + "." when the spec has "names")."""
    names = spec.get("names") or [str(i) for i in range(len(spec["layers"]))]
    for name, child in zip(names, spec["layers"], strict=True):
        x = FORWARD[child["type"]](x, child, arrays, f"{prefix}{name}.")
    return x


def residual(x, spec: dict, arrays: _Arrays, prefix: str) -> np.ndarray:
    """activation(body(x) + shortcut(x)); the body's arrays sit directly under the block's
    prefix, the shortcut's under prefix + "downsample." (engine.nn.Residual's names)."""
    y = sequential(x, spec["body"], arrays, prefix)
    shortcut = spec["shortcut"]
    y = y + (x if shortcut is None else _run(shortcut, x, arrays, prefix + "downsample."))
    activation = spec["activation"]
    return y if activation is None else _run(activation, y, arrays, prefix + "activation.")


def skip_connection(x, spec: dict, arrays: _Arrays, prefix: str) -> np.ndarray:
    """cat([x, body(x)], dim), x + body(x) or x * body(x) by spec["mode"]; the body's arrays sit
    directly under the block's prefix (engine.nn.SkipConnection's names)."""
    y = sequential(x, spec["body"], arrays, prefix)
    if spec["mode"] == "cat":
        return np.concatenate([x, y], axis=spec["dim"])
    return x + y if spec["mode"] == "add" else x * y


def _run(spec: dict, x, arrays: _Arrays, prefix: str) -> np.ndarray:
    return FORWARD[spec["type"]](x, spec, arrays, prefix)


def _channel_view(x, stats_shape: int) -> np.ndarray:
    """x (n, c, *spatial) as (n, c, s), the view the norm kernels' statistics expect."""
    return x.reshape(len(x), stats_shape, -1)


def batch_norm(x, spec: dict, arrays: _Arrays, prefix: str) -> np.ndarray:
    """Eval mode: (x - running_mean) / sqrt(running_var + eps) * weight + bias per channel (the
    batch's own statistics when the layer tracks none); also InstanceNorm*d's."""
    n, c = x.shape[:2]
    per_instance = spec["type"].startswith("InstanceNorm")
    w, b = (arrays[prefix + k] for k in ("weight", "bias")) if spec["affine"] else (None, None)
    if spec["track_running_stats"]:
        rm, rv = arrays[prefix + "running_mean"], arrays[prefix + "running_var"]
        x3 = _channel_view(x, c)
    else:
        x3 = x.reshape(1, n * c, -1) if per_instance else _channel_view(x, c)
        rm, rv = numpy_cpu.norm_moments(x3)
        if per_instance and w is not None:
            w, b = np.tile(w, n), np.tile(b, n)
    rstd = 1 / np.sqrt(rv.astype(x.dtype) + spec["eps"])
    return numpy_cpu.norm_forward(x3, rm.astype(x.dtype), rstd, w, b).reshape(x.shape)


def group_norm(x, spec: dict, arrays: _Arrays, prefix: str) -> np.ndarray:
    """Statistics per (sample, group of channels), then weight and bias per channel."""
    n, c = x.shape[:2]
    x3 = x.reshape(1, n * spec["num_groups"], -1)
    mean, var = numpy_cpu.norm_moments(x3)
    y = numpy_cpu.norm_forward(x3, mean, 1 / np.sqrt(var + spec["eps"]), None, None)
    y = y.reshape(n, c, -1)
    if spec["affine"]:
        y = y * arrays[prefix + "weight"][:, None] + arrays[prefix + "bias"][:, None]
    return y.reshape(x.shape)


def layer_norm(x, spec: dict, arrays: _Arrays, prefix: str) -> np.ndarray:
    """Statistics per leading index over the trailing normalized_shape, weight and bias
    elementwise."""
    trailing = int(np.prod(spec["normalized_shape"]))
    x3 = x.reshape(1, -1, trailing)
    mean, var = numpy_cpu.norm_moments(x3)
    y = numpy_cpu.norm_forward(x3, mean, 1 / np.sqrt(var + spec["eps"]), None, None)
    y = y.reshape(x.shape)
    if spec["elementwise_affine"]:
        y = y * arrays[prefix + "weight"]
    return y + arrays[prefix + "bias"] if spec["bias"] else y


def _gelu(x, *_):
    """x Phi(x) with math.erf per element: the kernels' scipy erf is not loaded here."""
    erf = np.frompyfunc(math.erf, 1, 1)
    return (x * (0.5 * (1 + erf(x / math.sqrt(2)).astype(np.float64)))).astype(x.dtype)


def _sigmoid(x, *_):
    return np.exp(-np.logaddexp(0, -x))  # 1 / (1 + e^-x) without overflow


# ---- int8 layers (engine.quantize writes them): int8 weights per output channel, int32 sums ----

_INT8_MATMUL: list = []  # the chosen kernel, filled on first use


def _int8_kernels() -> tuple:
    """(int8_matmul, int8_matmul_nt): Numba's int32-accumulating kernels when Numba imports
    (and MEDGRAD_INT8_KERNEL is not "numpy"), else NumPy's int32 matmul, exact but without BLAS
    (slower)."""
    if not _INT8_MATMUL:
        kernels = int8.int8_matmul, int8.int8_matmul_nt
        if os.environ.get("MEDGRAD_INT8_KERNEL", "numba") != "numpy":
            try:
                from kernels.numba_cpu import int8 as fast

                kernels = fast.int8_matmul, fast.int8_matmul_nt
            except ImportError:
                pass
        _INT8_MATMUL.append(kernels)
    return _INT8_MATMUL[0]


def _dequantize(acc, spec: dict, arrays: _Arrays, prefix: str) -> np.ndarray:
    """float32 acc * (input_scale * weight_scale[o]) + bias[o], o the last axis of acc."""
    scale = np.float32(spec["input_scale"]) * arrays[prefix + "weight_scale"]
    y = acc.astype(np.float32) * scale
    return y + arrays[prefix + "bias"] if spec["bias"] else y


def _columns(x, k: tuple, stride: tuple, padding: tuple) -> tuple[np.ndarray, list[int]]:
    """(cols (c*prod(k), n*prod(o)), o): cols[(ch, *t), (b, *i)] = x_pad[b, ch, *(i s + t)]:
    one matrix product W (oc, c*prod(k)) @ cols for the whole batch, whose (oc, n, ...) result
    goes to NCHW by swapping outer axes only (contiguous rows: cheap). The float convs keep
    numpy_cpu's im2col, so that their sums are the engine's to the bit."""
    n, c, *size = x.shape
    out = [(a + 2 * p - kk) // s + 1 for a, p, kk, s in zip(size, padding, k, stride, strict=True)]
    if any(padding):
        x = np.pad(x, ((0, 0), (0, 0), *((p, p) for p in padding)))
    cols = np.empty((c, *k, n, *out), x.dtype)
    xt = x.swapaxes(0, 1)  # (c, n, *size): a view
    for t in np.ndindex(*k):  # tap t of every output position: one strided copy
        axes = zip(t, stride, out, strict=True)
        window = tuple(slice(tt, tt + s * (o - 1) + 1, s) for tt, s, o in axes)
        cols[(slice(None), *t)] = xt[(slice(None), slice(None), *window)]
    return cols.reshape(c * math.prod(k), n * math.prod(out)), out


def _to_nchw(y, n: int, out: list[int]) -> np.ndarray:
    """y (oc, n * prod(o)) -> (n, oc, *o), C-contiguous."""
    return np.ascontiguousarray(y.reshape(len(y), n, *out).swapaxes(0, 1))


def quant_conv(x, spec: dict, arrays: _Arrays, prefix: str) -> np.ndarray:
    """Conv2d/Conv3d in int8: x quantized with the calibrated input_scale, its columns (padding =
    quantized 0), int32 sums of the int8 weight (oc, c, *k) against them, then rescaled."""
    Wq = arrays[prefix + "weight"]
    xq = int8.quantize_int8(x, spec["input_scale"])
    cols, out = _columns(xq, Wq.shape[2:], tuple(spec["stride"]), tuple(spec["padding"]))
    acc = _int8_kernels()[0](Wq.reshape(len(Wq), -1), cols)  # (oc, n * prod(o)) int32
    y = acc.astype(np.float32)
    y *= np.float32(spec["input_scale"]) * arrays[prefix + "weight_scale"][:, None]
    if spec["bias"]:
        y += arrays[prefix + "bias"][:, None]
    return _to_nchw(y, len(x), out)


def quant_linear(x, spec: dict, arrays: _Arrays, prefix: str) -> np.ndarray:
    """Linear in int8: y = (q(x) Wq^T) input_scale weight_scale + b, the sums in int32."""
    xq = int8.quantize_int8(x, spec["input_scale"])
    acc = _int8_kernels()[1](xq, arrays[prefix + "weight"])  # weight (out, in) as stored
    return _dequantize(acc, spec, arrays, prefix)


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
    "BatchNorm1d": batch_norm,
    "BatchNorm2d": batch_norm,
    "BatchNorm3d": batch_norm,
    "InstanceNorm2d": batch_norm,
    "InstanceNorm3d": batch_norm,
    "GroupNorm": group_norm,
    "LayerNorm": layer_norm,
    "LeakyReLU": lambda x, spec, *_: numpy_cpu.leaky_relu_forward(x, spec["negative_slope"]),
    "GELU": _gelu,
    "Identity": lambda x, *_: x,
    "AdaptiveAvgPool2d": adaptive_avg_pool,
    "Residual": residual,
    "MaxPool3d": max_pool3d,
    "AvgPool3d": avg_pool3d,
    "AdaptiveAvgPool3d": adaptive_avg_pool,
    "Upsample": upsample,
    "SkipConnection": skip_connection,
    "QuantConv2d": quant_conv,
    "QuantConv3d": quant_conv,
    "QuantLinear": quant_linear,
}


def _check_types(spec: dict, path) -> None:
    """SerializationError naming the file and the first layer type FORWARD does not know."""
    kind = spec.get("type") if isinstance(spec, dict) else type(spec).__name__
    if not isinstance(kind, str) or kind not in FORWARD:
        raise SerializationError(f"{path}: unknown layer type {kind!r} for NumPy-only inference")
    for value in spec.values():  # nested specs: Sequential's "layers", Residual's "body", ...
        for child in value if isinstance(value, list) else [value]:
            if isinstance(child, dict):
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
