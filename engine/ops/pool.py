"""Max, average and adaptive average pooling over windows of 2 (NCHW) or 3 (NCDHW) spatial axes."""

from __future__ import annotations

from engine.errors import ArgumentError
from engine.function import Function
from engine.ops import pair, triple
from engine.tensor import Tensor, as_tensor

_AXES = {
    2: ("(n, c, h, w)", pair),
    3: ("(n, c, d, h, w)", triple),
}  # spatial rank -> layout, parser


class MaxPool2dFn(Function):
    """y[n, c, i, j] = max of x_pad over the window rows i sh .. i sh + kh - 1, columns likewise.

    x (n, c, h, w) -> y (n, c, oh, ow), x's dtype, oh = (h + 2 ph - kh) // sh + 1; padding is
    -inf, so it never wins. Ties: the gradient goes to the first maximum (row-major) of the
    window; overlapping windows that pick the same element add their gradients.
    """

    kernels = ("max_pool2d_forward", "max_pool2d_backward")

    def forward(self, x, *, kernel_size, stride, padding):
        # argmax (int32, flat row-major tap index in the window) is all backward needs of x
        y, self.argmax = getattr(self.k, self.kernels[0])(x, kernel_size, stride, padding)
        self.x_shape, self.attrs = x.shape, (kernel_size, stride, padding)
        return y

    def backward(self, gy):
        # d max / d x_i = 1 for the argmax tap of the window, 0 elsewhere (summed over windows)
        backward = getattr(self.k, self.kernels[1])
        return (backward(gy, self.argmax, self.x_shape, *self.attrs),)


class MaxPool3dFn(MaxPool2dFn):
    """MaxPool2dFn with a depth axis: x (n, c, d, h, w) -> y (n, c, od, oh, ow), windows
    kd x kh x kw, taps numbered (t kh + u) kw + v; the same padding and tie rules."""

    kernels = ("max_pool3d_forward", "max_pool3d_backward")

    def backward(self, gy):
        # d max / d x_i = 1 for the argmax tap of the window, 0 elsewhere (as in 2-D)
        return super().backward(gy)


class AvgPool2dFn(Function):
    """y[n, c, i, j] = sum of x_pad over the window / (kh kw): the window geometry of max pool.

    x (n, c, h, w) -> y (n, c, oh, ow), x's dtype, oh = (h + 2 ph - kh) // sh + 1. Padded zeros
    count in the mean (PyTorch's count_include_pad=True), so edge windows divide by kh kw too.
    """

    kernels = ("avg_pool2d_forward", "avg_pool2d_backward")

    def forward(self, x, *, kernel_size, stride, padding):
        # the mean is linear: backward needs only the geometry, not x
        self.x_shape, self.attrs = x.shape, (kernel_size, stride, padding)
        return getattr(self.k, self.kernels[0])(x, kernel_size, stride, padding)

    def backward(self, gy):
        # d mean / d x_i = 1 / (kh kw) for every tap of the window (summed over windows)
        return (getattr(self.k, self.kernels[1])(gy, self.x_shape, *self.attrs),)


class AvgPool3dFn(AvgPool2dFn):
    """AvgPool2dFn with a depth axis: x (n, c, d, h, w) -> y (n, c, od, oh, ow), the mean over
    kd x kh x kw windows, padded zeros counted (divisor kd kh kw)."""

    kernels = ("avg_pool3d_forward", "avg_pool3d_backward")

    def backward(self, gy):
        # d mean / d x_i = 1 / (kd kh kw) for every tap of the window (summed over windows)
        return super().backward(gy)


class AdaptiveAvgPoolFn(Function):
    """y = the mean of x over window i of each spatial axis, [floor(i in / out), ceil((i + 1) in /
    out)) (PyTorch's rule): x (n, c, *in) -> y (n, c, *output_size), 2 or 3 spatial axes. Output
    size 1 on every axis is global average pooling."""

    def forward(self, x, *, output_size):
        # the mean is linear: backward needs only the input shape
        self.x_shape = x.shape
        return self.k.adaptive_avg_pool_forward(x, output_size)

    def backward(self, gy):
        # d mean / d x_i = 1 / (window size) for every tap of each window containing x_i
        return (self.k.adaptive_avg_pool_backward(gy, self.x_shape),)


def _pool_args(x, kernel_size, stride, padding, name, ndim=2):
    """x as a Tensor and its validated pool attrs (see pool_attrs)."""
    x = as_tensor(x)
    return x, pool_attrs(x.shape, kernel_size, stride, padding, name, ndim)


def pool_attrs(x_shape, kernel_size, stride, padding, name, ndim=2):
    """Validate a pool's arguments for input shape x_shape (n, c, h, w), or (n, c, d, h, w) when
    ndim is 3: dict(kernel_size, stride, padding) as pairs (triples); stride None means the kernel
    size. ArgumentError (a ValueError) names the argument that is wrong."""
    layout, ints = _AXES[ndim]
    k = ints(kernel_size, "kernel_size")
    s = ints(stride, "stride") if stride is not None else k
    p = ints(padding, "padding")
    if len(x_shape) != 2 + ndim:
        raise ArgumentError(f"{name} expects x {layout}, got shape {tuple(x_shape)}")
    if min(k) < 1 or min(s) < 1 or min(p) < 0:
        raise ArgumentError(
            f"{name}: kernel_size and stride must be >= 1, padding >= 0: {k}, {s}, {p}"
        )
    if any(pa > ka // 2 for pa, ka in zip(p, k, strict=True)):
        raise ArgumentError(f"{name}: padding {p} must be at most half the kernel size {k}")
    spatial = tuple(x_shape[2:])
    out = [(n + 2 * pa - ka) // sa + 1 for n, ka, sa, pa in zip(spatial, k, s, p, strict=True)]
    if min(out) < 1:
        raise ArgumentError(f"{name}: kernel {k} does not fit input {spatial} with padding {p}")
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


def max_pool3d(x, kernel_size=2, stride=None, padding=0) -> Tensor:
    """x (n, c, d, h, w) -> (n, c, od, oh, ow), od = (d + 2 pd - kd) // sd + 1 (h, w likewise);
    kernel_size, stride, padding: an int or a triple; the rest as max_pool2d (first maximum in
    row-major tap order takes the gradient; NaNs propagate)."""
    x, attrs = _pool_args(x, kernel_size, stride, padding, "max_pool3d", 3)
    return MaxPool3dFn.apply(x, **attrs)


def avg_pool3d(x, kernel_size=2, stride=None, padding=0) -> Tensor:
    """Same arguments and output size as max_pool3d; zero padding counts in the mean."""
    x, attrs = _pool_args(x, kernel_size, stride, padding, "avg_pool3d", 3)
    return AvgPool3dFn.apply(x, **attrs)


def _adaptive(x, output_size, ndim, name) -> Tensor:
    x = as_tensor(x)
    layout, ints = _AXES[ndim]
    if len(x.shape) != 2 + ndim:
        raise ArgumentError(f"{name} expects x {layout}, got shape {tuple(x.shape)}")
    out = ints(output_size, "output_size")
    if min(out) < 1:
        raise ArgumentError(f"{name}: output_size must be >= 1 on every axis, got {out}")
    return AdaptiveAvgPoolFn.apply(x, output_size=out)


def adaptive_avg_pool2d(x, output_size=1) -> Tensor:
    """x (n, c, h, w) -> (n, c, oh, ow) = output_size (an int or a pair): the mean over windows
    [floor(i h / oh), ceil((i + 1) h / oh)) x (the same for columns). output_size 1 is global
    average pooling; an output larger than the input repeats values (windows of one)."""
    return _adaptive(x, output_size, 2, "adaptive_avg_pool2d")


def adaptive_avg_pool3d(x, output_size=1) -> Tensor:
    """x (n, c, d, h, w) -> (n, c, *output_size) (an int or a triple): adaptive_avg_pool2d's
    windows along each of the three axes."""
    return _adaptive(x, output_size, 3, "adaptive_avg_pool3d")
