"""@cuda.jit bodies of normalisation (over the (p, q, r) view of kernels/numpy_cpu/norm.py, reduced
over axes 0 and 2) and of the leaky ReLU and GELU activations.

The reductions run one block per slice j < q (batch norm's channel, or a (sample, group) row of
instance, group and layer norm), of B threads (a warp, or REDUCE_THREADS for long slices: the
launcher picks): thread t of block j visits the elements e = t, t + B, ... of x[:, j, :]
(e = i*r + k, so neighbouring threads read neighbouring memory along r), sums them in float64, and
block_sum adds the threads' sums through shared memory. The moments take two passes over the slice,
the reference's (the mean, then the mean squared deviation from it): no cancellation whatever the
mean's offset. Elementwise bodies: one thread per element of flat C-contiguous views, as
bodies.relu_forward.
"""

from __future__ import annotations

import math

from numba import cuda, float64

REDUCE_THREADS = 256  # the most threads of a reduction block: the shared scratch size
_INV_SQRT2 = 1 / math.sqrt(2)
_INV_SQRT2PI = 1 / math.sqrt(2 * math.pi)


@cuda.jit(device=True)
def block_sum(value, scratch):
    """The sum of `value` over the B threads of this block, the same in every thread: each writes
    its value to `scratch`, a shared (REDUCE_THREADS,) float64 array, and after one barrier each
    adds all B of them in the same order (B <= 256 broadcast reads from shared memory: a pass that
    costs less than the slice loop before it, with two barriers where a tree takes log2 B + 2)."""
    scratch[cuda.threadIdx.x] = value
    cuda.syncthreads()
    total = 0.0
    for t in range(cuda.blockDim.x):
        total += scratch[t]
    cuda.syncthreads()  # everyone has read scratch before a next call overwrites it
    return total


@cuda.jit
def norm_moments(x, mean, var):
    """x (p, q, r) -> mean, var (q,): the mean and the biased variance of x[:, j, :], two passes."""
    # block j -> slice j; thread t sums the elements e = t + k B (x[e // r, j, e % r])
    j, t, step = cuda.blockIdx.x, cuda.threadIdx.x, cuda.blockDim.x
    scratch = cuda.shared.array(REDUCE_THREADS, float64)
    r = x.shape[2]
    count = x.shape[0] * r
    acc = 0.0
    for e in range(t, count, step):
        acc += x[e // r, j, e % r]
    m = block_sum(acc, scratch) / count
    acc = 0.0
    for e in range(t, count, step):
        dev = float64(x[e // r, j, e % r]) - m
        acc += dev * dev
    v = block_sum(acc, scratch) / count
    if t == 0:
        mean[j] = m
        var[j] = v


@cuda.jit
def norm_forward(x, mean, rstd, weight, has_weight, bias, has_bias, y):
    """x (p, q, r) -> y = (x - mean[j]) rstd[j] weight[j] + bias[j] (weight 1 and bias 0 when
    absent: has_weight / has_bias False, the arrays then dummies)."""
    # thread i -> y[a, j, k] row-major
    i = cuda.grid(1)
    if i >= y.size:
        return
    q, r = y.shape[1], y.shape[2]
    k, rest = i % r, i // r
    j, a = rest % q, rest // q
    scale = rstd[j] * weight[j] if has_weight else rstd[j]
    value = (x[a, j, k] - mean[j]) * scale
    if has_bias:
        value += bias[j]
    y[a, j, k] = value


@cuda.jit
def norm_backward(gy, x, mean, rstd, weight, has_weight, gx, gweight, gbias):
    """gy, x (p, q, r), mean/rstd the statistics of this x -> gx (p, q, r), gweight, gbias (q,).
    With xhat = (x - mean) rstd and N = p*r: gbias[j] = sum gy, gweight[j] = sum gy xhat over slice
    j, then gx = weight rstd (gy - gbias / N - xhat gweight / N) (weight 1 when has_weight is
    False)."""
    # block j -> slice j: both sums over the slice, then its gx; thread t visits e = t + k B
    # (x[e // r, j, e % r]) in both passes
    j, t, step = cuda.blockIdx.x, cuda.threadIdx.x, cuda.blockDim.x
    scratch = cuda.shared.array(REDUCE_THREADS, float64)
    r = x.shape[2]
    count = x.shape[0] * r
    m, s = float64(mean[j]), float64(rstd[j])
    sum_g = 0.0
    sum_gd = 0.0  # sum gy (x - mean); times rstd it is gweight
    for e in range(t, count, step):
        g = float64(gy[e // r, j, e % r])
        sum_g += g
        sum_gd += g * (x[e // r, j, e % r] - m)
    sum_g = block_sum(sum_g, scratch)
    gw = block_sum(sum_gd, scratch) * s
    if t == 0:
        gbias[j] = sum_g
        gweight[j] = gw
    scale = s * weight[j] if has_weight else s
    for e in range(t, count, step):
        a, k = e // r, e % r
        xhat = (x[a, j, k] - m) * s
        gx[a, j, k] = scale * (gy[a, j, k] - sum_g / count - xhat * (gw / count))


@cuda.jit
def leaky_relu_forward(x, slope, y):
    """Flat x -> y = x where x > 0, else slope x (NaN stays NaN); slope has x's dtype."""
    # thread i -> y[i]
    i = cuda.grid(1)
    if i < y.size:
        y[i] = x[i] if x[i] > 0 else x[i] * slope


@cuda.jit
def leaky_relu_backward(gy, x, slope, gx):
    """Flat gy, x -> gx = gy where x > 0, else slope gy (at x == 0: the slope, as PyTorch)."""
    # thread i -> gx[i]
    i = cuda.grid(1)
    if i < gx.size:
        gx[i] = gy[i] if x[i] > 0 else gy[i] * slope


@cuda.jit
def gelu_forward(x, y):
    """Flat x -> y = x Phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2, computed in float64."""
    # thread i -> y[i]
    i = cuda.grid(1)
    if i < y.size:
        v = float64(x[i])
        y[i] = v * 0.5 * (1.0 + math.erf(v * _INV_SQRT2))


@cuda.jit
def gelu_backward(gy, x, gx):
    """Flat gy, x -> gx = gy (Phi(x) + x phi(x)), phi(x) = exp(-x^2 / 2) / sqrt(2 pi), computed
    in float64."""
    # thread i -> gx[i]
    i = cuda.grid(1)
    if i < gx.size:
        v = float64(x[i])
        cdf = 0.5 * (1.0 + math.erf(v * _INV_SQRT2))
        gx[i] = gy[i] * (cdf + v * math.exp(-0.5 * v * v) * _INV_SQRT2PI)
