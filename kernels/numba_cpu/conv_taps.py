"""2-D convolution, all three passes, as one GEMM per kernel tap over channels-last rows: the
path for thick convs on small maps (ResNet's 4x4 and 2x2 stages, its stride-2 convs).

Why (resnet18_2d, b32, 64x64; benchmarks/README): on a 2x2 or 4x4 map most of im2col's columns
are padding, and Winograd F(2x2, 3x3) spends its time in the transforms (a 2x2 map is a single
tile: 16 products per tile, no saving over the 4 valid taps per pixel). Here each tap (u, v)
multiplies only the (image, pixel) rows whose input pixel lies inside the map: on a 2x2 map with
padding 1 that is 16 products per (image, in channel, out channel) instead of im2col's 36, and
each GEMM is (rows x c) by (c x oc) with rows = the valid pixels of a whole chunk of images, a
shape BLAS runs well (the chunked GEMM's are (oc x c*k*k) by (c*k*k x few columns)).

Layout and index scheme: a chunk of images [b0, b1) is copied channels-last, X[(bb*h + r)*w + s,
ch] = x[b0 + bb, ch, r, s] (and likewise gy -> G with (oh, ow)). For tap (u, v), output pixel (i, j)
reads input pixel (i*sh + u - ph, j*sw + v - pw); _tap_rows lists the (input row, output row)
pairs of the chunk where that pixel is inside, in (bb, i, j) order. Then
- forward: Y[out rows] += X[in rows] @ W[:, :, u, v].T, and y = Y + bias back in NCHW;
- gx:      GX[in rows] += G[out rows] @ W[:, :, u, v];
- gW:      gW[:, :, u, v] = sum over chunks of G[out rows].T @ X[in rows] (chunks summed in
           order into a few partials, then the partials in order: deterministic).
The taps are added in row-major order (u, v), so results differ from the dense sums only in
rounding. Padding taps are skipped, not multiplied by zero: a non-finite weight facing padding
gives no NaN here (the dense formula's 0 * inf does); conv.py routes non-finite inputs elsewhere.
Threads: run_tasks over chunks of images (BLAS single-threaded inside each task).
pointwise_forward, at the end: a strided 1x1 forward (one tap, nothing to skip) as one GEMM over
the whole batch per block of output channels instead.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .tasks import run_tasks, threads
from .window import out_size

JIT = dict(cache=True, fastmath=False, nogil=True)
CHUNK_ELEMS = 1 << 20  # elements of one chunk's channels-last input + output: 4 MiB in float32
MAX_PARTIALS_PER_THREAD = 2  # weight gradient: partial sums (kh*kw x oc x c each) per thread


def images_per_chunk(n: int, per_image: int) -> int:
    """Images per task: one task per thread (the longest GEMMs), fewer where a chunk's buffers
    would pass CHUNK_ELEMS."""
    return max(1, min(-(-n // threads()), CHUNK_ELEMS // max(per_image, 1)))


# ---------------------------------------------------------------- bodies ----
@njit(**JIT)
def _tap_range(u, s, p, size, osize):
    """[lo, hi): the outputs i whose input i*s + u - p lies in [0, size)."""
    lo = max(0, -((u - p) // s))
    hi = min(osize, (size - 1 + p - u) // s + 1)
    return lo, max(lo, hi)


@njit(**JIT)
def _tap_rows(nb, h, w, oh, ow, u, v, sh, sw, ph, pw, rows_in, rows_out):
    """Fill rows_in / rows_out with the (input row, output row) pairs of tap (u, v) over nb
    images (see the module docstring); returns how many."""
    i0, i1 = _tap_range(u, sh, ph, h, oh)
    j0, j1 = _tap_range(v, sw, pw, w, ow)
    r = 0
    for bb in range(nb):
        for i in range(i0, i1):
            base_in = (bb * h + i * sh + u - ph) * w + v - pw
            base_out = (bb * oh + i) * ow
            for j in range(j0, j1):
                rows_in[r] = base_in + j * sw
                rows_out[r] = base_out + j
                r += 1
    return r


@njit(**JIT)
def _gather(S, rows, r, A):
    """A[k] = S[rows[k]] for k < r (whole rows of channels)."""
    for k in range(r):
        src, dst = S[rows[k]], A[k]
        for ch in range(S.shape[1]):
            dst[ch] = src[ch]


@njit(**JIT)
def _scatter_add(P, rows, r, D):
    """D[rows[k]] += P[k] for k < r; the rows of one tap are distinct, so order is fixed."""
    for k in range(r):
        src, dst = P[k], D[rows[k]]
        for ch in range(D.shape[1]):
            dst[ch] += src[ch]


@njit(**JIT)
def _to_rows(a, b0, b1, out):
    """a (n, c, P) -> out ((b1 - b0)*P, c): out[(b - b0)*P + p, ch] = a[b, ch, p]."""
    npix = a.shape[2]
    for b in range(b0, b1):
        for p in range(npix):
            row = out[(b - b0) * npix + p]
            for ch in range(a.shape[1]):
                row[ch] = a[b, ch, p]


@njit(**JIT)
def _from_rows(R, bias, b0, b1, out):
    """out[b, ch, p] = R[(b - b0)*P + p, ch] + bias[ch] for b in [b0, b1): out (n, c, P)."""
    npix = out.shape[2]
    for b in range(b0, b1):
        for ch in range(out.shape[1]):
            dst, bc = out[b, ch], bias[ch]
            for p in range(npix):
                dst[p] = R[(b - b0) * npix + p, ch] + bc


@njit(**JIT)
def _weight_taps_body(W, Wr, lo, hi):
    """Wr[k, o, ch] = W[o, ch, k] for o in [lo, hi): W (oc, c, kh*kw), one (oc, c) per tap."""
    for o in range(lo, hi):
        for ch in range(W.shape[1]):
            for k in range(W.shape[2]):
                Wr[k, o, ch] = W[o, ch, k]


@njit(**JIT)
def _weight_untaps_body(partial, gW, lo, hi):
    """gW[o, ch, k] = sum_t partial[t, k, o, ch] for o in [lo, hi), t in order."""
    for o in range(lo, hi):
        for ch in range(gW.shape[1]):
            for k in range(gW.shape[2]):
                s = partial[0, k, o, ch]
                for t in range(1, partial.shape[0]):
                    s += partial[t, k, o, ch]
                gW[o, ch, k] = s


@njit(**JIT)
def _tap_products_body(
    s3, Wr, bias, h, w, oh, ow, kh, kw, sh, sw, ph, pw, chunk, adjoint, d3, lo, hi
):
    """The forward and the input gradient, for the chunks of images in [lo, hi); Wr (kh*kw, oc, c).
    Forward (adjoint False): s3 = x3 (n, c, h*w) -> d3 = y3 (n, oc, oh*ow), per tap the rows of
    the in-map input pixels times Wr[tap].T added into their output rows, then the bias. Input
    gradient (adjoint True): s3 = gy3 (n, oc, oh*ow) -> d3 = gx3 (n, c, h*w), the same taps'
    output rows times Wr[tap] added into their input rows; bias is zeros (c,)."""
    n, cs = s3.shape[0], s3.shape[1]
    cd = d3.shape[1]
    for t in range(lo, hi):
        b0 = t * chunk
        b1 = min(n, b0 + chunk)
        nb = b1 - b0
        S = np.empty((nb * s3.shape[2], cs), dtype=s3.dtype)
        _to_rows(s3, b0, b1, S)
        D = np.zeros((nb * d3.shape[2], cd), dtype=s3.dtype)
        A = np.empty((nb * oh * ow, cs), dtype=s3.dtype)
        rows_in = np.empty(nb * oh * ow, dtype=np.int64)
        rows_out = np.empty(nb * oh * ow, dtype=np.int64)
        for u in range(kh):
            for v in range(kw):
                r = _tap_rows(nb, h, w, oh, ow, u, v, sh, sw, ph, pw, rows_in, rows_out)
                if r == 0:
                    continue
                if adjoint:
                    _gather(S, rows_out, r, A)
                    _scatter_add(np.dot(A[:r], Wr[u * kw + v]), rows_in, r, D)
                else:
                    _gather(S, rows_in, r, A)
                    _scatter_add(np.dot(A[:r], Wr[u * kw + v].T), rows_out, r, D)
        _from_rows(D, bias, b0, b1, d3)


@njit(**JIT)
def _grad_weight_body(gy3, x3, h, w, oh, ow, kh, kw, sh, sw, ph, pw, chunk, span, partial, lo, hi):
    """partial[t, u*kw + v] = sum of G[out rows].T @ X[in rows] (oc, c) over the images
    [t*span, (t + 1)*span), chunk images at a time, in order, for the slots t in [lo, hi)."""
    n, oc = gy3.shape[0], gy3.shape[1]
    c = x3.shape[1]
    npix = oh * ow
    X = np.empty((chunk * h * w, c), dtype=x3.dtype)
    G = np.empty((chunk * npix, oc), dtype=x3.dtype)
    Ax = np.empty((chunk * npix, c), dtype=x3.dtype)
    Ag = np.empty((chunk * npix, oc), dtype=x3.dtype)
    prod = np.empty((oc, c), dtype=x3.dtype)
    rows_in = np.empty(chunk * npix, dtype=np.int64)
    rows_out = np.empty(chunk * npix, dtype=np.int64)
    for t in range(lo, hi):
        for b0 in range(t * span, min(n, (t + 1) * span), chunk):
            b1 = min(n, b0 + chunk, (t + 1) * span)
            nb, first = b1 - b0, b0 == t * span
            _to_rows(x3, b0, b1, X)
            _to_rows(gy3, b0, b1, G)
            for u in range(kh):
                for v in range(kw):
                    acc = partial[t, u * kw + v]
                    r = _tap_rows(nb, h, w, oh, ow, u, v, sh, sw, ph, pw, rows_in, rows_out)
                    if r == 0:
                        if first:
                            acc[:] = 0
                        continue
                    _gather(X, rows_in, r, Ax)
                    _gather(G, rows_out, r, Ag)
                    if first:  # the slot's first chunk writes its partial directly
                        np.dot(Ag[:r].T, Ax[:r], acc)
                        continue
                    np.dot(Ag[:r].T, Ax[:r], prod)
                    for o in range(oc):
                        for ch in range(c):
                            acc[o, ch] += prod[o, ch]


# ------------------------------------------------------------- launchers ----
def weight_taps(W):
    """Wr (kh*kw, oc, c): Wr[u*kw + v] = W[:, :, u, v], C-contiguous."""
    oc, c, kh, kw = W.shape
    Wr = np.empty((kh * kw, oc, c), dtype=W.dtype)
    run_tasks(_weight_taps_body, oc, np.ascontiguousarray(W).reshape(oc, c, kh * kw), Wr)
    return Wr


def forward(x, W, bias, stride, padding):
    """y (n, oc, oh, ow) = conv2d(x, W, bias, stride, padding); x, W C-contiguous, bias (oc,)."""
    n, c, h, w = x.shape
    oc, _, kh, kw = W.shape
    (sh, sw), (ph, pw) = stride, padding
    oh, ow = out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)
    y = np.empty((n, oc, oh, ow), dtype=x.dtype)
    chunk = images_per_chunk(n, h * w * c + oh * ow * (c + oc))
    x3, y3 = x.reshape(n, c, h * w), y.reshape(n, oc, oh * ow)
    args = (x3, weight_taps(W), bias, h, w, oh, ow, kh, kw, sh, sw, ph, pw, chunk, False, y3)
    run_tasks(_tap_products_body, -(-n // chunk), *args, blas=True)
    return y


def backward_input(gy, W, x_shape, stride, padding):
    """gx (n, c, h, w) of conv2d(x, W, stride, padding); gy, W C-contiguous."""
    n, c, h, w = x_shape
    oc, _, kh, kw = W.shape
    oh, ow = gy.shape[2], gy.shape[3]
    (sh, sw), (ph, pw) = stride, padding
    gx = np.empty((n, c, h, w), dtype=gy.dtype)
    chunk = images_per_chunk(n, h * w * c + oh * ow * 2 * oc)
    gy3, gx3 = gy.reshape(n, oc, oh * ow), gx.reshape(n, c, h * w)
    zero = np.zeros(c, dtype=gy.dtype)
    args = (gy3, weight_taps(W), zero, h, w, oh, ow, kh, kw, sh, sw, ph, pw, chunk, True, gx3)
    run_tasks(_tap_products_body, -(-n // chunk), *args, blas=True)
    return gx


def backward_weight(gy, x, kernel_size, stride, padding):
    """gW (oc, c, kh, kw) of conv2d(x, W, stride, padding); gy, x C-contiguous."""
    n, c, h, w = x.shape
    oc, oh, ow = gy.shape[1:]
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    chunk = images_per_chunk(n, h * w * c + oh * ow * 2 * (c + oc))
    # at most MAX_PARTIALS_PER_THREAD partial gWs per thread (a large batch in many small chunks
    # would otherwise hold one gW-sized partial per chunk), each summing span images in chunks
    slots = min(-(-n // chunk), MAX_PARTIALS_PER_THREAD * threads())
    span = -(-n // slots)
    slots = -(-n // span)
    partial = np.empty((slots, kh * kw, oc, c), dtype=x.dtype)
    gy3, x3 = gy.reshape(n, oc, oh * ow), x.reshape(n, c, h * w)
    args = (gy3, x3, h, w, oh, ow, kh, kw, sh, sw, ph, pw, min(chunk, span), span, partial)
    run_tasks(_grad_weight_body, slots, *args, blas=True)
    gW = np.empty((oc, c, kh, kw), dtype=x.dtype)
    run_tasks(_weight_untaps_body, oc, partial, gW.reshape(oc, c, kh * kw))
    return gW


# ---- a 1x1 kernel: one tap, so no rows to skip; one GEMM over the whole batch instead ----
@njit(**JIT)
def _pointwise_gather_body(x, sh, sw, oh, ow, X2, lo, hi):
    """X2[ch, (b*oh + i)*ow + j] = x[b, ch, i*sh, j*sw] for channels ch in [lo, hi)."""
    for ch in range(lo, hi):
        dst = X2[ch]
        for b in range(x.shape[0]):
            for i in range(oh):
                row = x[b, ch, i * sh]
                base = (b * oh + i) * ow
                for j in range(ow):
                    dst[base + j] = row[j * sw]


@njit(**JIT)
def _pointwise_forward_body(Wm, X2, bias, block, y3, lo, hi):
    """y3[b, o, p] = bias[o] + (Wm @ X2)[o, b*P + p] for the output channels of blocks [lo, hi)
    (block channels each): one GEMM per block over the whole batch."""
    oc, npix = y3.shape[1], y3.shape[2]
    for t in range(lo, hi):
        o0 = t * block
        o1 = min(oc, o0 + block)
        out = np.dot(Wm[o0:o1], X2)  # (o1 - o0, n*P)
        for o in range(o0, o1):
            src, bo = out[o - o0], bias[o]
            for b in range(y3.shape[0]):
                dst = y3[b, o]
                for p in range(npix):
                    dst[p] = src[b * npix + p] + bo


def pointwise_forward(x, W, bias, stride):
    """y (n, oc, oh, ow) = conv2d(x, W, bias, stride, padding 0) for a 1x1 W (oc, c, 1, 1): the
    strided subsample of x as (c, n*oh*ow), then one GEMM per block of output channels (one block
    per thread). x C-contiguous."""
    n, c, h, w = x.shape
    oc = W.shape[0]
    (sh, sw) = stride
    oh, ow = out_size(h, 1, sh, 0), out_size(w, 1, sw, 0)
    X2 = np.empty((c, n * oh * ow), dtype=x.dtype)
    run_tasks(_pointwise_gather_body, c, x, sh, sw, oh, ow, X2)
    y = np.empty((n, oc, oh, ow), dtype=x.dtype)
    block = -(-oc // threads())
    Wm = np.ascontiguousarray(W).reshape(oc, c)
    args = (Wm, X2, bias, block, y.reshape(n, oc, oh * ow))
    run_tasks(_pointwise_forward_body, -(-oc // block), *args, blas=True)
    return y
