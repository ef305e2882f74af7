"""2-D convolution (cross-correlation, as in every DL framework), NCHW, weight (oc, c, kh, kw)."""

from __future__ import annotations

from engine.function import Function
from engine.ops import pair
from engine.tensor import Tensor, as_tensor


class Conv2dFn(Function):
    """y[n, o, i, j] = sum_{c,u,v} x_pad[n, c, i sh + u, j sw + v] W[o, c, u, v] + b[o].

    x (n, c, h, w), W (oc, c, kh, kw), b (oc,) or absent -> y (n, oc, oh, ow), x's dtype, with
    oh = (h + 2 ph - kh) // sh + 1; x_pad is x with ph, pw rows/columns of zeros on each side.
    A cross-correlation (no kernel flip), as in every DL framework. Rows and columns that no
    window reaches (when (h + 2 ph - kh) % sh != 0) get a zero gradient.
    """

    def forward(self, x, W, b=None, *, stride, padding):
        self.x, self.W = x, W  # x for gW, W for gx
        self.stride, self.padding = stride, padding
        return self.k.conv2d_forward(x, W, b, stride, padding)

    def backward(self, gy):
        # y = im2col(x) W^T + b (per pixel): gx = col2im(gy W), gW = gy^T im2col(x), gb = sum gy
        gx = gW = None
        if self.needs_grad[0]:
            gx = self.k.conv2d_backward_input(gy, self.W, self.x.shape, self.stride, self.padding)
        if self.needs_grad[1]:
            gW = self.k.conv2d_backward_weight(
                gy, self.x, self.W.shape[2:], self.stride, self.padding
            )
        if len(self.needs_grad) == 2:
            return gx, gW
        gb = gy.sum(axis=(0, 2, 3)) if self.needs_grad[2] else None
        return gx, gW, gb


def conv_args(x, W, b, stride, padding):
    """Validate conv2d's arguments once: (x, W, b) as Tensors (b may be None), stride and padding
    as pairs, and the output size (oh, ow). Errors name the shapes involved."""
    x, W = as_tensor(x), as_tensor(W)
    stride, padding = pair(stride, "stride"), pair(padding, "padding")
    if x.ndim != 4 or W.ndim != 4:
        raise ValueError(
            f"conv2d expects x (n, c, h, w) and W (oc, c, kh, kw), got {x.shape}, {W.shape}"
        )
    if x.shape[1] != W.shape[1]:
        raise ValueError(
            f"conv2d: x has {x.shape[1]} channels but W expects {W.shape[1]} ({W.shape})"
        )
    if min(stride) < 1 or min(padding) < 0:
        raise ValueError(f"conv2d: stride must be >= 1 and padding >= 0, got {stride}, {padding}")
    kh, kw = W.shape[2:]
    oh = (x.shape[2] + 2 * padding[0] - kh) // stride[0] + 1
    ow = (x.shape[3] + 2 * padding[1] - kw) // stride[1] + 1
    if oh < 1 or ow < 1:
        raise ValueError(
            f"conv2d: kernel {kh}x{kw} does not fit input {x.shape[2:]} with padding {padding}"
        )
    if x.dtype != W.dtype:
        raise TypeError(f"conv2d: x is {x.dtype} but W is {W.dtype}")
    if b is not None:
        b = as_tensor(b)
        if b.shape != (W.shape[0],):
            raise ValueError(f"conv2d bias must have shape ({W.shape[0]},), got {b.shape}")
    return x, W, b, stride, padding, (oh, ow)


def conv2d(x, W, b=None, stride=1, padding=0) -> Tensor:
    """x (n, c, h, w), W (oc, c, kh, kw), b (oc,) -> y (n, oc, oh, ow),
    oh = (h + 2 ph - kh) // sh + 1. stride and padding: an int or a pair (rows, columns)."""
    x, W, b, stride, padding, _ = conv_args(x, W, b, stride, padding)
    if b is None:
        return Conv2dFn.apply(x, W, stride=stride, padding=padding)
    return Conv2dFn.apply(x, W, b, stride=stride, padding=padding)
