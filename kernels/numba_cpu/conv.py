"""Convolution kernels compiled by Numba: a direct loop for thin inputs, im2col + BLAS GEMM otherwise.

Why two paths (measured on the seed CNN, 2 cores, float32, batch 256; benchmarks/README.md):
- conv1 (c*kh*kw = 9): a GEMM with K = 9 runs far below the BLAS ceiling, and im2col moves 9x the
  input's bytes. The direct loop (direct_plane) computes one output plane in a cache-resident
  buffer with one long vectorised axpy per tap over "wide rows" (stride 1).
- conv2 (c*kh*kw = 288): the GEMM is where the FLOPs are. Per chunk of images (run_tasks, one
  task per chunk, BLAS on one thread inside Numba): im2col into K-major columns, one GEMM, and an
  epilogue that writes NCHW directly. For stride 1 the columns use the "wide" layout (one memcpy
  per run, see im2col_wide), which made im2col/col2im cheap next to the GEMM.
`DIRECT_MAX_K` is the switch between the two. Two more paths for thick convs: Winograd F(2x2, 3x3)
(conv_winograd.py) on small 3x3 stride-1 maps, and conv3d_direct.py's register-blocked direct
kernel on wider stride-1 maps (direct_simd_ok; measured on resnet18_2d, see the constants).
Ahead of both: conv_taps.py, one GEMM per kernel tap, on small output maps (taps_ok), and its
whole-batch GEMM for strided 1x1 forwards (pointwise_ok).

Numba habits that the timings forced (each measured on these kernels): index arrays through
slices so every index is provably >= 0 (an `a[q + off]` with a signed offset blocks vectorisation:
8x); `|`/`&` instead of `or`/`and` in per-element conditions (short-circuits become mispredicted
branches: 5x); loops instead of array-to-array slice assignments (1.5 s of compilation each).

Index conventions (shared by every body below): x (n, c, h, w), W (oc, c, kh, kw), y (n, oc, oh, ow),
oh = (h + 2 ph - kh) // sh + 1. Output pixel (i, j), tap (u, v) reads input row i*sh + u - ph and
column j*sw + v - pw; a read outside [0, h) x [0, w) is zero padding. im2col rows run over
(b, i, j) -> (b*oh + i)*ow + j and columns over (ch, u, v) -> (ch*kh + u)*kw + v, as in numpy_cpu.
Bodies (`_*_body`) fill preallocated outputs; the launchers allocate, pick the path and call BLAS.
direct_plane, im2col_kmajor, im2col_wide, padded and contiguous also serve the fused block
(conv_relu_pool/gemm.py).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .tasks import images_per_task, run_tasks
from .window import out_size, windows_inside

JIT = dict(cache=True, fastmath=False, nogil=True)
DIRECT_MAX_K = 32  # c*kh*kw up to which the direct loop beats im2col + GEMM (measured, see above)
# Winograd F(2x2, 3x3) (conv_winograd.py) for 3x3 stride-1 convs on maps of up to this many
# output pixels. Measured on resnet18_2d's convs (b32, 2 cores, interleaved, benchmarks/README):
# 1.1-1.9x faster than the chunked GEMM at 4x4 and 2x2 (256-512 channels: the chunks' GEMMs are
# thin there), 0.5-0.7x at 16x16 and 8x8 (64-128 channels: the chunked GEMM runs near the BLAS
# rate and the memory-bound transforms cost more than the 2.25x fewer multiply-adds save).
WINOGRAD_MAX_PIXELS = 16
# The register-blocked direct kernel of conv3d_direct.py (12 vector accumulators per block, no
# im2col, no GEMM; a 2-D conv is its depth-1 case) for stride-1 convs too thick for the direct
# plane loop. Measured on resnet18_2d's 3x3 convs (b32, float32, interleaved with the chunked
# GEMM and PyTorch, 1 and 2 threads, loaded machine; benchmarks/README): forward and input
# gradient 1.35-2.1x the chunked GEMM at 16x16 and 8x8; weight gradient 1.6x at 16x16 but
# 0.7-1.0x at 8x8 (probably: 8 one-vector rows per image give each block too few slots to
# amortise its lane sums). At 4x4 it lost to Winograd (a 4-wide row fills half a vector).
DIRECT_SIMD_MIN_WIDTH = 8  # forward and input gradient: output width ow >= this
DIRECT_SIMD_GW_MIN_PIXELS = 256  # weight gradient: oh*ow >= this
# One GEMM per kernel tap over channels-last rows (conv_taps.py) for thick convs on small output
# maps, any stride and padding. Measured on resnet18_2d's convs (b32, float32, 1 thread,
# interleaved with the paths before it and PyTorch, load ~5; benchmarks/README): at 4x4 and 2x2
# (256-512 channels) all three passes 1.6-3.2x the Winograd path; 3x3 stride-2 forward and
# weight gradient 1.0-2.6x the chunked GEMM; the 8x8 weight gradient (128 ch) 1.8x; but the
# input gradient at 8x8 outputs 0.93x, 16x16 maps 0.7x and 1x1 kernels 0.6-1.2x (no taps to
# skip there: the channels-last copies only cost), hence the limits and kh*kw > 1.
TAPS_MAX_PIXELS = 64  # forward and weight gradient: output oh*ow <= this
TAPS_GX_MAX_PIXELS = 16  # input gradient: output oh*ow <= this


# ---------------------------------------------------------------- bodies ----
# Array-to-array slice assignment (`a[i:j] = b[k]`) costs Numba ~1.5 s of compilation per
# signature (measured; the cold first step has a 10 s budget), a loop ~0.05 s: so copies are
# loops, through these two helpers. Scalar fills (`a[:] = 0`) are cheap and stay.
@njit(**JIT)
def _copy(dst, src):
    """dst[k] = src[k] for 1-D arrays of equal length."""
    for k in range(dst.shape[0]):
        dst[k] = src[k]


@njit(**JIT)
def _copy2d(dst, src):
    """dst[r, k] = src[r, k] for 2-D arrays of equal shape (any layouts)."""
    for r in range(dst.shape[0]):
        for k in range(dst.shape[1]):
            dst[r, k] = src[r, k]


@njit(**JIT)
def _pad_body(x, ph, pw, xpad):
    """xpad[b, ch, ph + y, pw + x] = x[b, ch, y, x]; the border of xpad is set to 0."""
    n, c, h, w = x.shape
    for p in range(n * c):
        b, ch = p // c, p % c  # one (image, channel) plane per iteration
        xpad[b, ch] = 0
        for y in range(h):
            for xx in range(w):
                xpad[b, ch, ph + y, pw + xx] = x[b, ch, y, xx]


@njit(**JIT)
def direct_plane(xpad, W, b, o, sh, sw, oh, ow, z):
    """One output plane (b, o) without bias into the flat buffer z: conv value (i, j) lands at
    z[i*rs + j], rs = wp (the padded width) when the stride is 1, else ow. Returns rs.

    Stride 1 uses "wide rows": tap (u, v) adds W[o, ch, u, v] * xflat[q + u*wp + v] for every q in
    [0, (oh - 1)*wp + ow), one long unit-stride axpy over the whole plane (columns j >= ow of each
    wide row are junk that nobody reads). That vectorises fully, where the per-row axpy of a
    26-wide row spent most of its time in loop remainders."""
    c, hp, wp = xpad.shape[1], xpad.shape[2], xpad.shape[3]
    kh, kw = W.shape[2], W.shape[3]
    if sh == 1 and sw == 1:
        span = (oh - 1) * wp + ow  # last wide index read + 1
        z[:span] = 0
        for ch in range(c):
            xf = xpad[b, ch].reshape(hp * wp)  # the padded input plane, flat
            for u in range(kh):
                for v in range(kw):
                    wv = W[o, ch, u, v]
                    xs = xf[u * wp + v : u * wp + v + span]  # wide index q reads xs[q]
                    for q in range(span):
                        z[q] += wv * xs[q]
        return wp
    z[: oh * ow] = 0
    for i in range(oh):
        for ch in range(c):
            for u in range(kh):
                xrow = xpad[b, ch, i * sh + u]  # input row of tap row u
                for v in range(kw):
                    wv = W[o, ch, u, v]
                    for j in range(ow):
                        z[i * ow + j] += wv * xrow[j * sw + v]
    return ow


@njit(**JIT)
def _conv_direct_body(xpad, W, bias, sh, sw, y, lo, hi):
    """y[b, o, i, j] = bias[o] + sum_{ch,u,v} W[o, ch, u, v] * xpad[b, ch, i*sh + u, j*sw + v].
    xpad is the zero-padded input, so no bounds checks. Task p in [lo, hi) is plane (b, o) =
    divmod(p, oc)."""
    n, oc, oh, ow = y.shape
    z = np.empty(oh * xpad.shape[3] + ow, dtype=y.dtype)  # one plane, wide or compact rows
    for p in range(lo, hi):
        b, o = p // oc, p % oc
        rs = direct_plane(xpad, W, b, o, sh, sw, oh, ow, z)
        for i in range(oh):
            zr, yr = z[i * rs : i * rs + ow], y[b, o, i]  # slices: indices provably >= 0
            for j in range(ow):
                yr[j] = zr[j] + bias[o]


@njit(**JIT)
def _conv_direct_grad_weight_body(gy, xpad, sh, sw, gW, lo, hi):
    """gW[o, ch, u, v] = sum_{b,i,j} gy[b, o, i, j] * xpad[b, ch, i*sh + u, j*sw + v].
    Task o in [lo, hi) is output channel o. Partial sums are kept per lane (one per wide index q,
    stride 1, or per output column j), so the loops vectorise without reassociating a scalar sum,
    and are reduced once at the end. Stride 1 uses wide rows as direct_plane: gy's plane is
    copied into a zero-padded wide buffer g (row stride wp), then acc[ch, u, v, q] += g[q] *
    xflat[q + u*wp + v]."""
    n, oc, oh, ow = gy.shape
    c, kh, kw = gW.shape[1], gW.shape[2], gW.shape[3]
    hp, wp = xpad.shape[2], xpad.shape[3]
    wide = sh == 1 and sw == 1
    span = (oh - 1) * wp + ow if wide else ow
    g = np.zeros(span, dtype=gW.dtype)
    for o in range(lo, hi):
        acc = np.zeros((c, kh, kw, span), dtype=gW.dtype)
        for b in range(n):
            if wide:
                for i in range(oh):
                    _copy(g[i * wp : i * wp + ow], gy[b, o, i])  # columns ow..wp-1 stay zero
                for ch in range(c):
                    xf = xpad[b, ch].reshape(hp * wp)
                    for u in range(kh):
                        for v in range(kw):
                            a = acc[ch, u, v]
                            xs = xf[u * wp + v : u * wp + v + span]
                            for q in range(span):
                                a[q] += g[q] * xs[q]
                continue
            for i in range(oh):
                gr = gy[b, o, i]
                for ch in range(c):
                    for u in range(kh):
                        xrow = xpad[b, ch, i * sh + u]
                        for v in range(kw):
                            a = acc[ch, u, v]
                            for j in range(ow):
                                a[j] += gr[j] * xrow[j * sw + v]
        for ch in range(c):
            for u in range(kh):
                for v in range(kw):
                    gW[o, ch, u, v] = acc[ch, u, v].sum()


@njit(**JIT)
def im2col_kmajor(x, b0, b1, kh, kw, sh, sw, ph, pw, oh, ow, cols):
    """K-major im2col of images b0..b1-1: cols[(ch*kh + u)*kw + v, (b - b0)*oh*ow + i*ow + j] =
    x[b, ch, i*sh + u - ph, j*sw + v - pw], or 0 in the padding. The in-bounds columns [j0, j1)
    of a run are copied without branches (a memcpy for stride 1); only the padding is zeroed."""
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    for ch in range(c):
        for u in range(kh):
            for v in range(kw):
                row = cols[(ch * kh + u) * kw + v]  # one tap (ch, u, v) of every pixel
                j0, j1 = windows_inside(v, sw, pw, ow, w)
                for b in range(b0, b1):
                    for i in range(oh):
                        yy = i * sh + u - ph  # input row of tap row u
                        base = (b - b0) * oh * ow + i * ow  # column of pixel (b, i, 0)
                        if yy < 0 or yy >= h:
                            row[base : base + ow] = 0
                            continue
                        row[base : base + j0] = 0
                        row[base + j1 : base + ow] = 0
                        # input column of tap column v is j*sw + v - pw; slices keep every index
                        # provably >= 0, which Numba needs to vectorise (8x, measured)
                        xr = x[b, ch, yy, j0 * sw + v - pw :]
                        dst = row[base + j0 : base + j1]
                        for j in range(j1 - j0):
                            dst[j] = xr[j * sw]


@njit(**JIT)
def _col2im_t(cols, b0, b1, kh, kw, sh, sw, ph, pw, oh, ow, x):
    """Adjoint of im2col_kmajor: x[b, ch, i*sh + u - ph, j*sw + v - pw] += cols[(ch*kh + u)*kw + v,
    (b - b0)*oh*ow + i*ow + j], taps in the padding dropped. x[b0:b1] must be zero on entry."""
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    for ch in range(c):
        for u in range(kh):
            for v in range(kw):
                row = cols[(ch * kh + u) * kw + v]
                j0, j1 = windows_inside(v, sw, pw, ow, w)
                for b in range(b0, b1):
                    for i in range(oh):
                        yy = i * sh + u - ph
                        if yy < 0 or yy >= h:
                            continue
                        base = (b - b0) * oh * ow + i * ow
                        xr = x[b, ch, yy, j0 * sw + v - pw :]
                        src = row[base + j0 : base + j1]
                        for j in range(j1 - j0):
                            xr[j * sw] += src[j]


@njit(**JIT)
def _gy_t(gy, b0, b1):
    """gy (n, oc, P) -> (oc, (b1 - b0)*P): [o, (b - b0)*P + p] = gy[b, o, p], contiguous runs."""
    oc, npix = gy.shape[1], gy.shape[2]
    out = np.empty((oc, (b1 - b0) * npix), dtype=gy.dtype)
    for o in range(oc):
        for b in range(b0, b1):
            _copy(out[o, (b - b0) * npix : (b - b0 + 1) * npix], gy[b, o])
    return out


@njit(**JIT)
def _gemm_forward_body(x, Wm, bias, kh, kw, sh, sw, ph, pw, chunk, y, lo, hi):
    """y[b, o, p] = bias[o] + (Wm @ cols)[o, (b - b0)*P + p], per chunk of `chunk` images.
    Wm = W.reshape(oc, c*kh*kw); each task builds its chunk's columns in cache, multiplies with a
    single-threaded BLAS call, and writes NCHW rows directly (K-major columns need no transpose)."""
    n = x.shape[0]
    oc, oh, ow = y.shape[1], y.shape[2], y.shape[3]
    npix = oh * ow
    for t in range(lo, hi):  # task t = images [t*chunk, (t+1)*chunk)
        b0 = t * chunk
        b1 = min(n, b0 + chunk)
        cols = np.empty((Wm.shape[1], (b1 - b0) * npix), dtype=x.dtype)
        im2col_kmajor(x, b0, b1, kh, kw, sh, sw, ph, pw, oh, ow, cols)
        out = np.dot(Wm, cols)  # (oc, (b1 - b0)*P)
        for b in range(b0, b1):
            for o in range(oc):
                yo = y[b, o].reshape(npix)  # output plane (b, o) as a flat row of P pixels
                src = out[o, (b - b0) * npix : (b - b0 + 1) * npix]
                for p in range(npix):
                    yo[p] = src[p] + bias[o]


@njit(**JIT)
def _gemm_grad_input_body(gy, WmT, kh, kw, sh, sw, ph, pw, chunk, gx, lo, hi):
    """gx = col2im(WmT @ gy_t) per chunk of images: gy_t[o, (b - b0)*P + p] = gy[b, o, p];
    WmT = W.reshape(oc, c*kh*kw).T, C-contiguous."""
    n, oc, oh, ow = gy.shape
    gy3 = gy.reshape(n, oc, oh * ow)
    for t in range(lo, hi):
        b0 = t * chunk
        b1 = min(n, b0 + chunk)
        gcols = np.dot(WmT, _gy_t(gy3, b0, b1))  # (c*kh*kw, (b1 - b0)*P)
        gx[b0:b1] = 0  # zeroed per chunk, while in cache: no separate zero-fill pass
        _col2im_t(gcols, b0, b1, kh, kw, sh, sw, ph, pw, oh, ow, gx)


@njit(**JIT)
def _gemm_grad_weight_body(gy, x, kh, kw, sh, sw, ph, pw, chunk, partial, lo, hi):
    """partial[t] = gy_t @ cols^T for chunk t (oc, c*kh*kw); the caller sums over t. One partial
    per task keeps the reduction race-free and its order fixed (deterministic results)."""
    n, oc, oh, ow = gy.shape
    gy3 = gy.reshape(n, oc, oh * ow)
    for t in range(lo, hi):
        b0 = t * chunk
        b1 = min(n, b0 + chunk)
        cols = np.empty((partial.shape[2], (b1 - b0) * oh * ow), dtype=x.dtype)
        im2col_kmajor(x, b0, b1, kh, kw, sh, sw, ph, pw, oh, ow, cols)
        _copy2d(partial[t], np.dot(_gy_t(gy3, b0, b1), cols.T))


# ---- stride 1: "wide" GEMM layout (see direct_plane) ----
# For stride 1 the im2col row of tap (ch, u, v) for image b is one contiguous run of the padded
# input plane: cols[(ch*kh + u)*kw + v, (b - b0)*span + q] = xpad[b, ch].flat[q + u*wp + v], with
# q = i*wp + j for output pixel (i, j) and span = (oh - 1)*wp + ow. Columns with j >= ow are junk:
# the forward epilogue skips them and the backward passes give them a zero gradient (so they add
# nothing to gW or gx). One memcpy of span elements replaces oh runs of ow with bounds checks:
# im2col and col2im of the seed CNN's conv2 cost as much as its GEMM before this.


@njit(**JIT)
def im2col_wide(xpad, b0, b1, kh, kw, span, cols):
    """Wide K-major im2col of images b0..b1-1 (layout above)."""
    c, hp, wp = xpad.shape[1], xpad.shape[2], xpad.shape[3]
    for b in range(b0, b1):
        for ch in range(c):
            xf = xpad[b, ch].reshape(hp * wp)
            for u in range(kh):
                for v in range(kw):
                    dst = cols[(ch * kh + u) * kw + v, (b - b0) * span : (b - b0 + 1) * span]
                    src = xf[u * wp + v : u * wp + v + span]
                    for q in range(span):
                        dst[q] = src[q]


@njit(**JIT)
def _gy_wide(gy, b0, b1, wp, span):
    """gy (n, oc, oh, ow) -> (oc, (b1 - b0)*span): [o, (b - b0)*span + i*wp + j] = gy[b, o, i, j],
    junk columns (j >= ow) zero."""
    oc, oh, ow = gy.shape[1], gy.shape[2], gy.shape[3]
    g = np.zeros((oc, (b1 - b0) * span), dtype=gy.dtype)
    for o in range(oc):
        for b in range(b0, b1):
            for i in range(oh):
                _copy(g[o, (b - b0) * span + i * wp : (b - b0) * span + i * wp + ow], gy[b, o, i])
    return g


@njit(**JIT)
def _wide_forward_body(xpad, Wm, bias, kh, kw, oh, ow, chunk, y, lo, hi):
    """Stride-1 conv per chunk of images: wide im2col, out = Wm @ cols (one single-threaded BLAS
    call), then y[b, o, i] = out[o, (b - b0)*span + i*wp : ... + ow] + bias[o]."""
    n, wp = xpad.shape[0], xpad.shape[3]
    oc, span = Wm.shape[0], (oh - 1) * xpad.shape[3] + ow
    for t in range(lo, hi):
        b0 = t * chunk
        b1 = min(n, b0 + chunk)
        cols = np.empty((Wm.shape[1], (b1 - b0) * span), dtype=xpad.dtype)
        im2col_wide(xpad, b0, b1, kh, kw, span, cols)
        out = np.dot(Wm, cols)
        for b in range(b0, b1):
            for o in range(oc):
                for i in range(oh):
                    src = out[o, (b - b0) * span + i * wp : (b - b0) * span + i * wp + ow]
                    yr = y[b, o, i]
                    for j in range(ow):
                        yr[j] = src[j] + bias[o]


@njit(**JIT)
def _wide_grad_input_body(gy, WmT, kh, kw, ph, pw, chunk, gx, lo, hi):
    """Stride-1 gx per chunk: gcols = WmT @ gy_wide, then the adjoint of im2col_wide into a
    zeroed padded plane buffer (contiguous runs of span), whose interior is copied to gx."""
    n, oc, oh, ow = gy.shape
    h, w = gx.shape[2], gx.shape[3]
    hp, wp = h + 2 * ph, w + 2 * pw
    span = (oh - 1) * wp + ow
    buf = np.empty(hp * wp, dtype=gx.dtype)  # one padded input plane
    for t in range(lo, hi):
        b0 = t * chunk
        b1 = min(n, b0 + chunk)
        gcols = np.dot(WmT, _gy_wide(gy, b0, b1, wp, span))  # (c*kh*kw, (b1 - b0)*span)
        _col2im_wide(gcols, b0, b1, kh, kw, ph, pw, span, buf, gx)


@njit(**JIT)
def _col2im_wide(gcols, b0, b1, kh, kw, ph, pw, span, buf, gx):
    """Adjoint of im2col_wide into gx[b0:b1] (n, c, h, w): each plane is accumulated in the
    padded buffer buf (hp*wp, zeroed here) by contiguous runs, then its interior copied out."""
    c, h, w = gx.shape[1], gx.shape[2], gx.shape[3]
    wp = w + 2 * pw
    for b in range(b0, b1):
        for ch in range(c):
            buf[:] = 0
            for u in range(kh):
                for v in range(kw):
                    src = gcols[(ch * kh + u) * kw + v, (b - b0) * span : (b - b0 + 1) * span]
                    dst = buf[u * wp + v : u * wp + v + span]
                    for q in range(span):
                        dst[q] += src[q]
            for yy in range(h):  # drop the padding
                _copy(gx[b, ch, yy], buf[(yy + ph) * wp + pw : (yy + ph) * wp + pw + w])


@njit(**JIT)
def _wide_grad_weight_body(gy, xpad, kh, kw, chunk, partial, lo, hi):
    """Stride-1 gW per chunk t: partial[t] = gy_wide @ cols_wide^T (junk columns of gy_wide are 0);
    the caller sums over t (fixed order: deterministic)."""
    n, oc, oh, ow = gy.shape
    wp = xpad.shape[3]
    span = (oh - 1) * wp + ow
    for t in range(lo, hi):
        b0 = t * chunk
        b1 = min(n, b0 + chunk)
        cols = np.empty((partial.shape[2], (b1 - b0) * span), dtype=xpad.dtype)
        im2col_wide(xpad, b0, b1, kh, kw, span, cols)
        _copy2d(partial[t], np.dot(_gy_wide(gy, b0, b1, wp, span), cols.T))


@njit(**JIT)
def _finite_body(a):
    """Whether the flat array a holds only finite values: sum(a * 0) is 0 exactly then, and NaN
    if any element is inf or NaN (a vectorised reduction, no early-exit branch)."""
    acc = a.dtype.type(0)
    for k in range(a.size):
        acc += a[k] * 0
    return acc == 0


@njit(**JIT)
def _im2col_body(x, kh, kw, sh, sw, ph, pw, cols):
    """Row-major im2col (the contract's layout): cols[(b*oh + i)*ow + j, (ch*kh + u)*kw + v] =
    x[b, ch, i*sh + u - ph, j*sw + v - pw], or 0 in the padding. Serial: the conv kernels use
    the chunked K-major bodies above; this one serves the im2col kernel name."""
    n, c, h, w = x.shape
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                r = (b * oh + i) * ow + j  # row of output pixel (b, i, j)
                for ch in range(c):
                    for u in range(kh):
                        yy = i * sh + u - ph  # input row of tap (u, .)
                        base = (ch * kh + u) * kw  # column of tap (ch, u, 0)
                        for v in range(kw):
                            xx = j * sw + v - pw  # input column of tap (., v)
                            inside = 0 <= yy < h and 0 <= xx < w
                            cols[r, base + v] = x[b, ch, yy, xx] if inside else 0


@njit(**JIT)
def _col2im_body(cols, kh, kw, sh, sw, ph, pw, x):
    """Adjoint of the row-major im2col; image by image, each zeroed first while in cache."""
    n, c, h, w = x.shape
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    for b in range(n):
        x[b] = 0
        for i in range(oh):
            for j in range(ow):
                r = (b * oh + i) * ow + j
                for ch in range(c):
                    for u in range(kh):
                        yy = i * sh + u - ph
                        if yy < 0 or yy >= h:
                            continue
                        base = (ch * kh + u) * kw
                        for v in range(kw):
                            xx = j * sw + v - pw
                            if 0 <= xx < w:
                                x[b, ch, yy, xx] += cols[r, base + v]


# ------------------------------------------------------------- launchers ----
def contiguous(a):
    """C-contiguous view or copy: keeps one compiled signature per dtype and ndim."""
    return np.ascontiguousarray(a)


def winograd_ok(c, kernel_size, stride, padding, out_pixels, *arrays) -> bool:
    """Whether a conv takes conv_winograd: 3x3 at stride 1, padding <= 2 (its gx is then a
    conv too), thick enough for a GEMM (c*9 > DIRECT_MAX_K), a small output map (oh*ow <=
    WINOGRAD_MAX_PIXELS), and finite inputs (the transforms' inf - inf would give NaN where the
    dense sum gives inf)."""
    if tuple(kernel_size) != (3, 3) or tuple(stride) != (1, 1) or max(padding) > 2:
        return False
    if c * 9 <= DIRECT_MAX_K or not 0 < out_pixels <= WINOGRAD_MAX_PIXELS:
        return False
    return all(_finite_body(contiguous(a).reshape(-1)) for a in arrays)


def taps_ok(c, kernel_size, padding, oh, ow, dtype, pass_, *arrays) -> bool:
    """Whether a conv pass takes conv_taps: float32/float64, a kernel of more than one tap, thick
    enough for a GEMM (c*kh*kw > DIRECT_MAX_K), a small output (oh*ow <= TAPS_MAX_PIXELS, for
    pass_ "input" TAPS_GX_MAX_PIXELS), and, with padding, finite arrays (the path skips padding
    taps, so a non-finite value facing padding would miss the dense formula's 0 * inf = NaN)."""
    kh, kw = kernel_size
    if np.dtype(dtype) not in (np.float32, np.float64) or kh * kw == 1:
        return False
    limit = TAPS_GX_MAX_PIXELS if pass_ == "input" else TAPS_MAX_PIXELS
    if c * kh * kw <= DIRECT_MAX_K or not 0 < oh * ow <= limit:
        return False
    return not any(padding) or all(_finite_body(contiguous(a).reshape(-1)) for a in arrays)


def pointwise_ok(c, kernel_size, stride, padding, dtype) -> bool:
    """Whether a forward takes conv_taps.pointwise_forward: a 1x1 kernel at a stride > 1 without
    padding (ResNet's downsample convs), c > DIRECT_MAX_K, float32/float64. Measured (b32,
    1 thread, load 7, interleaved): 1.3-1.9x the chunked GEMM on resnet18_2d's three; stride 1
    was not measured, so it keeps its path."""
    if tuple(kernel_size) != (1, 1) or tuple(stride) == (1, 1) or any(padding):
        return False
    return c > DIRECT_MAX_K and np.dtype(dtype) in (np.float32, np.float64)


def _taps():
    """conv_taps, imported on first use."""
    from . import conv_taps

    return conv_taps


def direct_simd_ok(c, kernel_size, stride, oh, ow, dtype, pass_="forward") -> bool:
    """Whether a conv pass takes the register-blocked direct kernel (conv3d_direct.py): stride
    1, float32/float64, too thick for the plane loop (c*kh*kw > DIRECT_MAX_K), and an output
    wide enough (ow >= DIRECT_SIMD_MIN_WIDTH; for pass_ "weight", oh*ow >=
    DIRECT_SIMD_GW_MIN_PIXELS as well). The input gradient asks with the gradient's own conv:
    c = oc of the layer, and its output is the layer's input (h, w)."""
    if tuple(stride) != (1, 1) or np.dtype(dtype) not in (np.float32, np.float64):
        return False
    if c * kernel_size[0] * kernel_size[1] <= DIRECT_MAX_K or ow < DIRECT_SIMD_MIN_WIDTH:
        return False
    return pass_ != "weight" or oh * ow >= DIRECT_SIMD_GW_MIN_PIXELS


def _direct_simd():
    """conv3d_direct, imported on first use (it is only needed on the paths that take it)."""
    from . import conv3d_direct

    return conv3d_direct


def _winograd():
    """conv_winograd, imported on first use: it builds on conv_relu_pool.winograd, whose package
    imports this module (a top-level import would be circular)."""
    from . import conv_winograd

    return conv_winograd


def padded(x, ph, pw):
    """x (n, c, h, w) zero-padded to (n, c, h + 2 ph, w + 2 pw), C-contiguous (x itself if no
    padding and already contiguous)."""
    if not (ph or pw):
        return contiguous(x)
    n, c, h, w = x.shape
    xpad = np.empty((n, c, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
    _pad_body(contiguous(x), ph, pw, xpad)
    return xpad


def im2col(x, kernel_size, stride, padding):
    """See kernels.numpy_cpu.conv.im2col: x (n, c, h, w) -> cols (n*oh*ow, c*kh*kw)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    n, c, h, w = x.shape
    oh, ow = out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)
    cols = np.empty((n * oh * ow, c * kh * kw), dtype=x.dtype)
    _im2col_body(contiguous(x), kh, kw, sh, sw, ph, pw, cols)
    return cols


def col2im(cols, x_shape, kernel_size, stride, padding):
    """See kernels.numpy_cpu.conv.col2im: cols (n*oh*ow, c*kh*kw) -> x (n, c, h, w)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    x = np.empty(tuple(x_shape), dtype=cols.dtype)
    _col2im_body(contiguous(cols), kh, kw, sh, sw, ph, pw, x)
    return x


def conv2d_forward(x, W, b, stride, padding):
    """See kernels.numpy_cpu.conv.conv2d_forward: y (n, oc, oh, ow), C-contiguous."""
    (sh, sw), (ph, pw) = stride, padding
    oc, c, kh, kw = W.shape
    n, _, h, w = x.shape
    oh, ow = out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)
    bias = np.zeros(oc, dtype=x.dtype) if b is None else contiguous(b)
    if pointwise_ok(c, (kh, kw), stride, padding, x.dtype):
        return _taps().pointwise_forward(contiguous(x), W, bias, stride)
    if taps_ok(c, (kh, kw), padding, oh, ow, x.dtype, "forward", x, W):
        return _taps().forward(contiguous(x), contiguous(W), bias, stride, padding)
    y = np.empty((n, oc, oh, ow), dtype=x.dtype)
    if winograd_ok(c, (kh, kw), stride, padding, oh * ow, x, W):
        return _winograd().forward(contiguous(x), contiguous(W), bias, padding, oh, ow)
    if direct_simd_ok(c, (kh, kw), stride, oh, ow, x.dtype):
        # a 2-D conv is conv3d_direct's depth-1 case: views with a unit depth axis, no copies
        y5 = _direct_simd().conv3d_forward_direct(x[:, :, None], W[:, :, None], b, (0, ph, pw))
        return y5.reshape(n, oc, oh, ow)
    if c * kh * kw <= DIRECT_MAX_K:
        run_tasks(_conv_direct_body, n * oc, padded(x, ph, pw), contiguous(W), bias, sh, sw, y)
    elif sh == 1 and sw == 1:
        chunk = images_per_task(n, c * kh * kw * oh * ow)
        args = (padded(x, ph, pw), contiguous(W).reshape(oc, -1), bias, kh, kw, oh, ow, chunk, y)
        run_tasks(_wide_forward_body, -(-n // chunk), *args, blas=True)
    else:
        chunk = images_per_task(n, c * kh * kw * oh * ow)
        Wm = contiguous(W).reshape(oc, -1)
        args = (contiguous(x), Wm, bias, kh, kw, sh, sw, ph, pw, chunk, y)
        run_tasks(_gemm_forward_body, -(-n // chunk), *args, blas=True)
    return y


def conv2d_backward_input(gy, W, x_shape, stride, padding):
    """See kernels.numpy_cpu.conv.conv2d_backward_input: gx (n, c, h, w)."""
    (sh, sw), (ph, pw) = stride, padding
    oc, c, kh, kw = W.shape
    n, _, oh, ow = gy.shape
    if taps_ok(c, (kh, kw), padding, oh, ow, gy.dtype, "input"):  # gx never meets padding
        return _taps().backward_input(contiguous(gy), contiguous(W), x_shape, stride, padding)
    if winograd_ok(c, (kh, kw), stride, padding, oh * ow, gy, W):
        return _winograd().backward_input(contiguous(gy), W, x_shape, padding)
    h, w = x_shape[2], x_shape[3]
    flippable = ph <= kh - 1 and pw <= kw - 1
    if flippable and direct_simd_ok(oc, (kh, kw), stride, h, w, gy.dtype):
        # stride 1: gx is a conv of gy with the flipped weight, channels swapped, padded k - 1 - p
        Wf = contiguous(W[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
        pad = (0, kh - 1 - ph, kw - 1 - pw)
        gx5 = _direct_simd().conv3d_forward_direct(gy[:, :, None], Wf[:, :, None], None, pad)
        return gx5.reshape(tuple(x_shape))
    gx = np.empty(tuple(x_shape), dtype=gy.dtype)
    chunk = images_per_task(n, c * kh * kw * oh * ow)
    WmT = contiguous(W.reshape(oc, -1).T)
    if sh == 1 and sw == 1:
        args = (contiguous(gy), WmT, kh, kw, ph, pw, chunk, gx)
        run_tasks(_wide_grad_input_body, -(-n // chunk), *args, blas=True)
        return gx
    args = (contiguous(gy), WmT, kh, kw, sh, sw, ph, pw, chunk, gx)
    run_tasks(_gemm_grad_input_body, -(-n // chunk), *args, blas=True)
    return gx


def conv2d_backward_weight(gy, x, kernel_size, stride, padding):
    """See kernels.numpy_cpu.conv.conv2d_backward_weight: gW (oc, c, kh, kw)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    n, oc, oh, ow = gy.shape
    c = x.shape[1]
    if taps_ok(c, kernel_size, padding, oh, ow, gy.dtype, "weight", gy, x):
        return _taps().backward_weight(contiguous(gy), contiguous(x), kernel_size, stride, padding)
    if winograd_ok(c, kernel_size, stride, padding, oh * ow, gy, x):
        return _winograd().backward_weight(contiguous(gy), contiguous(x), padding)
    if direct_simd_ok(c, kernel_size, stride, oh, ow, gy.dtype, "weight"):
        gW5 = _direct_simd().conv3d_backward_weight_direct(
            gy[:, :, None], x[:, :, None], (1, kh, kw), (0, ph, pw)
        )
        return gW5.reshape(oc, c, kh, kw)
    if c * kh * kw <= DIRECT_MAX_K:
        gW = np.empty((oc, c, kh, kw), dtype=gy.dtype)
        run_tasks(_conv_direct_grad_weight_body, oc, contiguous(gy), padded(x, ph, pw), sh, sw, gW)
        return gW
    chunk = images_per_task(n, c * kh * kw * oh * ow)
    partial = np.empty((-(-n // chunk), oc, c * kh * kw), dtype=gy.dtype)
    if sh == 1 and sw == 1:
        args = (contiguous(gy), padded(x, ph, pw), kh, kw, chunk, partial)
        run_tasks(_wide_grad_weight_body, partial.shape[0], *args, blas=True)
        return partial.sum(axis=0).reshape(oc, c, kh, kw)
    args = (contiguous(gy), contiguous(x), kh, kw, sh, sw, ph, pw, chunk, partial)
    run_tasks(_gemm_grad_weight_body, partial.shape[0], *args, blas=True)
    return partial.sum(axis=0).reshape(oc, c, kh, kw)
