"""Max and average pooling over kh x kw windows, NCHW."""

from __future__ import annotations

from engine.function import Function
from engine.ops import pair
from engine.tensor import Tensor, as_tensor


class MaxPool2dFn(Function):
    """y[n, c, i, j] = max of x_pad over the window rows i sh .. i sh + kh - 1, columns likewise.

    x (n, c, h, w) -> y (n, c, oh, ow), x's dtype, oh = (h + 2 ph - kh) // sh + 1; padding is
    -inf, so it never wins. Ties: the gradient goes to the first maximum (row-major) of the
    window; overlapping windows that pick the same element add their gradients.
    """

    def forward(self, x, *, kernel_size, stride, padding):
        # argmax (int32, flat tap index u kw + v in the window) is all backward needs of x
        y, self.argmax = self.k.max_pool2d_forward(x, kernel_size, stride, padding)
        self.x_shape, self.attrs = x.shape, (kernel_size, stride, padding)
        return y

    def backward(self, gy):
        # d max / d x_i = 1 for the argmax tap of the window, 0 elsewhere (summed over windows)
        return (self.k.max_pool2d_backward(gy, self.argmax, self.x_shape, *self.attrs),)


class AvgPool2dFn(Function):
    """y[n, c, i, j] = sum of x_pad over the window / (kh kw): the window geometry of max pool.

    x (n, c, h, w) -> y (n, c, oh, ow), x's dtype, oh = (h + 2 ph - kh) // sh + 1. Padded zeros
    count in the mean (PyTorch's count_include_pad=True), so edge windows divide by kh kw too.
    """

    def forward(self, x, *, kernel_size, stride, padding):
        # the mean is linear: backward needs only the geometry, not x
        self.x_shape, self.attrs = x.shape, (kernel_size, stride, padding)
        return self.k.avg_pool2d_forward(x, kernel_size, stride, padding)

    def backward(self, gy):
        # d mean / d x_i = 1 / (kh kw) for every tap of the window (summed over windows)
        return (self.k.avg_pool2d_backward(gy, self.x_shape, *self.attrs),)


def _pool_args(x, kernel_size, stride, padding, name):
    """x as a Tensor and its validated pool attrs (see pool_attrs)."""
    x = as_tensor(x)
    return x, pool_attrs(x.shape, kernel_size, stride, padding, name)


def pool_attrs(x_shape, kernel_size, stride, padding, name):
    """Validate a pool's arguments for input shape x_shape (n, c, h, w): dict(kernel_size, stride,
    padding) as pairs; stride None means the kernel size."""
    k = pair(kernel_size, "kernel_size")
    s = pair(stride, "stride") if stride is not None else k
    p = pair(padding, "padding")
    if len(x_shape) != 4:
        raise ValueError(f"{name} expects x (n, c, h, w), got shape {tuple(x_shape)}")
    if min(k) < 1 or min(s) < 1 or min(p) < 0:
        raise ValueError(
            f"{name}: kernel_size and stride must be >= 1, padding >= 0: {k}, {s}, {p}"
        )
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(f"{name}: padding {p} must be at most half the kernel size {k}")
    oh = (x_shape[2] + 2 * p[0] - k[0]) // s[0] + 1
    ow = (x_shape[3] + 2 * p[1] - k[1]) // s[1] + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"{name}: kernel {k} does not fit input {x_shape[2:]} with padding {p}")
    return dict(kernel_size=k, stride=s, padding=p)


def max_pool2d(x, kernel_size=2, stride=None, padding=0) -> Tensor:
    """x (n, c, h, w) -> (n, c, oh, ow), oh = (h + 2 ph - kh) // sh + 1; stride defaults to the
    kernel size; padding (at most half the kernel) is -inf, so it never wins."""
    x, attrs = _pool_args(x, kernel_size, stride, padding, "max_pool2d")
    return MaxPool2dFn.apply(x, **attrs)


def avg_pool2d(x, kernel_size=2, stride=None, padding=0) -> Tensor:
    """Same arguments and output size as max_pool2d; zero padding counts in the mean."""
    x, attrs = _pool_args(x, kernel_size, stride, padding, "avg_pool2d")
    return AvgPool2dFn.apply(x, **attrs)
