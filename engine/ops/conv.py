"""Convolutions (cross-correlation, as in every DL framework) over 2 or 3 spatial axes, NCHW / NCDHW,
weight (oc, c, *k), and the transposed convolutions, weight (c_in, c_out, *k), built on the same
kernels: a transposed conv's forward is a conv's backward-input, and so on."""

from __future__ import annotations

from engine.errors import ArgumentError
from engine.function import Function
from engine.ops import ntuple
from engine.tensor import Tensor, as_tensor

# The conv kernels of each spatial rank: (forward, backward_input, backward_weight).
KERNELS = {
    2: ("conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight"),
    3: ("conv3d_forward", "conv3d_backward_input", "conv3d_backward_weight"),
}
LAYOUT = {2: ("h", "w"), 3: ("d", "h", "w")}  # spatial axis names, for messages


def _kernels(fn: Function, nd: int):
    """The (forward, backward_input, backward_weight) kernels of fn's backend for rank nd."""
    return [getattr(fn.k, name) for name in KERNELS[nd]]


def _channel_sum(gy):
    """gb = gy summed over every axis but the channels (axis 1): (n, c, *o) -> (c,)."""
    return gy.sum(axis=(0, *range(2, gy.ndim)))


class ConvNdFn(Function):
    """y[n, o, *i] = sum_{c, *t} x_pad[n, c, *(i s + t)] W[o, c, *t] + b[o], per spatial axis a:
    o_a = (size_a + 2 p_a - k_a) // s_a + 1. x (n, c, *size), W (oc, c, *k), b (oc,) or absent ->
    y (n, oc, *o), x's dtype; x_pad is x with p_a zeros on each side of axis a. Positions that no
    window reaches (when (size_a + 2 p_a - k_a) % s_a != 0) get a zero gradient. The kernels are
    the backend's conv2d_* or conv3d_*, by the number of spatial axes."""

    autocast_inputs = (0, 1)  # x and W: rounded under a bf16/fp16 policy (engine.amp)

    def forward(self, x, W, b=None, *, stride, padding):
        self.x, self.W = x, W  # x for gW, W for gx
        self.stride, self.padding = stride, padding
        forward, _, _ = _kernels(self, x.ndim - 2)
        return forward(x, W, b, stride, padding)

    def backward(self, gy):
        # y = im2col(x) W^T + b (per position): gx = col2im(gy W), gW = gy^T im2col(x), gb = sum gy
        _, backward_input, backward_weight = _kernels(self, gy.ndim - 2)
        gx = gW = None
        if self.needs_grad[0]:
            gx = backward_input(gy, self.W, self.x.shape, self.stride, self.padding)
        if self.needs_grad[1]:
            gW = backward_weight(gy, self.x, self.W.shape[2:], self.stride, self.padding)
        if len(self.needs_grad) == 2:
            return gx, gW
        return gx, gW, _channel_sum(gy) if self.needs_grad[2] else None


class Conv2dFn(ConvNdFn):
    """2-D convolution: x (n, c, h, w), W (oc, c, kh, kw), b (oc,) or absent -> y (n, oc, oh, ow),
    oh = (h + 2 ph - kh) // sh + 1 (ConvNdFn on two spatial axes)."""

    def backward(self, gy):
        # ConvNdFn's derivative: gx = col2im(gy W), gW = gy^T im2col(x), gb = sum gy
        return super().backward(gy)


class Conv3dFn(ConvNdFn):
    """3-D convolution: x (n, c, d, h, w), W (oc, c, kd, kh, kw), b (oc,) or absent ->
    y (n, oc, od, oh, ow), od = (d + 2 pd - kd) // sd + 1 (ConvNdFn on three spatial axes)."""

    def backward(self, gy):
        # ConvNdFn's derivative: gx = col2im(gy W), gW = gy^T im2col(x), gb = sum gy
        return super().backward(gy)


class ConvTransposeFn(Function):
    """The adjoint of a convolution with weight W in x: y = A_W^T x + b, A_W the conv of ConvNdFn.
    x (n, c_in, *size), W (c_in, c_out, *k), b (c_out,) or absent -> y (n, c_out, *o),
    o_a = (size_a - 1) s_a - 2 p_a + k_a + op_a (op: output_padding, extra positions at the end
    that only the bias reaches). y[n, j, *(i s + t - p)] += x[n, c, *i] W[c, j, *t]: every input
    position scatters its kernel-weighted values; taps landing in the padding are dropped."""

    autocast_inputs = (0, 1)  # x and W: rounded under a bf16/fp16 policy (engine.amp)

    def forward(self, x, W, b=None, *, stride, padding, output_padding):
        self.x, self.W = x, W  # x for gW, W for gx
        self.stride, self.padding = stride, padding
        _, backward_input, _ = _kernels(self, x.ndim - 2)
        geometry = zip(x.shape[2:], stride, padding, W.shape[2:], output_padding, strict=True)
        out = [(size - 1) * s - 2 * p + k + op for size, s, p, k, op in geometry]
        y = backward_input(x, W, (x.shape[0], W.shape[1], *out), stride, padding)
        if b is not None:
            y += b.reshape(-1, *(1,) * (x.ndim - 2))  # y is the kernel's fresh array
        return y

    def backward(self, gy):
        # y = A_W^T x + b: gx = A_W gy = conv(gy, W); gW = conv's weight gradient with the roles
        # swapped (x as the upstream gradient, gy as the input); gb = sum gy over all but channels
        forward, _, backward_weight = _kernels(self, gy.ndim - 2)
        gx = gW = None
        if self.needs_grad[0]:
            gx = forward(gy, self.W, None, self.stride, self.padding)
        if self.needs_grad[1]:
            gW = backward_weight(self.x, gy, self.W.shape[2:], self.stride, self.padding)
        if len(self.needs_grad) == 2:
            return gx, gW
        return gx, gW, _channel_sum(gy) if self.needs_grad[2] else None


# ---- arguments ----


def check_conv_hyper(op: str, stride, padding, output_padding=None) -> None:
    """ArgumentError naming `op` unless stride >= 1, padding >= 0 and, where given (transposed
    convs), 0 <= output_padding < stride, per axis (PyTorch's rule, without dilation)."""
    if min(stride) < 1:
        raise ArgumentError(f"{op}: stride must be >= 1, got {stride}")
    if min(padding) < 0:
        raise ArgumentError(f"{op}: padding must be >= 0, got {padding}")
    if output_padding is not None:
        bad = any(op_ < 0 or op_ >= s for op_, s in zip(output_padding, stride, strict=True))
        if bad:
            raise ArgumentError(
                f"{op}: output_padding must be >= 0 and smaller than stride per axis, got "
                f"output_padding {output_padding} with stride {stride}"
            )


def conv_args(x, W, b, stride, padding, nd: int = 2, transposed: bool = False, output_padding=0):
    """Validate a (transposed) convolution's arguments once: (x, W, b) as Tensors (b may be None),
    stride and padding as nd-tuples, and the output size per spatial axis; with transposed, also
    output_padding: (x, W, b, stride, padding, out[, output_padding]). ArgumentError (a
    ValueError) names the argument and the shapes involved."""
    op = f"conv_transpose{nd}d" if transposed else f"conv{nd}d"
    x, W = as_tensor(x), as_tensor(W)
    axes = LAYOUT[nd]
    w_layout = f"({'c_in, c_out' if transposed else 'oc, c'}, {', '.join('k' + a for a in axes)})"
    if x.ndim != nd + 2 or W.ndim != nd + 2:
        raise ArgumentError(
            f"{op} expects x (n, c, {', '.join(axes)}) and W {w_layout}, got {x.shape}, {W.shape}"
        )
    c_w = W.shape[0] if transposed else W.shape[1]
    if x.shape[1] != c_w:
        raise ArgumentError(
            f"{op}: x has {x.shape[1]} channels but W expects {c_w} (W {w_layout} is {W.shape})"
        )
    stride, padding = ntuple(stride, nd, "stride"), ntuple(padding, nd, "padding")
    output_padding = ntuple(output_padding, nd, "output_padding") if transposed else None
    check_conv_hyper(op, stride, padding, output_padding)
    size, k = x.shape[2:], W.shape[2:]
    kernel = "x".join(map(str, k))
    if transposed:
        geometry = zip(size, stride, padding, k, output_padding, strict=True)
        out = tuple((i - 1) * s - 2 * p + kk + o for i, s, p, kk, o in geometry)
        if min(out) < 1:
            raise ArgumentError(
                f"{op}: padding {padding} crops the whole output of kernel {kernel} over input "
                f"{size} (output {out})"
            )
    else:
        geometry = zip(size, stride, padding, k, strict=True)
        out = tuple((i + 2 * p - kk) // s + 1 for i, s, p, kk in geometry)
        if min(out) < 1:
            raise ArgumentError(
                f"{op}: kernel {kernel} does not fit input {size} with padding {padding} "
                f"(output {out})"
            )
    if x.dtype != W.dtype:
        raise ArgumentError(f"{op}: x is {x.dtype} but W is {W.dtype}")
    if b is not None:
        b = as_tensor(b)
        c_out = W.shape[1] if transposed else W.shape[0]
        if b.shape != (c_out,):
            raise ArgumentError(f"{op}: bias b must have shape ({c_out},), got {b.shape}")
    if transposed:
        return x, W, b, stride, padding, out, output_padding
    return x, W, b, stride, padding, out


def _apply(fn: type[Function], x, W, b, **attrs) -> Tensor:
    return fn.apply(x, W, **attrs) if b is None else fn.apply(x, W, b, **attrs)


def conv2d(x, W, b=None, stride=1, padding=0) -> Tensor:
    """x (n, c, h, w), W (oc, c, kh, kw), b (oc,) -> y (n, oc, oh, ow),
    oh = (h + 2 ph - kh) // sh + 1. stride and padding: an int or a pair (rows, columns)."""
    x, W, b, stride, padding, _ = conv_args(x, W, b, stride, padding)
    return _apply(Conv2dFn, x, W, b, stride=stride, padding=padding)


def conv3d(x, W, b=None, stride=1, padding=0) -> Tensor:
    """x (n, c, d, h, w), W (oc, c, kd, kh, kw), b (oc,) -> y (n, oc, od, oh, ow),
    od = (d + 2 pd - kd) // sd + 1 per axis. stride and padding: an int or a triple (d, h, w)."""
    x, W, b, stride, padding, _ = conv_args(x, W, b, stride, padding, nd=3)
    return _apply(Conv3dFn, x, W, b, stride=stride, padding=padding)


def _conv_transpose(nd, x, W, b, stride, padding, output_padding) -> Tensor:
    x, W, b, stride, padding, _, output_padding = conv_args(
        x, W, b, stride, padding, nd, transposed=True, output_padding=output_padding
    )
    attrs = dict(stride=stride, padding=padding, output_padding=output_padding)
    return _apply(ConvTransposeFn, x, W, b, **attrs)


def conv_transpose2d(x, W, b=None, stride=1, padding=0, output_padding=0) -> Tensor:
    """x (n, c_in, h, w), W (c_in, c_out, kh, kw) (PyTorch's layout), b (c_out,) ->
    y (n, c_out, oh, ow), oh = (h - 1) sh - 2 ph + kh + oph. output_padding < stride per axis
    picks among the input sizes a stride-s conv maps onto h; an int or a pair, as stride, padding."""
    return _conv_transpose(2, x, W, b, stride, padding, output_padding)


def conv_transpose3d(x, W, b=None, stride=1, padding=0, output_padding=0) -> Tensor:
    """x (n, c_in, d, h, w), W (c_in, c_out, kd, kh, kw), b (c_out,) -> y (n, c_out, od, oh, ow),
    od = (d - 1) sd - 2 pd + kd + opd per axis; stride, padding, output_padding: int or triple."""
    return _conv_transpose(3, x, W, b, stride, padding, output_padding)
