"""Inference with nothing but NumPy: the way to embed a trained medgrad model in another program.

    from engine.deploy import load
    net = load("runs/demo/model.npz")        # verified: SHA-256, no pickle
    probs = net.predict_proba(images)        # images float32 (n, c, h, w), prepared as in training

This module imports NumPy, the file reader (engine.checkpoint, engine.safeio, engine.errors) and the
NumPy reference kernels (kernels.numpy_cpu) only: no autograd, no engine.nn, no kernel backend, so
neither Numba nor CuPy nor pydicom is ever loaded. It runs the layer spec the model file stores
(engine.nn's `model.spec()`) through one table, FORWARD: spec type -> NumPy forward function, using
the same kernels the engine's numpy flavour uses (im2col + one matrix product per conv): the
interpreter. The usual deployed CNN (a Sequential of Conv2d / Linear with ReLU, tiled MaxPool2d,
Flatten) runs instead as a compiled plan (_Plan, below): channels-last buffers made once per input
shape and a flat list of NumPy calls (seed_cnn: 2.6-6x faster); its float outputs equal the
interpreter's to float32 rounding (another summation order, not to the bit), int8 to the bit.
Int8 files (engine.quantize) add the Quant* types: their int32-accumulating product is Numba's
kernel when Numba imports (loaded on the first int8 layer only), NumPy's int32 matmul otherwise.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from functools import partial

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

_INT8: list = []  # the chosen int8 kernel module, filled on first use


def _int8_module():
    """kernels.numba_cpu.int8 when Numba imports (and MEDGRAD_INT8_KERNEL is not "numpy"),
    else kernels.numpy_cpu.int8: exact too, but its int32 products have no BLAS (slower)."""
    if not _INT8:
        module = int8
        if os.environ.get("MEDGRAD_INT8_KERNEL", "numba") != "numpy":
            try:
                from kernels.numba_cpu import int8 as module
            except ImportError:
                pass
        _INT8.append(module)
    return _INT8[0]


def _int8_kernels() -> tuple:
    """(int8_matmul, int8_matmul_nt) of _int8_module()."""
    return _int8_module().int8_matmul, _int8_module().int8_matmul_nt


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


# ---- the compiled plan: a Sequential of conv / dense blocks as a flat list of NumPy calls ----
#
# The interpreter above walks the spec on every call and keeps NCHW, so each conv pays im2col
# into a fresh array, a (positions, channels) -> NCHW transpose and a dozen Python calls. For the
# usual deployed CNN (Conv2d or Linear, each followed by ReLU, a tiled MaxPool2d, Flatten)
# NumpyModel compiles instead: the weights are laid out once for the matrix product, activations
# stay channels-last (NHWC) so that a product's (positions, channels) output is already the next
# layer's layout, and for each input shape the buffers and the strided views into them are made
# once, so that a call is a list of ufunc calls, per block:
#   conv:   copyto(columns, windows of the NHWC input)  (im2col; the bias is a column of ones)
#           matmul(columns, [W as (kh*kw*c, oc); b], out)  (in chunks of whole images)
#           maximum.reduce over the pool's taps (contiguous blocks of the product) into the next
#           block's input, with ReLU as one more block of zeros (max-pool and ReLU commute)
#   linear: matmul([x, 1], [W^T; b], out), ReLU into the next block's input
# The dense layer after Flatten gets its weight columns permuted once to the NHWC order. The
# sums run in another order than the interpreter's: equal to float32 rounding, not to the bit.
# Int8 blocks run the same plan on buffers of int8 codes with the int8 kernels (numba_cpu's,
# else numpy_cpu's): quantize the input into NHWC, the int8 x int8 -> int32 product, and one
# epilogue that pools the int32 sums, rescales, adds the bias, applies ReLU and quantizes for the
# next block. A conv runs as one kernel instead (conv_block: sums straight from the windows,
# pooled, rescaled, quantized; no columns, no int32 sums in memory) where the kernels have the
# AVX2 pair micro-kernel (k.pairs(): every conv), else when it has few taps (kh kw c <=
# DIRECT_TAPS: the first conv on one channel). The codes are int8 values in buffers of
# k.code_dtype(): int16 for the micro-kernel (one broadcast load per pair of codes), else int8.
# Integer sums are exact in any order and the float steps are the interpreter's, so
# int8 outputs equal the interpreter's to the bit (pooling the sums before the rescale is exact:
# the rescale, bias, ReLU and quantization are all non-decreasing).

DIRECT_TAPS = 32  # an int8 conv with at most this many taps (kh kw c) runs as one direct pass
DIRECT_TAPS_PAIRS = 1 << 30  # the same where the kernels have the vpmaddwd micro-kernel: all
CHUNK_BYTES = 1 << 19  # a conv's im2col chunk and its product (whole images): a 512 KiB L2
_BLOCK_TYPES = {"Conv2d", "Linear", "QuantConv2d", "QuantLinear"}


def _plan_blocks(spec: dict) -> tuple[bool, list[dict]] | None:
    """(flatten first, blocks): a block is a Conv2d or Linear (all float, or all int8) with the
    ReLU, tiled MaxPool2d (stride = kernel, square, no padding; convs only) and Flatten after it;
    Dropout and Identity vanish. None when the network has any other layer or order."""
    if spec.get("type") != "Sequential":
        return None
    names = spec.get("names") or [str(i) for i in range(len(spec["layers"]))]
    flatten_first, blocks = False, []
    for name, child in zip(names, spec["layers"], strict=True):
        kind, last = child["type"], blocks[-1] if blocks else None
        if kind in _BLOCK_TYPES:
            dense = kind.endswith("Linear")
            if last is not None and last["flat"] != dense:
                return None  # a conv after Flatten or a dense layer; a dense layer on 4-D
            if last is None and flatten_first and not dense:
                return None
            blocks.append({"kind": kind, "spec": child, "prefix": f"{name}."})
            blocks[-1].update(dense=dense, flat=dense, relu=False, pool=1)
        elif kind in ("Dropout", "Identity"):
            continue
        elif kind == "Flatten":
            if last is None:
                flatten_first = True
            else:
                last["flat"] = True
        elif kind == "ReLU" and last is not None:
            last["relu"] = True
        elif kind == "MaxPool2d" and last is not None and last["pool"] == 1 and not last["flat"]:
            k, stride, padding = _pool_args(child)
            if k != stride or any(padding) or k[0] != k[1]:
                return None
            last["pool"] = k[0]
        else:
            return None
    if not blocks or len({b["kind"].startswith("Quant") for b in blocks}) > 1:
        return None
    return flatten_first, blocks


def _view(a: np.ndarray, shape: tuple) -> np.ndarray:
    """a reshaped without a copy (AttributeError if that would need one)."""
    v = a.view()
    v.shape = shape
    return v


def _windows(x: np.ndarray, kernel: tuple, stride: tuple, pool: int, out: tuple) -> np.ndarray:
    """The read-only strided view (p, p, n, oh, ow, kh, kw, c) of x (n, h, w, c), p = pool and
    (oh, ow) = the pooled output size: [u, v, b, i, j] is the window under conv output
    (i p + u, j p + v). Its rows are the im2col matrix, ordered so that the pool's p^2 taps are
    p^2 contiguous blocks of the product; conv outputs that fill no pool tile are left out."""
    s0, s1, s2, s3 = x.strides
    (sh, sw), p = stride, pool
    shape = (p, p, len(x), *out, *kernel, x.shape[3])
    strides = (s1 * sh, s2 * sw, s0, s1 * sh * p, s2 * sw * p, s1, s2, s3)
    return np.lib.stride_tricks.as_strided(x, shape, strides, writeable=False)


class _Plan:
    """A compiled Sequential. Calling it binds buffers, views and the step list for the input's
    shape once (per thread; the last four shapes are kept), then runs the steps; None for an
    input shape the network does not take (the interpreter then raises its own error)."""

    def __init__(self, flatten_first: bool, blocks: list[dict], weights, dtype):
        self.flatten_first, self.blocks, self.weights = flatten_first, blocks, weights
        self.quant = blocks[0]["kind"].startswith("Quant")
        self.float = np.dtype(np.float32) if self.quant else np.dtype(dtype)
        self.local = threading.local()

    def __call__(self, x: np.ndarray):
        bound = getattr(self.local, "bound", None)
        if bound is None:
            bound = self.local.bound = {}
        run = bound.get(x.shape, False)
        if run is False:
            if len(bound) >= 4:
                bound.clear()
            run = bound[x.shape] = self._bind(x.shape)
        return None if run is None else run(x)

    def _shapes(self, xshape: tuple) -> list[tuple] | None:
        """Per block (input shape, conv output (oh, ow) or None, output shape) without the
        batch axis; shapes are (h, w, c) or (features,), a conv block's output the pooled
        (h, w, c) even before Flatten. None if xshape does not fit."""
        if self.blocks[0]["dense"]:
            if len(xshape) != 2 and not (self.flatten_first and len(xshape) > 2):
                return None
            shape = (math.prod(xshape[1:]),)
        elif len(xshape) == 4:
            shape = (*xshape[2:], xshape[1])
        else:
            return None
        shapes = []
        for block in self.blocks:
            spec = block["spec"]
            if block["dense"]:
                if shape != (spec["in_features"],):
                    return None
                conv, out = None, (spec["out_features"],)
            else:
                h, w, c = shape
                if c != spec["in_channels"]:
                    return None
                geometry = zip(
                    (h, w), spec["kernel_size"], spec["stride"], spec["padding"], strict=True
                )
                conv = tuple((a + 2 * p - k) // s + 1 for a, k, s, p in geometry)
                out = (conv[0] // block["pool"], conv[1] // block["pool"], spec["out_channels"])
                if min(out) < 1:
                    return None
            shapes.append((shape, conv, out))
            shape = (math.prod(out),) if block["flat"] else out
        return shapes

    def _input(self, block: dict, n: int, shape: tuple) -> tuple[np.ndarray, np.ndarray]:
        """(buffer, the view its producer writes): NHWC with a zero border of the conv's
        padding (int8 0 is quantized 0), or (n, features) with a column of ones for the float
        dense layer's bias."""
        spec, dtype = block["spec"], _int8_module().code_dtype() if self.quant else self.float
        if not block["dense"]:
            (h, w, c), (ph, pw) = shape, spec["padding"]
            buf = np.zeros((n, h + 2 * ph, w + 2 * pw, c), dtype)
            return buf, buf[:, ph : ph + h, pw : pw + w]
        ones = int(spec["bias"] and not self.quant)
        buf = np.empty((n, shape[0] + ones), dtype)
        buf[:, shape[0] :] = 1
        return buf, buf[:, : shape[0]]

    def _bind(self, xshape: tuple):
        """The run(x) function for inputs of shape xshape, or None."""
        shapes = self._shapes(xshape)
        if shapes is None:
            return None
        n, blocks = xshape[0], self.blocks
        inputs = [self._input(b, n, s[0]) for b, s in zip(blocks, shapes, strict=True)]
        steps: list[tuple] = []
        for i, (block, (_, conv, out)) in enumerate(zip(blocks, shapes, strict=True)):
            last = i + 1 == len(blocks)
            # the next block's input seen as this block's output (pooled NHWC, or features)
            dst = np.empty((n, *out), self.float) if last else _view(inputs[i + 1][1], (n, *out))
            after_conv = block["dense"] and i and not blocks[i - 1]["dense"]
            flat_from = shapes[i - 1][2] if after_conv else None
            nxt = None if last else blocks[i + 1]
            build = self._quant_steps if self.quant else self._float_steps
            build(block, conv, inputs[i][0], flat_from, dst, nxt, steps)
        load = self._loader(inputs[0][1], n)

        flatten = blocks[-1]["flat"]  # a conv block last: NCHW out, flattened in its order

        def run(x):
            load(x)
            for step in steps:
                step()
            if dst.ndim == 2:
                return dst.copy()
            y = np.ascontiguousarray(dst.transpose(0, 3, 1, 2))
            return y.reshape(n, -1) if flatten else y

        run.load, run.steps = load, steps  # per-step profiles (bench_deploy --steps), tests
        run.buffers = [buf for buf, _ in inputs]
        return run

    def _loader(self, first: np.ndarray, n: int) -> Callable:
        """x (n, c, h, w) or (n, features) -> the first block's input (NHWC or flat)."""
        nhwc = first.ndim == 4
        if not self.quant:
            if nhwc:
                return lambda x: np.copyto(first, x.transpose(0, 2, 3, 1))
            return lambda x: np.copyto(first, x.reshape(n, -1))
        quantize = _int8_module().quantize_nhwc
        scale = np.float32(self.blocks[0]["spec"]["input_scale"])
        if nhwc:
            return lambda x: quantize(x.transpose(0, 2, 3, 1), scale, first)
        first4 = _view(first, (n, 1, 1, first.shape[1]))
        return lambda x: quantize(x.reshape(n, 1, 1, -1), scale, first4)

    def _dense_weight(self, W: np.ndarray, flat_from) -> np.ndarray:
        """W (out, features), its columns permuted from NCHW's flatten order (c, h, w) to the
        plan's NHWC order (h, w, c) when the features come from a conv block."""
        if flat_from is None:
            return W
        h, w, c = flat_from
        return W.reshape(len(W), c, h, w).transpose(0, 2, 3, 1).reshape(len(W), -1)

    def _columns(self, block, conv, buf, dtype, ones: bool) -> tuple[list, np.ndarray]:
        """A conv block's im2col in chunks of whole images, each small enough for the cache:
        ([(copy step of chunk i, its image slice)], cols (p^2 g oh ow, kh kw c [+ 1])) with
        g images per chunk, the cols buffer shared by the chunks. With few channels (float
        only) cols is the transpose of a (K, positions) buffer, so that the copy runs along
        output rows (ow) instead of along kw * c."""
        spec, (n, _, _, c) = block["spec"], buf.shape
        (kh, kw), p = spec["kernel_size"], block["pool"]
        out = tuple(o // p for o in conv)
        windows = _windows(buf, (kh, kw), tuple(spec["stride"]), p, out)
        K, per_image = kh * kw * c, p * p * out[0] * out[1]
        quant = np.dtype(dtype).kind == "i"  # int8 codes (in int8 or int16 buffers)
        product = 4 if quant else np.dtype(dtype).itemsize  # int32 sums, or floats
        row_bytes = (K + ones) * np.dtype(dtype).itemsize + spec["out_channels"] * product
        g = max(1, min(n, CHUNK_BYTES // (per_image * row_bytes)))
        kmajor = not quant and out[1] > kw * c
        shape = (K + ones, p * p * g * out[0] * out[1])
        cols = np.empty(shape if kmajor else shape[::-1], dtype)
        if kmajor:
            cols[K:] = 1
        else:
            cols[:, K:] = 1
        copies = []
        for start in range(0, n, g):
            part = slice(start, min(n, start + g))
            size = part.stop - part.start
            rows = p * p * size * out[0] * out[1]
            if kmajor:
                view = _view(cols[:K, :rows], (kh, kw, c, p, p, size, *out))
                src = windows[:, :, part].transpose(5, 6, 7, 0, 1, 2, 3, 4)
            else:
                view, src = (
                    _view(cols[:rows, :K], (p, p, size, *out, kh, kw, c)),
                    windows[:, :, part],
                )
            copies.append((partial(np.copyto, view, src), part, rows))
        return copies, cols.T if kmajor else cols

    def _float_steps(self, block, conv, buf, flat_from, dst, nxt, steps) -> None:
        spec, arrays, prefix = block["spec"], self.weights, block["prefix"]
        W = arrays[prefix + "weight"].astype(self.float, copy=False)
        if block["dense"]:
            Wk, taps = self._dense_weight(W, flat_from).T, 1
            chunks = [(None, slice(0, len(buf)), len(buf))]
            cols = buf
        else:
            Wk, taps = W.transpose(2, 3, 1, 0).reshape(-1, len(W)), block["pool"] ** 2
            chunks, cols = self._columns(block, conv, buf, self.float, bool(spec["bias"]))
        if spec["bias"]:
            Wk = np.vstack([Wk, arrays[prefix + "bias"].astype(self.float)[None]])
        Wk = np.ascontiguousarray(Wk, self.float)
        # the product, and after it a block of zeros when a pool's max takes ReLU in too
        zeros = int(taps > 1 and block["relu"])
        products: dict[int, np.ndarray] = {}  # one buffer per chunk size (the last may differ)
        for copy, part, rows in chunks:
            if rows not in products:
                products[rows] = np.zeros((rows + zeros * rows // taps, len(W)), self.float)
            y = products[rows]
            if copy is not None:
                steps.append(copy)
            steps.append(partial(np.matmul, cols[:rows], Wk, out=y[:rows]))
            src = _view(y, (taps + zeros, part.stop - part.start, *dst.shape[1:]))
            to = dst[part]
            if taps > 1 and to.flags.c_contiguous:  # taps (and zeros): contiguous blocks
                steps.append(partial(np.maximum.reduce, src, axis=0, out=to))
            elif taps > 1:  # NumPy reduces into a strided view (a padded buffer) 2x slower
                pooled = np.empty(to.shape, self.float)
                steps.append(partial(np.maximum.reduce, src, axis=0, out=pooled))
                steps.append(partial(np.copyto, to, pooled))
            elif block["relu"]:
                steps.append(partial(np.maximum, src[0], self.float.type(0), out=to))
            else:
                steps.append(partial(np.copyto, to, src[0]))

    def _quant_steps(self, block, conv, buf, flat_from, dst, nxt, steps) -> None:
        spec, arrays, prefix = block["spec"], self.weights, block["prefix"]
        k, Wq = _int8_module(), arrays[prefix + "weight"]
        scale = np.float32(spec["input_scale"]) * arrays[prefix + "weight_scale"]  # _dequantize's
        bias = arrays[prefix + "bias"] if spec["bias"] else None
        out_scale = np.float32(0 if nxt is None else nxt["spec"]["input_scale"])
        taps = math.prod(Wq.shape[1:])
        if not block["dense"] and taps <= (DIRECT_TAPS_PAIRS if k.pairs() else DIRECT_TAPS):
            # one direct pass, no columns and no int32 sums: every conv on the micro-kernel,
            # else few taps only (the first conv)
            wk = np.ascontiguousarray(Wq.transpose(2, 3, 1, 0), np.int16)  # (kh, kw, c, oc)
            args = (tuple(spec["stride"]), block["pool"], scale, bias, block["relu"], out_scale)
            steps.append(k.bind_conv_block(buf, wk, *args, dst))
            return
        if block["dense"]:
            Wk, taps = self._dense_weight(Wq, flat_from), 1
            chunks, cols = [(None, slice(0, len(buf)), len(buf))], buf
            dst = _view(dst, (len(dst), 1, 1, len(Wq)))
        else:
            Wk, taps = Wq.transpose(0, 2, 3, 1).reshape(len(Wq), -1), block["pool"] ** 2
            chunks, cols = self._columns(block, conv, buf, buf.dtype, False)
        Wk = np.ascontiguousarray(Wk)  # (oc, kh kw c): the product reads rows of both
        acc = np.empty((len(cols), len(Wq)), np.int32)
        for copy, part, rows in chunks:
            if copy is not None:
                steps.append(copy)
            steps.append(k.bind_gemm_nt(cols[:rows], Wk, acc[:rows]))
            sums = _view(acc[:rows], (taps, part.stop - part.start, *dst.shape[1:]))
            args = (sums, scale, bias, block["relu"])
            if nxt is None:
                steps.append(k.bind_dequantize(*args, dst[part]))
            else:
                steps.append(k.bind_requantize(*args, out_scale, dst[part]))


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
    """A model file's network as plain NumPy functions. Call it on float (n, c, h, w) -> logits.

    A Sequential of Conv2d / Linear blocks (with ReLU, tiled MaxPool2d, Flatten, Dropout), float
    or int8, runs as a compiled plan (_Plan: preallocated NHWC buffers, one matrix product per
    layer); any other network, or compiled=False, runs through the interpreter (FORWARD). A
    float plan equals the interpreter to float32 rounding (another summation order), an int8
    plan equals it to the bit. One NumpyModel may be called from several threads (buffers are
    per thread)."""

    def __init__(self, ckpt: Checkpoint, compiled: bool = True):
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
        self.plan = None
        try:
            parsed = _plan_blocks(ckpt.spec) if compiled else None
        except KeyError as exc:  # a spec without an argument its layer needs
            raise SerializationError(f"{ckpt.path}: layer spec lacks {exc}") from exc
        if parsed is not None:
            self.plan = _Plan(*parsed, self.weights, self.dtype)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Logits (n, k) for x (n, c, h, w), computed in the weights' dtype (float32)."""
        x = np.asarray(x, dtype=self.dtype)
        try:
            y = None if self.plan is None else self.plan(x)
            if y is None:
                y = FORWARD[self.spec["type"]](x, self.spec, self.weights, "")
            return y
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


def load(path: str | os.PathLike, compiled: bool = True) -> NumpyModel:
    """Read and verify a model file and return its NumPy-only network (NumpyModel's compiled)."""
    return NumpyModel(load_checkpoint(path), compiled)
