"""@cuda.jit bodies that resample to a given output size: adaptive average pooling and interpolation
(nearest, bilinear, trilinear). The conventions of bodies.py: one thread per element of the array
written, volumes (n, c, d, h, w) (2-D inputs come as depth-1 views), backward passes gather.

Adaptive windows follow kernels.numpy_cpu.pool.adaptive_windows (computed here per thread: integer
formulas). Interpolation does not repeat PyTorch's coordinate rules: the launchers pass the tables
of kernels.numpy_cpu.resample.source_index, packed per axis (d, h, w): index (3, 2, L) holds i0 and
i1 of each output o, lam (3, L) its weight, so along an axis output o mixes
(1 - lam[o]) x[i0[o]] + lam[o] x[i1[o]].
"""

from __future__ import annotations

from numba import cuda

from .bodies import unravel


@cuda.jit(device=True)
def adaptive_window(o, size, out):
    """[start, end) of adaptive window o of `out` along an axis of length `size`: start =
    floor(o size / out), end = ceil((o + 1) size / out) (PyTorch's rule)."""
    return o * size // out, ((o + 1) * size + out - 1) // out


@cuda.jit(device=True)
def adaptive_cover(j, size, out):
    """[first, last + 1) of the adaptive windows holding input index j: start_o <= j < end_o
    exactly for floor(j out / size) <= o <= floor(((j + 1) out - 1) / size)."""
    return j * out // size, ((j + 1) * out - 1) // size + 1


@cuda.jit
def adaptive_avg_pool_forward(x, y):
    """x (n, c, d, h, w) -> y (n, c, od, oh, ow): the mean of x over the adaptive window
    (oa, oi, oj)."""
    # thread i -> y[b, ch, oa, oi, oj] row-major; the window's taps summed in row-major order
    i = cuda.grid(1)
    if i >= y.size:
        return
    d, h, w = x.shape[2], x.shape[3], x.shape[4]
    b, ch, oa, oi, oj = unravel(i, y.shape)
    d0, d1 = adaptive_window(oa, d, y.shape[2])
    h0, h1 = adaptive_window(oi, h, y.shape[3])
    w0, w1 = adaptive_window(oj, w, y.shape[4])
    acc = 0.0
    for dd in range(d0, d1):
        for hh in range(h0, h1):
            for ww in range(w0, w1):
                acc += x[b, ch, dd, hh, ww]
    y[b, ch, oa, oi, oj] = acc / ((d1 - d0) * (h1 - h0) * (w1 - w0))


@cuda.jit
def adaptive_avg_pool_backward(gy, gx):
    """gy (n, c, od, oh, ow) -> gx (n, c, d, h, w): every adaptive window holding an element adds
    gy / (the window's size)."""
    # thread i -> gx[b, ch, dd, hh, ww] row-major; the windows holding it gathered row-major
    i = cuda.grid(1)
    if i >= gx.size:
        return
    od, oh, ow = gy.shape[2], gy.shape[3], gy.shape[4]
    b, ch, dd, hh, ww = unravel(i, gx.shape)
    a_first, a_stop = adaptive_cover(dd, gx.shape[2], od)
    i_first, i_stop = adaptive_cover(hh, gx.shape[3], oh)
    j_first, j_stop = adaptive_cover(ww, gx.shape[4], ow)
    acc = 0.0
    for oa in range(a_first, a_stop):
        d0, d1 = adaptive_window(oa, gx.shape[2], od)
        for oi in range(i_first, i_stop):
            h0, h1 = adaptive_window(oi, gx.shape[3], oh)
            for oj in range(j_first, j_stop):
                w0, w1 = adaptive_window(oj, gx.shape[4], ow)
                acc += gy[b, ch, oa, oi, oj] / ((d1 - d0) * (h1 - h0) * (w1 - w0))
    gx[b, ch, dd, hh, ww] = acc


@cuda.jit(device=True)
def lerp(a, b, t):
    """(1 - t) a + t b: one linear mix, written as the reference writes it."""
    return (1 - t) * a + t * b


@cuda.jit
def interpolate_forward(x, y, index, lam, linear):
    """x (n, c, d, h, w) -> y (n, c, od, oh, ow) by the tables index (3, 2, L), lam (3, L).
    Nearest (linear False): y = x[d0, h0, w0]. Linear: the 8 corners mixed along w, then h, then d,
    the reference's order (at depth 1, d0 = d1 = 0 and lam 0: bilinear)."""
    # thread i -> y[b, ch, oa, oi, oj] row-major; it reads the corners (d0|d1, h0|h1, w0|w1)
    i = cuda.grid(1)
    if i >= y.size:
        return
    b, ch, oa, oi, oj = unravel(i, y.shape)
    d0, d1 = index[0, 0, oa], index[0, 1, oa]
    h0, h1 = index[1, 0, oi], index[1, 1, oi]
    w0, w1 = index[2, 0, oj], index[2, 1, oj]
    if not linear:
        y[b, ch, oa, oi, oj] = x[b, ch, d0, h0, w0]
        return
    lw, lh = lam[2, oj], lam[1, oi]
    near = lerp(
        lerp(x[b, ch, d0, h0, w0], x[b, ch, d0, h0, w1], lw),
        lerp(x[b, ch, d0, h1, w0], x[b, ch, d0, h1, w1], lw),
        lh,
    )
    far = lerp(
        lerp(x[b, ch, d1, h0, w0], x[b, ch, d1, h0, w1], lw),
        lerp(x[b, ch, d1, h1, w0], x[b, ch, d1, h1, w1], lw),
        lh,
    )
    y[b, ch, oa, oi, oj] = lerp(near, far, lam[0, oa])


@cuda.jit(device=True)
def share(index, lam, axis, o, j):
    """The weight of input j in output o along `axis`: 1 - lam where i0 == j, plus lam where
    i1 == j (both at the last index, where i0 == i1; 0 when o does not read j)."""
    weight = 0.0
    if index[axis, 0, o] == j:
        weight += 1 - lam[axis, o]
    if index[axis, 1, o] == j:
        weight += lam[axis, o]
    return weight


@cuda.jit
def interpolate_backward(gy, gx, index, lam, runs):
    """gy (n, c, od, oh, ow) -> gx (n, c, d, h, w), the adjoint of interpolate_forward: gx[j] =
    the sum over outputs o reading j of share_d share_h share_w gy[o]. runs (3, 2, size): the
    outputs reading input j along an axis are o in [runs[axis, 0, j], runs[axis, 1, j]) (i0 and
    i1 never decrease, so they are one run; empty where no output reads j)."""
    # thread i -> gx[b, ch, dd, hh, ww] row-major; it gathers its runs of outputs row-major
    i = cuda.grid(1)
    if i >= gx.size:
        return
    b, ch, dd, hh, ww = unravel(i, gx.shape)
    acc = 0.0
    for oa in range(runs[0, 0, dd], runs[0, 1, dd]):
        wd = share(index, lam, 0, oa, dd)
        for oi in range(runs[1, 0, hh], runs[1, 1, hh]):
            wdh = wd * share(index, lam, 1, oi, hh)
            for oj in range(runs[2, 0, ww], runs[2, 1, ww]):
                acc += wdh * share(index, lam, 2, oj, ww) * gy[b, ch, oa, oi, oj]
    gx[b, ch, dd, hh, ww] = acc
