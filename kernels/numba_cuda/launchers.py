"""Launchers of the numba_cuda flavour: allocate outputs, size the grid, launch a body, return.

Same signatures and semantics as the kernels/numpy_cpu kernels (their docstrings are the reference).
Written against `xp` read off the inputs, so the same launchers drive CuPy arrays on a GPU and NumPy
arrays under NUMBA_ENABLE_CUDASIM=1 (how CI tests them without a GPU); this module never imports
CuPy. On a GPU every body runs on CuPy's current stream, so it is ordered with CuPy's own kernels
and GEMMs. GEMMs go through `xp.matmul` (cuBLAS on a GPU).
"""

from __future__ import annotations

import math
import sys
import warnings

import numpy as np
from numba import cuda

from kernels.numpy_cpu import KERNELS as NUMPY_KERNELS
from kernels.numpy_cpu.resample import tables
from kernels.numpy_cpu.xp import array_module, conv_pool_shapes, out_size

from . import bodies, bodies_norm, bodies_resample

_FEW_BLOCKS = 128  # Numba's low-occupancy warning threshold
_streams: dict = {}  # CuPy stream pointer -> the Numba stream object for it
_LONG_SLICE = 1024  # elements of a norm slice from which its block has REDUCE_THREADS threads


def _stream(a):
    """The Numba stream to launch on: 0 for NumPy (simulator); CuPy's current stream on a GPU."""
    if array_module(a).__name__ != "cupy":
        return 0
    ptr = sys.modules["cupy"].cuda.get_current_stream().ptr
    if ptr not in _streams:
        # CuPy's null stream is the legacy default stream (ptr 0); a non-null one is wrapped as is
        _streams[ptr] = cuda.legacy_default_stream() if ptr == 0 else cuda.external_stream(ptr)
    return _streams[ptr]


def launch(body, size: int, *args) -> None:
    """Run `body` with one thread per element of an output of `size` elements (1-D grid)."""
    if size == 0:
        return
    blocks = (size + bodies.THREADS - 1) // bodies.THREADS
    configured = body[blocks, bodies.THREADS, _stream(args[0])]  # a fresh launch configuration:
    # the simulator's body[...] reconfigures the body itself, so configurations are never cached
    if blocks >= _FEW_BLOCKS:
        configured(*args)
        return
    with warnings.catch_warnings():
        # Numba warns about grids under 128 blocks; small layers (biases, batch 1) are legitimate
        warnings.filterwarnings("ignore", message=".*Grid size")
        configured(*args)


def _flat(a):
    """A 1-D view of a C-contiguous array (the elementwise bodies index flat)."""
    return a.reshape(-1)


# ---- window geometry: a 2-D op is the 3-D body at depth 1 ----
def _volume(a):
    """a (n, c, h, w) -> the (n, c, 1, h, w) view the bodies take; a 5-D array as it is."""
    return a if a.ndim == 5 else a.reshape(*a.shape[:2], 1, *a.shape[2:])


def _geometry(kernel_size, stride, padding) -> tuple:
    """(kd, kh, kw, sd, sh, sw, pd, ph, pw) of a 2-D or 3-D window op (2-D: kd = sd = 1, pd = 0)."""
    lead = 3 - len(kernel_size)
    return (*(1,) * lead, *kernel_size, *(1,) * lead, *stride, *(0,) * lead, *padding)


def _out(spatial, kernel_size, stride, padding) -> tuple:
    """The output's spatial shape: one out_size per axis."""
    return tuple(map(out_size, spatial, kernel_size, stride, padding))


def _out3(out) -> tuple:
    """(od, oh, ow) of a 2-D or 3-D output shape (2-D: od = 1)."""
    return (*(1,) * (3 - len(out)), *out)


# ---- convolution (2-D and 3-D): im2col / col2im around a GEMM ----
def im2col(x, kernel_size, stride, padding):
    xp = array_module(x)
    out = _out(x.shape[2:], kernel_size, stride, padding)
    n, c = x.shape[:2]
    cols = xp.empty((n * math.prod(out), c * math.prod(kernel_size)), dtype=x.dtype)
    geometry = _geometry(kernel_size, stride, padding)
    launch(bodies.vol2col, cols.size, _volume(x), cols, *geometry, *_out3(out))
    return cols


def col2im(cols, x_shape, kernel_size, stride, padding):
    xp = array_module(cols)
    out = _out(x_shape[2:], kernel_size, stride, padding)
    x = xp.empty(x_shape, dtype=cols.dtype)
    geometry = _geometry(kernel_size, stride, padding)
    launch(bodies.col2vol, x.size, xp.ascontiguousarray(cols), _volume(x), *geometry, *_out3(out))
    return x


def _rows(gy):
    """gy (n, oc, *o) -> (n*prod(o), oc), the GEMM layout."""
    n, oc = gy.shape[:2]
    rows = array_module(gy).empty((gy.size // oc, oc), dtype=gy.dtype)
    launch(bodies.channels_to_rows, rows.size, gy.reshape(n, oc, -1), rows)
    return rows


def conv_forward(x, W, b, stride, padding):
    xp = array_module(x)
    n, oc, k = x.shape[0], W.shape[0], W.shape[2:]
    rows = xp.matmul(im2col(x, k, stride, padding), W.reshape(oc, -1).T)  # (n*prod(o), oc)
    y = xp.empty((n, oc, *_out(x.shape[2:], k, stride, padding)), dtype=x.dtype)
    # the bias add is fused into the transpose back to (n, oc, *o); a dummy bias keeps one
    # specialisation
    bias = b if b is not None else xp.zeros(1, dtype=x.dtype)
    launch(bodies.rows_to_channels, y.size, rows, bias, b is not None, y.reshape(n, oc, -1))
    return y


def conv_backward_input(gy, W, x_shape, stride, padding):
    oc = W.shape[0]
    gcols = array_module(gy).matmul(_rows(gy), W.reshape(oc, -1))  # (n*prod(o), c*prod(k))
    return col2im(gcols, x_shape, W.shape[2:], stride, padding)


def conv_backward_weight(gy, x, kernel_size, stride, padding):
    oc = gy.shape[1]
    gW = array_module(gy).matmul(_rows(gy).T, im2col(x, kernel_size, stride, padding))
    return gW.reshape(oc, x.shape[1], *kernel_size)


# the named 2-D and 3-D kernels are the launchers above (the rank is len(kernel_size))
conv2d_forward = conv3d_forward = conv_forward
conv2d_backward_input = conv3d_backward_input = conv_backward_input
conv2d_backward_weight = conv3d_backward_weight = conv_backward_weight


# ---- pooling (2-D and 3-D) ----
def max_pool_forward(x, kernel_size, stride, padding):
    xp = array_module(x)
    shape = (*x.shape[:2], *_out(x.shape[2:], kernel_size, stride, padding))
    y, argmax = xp.empty(shape, dtype=x.dtype), xp.empty(shape, dtype=xp.int32)
    geometry = _geometry(kernel_size, stride, padding)
    launch(bodies.max_pool_forward, y.size, _volume(x), _volume(y), _volume(argmax), *geometry)
    return y, argmax


def max_pool_backward(gy, argmax, x_shape, kernel_size, stride, padding):
    gx = array_module(gy).empty(x_shape, dtype=gy.dtype)
    geometry = _geometry(kernel_size, stride, padding)
    args = _volume(gy), _volume(argmax), _volume(gx)
    launch(bodies.max_pool_backward, gx.size, *args, *geometry)
    return gx


def avg_pool_forward(x, kernel_size, stride, padding):
    xp = array_module(x)
    y = xp.empty((*x.shape[:2], *_out(x.shape[2:], kernel_size, stride, padding)), dtype=x.dtype)
    geometry = _geometry(kernel_size, stride, padding)
    launch(bodies.avg_pool_forward, y.size, _volume(x), _volume(y), *geometry)
    return y


def avg_pool_backward(gy, x_shape, kernel_size, stride, padding):
    gx = array_module(gy).empty(x_shape, dtype=gy.dtype)
    geometry = _geometry(kernel_size, stride, padding)
    launch(bodies.avg_pool_backward, gx.size, _volume(gy), _volume(gx), *geometry)
    return gx


max_pool2d_forward = max_pool3d_forward = max_pool_forward
max_pool2d_backward = max_pool3d_backward = max_pool_backward
avg_pool2d_forward = avg_pool3d_forward = avg_pool_forward
avg_pool2d_backward = avg_pool3d_backward = avg_pool_backward


def adaptive_avg_pool_forward(x, output_size):
    y = array_module(x).empty((*x.shape[:2], *output_size), dtype=x.dtype)
    launch(bodies_resample.adaptive_avg_pool_forward, y.size, _volume(x), _volume(y))
    return y


def adaptive_avg_pool_backward(gy, x_shape):
    gx = array_module(gy).empty(x_shape, dtype=gy.dtype)
    launch(bodies_resample.adaptive_avg_pool_backward, gx.size, _volume(gy), _volume(gx))
    return gx


# ---- interpolation: the reference's host tables, packed per axis (d, h, w) ----
def _resample_tables(in_spatial, out_spatial, mode, align_corners, scales, dtype, xp):
    """(index (3, 2, L) int64, lam (3, L) dtype, runs (3, 2, M) int64) on xp's device, from
    kernels.numpy_cpu.resample.tables (depth 1 in 2-D: index 0, weight 0). Along axis a, output o
    reads i0 = index[a, 0, o], i1 = index[a, 1, o] with weight lam[a, o]; the outputs reading input
    j are [runs[a, 0, j], runs[a, 1, j]): those with i1 >= j and i0 <= j (i1 is i0 or i0 + 1)."""
    axes = tables(in_spatial, out_spatial, mode, align_corners, scales, dtype)
    sizes = (*(1,) * (3 - len(axes)), *in_spatial)
    if len(axes) == 2:
        axes = [(np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros(1, dtype)), *axes]
    index = np.zeros((3, 2, max(len(lam) for *_, lam in axes)), np.int64)
    lam = np.zeros((3, index.shape[2]), dtype)
    runs = np.zeros((3, 2, max(sizes)), np.int64)
    for a, ((i0, i1, weights), size) in enumerate(zip(axes, sizes, strict=True)):
        index[a, :, : len(i0)] = i0, i1
        lam[a, : len(i0)] = weights
        runs[a, 0, :size] = np.searchsorted(i1, np.arange(size), side="left")
        runs[a, 1, :size] = np.searchsorted(i0, np.arange(size), side="right")
    return xp.asarray(index), xp.asarray(lam), xp.asarray(runs)


def interpolate_forward(x, size, mode, align_corners, scales):
    xp = array_module(x)
    y = xp.empty((*x.shape[:2], *size), dtype=x.dtype)
    index, lam, _ = _resample_tables(x.shape[2:], size, mode, align_corners, scales, x.dtype, xp)
    body = bodies_resample.interpolate_forward
    launch(body, y.size, _volume(x), _volume(y), index, lam, mode != "nearest")
    return y


def interpolate_backward(gy, x_shape, mode, align_corners, scales):
    xp = array_module(gy)
    gx = xp.empty(x_shape, dtype=gy.dtype)
    index, lam, runs = _resample_tables(
        x_shape[2:], gy.shape[2:], mode, align_corners, scales, gy.dtype, xp
    )
    body = bodies_resample.interpolate_backward
    launch(body, gx.size, _volume(gy), _volume(gx), index, lam, runs)
    return gx


# ---- normalisation: one block per slice for the reductions ----
def launch_per_slice(body, shape, *args) -> None:
    """Run a reduction body over a (p, q, r) view with one block per slice j < q of p*r elements:
    a warp for short slices (fewer idle threads), REDUCE_THREADS threads for long ones."""
    p, q, r = shape
    if q == 0:
        return
    threads = bodies_norm.REDUCE_THREADS if p * r >= _LONG_SLICE else 32
    configured = body[q, threads, _stream(args[0])]
    with warnings.catch_warnings():
        # one block per slice: a small q is a legitimately small grid
        warnings.filterwarnings("ignore", message=".*Grid size")
        configured(*args)


def _optional(v, like):
    """(v, True), or a 1-element dummy of like's dtype and False where v is None (one
    specialisation of the body for both)."""
    if v is None:
        return array_module(like).zeros(1, dtype=like.dtype), False
    return v, True


def norm_moments(x):
    xp = array_module(x)
    mean, var = xp.empty(x.shape[1], dtype=x.dtype), xp.empty(x.shape[1], dtype=x.dtype)
    launch_per_slice(bodies_norm.norm_moments, x.shape, x, mean, var)
    return mean, var


def norm_forward(x, mean, rstd, weight, bias):
    y = array_module(x).empty(x.shape, dtype=x.dtype)
    args = x, mean, rstd, *_optional(weight, x), *_optional(bias, x), y
    launch(bodies_norm.norm_forward, y.size, *args)
    return y


def norm_backward(gy, x, mean, rstd, weight):
    xp = array_module(x)
    q = x.shape[1]
    gx = xp.empty(x.shape, dtype=x.dtype)
    gweight, gbias = xp.empty(q, dtype=x.dtype), xp.empty(q, dtype=x.dtype)
    args = gy, x, mean, rstd, *_optional(weight, x), gx, gweight, gbias
    launch_per_slice(bodies_norm.norm_backward, x.shape, *args)
    return gx, gweight, gbias


# ---- fused conv2d + bias + ReLU + max-pool (the cupy_cuda launchers' scheme) ----
def conv2d_relu_max_pool2d_forward(x, W, b, stride, padding, pool_size, pool_stride, pool_padding):
    # im2col, one GEMM giving the conv output channel-major (oc, n, oh, ow), one body for
    # bias + ReLU + pool + argmax writing only the pooled output
    xp = array_module(x)
    n = x.shape[0]
    oc, _, kh, kw = W.shape
    oh, ow, qh, qw = conv_pool_shapes(
        x.shape, W.shape, stride, padding, pool_size, pool_stride, pool_padding
    )
    z = xp.matmul(W.reshape(oc, -1), im2col(x, (kh, kw), stride, padding).T)
    y = xp.empty((n, oc, qh, qw), dtype=x.dtype)
    argmax = xp.empty((n, oc, qh, qw), dtype=xp.int32)
    bias = b if b is not None else xp.zeros(1, dtype=x.dtype)
    (pkh, pkw), (psh, psw), (pph, ppw) = pool_size, pool_stride, pool_padding
    launch(
        bodies.bias_relu_max_pool2d_forward,
        y.size,
        z.reshape(oc, n, oh, ow),
        bias,
        b is not None,
        y,
        argmax,
        pkh,
        pkw,
        psh,
        psw,
        pph,
        ppw,
    )
    return y, argmax


def conv2d_relu_max_pool2d_backward(
    gy, y, argmax, x, W, stride, padding, pool_size, pool_stride, pool_padding, need_gx
):
    # gz (oc, n*oh*ow) gathered from the pooled windows by one body; gW = gz @ cols, gb = the
    # row sums of gz, gx = col2im(gz^T @ W) when asked
    xp = array_module(gy)
    n = x.shape[0]
    oc, _, kh, kw = W.shape
    oh, ow, _, _ = conv_pool_shapes(
        x.shape, W.shape, stride, padding, pool_size, pool_stride, pool_padding
    )
    gz = xp.empty((oc, n, oh, ow), dtype=gy.dtype)
    (pkh, pkw), (psh, psw), (pph, ppw) = pool_size, pool_stride, pool_padding
    launch(
        bodies.relu_max_pool2d_backward,
        gz.size,
        xp.ascontiguousarray(gy),
        y,
        argmax,
        gz,
        pkh,
        pkw,
        psh,
        psw,
        pph,
        ppw,
    )
    gz = gz.reshape(oc, -1)
    gW = xp.matmul(gz, im2col(x, (kh, kw), stride, padding)).reshape(W.shape)
    gb = gz.sum(axis=1)
    gx = None
    if need_gx:
        gx = col2im(xp.matmul(gz.T, W.reshape(oc, -1)), x.shape, (kh, kw), stride, padding)
    return gx, gW, gb


# ---- elementwise and row-wise ----
def relu_forward(x):
    xp = array_module(x)
    x = xp.ascontiguousarray(x)
    y = xp.empty_like(x)
    launch(bodies.relu_forward, y.size, _flat(x), _flat(y))
    return y


def relu_backward(gy, y):
    xp = array_module(gy)
    gy, y = xp.ascontiguousarray(gy), xp.ascontiguousarray(y)
    gx = xp.empty_like(gy)
    launch(bodies.relu_backward, gx.size, _flat(gy), _flat(y), _flat(gx))
    return gx


def leaky_relu_forward(x, negative_slope):
    xp = array_module(x)
    x = xp.ascontiguousarray(x)
    y = xp.empty_like(x)
    # the slope in x's dtype, as NumPy's weak-scalar rule computes x * slope
    slope = x.dtype.type(negative_slope)
    launch(bodies_norm.leaky_relu_forward, y.size, _flat(x), slope, _flat(y))
    return y


def leaky_relu_backward(gy, x, negative_slope):
    xp = array_module(gy)
    gy, x = xp.ascontiguousarray(gy), xp.ascontiguousarray(x)
    gx = xp.empty_like(gy)
    slope = gy.dtype.type(negative_slope)
    launch(bodies_norm.leaky_relu_backward, gx.size, _flat(gy), _flat(x), slope, _flat(gx))
    return gx


def gelu_forward(x):
    xp = array_module(x)
    x = xp.ascontiguousarray(x)
    y = xp.empty_like(x)
    launch(bodies_norm.gelu_forward, y.size, _flat(x), _flat(y))
    return y


def gelu_backward(gy, x):
    xp = array_module(gy)
    gy, x = xp.ascontiguousarray(gy), xp.ascontiguousarray(x)
    gx = xp.empty_like(gy)
    launch(bodies_norm.gelu_backward, gx.size, _flat(gy), _flat(x), _flat(gx))
    return gx


def softmax_cross_entropy_forward(logits, t):
    xp = array_module(logits)
    n = logits.shape[0]
    probs = xp.empty(logits.shape, dtype=logits.dtype)
    row_loss = xp.empty(n, dtype=logits.dtype)
    launch(bodies.softmax_cross_entropy_forward, n, logits, t, probs, row_loss)
    return xp.asarray(row_loss.mean(), dtype=logits.dtype), probs


def softmax_cross_entropy_backward(probs, t, gloss):
    xp = array_module(probs)
    glogits = xp.empty(probs.shape, dtype=probs.dtype)
    # gloss stays on the device (a 1-element array): reading it on the host would sync the GPU
    gloss = xp.asarray(gloss, dtype=probs.dtype).reshape(1)
    launch(bodies.softmax_cross_entropy_backward, glogits.size, probs, t, gloss, glogits)
    return glogits


def _in_place_ok(*arrays) -> bool:
    """The optimizer bodies update flat views in place: every array must be C-contiguous."""
    return all(a is None or a.flags.c_contiguous for a in arrays)


def sgd_update(p, g, v, lr, momentum, nesterov, weight_decay):
    if not _in_place_ok(p, g, v):
        return NUMPY_KERNELS["sgd_update"](p, g, v, lr, momentum, nesterov, weight_decay)
    if momentum:
        launch(
            bodies.sgd_momentum,
            p.size,
            _flat(p),
            _flat(g),
            _flat(v),
            float(lr),
            float(momentum),
            bool(nesterov),
            float(weight_decay),
        )
    else:
        launch(bodies.sgd_plain, p.size, _flat(p), _flat(g), float(lr), float(weight_decay))


def adam_update(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay):
    if not _in_place_ok(p, g, m, v):
        return NUMPY_KERNELS["adam_update"](p, g, m, v, step, lr, beta1, beta2, eps, weight_decay)
    step_size = lr / (1 - beta1**step)
    bias2_sqrt = (1 - beta2**step) ** 0.5
    launch(
        bodies.adam,
        p.size,
        _flat(p),
        _flat(g),
        _flat(m),
        _flat(v),
        float(step_size),
        float(beta1),
        float(beta2),
        float(bias2_sqrt),
        float(eps),
        float(weight_decay),
    )


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
}
"""The kernels with a Numba body here; table.py starts from cupy_cuda's table, so any other name
falls back to cupy_cuda's launcher (kernels.coverage() reports which)."""
