"""Int8 arithmetic for quantized inference (engine.deploy's Quant* layers): the NumPy reference."""

from __future__ import annotations

from functools import partial

import numpy as np


def int8_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a int8 (m, k), b int8 (k, n) -> int32 (m, n): c[i, j] = sum_t a[i, t] b[t, j], every
    product and sum in int32 (|c| <= k 127^2: exact for k < 133,000). NumPy's integer matmul
    has no BLAS: this is the slow, always-present fallback of the Numba kernel."""
    return a.astype(np.int32) @ b.astype(np.int32)


def quantize_int8(x: np.ndarray, scale: float) -> np.ndarray:
    """Symmetric per-tensor quantization: int8 clip(rint(x / scale), -127, 127) (ties to even)."""
    return np.clip(np.rint(x / np.float32(scale)), -127, 127).astype(np.int8)


def int8_matmul_nt(a: np.ndarray, bt: np.ndarray) -> np.ndarray:
    """a int8 (m, k), bt int8 (n, k) -> int32 (m, n) = a @ bt^T in int32 (Linear's weight
    layout (out, in), read as it is stored)."""
    return a.astype(np.int32) @ bt.astype(np.int32).T


# ---- engine.deploy's compiled int8 plan (NHWC buffers, preallocated outputs) ----


def pairs() -> bool:
    """Whether the kernels have a pair-wise integer micro-kernel (numba_cpu's, on AVX2): no."""
    return False


def code_dtype() -> np.dtype:
    """The dtype engine.deploy's int8 plan keeps quantized activations in: int8."""
    return np.dtype(np.int8)


def quantize_nhwc(x: np.ndarray, scale: np.float32, out: np.ndarray) -> None:
    """out int8 (n, h, w, c) = quantize_int8(x, scale), x float (n, h, w, c), any strides (the
    plan passes an NCHW input transposed, and writes inside a padded buffer)."""
    out[...] = quantize_int8(x, scale)


def int8_gemm_nt(a: np.ndarray, bt: np.ndarray, out: np.ndarray) -> None:
    """out int32 (m, n) = a int8 (m, k) @ bt int8 (n, k)^T, summed in int32 (as int8_matmul)."""
    np.matmul(a.astype(np.int32), bt.astype(np.int32).T, out=out)


def _rescaled(acc, scale, bias, relu: bool) -> np.ndarray:
    """float32 acc * scale[o] (+ bias[o]), then ReLU, then the max over the taps axis 0:
    engine.deploy's float layers (rescale, bias, ReLU, max-pool) in their order."""
    y = acc.astype(np.float32) * scale
    if bias is not None:
        y = y + bias
    if relu:
        y = np.maximum(y, 0)
    return y.max(axis=0)


def requantize(acc, scale, bias, relu: bool, out_scale, out: np.ndarray) -> None:
    """The epilogue of an int8 layer that feeds another: acc int32 (taps, n, h, w, c) (taps:
    the positions of each max-pool tile, 1 without a pool) rescaled by scale (c,) float32, plus
    bias (c,) float32 or None, ReLU if relu, max over the taps, then quantized with out_scale
    into out int8 (n, h, w, c), any strides."""
    out[...] = quantize_int8(_rescaled(acc, scale, bias, relu), out_scale)


def dequantize(acc, scale, bias, relu: bool, out: np.ndarray) -> None:
    """requantize's steps without the quantization: out float32 (the network's last layer)."""
    out[...] = _rescaled(acc, scale, bias, relu)


def conv_block(xpad, wk, stride: tuple, pool: int, scale, bias, relu: bool, out_scale, out):
    """An int8 conv block read straight from its padded NHWC input, without a columns buffer:
    xpad int8 (n, hp, wp, c) (the conv's zero padding included), wk (kh, kw, c, oc) integer
    weights in [-127, 127] (int8 or wider), stride (sh, sw), pool p (a tiled p x p max-pool; 1
    for none). The int32 sums of the conv outputs the pool tiles use, then requantize into out
    int8 (n, oh, ow, oc) with out_scale, or dequantize into out float32 (out_scale unused);
    (oh, ow) = the pooled output size, out any strides. Equal to the plan's columns,
    int8_gemm_nt and requantize / dequantize (the same sums and the same float32 steps)."""
    kh, kw, c, oc = wk.shape
    n, oh, ow = out.shape[:3]
    (sh, sw), p = stride, pool
    s0, s1, s2, s3 = xpad.strides
    shape = (p, p, n, oh, ow, kh, kw, c)  # [u, v, b, i, j]: the window of output (i p + u, j p + v)
    strides = (s1 * sh, s2 * sw, s0, s1 * sh * p, s2 * sw * p, s1, s2, s3)
    windows = np.lib.stride_tricks.as_strided(xpad, shape, strides, writeable=False)
    cols = windows.reshape(-1, kh * kw * c).astype(np.int32)
    acc = (cols @ wk.reshape(-1, oc).astype(np.int32)).reshape(p * p, n, oh, ow, oc)
    if out.dtype.kind == "i":  # int8 codes: requantize
        requantize(acc, scale, bias, relu, out_scale, out)
    else:
        dequantize(acc, scale, bias, relu, out)


# ---- the plan's steps: each kernel above with its arguments bound once (a call with none) ----
# Numba's versions also prepare their arguments here (dtype, layout, the unused output), so that
# a plan step is the compiled kernel's call and nothing else.


def bind_conv_block(xpad, wk, stride, pool, scale, bias, relu, out_scale, out):
    """partial(conv_block, ...): run it with no arguments."""
    return partial(conv_block, xpad, wk, stride, pool, scale, bias, relu, out_scale, out)


def bind_requantize(acc, scale, bias, relu, out_scale, out):
    """partial(requantize, ...)."""
    return partial(requantize, acc, scale, bias, relu, out_scale, out)


def bind_dequantize(acc, scale, bias, relu, out):
    """partial(dequantize, ...)."""
    return partial(dequantize, acc, scale, bias, relu, out)


def bind_gemm_nt(a, bt, out):
    """partial(int8_gemm_nt, ...)."""
    return partial(int8_gemm_nt, a, bt, out)
