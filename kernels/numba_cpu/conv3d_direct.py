"""Direct 3-D convolution at stride 1, register-blocked with explicit SIMD vectors (simd.py): no
im2col, no GEMM. Used by conv3d.py for the forward pass and, through the flipped kernel, for the
stride-1 input gradient; kernels/numba_cpu/conv3d.py's choose_path says when.

Layout: x is zero-padded once into xpad (n, c, dp, hp, wq): p zeros before each axis, and on w
enough zeros after that every output row is computed over owq = ceil(ow / lanes) * lanes columns
(wq = owq + kw - 1), so every load is a whole vector. The output row j of plane i is cut in
owq / lanes "slots" of one vector each; slot s of a plane is (row j, column l0) = (s // nvr,
(s % nvr) * lanes), nvr = owq / lanes. Output voxel (i, j, l) reads xpad[b, ch, i + t, j + u,
l + v] for tap (t, u, v): at flat offset base(slot) + offs[ch, t, u, v], with offs[...] =
((ch*dp + t)*hp + u)*wq + v the same for every slot.

Block: 4 output channels x 3 slots = 12 vector accumulators, which stay in registers while the
loop runs over every (channel, tap) pair: per pair 3 vector loads of x, 4 broadcast weights, 12
multiply-adds (a GEMM micro-kernel's ratio). A plane's last block repeats its last slot when the
slots do not divide by 3 (the same values are stored twice). Output channels are padded to a
multiple of 4 with zero weights; the padding's results are never stored. One task = one output
plane (b, i); planes never share outputs, so the result does not depend on the threads.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .simd import hsum, vbroadcast, vlanes, vload, vmuladd, vsplat, vstore, vzeros
from .tasks import run_tasks

JIT = dict(cache=True, fastmath=False, nogil=True)
OB = 4  # output channels per block (with 3 slots: 12 accumulators + 3 x + 1 weight = 16 registers)
CHUNK_SLOTS = 256  # weight gradient: slots summed in registers before each lane sum (about 7%)
GROUPS = 16  # weight gradients (here and conv3d.py): fixed partial sums added in order, so the
# result does not depend on the thread count


@njit(**JIT)
def pad_body(x, p, xpad, lo, hi):
    """xpad[b, ch, pd + z, ph + r, pw + l] = x[b, ch, z, r, l], zeros elsewhere; task = one (b, ch)
    volume."""
    c, d, h, w = x.shape[1], x.shape[2], x.shape[3], x.shape[4]
    for q in range(lo, hi):
        b, ch = q // c, q % c
        xpad[b, ch] = 0
        for z in range(d):
            for r in range(h):
                src, dst = x[b, ch, z, r], xpad[b, ch, p[0] + z, p[1] + r, p[2] :]
                for col in range(w):
                    dst[col] = src[col]


@njit(**JIT)
def _forward_body(xf, xshape, Wf, bias, kvol, offs, yf, yshape, lo, hi):
    """Planes lo..hi-1 (task = b*od + i) of y (flat yf, shape yshape = (n, oc, od, oh, owq)):
    y[b, o, i, j, l] = bias[o] + sum over (ch, tap) of Wf[(ob*c + ch)*kvol + tap)*OB + o - ob*OB]
    * xpad[...] (module docstring), xpad flat in xf with shape xshape."""
    c, dp, hp, wq = xshape[1], xshape[2], xshape[3], xshape[4]
    oc, od, oh, owq = yshape[1], yshape[2], yshape[3], yshape[4]
    lanes = vlanes(xf)
    nvr = owq // lanes  # slots per output row
    nslots = oh * nvr
    plane_y = oh * owq  # one output plane, and the stride between output channels:
    step = od * plane_y
    taps = c * kvol
    for task in range(lo, hi):
        b, i = task // od, task % od
        xb = (b * c * dp + i) * hp * wq  # xpad[b, 0, i, 0, 0]
        for s0 in range(0, nslots, 3):
            s1, s2 = min(s0 + 1, nslots - 1), min(s0 + 2, nslots - 1)
            # each slot's offset in xpad (row j, column l0) and in one output plane
            f0 = (s0 // nvr) * wq + (s0 % nvr) * lanes
            f1 = (s1 // nvr) * wq + (s1 % nvr) * lanes
            f2 = (s2 // nvr) * wq + (s2 % nvr) * lanes
            g0 = (s0 // nvr) * owq + (s0 % nvr) * lanes
            g1 = (s1 // nvr) * owq + (s1 % nvr) * lanes
            g2 = (s2 // nvr) * owq + (s2 % nvr) * lanes
            for ob in range(0, oc, OB):
                a00 = vsplat(bias[ob])
                a01, a02 = a00, a00
                a10 = vsplat(bias[ob + 1])
                a11, a12 = a10, a10
                a20 = vsplat(bias[ob + 2])
                a21, a22 = a20, a20
                a30 = vsplat(bias[ob + 3])
                a31, a32 = a30, a30
                wb = ob * taps  # this block's weights: (taps, OB), contiguous
                for ct in range(taps):
                    r = xb + offs[ct]
                    x0, x1, x2 = vload(xf, r + f0), vload(xf, r + f1), vload(xf, r + f2)
                    w = wb + ct * OB
                    wv = vbroadcast(Wf, w)
                    a00, a01, a02 = vmuladd(a00, wv, x0), vmuladd(a01, wv, x1), vmuladd(a02, wv, x2)
                    wv = vbroadcast(Wf, w + 1)
                    a10, a11, a12 = vmuladd(a10, wv, x0), vmuladd(a11, wv, x1), vmuladd(a12, wv, x2)
                    wv = vbroadcast(Wf, w + 2)
                    a20, a21, a22 = vmuladd(a20, wv, x0), vmuladd(a21, wv, x1), vmuladd(a22, wv, x2)
                    wv = vbroadcast(Wf, w + 3)
                    a30, a31, a32 = vmuladd(a30, wv, x0), vmuladd(a31, wv, x1), vmuladd(a32, wv, x2)
                yb = ((b * oc + ob) * od + i) * plane_y  # y[b, ob, i, 0, 0]
                vstore(yf, yb + g0, a00)
                vstore(yf, yb + g1, a01)
                vstore(yf, yb + g2, a02)
                if ob + 1 < oc:
                    vstore(yf, yb + step + g0, a10)
                    vstore(yf, yb + step + g1, a11)
                    vstore(yf, yb + step + g2, a12)
                if ob + 2 < oc:
                    vstore(yf, yb + 2 * step + g0, a20)
                    vstore(yf, yb + 2 * step + g1, a21)
                    vstore(yf, yb + 2 * step + g2, a22)
                if ob + 3 < oc:
                    vstore(yf, yb + 3 * step + g0, a30)
                    vstore(yf, yb + 3 * step + g1, a31)
                    vstore(yf, yb + 3 * step + g2, a32)


def lanes(dtype) -> int:
    """Values per vector for dtype (8 float32, 4 float64)."""
    return 32 // np.dtype(dtype).itemsize


def conv3d_forward_direct(x, W, b, padding):
    """Stride-1 conv3d: x (n, c, d, h, w), W (oc, c, kd, kh, kw), b (oc,) or None, padding
    (pd, ph, pw) -> y (n, oc, od, oh, ow) C-contiguous, od = d + 2 pd - kd + 1; float32 or
    float64. The numbers are numpy_cpu's conv_forward up to rounding (sums in another order)."""
    x = np.ascontiguousarray(x)
    n, c, d, h, w = x.shape
    oc, k = W.shape[0], W.shape[2:]
    p, dt = tuple(padding), x.dtype
    od, oh, ow = (x.shape[2 + a] + 2 * p[a] - k[a] + 1 for a in range(3))
    owq = -(-ow // lanes(dt)) * lanes(dt)
    xpad = np.empty((n, c, d + 2 * p[0], h + 2 * p[1], owq + k[2] - 1), dtype=dt)
    run_tasks(pad_body, n * c, x, p, xpad)
    ocq = -(-oc // OB) * OB  # zero weights for the padding channels
    Wq = np.zeros((ocq, c, *k), dtype=dt)
    Wq[:oc] = W
    # Wr[ob, ch, t, u, v, o]: a block's weights per (channel, tap) contiguous, as the loop reads
    Wr = np.ascontiguousarray(Wq.reshape(ocq // OB, OB, c, -1).transpose(0, 2, 3, 1))
    bias = np.zeros(ocq, dtype=dt)
    if b is not None:
        bias[:oc] = b
    dp, hp, wq = xpad.shape[2:]
    ch, t, u, v = np.meshgrid(*(np.arange(s) for s in (c, *k)), indexing="ij")
    offs = (((ch * dp + t) * hp + u) * wq + v).reshape(-1).astype(np.int64)
    y = np.empty((n, oc, od, oh, owq), dtype=dt)
    kvol = int(np.prod(k))
    args = (xpad.reshape(-1), xpad.shape, Wr.reshape(-1), bias, kvol, offs, y.reshape(-1), y.shape)
    run_tasks(_forward_body, n * od, *args)
    return y if owq == ow else np.ascontiguousarray(y[..., :ow])


@njit(**JIT)
def _grad_weight_body(gyf, gshape, xf, xshape, offs, rows, per_group, partial, lo, hi):
    """partial[g, ob, ct, o] = sum over the chunks of group g (per_group chunks of `rows` output
    rows each, row = (b*od + i)*oh + j, in order) of gy[b, ob*OB + o, i, j, :] . xpad at tap ct
    (flat offset offs[ct] from the row's start), for groups lo..hi-1. Block: 4 output channels x
    3 taps in 12 vector accumulators over a chunk's slots, then one lane sum each (hsum, fixed
    order). gy has zero columns past ow (flat gyf, shape gshape = (n, oc, od, oh, owq)); offs is
    padded to a multiple of 3 taps by repeating its last (partial keeps those columns too)."""
    n, oc, od, oh, owq = gshape
    c, dp, hp, wq = xshape[1], xshape[2], xshape[3], xshape[4]
    lanes = vlanes(xf)
    nvr = owq // lanes
    total = n * od * oh
    n_chunks = -(-total // rows)
    step = od * oh * owq  # between output channels of gy
    taps = offs.shape[0]
    xs = np.empty(rows * nvr, dtype=np.int64)  # each slot's offset in xpad and in gy (channel 0)
    gs = np.empty(rows * nvr, dtype=np.int64)
    for g in range(lo, hi):
        acc = partial[g]
        acc[:] = 0
        for q in range(g * per_group, min(n_chunks, (g + 1) * per_group)):
            r0, r1 = q * rows, min(total, (q + 1) * rows)
            ns = 0
            for r in range(r0, r1):
                b, i, j = r // (od * oh), (r // oh) % od, r % oh
                for sv in range(nvr):
                    xs[ns] = ((b * c * dp + i) * hp + j) * wq + sv * lanes
                    gs[ns] = ((b * oc * od + i) * oh + j) * owq + sv * lanes
                    ns += 1
            for ob in range(0, oc, OB):
                g1 = min(ob + 1, oc - 1) * step  # past oc: repeat a channel, its sums unused
                g2 = min(ob + 2, oc - 1) * step
                g3 = min(ob + 3, oc - 1) * step
                g0 = ob * step
                for ct in range(0, taps, 3):
                    t0, t1, t2 = offs[ct], offs[ct + 1], offs[ct + 2]
                    z = vzeros(gyf)
                    a00, a01, a02, a10, a11, a12 = z, z, z, z, z, z
                    a20, a21, a22, a30, a31, a32 = z, z, z, z, z, z
                    for sl in range(ns):
                        xo, go = xs[sl], gs[sl]
                        x0, x1, x2 = vload(xf, xo + t0), vload(xf, xo + t1), vload(xf, xo + t2)
                        gv = vload(gyf, go + g0)
                        a00, a01, a02 = (
                            vmuladd(a00, gv, x0),
                            vmuladd(a01, gv, x1),
                            vmuladd(a02, gv, x2),
                        )
                        gv = vload(gyf, go + g1)
                        a10, a11, a12 = (
                            vmuladd(a10, gv, x0),
                            vmuladd(a11, gv, x1),
                            vmuladd(a12, gv, x2),
                        )
                        gv = vload(gyf, go + g2)
                        a20, a21, a22 = (
                            vmuladd(a20, gv, x0),
                            vmuladd(a21, gv, x1),
                            vmuladd(a22, gv, x2),
                        )
                        gv = vload(gyf, go + g3)
                        a30, a31, a32 = (
                            vmuladd(a30, gv, x0),
                            vmuladd(a31, gv, x1),
                            vmuladd(a32, gv, x2),
                        )
                    blk = acc[ob // OB]
                    blk[ct, 0] += hsum(a00)
                    blk[ct + 1, 0] += hsum(a01)
                    blk[ct + 2, 0] += hsum(a02)
                    blk[ct, 1] += hsum(a10)
                    blk[ct + 1, 1] += hsum(a11)
                    blk[ct + 2, 1] += hsum(a12)
                    blk[ct, 2] += hsum(a20)
                    blk[ct + 1, 2] += hsum(a21)
                    blk[ct + 2, 2] += hsum(a22)
                    blk[ct, 3] += hsum(a30)
                    blk[ct + 1, 3] += hsum(a31)
                    blk[ct + 2, 3] += hsum(a32)


def conv3d_backward_weight_direct(gy, x, kernel_size, padding):
    """Stride-1 conv3d weight gradient: gy (n, oc, od, oh, ow), x (n, c, d, h, w) -> gW (oc, c,
    kd, kh, kw), gW[o, ch, t, u, v] = sum over b, i, j, l of gy[b, o, i, j, l] xpad[b, ch, i + t,
    j + u, l + v]; the same sum as numpy_cpu's conv_backward_weight, in another order (fixed:
    chunks of rows in fixed groups, module docstring), so results do not depend on the threads."""
    x, dt, k, p = np.ascontiguousarray(x), x.dtype, tuple(kernel_size), tuple(padding)
    n, oc, od, oh, ow = gy.shape
    c = x.shape[1]
    L = lanes(dt)
    owq = -(-ow // L) * L
    gyq = np.zeros((n, oc, od, oh, owq), dtype=dt)  # zero columns past ow: they add nothing
    gyq[..., :ow] = gy
    xpad = np.empty((n, c, x.shape[2] + 2 * p[0], x.shape[3] + 2 * p[1], owq + k[2] - 1), dtype=dt)
    run_tasks(pad_body, n * c, x, p, xpad)
    dp, hp, wq = xpad.shape[2:]
    ch, t, u, v = np.meshgrid(*(np.arange(s) for s in (c, *k)), indexing="ij")
    offs = (((ch * dp + t) * hp + u) * wq + v).reshape(-1).astype(np.int64)
    taps = offs.size
    offs = np.concatenate([offs, np.full(-taps % 3, offs[-1], np.int64)])  # whole 3-tap blocks
    rows = max(1, CHUNK_SLOTS // (owq // L))
    n_chunks = -(-n * od * oh // rows)
    per_group = -(-n_chunks // min(GROUPS, n_chunks))
    n_groups = -(-n_chunks // per_group)
    partial = np.empty((n_groups, -(-oc // OB), offs.size, OB), dtype=dt)
    args = (
        gyq.reshape(-1),
        gyq.shape,
        xpad.reshape(-1),
        xpad.shape,
        offs,
        rows,
        per_group,
        partial,
    )
    run_tasks(_grad_weight_body, n_groups, *args)
    gW = partial.sum(axis=0)[:, :taps]  # (oc blocks, taps, OB), groups added in order
    return np.ascontiguousarray(gW.transpose(0, 2, 1).reshape(-1, taps)[:oc]).reshape(oc, c, *k)
