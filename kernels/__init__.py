"""The kernel contract: every flavour (numpy_cpu, numba_cpu, cupy_cuda, numba_cuda) supplies these names.

Kernels are pure functions from arrays to arrays: no Tensor, no autograd. The docstrings with shapes,
index schemes and tie rules live on the `kernels/numpy_cpu` versions, which are the reference.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

KERNEL_NAMES: dict[str, str] = {
    "im2col": "x (n,c,h,w) -> cols (n*oh*ow, c*kh*kw), rows in (n, oh, ow) order, zero padding",
    "col2im": "cols (n*oh*ow, c*kh*kw) -> x (n,c,h,w), overlapping windows summed, padding dropped",
    "conv2d_forward": "x (n,c,h,w), W (oc,c,kh,kw), b (oc,)|None -> y (n,oc,oh,ow)",
    "conv2d_backward_input": "gy (n,oc,oh,ow), W -> gx (n,c,h,w)",
    "conv2d_backward_weight": "gy (n,oc,oh,ow), x -> gW (oc,c,kh,kw)",
    "max_pool2d_forward": "x (n,c,h,w) -> y (n,c,oh,ow), argmax int32 (flat index in window, first max)",
    "max_pool2d_backward": "gy, argmax -> gx (n,c,h,w); each window's gradient goes to its argmax",
    "avg_pool2d_forward": "x (n,c,h,w) -> y; padded zeros count in the mean",
    "avg_pool2d_backward": "gy -> gx (n,c,h,w); gy / (kh*kw) spread over each window",
    "relu_forward": "x -> max(x, 0)",
    "relu_backward": "gy, y -> gy * (y > 0)",
    "softmax_cross_entropy_forward": "logits (n,k), t int (n,) -> (mean loss 0-d, probs (n,k))",
    "softmax_cross_entropy_backward": "probs (n,k), t (n,), gloss 0-d -> glogits (n,k)",
    "sgd_update": "in place: p, g, velocity; PyTorch's SGD rule (momentum, nesterov, weight decay)",
    "adam_update": "in place: p, g, m, v; PyTorch's Adam rule (L2 weight decay, bias correction)",
    "conv2d_relu_max_pool2d_forward": "x, W, b|None -> (y, argmax int32) of max_pool2d(relu(conv2d))",
    "conv2d_relu_max_pool2d_backward": "gy, y, argmax, x, W, ..., need_gx -> (gx|None, gW, gb)",
}

# Kernels whose GPU flavours take the xp-generic numpy_cpu version (numpy_cpu.GENERIC) by design;
# the GPU runners exclude them from "every kernel has its own launcher". Empty since the fused
# conv2d_relu_max_pool2d kernels got their own cupy_cuda and numba_cuda launchers (the generic
# composition cost 13-18 launches and full-size intermediates per layer on a GPU).
GENERIC_ON_GPU: frozenset[str] = frozenset()


def build_table(flavour: str, table: Mapping[str, Callable]) -> dict[str, Callable]:
    """Check that a flavour's table names exactly KERNEL_NAMES and return it as a plain dict."""
    missing = sorted(set(KERNEL_NAMES) - set(table))
    unknown = sorted(set(table) - set(KERNEL_NAMES))
    if missing or unknown:
        raise RuntimeError(
            f"kernel table {flavour!r} does not match KERNEL_NAMES: missing {missing}, unknown {unknown}"
        )
    return dict(table)
