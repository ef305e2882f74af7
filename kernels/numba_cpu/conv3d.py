"""3-D convolution compiled by Numba: chunked im2col + single-threaded BLAS GEMM, chunks of output
rows spread over the task pool (kernels/numba_cpu/tasks.py). General in kernel size, stride and
padding; the numpy_cpu N-d core (kernels/numpy_cpu/conv.py) is the reference.

Index conventions: x (n, c, d, h, w) is zero-padded once into xpad (n, c, dp, hp, wp), W (oc, c,
kd, kh, kw), y (n, oc, od, oh, ow), od = (d + 2 pd - kd) // sd + 1. An output row is r = (b*od +
i)*oh + j (the ow positions y[b, :, i, j, :]); a chunk is R consecutive rows. Its columns are
cols[tap, (r - r0)*ow + l] = xpad[b, ch, i*sd + t, j*sh + u, l*sw + v], tap = ((ch*kd + t)*kh +
u)*kw + v (numpy_cpu's column order), so y's chunk is Wm @ cols with Wm = W.reshape(oc, -1).
- forward: one task per chunk range; each chunk's columns stay in cache (CHUNK_ELEMS).
- weight gradient: sum over chunks of gy_rows @ cols^T; chunks are summed in GROUPS fixed groups,
  each into its own partial, then the partials in order: results do not depend on the threads.
- input gradient: for stride 1 and p <= k - 1 it is a forward conv of gy with the flipped,
  channel-swapped weight and padding k - 1 - p (row-parallel); otherwise col2im of WmT @ gy_rows,
  one task per image (images never share gx; rows within one image do).
choose_path() says which forward runs: the register-blocked direct kernel (conv3d_direct.py) at
stride 1, this module's im2col + GEMM otherwise.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .conv3d_direct import (
    GROUPS,
    conv3d_backward_weight_direct,
    conv3d_forward_direct,
    lanes,
    pad_body,
)
from .tasks import run_tasks

JIT = dict(cache=True, fastmath=False, nogil=True)
CHUNK_ELEMS = 1 << 17  # elements of one chunk's columns: 512 KiB in float32 (L2 holds it)


@njit(**JIT)
def _row(r, od, oh):
    """Output row r -> (b, i, j): r = (b*od + i)*oh + j."""
    return r // (od * oh), (r // oh) % od, r % oh


@njit(**JIT)
def _im2col_rows(xpad, r0, r1, k, s, od, oh, ow, cols):
    """cols[tap, (r - r0)*ow + l] = xpad[b, ch, i*sd + t, j*sh + u, l*sw + v] for rows r0..r1-1
    (module docstring): one run of ow values per (row, tap), unit stride when sw == 1."""
    c = xpad.shape[1]
    for r in range(r0, r1):
        b, i, j = _row(r, od, oh)
        base = (r - r0) * ow  # first column of row r
        for ch in range(c):
            for t in range(k[0]):
                for u in range(k[1]):
                    src = xpad[b, ch, i * s[0] + t, j * s[1] + u]  # padded input row of tap (t, u)
                    tap0 = ((ch * k[0] + t) * k[1] + u) * k[2]
                    for v in range(k[2]):
                        dst, sv = cols[tap0 + v, base : base + ow], src[v:]  # slices: indices >= 0
                        if s[2] == 1:  # a plain copy, vectorised (the strided loop is not)
                            for col in range(ow):
                                dst[col] = sv[col]
                        else:
                            for col in range(ow):
                                dst[col] = sv[col * s[2]]


@njit(**JIT)
def _gy_rows(gy, r0, r1, od, oh, g):
    """g[o, (r - r0)*ow + l] = gy[b, o, i, j, l] for rows r0..r1-1 (the GEMM's gy operand)."""
    oc, ow = gy.shape[1], gy.shape[4]
    for r in range(r0, r1):
        b, i, j = _row(r, od, oh)
        for o in range(oc):
            src, dst = gy[b, o, i, j], g[o, (r - r0) * ow : (r - r0 + 1) * ow]
            for col in range(ow):
                dst[col] = src[col]


@njit(**JIT)
def _forward_body(xpad, Wm, bias, k, s, out, rows, y, lo, hi):
    """y rows of chunks lo..hi-1 (R = rows per chunk): y[b, o, i, j, :] = (Wm @ cols)[o, row's
    columns] + bias[o], one single-threaded BLAS GEMM per chunk."""
    od, oh, ow = out
    oc, total = y.shape[1], y.shape[0] * od * oh
    buf = np.empty(Wm.shape[1] * rows * ow, dtype=y.dtype)  # this task's columns, reused
    for q in range(lo, hi):
        r0, r1 = q * rows, min(total, (q + 1) * rows)
        cols = buf[: Wm.shape[1] * (r1 - r0) * ow].reshape(Wm.shape[1], (r1 - r0) * ow)
        _im2col_rows(xpad, r0, r1, k, s, od, oh, ow, cols)
        z = np.dot(Wm, cols)  # (oc, (r1 - r0)*ow)
        for r in range(r0, r1):
            b, i, j = _row(r, od, oh)
            for o in range(oc):
                src, dst = z[o, (r - r0) * ow : (r - r0 + 1) * ow], y[b, o, i, j]
                for col in range(ow):
                    dst[col] = src[col] + bias[o]


@njit(**JIT)
def _grad_weight_body(gy, xpad, k, s, rows, per_group, partial, lo, hi):
    """partial[g] = sum over chunks g*per_group .. of gy_rows @ cols^T (oc, c*kd*kh*kw), chunks
    in order; groups lo..hi-1."""
    n, oc, od, oh, ow = gy.shape
    total = n * od * oh
    n_chunks = -(-total // rows)
    K = partial.shape[2]
    cbuf = np.empty(K * rows * ow, dtype=gy.dtype)
    gbuf = np.empty(oc * rows * ow, dtype=gy.dtype)
    for g in range(lo, hi):
        acc = partial[g]
        acc[:] = 0
        for q in range(g * per_group, min(n_chunks, (g + 1) * per_group)):
            r0, r1 = q * rows, min(total, (q + 1) * rows)
            m = (r1 - r0) * ow
            cols, gr = cbuf[: K * m].reshape(K, m), gbuf[: oc * m].reshape(oc, m)
            _im2col_rows(xpad, r0, r1, k, s, od, oh, ow, cols)
            _gy_rows(gy, r0, r1, od, oh, gr)
            part = np.dot(gr, cols.T)  # (oc, K)
            for o in range(oc):
                ao, po = acc[o], part[o]
                for col in range(K):
                    ao[col] += po[col]


@njit(**JIT)
def _grad_input_body(gy, WmT, k, s, rows, gxpad, lo, hi):
    """gxpad[b] = col2im(WmT @ gy_rows) for images b in lo..hi-1: each tap's run of ow values is
    added back where im2col read it; gxpad[b] is zeroed first."""
    n, oc, od, oh, ow = gy.shape
    c = gxpad.shape[1]
    gbuf = np.empty(oc * rows * ow, dtype=gy.dtype)
    for b in range(lo, hi):
        gxpad[b] = 0
        for r0 in range(b * od * oh, (b + 1) * od * oh, rows):
            r1 = min((b + 1) * od * oh, r0 + rows)
            m = (r1 - r0) * ow
            gr = gbuf[: oc * m].reshape(oc, m)
            _gy_rows(gy, r0, r1, od, oh, gr)
            gcols = np.dot(WmT, gr)  # (K, m)
            for r in range(r0, r1):
                _, i, j = _row(r, od, oh)
                base = (r - r0) * ow
                for ch in range(c):
                    for t in range(k[0]):
                        for u in range(k[1]):
                            dst = gxpad[b, ch, i * s[0] + t, j * s[1] + u]
                            tap0 = ((ch * k[0] + t) * k[1] + u) * k[2]
                            for v in range(k[2]):
                                src, dv = gcols[tap0 + v, base : base + ow], dst[v:]
                                for col in range(ow):
                                    dv[col * s[2]] += src[col]


# ------------------------------------------------------------- launchers ----
def _sizes(size, k, s, p):
    return tuple((size[a] + 2 * p[a] - k[a]) // s[a] + 1 for a in range(3))


def _padded(x, p):
    """x (n, c, d, h, w) zero-padded by p per axis, C-contiguous (x itself when p is 0)."""
    x = np.ascontiguousarray(x)
    if not any(p):
        return x
    n, c, d, h, w = x.shape
    xpad = np.empty((n, c, d + 2 * p[0], h + 2 * p[1], w + 2 * p[2]), dtype=x.dtype)
    run_tasks(pad_body, n * c, x, tuple(p), xpad)
    return xpad


def _rows_per_chunk(K: int, ow: int) -> int:
    return max(1, CHUNK_ELEMS // max(1, K * ow))


DIRECT_MIN_TAPS = 8  # below c*kd*kh*kw = 8 (a 1x1x1 conv of few channels) the GEMM path wins


def choose_path(c: int, kernel_size, stride, ow: int, dtype) -> str:
    """Which kernel computes a conv3d pass over c input channels, kernel_size (kd, kh, kw),
    stride, output width ow: the forward, the stride-1 input gradient (a forward conv of gy with
    the flipped kernel) and the weight gradient.
    "direct"  stride 1, float32/float64, c*kd*kh*kw >= DIRECT_MIN_TAPS and ow at least half a
              vector: conv3d_direct.py, 12 vector accumulators in registers per block
    "gemm"    the rest (strides > 1, thin 1x1x1 convs): chunked im2col + BLAS GEMM."""
    taps = c * int(np.prod(kernel_size))
    direct = tuple(stride) == (1, 1, 1) and np.dtype(dtype) in (np.float32, np.float64)
    if direct and taps >= DIRECT_MIN_TAPS and 2 * ow >= lanes(dtype):
        return "direct"
    return "gemm"


def conv3d_forward(x, W, b, stride, padding):
    """See kernels.numpy_cpu.conv.conv_forward: x (n, c, d, h, w), W (oc, c, kd, kh, kw),
    b (oc,) or None -> y (n, oc, od, oh, ow), C-contiguous."""
    oc, k = W.shape[0], tuple(W.shape[2:])
    out = _sizes(x.shape[2:], k, stride, padding)
    if choose_path(x.shape[1], k, stride, out[2], x.dtype) == "direct":
        return conv3d_forward_direct(x, W, b, padding)
    y = np.empty((x.shape[0], oc, *out), dtype=x.dtype)
    bias = np.zeros(oc, dtype=x.dtype) if b is None else np.ascontiguousarray(b, dtype=x.dtype)
    Wm = np.ascontiguousarray(W).reshape(oc, -1)
    rows = _rows_per_chunk(Wm.shape[1], out[2])
    n_chunks = -(-x.shape[0] * out[0] * out[1] // rows)
    xpad = _padded(x, padding)
    run_tasks(_forward_body, n_chunks, xpad, Wm, bias, k, tuple(stride), out, rows, y, blas=True)
    return y


def conv3d_backward_weight(gy, x, kernel_size, stride, padding):
    """See kernels.numpy_cpu.conv.conv_backward_weight: gW (oc, c, kd, kh, kw)."""
    if choose_path(x.shape[1], kernel_size, stride, gy.shape[4], gy.dtype) == "direct":
        return conv3d_backward_weight_direct(gy, x, kernel_size, padding)
    gy, k = np.ascontiguousarray(gy), tuple(kernel_size)
    n, oc, od, oh, ow = gy.shape
    K = x.shape[1] * k[0] * k[1] * k[2]
    rows = _rows_per_chunk(K, ow)
    n_chunks = -(-n * od * oh // rows)
    groups = min(GROUPS, n_chunks)
    per_group = -(-n_chunks // groups)
    partial = np.empty((-(-n_chunks // per_group), oc, K), dtype=gy.dtype)
    args = (gy, _padded(x, padding), k, tuple(stride), rows, per_group, partial)
    run_tasks(_grad_weight_body, partial.shape[0], *args, blas=True)
    return partial.sum(axis=0).reshape(oc, x.shape[1], *k)


def conv3d_backward_input(gy, W, x_shape, stride, padding):
    """See kernels.numpy_cpu.conv.conv_backward_input: gx (n, c, d, h, w)."""
    k, s, p = tuple(W.shape[2:]), tuple(stride), tuple(padding)
    if s == (1, 1, 1) and all(p[a] <= k[a] - 1 for a in range(3)):
        # gx[b, ch, z] = sum_{o, t} gy_pad[b, o, z + t'] W[o, ch, k - 1 - t']: a stride-1 conv of gy
        # with the flipped weight, channels swapped, padded by k - 1 - p
        Wf = np.ascontiguousarray(W[:, :, ::-1, ::-1, ::-1].transpose(1, 0, 2, 3, 4))
        return conv3d_forward(gy, Wf, None, s, tuple(k[a] - 1 - p[a] for a in range(3)))
    gy = np.ascontiguousarray(gy)
    n, c, d, h, w = x_shape
    oc, K, ow = W.shape[0], W[0].size, gy.shape[4]
    WmT = np.ascontiguousarray(W.reshape(oc, -1).T)
    gxpad = np.empty((n, c, d + 2 * p[0], h + 2 * p[1], w + 2 * p[2]), dtype=gy.dtype)
    run_tasks(_grad_input_body, n, gy, WmT, k, s, _rows_per_chunk(K, ow), gxpad, blas=True)
    return np.ascontiguousarray(gxpad[:, :, p[0] : p[0] + d, p[1] : p[1] + h, p[2] : p[2] + w])
