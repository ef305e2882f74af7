"""The fused conv 3x3 + bias + ReLU + 2x2 max-pool block of a thin input (the first layer of a CNN
on grey or RGB images), computed window by window in polyphase layout.

Why (seed CNN conv1: 1 -> 32 channels, 28x28, b64, 2 cores): the plane-by-plane direct loop of
gemm.py wrote each conv plane to a buffer with nine axpy passes, then pooled it with stride-2
reads; the weight gradient went through a (c, 3, 3, plane) accumulator in memory. Together they
were a quarter of the training step at 15-25 GFLOP/s. Here one vectorised loop over pooling
windows computes the window's four conv values in registers from sixteen contiguous loads, and
the weight gradient gathers the one input value per tap that each window's argmax selects.

Polyphase layout: the padded input plane xpad (hp, wp) is split into four planes by row and column
parity, P[2*pr + pc][k*L + l] = xpad[2k + pr, 2l + pc], with L = qw + 1 columns per row (one
column past the last window). Window (i, j) is flat index q = i*L + j; its tap (a, b) is conv pixel
(2i + a, 2j + b), which reads xpad[2i + e, 2j + f] with e = a + u, f = b + v (u, v the 3x3 taps):
that is P[2*(e % 2) + f % 2][q + (e // 2)*L + f // 2]. All sixteen (e, f) in 0..3 are contiguous
in q, so the loop over q vectorises; column j = qw of each row is junk (computed, never stored).

Semantics are the numpy_cpu composition's (kernels/numpy_cpu/compose.py): y = max over the window
of relu(conv + bias), argmax = the first maximal tap a*2 + b in row-major order, NaN wins once.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..tasks import run_tasks
from ..window import first_max4, relu

JIT = dict(cache=True, fastmath=False, nogil=True)
# flat loops run over a multiple of VEC windows: no scalar remainder loop (the junk is never
# stored); this, not fused multiply-adds (fastmath's `contract` measured no faster), made the
# forward 1.6x faster than the first version of this kernel
VEC = 16


@njit(**JIT)
def _geometry(qh, qw):
    """(L, K, span, size): row length and rows of a polyphase plane; flat windows of one plane,
    rounded up to a multiple of VEC; elements of a plane, padding included (a window's farthest
    read is q + L + 1)."""
    L = qw + 1
    span = -(-((qh - 1) * L + qw) // VEC) * VEC
    return L, qh + 1, span, max((qh + 1) * L, span + L + 1)


@njit(**JIT)
def _split(xpad, b, qh, qw, P):
    """P[ch, 2*pr + pc, k*L + l] = xpad[b, ch, 2k + pr, 2l + pc] for every channel of image b;
    the tail [K*L, size) of each plane is 0 (read only by junk windows). The `inside` test is
    defensive: the conv-padded input always holds rows 0..2K-1 and columns 0..2L-1."""
    c, hp, wp = xpad.shape[1], xpad.shape[2], xpad.shape[3]
    L, K, _, size = _geometry(qh, qw)
    for ch in range(c):
        for comp in range(P.shape[1]):  # the 4 planes; a runtime bound, not unrolled (compiling)
            pr, pc = comp // 2, comp % 2
            dst = P[ch, comp]
            for k in range(K):
                r = 2 * k + pr
                for l in range(L):
                    col = 2 * l + pc
                    inside = (r < hp) & (col < wp)
                    dst[k * L + l] = xpad[b, ch, r, col] if inside else 0
            for k in range(K * L, size):
                dst[k] = 0


@njit(inline="always", **JIT)
def _window_conv3(w, pe, po, qe, qo, L, span, z):
    """z[t, q] += the 3x3 conv (weights w) at tap t = (a, b) of window q, from the four
    polyphase planes pe, po, qe, qo (row parity even/odd, column parity even/odd)."""
    w00, w01, w02 = w[0, 0], w[0, 1], w[0, 2]
    w10, w11, w12 = w[1, 0], w[1, 1], w[1, 2]
    w20, w21, w22 = w[2, 0], w[2, 1], w[2, 2]
    # x_ef[q] = xpad[2i + e, 2j + f] for window q, as slices (every index provably >= 0)
    x00, x01, x02, x03 = pe, po, pe[1:], po[1:]
    x10, x11, x12, x13 = qe, qo, qe[1:], qo[1:]
    x20, x21, x22, x23 = pe[L:], po[L:], pe[L + 1 :], po[L + 1 :]
    x30, x31, x32, x33 = qe[L:], qo[L:], qe[L + 1 :], qo[L + 1 :]
    z0, z1, z2, z3 = z[0], z[1], z[2], z[3]
    for q in range(span):
        a00, a01, a02, a03 = x00[q], x01[q], x02[q], x03[q]
        a10, a11, a12, a13 = x10[q], x11[q], x12[q], x13[q]
        a20, a21, a22, a23 = x20[q], x21[q], x22[q], x23[q]
        a30, a31, a32, a33 = x30[q], x31[q], x32[q], x33[q]
        z0[q] += (w00 * a00 + w01 * a01 + w02 * a02 + w10 * a10 + w11 * a11
                  + w12 * a12 + w20 * a20 + w21 * a21 + w22 * a22)  # fmt: skip
        z1[q] += (w00 * a01 + w01 * a02 + w02 * a03 + w10 * a11 + w11 * a12
                  + w12 * a13 + w20 * a21 + w21 * a22 + w22 * a23)  # fmt: skip
        z2[q] += (w00 * a10 + w01 * a11 + w02 * a12 + w10 * a20 + w11 * a21
                  + w12 * a22 + w20 * a30 + w21 * a31 + w22 * a32)  # fmt: skip
        z3[q] += (w00 * a11 + w01 * a12 + w02 * a13 + w10 * a21 + w11 * a22
                  + w12 * a23 + w20 * a31 + w21 * a32 + w22 * a33)  # fmt: skip


@njit(inline="always", **JIT)
def _relu_pool4(z, bias, span, yf, af):
    """yf[q] = max over taps t of relu(z[t, q] + bias), af[q] = the first winning t (window's
    tie rule: window.better)."""
    zero = yf.dtype.type(0)  # a typed zero: a literal 0 would turn the float32 selects into float64
    z0, z1, z2, z3 = z[0], z[1], z[2], z[3]
    for q in range(span):
        yf[q], af[q] = first_max4(
            relu(z0[q] + bias, zero),
            relu(z1[q] + bias, zero),
            relu(z2[q] + bias, zero),
            relu(z3[q] + bias, zero),
        )


@njit(**JIT)
def _forward_body(xpad, W, bias, qh, qw, y, argmax, lo, hi):
    """Task b = image: its polyphase planes, then y[b, o], argmax[b, o] for every output channel
    o. The four conv values of each window are summed over channels in z (4, span), rectified
    and pooled into flat rows, then stored; the work buffers (c*4*size + 6*span values) stay
    in L1 for images up to about 50x50."""
    c, oc = xpad.shape[1], W.shape[0]
    L, _, span, size = _geometry(qh, qw)
    P = np.empty((c, 4, size), dtype=y.dtype)
    z = np.empty((4, span), dtype=y.dtype)
    yf = np.empty(span, dtype=y.dtype)
    af = np.empty(span, dtype=np.int32)
    for b in range(lo, hi):
        _split(xpad, b, qh, qw, P)
        for o in range(oc):
            z[:] = 0  # one branch-free loop that adds (a load under a condition blocks vectorising)
            for ch in range(c):
                pl = P[ch]
                _window_conv3(W[o, ch], pl[0], pl[1], pl[2], pl[3], L, span, z)
            _relu_pool4(z, bias[o], span, yf, af)
            for i in range(qh):
                yr, ar, ys, as_ = y[b, o, i], argmax[b, o, i], yf[i * L :], af[i * L :]
                for j in range(qw):
                    yr[j] = ys[j]
                    ar[j] = as_[j]


@njit(inline="always", **JIT)
def _tap_grad(acc, g, sel, xa, xb, xc, xd, span):
    """acc[q] += g[q] * (xa, xb, xc, xd)[sel[q]][q]: the input value under one weight tap for
    the window's argmax (top-left, top-right, bottom-left, bottom-right). One store stream and
    six loads: few enough pointers for LLVM's runtime alias checks, so the loop vectorises."""
    for q in range(span):
        s = sel[q]
        top, left = s < 2, (s & 1) == 0
        a, b2, c2, d = xa[q], xb[q], xc[q], xd[q]  # unconditional loads, then selects
        acc[q] += g[q] * ((a if left else b2) if top else (c2 if left else d))


@njit(**JIT)
def _grad_body(gy, y, argmax, xpad, ntaps, chunk, partial, gbp, lo, hi):
    """Task t = images [t*chunk, (t+1)*chunk): partial[t, o, ch, 3u + v] = sum over its images and
    windows with y > 0 of gy * xpad[2i + a + u, 2j + b + v], (a, b) the window's argmax tap, and
    gbp[t, o] = the sum of those gy. Per-lane partial sums over q (acc, gacc) keep the loops
    vectorised without reordering a lane's additions; each lane is summed at the end. ntaps = 9
    (an argument so that LLVM keeps one copy of the tap loop)."""
    n, oc, qh, qw = gy.shape
    c = xpad.shape[1]
    L, _, span, size = _geometry(qh, qw)
    P = np.empty((c, 4, size), dtype=gy.dtype)
    zero = gy.dtype.type(0)
    g = np.zeros(span, dtype=gy.dtype)  # junk windows stay 0
    sel = np.zeros(span, dtype=np.int32)
    acc = np.empty((oc, c, 9, span), dtype=gy.dtype)
    gacc = np.empty((oc, span), dtype=gy.dtype)
    for t in range(lo, hi):
        acc[:] = 0
        gacc[:] = 0
        for b in range(t * chunk, min(n, (t + 1) * chunk)):
            _split(xpad, b, qh, qw, P)
            for o in range(oc):
                for i in range(qh):
                    gr, yr, ar = gy[b, o, i], y[b, o, i], argmax[b, o, i]
                    gs, ss = g[i * L :], sel[i * L :]
                    for j in range(qw):
                        gs[j] = gr[j] if yr[j] > 0 else zero  # the ReLU passed the window's max
                        ss[j] = ar[j]
                ga = gacc[o]
                for q in range(span):
                    ga[q] += g[q]
                for ch in range(c):
                    pl, ao = P[ch], acc[o, ch]
                    # tap (u, v) reads x_ef[q] = xpad[2i + e, 2j + f] with (e, f) = (a + u, b + v):
                    # plane 2*(e % 2) + f % 2 of the split, at offset (e // 2)*L + f // 2
                    for tap in range(ntaps):  # a runtime bound: 9 unrolled copies of the
                        u, v = tap // 3, tap % 3  # vectorised loop cost a second of compiling
                        xs00 = pl[2 * (u % 2) + v % 2][(u // 2) * L + v // 2 :]
                        xs01 = pl[2 * (u % 2) + (v + 1) % 2][(u // 2) * L + (v + 1) // 2 :]
                        xs10 = pl[2 * ((u + 1) % 2) + v % 2][((u + 1) // 2) * L + v // 2 :]
                        xs11 = pl[2 * ((u + 1) % 2) + (v + 1) % 2][
                            ((u + 1) // 2) * L + (v + 1) // 2 :
                        ]
                        _tap_grad(ao[tap], g, sel, xs00, xs01, xs10, xs11, span)
        for o in range(oc):
            gbp[t, o] = gacc[o].sum()
            for ch in range(c):
                for k in range(9):
                    partial[t, o, ch, k] = acc[o, ch, k].sum()


def forward(xpad, W, bias, qh, qw):
    """(y, argmax int32) of the block, both (n, oc, qh, qw); xpad is the conv-padded input."""
    n, oc = xpad.shape[0], W.shape[0]
    y = np.empty((n, oc, qh, qw), dtype=xpad.dtype)
    argmax = np.empty((n, oc, qh, qw), dtype=np.int32)
    run_tasks(_forward_body, n, xpad, W, bias, qh, qw, y, argmax)
    return y, argmax


GRAD_CHUNK = 8  # images per task of the weight gradient (fixed: sums independent of threads)
GRAD_MAX_BYTES = 16 << 20  # per-thread lane accumulators of grad_weight; larger: sparse_grad.py


def grad_fits(oc, c, qh, qw, itemsize) -> bool:
    """Whether grad_weight's accumulators (oc*c*9 lanes of one plane's windows, per thread) stay
    under GRAD_MAX_BYTES: 0.2 MB for the seed CNN's conv1, 86 MB for 64 filters on 224x224 RGB."""
    span = -(-((qh - 1) * (qw + 1) + qw) // VEC) * VEC
    return oc * c * 9 * span * itemsize <= GRAD_MAX_BYTES


def grad_weight(gy, y, argmax, xpad, w_shape):
    """(gW (oc, c, 3, 3), gb (oc,)) of the block from the pooled gradient gy; the per-task
    partial sums are added in task order."""
    oc, c = w_shape[:2]
    tasks = -(-gy.shape[0] // GRAD_CHUNK)
    partial = np.empty((tasks, oc, c, 9), dtype=gy.dtype)
    gbp = np.empty((tasks, oc), dtype=gy.dtype)
    run_tasks(_grad_body, tasks, gy, y, argmax, xpad, 9, GRAD_CHUNK, partial, gbp)
    return partial.sum(axis=0).reshape(w_shape), gbp.sum(axis=0)
