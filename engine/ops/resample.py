"""Resampling: F.interpolate (nearest, bilinear, trilinear) with PyTorch's coordinate rules."""

from __future__ import annotations

from engine.errors import ArgumentError
from engine.function import Function
from engine.tensor import Tensor, as_tensor
from kernels.numpy_cpu.resample import output_size

MODES = {"nearest": (2, 3), "bilinear": (2,), "trilinear": (3,)}  # mode -> spatial ranks


class InterpolateFn(Function):
    """y = x resampled to `size` on its 2 or 3 spatial axes, separably: along each axis output o
    is x[i0] (nearest) or (1 - lam) x[i0] + lam x[i1] (linear), with i0, i1, lam from PyTorch's
    coordinate rules (kernels/numpy_cpu/resample.py, source_index). x (n, c, *in) -> y
    (n, c, *size), x's dtype. Linear in x: the weights depend only on the shapes and arguments.
    """

    def forward(self, x, *, size, mode, align_corners, scales):
        # a linear map: backward needs only the input shape and the arguments
        self.x_shape, self.attrs = x.shape, (mode, align_corners, scales)
        return self.k.interpolate_forward(x, size, mode, align_corners, scales)

    def backward(self, gy):
        # d y[o] / d x[i] = the weight of input i in output o: gx = sum over o of weight * gy[o]
        return (self.k.interpolate_backward(gy, self.x_shape, *self.attrs),)


def _per_axis(value, ndim: int, name: str, kind) -> tuple:
    """An int/float or a sequence of ndim of them -> a tuple of ndim values of type kind."""
    items = list(value) if isinstance(value, (tuple, list)) else [value] * ndim
    ok = len(items) == ndim and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in items
    )
    if not ok or (kind is int and not all(isinstance(v, int) for v in items)):
        one = "an int" if kind is int else "a number"
        raise ArgumentError(f"interpolate: {name} must be {one} or {ndim} of them, got {value!r}")
    return tuple(kind(v) for v in items)


def interpolate(
    x, size=None, scale_factor=None, mode: str = "nearest", align_corners: bool | None = None
) -> Tensor:
    """Resample x (n, c, h, w) or (n, c, d, h, w) to (n, c, *size), as torch.nn.functional's.

    Give exactly one of `size` (int or one int per spatial axis) and `scale_factor` (float or one
    per axis; the output is floor(in * scale) and the coordinate map uses 1 / scale, as PyTorch
    does without recompute_scale_factor). mode: "nearest" (4-D or 5-D x), "bilinear" (4-D) or
    "trilinear" (5-D). Output o of an axis reads input floor(o in / out) for nearest; for the
    linear modes src = (o + 0.5) in / out - 0.5 clamped at 0 (align_corners False, the default)
    or o (in - 1) / (out - 1) (True), mixing the two inputs around src. An axis whose size does
    not change is copied. align_corners is for the linear modes only.
    """
    x = as_tensor(x)
    if mode not in MODES:
        raise ArgumentError(f"interpolate: mode must be one of {', '.join(MODES)}, got {mode!r}")
    ndim = x.ndim - 2
    if ndim not in MODES[mode]:
        ranks = " or ".join(f"{2 + r}-D" for r in MODES[mode])
        raise ArgumentError(
            f"interpolate: mode {mode!r} needs x {ranks} (n, c, spatial...), got shape {x.shape}"
        )
    if mode == "nearest" and align_corners:
        raise ArgumentError("interpolate: align_corners is for the linear modes, not 'nearest'")
    if (size is None) == (scale_factor is None):
        raise ArgumentError("interpolate: give exactly one of size and scale_factor")
    spatial = x.shape[2:]
    if size is not None:
        size = _per_axis(size, ndim, "size", int)
    else:
        scale_factor = _per_axis(scale_factor, ndim, "scale_factor", float)
        if min(scale_factor) <= 0:
            raise ArgumentError(f"interpolate: scale_factor must be > 0, got {scale_factor}")
    out, scales = output_size(spatial, size, scale_factor)
    if min(out) < 1:
        raise ArgumentError(f"interpolate: output size {out} from input {spatial} is empty")
    return InterpolateFn.apply(
        x, size=out, mode=mode, align_corners=bool(align_corners), scales=scales
    )
