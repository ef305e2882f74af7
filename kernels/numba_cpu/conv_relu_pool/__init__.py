"""The fused conv2d + bias + ReLU + max-pool block of the numba_cpu flavour: its two kernels, and
choose_path(), the one place that says which geometry takes which kernel.

Why fused (seed CNN, b256, float32): the unfused layer writes the conv output (22 MB for conv1),
reads and writes it again for ReLU, reads it once more for the pool, and its backward writes a
zero-filled gradient for the pool and multiplies it by the ReLU mask in another pass. Here the conv
output and its gradient never reach memory; only y (a quarter of the size) and argmax are written.
The semantics are the numpy_cpu composition's, argmax included (kernels/numpy_cpu/compose.py): the
pool runs over rectified values, first maximum in row-major tap order, a NaN wins (window.better).

Modules: polyphase.py (thin 3x3 block, forward and weight gradient), winograd.py (thicker 3x3
block, forward), sparse_grad.py (window-driven backward, any geometry), gemm.py (any geometry's
forward: direct loop or im2col + GEMM).
"""

from __future__ import annotations

import numpy as np

from kernels.numpy_cpu import REFERENCE

from ..conv import DIRECT_MAX_K, contiguous, padded
from ..tasks import images_per_task, run_tasks
from ..window import out_size
from . import gemm, polyphase, sparse_grad, winograd

# paths whose arithmetic differs from the dense formula's on non-finite inputs (see choose_path)
NEEDS_FINITE = frozenset({"winograd", "polyphase_grad", "window"})


def choose_path(pass_, x, W, stride, padding, pool, need_gx=True) -> str:
    """Which kernel computes `pass_` ("forward" | "backward") of the block on x (n, c, h, w),
    W (oc, c, kh, kw), stride (sh, sw), padding (ph, pw) and
    pool (pool_size, pool_stride, pool_padding), each a pair.

    The common block is a 3x3 conv at stride 1 then a 2x2 max-pool at stride 2 without padding.
    forward:
      "polyphase"  the common block on a thin input (c*9 <= DIRECT_MAX_K, a CNN's first layer):
                   window by window in registers, from a polyphase split of the input
      "winograd"   the common block otherwise: F(2x2, 3x3), whose output tile is one window
      "direct"     other geometries with c*kh*kw <= DIRECT_MAX_K: a direct loop per conv plane
      "wide"       other stride-1 convs: chunked im2col in the wide layout + one GEMM per chunk
      "gemm"       the rest: chunked K-major im2col + one GEMM per chunk
    backward:
      "polyphase_grad"  the thin common block when no input gradient is needed and its
                        per-thread accumulators fit (polyphase.grad_fits): gW and gb only
      "window"     everything else: one axpy per pooling window that passes a gradient
    "reference" (either pass): the path chosen skips work the dense formula does (Winograd
    subtracts inputs, so inf - inf = NaN where the direct sum keeps inf; the backward kernels
    never multiply the zero gradients of pixels that are not a window's argmax, 0 * inf = NaN in
    the dense formula), so where x or W holds a NaN or an infinity the numpy_cpu composition runs
    and results stay the reference's IEEE ones. The check costs ~1% of a seed-CNN step (checking
    inside the kernels' copy loops instead cost ~1 s of compilation).
    """
    oc, c, kh, kw = W.shape
    common = (
        (kh, kw) == (3, 3)
        and tuple(stride) == (1, 1)
        and tuple(tuple(p) for p in pool) == ((2, 2), (2, 2), (0, 0))
    )
    thin = c * kh * kw <= DIRECT_MAX_K
    if pass_ == "forward":
        if common:
            path = "polyphase" if thin else "winograd"
        elif thin:
            path = "direct"
        else:
            path = "wide" if tuple(stride) == (1, 1) else "gemm"
    else:
        qh, qw = _pooled(x.shape, W.shape, stride, padding, pool)
        fits = polyphase.grad_fits(oc, c, qh, qw, x.dtype.itemsize)
        path = "polyphase_grad" if common and thin and not need_gx and fits else "window"
    if path in NEEDS_FINITE and not _finite(x, W):
        return "reference"
    return path


def conv2d_relu_max_pool2d_forward(x, W, b, stride, padding, pool_size, pool_stride, pool_padding):
    """See kernels.numpy_cpu.compose.conv2d_relu_max_pool2d_forward: (y, argmax int32)."""
    (sh, sw), (ph, pw) = stride, padding
    oc, c, ckh, ckw = W.shape
    n, _, h, w = x.shape
    pool = (pool_size, pool_stride, pool_padding)
    path = choose_path("forward", x, W, stride, padding, pool)
    if path == "reference":
        return REFERENCE["conv2d_relu_max_pool2d_forward"](x, W, b, stride, padding, *pool)
    oh, ow = out_size(h, ckh, sh, ph), out_size(w, ckw, sw, pw)
    qh, qw = _pooled(x.shape, W.shape, stride, padding, pool)
    bias = np.zeros(oc, dtype=x.dtype) if b is None else contiguous(b)
    if path == "polyphase":
        return polyphase.forward(padded(x, ph, pw), contiguous(W), bias, qh, qw)
    if path == "winograd":
        chunk = images_per_task(n, 16 * (c + oc) * qh * qw)  # V and M of a chunk stay in L2
        return winograd.forward(contiguous(x), contiguous(W), bias, padding, qh, qw, chunk)
    y = np.empty((n, oc, qh, qw), dtype=x.dtype)
    argmax = np.empty((n, oc, qh, qw), dtype=np.int32)
    flat_pool = (*pool_size, *pool_stride, *pool_padding)
    if path == "direct":
        args = (padded(x, ph, pw), contiguous(W), bias, sh, sw, oh, ow, *flat_pool, y, argmax)
        run_tasks(gemm.direct_body, n * oc, *args)
        return y, argmax
    Wm = contiguous(W).reshape(oc, -1)
    if path == "wide":
        ohu = _pool_reach(oh, pool_size[0], pool_stride[0], pool_padding[0], qh)
        owu = _pool_reach(ow, pool_size[1], pool_stride[1], pool_padding[1], qw)
        chunk = images_per_task(n, c * ckh * ckw * ohu * owu)
        args = (contiguous(x), Wm, bias, ckh, ckw, ph, pw, ohu, owu, chunk, *flat_pool, y, argmax)
        run_tasks(gemm.wide_body, -(-n // chunk), *args, blas=True)
        return y, argmax
    chunk = images_per_task(n, c * ckh * ckw * oh * ow)
    args = (contiguous(x), Wm, bias, ckh, ckw, sh, sw, ph, pw, oh, ow, chunk, *flat_pool, y, argmax)
    run_tasks(gemm.gemm_body, -(-n // chunk), *args, blas=True)
    return y, argmax


def conv2d_relu_max_pool2d_backward(
    gy, y, argmax, x, W, stride, padding, pool_size, pool_stride, pool_padding, need_gx
):
    """See kernels.numpy_cpu.compose.conv2d_relu_max_pool2d_backward: (gx or None, gW, gb).
    The full conv-output gradient is never built (choose_path says which kernel runs)."""
    (sh, sw), (ph, pw) = stride, padding
    oc, c, ckh, ckw = W.shape
    n, _, h, w = x.shape
    pool = (pool_size, pool_stride, pool_padding)
    gy, y, argmax = contiguous(gy), contiguous(y), contiguous(argmax)
    path = choose_path("backward", x, W, stride, padding, pool, need_gx)
    if path == "reference":
        return REFERENCE["conv2d_relu_max_pool2d_backward"](
            gy, y, argmax, x, W, stride, padding, *pool, need_gx
        )
    if path == "polyphase_grad":
        gW, gb = polyphase.grad_weight(gy, y, argmax, padded(x, ph, pw), W.shape)
        return None, gW, gb
    qh, qw = gy.shape[2:]
    oh, ow = out_size(h, ckh, sh, ph), out_size(w, ckw, sw, pw)
    ohu = _pool_reach(oh, pool_size[0], pool_stride[0], pool_padding[0], qh)
    owu = _pool_reach(ow, pool_size[1], pool_stride[1], pool_padding[1], qw)
    hc, wc = (ohu - 1) * sh + ckh, (owu - 1) * sw + ckw  # padded input rows/columns read
    flat_pool = (*pool_size, *pool_stride, *pool_padding)
    return sparse_grad.grad(
        gy, y, argmax, contiguous(x), contiguous(W), stride, padding, flat_pool, hc, wc, need_gx
    )


def _pooled(x_shape, w_shape, stride, padding, pool):
    """(qh, qw): the pooled output size of the block."""
    (sh, sw), (ph, pw) = stride, padding
    (pkh, pkw), (psh, psw), (pph, ppw) = pool
    oh = out_size(x_shape[2], w_shape[2], sh, ph)
    ow = out_size(x_shape[3], w_shape[3], sw, pw)
    return out_size(oh, pkh, psh, pph), out_size(ow, pkw, psw, ppw)


def _finite(*arrays) -> bool:
    """Whether the arrays hold only finite values (choose_path's "reference" rule)."""
    return all(bool(np.isfinite(a).all()) for a in arrays)


def _pool_reach(o, k, s, p, q):
    """Conv rows (or columns) 0..reach-1 hold every tap the pool reads: the last window's last
    tap is (q - 1)*s + k - 1 - p. Rows beyond (floor mode drops them) are never computed: for
    the seed CNN's conv2, 10 of 11 rows and columns, 16% of its GEMM work (measured 141 -> 118
    columns per image in the wide layout)."""
    return min(o, (q - 1) * s + k - p)
