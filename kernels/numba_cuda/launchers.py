"""Launchers of the numba_cuda flavour: allocate outputs, size the grid, launch a body, return.

Same signatures and semantics as the kernels/numpy_cpu kernels (their docstrings are the reference).
Written against `xp` read off the inputs, so the same launchers drive CuPy arrays on a GPU and NumPy
arrays under NUMBA_ENABLE_CUDASIM=1 (how CI tests them without a GPU); this module never imports
CuPy. On a GPU every body runs on CuPy's current stream, so it is ordered with CuPy's own kernels
and GEMMs. GEMMs go through `xp.matmul` (cuBLAS on a GPU).
"""

from __future__ import annotations

import sys
import warnings

from numba import cuda

from kernels.numpy_cpu import KERNELS as NUMPY_KERNELS
from kernels.numpy_cpu.xp import array_module, conv_pool_shapes, out_size

from . import bodies

_FEW_BLOCKS = 128  # Numba's low-occupancy warning threshold
_streams: dict = {}  # CuPy stream pointer -> the Numba stream object for it


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


# ---- convolution: im2col / col2im around a GEMM ----
def im2col(x, kernel_size, stride, padding):
    xp = array_module(x)
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    n, c, h, w = x.shape
    oh, ow = out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)
    cols = xp.empty((n * oh * ow, c * kh * kw), dtype=x.dtype)
    launch(bodies.im2col, cols.size, x, cols, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow)
    return cols


def col2im(cols, x_shape, kernel_size, stride, padding):
    xp = array_module(cols)
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    n, c, h, w = x_shape
    oh, ow = out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)
    x = xp.empty(x_shape, dtype=cols.dtype)
    launch(
        bodies.col2im,
        x.size,
        xp.ascontiguousarray(cols),
        x,
        c,
        h,
        w,
        kh,
        kw,
        sh,
        sw,
        ph,
        pw,
        oh,
        ow,
    )
    return x


def _rows(gy):
    """gy (n, oc, oh, ow) -> (n*oh*ow, oc), the GEMM layout."""
    n, oc, oh, ow = gy.shape
    rows = array_module(gy).empty((n * oh * ow, oc), dtype=gy.dtype)
    launch(bodies.nchw_to_rows, rows.size, gy, rows)
    return rows


def conv2d_forward(x, W, b, stride, padding):
    xp = array_module(x)
    oc, _, kh, kw = W.shape
    n, _, h, w = x.shape
    oh, ow = out_size(h, kh, stride[0], padding[0]), out_size(w, kw, stride[1], padding[1])
    rows = xp.matmul(im2col(x, (kh, kw), stride, padding), W.reshape(oc, -1).T)  # (n*oh*ow, oc)
    y = xp.empty((n, oc, oh, ow), dtype=x.dtype)
    # the bias add is fused into the transpose back to NCHW; a dummy bias keeps one specialisation
    bias = b if b is not None else xp.zeros(1, dtype=x.dtype)
    launch(bodies.rows_to_nchw, y.size, rows, bias, b is not None, y)
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
def max_pool2d_forward(x, kernel_size, stride, padding):
    xp = array_module(x)
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    n, c, h, w = x.shape
    shape = (n, c, out_size(h, kh, sh, ph), out_size(w, kw, sw, pw))
    y, argmax = xp.empty(shape, dtype=x.dtype), xp.empty(shape, dtype=xp.int32)
    launch(bodies.max_pool2d_forward, y.size, x, y, argmax, kh, kw, sh, sw, ph, pw)
    return y, argmax


def max_pool2d_backward(gy, argmax, x_shape, kernel_size, stride, padding):
    gx = array_module(gy).empty(x_shape, dtype=gy.dtype)
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    launch(bodies.max_pool2d_backward, gx.size, gy, argmax, gx, kh, kw, sh, sw, ph, pw)
    return gx


def avg_pool2d_forward(x, kernel_size, stride, padding):
    xp = array_module(x)
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    n, c, h, w = x.shape
    y = xp.empty((n, c, out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)), dtype=x.dtype)
    launch(bodies.avg_pool2d_forward, y.size, x, y, kh, kw, sh, sw, ph, pw)
    return y


def avg_pool2d_backward(gy, x_shape, kernel_size, stride, padding):
    gx = array_module(gy).empty(x_shape, dtype=gy.dtype)
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    launch(bodies.avg_pool2d_backward, gx.size, gy, gx, kh, kw, sh, sw, ph, pw)
    return gx


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
}
"""The kernels with a Numba body here; table.py starts from cupy_cuda's table, so any other name
falls back to cupy_cuda's launcher (kernels.coverage() reports which)."""
