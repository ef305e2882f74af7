"""The optional kernels defined once, as compositions of the required primitives of a table `k`.

COMPOSED[name](k, *args) is optional kernel `name` run on the primitives of kernel table `k` (a
namespace: `k.conv2d_forward(...)`). It is the definition a fast launcher must match, bit for bit
in integer outputs; `complete(table)` fills a flavour's missing optional names with it, on that
flavour's own primitives; on numpy_cpu's it is the parity oracle (kernels.numpy_cpu.REFERENCE).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from types import SimpleNamespace

from kernels import OPTIONAL_KERNEL_NAMES

from .xp import conv_pool_shapes


def conv2d_relu_max_pool2d_forward(
    k, x, W, b, stride, padding, pool_size, pool_stride, pool_padding
):
    """(y, argmax) = max_pool2d_forward(relu(conv2d_forward(x, W, b)), pool_size, ...).
    x (n, c, h, w), W (oc, c, kh, kw), b (oc,) or None -> y (n, oc, qh, qw) and argmax int32
    (n, oc, qh, qw), the tap u*pkw + v of each window of the conv output (n, oc, oh, ow). The pool
    runs over the *rectified* conv output, so a window whose values are all <= 0 has y = 0 and
    argmax = its first tap (max_pool2d_forward's tie rule: first maximum, a NaN wins)."""
    z = k.relu_forward(k.conv2d_forward(x, W, b, stride, padding))
    return k.max_pool2d_forward(z, pool_size, pool_stride, pool_padding)


def conv2d_relu_max_pool2d_backward(
    k, gy, y, argmax, x, W, stride, padding, pool_size, pool_stride, pool_padding, need_gx
):
    """The fused layer's backward: gy (n, oc, qh, qw), y and argmax from the forward, x, W ->
    (gx (n, c, h, w) or None when not need_gx, gW (oc, c, kh, kw), gb (oc,)). y > 0 at a window
    means the ReLU passed its argmax tap, so g = relu_backward(gy, y) is the gradient w.r.t. the
    pooled conv output; gz = max_pool2d_backward(g) the one w.r.t. the conv output (before ReLU);
    gx, gW are the conv's backward of gz, and gb = sum of gz = sum of g (each window routes to one
    conv pixel)."""
    pool = (pool_size, pool_stride, pool_padding)
    oh, ow, _, _ = conv_pool_shapes(x.shape, W.shape, stride, padding, *pool)
    g = k.relu_backward(gy, y)
    gz = k.max_pool2d_backward(g, argmax, (y.shape[0], y.shape[1], oh, ow), *pool)
    gx = k.conv2d_backward_input(gz, W, x.shape, stride, padding) if need_gx else None
    gW = k.conv2d_backward_weight(gz, x, W.shape[2:], stride, padding)
    return gx, gW, g.sum(axis=(0, 2, 3)).astype(gy.dtype, copy=False)


def norm_relu_forward(k, x, mean, rstd, weight, bias):
    """y = relu_forward(norm_forward(x, mean, rstd, weight, bias)): x (p, q, r), mean/rstd (q,),
    weight/bias (q,) or None -> y (p, q, r), x's dtype. A normalisation followed by a ReLU (batch
    or instance norm -> ReLU) written once instead of twice."""
    return k.relu_forward(k.norm_forward(x, mean, rstd, weight, bias))


def norm_relu_backward(k, gy, y, x, mean, rstd, weight):
    """norm_backward(relu_backward(gy, y), x, mean, rstd, weight): gy, y (the fused forward's
    output), x (p, q, r), mean/rstd the statistics of this x, weight (q,) or None -> (gx, gweight
    (q,), gbias (q,)). The ReLU passes gy where y > 0 (zero at the kink, relu_backward's rule)."""
    return k.norm_backward(k.relu_backward(gy, y), x, mean, rstd, weight)


COMPOSED: dict[str, Callable] = {
    "conv2d_relu_max_pool2d_forward": conv2d_relu_max_pool2d_forward,
    "conv2d_relu_max_pool2d_backward": conv2d_relu_max_pool2d_backward,
    "norm_relu_forward": norm_relu_forward,
    "norm_relu_backward": norm_relu_backward,
}
assert set(COMPOSED) == set(OPTIONAL_KERNEL_NAMES), "every optional kernel needs a composition"


def complete(table: Mapping[str, Callable]) -> dict[str, Callable]:
    """`table` plus every optional kernel it lacks, composed from `table`'s own primitives."""
    k = SimpleNamespace(**table)
    composed = {name: partial(fn, k) for name, fn in COMPOSED.items() if name not in table}
    return {**table, **composed}
