"""CUDA C sources of the cupy_cuda flavour, as plain data: one cupy.ElementwiseKernel each.

Kept free of CuPy so they can be read, and compiled on a CPU by the tests (tests/kernels/
test_cupy_sources.py builds each body with g++ inside a loop over `i`). CuPy conventions used here:
`i` is the thread's element index into the non-raw output(s); a `raw` array is indexed with a flat
row-major index; `T` is the floating dtype (float32 or float64) and `I` the integer dtype of class
targets, both read off the arguments, so one source serves every dtype. Sizes are int32 scalars;
index arithmetic is in ptrdiff_t, so batch 4096 layers (over 2^31 bytes) do not overflow, except in
the fused conv-ReLU-pool path, which indexes in 32 bits with magic-number division (see below).

Window geometry, shared by conv and pool: output pixel (oi, oj) and tap (u, v) read input row
hh = oi*sh + u - ph and column ww = oj*sw + v - pw; a tap outside [0, h) x [0, w) is padding.
Backward passes gather (one thread per input element, looping over the windows that cover it)
rather than scatter with atomics: deterministic, and in numpy_cpu's summation order.
Sections: 2-D conv and pools; the fused conv-ReLU-pool path; elementwise, softmax cross-entropy
and optimizers; volumes (vol2col / col2vol, 3-D pools); adaptive pools and interpolation (2-D
arrays as volumes of depth 1); the norms' per-lane reductions; leaky ReLU and GELU.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    """The arguments of cupy.ElementwiseKernel(in_params, out_params, operation, name,
    preamble=preamble)."""

    in_params: str
    out_params: str
    operation: str
    name: str
    preamble: str = ""  # code before the kernel (CuPy's `preamble` argument)


_GEOMETRY = "int32 kh, int32 kw, int32 sh, int32 sw, int32 ph, int32 pw"

# Finds the output window (oi, oj) whose tap (u, v) lies on input element (hh, ww), or skips it.
# Used inside the backward gathers: top = oi * sh must be a non-negative multiple of sh below oh*sh.
_WINDOWS_COVERING = """
    for (int u = 0; u < kh; ++u) {
        const ptrdiff_t top = hh + ph - u;  // = oi * sh for the window whose tap row u is hh
        if (top < 0 || top % sh != 0 || top / sh >= oh) continue;
        const ptrdiff_t oi = top / sh;
        for (int v = 0; v < kw; ++v) {
            const ptrdiff_t left = ww + pw - v;  // = oj * sw likewise
            if (left < 0 || left % sw != 0 || left / sw >= ow) continue;
            const ptrdiff_t oj = left / sw;
"""

# ---- the fused conv2d + bias + ReLU + max-pool path: 32-bit index arithmetic, division by magic ----
# At batch 4096 these kernels run one thread per element of arrays of 10^7..10^8 elements, and a
# thread did up to ten 64-bit divisions by run-time sizes (each a software routine of ~20
# instructions with 3 quarter-rate conversions): integer work, not memory, bounded them. Here
# every index is unsigned 32-bit (the launchers check that each array has < 2^31 elements and
# fall back to the 64-bit kernels otherwise) and each division by a run-time divisor d is a
# multiply-high, an add and a shift with a magic number (d_m, d_s) computed on the host.
MAGIC_PREAMBLE = """
// q = n / d for 0 <= n < 2^31, 1 <= d < 2^31: (umulhi(n, d_m) + n) >> d_s, with d_s = ceil(log2 d)
// and d_m = floor(2^32 (2^d_s - d) / d) + 1 (Granlund & Montgomery 1994; PyTorch's IntDivider);
// t + n < 2^32 because t <= n < 2^31. The host computes d_m, d_s (launchers._divisor)
#define MG_DIV(n, d) ((__umulhi((unsigned int)(n), d##_m) + (unsigned int)(n)) >> d##_s)
"""


def _div(name: str) -> str:
    """The three parameters of a divisor: its value, magic multiplier and shift."""
    return f"int32 {name}, uint32 {name}_m, int32 {name}_s"


_GEOMETRY32 = f"int32 kh, int32 kw, {_div('sh')}, {_div('sw')}, int32 ph, int32 pw"

# The windows (oi, oj) covering input element (hh, ww), without a division per tap: with
# a = hh + ph, window oi covers it when oi*sh <= a < oi*sh + kh and 0 <= oi < oh. Descending oi is
# ascending tap row u (the order of _WINDOWS_COVERING, hence numpy_cpu's summation order).
_WINDOWS_COVERING_32 = """
    const int ah = (int)hh + ph, aw = (int)ww + pw;
    const int oi_hi = min((int)MG_DIV(ah, sh), oh - 1);
    const int oi_lo = ah >= kh ? (int)MG_DIV(ah - kh, sh) + 1 : 0;
    const int oj_hi = min((int)MG_DIV(aw, sw), ow - 1);
    const int oj_lo = aw >= kw ? (int)MG_DIV(aw - kw, sw) + 1 : 0;
    for (int oi = oi_hi; oi >= oi_lo; --oi) {
        const int u = ah - oi * sh;
        for (int oj = oj_hi; oj >= oj_lo; --oj) {
            const int v = aw - oj * sw;
"""

# The max-pool tie rule of kernels/numpy_cpu/pool.py (np.argmax's), the one definition that every
# source here that pools uses: taps are offered in row-major order, and a tap replaces the best so
# far when it is strictly greater (ties keep the first tap) or when it is the first NaN (x != x only
# for a NaN; once in, nothing beats it, since comparisons with NaN are false): NaNs propagate
MAX_TIE_RULE = """
template <typename T>
__device__ __forceinline__ void medgrad_offer_max(
        const T value, const int tap, T& best, int& best_tap) {
    if (value > best || (value != value && best == best)) {
        best = value;
        best_tap = tap;
    }
}
"""

SOURCES: dict[str, Source] = {
    "im2col": Source(
        f"raw T x, int32 c, int32 h, int32 w, int32 oh, int32 ow, {_GEOMETRY}",
        "T cols",
        """
        // thread i -> cols[row, col] of cols (n*oh*ow, c*kh*kw), row = (b, oi, oj), col = (ch, u, v)
        const ptrdiff_t k = (ptrdiff_t)c * kh * kw;
        const ptrdiff_t row = i / k, col = i % k;
        const ptrdiff_t b = row / ((ptrdiff_t)oh * ow), pix = row % ((ptrdiff_t)oh * ow);
        const ptrdiff_t ch = col / (kh * kw), tap = col % (kh * kw);
        const ptrdiff_t hh = (pix / ow) * sh + tap / kw - ph;  // oi * sh + u - ph
        const ptrdiff_t ww = (pix % ow) * sw + tap % kw - pw;  // oj * sw + v - pw
        const bool inside = hh >= 0 && hh < h && ww >= 0 && ww < w;
        cols = inside ? x[((b * c + ch) * h + hh) * w + ww] : (T)0;
        """,
        "medgrad_im2col",
    ),
    "col2im": Source(
        f"raw T cols, int32 c, int32 h, int32 w, int32 oh, int32 ow, {_GEOMETRY}",
        "T x",
        """
        // thread i -> x[b, ch, hh, ww] (row-major); it sums the cols entries of every tap on it
        const ptrdiff_t ww = i % w, hh = (i / w) % h;
        const ptrdiff_t ch = (i / ((ptrdiff_t)h * w)) % c, b = i / ((ptrdiff_t)c * h * w);
        const ptrdiff_t k = (ptrdiff_t)c * kh * kw;
        T acc = 0;
        """
        + _WINDOWS_COVERING
        + """
                acc += cols[((b * oh + oi) * ow + oj) * k + (ch * kh + u) * kw + v];
            }
        }
        x = acc;
        """,
        "medgrad_col2im",
    ),
    "rows_to_nchw": Source(
        "raw T rows, raw T bias, bool has_bias, int32 oc, int32 ohw",
        "T y",
        """
        // thread i -> y[b, o, pix] of y (n, oc, oh*ow); it reads rows[(b, pix), o] of the GEMM
        // output (n*oh*ow, oc) and adds bias[o]: the transpose and the bias add in one pass
        const ptrdiff_t pix = i % ohw, o = (i / ohw) % oc, b = i / ((ptrdiff_t)ohw * oc);
        const T value = rows[(b * ohw + pix) * oc + o];
        y = has_bias ? value + bias[o] : value;
        """,
        "medgrad_rows_to_nchw",
    ),
    "nchw_to_rows": Source(
        "raw T y, int32 oc, int32 ohw",
        "T rows",
        """
        // thread i -> rows[r, o] of rows (n*oh*ow, oc), r = (b, pix); it reads y[b, o, pix]
        const ptrdiff_t o = i % oc, r = i / oc;
        rows = y[((r / ohw) * oc + o) * ohw + r % ohw];
        """,
        "medgrad_nchw_to_rows",
    ),
    "max_pool2d_forward": Source(
        f"raw T x, int32 h, int32 w, int32 oh, int32 ow, {_GEOMETRY}",
        "T y, int32 argmax",
        """
        // thread i -> window (plane, oi, oj) row-major, plane = b * c + ch. Padding is skipped
        // (-inf: never wins); medgrad_offer_max keeps the tie rule (first maximum, a NaN wins)
        const ptrdiff_t oj = i % ow, oi = (i / ow) % oh, plane = i / ((ptrdiff_t)oh * ow);
        T best = (T)(-__longlong_as_double(0x7ff0000000000000LL));  // -inf
        int best_tap = 0;
        for (int u = 0; u < kh; ++u) {
            const ptrdiff_t hh = oi * sh + u - ph;
            for (int v = 0; v < kw; ++v) {
                const ptrdiff_t ww = oj * sw + v - pw;
                if (hh < 0 || hh >= h || ww < 0 || ww >= w) continue;
                const T value = x[(plane * h + hh) * w + ww];
                medgrad_offer_max(value, u * kw + v, best, best_tap);
            }
        }
        y = best;
        argmax = best_tap;
        """,
        "medgrad_max_pool2d_forward",
        MAX_TIE_RULE,
    ),
    "max_pool2d_backward": Source(
        f"raw T gy, raw int32 argmax, int32 h, int32 w, int32 oh, int32 ow, {_GEOMETRY}",
        "T gx",
        """
        // thread i -> gx[plane, hh, ww] row-major; it adds gy of every window whose argmax is here
        const ptrdiff_t ww = i % w, hh = (i / w) % h, plane = i / ((ptrdiff_t)h * w);
        T acc = 0;
        """
        + _WINDOWS_COVERING
        + """
                const ptrdiff_t o = (plane * oh + oi) * ow + oj;
                if (argmax[o] == u * kw + v) acc += gy[o];
            }
        }
        gx = acc;
        """,
        "medgrad_max_pool2d_backward",
    ),
    "avg_pool2d_forward": Source(
        f"raw T x, int32 h, int32 w, int32 oh, int32 ow, {_GEOMETRY}",
        "T y",
        """
        // thread i -> window (plane, oi, oj) row-major; padded taps add 0 but count in kh*kw
        const ptrdiff_t oj = i % ow, oi = (i / ow) % oh, plane = i / ((ptrdiff_t)oh * ow);
        T acc = 0;
        for (int u = 0; u < kh; ++u) {
            const ptrdiff_t hh = oi * sh + u - ph;
            for (int v = 0; v < kw; ++v) {
                const ptrdiff_t ww = oj * sw + v - pw;
                if (hh >= 0 && hh < h && ww >= 0 && ww < w) acc += x[(plane * h + hh) * w + ww];
            }
        }
        y = acc / (T)(kh * kw);
        """,
        "medgrad_avg_pool2d_forward",
    ),
    "avg_pool2d_backward": Source(
        f"raw T gy, int32 h, int32 w, int32 oh, int32 ow, {_GEOMETRY}",
        "T gx",
        """
        // thread i -> gx[plane, hh, ww] row-major; every window covering it adds gy / (kh*kw)
        const ptrdiff_t ww = i % w, hh = (i / w) % h, plane = i / ((ptrdiff_t)h * w);
        T acc = 0;
        """
        + _WINDOWS_COVERING
        + """
                acc += gy[(plane * oh + oi) * ow + oj] / (T)(kh * kw);
            }
        }
        gx = acc;
        """,
        "medgrad_avg_pool2d_backward",
    ),
    "bias_relu_max_pool2d_forward": Source(
        f"raw T z, raw T bias, bool has_bias, int32 batch, {_div('c')}, int32 h, int32 w, "
        f"{_div('oh')}, {_div('ow')}, int32 kh, int32 kw, int32 sh, int32 sw, int32 ph, int32 pw",
        "T y, int32 argmax",
        """
        // thread i -> pooled window y[b, ch, oi, oj] (n, c, oh, ow) row-major. Its taps come from
        // the channel-major conv output z (c, n, h, w) of the GEMM W @ cols: each tap is
        // z + bias[ch], rectified, and the window keeps its maximum by medgrad_offer_max (as
        // max_pool2d_forward on relu(conv2d_forward)); padding is skipped (-inf: never wins).
        // Consecutive threads read neighbouring windows of one plane of z
        const unsigned int idx = (unsigned int)i;
        const unsigned int rest = MG_DIV(idx, ow), oj = idx - rest * (unsigned int)ow;
        const unsigned int plane = MG_DIV(rest, oh), oi = rest - plane * (unsigned int)oh;
        const unsigned int b = MG_DIV(plane, c), ch = plane - b * (unsigned int)c;
        const unsigned int base = (ch * (unsigned int)batch + b) * (unsigned int)(h * w);
        const T shift = has_bias ? (T)bias[ch] : (T)0;
        T best = (T)(-__longlong_as_double(0x7ff0000000000000LL));  // -inf
        int best_tap = 0;
        for (int u = 0; u < kh; ++u) {
            const int hh = (int)oi * sh + u - ph;
            if (hh < 0 || hh >= h) continue;
            for (int v = 0; v < kw; ++v) {
                const int ww = (int)oj * sw + v - pw;
                if (ww < 0 || ww >= w) continue;
                const T conv = z[base + (unsigned int)(hh * w + ww)];
                T value = has_bias ? conv + shift : conv;
                value = value < (T)0 ? (T)0 : value;  // ReLU; NaN stays NaN
                medgrad_offer_max(value, u * kw + v, best, best_tap);
            }
        }
        y = best;
        argmax = best_tap;
        """,
        "medgrad_bias_relu_max_pool2d_forward",
        MAX_TIE_RULE + MAGIC_PREAMBLE,
    ),
    "relu_max_pool2d_backward": Source(
        f"raw T gy, raw T y, raw int32 argmax, {_div('batch')}, int32 c, {_div('h')}, {_div('w')}, "
        f"int32 oh, int32 ow, {_GEOMETRY32}",
        "T gz",
        """
        // thread i -> gz[ch, b, hh, ww] of the channel-major conv-output gradient (c, n, h, w), the
        // layout the backward GEMMs read; it gathers gy of every pooled window (n, c, oh, ow)
        // whose argmax is this tap and whose output y > 0 (so the ReLU passed it): no atomics.
        // Consecutive threads write consecutive gz and read neighbouring windows
        const unsigned int idx = (unsigned int)i;
        const unsigned int rest = MG_DIV(idx, w), ww = idx - rest * (unsigned int)w;
        const unsigned int chb = MG_DIV(rest, h), hh = rest - chb * (unsigned int)h;
        const unsigned int ch = MG_DIV(chb, batch), b = chb - ch * (unsigned int)batch;
        const unsigned int plane = b * (unsigned int)c + ch;
        T acc = 0;
        """
        + _WINDOWS_COVERING_32
        + """
                const unsigned int o = (plane * (unsigned int)oh + oi) * (unsigned int)ow + oj;
                if (argmax[o] == u * kw + v && y[o] > (T)0) acc += gy[o];
            }
        }
        gz = acc;
        """,
        "medgrad_relu_max_pool2d_backward",
        MAGIC_PREAMBLE,
    ),
    "im2col_t": Source(
        f"raw T x, int32 c, int32 h, int32 w, {_div('kw')}, int32 sh, int32 sw, int32 ph, "
        f"int32 pw, {_div('npix')}, {_div('ohw')}, {_div('ow')}, {_div('khw')}",
        "T cols",
        """
        // thread i -> cols[r, p] of the channel-major columns (rows, n*oh*ow), r = (ch, u, v) and
        // p = (b, oi, oj): consecutive threads take consecutive output pixels, so a warp reads
        // neighbouring x and writes neighbouring cols. Row r = c*kh*kw, present when rows is
        // c*kh*kw + 1, is all ones: the bias row, so that one GEMM gives gW and gb together
        const unsigned int idx = (unsigned int)i;
        const unsigned int r = MG_DIV(idx, npix), p = idx - r * (unsigned int)npix;
        const unsigned int ch = MG_DIV(r, khw), tap = r - ch * (unsigned int)khw;
        if (ch >= (unsigned int)c) {
            cols = (T)1;
        } else {
            const unsigned int b = MG_DIV(p, ohw), pix = p - b * (unsigned int)ohw;
            const unsigned int oi = MG_DIV(pix, ow), oj = pix - oi * (unsigned int)ow;
            const unsigned int u = MG_DIV(tap, kw), v = tap - u * (unsigned int)kw;
            const int hh = (int)(oi * sh + u) - ph, ww = (int)(oj * sw + v) - pw;
            const bool inside = hh >= 0 && hh < h && ww >= 0 && ww < w;
            cols = inside ? x[((b * (unsigned int)c + ch) * (unsigned int)h + hh) * w + ww]
                          : (T)0;
        }
        """,
        "medgrad_im2col_t",
        MAGIC_PREAMBLE,
    ),
    "col2im_t": Source(
        f"raw T cols, {_div('c')}, {_div('h')}, {_div('w')}, int32 oh, int32 ow, {_GEOMETRY32}, "
        "int32 npix",
        "T x",
        """
        // thread i -> x[b, ch, hh, ww] (row-major); it sums the channel-major columns cols
        // (c*kh*kw, n*oh*ow) of every tap on it: consecutive threads read consecutive pixels
        const unsigned int idx = (unsigned int)i;
        const unsigned int rest = MG_DIV(idx, w), ww = idx - rest * (unsigned int)w;
        const unsigned int plane = MG_DIV(rest, h), hh = rest - plane * (unsigned int)h;
        const unsigned int b = MG_DIV(plane, c), ch = plane - b * (unsigned int)c;
        T acc = 0;
        """
        + _WINDOWS_COVERING_32
        + """
                acc += cols[((ch * (unsigned int)kh + u) * (unsigned int)kw + v) * (unsigned int)npix
                            + ((b * (unsigned int)oh + oi) * (unsigned int)ow + oj)];
            }
        }
        x = acc;
        """,
        "medgrad_col2im_t",
        MAGIC_PREAMBLE,
    ),
    "relu_forward": Source(
        "T x",
        "T y",
        "// thread i -> y[i]; x < 0 gives 0, otherwise x itself (NaN stays NaN, as numpy.maximum)\n"
        "y = x < (T)0 ? (T)0 : x;",
        "medgrad_relu_forward",
    ),
    "relu_backward": Source(
        "T gy, T y",
        "T gx",
        "// thread i -> gx[i]; the subgradient at 0 is 0\ngx = y > (T)0 ? gy : (T)0;",
        "medgrad_relu_backward",
    ),
    "softmax_cross_entropy_forward": Source(
        "raw T logits, raw I t, int32 k",
        "raw T probs, T row_loss",
        """
        // thread i -> row i of logits (n, k): its max, sum of exp(z - max), probs and loss
        const ptrdiff_t base = i * k;
        T top = logits[base];
        for (int j = 1; j < k; ++j) top = max(top, (T)logits[base + j]);
        T total = 0;
        for (int j = 0; j < k; ++j) total += exp(logits[base + j] - top);
        for (int j = 0; j < k; ++j) probs[base + j] = exp(logits[base + j] - top) / total;
        // a target outside [0, k) is never read: it makes the row's loss NaN (the op checks
        // targets on the CPU only, since a check here would cost a device sync)
        const bool valid = t[i] >= 0 && t[i] < k;
        row_loss = valid ? log(total) - (logits[base + (valid ? t[i] : 0)] - top)
                         : (T)__longlong_as_double(0x7ff8000000000000LL);  // NaN
        """,
        "medgrad_softmax_xent_forward",
    ),
    "softmax_cross_entropy_backward": Source(
        "raw T probs, raw I t, raw T gloss, int32 k, int32 batch",
        "T glogits",
        """
        // thread i -> glogits[r, j], r = i / k, j = i % k: (probs - onehot(t)) * gloss / n;
        // gloss is read on the device, so the host never waits for it
        const ptrdiff_t r = i / k, j = i % k;
        T value = probs[i];
        if (j == t[r]) value -= (T)1;
        if (t[r] < 0 || t[r] >= k) value = (T)__longlong_as_double(0x7ff8000000000000LL);  // NaN
        glogits = value * (gloss[0] / (T)batch);
        """,
        "medgrad_softmax_xent_backward",
    ),
    "sgd_plain": Source(
        "T g, T lr, T weight_decay",
        "T p",
        "// thread i -> p[i], in place: p -= lr (g + wd p)\np -= lr * (g + weight_decay * p);",
        "medgrad_sgd_plain",
    ),
    "sgd_momentum": Source(
        "T g, T lr, T momentum, bool nesterov, T weight_decay",
        "T p, T v",
        """
        // thread i -> p[i] and v[i], in place: g' = g + wd p; v = mu v + g';
        // p -= lr (g' + mu v) with Nesterov, else lr v (PyTorch's rule)
        const T grad = g + weight_decay * p;
        v = momentum * v + grad;
        p -= lr * (nesterov ? grad + momentum * v : v);
        """,
        "medgrad_sgd_momentum",
    ),
    "adam": Source(
        "T g, T step_size, T beta1, T beta2, T bias2_sqrt, T eps, T weight_decay",
        "T p, T m, T v",
        """
        // thread i -> p[i], m[i], v[i], in place; step_size = lr / (1 - beta1^t),
        // bias2_sqrt = sqrt(1 - beta2^t): Adam with bias correction, L2 weight decay
        const T grad = g + weight_decay * p;
        m = beta1 * m + ((T)1 - beta1) * grad;
        v = beta2 * v + ((T)1 - beta2) * (grad * grad);
        p -= step_size * (m / (sqrt(v) / bias2_sqrt + eps));
        """,
        "medgrad_adam",
    ),
}

# ---- volumes (n, c, d, h, w): conv3d by vol2col / col2vol around a cuBLAS GEMM, 3-D pools ----
# Output voxel (oz, oi, oj) and tap (t, u, v) read input voxel zz = oz*sd + t - pd, hh = oi*sh +
# u - ph, ww = oj*sw + v - pw; a tap outside the volume is padding. Taps are numbered row-major,
# (t * kh + u) * kw + v, as in kernels/numpy_cpu/pool.py. Index arithmetic in ptrdiff_t.
_GEOMETRY3 = (
    "int32 kd, int32 kh, int32 kw, int32 sd, int32 sh, int32 sw, int32 pd, int32 ph, int32 pw"
)

# The windows (oz, oi, oj) whose tap (t, u, v) lies on input voxel (zz, hh, ww), in ascending tap
# order (numpy_cpu's summation order); the caller closes the three loops
_WINDOWS_COVERING_3D = """
    for (int t = 0; t < kd; ++t) {
        const ptrdiff_t front = zz + pd - t;  // = oz * sd for the window whose tap plane t is zz
        if (front < 0 || front % sd != 0 || front / sd >= od) continue;
        const ptrdiff_t oz = front / sd;
        for (int u = 0; u < kh; ++u) {
            const ptrdiff_t top = hh + ph - u;  // = oi * sh likewise
            if (top < 0 || top % sh != 0 || top / sh >= oh) continue;
            const ptrdiff_t oi = top / sh;
            for (int v = 0; v < kw; ++v) {
                const ptrdiff_t left = ww + pw - v;  // = oj * sw likewise
                if (left < 0 || left % sw != 0 || left / sw >= ow) continue;
                const ptrdiff_t oj = left / sw;
"""
_CLOSE_3 = """
            }
        }
    }
"""
# thread i -> voxel (plane, zz, hh, ww) of an input-shaped (n, c, d, h, w) output, row-major
_INPUT_VOXEL = """
        const ptrdiff_t ww = i % w, hh = (i / w) % h, zz = (i / ((ptrdiff_t)h * w)) % d;
        const ptrdiff_t plane = i / ((ptrdiff_t)d * h * w);
"""
# thread i -> window (plane, oz, oi, oj) of an output-shaped (n, c, od, oh, ow) output, row-major
_OUTPUT_VOXEL = """
        const ptrdiff_t oj = i % ow, oi = (i / ow) % oh, oz = (i / ((ptrdiff_t)oh * ow)) % od;
        const ptrdiff_t plane = i / ((ptrdiff_t)od * oh * ow);
"""
_SIZES3 = "int32 d, int32 h, int32 w, int32 od, int32 oh, int32 ow"

SOURCES.update(
    {
        "vol2col": Source(
            f"raw T x, int32 c, {_SIZES3}, {_GEOMETRY3}",
            "T cols",
            """
        // thread i -> cols[row, col] of cols (n*od*oh*ow, c*kd*kh*kw), row = (b, oz, oi, oj),
        // col = (ch, t, u, v): im2col over three axes; padding reads 0
        const ptrdiff_t taps = (ptrdiff_t)kd * kh * kw, k = (ptrdiff_t)c * taps;
        const ptrdiff_t opix = (ptrdiff_t)od * oh * ow;
        const ptrdiff_t row = i / k, col = i % k;
        const ptrdiff_t b = row / opix, pix = row % opix;
        const ptrdiff_t ch = col / taps, tap = col % taps;
        const ptrdiff_t oz = pix / ((ptrdiff_t)oh * ow), oi = (pix / ow) % oh, oj = pix % ow;
        const ptrdiff_t zz = oz * sd + tap / (kh * kw) - pd;  // oz * sd + t - pd
        const ptrdiff_t hh = oi * sh + (tap / kw) % kh - ph;  // oi * sh + u - ph
        const ptrdiff_t ww = oj * sw + tap % kw - pw;  // oj * sw + v - pw
        const bool inside = zz >= 0 && zz < d && hh >= 0 && hh < h && ww >= 0 && ww < w;
        cols = inside ? x[(((b * c + ch) * d + zz) * h + hh) * w + ww] : (T)0;
        """,
            "medgrad_vol2col",
        ),
        "col2vol": Source(
            f"raw T cols, int32 c, {_SIZES3}, {_GEOMETRY3}",
            "T x",
            """
        // thread i -> x[b, ch, zz, hh, ww] (row-major); it sums the cols entries of every tap on
        // it (a gather: no atomics, deterministic)"""
            + _INPUT_VOXEL
            + """
        const ptrdiff_t b = plane / c, ch = plane % c;
        const ptrdiff_t k = (ptrdiff_t)c * kd * kh * kw;
        T acc = 0;
        """
            + _WINDOWS_COVERING_3D
            + """
                acc += cols[(((b * od + oz) * oh + oi) * ow + oj) * k
                            + ((ch * kd + t) * kh + u) * kw + v];
            """
            + _CLOSE_3
            + """
        x = acc;
        """,
            "medgrad_col2vol",
        ),
        "max_pool3d_forward": Source(
            f"raw T x, {_SIZES3}, {_GEOMETRY3}",
            "T y, int32 argmax",
            """
        // thread i -> window (plane, oz, oi, oj) row-major, plane = b * c + ch. Padding is
        // skipped (-inf: never wins); medgrad_offer_max keeps the tie rule (first maximum, a
        // NaN wins)"""
            + _OUTPUT_VOXEL
            + """
        T best = (T)(-__longlong_as_double(0x7ff0000000000000LL));  // -inf
        int best_tap = 0;
        for (int t = 0; t < kd; ++t) {
            const ptrdiff_t zz = oz * sd + t - pd;
            if (zz < 0 || zz >= d) continue;
            for (int u = 0; u < kh; ++u) {
                const ptrdiff_t hh = oi * sh + u - ph;
                if (hh < 0 || hh >= h) continue;
                for (int v = 0; v < kw; ++v) {
                    const ptrdiff_t ww = oj * sw + v - pw;
                    if (ww < 0 || ww >= w) continue;
                    const T value = x[((plane * d + zz) * h + hh) * w + ww];
                    medgrad_offer_max(value, (t * kh + u) * kw + v, best, best_tap);
                }
            }
        }
        y = best;
        argmax = best_tap;
        """,
            "medgrad_max_pool3d_forward",
            MAX_TIE_RULE,
        ),
        "max_pool3d_backward": Source(
            f"raw T gy, raw int32 argmax, {_SIZES3}, {_GEOMETRY3}",
            "T gx",
            """
        // thread i -> gx[plane, zz, hh, ww] row-major; it adds gy of every window whose argmax
        // is here (a gather over the windows covering it: no atomics, deterministic)"""
            + _INPUT_VOXEL
            + """
        T acc = 0;
        """
            + _WINDOWS_COVERING_3D
            + """
                const ptrdiff_t o = ((plane * od + oz) * oh + oi) * ow + oj;
                if (argmax[o] == (t * kh + u) * kw + v) acc += gy[o];
            """
            + _CLOSE_3
            + """
        gx = acc;
        """,
            "medgrad_max_pool3d_backward",
        ),
        "avg_pool3d_forward": Source(
            f"raw T x, {_SIZES3}, {_GEOMETRY3}",
            "T y",
            """
        // thread i -> window (plane, oz, oi, oj) row-major; padded taps add 0 but count in
        // kd*kh*kw (count_include_pad)"""
            + _OUTPUT_VOXEL
            + """
        T acc = 0;
        for (int t = 0; t < kd; ++t) {
            const ptrdiff_t zz = oz * sd + t - pd;
            if (zz < 0 || zz >= d) continue;
            for (int u = 0; u < kh; ++u) {
                const ptrdiff_t hh = oi * sh + u - ph;
                if (hh < 0 || hh >= h) continue;
                for (int v = 0; v < kw; ++v) {
                    const ptrdiff_t ww = oj * sw + v - pw;
                    if (ww >= 0 && ww < w) acc += x[((plane * d + zz) * h + hh) * w + ww];
                }
            }
        }
        y = acc / (T)(kd * kh * kw);
        """,
            "medgrad_avg_pool3d_forward",
        ),
        "avg_pool3d_backward": Source(
            f"raw T gy, {_SIZES3}, {_GEOMETRY3}",
            "T gx",
            """
        // thread i -> gx[plane, zz, hh, ww] row-major; every window covering it adds
        // gy / (kd*kh*kw)"""
            + _INPUT_VOXEL
            + """
        T acc = 0;
        """
            + _WINDOWS_COVERING_3D
            + """
                acc += gy[((plane * od + oz) * oh + oi) * ow + oj] / (T)(kd * kh * kw);
            """
            + _CLOSE_3
            + """
        gx = acc;
        """,
            "medgrad_avg_pool3d_backward",
        ),
    }
)

# ---- adaptive average pools and interpolation: 2-D arrays run as volumes of depth 1 ----
# Adaptive window o of an axis of input length n and output length m is [floor(o n / m),
# ceil((o + 1) n / m)) (PyTorch's rule, kernels/numpy_cpu/pool.py adaptive_windows). The input
# positions j it covers are those of the windows o from floor(j m / n) on while floor(o n / m) <= j.
_ADAPTIVE_AXIS = """
// the windows of output position o along an axis of input length n, output length m
__device__ __forceinline__ ptrdiff_t medgrad_window_start(ptrdiff_t o, ptrdiff_t n, ptrdiff_t m) {
    return o * n / m;
}
__device__ __forceinline__ ptrdiff_t medgrad_window_end(ptrdiff_t o, ptrdiff_t n, ptrdiff_t m) {
    return ((o + 1) * n + m - 1) / m;
}
"""

# Interpolation reads the per-axis tables of kernels/numpy_cpu/resample.py source_index (computed
# on the host, where the coordinate rules live once): output o of an axis is
# (1 - lam[o]) x[i0[o]] + lam[o] x[i1[o]] (nearest: x[i0[o]]). `depth` is false for 2-D arrays,
# whose depth axis (length 1) is then skipped, not blended.
_TABLES = ", ".join(f"raw int32 i0{a}, raw int32 i1{a}, raw T lam{a}" for a in ("d", "h", "w"))
_RESAMPLE_WEIGHT = """
// the weight of input position j in output o along one axis: (1 - lam) where i0 is j, plus lam
// where i1 is j (both when i0 = i1 = j at the last position, as numpy_cpu's two scatters). A
// macro, not a function: it is expanded in the kernel body, where T is defined
#define MEDGRAD_WEIGHT(i0, i1, lam, o, j) \\
    ((i0[o] == (j) ? (T)1 - (T)lam[o] : (T)0) + (i1[o] == (j) ? (T)lam[o] : (T)0))
"""

SOURCES.update(
    {
        "adaptive_avg_pool_forward": Source(
            f"raw T x, {_SIZES3}",
            "T y",
            """
        // thread i -> y[plane, oz, oi, oj] row-major: the mean of x over the product of the
        // adaptive windows of oz, oi and oj"""
            + _OUTPUT_VOXEL
            + """
        const ptrdiff_t z0 = medgrad_window_start(oz, d, od), z1 = medgrad_window_end(oz, d, od);
        const ptrdiff_t h0 = medgrad_window_start(oi, h, oh), h1 = medgrad_window_end(oi, h, oh);
        const ptrdiff_t w0 = medgrad_window_start(oj, w, ow), w1 = medgrad_window_end(oj, w, ow);
        T acc = 0;
        for (ptrdiff_t zz = z0; zz < z1; ++zz)
            for (ptrdiff_t hh = h0; hh < h1; ++hh)
                for (ptrdiff_t ww = w0; ww < w1; ++ww) acc += x[((plane * d + zz) * h + hh) * w + ww];
        y = acc / (T)((z1 - z0) * (h1 - h0) * (w1 - w0));
        """,
            "medgrad_adaptive_avg_pool_forward",
            _ADAPTIVE_AXIS,
        ),
        "adaptive_avg_pool_backward": Source(
            f"raw T gy, {_SIZES3}",
            "T gx",
            """
        // thread i -> gx[plane, zz, hh, ww] row-major; every window covering it adds gy / (its
        // length along each axis), divided axis by axis as numpy_cpu (a gather, deterministic)"""
            + _INPUT_VOXEL
            + """
        T acc = 0;
        for (ptrdiff_t oz = zz * od / d; oz < od && medgrad_window_start(oz, d, od) <= zz; ++oz) {
            const T len_z = (T)(medgrad_window_end(oz, d, od) - medgrad_window_start(oz, d, od));
            for (ptrdiff_t oi = hh * oh / h; oi < oh && medgrad_window_start(oi, h, oh) <= hh;
                 ++oi) {
                const T len_h = (T)(medgrad_window_end(oi, h, oh) - medgrad_window_start(oi, h, oh));
                for (ptrdiff_t oj = ww * ow / w; oj < ow && medgrad_window_start(oj, w, ow) <= ww;
                     ++oj) {
                    const T len_w =
                        (T)(medgrad_window_end(oj, w, ow) - medgrad_window_start(oj, w, ow));
                    acc += gy[((plane * od + oz) * oh + oi) * ow + oj] / len_z / len_h / len_w;
                }
            }
        }
        gx = acc;
        """,
            "medgrad_adaptive_avg_pool_backward",
            _ADAPTIVE_AXIS,
        ),
        "interpolate_forward": Source(
            f"raw T x, {_TABLES}, {_SIZES3}, bool linear, bool depth",
            "T y",
            """
        // thread i -> y[plane, oz, oi, oj] row-major. Nearest: x at (i0d, i0h, i0w). Linear:
        // blended along w first, then h, then d (numpy_cpu's axis order), from the 2, 4 or 8
        // neighbours the tables name"""
            + _OUTPUT_VOXEL
            + """
        const ptrdiff_t base = plane * d * h * w;
        if (!linear) {
            y = x[base + ((ptrdiff_t)i0d[oz] * h + i0h[oi]) * w + i0w[oj]];
        } else {
            const T lz = lamd[oz], lh = lamh[oi], lw = lamw[oj];
            T across_h[2];
            for (int side_z = 0; side_z < (depth ? 2 : 1); ++side_z) {
                const ptrdiff_t zz = side_z ? i1d[oz] : i0d[oz];
                T along_w[2];
                for (int side_h = 0; side_h < 2; ++side_h) {
                    const ptrdiff_t row = base + (zz * h + (side_h ? i1h[oi] : i0h[oi])) * w;
                    along_w[side_h] = ((T)1 - lw) * x[row + i0w[oj]] + lw * x[row + i1w[oj]];
                }
                across_h[side_z] = ((T)1 - lh) * along_w[0] + lh * along_w[1];
            }
            y = depth ? ((T)1 - lz) * across_h[0] + lz * across_h[1] : across_h[0];
        }
        """,
            "medgrad_interpolate_forward",
        ),
        "interpolate_backward": Source(
            f"raw T gy, {_TABLES}, raw int32 lod, raw int32 hid, raw int32 loh, raw int32 hih, "
            f"raw int32 low, raw int32 hiw, {_SIZES3}",
            "T gx",
            """
        // thread i -> gx[plane, zz, hh, ww] row-major: the sum of gy over the outputs that read
        // this input, each times its weight along every axis (a gather, deterministic). Along an
        // axis those outputs are the run [lo[j], hi[j]) (the tables never decrease, so the
        // outputs naming j are contiguous; the host finds the runs)"""
            + _INPUT_VOXEL
            + """
        T acc = 0;
        for (ptrdiff_t oz = lod[zz]; oz < hid[zz]; ++oz) {
            const T wz = MEDGRAD_WEIGHT(i0d, i1d, lamd, oz, zz);
            T across_z = 0;
            for (ptrdiff_t oi = loh[hh]; oi < hih[hh]; ++oi) {
                const T wh = MEDGRAD_WEIGHT(i0h, i1h, lamh, oi, hh);
                T across_h = 0;
                for (ptrdiff_t oj = low[ww]; oj < hiw[ww]; ++oj) {
                    const T wv = MEDGRAD_WEIGHT(i0w, i1w, lamw, oj, ww);
                    across_h += wv * gy[((plane * od + oz) * oh + oi) * ow + oj];
                }
                across_z += wh * across_h;
            }
            acc += wz * across_z;
        }
        gx = acc;
        """,
            "medgrad_interpolate_backward",
            _RESAMPLE_WEIGHT,
        ),
    }
)

# ---- normalisation over a (p, q, r) view, reduced over axes 0 and 2 for each of the q slices ----
# A slice's N = p*r elements are split among `lanes` threads: lane l takes elements m = l,
# l + lanes, l + 2 lanes, ... (m = outer*r + inner is x[outer, j, inner]), so neighbouring lanes
# read neighbouring memory. Lanes accumulate in double whatever T is, and a second kernel adds a
# slice's lanes in lane order: no atomics, the same result on every run. The moments take one
# pass shifted by the slice's first value s (var = E[(x - s)^2] - E[x - s]^2 in double, as
# numba_cpu): with the shift, a mean far from 0 (1e4 over unit variance) costs no digits.
_LANE_LOOP = """
        const ptrdiff_t j = i / lanes, lane = i % lanes;
        // element m = outer*r + inner is x[outer, j, inner]; m += lanes steps (outer, inner) by
        // (lanes / r, lanes % r) with a carry, so the loop divides nothing
        const ptrdiff_t step_outer = lanes / r, step_inner = lanes % r;
        ptrdiff_t outer = lane / r, inner = lane % r;
        for (ptrdiff_t m = lane; m < count; m += lanes) {
            const ptrdiff_t at = (outer * q + j) * r + inner;  // x[outer, j, inner]
"""
_LANE_NEXT = """
            outer += step_outer;
            inner += step_inner;
            if (inner >= r) {
                inner -= r;
                outer += 1;
            }
        }
"""
SOURCES.update(
    {
        "norm_lane_moments": Source(
            "raw T x, int32 q, int32 r, int64 count, int32 lanes",
            "float64 lane_sum, float64 lane_squares",
            """
        // thread i -> lane i % lanes of slice j = i / lanes: the sums of d and d^2 over its
        // elements x[outer, j, inner], m = lane, lane + lanes, ..., d = x - x[0, j, 0] (the shift)
        double sum = 0, squares = 0;"""
            + _LANE_LOOP
            + """
            const double d = (double)x[at] - (double)x[j * r];
            sum += d;
            squares += d * d;"""
            + _LANE_NEXT
            + """
        lane_sum = sum;
        lane_squares = squares;
        """,
            "medgrad_norm_lane_moments",
        ),
        "norm_merge_moments": Source(
            "raw T x, raw float64 lane_sum, raw float64 lane_squares, int32 r, int64 count, "
            "int32 lanes",
            "T mean, T var",
            """
        // thread i -> slice i: its lanes' sums added in lane order; mean = s + E[d], var =
        // E[d^2] - E[d]^2 (biased, clamped at 0), s = x[0, i, 0] the shift of norm_lane_moments
        double sum = 0, squares = 0;
        for (ptrdiff_t lane = 0; lane < lanes; ++lane) {
            sum += lane_sum[i * lanes + lane];
            squares += lane_squares[i * lanes + lane];
        }
        const double m = sum / (double)count;
        mean = (T)((double)x[i * r] + m);
        var = (T)max(squares / (double)count - m * m, 0.0);
        """,
            "medgrad_norm_merge_moments",
        ),
        "norm_forward": Source(
            "T x, raw T mean, raw T rstd, raw T weight, raw T bias, bool has_weight, "
            "bool has_bias, int32 q, int32 r",
            "T y",
            """
        // thread i -> y[a, j, b], j = (i / r) % q: (x - mean[j]) rstd[j] weight[j] + bias[j]
        const ptrdiff_t j = (i / r) % q;
        const T scale = has_weight ? rstd[j] * weight[j] : rstd[j];
        const T value = (x - mean[j]) * scale;
        y = has_bias ? value + bias[j] : value;
        """,
            "medgrad_norm_forward",
        ),
        "norm_lane_grads": Source(
            "raw T gy, raw T x, raw T mean, raw T rstd, int32 q, int32 r, int64 count, int32 lanes",
            "float64 lane_gbias, float64 lane_gweight",
            """
        // thread i -> lane i % lanes of slice j = i / lanes: the sums (in double) of gy and of
        // gy * xhat, xhat = (x - mean[j]) rstd[j], over its elements m = lane, lane + lanes, ..."""
            + """
        double sum_gy = 0, sum_gy_xhat = 0;"""
            + _LANE_LOOP
            + """
            const T g = gy[at];
            sum_gy += (double)g;
            sum_gy_xhat += (double)(g * ((x[at] - mean[j]) * rstd[j]));"""
            + _LANE_NEXT
            + """
        lane_gbias = sum_gy;
        lane_gweight = sum_gy_xhat;
        """,
            "medgrad_norm_lane_grads",
        ),
        "norm_merge_sums": Source(
            "raw float64 lane_gbias, raw float64 lane_gweight, int32 lanes",
            "T gbias, T gweight",
            """
        // thread i -> slice i: the sums of its lanes' partial sums, in lane order, in double
        double sum_gy = 0, sum_gy_xhat = 0;
        for (ptrdiff_t lane = 0; lane < lanes; ++lane) {
            sum_gy += lane_gbias[i * lanes + lane];
            sum_gy_xhat += lane_gweight[i * lanes + lane];
        }
        gbias = (T)sum_gy;
        gweight = (T)sum_gy_xhat;
        """,
            "medgrad_norm_merge_sums",
        ),
        "norm_backward_input": Source(
            "T gy, T x, raw T mean, raw T rstd, raw T weight, bool has_weight, raw T gweight, "
            "raw T gbias, int32 q, int32 r, int64 count",
            "T gx",
            """
        // thread i -> gx[a, j, b], j = (i / r) % q: weight rstd (gy - gbias / N - xhat gweight / N)
        // with xhat = (x - mean[j]) rstd[j] and N = count, the mean and variance differentiated
        const ptrdiff_t j = (i / r) % q;
        const T scale = has_weight ? rstd[j] * weight[j] : rstd[j];
        const T xhat = (x - mean[j]) * rstd[j];
        gx = scale * (gy - gbias[j] / (T)count - xhat * (gweight[j] / (T)count));
        """,
            "medgrad_norm_backward_input",
        ),
        # ---- activations ----
        "leaky_relu_forward": Source(
            "T x, T slope",
            "T y",
            "// thread i -> y[i]; x where x > 0, else slope * x (NaN stays NaN)\n"
            "y = x > (T)0 ? x : x * slope;",
            "medgrad_leaky_relu_forward",
        ),
        "leaky_relu_backward": Source(
            "T gy, T x, T slope",
            "T gx",
            "// thread i -> gx[i]; gy where x > 0, else slope * gy (the slope at 0, as PyTorch)\n"
            "gx = x > (T)0 ? gy : gy * slope;",
            "medgrad_leaky_relu_backward",
        ),
        "gelu_forward": Source(
            "T x",
            "T y",
            """
        // thread i -> y[i] = x Phi(x) = x (1 + erf(x / sqrt 2)) / 2, the exact (erf) form
        y = x * ((T)0.5 * ((T)1 + erf(x * (T)0.70710678118654752)));
        """,
            "medgrad_gelu_forward",
        ),
        "gelu_backward": Source(
            "T gy, T x",
            "T gx",
            """
        // thread i -> gx[i] = gy (Phi(x) + x phi(x)), phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
        const T cdf = (T)0.5 * ((T)1 + erf(x * (T)0.70710678118654752));
        const T pdf = exp((T)-0.5 * x * x) * (T)0.39894228040143268;
        gx = gy * (cdf + x * pdf);
        """,
            "medgrad_gelu_backward",
        ),
    }
)
