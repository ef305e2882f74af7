"""The fused conv 3x3 + bias + ReLU + 2x2 max-pool forward by Winograd's minimal filtering F(2x2, 3x3).

Why (seed CNN conv2: 32 -> 64 channels, 13x13 -> 11x11 -> 5x5, 2 cores): im2col + GEMM spends
9 multiply-adds per output and input channel; F(2x2, 3x3) computes a 2x2 output tile from a 4x4
input tile with 16 (2.25x fewer), as 16 independent GEMMs of (oc x c) by (c x tiles). And a 2x2
output tile is exactly one 2x2 pooling window (stride 2): the output transform hands its four
conv values straight to the bias, ReLU and max, so the conv output never exists even in a buffer.

Transforms (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016), with
d the 4x4 input tile at (2i, 2j) of the padded input and w a 3x3 filter:
    U = G w G^T,   V = B^T d B,   M = sum over input channels of U * V (elementwise),
    conv tile = A^T M A,
    G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]],
    B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
    A^T = [[1, 1, 1, 0], [0, 1, -1, -1]].
All the constants are exact in binary floating point; the transforms only add and subtract.
U is computed once per call in float64 and rounded to W's dtype.

Semantics are the numpy_cpu composition's (kernels/numpy_cpu/compose.py): y = max over the window
of relu(conv + bias), argmax = the first maximal tap a*2 + b in row-major order, NaN wins once.
Only the conv rows/columns the pool reads are computed (floor mode drops an odd last one).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..tasks import run_tasks
from ..window import first_max4, relu

JIT = dict(cache=True, fastmath=False, nogil=True)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
GG = np.kron(G, G)  # (16, 9): (G w G^T)[r, s] = sum over k, l of G[r, k] G[s, l] w[k, l]


def filter_transform(W):
    """U (16, oc, c): U[4*r + s, o, ch] = (G W[o, ch] G^T)[r, s], computed in float64 and
    rounded to W's dtype, as one small GEMM: (G kron G) (16 x 9) times the flattened filters."""
    oc, c = W.shape[:2]
    U = GG @ W.reshape(oc * c, 9).T.astype(np.float64)
    return U.astype(W.dtype).reshape(16, oc, c)


@njit(**JIT)
def _input_transform(x, b0, b1, ph, pw, qh, qw, xp, V):
    """V[4*r + s, ch, (b - b0)*qh*qw + i*qw + j] = (B^T d B)[r, s], d the 4x4 tile of image b,
    channel ch, at rows 2i .. 2i + 3 and columns 2j .. 2j + 3 of the zero-padded plane xp
    (2*qh + 2, 2*qw + 2; filled here, one plane at a time, so the tile loop has no bounds tests)."""
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    hp, wp = xp.shape
    tiles = qh * qw
    for b in range(b0, b1):
        for ch in range(c):
            xp[:] = 0
            for yy in range(max(0, -ph), min(h, hp - ph)):
                src, dst = x[b, ch, yy], xp[yy + ph]
                for xx in range(max(0, -pw), min(w, wp - pw)):
                    dst[xx + pw] = src[xx]
            for i in range(qh):
                r0, r1, r2, r3 = xp[2 * i], xp[2 * i + 1], xp[2 * i + 2], xp[2 * i + 3]
                t0 = (b - b0) * tiles + i * qw
                for j in range(qw):
                    k = 2 * j
                    # B^T d: row combinations of the tile, column by column
                    a0, a1, a2, a3 = (
                        r0[k] - r2[k],
                        r0[k + 1] - r2[k + 1],
                        r0[k + 2] - r2[k + 2],
                        r0[k + 3] - r2[k + 3],
                    )
                    e0, e1, e2, e3 = (
                        r1[k] + r2[k],
                        r1[k + 1] + r2[k + 1],
                        r1[k + 2] + r2[k + 2],
                        r1[k + 3] + r2[k + 3],
                    )
                    f0, f1, f2, f3 = (
                        r2[k] - r1[k],
                        r2[k + 1] - r1[k + 1],
                        r2[k + 2] - r1[k + 2],
                        r2[k + 3] - r1[k + 3],
                    )
                    g0, g1, g2, g3 = (
                        r1[k] - r3[k],
                        r1[k + 1] - r3[k + 1],
                        r1[k + 2] - r3[k + 2],
                        r1[k + 3] - r3[k + 3],
                    )
                    # (B^T d) B: the same combinations of its columns
                    t = t0 + j
                    V[0, ch, t] = a0 - a2
                    V[1, ch, t] = a1 + a2
                    V[2, ch, t] = a2 - a1
                    V[3, ch, t] = a1 - a3
                    V[4, ch, t] = e0 - e2
                    V[5, ch, t] = e1 + e2
                    V[6, ch, t] = e2 - e1
                    V[7, ch, t] = e1 - e3
                    V[8, ch, t] = f0 - f2
                    V[9, ch, t] = f1 + f2
                    V[10, ch, t] = f2 - f1
                    V[11, ch, t] = f1 - f3
                    V[12, ch, t] = g0 - g2
                    V[13, ch, t] = g1 + g2
                    V[14, ch, t] = g2 - g1
                    V[15, ch, t] = g1 - g3


@njit(**JIT)
def _output_pool(M, o, bias, n_t, yf, af):
    """yf[t], af[t] = max and first argmax over the tile's taps of relu(A^T M A + bias), for
    output channel o and every tile t < n_t (M (16, oc, tiles))."""
    zero = yf.dtype.type(0)  # a typed zero: a literal 0 would turn the float32 selects into float64
    m0, m1, m2, m3 = M[0, o], M[1, o], M[2, o], M[3, o]
    m4, m5, m6, m7 = M[4, o], M[5, o], M[6, o], M[7, o]
    m8, m9, m10, m11 = M[8, o], M[9, o], M[10, o], M[11, o]
    m12, m13, m14, m15 = M[12, o], M[13, o], M[14, o], M[15, o]
    for t in range(n_t):
        # rows: A^T M (2 x 4)
        s0 = m0[t] + m4[t] + m8[t]
        s1 = m1[t] + m5[t] + m9[t]
        s2 = m2[t] + m6[t] + m10[t]
        s3 = m3[t] + m7[t] + m11[t]
        u0 = m4[t] - m8[t] - m12[t]
        u1 = m5[t] - m9[t] - m13[t]
        u2 = m6[t] - m10[t] - m14[t]
        u3 = m7[t] - m11[t] - m15[t]
        # columns: (A^T M) A -> the tile's conv values, taps 0..3 = (0, 0), (0, 1), (1, 0), (1, 1)
        yf[t], af[t] = first_max4(
            relu(s0 + s1 + s2 + bias, zero),
            relu(s1 - s2 - s3 + bias, zero),
            relu(u0 + u1 + u2 + bias, zero),
            relu(u1 - u2 - u3 + bias, zero),
        )


@njit(**JIT)
def _forward_body(x, U, bias, ph, pw, chunk, y, argmax, lo, hi):
    """Task t = images [t*chunk, (t+1)*chunk): input transform, 16 single-threaded BLAS GEMMs
    M[k] = U[k] @ V[k], then output transform + bias + ReLU + pool per output channel."""
    n, c = x.shape[0], x.shape[1]
    oc, qh, qw = y.shape[1], y.shape[2], y.shape[3]
    tiles = qh * qw
    # work buffers allocated once per call, not per chunk: fresh large allocations page-fault
    vbuf = np.empty(16 * c * chunk * tiles, dtype=y.dtype)
    mbuf = np.empty(16 * oc * chunk * tiles, dtype=y.dtype)
    yf = np.empty(chunk * tiles, dtype=y.dtype)
    af = np.empty(chunk * tiles, dtype=np.int32)
    xp = np.empty((2 * qh + 2, 2 * qw + 2), dtype=y.dtype)
    for t in range(lo, hi):
        b0 = t * chunk
        b1 = min(n, b0 + chunk)
        n_t = (b1 - b0) * tiles
        V = vbuf[: 16 * c * n_t].reshape(16, c, n_t)
        M = mbuf[: 16 * oc * n_t].reshape(16, oc, n_t)
        _input_transform(x, b0, b1, ph, pw, qh, qw, xp, V)
        for k in range(16):
            np.dot(U[k], V[k], M[k])
        for o in range(oc):
            _output_pool(M, o, bias[o], n_t, yf, af)
            for b in range(b0, b1):
                yp, ap = y[b, o].reshape(tiles), argmax[b, o].reshape(tiles)
                ys, as_ = yf[(b - b0) * tiles :], af[(b - b0) * tiles :]
                for k in range(tiles):
                    yp[k] = ys[k]
                    ap[k] = as_[k]


def forward(x, W, bias, padding, qh, qw, chunk):
    """(y, argmax int32), both (n, oc, qh, qw), of the block on x (n, c, h, w), W (oc, c, 3, 3)."""
    n, oc = x.shape[0], W.shape[0]
    y = np.empty((n, oc, qh, qw), dtype=x.dtype)
    argmax = np.empty((n, oc, qh, qw), dtype=np.int32)
    args = (x, filter_transform(W), bias, *padding, chunk, y, argmax)
    run_tasks(_forward_body, -(-n // chunk), *args, blas=True)
    return y, argmax
