"""The kernel contract: the required primitives every flavour supplies, and optional fast paths.

Kernels are pure functions from arrays to arrays: no Tensor, no autograd. The docstrings with shapes,
index schemes and tie rules live on the `kernels/numpy_cpu` versions, which are the reference.

- KERNEL_NAMES: the primitives. Every flavour's table has all of them (its own launcher or the one it
  falls back to: numba_cpu -> numpy_cpu, cupy_cuda -> numpy_cpu.GENERIC, numba_cuda -> cupy_cuda).
- OPTIONAL_KERNEL_NAMES: fused or geometry-specialised kernels a flavour MAY offer. Each is defined
  once, as a composition of the primitives (kernels/numpy_cpu/compose.py, `COMPOSED[name](k, ...)`).
  engine/backend.py gives a flavour without its own launcher that composition run on the flavour's
  own primitives (so a GPU flavour stays on the GPU), and the parity oracle is the composition run on
  numpy_cpu's primitives (`kernels.numpy_cpu.REFERENCE`). Adding one: a name here, its composition,
  and parity cases; fast launchers follow when a flavour wants them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

KERNEL_NAMES: dict[str, str] = {
    "im2col": "x (n,c,h,w) -> cols (n*oh*ow, c*kh*kw), rows in (n, oh, ow) order, zero padding",
    "col2im": "cols (n*oh*ow, c*kh*kw) -> x (n,c,h,w), overlapping windows summed, padding dropped",
    "conv2d_forward": "x (n,c,h,w), W (oc,c,kh,kw), b (oc,)|None -> y (n,oc,oh,ow)",
    "conv2d_backward_input": "gy (n,oc,oh,ow), W -> gx (n,c,h,w)",
    "conv2d_backward_weight": "gy (n,oc,oh,ow), x -> gW (oc,c,kh,kw)",
    "conv3d_forward": "x (n,c,d,h,w), W (oc,c,kd,kh,kw), b (oc,)|None -> y (n,oc,od,oh,ow)",
    "conv3d_backward_input": "gy (n,oc,od,oh,ow), W -> gx (n,c,d,h,w)",
    "conv3d_backward_weight": "gy (n,oc,od,oh,ow), x -> gW (oc,c,kd,kh,kw)",
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
    "max_pool3d_forward": "x (n,c,d,h,w) -> y (n,c,od,oh,ow), argmax int32 (flat in window, first max)",
    "max_pool3d_backward": "gy, argmax -> gx (n,c,d,h,w); each window's gradient goes to its argmax",
    "avg_pool3d_forward": "x (n,c,d,h,w) -> y; padded zeros count in the mean",
    "avg_pool3d_backward": "gy -> gx (n,c,d,h,w); gy / (kd*kh*kw) spread over each window",
    "adaptive_avg_pool_forward": "x (n,c,*in) -> y (n,c,*out); windows [floor(i in/out), ceil)",
    "adaptive_avg_pool_backward": "gy (n,c,*out) -> gx (n,c,*in); gy / window size per window",
    "interpolate_forward": "x (n,c,*in) -> y (n,c,*size); nearest | bilinear | trilinear",
    "interpolate_backward": "gy (n,c,*size) -> gx (n,c,*in) of interpolate_forward",
    "norm_moments": "x (p,q,r) -> (mean (q,), biased var (q,)) over axes 0 and 2",
    "norm_forward": "x (p,q,r), mean, rstd, weight|None, bias|None (q,) -> (x - mean) rstd w + b",
    "norm_backward": "gy, x (p,q,r), mean, rstd, weight|None -> (gx, gweight (q,), gbias (q,))",
    "leaky_relu_forward": "x, negative_slope -> x where x > 0 else slope * x",
    "leaky_relu_backward": "gy, x, negative_slope -> gy where x > 0 else slope * gy",
    "gelu_forward": "x -> x Phi(x), the erf form",
    "gelu_backward": "gy, x -> gy (Phi(x) + x phi(x))",
    "matmul": "a (..., m, k), b (..., k, n) -> a @ b (..., m, n), batch axes broadcast",
}

OPTIONAL_KERNEL_NAMES: dict[str, str] = {
    "conv2d_relu_max_pool2d_forward": "x, W, b|None -> (y, argmax int32) of max_pool2d(relu(conv2d))",
    "conv2d_relu_max_pool2d_backward": "gy, y, argmax, x, W, ..., need_gx -> (gx|None, gW, gb)",
    "norm_relu_forward": "x (p,q,r), mean, rstd, weight|None, bias|None -> relu(norm_forward(...))",
    "norm_relu_backward": "gy, y, x (p,q,r), mean, rstd, weight|None -> norm_backward(gy (y > 0))",
}

ALL_KERNEL_NAMES: tuple[str, ...] = (*KERNEL_NAMES, *OPTIONAL_KERNEL_NAMES)


def _unknown(names: Iterable[str]) -> list[str]:
    return sorted(set(names) - set(ALL_KERNEL_NAMES))


def build_table(flavour: str, table: Mapping[str, Callable]) -> dict[str, Callable]:
    """Check a flavour's table and return it as a plain dict: it must name every KERNEL_NAMES entry,
    may name any OPTIONAL_KERNEL_NAMES entries, and nothing else (RuntimeError listing the names)."""
    missing = sorted(set(KERNEL_NAMES) - set(table))
    unknown = _unknown(table)
    if missing or unknown:
        raise RuntimeError(
            f"kernel table {flavour!r}: missing required kernels {missing}, unknown names "
            f"{unknown} (neither in KERNEL_NAMES nor in OPTIONAL_KERNEL_NAMES)"
        )
    return dict(table)


def coverage(own: Iterable[str]) -> dict[str, str]:
    """What serves each kernel name in a flavour whose own launchers are `own`: every name of
    KERNEL_NAMES and OPTIONAL_KERNEL_NAMES -> "own", "fallback" (a required name the flavour takes
    from the table it builds on) or "composed" (an optional name run as its composition)."""
    own = set(own)
    unknown = _unknown(own)
    if unknown:
        raise RuntimeError(f"coverage: unknown kernel names {unknown}")
    return {
        name: "own" if name in own else "fallback" if name in KERNEL_NAMES else "composed"
        for name in ALL_KERNEL_NAMES
    }


def describe_coverage(flavour: str, own: Iterable[str]) -> str:
    """One line for a test log: the own launcher counts, then the names that fall back or compose."""
    report = coverage(own)
    required = sum(report[name] == "own" for name in KERNEL_NAMES)
    optional = sum(report[name] == "own" for name in OPTIONAL_KERNEL_NAMES)
    fallback = [name for name, how in report.items() if how == "fallback"]
    composed = [name for name, how in report.items() if how == "composed"]
    return (
        f"{flavour}: own launchers for {required}/{len(KERNEL_NAMES)} required and "
        f"{optional}/{len(OPTIONAL_KERNEL_NAMES)} optional kernels; falls back: "
        f"{', '.join(fallback) or '-'}; composed: {', '.join(composed) or '-'}"
    )
