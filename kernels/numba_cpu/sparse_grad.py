"""Backward of the fused conv + bias + ReLU + max-pool block, driven by the pooling windows.

Why: after a max-pool the conv-output gradient is sparse by construction. Each pooling window
routes its gradient to one conv pixel (its argmax) and only if the ReLU passed it (y > 0); for
the seed CNN's conv2 that is at most 25 of the 121 conv pixels of a plane. The dense backward
(im2col + two GEMMs over every pixel, fused.py's wide path) spends three quarters of its FLOPs on
zeros; here each window with a gradient g at conv pixel (r, s) adds
    gW[o, :, u, :] += g * x[:, r*sh + u, s*sw : s*sw + kw]    and
    gx[:, r*sh + u, s*sw : s*sw + kw] += g * W[o, :, u, :]       for each tap row u,
which, with the input and gx held channels-last (pixel-major, channel-minor), are contiguous runs
of kw*c values: one vectorised axpy each. Its cost follows the share of windows that pass a
gradient. Measured on the seed CNN's conv2 at b64, 2 threads, with 87% of the windows live: the
block's backward (gW, gb, gx) 4.2 ms with im2col + GEMMs -> 2.6 ms; at the benchmark's 74%, less.

Layouts: xcl[b] is image b zero-padded (ph, pw) and channels-last, (hc*wc, c) flattened, cropped
to the rows/columns the pool reaches (fused._wide_crop's geometry); acc[o, u, v*c + ch] is
gW[o, ch, u, v] (Wt the same permutation of W). Tasks are chunks of images; each writes its own
partial gW and gb, summed by the caller in chunk order (deterministic for any thread count).
"""

from __future__ import annotations

import numpy as np
from numba import njit

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


@njit(**JIT)
def _grad_body(gy, y, argmax, x, Wt, kh, kw, sh, sw, ph, pw, hc, wc, pool, need_gx, chunk,
               partial, gbp, gx, lo, hi):  # fmt: skip
    """Task t = images [t*chunk, (t+1)*chunk): partial[t] = this chunk's gW in the acc layout,
    gbp[t] = its gb, gx of its images (if need_gx)."""
    n, oc, qh, qw = gy.shape
    c = x.shape[1]
    pkh, pkw, psh, psw, pph, ppw = pool
    run = kw * c  # one tap row of one window: kw pixels x c channels, contiguous channels-last
    xcl = np.empty((hc * wc, c), dtype=gy.dtype)
    gcl = np.empty((hc * wc, c), dtype=gy.dtype)
    xf, gf = xcl.reshape(hc * wc * c), gcl.reshape(hc * wc * c)
    for t in range(lo, hi):
        acc, gbt = partial[t], gbp[t]
        acc[:] = 0
        gbt[:] = 0
        for b in range(t * chunk, min(n, (t + 1) * chunk)):
            _channels_last(x, b, ph, pw, hc, wc, xcl)
            if need_gx:
                gcl[:] = 0
            for o in range(oc):
                gyo, yo, ao = gy[b, o], y[b, o], argmax[b, o]
                wo, acco = Wt[o], acc[o]
                for i in range(qh):
                    for j in range(qw):
                        g = gyo[i, j]
                        if not yo[i, j] > 0:  # the ReLU blocked the window's maximum
                            continue
                        gbt[o] += g
                        a = ao[i, j]
                        r = i * psh + a // pkw - pph  # conv pixel of the window's argmax
                        s = j * psw + a % pkw - ppw
                        for u in range(kh):
                            off = ((r * sh + u) * wc + s * sw) * c
                            xs, ar = xf[off : off + run], acco[u]
                            for k in range(run):
                                ar[k] += g * xs[k]
                            if need_gx:
                                gs, wr = gf[off : off + run], wo[u]
                                for k in range(run):
                                    gs[k] += g * wr[k]
            if need_gx:  # back to NCHW, dropping the padding; pixels past the crop get 0
                h, w = gx.shape[2], gx.shape[3]
                for ch in range(c):
                    for yy in range(h):
                        row = gx[b, ch, yy]
                        if yy + ph < hc:
                            src = gcl[(yy + ph) * wc + pw :]
                            wn = min(w, wc - pw)
                            for xx in range(wn):
                                row[xx] = src[xx, ch]
                            row[wn:] = 0
                        else:
                            row[:] = 0


def grad(gy, y, argmax, x, W, stride, padding, pool, hc, wc, need_gx, chunk, run_tasks):
    """(gx or None, gW, gb) of the fused block; hc, wc: the padded input rows/columns the pool's
    windows reach (everything past them gets no gradient)."""
    (sh, sw), (ph, pw) = stride, padding
    oc, c, kh, kw = W.shape
    n = x.shape[0]
    Wt = np.ascontiguousarray(W.transpose(0, 2, 3, 1)).reshape(oc, kh, kw * c)
    tasks = -(-n // chunk)
    partial = np.empty((tasks, oc, kh, kw * c), dtype=gy.dtype)
    gbp = np.empty((tasks, oc), dtype=gy.dtype)
    gx = np.empty(x.shape if need_gx else (0, c, 1, 1), dtype=gy.dtype)
    run_tasks(_grad_body, tasks, gy, y, argmax, x, Wt, kh, kw, sh, sw, ph, pw, hc, wc,
              np.array(pool, dtype=np.int64), need_gx, chunk, partial, gbp, gx)  # fmt: skip
    gW = partial.sum(axis=0).reshape(oc, kh, kw, c).transpose(0, 3, 1, 2)
    return (gx if need_gx else None), np.ascontiguousarray(gW), gbp.sum(axis=0)
