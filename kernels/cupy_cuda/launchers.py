"""Launchers of the cupy_cuda flavour: allocate outputs, call an ElementwiseKernel, return.

Same signatures and semantics as the kernels/numpy_cpu kernels (their docstrings are the reference).
Each ElementwiseKernel is built from kernels/cupy_cuda/sources.py on first use; CuPy compiles it at
its first call (per dtype) and caches the binary, and it sizes the grid at one thread per element
of the non-raw output. GEMMs go through `xp.matmul` (cuBLAS) by default, or, with
gemm.GEMM = "own" (env MEDGRAD_CUPY_GEMM=own), through the flavour's own tiled kernels
(kernels/cupy_cuda/gemm.py: dense products and implicit-GEMM conv2d, which CUDA graphs can
capture); cuDNN is never used. The launchers
are written against `xp` read off the inputs and every output is allocated here and passed in, so
the tests can drive them with NumPy arrays and a g++ build of the same sources (no GPU needed).
"""

from __future__ import annotations

import functools
import math
import sys
from types import SimpleNamespace

import numpy as np

from kernels.numpy_cpu import GENERIC, compose, resample
from kernels.numpy_cpu.xp import array_module, conv_pool_shapes, out_size

from . import gemm
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


def _matmul(a, b):
    """a @ b of 2-D arrays: the own GEMM when gemm.use_own(dtype), else xp.matmul (cuBLAS)."""
    if gemm.use_own(a.dtype):
        return gemm.matmul(a, b)
    return array_module(a).matmul(a, b)


def matmul(a, b):
    """a @ b (numpy_cpu.linalg.matmul): 2-D products of one dtype through _matmul (the own GEMM
    when selected: a dense layer a CUDA graph can record), batched ones through xp.matmul."""
    if a.ndim == 2 and b.ndim == 2 and a.dtype == b.dtype:
        return _matmul(a, b)
    return array_module(a).matmul(a, b)


def _own_conv(x_shape, W_shape, stride, padding, dtype) -> bool:
    """The implicit-GEMM conv2d kernels run this layer (selected, and within their 32-bit indices)."""
    return gemm.use_own(dtype) and gemm.fits(x_shape, W_shape, stride, padding)


# ---- convolution: im2col / col2im around a cuBLAS GEMM, or the own implicit GEMM ----
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
    if _own_conv(x.shape, W.shape, stride, padding, x.dtype):
        return gemm.conv2d_forward(x, W, b, stride, padding)
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
    if _own_conv(x_shape, W.shape, stride, padding, gy.dtype):
        gcols = gemm.conv2d_input_columns(gy, W)  # gy read NCHW: no _rows transpose
    else:
        gcols = array_module(gy).matmul(_rows(gy), W.reshape(oc, -1))  # (n*oh*ow, c*kh*kw)
    return col2im(gcols, x_shape, (kh, kw), stride, padding)


def conv2d_backward_weight(gy, x, kernel_size, stride, padding):
    oc = gy.shape[1]
    W_shape = (oc, x.shape[1], *kernel_size)
    if _own_conv(x.shape, W_shape, stride, padding, gy.dtype):
        return gemm.conv2d_weight_grad(gy, x, kernel_size, stride, padding)
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
    if _own_conv(x.shape, W.shape, stride, padding, x.dtype):  # columns never materialised
        z = gemm.conv_columns_product(W.reshape(oc, -1), x, (kh, kw), stride, padding)
    else:
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
    if _own_conv(x.shape, W.shape, stride, padding, gy.dtype):  # columns never materialised
        G = gemm.conv_columns_product(gz, x, (kh, kw), stride, padding, ones_row=True, trans=True)
    else:
        G = xp.matmul(gz, _im2col_t(x, (kh, kw), stride, padding, True).T)  # (oc, k + 1)
    gW, gb = G[:, :k].reshape(W.shape), G[:, k]
    gx = None
    if need_gx:
        gcols = _matmul(W.reshape(oc, k).T, gz)  # (k, n*oh*ow), channel-major
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


# ---- volumes: conv3d by vol2col / col2vol around a cuBLAS GEMM, 3-D pools ----
COLS_LIMIT = 2**27  # elements of one vol2col matrix; a larger batch runs in chunks of images


def _geometry3(kernel_size, stride, padding) -> tuple[int, ...]:
    """kd, kh, kw, sd, sh, sw, pd, ph, pw in the order the 3-D sources take them."""
    return (*kernel_size, *stride, *padding)


def _out3(spatial, kernel_size, stride, padding) -> tuple[int, int, int]:
    return tuple(map(out_size, spatial, kernel_size, stride, padding))


def _image_chunks(n: int, per_image: int):
    """[b0, b1) ranges over the batch, each with at most COLS_LIMIT column elements (one image
    at least): the columns of a 3-D layer at 64^3 reach gigabytes otherwise."""
    step = max(1, COLS_LIMIT // max(per_image, 1))
    return [(b0, min(b0 + step, n)) for b0 in range(0, n, step)]


def vol2col(x, kernel_size, stride, padding):
    """x (n, c, d, h, w) -> cols (n*od*oh*ow, c*kd*kh*kw): numpy_cpu's im2col on 3 axes."""
    xp = array_module(x)
    n, c, *spatial = x.shape
    out = _out3(spatial, kernel_size, stride, padding)
    cols = xp.empty((n * math.prod(out), c * math.prod(kernel_size)), dtype=x.dtype)
    _kernel("vol2col")(x, c, *spatial, *out, *_geometry3(kernel_size, stride, padding), cols)
    return cols


def col2vol(cols, x_shape, kernel_size, stride, padding, out=None):
    """The adjoint of vol2col: cols -> x of x_shape (n, c, d, h, w), gathered (deterministic);
    written into `out` (C-contiguous, x_shape) when given."""
    _, c, *spatial = x_shape
    osize = _out3(spatial, kernel_size, stride, padding)
    x = array_module(cols).empty(x_shape, dtype=cols.dtype) if out is None else out
    _kernel("col2vol")(cols, c, *spatial, *osize, *_geometry3(kernel_size, stride, padding), x)
    return x


def _rows3(gy):
    """gy (n, oc, od, oh, ow) -> (n*od*oh*ow, oc), the layout of the backward GEMMs."""
    n, oc, *out = gy.shape
    rows = array_module(gy).empty((n * math.prod(out), oc), dtype=gy.dtype)
    _kernel("nchw_to_rows")(gy, oc, math.prod(out), rows)
    return rows


def conv3d_forward(x, W, b, stride, padding):
    # per chunk of images: vol2col, one GEMM (cuBLAS), and the transpose back to NCDHW with the
    # bias add (rows_to_nchw on od*oh*ow pixels)
    xp = array_module(x)
    n, c, *spatial = x.shape
    oc, k = W.shape[0], W.shape[2:]
    out = _out3(spatial, k, stride, padding)
    opix = math.prod(out)
    y = xp.empty((n, oc, *out), dtype=x.dtype)
    W_mat = W.reshape(oc, -1).T
    for b0, b1 in _image_chunks(n, opix * c * math.prod(k)):
        rows = _matmul(vol2col(x[b0:b1], k, stride, padding), W_mat)  # (images*opix, oc)
        bias = b if b is not None else rows  # without a bias a dummy is never read
        _kernel("rows_to_nchw")(rows, bias, b is not None, oc, opix, y[b0:b1])
    return y


def conv3d_backward_input(gy, W, x_shape, stride, padding):
    # per chunk of images: gcols = gy_rows @ W_mat (cuBLAS), then col2vol gathers them
    xp = array_module(gy)
    oc, k = W.shape[0], W.shape[2:]
    n, c = x_shape[:2]
    gx = xp.empty(x_shape, dtype=gy.dtype)
    W_mat = W.reshape(oc, -1)
    for b0, b1 in _image_chunks(n, math.prod(gy.shape[2:]) * c * math.prod(k)):
        gcols = _matmul(_rows3(gy[b0:b1]), W_mat)
        col2vol(gcols, (b1 - b0, *x_shape[1:]), k, stride, padding, out=gx[b0:b1])
    return gx


def conv3d_backward_weight(gy, x, kernel_size, stride, padding):
    # gW = sum over chunks of images of gy_rows^T @ vol2col(x) (cuBLAS), chunks in batch order
    n, c = x.shape[:2]
    oc = gy.shape[1]
    gW = None
    for b0, b1 in _image_chunks(n, math.prod(gy.shape[2:]) * c * math.prod(kernel_size)):
        part = _matmul(_rows3(gy[b0:b1]).T, vol2col(x[b0:b1], kernel_size, stride, padding))
        gW = part if gW is None else gW + part
    return gW.reshape(oc, c, *kernel_size)


def max_pool3d_forward(x, kernel_size, stride, padding):
    xp = array_module(x)
    out = _out3(x.shape[2:], kernel_size, stride, padding)
    shape = (*x.shape[:2], *out)
    y, argmax = xp.empty(shape, dtype=x.dtype), xp.empty(shape, dtype=xp.int32)
    _kernel("max_pool3d_forward")(
        x, *x.shape[2:], *out, *_geometry3(kernel_size, stride, padding), y, argmax
    )
    return y, argmax


def max_pool3d_backward(gy, argmax, x_shape, kernel_size, stride, padding):
    gx = array_module(gy).empty(x_shape, dtype=gy.dtype)
    _kernel("max_pool3d_backward")(
        gy, argmax, *x_shape[2:], *gy.shape[2:], *_geometry3(kernel_size, stride, padding), gx
    )
    return gx


def avg_pool3d_forward(x, kernel_size, stride, padding):
    out = _out3(x.shape[2:], kernel_size, stride, padding)
    y = array_module(x).empty((*x.shape[:2], *out), dtype=x.dtype)
    _kernel("avg_pool3d_forward")(
        x, *x.shape[2:], *out, *_geometry3(kernel_size, stride, padding), y
    )
    return y


def avg_pool3d_backward(gy, x_shape, kernel_size, stride, padding):
    gx = array_module(gy).empty(x_shape, dtype=gy.dtype)
    _kernel("avg_pool3d_backward")(
        gy, *x_shape[2:], *gy.shape[2:], *_geometry3(kernel_size, stride, padding), gx
    )
    return gx


# ---- adaptive average pools and interpolation: 2-D arrays run as volumes of depth 1 ----
def _as_volume(spatial) -> tuple[int, int, int]:
    """(d, h, w) of 2 or 3 spatial sizes: a 2-D array is a volume of depth 1."""
    return tuple(spatial) if len(spatial) == 3 else (1, *spatial)


def adaptive_avg_pool_forward(x, output_size):
    y = array_module(x).empty((*x.shape[:2], *output_size), dtype=x.dtype)
    _kernel("adaptive_avg_pool_forward")(x, *_as_volume(x.shape[2:]), *_as_volume(output_size), y)
    return y


def adaptive_avg_pool_backward(gy, x_shape):
    gx = array_module(gy).empty(x_shape, dtype=gy.dtype)
    _kernel("adaptive_avg_pool_backward")(
        gy, *_as_volume(x_shape[2:]), *_as_volume(gy.shape[2:]), gx
    )
    return gx


@functools.lru_cache(maxsize=256)
def _resample_tables(in_shape, out_shape, mode, align_corners, scales, dtype_str):
    """Host tables of every axis as a volume's (d, h, w): per axis (i0 int32, i1 int32, lam of
    the dtype, lo int32, hi int32), from numpy_cpu's resample.tables (the coordinate rules live
    there only). Outputs lo[j] <= o < hi[j] are the run that reads input j (i0 or i1 == j)."""
    axes = resample.tables(in_shape, out_shape, mode, align_corners, scales, np.dtype(dtype_str))
    if len(axes) == 2:  # the depth axis of a 2-D array: length 1, output 0 reads input 0
        axes = [(np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros(1, dtype_str)), *axes]
    out = []
    for size, (i0, i1, lam) in zip(_as_volume(in_shape), axes, strict=True):
        j = np.arange(size)
        lo = np.minimum(np.searchsorted(i0, j, "left"), np.searchsorted(i1, j, "left"))
        hi = np.maximum(np.searchsorted(i0, j, "right"), np.searchsorted(i1, j, "right"))
        out.append(
            tuple(a.astype(np.int32) for a in (i0, i1))
            + (lam.astype(dtype_str),)
            + tuple(a.astype(np.int32) for a in (lo, hi))
        )
    return tuple(out)


def _device_tables(xp, in_shape, out_shape, mode, align_corners, scales, dtype):
    """_resample_tables copied to x's device: ([i0, i1, lam] x 3 axes, [lo, hi] x 3 axes)."""
    axes = _resample_tables(
        tuple(in_shape),
        tuple(out_shape),
        mode,
        bool(align_corners),
        tuple(scales),
        np.dtype(dtype).str,
    )
    forward = [xp.asarray(a) for axis in axes for a in axis[:3]]
    runs = [xp.asarray(a) for axis in axes for a in axis[3:]]
    return forward, runs


def interpolate_forward(x, size, mode, align_corners, scales):
    xp = array_module(x)
    y = xp.empty((*x.shape[:2], *size), dtype=x.dtype)
    tables, _ = _device_tables(xp, x.shape[2:], size, mode, align_corners, scales, x.dtype)
    _kernel("interpolate_forward")(
        x,
        *tables,
        *_as_volume(x.shape[2:]),
        *_as_volume(size),
        mode != "nearest",
        x.ndim == 5,
        y,
    )
    return y


def interpolate_backward(gy, x_shape, mode, align_corners, scales):
    xp = array_module(gy)
    gx = xp.empty(x_shape, dtype=gy.dtype)
    tables, runs = _device_tables(
        xp, x_shape[2:], gy.shape[2:], mode, align_corners, scales, gy.dtype
    )
    _kernel("interpolate_backward")(
        gy, *tables, *runs, *_as_volume(x_shape[2:]), *_as_volume(gy.shape[2:]), gx
    )
    return gx


# ---- normalisation over a (p, q, r) view ----
NORM_THREADS = 2**16  # threads of the per-lane reductions (about), lanes per slice at most 1024


def _lanes(q: int, count: int) -> int:
    """How many lanes (threads) share one slice's `count` elements: enough for NORM_THREADS
    threads in all, at most 1024 (the merge runs over them in one thread) and count."""
    return max(1, min(count, 1024, -(-NORM_THREADS // q)))


def norm_moments(x):
    # two launches: per-lane shifted sums in double (q*lanes threads), then one thread per slice
    # adds its lanes and writes mean and var
    xp = array_module(x)
    p, q, r = x.shape
    count = p * r
    lanes = _lanes(q, count)
    lane_sum = xp.empty(q * lanes, dtype=xp.float64)
    lane_squares = xp.empty(q * lanes, dtype=xp.float64)
    _kernel("norm_lane_moments")(x, q, r, count, lanes, lane_sum, lane_squares)
    mean, var = xp.empty(q, dtype=x.dtype), xp.empty(q, dtype=x.dtype)
    _kernel("norm_merge_moments")(x, lane_sum, lane_squares, r, count, lanes, mean, var)
    return mean, var


def _like(x, *arrays):
    """The per-slice arrays in x's dtype (one T in the sources); None stays None."""
    return [a if a is None else a.astype(x.dtype, copy=False) for a in arrays]


def norm_forward(x, mean, rstd, weight, bias):
    p, q, r = x.shape
    mean, rstd, weight, bias = _like(x, mean, rstd, weight, bias)
    y = array_module(x).empty(x.shape, dtype=x.dtype)
    _kernel("norm_forward")(
        x,
        mean,
        rstd,
        weight if weight is not None else rstd,  # a dummy when absent: never read
        bias if bias is not None else rstd,
        weight is not None,
        bias is not None,
        q,
        r,
        y,
    )
    return y


def norm_backward(gy, x, mean, rstd, weight):
    # three launches: per-lane sums (double) of gy and gy * xhat, one thread per slice adds its lanes
    # (gbias, gweight), then gx elementwise
    xp = array_module(gy)
    p, q, r = x.shape
    mean, rstd, weight = _like(x, mean, rstd, weight)
    count = p * r
    lanes = _lanes(q, count)
    lane_gb = xp.empty(q * lanes, dtype=xp.float64)
    lane_gw = xp.empty(q * lanes, dtype=xp.float64)
    _kernel("norm_lane_grads")(gy, x, mean, rstd, q, r, count, lanes, lane_gb, lane_gw)
    gbias, gweight = xp.empty(q, dtype=x.dtype), xp.empty(q, dtype=x.dtype)
    _kernel("norm_merge_sums")(lane_gb, lane_gw, lanes, gbias, gweight)
    gx = xp.empty(x.shape, dtype=x.dtype)
    _kernel("norm_backward_input")(
        gy,
        x,
        mean,
        rstd,
        weight if weight is not None else rstd,  # a dummy when absent: never read
        weight is not None,
        gweight,
        gbias,
        q,
        r,
        count,
        gx,
    )
    return gx, gweight, gbias


# ---- activations ----
def leaky_relu_forward(x, negative_slope):
    y = array_module(x).empty(x.shape, dtype=x.dtype)
    _kernel("leaky_relu_forward")(x, negative_slope, y)
    return y


def leaky_relu_backward(gy, x, negative_slope):
    gx = array_module(gy).empty(gy.shape, dtype=gy.dtype)
    _kernel("leaky_relu_backward")(gy, x, negative_slope, gx)
    return gx


def gelu_forward(x):
    y = array_module(x).empty(x.shape, dtype=x.dtype)
    _kernel("gelu_forward")(x, y)
    return y


def gelu_backward(gy, x):
    gx = array_module(gy).empty(gy.shape, dtype=gy.dtype)
    _kernel("gelu_backward")(gy, x, gx)
    return gx


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
    "conv3d_forward": conv3d_forward,
    "conv3d_backward_input": conv3d_backward_input,
    "conv3d_backward_weight": conv3d_backward_weight,
    "max_pool3d_forward": max_pool3d_forward,
    "max_pool3d_backward": max_pool3d_backward,
    "avg_pool3d_forward": avg_pool3d_forward,
    "avg_pool3d_backward": avg_pool3d_backward,
    "adaptive_avg_pool_forward": adaptive_avg_pool_forward,
    "adaptive_avg_pool_backward": adaptive_avg_pool_backward,
    "interpolate_forward": interpolate_forward,
    "interpolate_backward": interpolate_backward,
    "norm_moments": norm_moments,
    "norm_forward": norm_forward,
    "norm_backward": norm_backward,
    "leaky_relu_forward": leaky_relu_forward,
    "leaky_relu_backward": leaky_relu_backward,
    "gelu_forward": gelu_forward,
    "gelu_backward": gelu_backward,
    "matmul": matmul,
}
# the kernels of this flavour's table (table.py's merge): the fused launchers compose its 64-bit
# primitives past INDEX_LIMIT (looked up at call time)
_PRIMITIVES = SimpleNamespace(**{**GENERIC, **KERNELS})
