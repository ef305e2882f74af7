"""Backward of the fused conv + bias + ReLU + max-pool block, driven by the pooling windows.

Why: after a max-pool the conv-output gradient is sparse by construction. Each pooling window
routes its gradient to one conv pixel (its argmax) and only if the ReLU passed it (y > 0); for
the seed CNN's conv2 that is at most 25 of the 121 conv pixels of a plane. The dense backward
(im2col + two GEMMs over every pixel, as the unfused conv kernels do) spends three quarters of
its FLOPs on zeros; here each window with a gradient g at conv pixel (r, s) adds
    gW[o, :, u, :] += g * x[:, r*sh + u, s*sw : s*sw + kw]    and
    gx[:, r*sh + u, s*sw : s*sw + kw] += g * W[o, :, u, :]       for each tap row u,
which, with the input and gx held channels-last (pixel-major, channel-minor), are contiguous runs
of kw*c values. gW takes a plane's live windows four at a time (one pass over the acc row per four
sources); gx first sums, per window tap, the filters of the channels whose argmax it is, then adds
that sum once. The cost follows the share of windows that pass a gradient. Measured on the seed
CNN's conv2 at b64, 2 threads, 87% of the windows live: the block's backward (gW, gb, gx) took
4.2 ms with im2col + two GEMMs, 2.3 ms here.

Layouts: xcl[b] is image b zero-padded (ph, pw) and channels-last, (hc*wc, c) flattened, cropped
to the rows/columns the pool reaches; acc[o, u, v*c + ch] is gW[o, ch, u, v] and Wf[o] the same
permutation of W[o], flattened. Tasks are chunks of images; each writes its own partial gW and
gb, summed by the caller in chunk order (deterministic for any thread count).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..tasks import run_tasks

JIT = dict(cache=True, fastmath=False, nogil=True)


@njit(**JIT)
def _channels_last(x, b, ph, pw, hc, wc, xcl):
    """xcl[(yy + ph)*wc + xx + pw, ch] = x[b, ch, yy, xx] inside the (hc, wc) crop; 0 elsewhere."""
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    xcl[:] = 0
    for ch in range(c):
        for yy in range(min(h, hc - ph)):
            src = x[b, ch, yy]
            dst = xcl[(yy + ph) * wc + pw :]
            for xx in range(min(w, wc - pw)):
                dst[xx, ch] = src[xx]


@njit(inline="always", **JIT)
def _axpy4(dst, g0, s0, g1, s1, g2, s2, g3, s3):
    """dst += g0*s0 + g1*s1 + g2*s2 + g3*s3: four sources per pass over dst, so each element of
    dst is loaded and stored once per four multiply-adds. Inlined (Numba IR) into _axpy_list: as
    a call, the five array views passed in cost more than a 96-element loop (reference counting;
    measured ~75 cycles per call, ~20 inlined)."""
    for k in range(dst.shape[0]):
        dst[k] += g0 * s0[k] + g1 * s1[k] + g2 * s2[k] + g3 * s3[k]


@njit(**JIT)
def _axpy_list(dst, gs, srcs, offs, m):
    """dst += sum over e < m of gs[e] * srcs[offs[e] : offs[e] + len(dst)], four at a time."""
    n = dst.shape[0]
    e = 0
    while e + 4 <= m:
        o0, o1, o2, o3 = offs[e], offs[e + 1], offs[e + 2], offs[e + 3]
        _axpy4(
            dst,
            gs[e],
            srcs[o0 : o0 + n],
            gs[e + 1],
            srcs[o1 : o1 + n],
            gs[e + 2],
            srcs[o2 : o2 + n],
            gs[e + 3],
            srcs[o3 : o3 + n],
        )
        e += 4
    while e < m:
        src, g = srcs[offs[e] : offs[e] + n], gs[e]
        for k in range(n):
            dst[k] += g * src[k]
        e += 1


@njit(**JIT)
def _grad_body(
    gy,
    y,
    argmax,
    x,
    Wf,
    kh,
    kw,
    sh,
    sw,
    ph,
    pw,
    hc,
    wc,
    pool,
    need_gx,
    chunk,
    partial,
    gbp,
    gx,
    lo,
    hi,
):
    """Task t = images [t*chunk, (t+1)*chunk): partial[t] = this chunk's gW in the acc layout,
    gbp[t] = its gb, gx of its images (if need_gx). Wf[o, (u*kw + v)*c + ch] = W[o, ch, u, v]."""
    n, oc, qh, qw = gy.shape
    c = x.shape[1]
    pkh, pkw, psh, psw, pph, ppw = pool
    run = kw * c  # one tap row of one window: kw pixels x c channels, contiguous channels-last
    row = wc * c  # one row of the channels-last image
    xcl = np.empty((hc * wc, c), dtype=gy.dtype)
    gcl = np.empty((hc * wc, c), dtype=gy.dtype)
    xf, gf = xcl.reshape(hc * wc * c), gcl.reshape(hc * wc * c)
    offs = np.empty(max(qh * qw, oc), dtype=np.int64)  # live windows of a plane / channels of a tap
    gs = np.empty(max(qh * qw, oc), dtype=gy.dtype)
    F = np.empty(kh * run, dtype=gy.dtype)  # one tap's filter sum (gx)
    cnt = np.empty(pkh * pkw, dtype=np.int64)
    boffs = np.empty((pkh * pkw, oc), dtype=np.int64)
    bgs = np.empty((pkh * pkw, oc), dtype=gy.dtype)
    Wflat = Wf.reshape(oc * kh * run)
    for t in range(lo, hi):
        acc, gbt = partial[t], gbp[t]
        acc[:] = 0
        gbt[:] = 0
        for b in range(t * chunk, min(n, (t + 1) * chunk)):
            _channels_last(x, b, ph, pw, hc, wc, xcl)
            # gW[o, :, u, :] += g * x[:, r*sh + u, s*sw : s*sw + kw] over the plane's live windows
            for o in range(oc):
                m = np.int64(0)  # not a literal 0: one compiled _axpy_list for both calls
                for i in range(qh):
                    for j in range(qw):
                        if y[b, o, i, j] > 0:  # the ReLU passed the window's maximum
                            a = argmax[b, o, i, j]
                            r = i * psh + a // pkw - pph  # conv pixel of the window's argmax
                            s = j * psw + a % pkw - ppw
                            offs[m] = r * sh * row + s * sw * c
                            gs[m] = gy[b, o, i, j]
                            gbt[o] += gs[m]
                            m += 1
                for u in range(kh):
                    _axpy_list(acc[o, u], gs, xf[u * row :], offs, m)
            if not need_gx:
                continue
            # gx[:, r*sh + u, s*sw : s*sw + kw] += sum over the channels o whose window argmax is
            # that tap of g_o * W[o, :, u, :]: the filter sum once per window tap, then one add
            gcl[:] = 0
            for i in range(qh):
                for j in range(qw):
                    cnt[:] = 0  # the window's live channels, bucketed by argmax tap
                    for o in range(oc):
                        if y[b, o, i, j] > 0:
                            a = argmax[b, o, i, j]
                            boffs[a, cnt[a]] = o * kh * run
                            bgs[a, cnt[a]] = gy[b, o, i, j]
                            cnt[a] += 1
                    for a in range(pkh * pkw):
                        if cnt[a] == 0:
                            continue
                        F[:] = 0
                        _axpy_list(F, bgs[a], Wflat, boffs[a], cnt[a])
                        r = i * psh + a // pkw - pph
                        s = j * psw + a % pkw - ppw
                        for u in range(kh):
                            dst = gf[(r * sh + u) * row + s * sw * c :]
                            src = F[u * run :]
                            for k in range(run):
                                dst[k] += src[k]
            # back to NCHW, dropping the padding; pixels past the crop get 0
            h, w = gx.shape[2], gx.shape[3]
            for ch in range(c):
                for yy in range(h):
                    out = gx[b, ch, yy]
                    if yy + ph < hc:
                        src = gcl[(yy + ph) * wc + pw :]
                        wn = max(0, min(w, wc - pw))  # none if the crop ends in the padding
                        for xx in range(wn):
                            out[xx] = src[xx, ch]
                        out[wn:] = 0
                    else:
                        out[:] = 0


CHUNK = 8  # images per task (fixed: the partial sums do not depend on the thread count)


def grad(gy, y, argmax, x, W, stride, padding, pool, hc, wc, need_gx):
    """(gx or None, gW, gb) of the fused block; hc, wc: the padded input rows/columns the pool's
    windows reach (everything past them gets no gradient)."""
    (sh, sw), (ph, pw) = stride, padding
    oc, c, kh, kw = W.shape
    n = x.shape[0]
    Wf = np.ascontiguousarray(W.transpose(0, 2, 3, 1)).reshape(oc, kh * kw * c)
    tasks = -(-n // CHUNK)
    partial = np.empty((tasks, oc, kh, kw * c), dtype=gy.dtype)
    gbp = np.empty((tasks, oc), dtype=gy.dtype)
    gx = np.empty(x.shape if need_gx else (0, c, 1, 1), dtype=gy.dtype)
    conv = (kh, kw, sh, sw, ph, pw, hc, wc)
    outs = (partial, gbp, gx)
    args = (gy, y, argmax, x, Wf, *conv, np.array(pool, dtype=np.int64), need_gx, CHUNK, *outs)
    run_tasks(_grad_body, tasks, *args)
    gW = partial.sum(axis=0).reshape(oc, kh, kw, c).transpose(0, 3, 1, 2)
    return (gx if need_gx else None), np.ascontiguousarray(gW), gbp.sum(axis=0)
