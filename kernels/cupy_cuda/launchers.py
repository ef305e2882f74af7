"""Launchers of the cupy_cuda flavour: allocate outputs, call an ElementwiseKernel, return.

Same signatures and semantics as the kernels/numpy_cpu kernels (their docstrings are the reference).
Each ElementwiseKernel is built from kernels/cupy_cuda/sources.py on first use; CuPy compiles it at
its first call (per dtype) and caches the binary, and it sizes the grid at one thread per element
of the non-raw output. GEMMs go through `xp.matmul` (cuBLAS); cuDNN is never used. The launchers
are written against `xp` read off the inputs and every output is allocated here and passed in, so
the tests can drive them with NumPy arrays and a g++ build of the same sources (no GPU needed).
"""

from __future__ import annotations

import functools
import sys
from types import SimpleNamespace

import numpy as np

from kernels.numpy_cpu import GENERIC, compose
from kernels.numpy_cpu.xp import array_module, conv_pool_shapes, out_size

from .sources import SOURCES

_kernels: dict = {}  # name -> the built kernel


def _build(source):
    """A cupy.ElementwiseKernel from a Source (CuPy is imported by table.py before any call)."""
    cupy = sys.modules["cupy"]
    return cupy.ElementwiseKernel(
        source.in_params, source.out_params, source.operation, source.name, preamble=source.preamble
    )


def _kernel(name: str):
    if name not in _kernels:
        _kernels[name] = _build(SOURCES[name])
    return _kernels[name]


def _geometry(kernel_size, stride, padding) -> tuple[int, ...]:
    """kh, kw, sh, sw, ph, pw in the order the sources take them."""
    return (*kernel_size, *stride, *padding)


INDEX_LIMIT = 2**31 - 1  # the 32-bit kernels' arrays have fewer elements than this


@functools.lru_cache(maxsize=512)
def _divisor(d: int) -> tuple[int, np.uint32, int]:
    """(d, m, s): a divisor as the sources' MG_DIV takes it. n // d == (umulhi(n, m) + n) >> s
    for 0 <= n < 2^31 with s = ceil(log2 d), m = floor(2^32 (2^s - d) / d) + 1 < 2^32."""
    d = int(d)
    if not 1 <= d <= INDEX_LIMIT:
        raise ValueError(f"divisor {d} outside [1, 2^31 - 1]")
    s = (d - 1).bit_length()
    # m as a NumPy uint32: CuPy then passes it to the uint32 parameter without a cast
    return d, np.uint32(((1 << 32) * ((1 << s) - d)) // d + 1), s


def _geometry32(kernel_size, stride, padding) -> tuple[int, ...]:
    """kh, kw, (sh, m, s), (sw, m, s), ph, pw: _GEOMETRY32 of the 32-bit sources."""
    return (*kernel_size, *_divisor(stride[0]), *_divisor(stride[1]), *padding)


# ---- convolution: im2col / col2im around a cuBLAS GEMM ----
def im2col(x, kernel_size, stride, padding):
    xp = array_module(x)
    n, c, h, w = x.shape
    oh = out_size(h, kernel_size[0], stride[0], padding[0])
    ow = out_size(w, kernel_size[1], stride[1], padding[1])
    cols = xp.empty((n * oh * ow, c * kernel_size[0] * kernel_size[1]), dtype=x.dtype)
    _kernel("im2col")(x, c, h, w, oh, ow, *_geometry(kernel_size, stride, padding), cols)
    return cols


def col2im(cols, x_shape, kernel_size, stride, padding):
    xp = array_module(cols)
    n, c, h, w = x_shape
    oh = out_size(h, kernel_size[0], stride[0], padding[0])
    ow = out_size(w, kernel_size[1], stride[1], padding[1])
    x = xp.empty(x_shape, dtype=cols.dtype)
    _kernel("col2im")(cols, c, h, w, oh, ow, *_geometry(kernel_size, stride, padding), x)
    return x


def _rows(gy):
    """gy (n, oc, oh, ow) -> (n*oh*ow, oc), the layout of the backward GEMMs."""
    n, oc, oh, ow = gy.shape
    rows = array_module(gy).empty((n * oh * ow, oc), dtype=gy.dtype)
    _kernel("nchw_to_rows")(gy, oc, oh * ow, rows)
    return rows


def conv2d_forward(x, W, b, stride, padding):
    xp = array_module(x)
    oc, _, kh, kw = W.shape
    n, _, h, w = x.shape
    oh, ow = out_size(h, kh, stride[0], padding[0]), out_size(w, kw, stride[1], padding[1])
    rows = xp.matmul(im2col(x, (kh, kw), stride, padding), W.reshape(oc, -1).T)  # (n*oh*ow, oc)
    y = xp.empty((n, oc, oh, ow), dtype=x.dtype)
    # the bias add rides on the transpose back to NCHW; without a bias a dummy is never read
    bias = b if b is not None else rows
    _kernel("rows_to_nchw")(rows, bias, b is not None, oc, oh * ow, y)
    return y


def conv2d_backward_input(gy, W, x_shape, stride, padding):
    oc, _, kh, kw = W.shape
    gcols = array_module(gy).matmul(_rows(gy), W.reshape(oc, -1))  # (n*oh*ow, c*kh*kw)
    return col2im(gcols, x_shape, (kh, kw), stride, padding)


def conv2d_backward_weight(gy, x, kernel_size, stride, padding):
    oc = gy.shape[1]
    gW = array_module(gy).matmul(_rows(gy).T, im2col(x, kernel_size, stride, padding))
    return gW.reshape(oc, x.shape[1], *kernel_size)


# ---- pooling ----
def _pool_shape(x_shape, kernel_size, stride, padding):
    n, c, h, w = x_shape
    return (
        n,
        c,
        out_size(h, kernel_size[0], stride[0], padding[0]),
        out_size(w, kernel_size[1], stride[1], padding[1]),
    )


def max_pool2d_forward(x, kernel_size, stride, padding):
    xp = array_module(x)
    shape = _pool_shape(x.shape, kernel_size, stride, padding)
    y, argmax = xp.empty(shape, dtype=x.dtype), xp.empty(shape, dtype=xp.int32)
    _kernel("max_pool2d_forward")(
        x, *x.shape[2:], *shape[2:], *_geometry(kernel_size, stride, padding), y, argmax
    )
    return y, argmax


def max_pool2d_backward(gy, argmax, x_shape, kernel_size, stride, padding):
    gx = array_module(gy).empty(x_shape, dtype=gy.dtype)
    _kernel("max_pool2d_backward")(
        gy, argmax, *x_shape[2:], *gy.shape[2:], *_geometry(kernel_size, stride, padding), gx
    )
    return gx


def avg_pool2d_forward(x, kernel_size, stride, padding):
    xp = array_module(x)
    shape = _pool_shape(x.shape, kernel_size, stride, padding)
    y = xp.empty(shape, dtype=x.dtype)
    _kernel("avg_pool2d_forward")(
        x, *x.shape[2:], *shape[2:], *_geometry(kernel_size, stride, padding), y
    )
    return y


def avg_pool2d_backward(gy, x_shape, kernel_size, stride, padding):
    gx = array_module(gy).empty(x_shape, dtype=gy.dtype)
    _kernel("avg_pool2d_backward")(
        gy, *x_shape[2:], *gy.shape[2:], *_geometry(kernel_size, stride, padding), gx
    )
    return gx


# ---- fused conv2d + bias + ReLU + max-pool ----
def _im2col_t(x, kernel_size, stride, padding, ones_row: bool):
    """x (n, c, h, w) -> channel-major columns (c*kh*kw [+ 1], n*oh*ow), the transpose of
    im2col's; with ones_row, a last row of ones (the bias row of the weight-gradient GEMM)."""
    xp = array_module(x)
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    oh, ow = out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)
    cols = xp.empty((c * kh * kw + ones_row, n * oh * ow), dtype=x.dtype)
    _kernel("im2col_t")(
        x,
        c,
        h,
        w,
        *_divisor(kw),
        sh,
        sw,
        ph,
        pw,
        *_divisor(n * oh * ow),
        *_divisor(oh * ow),
        *_divisor(ow),
        *_divisor(kh * kw),
        cols,
    )
    return cols


def _fused_fits32(x_shape, W_shape, oh, ow) -> bool:
    """Every array of the 32-bit fused path (x, the columns with their ones row, the conv output
    and its gradient) has at most INDEX_LIMIT elements."""
    n, c, h, w = x_shape
    oc, _, kh, kw = W_shape
    npix = n * oh * ow
    return max(n * c * h * w, (c * kh * kw + 1) * npix, oc * npix) <= INDEX_LIMIT


def conv2d_relu_max_pool2d_forward(x, W, b, stride, padding, pool_size, pool_stride, pool_padding):
    # 3 launches: im2col into channel-major columns (c*kh*kw, n*oh*ow), one GEMM z = W @ cols
    # giving the conv output channel-major (oc, n*oh*ow), and one kernel for bias + ReLU + pool +
    # argmax that writes only the pooled NCHW output: the conv output is never rectified or
    # transposed. Arrays past 2^31 elements take the composition of the 64-bit primitives instead
    xp = array_module(x)
    n = x.shape[0]
    oc, _, kh, kw = W.shape
    pool = (pool_size, pool_stride, pool_padding)
    oh, ow, qh, qw = conv_pool_shapes(x.shape, W.shape, stride, padding, *pool)
    if not _fused_fits32(x.shape, W.shape, oh, ow):
        return compose.conv2d_relu_max_pool2d_forward(_PRIMITIVES, x, W, b, stride, padding, *pool)
    z = xp.matmul(W.reshape(oc, -1), _im2col_t(x, (kh, kw), stride, padding, False))
    y = xp.empty((n, oc, qh, qw), dtype=x.dtype)
    argmax = xp.empty((n, oc, qh, qw), dtype=xp.int32)
    bias = b if b is not None else z  # without a bias a dummy is never read
    _kernel("bias_relu_max_pool2d_forward")(
        z,
        bias,
        b is not None,
        n,
        *_divisor(oc),
        oh,
        ow,
        *_divisor(qh),
        *_divisor(qw),
        *_geometry(pool_size, pool_stride, pool_padding),
        y,
        argmax,
    )
    return y, argmax


def conv2d_relu_max_pool2d_backward(
    gy, y, argmax, x, W, stride, padding, pool_size, pool_stride, pool_padding, need_gx
):
    # one kernel gathers gz, the conv-output gradient, channel-major (oc, n*oh*ow) straight from
    # the pooled windows; one GEMM gz @ [cols; 1]^T gives gW and gb together (the ones row of the
    # columns sums gz's rows: no reduction kernel, gz read once); if asked, gx = col2im(W^T @ gz)
    # (GEMM + col2im, both on channel-major columns): 3 launches, 5 with gx. gW and gb are views
    # of the GEMM's (oc, c*kh*kw + 1) output, so not contiguous
    xp = array_module(gy)
    n, c, h, w = x.shape
    oc, _, kh, kw = W.shape
    pool = (pool_size, pool_stride, pool_padding)
    oh, ow, qh, qw = conv_pool_shapes(x.shape, W.shape, stride, padding, *pool)
    if not _fused_fits32(x.shape, W.shape, oh, ow):
        return compose.conv2d_relu_max_pool2d_backward(
            _PRIMITIVES, gy, y, argmax, x, W, stride, padding, *pool, need_gx
        )
    gz = xp.empty((oc, n * oh * ow), dtype=gy.dtype)
    _kernel("relu_max_pool2d_backward")(
        gy,
        y,
        argmax,
        *_divisor(n),
        oc,
        *_divisor(oh),
        *_divisor(ow),
        qh,
        qw,
        *_geometry32(pool_size, pool_stride, pool_padding),
        gz,
    )
    k = c * kh * kw
    G = xp.matmul(gz, _im2col_t(x, (kh, kw), stride, padding, True).T)  # (oc, k + 1)
    gW, gb = G[:, :k].reshape(W.shape), G[:, k]
    gx = None
    if need_gx:
        gcols = xp.matmul(W.reshape(oc, k).T, gz)  # (k, n*oh*ow), channel-major
        gx = xp.empty(x.shape, dtype=gy.dtype)
        _kernel("col2im_t")(
            gcols,
            *_divisor(c),
            *_divisor(h),
            *_divisor(w),
            oh,
            ow,
            *_geometry32((kh, kw), stride, padding),
            n * oh * ow,
            gx,
        )
    return gx, gW, gb


# ---- elementwise and row-wise ----
def relu_forward(x):
    y = array_module(x).empty(x.shape, dtype=x.dtype)
    _kernel("relu_forward")(x, y)
    return y


def relu_backward(gy, y):
    gx = array_module(gy).empty(gy.shape, dtype=gy.dtype)
    _kernel("relu_backward")(gy, y, gx)
    return gx


def softmax_cross_entropy_forward(logits, t):
    xp = array_module(logits)
    n, k = logits.shape
    probs = xp.empty((n, k), dtype=logits.dtype)
    row_loss = xp.empty(n, dtype=logits.dtype)
    _kernel("softmax_cross_entropy_forward")(logits, t, k, probs, row_loss)
    return xp.asarray(row_loss.mean(), dtype=logits.dtype), probs


def softmax_cross_entropy_backward(probs, t, gloss):
    xp = array_module(probs)
    n, k = probs.shape
    glogits = xp.empty((n, k), dtype=probs.dtype)
    gloss = xp.asarray(gloss, dtype=probs.dtype).reshape(1)  # stays on the device: no sync
    _kernel("softmax_cross_entropy_backward")(probs, t, gloss, k, n, glogits)
    return glogits


def sgd_update(p, g, v, lr, momentum, nesterov, weight_decay):
    if momentum:
        _kernel("sgd_momentum")(g, lr, momentum, bool(nesterov), weight_decay, p, v)
    else:
        _kernel("sgd_plain")(g, lr, weight_decay, p)


def adam_update(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay):
    step_size = lr / (1 - beta1**step)
    bias2_sqrt = (1 - beta2**step) ** 0.5
    _kernel("adam")(g, step_size, beta1, beta2, bias2_sqrt, eps, weight_decay, p, m, v)


KERNELS = {
    "im2col": im2col,
    "col2im": col2im,
    "conv2d_forward": conv2d_forward,
    "conv2d_backward_input": conv2d_backward_input,
    "conv2d_backward_weight": conv2d_backward_weight,
    "max_pool2d_forward": max_pool2d_forward,
    "max_pool2d_backward": max_pool2d_backward,
    "avg_pool2d_forward": avg_pool2d_forward,
    "avg_pool2d_backward": avg_pool2d_backward,
    "relu_forward": relu_forward,
    "relu_backward": relu_backward,
    "softmax_cross_entropy_forward": softmax_cross_entropy_forward,
    "softmax_cross_entropy_backward": softmax_cross_entropy_backward,
    "sgd_update": sgd_update,
    "adam_update": adam_update,
    "conv2d_relu_max_pool2d_forward": conv2d_relu_max_pool2d_forward,
    "conv2d_relu_max_pool2d_backward": conv2d_relu_max_pool2d_backward,
}
# the kernels of this flavour's table (table.py's merge): the fused launchers compose its 64-bit
# primitives past INDEX_LIMIT (looked up at call time)
_PRIMITIVES = SimpleNamespace(**{**GENERIC, **KERNELS})
