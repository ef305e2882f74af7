"""Plain 3x3 stride-1 convolution, all three passes, by Winograd's F(2x2, 3x3): ResNet's convs.

Why (resnet18_2d, b32, 64x64, 2 cores): 13 of its 20 convs are 3x3 at stride 1, and their three
passes are ~85% of the step's FLOPs. im2col + GEMM spends 9 multiply-adds per output pixel, input
and output channel, the floor that the numpy flavour's BLAS GEMM also sits on; F(2x2, 3x3) spends
16 per 2x2 output tile (2.25x fewer), as 16 independent GEMMs of (oc x c) by (c x tiles).
The transforms are conv_relu_pool/winograd.py's (Lavin and Gray 2016): with d a 4x4 tile of the
padded input at (2i, 2j), U = G w G^T, V = B^T d B, M = sum_ch U * V, conv tile = A^T M A.

The three passes from the same pieces:
- forward:  y = A^T (sum_ch U[o, ch] * V[ch]) A + bias, per 2x2 output tile.
- gx:       the forward of gy with the flipped, transposed filter Wf[ch, o] = W[o, ch, ::-1, ::-1]
            and padding 2 - p (a stride-1 conv's transpose is a conv).
- gW:       y is linear in U, so gU = sum_tiles (A gy A^T) * V and gW = G^T gU G: 16 GEMMs of
            (oc x tiles) by (tiles x c), then one small (9 x 16) transform of the (oc, c) result.
Output tiles past an odd oh / ow are computed and dropped (forward) or get a zero gradient.

Threads: per chunk of images, each of the three stages is one run_tasks call (transforms split by
images or output channels, the 16 GEMMs split by k, BLAS single-threaded inside); chunks bound
the V and M buffers (CHUNK_ELEMS each), so large inputs do not need 4x their size at once.
Semantics differ from the dense formula only in rounding (the transforms add and subtract) and on
non-finite inputs (inf - inf), which the launchers in conv.py route to the dense path.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .conv_relu_pool.winograd import _input_transform
from .tasks import run_tasks

JIT = dict(cache=True, fastmath=False, nogil=True)
CHUNK_ELEMS = 1 << 22  # elements of one chunk's V (16, c, tiles): 16 MiB in float32


def tiles_of(oh: int, ow: int) -> tuple[int, int]:
    """(qh, qw): the 2x2 output tiles covering an oh x ow output."""
    return -(-oh // 2), -(-ow // 2)


def _images_per_chunk(n: int, channels: int, tiles: int) -> int:
    return max(1, min(n, CHUNK_ELEMS // max(16 * channels * tiles, 1)))


# ---------------------------------------------------------------- bodies ----
@njit(inline="always", **JIT)
def _g3(a0, a1, a2):
    """G (a0, a1, a2) for G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]."""
    return a0, 0.5 * (a0 + a1 + a2), 0.5 * (a0 - a1 + a2), a2


@njit(inline="always", **JIT)
def _gt4(m0, m1, m2, m3):
    """G^T (m0, m1, m2, m3), the adjoint of _g3."""
    return m0 + 0.5 * (m1 + m2), 0.5 * (m1 - m2), 0.5 * (m1 + m2) + m3


@njit(**JIT)
def _filter_body(W, flip, U, lo, hi):
    """U[4r + s, o, ch] = (G w G^T)[r, s] with w = W[o, ch] for o in [lo, hi), in float64 and
    rounded once to U's dtype. flip: w = W[o, ch, ::-1, ::-1] stored at U[:, ch, o] instead
    (the filter of the gradient's conv). Rows first (G w, 4 x 3), then columns ((G w) G^T)."""
    c = W.shape[1]
    rows = np.empty((4, 3))
    for o in range(lo, hi):
        for ch in range(c):
            w = W[o, ch]
            for col in range(3):
                k = 2 - col if flip else col
                a0 = np.float64(w[2, k] if flip else w[0, k])
                a1 = np.float64(w[1, k])
                a2 = np.float64(w[0, k] if flip else w[2, k])
                rows[0, col], rows[1, col], rows[2, col], rows[3, col] = _g3(a0, a1, a2)
            for r in range(4):
                v0, v1, v2, v3 = _g3(rows[r, 0], rows[r, 1], rows[r, 2])
                if flip:
                    U[4 * r, ch, o], U[4 * r + 1, ch, o] = v0, v1
                    U[4 * r + 2, ch, o], U[4 * r + 3, ch, o] = v2, v3
                else:
                    U[4 * r, o, ch], U[4 * r + 1, o, ch] = v0, v1
                    U[4 * r + 2, o, ch], U[4 * r + 3, o, ch] = v2, v3


@njit(**JIT)
def _filter_adjoint_body(gU, gW, lo, hi):
    """gW[o, ch] = G^T gU[:, o, ch] G (gU's 16 entries as a 4 x 4, row-major) for o in [lo, hi),
    in float64, rounded once: the gradient through U = G w G^T."""
    c = gW.shape[1]
    cols = np.empty((4, 3))
    for o in range(lo, hi):
        for ch in range(c):
            for r in range(4):  # each row of gU times G: (4 x 4) G -> 4 x 3
                m = gU[4 * r : 4 * r + 4, o, ch]
                cols[r, 0], cols[r, 1], cols[r, 2] = _gt4(
                    np.float64(m[0]), np.float64(m[1]), np.float64(m[2]), np.float64(m[3])
                )
            for col in range(3):  # then G^T from the left, column by column
                g0, g1, g2 = _gt4(cols[0, col], cols[1, col], cols[2, col], cols[3, col])
                gW[o, ch, 0, col], gW[o, ch, 1, col], gW[o, ch, 2, col] = g0, g1, g2


@njit(**JIT)
def _input_body(x, b0, ph, pw, qh, qw, V, lo, hi):
    """V[:, :, (b - b0)*tiles + t] for images b in [b0 + lo, b0 + hi) (conv_relu_pool.winograd's
    _input_transform on each task's images, into its columns of V)."""
    xp = np.empty((2 * qh + 2, 2 * qw + 2), dtype=V.dtype)  # one padded plane, per task
    tiles = qh * qw
    _input_transform(x, b0 + lo, b0 + hi, ph, pw, qh, qw, xp, V[:, :, lo * tiles :])


@njit(**JIT)
def _gemm_body(U, V, M, lo, hi):
    """M[k] = U[k] @ V[k] for k in [lo, hi): U (16, oc, c), V (16, c, T), M (16, oc, T)."""
    for k in range(lo, hi):
        np.dot(U[k], V[k], M[k])


@njit(**JIT)
def _grad_gemm_body(GY, V, gU, lo, hi):
    """gU[k] += GY[k] @ V[k]^T for k in [lo, hi): GY (16, oc, T), V (16, c, T), gU (16, oc, c)."""
    for k in range(lo, hi):
        gU[k] += np.dot(GY[k], V[k].T)


@njit(**JIT)
def _output_body(M, bias, b0, qh, qw, y, lo, hi):
    """y[b0 + bb, o, 2i + a, 2j + e] = (A^T M[:, o, t] A)[a, e] + bias[o] for output channels o
    in [lo, hi), tile t = (bb*qh + i)*qw + j; rows/columns past oh / ow are dropped."""
    oh, ow = y.shape[2], y.shape[3]
    nb = M.shape[2] // (qh * qw)
    for o in range(lo, hi):
        m0, m1, m2, m3 = M[0, o], M[1, o], M[2, o], M[3, o]
        m4, m5, m6, m7 = M[4, o], M[5, o], M[6, o], M[7, o]
        m8, m9, m10, m11 = M[8, o], M[9, o], M[10, o], M[11, o]
        m12, m13, m14, m15 = M[12, o], M[13, o], M[14, o], M[15, o]
        bo = bias[o]
        for bb in range(nb):
            yo = y[b0 + bb, o]
            for i in range(qh):
                r0 = yo[2 * i]
                r1 = yo[min(2 * i + 1, oh - 1)]  # an odd last row is written twice, same value
                for j in range(qw):
                    t = (bb * qh + i) * qw + j
                    # rows of A^T M (A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]), then its columns
                    s0 = m0[t] + m4[t] + m8[t]
                    s1 = m1[t] + m5[t] + m9[t]
                    s2 = m2[t] + m6[t] + m10[t]
                    s3 = m3[t] + m7[t] + m11[t]
                    u0 = m4[t] - m8[t] - m12[t]
                    u1 = m5[t] - m9[t] - m13[t]
                    u2 = m6[t] - m10[t] - m14[t]
                    u3 = m7[t] - m11[t] - m15[t]
                    c1 = min(2 * j + 1, ow - 1)
                    if 2 * i + 1 < oh:
                        r1[2 * j] = u0 + u1 + u2 + bo
                        r1[c1] = u1 - u2 - u3 + bo if 2 * j + 1 < ow else u0 + u1 + u2 + bo
                    r0[2 * j] = s0 + s1 + s2 + bo
                    r0[c1] = s1 - s2 - s3 + bo if 2 * j + 1 < ow else s0 + s1 + s2 + bo


@njit(**JIT)
def _grad_output_body(gy, b0, b1, qh, qw, GY, lo, hi):
    """GY[4r + s, o, t] = (A gy_t A^T)[r, s] for output channels o in [lo, hi), gy_t the 2x2 tile
    t of image b in [b0, b1) (zero past oh / ow). A = [[1, 0], [1, 1], [1, -1], [0, -1]]: a row
    (a, e) of a 2-column matrix becomes (a, a + e, a - e, -e), and likewise for columns."""
    oh, ow = gy.shape[2], gy.shape[3]
    zero = GY.dtype.type(0)
    for o in range(lo, hi):
        for b in range(b0, b1):
            g = gy[b, o]
            for i in range(qh):
                top = g[2 * i]
                bot = g[min(2 * i + 1, oh - 1)]
                has_bot = 2 * i + 1 < oh
                for j in range(qw):
                    t = ((b - b0) * qh + i) * qw + j
                    c1 = min(2 * j + 1, ow - 1)
                    has_right = 2 * j + 1 < ow
                    g00 = top[2 * j]
                    g01 = top[c1] if has_right else zero
                    g10 = bot[2 * j] if has_bot else zero
                    g11 = bot[c1] if has_bot & has_right else zero
                    # A g: rows (g0, g0 + g1, g0 - g1, -g1) of the tile's two rows g0, g1
                    for r in range(4):
                        if r == 0:
                            a, e = g00, g01
                        elif r == 1:
                            a, e = g00 + g10, g01 + g11
                        elif r == 2:
                            a, e = g00 - g10, g01 - g11
                        else:
                            a, e = -g10, -g11
                        GY[4 * r, o, t] = a
                        GY[4 * r + 1, o, t] = a + e
                        GY[4 * r + 2, o, t] = a - e
                        GY[4 * r + 3, o, t] = -e


# ------------------------------------------------------------- launchers ----
def filter_transform(W, flip: bool):
    """U (16, oc, c) of W (oc, c, 3, 3); flip: U (16, c, oc) of W[:, :, ::-1, ::-1] transposed."""
    oc, c = W.shape[:2]
    U = np.empty((16, c, oc) if flip else (16, oc, c), dtype=W.dtype)
    run_tasks(_filter_body, oc, W, flip, U)
    return U


def forward(x, W, bias, padding, oh: int, ow: int, flip: bool = False):
    """y (n, oc, oh, ow) = conv2d(x, W, bias, stride 1, padding) for W (oc, c, 3, 3), x and W
    C-contiguous and finite, bias (oc,) in x's dtype; oh, ow the stride-1 output size.
    flip: the conv with W[:, :, ::-1, ::-1] transposed, (c, oc, 3, 3), instead."""
    n, c = x.shape[:2]
    U = filter_transform(W, flip)
    oc = U.shape[1]
    ph, pw = padding
    qh, qw = tiles_of(oh, ow)
    tiles = qh * qw
    y = np.empty((n, oc, oh, ow), dtype=x.dtype)
    chunk = _images_per_chunk(n, max(c, oc), tiles)
    vbuf = np.empty(16 * c * chunk * tiles, dtype=x.dtype)
    mbuf = np.empty(16 * oc * chunk * tiles, dtype=x.dtype)
    for b0 in range(0, n, chunk):
        nb = min(chunk, n - b0)
        V = vbuf[: 16 * c * nb * tiles].reshape(16, c, nb * tiles)
        M = mbuf[: 16 * oc * nb * tiles].reshape(16, oc, nb * tiles)
        run_tasks(_input_body, nb, x, b0, ph, pw, qh, qw, V)
        run_tasks(_gemm_body, 16, U, V, M, blas=True)
        run_tasks(_output_body, oc, M, bias, b0, qh, qw, y)
    return y


def backward_input(gy, W, x_shape, padding):
    """gx (n, c, h, w) of the stride-1 3x3 conv: the forward of gy with W flipped and transposed,
    padding 2 - p (requires p <= 2)."""
    ph, pw = padding
    zero = np.zeros(W.shape[1], dtype=gy.dtype)
    return forward(gy, W, zero, (2 - ph, 2 - pw), x_shape[2], x_shape[3], flip=True)


def backward_weight(gy, x, padding):
    """gW (oc, c, 3, 3) of the stride-1 3x3 conv: gU[k] = sum over tiles of GY[k] V[k]^T in the
    transformed domain, then gW = G^T gU G (in float64, rounded to x's dtype)."""
    n, c = x.shape[:2]
    oc, oh, ow = gy.shape[1:]
    ph, pw = padding
    qh, qw = tiles_of(oh, ow)
    tiles = qh * qw
    gU = np.zeros((16, oc, c), dtype=x.dtype)
    chunk = _images_per_chunk(n, max(c, oc), tiles)
    vbuf = np.empty(16 * c * chunk * tiles, dtype=x.dtype)
    gbuf = np.empty(16 * oc * chunk * tiles, dtype=x.dtype)
    for b0 in range(0, n, chunk):
        nb = min(chunk, n - b0)
        V = vbuf[: 16 * c * nb * tiles].reshape(16, c, nb * tiles)
        GY = gbuf[: 16 * oc * nb * tiles].reshape(16, oc, nb * tiles)
        run_tasks(_input_body, nb, x, b0, ph, pw, qh, qw, V)
        run_tasks(_grad_output_body, oc, gy, b0, b0 + nb, qh, qw, GY)
        run_tasks(_grad_gemm_body, 16, GY, V, gU, blas=True)
    gW = np.empty((oc, c, 3, 3), dtype=x.dtype)
    run_tasks(_filter_adjoint_body, oc, gU, gW)
    return gW
