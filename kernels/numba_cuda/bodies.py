"""@cuda.jit kernel bodies of the numba_cuda flavour: index logic only, no allocation, no CuPy.

Every body runs on a 1-D grid with one thread per element of the array it writes (its "out"), and
returns at once when the thread index is past the end. Arrays may be NumPy (under
NUMBA_ENABLE_CUDASIM=1, the CI tests) or CuPy (on a GPU, through the CUDA array interface); Numba
compiles one specialisation per dtype, so float32 and float64 both work. Sums accumulate in float64.
Window geometry (shared by conv and pool), on volumes (n, c, d, h, w): a 2-D op is the 3-D one
at depth 1 (the launchers pass (n, c, 1, h, w) views, kd = sd = 1, pd = 0). Output voxel
(oa, oi, oj), tap (t, u, v) reads input depth dd = oa*sd + t - pd, row hh = oi*sh + u - ph and
column ww = oj*sw + v - pw; taps outside [0, d) x [0, h) x [0, w) are padding. Taps are numbered
row-major, (t*kh + u)*kw + v (u*kw + v at depth 1, the 2-D numbering).
Backward passes gather (one thread per input element, looping over the windows that cover it)
instead of scattering with atomics: deterministic, and the same summation order as numpy_cpu.
"""

from __future__ import annotations

import math

from numba import cuda

THREADS = 128  # threads per block: a multiple of the warp size that suits every body here


@cuda.jit(device=True)
def offer_max(value, tap, best, best_tap):
    """The max-pool tie rule of kernels/numpy_cpu/pool.py (np.argmax's), the one definition every
    body here that pools uses: taps are offered in row-major order, and tap replaces the best so far
    when its value is strictly greater (ties keep the first tap) or is the first NaN (x != x only
    for a NaN; once in, nothing beats it). Returns the new (best, best_tap)."""
    if value > best or (value != value and best == best):
        return value, tap
    return best, best_tap


@cuda.jit(device=True)
def window_of(index, tap, stride, pad, n_out):
    """The window walk of the backward gathers, along one axis: the output index o whose tap `tap`
    reads input `index` (o * stride + tap - pad == index), or -1 when no window of the n_out has
    that tap there (index + pad - tap negative, not a multiple of the stride, or past the end)."""
    top = index + pad - tap
    if top < 0 or top % stride != 0 or top // stride >= n_out:
        return -1
    return top // stride


@cuda.jit(device=True)
def unravel(i, shape):
    """The row-major position (b, ch, a, u, v) of flat index i in a 5-D array of `shape`."""
    v, rest = i % shape[4], i // shape[4]
    u, rest = rest % shape[3], rest // shape[3]
    a, rest = rest % shape[2], rest // shape[2]
    return rest // shape[1], rest % shape[1], a, u, v


@cuda.jit
def vol2col(x, cols, kd, kh, kw, sd, sh, sw, pd, ph, pw, od, oh, ow):
    """x (n, c, d, h, w) -> cols (n*od*oh*ow, c*kd*kh*kw); padding reads as 0."""
    # thread i -> cols[row, col]: row = (b, oa, oi, oj) row-major, col = (ch, tap) with tap the
    # row-major number of (t, u, v)
    i = cuda.grid(1)
    if i >= cols.size:
        return
    d, h, w = x.shape[2], x.shape[3], x.shape[4]
    row, col = i // cols.shape[1], i % cols.shape[1]
    oj, rest = row % ow, row // ow
    oi, rest = rest % oh, rest // oh
    oa, b = rest % od, rest // od
    ch, tap = col // (kd * kh * kw), col % (kd * kh * kw)
    dd = oa * sd + tap // (kh * kw) - pd  # input depth of tap t = tap // (kh*kw)
    hh = oi * sh + tap // kw % kh - ph  # input row of tap u = tap // kw % kh
    ww = oj * sw + tap % kw - pw  # input column of tap v = tap % kw
    if 0 <= dd < d and 0 <= hh < h and 0 <= ww < w:
        cols[row, col] = x[b, ch, dd, hh, ww]
    else:
        cols[row, col] = 0


@cuda.jit
def col2vol(cols, x, kd, kh, kw, sd, sh, sw, pd, ph, pw, od, oh, ow):
    """cols (n*od*oh*ow, c*kd*kh*kw) -> x (n, c, d, h, w): each input element sums the taps that
    read it (the adjoint of vol2col)."""
    # thread i -> x[b, ch, dd, hh, ww] row-major; it gathers over the (oa, oi, oj, t, u, v) with
    # oa*sd + t - pd == dd, oi*sh + u - ph == hh and oj*sw + v - pw == ww, taps in row-major order
    i = cuda.grid(1)
    if i >= x.size:
        return
    b, ch, dd, hh, ww = unravel(i, x.shape)
    acc = 0.0
    for t in range(kd):
        oa = window_of(dd, t, sd, pd, od)
        if oa < 0:
            continue
        for u in range(kh):
            oi = window_of(hh, u, sh, ph, oh)
            if oi < 0:
                continue
            for v in range(kw):
                oj = window_of(ww, v, sw, pw, ow)
                if oj < 0:
                    continue
                row = ((b * od + oa) * oh + oi) * ow + oj
                acc += cols[row, ((ch * kd + t) * kh + u) * kw + v]
    x[b, ch, dd, hh, ww] = acc


@cuda.jit
def rows_to_channels(rows, bias, has_bias, y):
    """rows (n*s, oc), the GEMM's output -> y (n, oc, s), plus bias[o] if has_bias; s is the
    output's spatial size (oh*ow or od*oh*ow), flattened."""
    # thread i -> y[b, o, pix] row-major; it reads rows[b*s + pix, o]
    i = cuda.grid(1)
    if i >= y.size:
        return
    oc, s = y.shape[1], y.shape[2]
    pix, rest = i % s, i // s
    o, b = rest % oc, rest // oc
    value = rows[b * s + pix, o]
    if has_bias:
        value += bias[o]
    y[b, o, pix] = value


@cuda.jit
def channels_to_rows(y, rows):
    """y (n, oc, s) -> rows (n*s, oc): the layout the GEMMs of the backward passes need."""
    # thread i -> rows[r, o] row-major, r = b*s + pix; it reads y[b, o, pix]
    i = cuda.grid(1)
    if i >= rows.size:
        return
    oc, s = y.shape[1], y.shape[2]
    r, o = i // oc, i % oc
    rows[r, o] = y[r // s, o, r % s]


@cuda.jit
def max_pool_forward(x, y, argmax, kd, kh, kw, sd, sh, sw, pd, ph, pw):
    """x (n, c, d, h, w) -> y, argmax (n, c, od, oh, ow); padding is -inf; the tie rule of
    offer_max; argmax is the winning tap's number."""
    # thread i -> output window (b, ch, oa, oi, oj) row-major; taps offered in row-major order
    i = cuda.grid(1)
    if i >= y.size:
        return
    d, h, w = x.shape[2], x.shape[3], x.shape[4]
    b, ch, oa, oi, oj = unravel(i, y.shape)
    best = -math.inf
    best_tap = 0
    for t in range(kd):
        dd = oa * sd + t - pd
        for u in range(kh):
            hh = oi * sh + u - ph
            for v in range(kw):
                ww = oj * sw + v - pw
                value = -math.inf
                if 0 <= dd < d and 0 <= hh < h and 0 <= ww < w:
                    value = x[b, ch, dd, hh, ww]
                best, best_tap = offer_max(value, (t * kh + u) * kw + v, best, best_tap)
    y[b, ch, oa, oi, oj] = best
    argmax[b, ch, oa, oi, oj] = best_tap


@cuda.jit
def max_pool_backward(gy, argmax, gx, kd, kh, kw, sd, sh, sw, pd, ph, pw):
    """gy, argmax (n, c, od, oh, ow) -> gx (n, c, d, h, w): the sum of gy over the windows whose
    argmax is here."""
    # thread i -> gx[b, ch, dd, hh, ww] row-major; windows covering it gathered in tap order
    i = cuda.grid(1)
    if i >= gx.size:
        return
    od, oh, ow = gy.shape[2], gy.shape[3], gy.shape[4]
    b, ch, dd, hh, ww = unravel(i, gx.shape)
    acc = 0.0
    for t in range(kd):
        oa = window_of(dd, t, sd, pd, od)
        if oa < 0:
            continue
        for u in range(kh):
            oi = window_of(hh, u, sh, ph, oh)
            if oi < 0:
                continue
            for v in range(kw):
                oj = window_of(ww, v, sw, pw, ow)
                if oj >= 0 and argmax[b, ch, oa, oi, oj] == (t * kh + u) * kw + v:
                    acc += gy[b, ch, oa, oi, oj]
    gx[b, ch, dd, hh, ww] = acc


@cuda.jit
def avg_pool_forward(x, y, kd, kh, kw, sd, sh, sw, pd, ph, pw):
    """x (n, c, d, h, w) -> y (n, c, od, oh, ow): window sum / (kd*kh*kw), padded zeros counted."""
    # thread i -> output window (b, ch, oa, oi, oj) row-major; taps summed in row-major order
    i = cuda.grid(1)
    if i >= y.size:
        return
    d, h, w = x.shape[2], x.shape[3], x.shape[4]
    b, ch, oa, oi, oj = unravel(i, y.shape)
    acc = 0.0
    for t in range(kd):
        dd = oa * sd + t - pd
        for u in range(kh):
            hh = oi * sh + u - ph
            for v in range(kw):
                ww = oj * sw + v - pw
                if 0 <= dd < d and 0 <= hh < h and 0 <= ww < w:
                    acc += x[b, ch, dd, hh, ww]
    y[b, ch, oa, oi, oj] = acc / (kd * kh * kw)


@cuda.jit
def avg_pool_backward(gy, gx, kd, kh, kw, sd, sh, sw, pd, ph, pw):
    """gy (n, c, od, oh, ow) -> gx (n, c, d, h, w): every window covering an element adds
    gy / (kd*kh*kw)."""
    # thread i -> gx[b, ch, dd, hh, ww] row-major; windows covering it gathered in tap order
    i = cuda.grid(1)
    if i >= gx.size:
        return
    od, oh, ow = gy.shape[2], gy.shape[3], gy.shape[4]
    b, ch, dd, hh, ww = unravel(i, gx.shape)
    acc = 0.0
    for t in range(kd):
        oa = window_of(dd, t, sd, pd, od)
        if oa < 0:
            continue
        for u in range(kh):
            oi = window_of(hh, u, sh, ph, oh)
            if oi < 0:
                continue
            for v in range(kw):
                oj = window_of(ww, v, sw, pw, ow)
                if oj >= 0:
                    acc += gy[b, ch, oa, oi, oj] / (kd * kh * kw)
    gx[b, ch, dd, hh, ww] = acc


@cuda.jit
def bias_relu_max_pool2d_forward(z, bias, has_bias, y, argmax, kh, kw, sh, sw, ph, pw):
    """z (c, n, h, w), the channel-major conv output -> y, argmax (n, c, oh, ow) of
    max_pool2d(relu(z + bias)); padding is -inf; the tie rule of offer_max."""
    # thread i -> pooled window (b, ch, oi, oj) row-major; each tap is z + bias[ch], rectified
    i = cuda.grid(1)
    if i >= y.size:
        return
    c, oh, ow = y.shape[1], y.shape[2], y.shape[3]
    h, w = z.shape[2], z.shape[3]
    oj, rest = i % ow, i // ow
    oi, rest = rest % oh, rest // oh
    ch, b = rest % c, rest // c
    best = -math.inf
    best_tap = 0
    for u in range(kh):
        hh = oi * sh + u - ph
        for v in range(kw):
            ww = oj * sw + v - pw
            value = -math.inf
            if 0 <= hh < h and 0 <= ww < w:
                value = z[ch, b, hh, ww]
                if has_bias:
                    value += bias[ch]
                if value < 0:  # ReLU; NaN stays NaN
                    value = 0
            best, best_tap = offer_max(value, u * kw + v, best, best_tap)
    y[b, ch, oi, oj] = best
    argmax[b, ch, oi, oj] = best_tap


@cuda.jit
def relu_max_pool2d_backward(gy, y, argmax, gz, kh, kw, sh, sw, ph, pw):
    """gy, y, argmax (n, c, oh, ow) -> gz (c, n, h, w), the channel-major conv-output gradient:
    the sum of gy over the windows whose argmax is here and whose y > 0."""
    # thread i -> gz[ch, b, hh, ww] row-major; windows covering it gathered in tap order
    i = cuda.grid(1)
    if i >= gz.size:
        return
    n, h, w = gz.shape[1], gz.shape[2], gz.shape[3]
    oh, ow = gy.shape[2], gy.shape[3]
    ww, rest = i % w, i // w
    hh, rest = rest % h, rest // h
    b, ch = rest % n, rest // n
    acc = 0.0
    for u in range(kh):
        oi = window_of(hh, u, sh, ph, oh)
        if oi < 0:
            continue
        for v in range(kw):
            oj = window_of(ww, v, sw, pw, ow)
            if oj < 0:
                continue
            if argmax[b, ch, oi, oj] == u * kw + v and y[b, ch, oi, oj] > 0:
                acc += gy[b, ch, oi, oj]
    gz[ch, b, hh, ww] = acc


@cuda.jit
def relu_forward(x, y):
    """Flat x -> y = max(x, 0); NaN stays NaN, as in numpy.maximum."""
    # thread i -> y[i]
    i = cuda.grid(1)
    if i < y.size:
        y[i] = 0 if x[i] < 0 else x[i]


@cuda.jit
def relu_backward(gy, y, gx):
    """Flat gy, y -> gx = gy where y > 0, else 0."""
    # thread i -> gx[i]
    i = cuda.grid(1)
    if i < gx.size:
        gx[i] = gy[i] if y[i] > 0 else 0


@cuda.jit
def softmax_cross_entropy_forward(logits, t, probs, row_loss):
    """logits (n, k), t (n,) int -> probs (n, k), row_loss (n,) = logsumexp(row) - row[t]."""
    # thread r -> one row: max, then sum of exp(z - max), then probs and the row's loss
    r = cuda.grid(1)
    if r >= logits.shape[0]:
        return
    k = logits.shape[1]
    top = logits[r, 0]
    for j in range(1, k):
        top = max(top, logits[r, j])
    total = 0.0
    for j in range(k):
        total += math.exp(logits[r, j] - top)
    for j in range(k):
        probs[r, j] = math.exp(logits[r, j] - top) / total
    if 0 <= t[r] < k:
        row_loss[r] = math.log(total) - (logits[r, t[r]] - top)
    else:  # never read out of bounds: an invalid target makes the loss NaN (see engine/ops/loss)
        row_loss[r] = math.nan


@cuda.jit
def softmax_cross_entropy_backward(probs, t, gloss, glogits):
    """probs (n, k), t (n,), gloss (1,) -> glogits = (probs - onehot(t)) * gloss / n."""
    # thread i -> glogits[r, j], r = i // k, j = i % k
    i = cuda.grid(1)
    n, k = probs.shape[0], probs.shape[1]
    if i >= n * k:
        return
    r, j = i // k, i % k
    g = probs[r, j]
    if j == t[r]:
        g -= 1
    if t[r] < 0 or t[r] >= k:
        g = math.nan
    glogits[r, j] = g * (gloss[0] / n)


@cuda.jit
def sgd_plain(p, g, lr, weight_decay):
    """Flat p, g: p -= lr (g + wd p), in place."""
    # thread i -> p[i]
    i = cuda.grid(1)
    if i < p.size:
        p[i] -= lr * (g[i] + weight_decay * p[i])


@cuda.jit
def sgd_momentum(p, g, v, lr, momentum, nesterov, weight_decay):
    """Flat p, g, v: g' = g + wd p; v = mu v + g'; p -= lr (g' + mu v if nesterov else v)."""
    # thread i -> p[i] and v[i]
    i = cuda.grid(1)
    if i >= p.size:
        return
    grad = g[i] + weight_decay * p[i]
    vel = momentum * v[i] + grad
    v[i] = vel
    if nesterov:
        p[i] -= lr * (grad + momentum * vel)
    else:
        p[i] -= lr * vel


@cuda.jit
def adam(p, g, m, v, step_size, beta1, beta2, bias2_sqrt, eps, weight_decay):
    """Flat p, g, m, v: Adam with bias correction; step_size = lr / (1 - beta1^t),
    bias2_sqrt = sqrt(1 - beta2^t)."""
    # thread i -> p[i], m[i], v[i]
    i = cuda.grid(1)
    if i >= p.size:
        return
    grad = g[i] + weight_decay * p[i]
    mi = beta1 * m[i] + (1 - beta1) * grad
    vi = beta2 * v[i] + (1 - beta2) * (grad * grad)
    m[i] = mi
    v[i] = vi
    p[i] -= step_size * (mi / (math.sqrt(vi) / bias2_sqrt + eps))
