"""Elementwise ops: arithmetic with broadcasting, exp/log, activations, dropout, dtype casts."""

from __future__ import annotations

import numpy as np

from engine.function import Function, unbroadcast
from engine.ops import tensors
from engine.tensor import Tensor, as_tensor


class AddFn(Function):
    """y = a + b with NumPy broadcasting; y has the broadcast shape and the promoted dtype.

    Each gradient is summed back over the axes its operand was broadcast along (unbroadcast).
    Nothing is saved: the operands' shapes come from `self.inputs`.
    """

    def forward(self, a, b):
        return a + b

    def backward(self, gy):
        # d(a+b)/da = d(a+b)/db = 1, summed back over broadcast axes
        ga = unbroadcast(gy, self.inputs[0].shape) if self.needs_grad[0] else None
        gb = unbroadcast(gy, self.inputs[1].shape) if self.needs_grad[1] else None
        return ga, gb


class SubFn(Function):
    """y = a - b with NumPy broadcasting; y has the broadcast shape and the promoted dtype.

    Each gradient is summed back over the axes its operand was broadcast along (unbroadcast).
    """

    def forward(self, a, b):
        return a - b

    def backward(self, gy):
        # d(a-b)/da = 1, d(a-b)/db = -1, summed back over broadcast axes
        ga = unbroadcast(gy, self.inputs[0].shape) if self.needs_grad[0] else None
        gb = unbroadcast(-gy, self.inputs[1].shape) if self.needs_grad[1] else None
        return ga, gb


class MulFn(Function):
    """y = a * b elementwise, with NumPy broadcasting; y has the broadcast shape.

    Each gradient is summed back over the axes its operand was broadcast along (unbroadcast).
    """

    def forward(self, a, b):
        self.a, self.b = a, b  # each factor is the other's derivative
        return a * b

    def backward(self, gy):
        # d(ab)/da = b, d(ab)/db = a, summed back over broadcast axes
        ga = unbroadcast(gy * self.b, self.a.shape) if self.needs_grad[0] else None
        gb = unbroadcast(gy * self.a, self.b.shape) if self.needs_grad[1] else None
        return ga, gb


class DivFn(Function):
    """y = a / b elementwise, with NumPy broadcasting; y has the broadcast shape.

    b == 0 gives inf/nan in forward and backward, as in NumPy (and a RuntimeWarning on the CPU).
    """

    def forward(self, a, b):
        self.a, self.b = a, b  # b for both gradients, a for gb = -gy a / b^2
        return a / b

    def backward(self, gy):
        # d(a/b)/da = 1/b, d(a/b)/db = -a/b^2, summed back over broadcast axes
        ga = unbroadcast(gy / self.b, self.a.shape) if self.needs_grad[0] else None
        gb = (
            unbroadcast(-gy * self.a / (self.b * self.b), self.b.shape)
            if self.needs_grad[1]
            else None
        )
        return ga, gb


class NegFn(Function):
    """y = -x, same shape and dtype."""

    def forward(self, x):
        return -x

    def backward(self, gy):
        # d/dx (-x) = -1
        return (-gy,)


class PowFn(Function):
    """y = a ** b elementwise, with NumPy broadcasting; y has the broadcast shape.

    The gradient w.r.t. b, a^b log(a), is only computed when b needs one, and is defined for
    a > 0 only (a <= 0 gives nan or inf there). `x ** 2` with a constant exponent never takes a log.
    """

    def forward(self, a, b):
        self.a, self.b = a, b  # both appear in d/da = b a^(b-1); a in d/db's log(a)
        self.y = a**b  # reused for d/db
        return self.y

    def backward(self, gy):
        # d(a^b)/da = b a^(b-1); d(a^b)/db = a^b log(a) (defined for a > 0)
        ga = (
            unbroadcast(gy * self.b * self.a ** (self.b - 1), self.a.shape)
            if self.needs_grad[0]
            else None
        )
        gb = None
        if self.needs_grad[1]:
            gb = unbroadcast(gy * self.y * self.xp.log(self.a), self.b.shape)
        return ga, gb


class ExpFn(Function):
    """y = exp(x), same shape and dtype; inf past x of about 709 (float64) or 88 (float32)."""

    def forward(self, x):
        self.y = self.xp.exp(x)  # the output is its own derivative
        return self.y

    def backward(self, gy):
        # d/dx exp(x) = exp(x) = y
        return (gy * self.y,)


class LogFn(Function):
    """y = log(x) (natural), same shape and dtype; x == 0 gives -inf, x < 0 gives nan."""

    def forward(self, x):
        self.x = x  # the derivative is 1/x
        return self.xp.log(x)

    def backward(self, gy):
        # d/dx log(x) = 1/x
        return (gy / self.x,)


class ReLUFn(Function):
    """y = max(x, 0), same shape and dtype (kernels relu_forward / relu_backward).

    At x == 0 the gradient is 0 (PyTorch's subgradient).
    """

    def forward(self, x):
        self.y = self.k.relu_forward(x)  # y > 0 marks where the gradient passes
        return self.y

    def backward(self, gy):
        # d/dx max(x, 0) = 1 where x > 0, else 0 (0 at x == 0 too)
        return (self.k.relu_backward(gy, self.y),)


class LeakyReLUFn(Function):
    """y = x where x > 0, else negative_slope * x; same shape and dtype (kernels
    leaky_relu_forward / leaky_relu_backward). At x == 0 the gradient is negative_slope (PyTorch)."""

    def forward(self, x, *, negative_slope):
        self.x, self.slope = x, negative_slope  # the sign of x selects the slope
        return self.k.leaky_relu_forward(x, negative_slope)

    def backward(self, gy):
        # d/dx leaky_relu(x) = 1 where x > 0, else negative_slope
        return (self.k.leaky_relu_backward(gy, self.x, self.slope),)


class GELUFn(Function):
    """y = x Phi(x), Phi the standard normal CDF (erf form, PyTorch's default GELU); same shape
    and dtype (kernels gelu_forward / gelu_backward)."""

    def forward(self, x):
        self.x = x  # the derivative is a function of x
        return self.k.gelu_forward(x)

    def backward(self, gy):
        # d/dx x Phi(x) = Phi(x) + x phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
        return (self.k.gelu_backward(gy, self.x),)


def stable_sigmoid(xp, x):
    """1 / (1 + exp(-x)) without overflow: exp of -|x| only."""
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


class SigmoidFn(Function):
    """y = 1 / (1 + exp(-x)), same shape and dtype; stable for any x (exp of -|x| only)."""

    def forward(self, x):
        self.y = stable_sigmoid(self.xp, x)  # the derivative needs only the output: s (1 - s)
        return self.y

    def backward(self, gy):
        # d/dx s(x) = s (1 - s)
        return (gy * self.y * (1 - self.y),)


class TanhFn(Function):
    """y = tanh(x), same shape and dtype."""

    def forward(self, x):
        self.y = self.xp.tanh(x)  # the derivative needs only the output: 1 - y^2
        return self.y

    def backward(self, gy):
        # d/dx tanh(x) = 1 - tanh^2
        return (gy * (1 - self.y * self.y),)


class MaskFn(Function):
    """y = x * mask for a constant mask (dropout), mask of x's shape and dtype on x's device.

    The mask is an attribute, not an input, so it never receives a gradient.
    """

    def forward(self, x, *, mask):
        self.mask = mask  # the mask is the whole derivative
        return x * mask

    def backward(self, gy):
        # d/dx (x mask) = mask
        return (gy * self.mask,)


class CastFn(Function):
    """y = x converted to `dtype` (a np.dtype), same shape.

    The gradient is the identity, converted back to x's dtype.
    """

    def forward(self, x, *, dtype):
        self.in_dtype = x.dtype  # the gradient goes back in the input's dtype
        return x.astype(dtype)

    def backward(self, gy):
        # d/dx cast(x) = 1, returned in x's dtype
        return (gy.astype(self.in_dtype),)


def add(a, b) -> Tensor:
    """a + b with broadcasting; a Python scalar operand takes the other's dtype."""
    return AddFn.apply(*tensors(a, b))


def sub(a, b) -> Tensor:
    """a - b with broadcasting; a Python scalar operand takes the other's dtype."""
    return SubFn.apply(*tensors(a, b))


def mul(a, b) -> Tensor:
    """a * b elementwise with broadcasting; a Python scalar takes the other's dtype."""
    return MulFn.apply(*tensors(a, b))


def div(a, b) -> Tensor:
    """a / b elementwise with broadcasting; a Python scalar takes the other's dtype."""
    return DivFn.apply(*tensors(a, b))


def neg(x) -> Tensor:
    """-x, same shape and dtype."""
    return NegFn.apply(x)


def pow(a, b) -> Tensor:  # noqa: A001 - the name of the operator
    """a ** b elementwise with broadcasting; the gradient w.r.t. b needs a > 0."""
    return PowFn.apply(*tensors(a, b))


def exp(x) -> Tensor:
    """exp(x) elementwise, same shape and dtype."""
    return ExpFn.apply(x)


def log(x) -> Tensor:
    """Natural log, elementwise, same shape and dtype; log(0) = -inf."""
    return LogFn.apply(x)


def relu(x) -> Tensor:
    """max(x, 0) elementwise, same shape and dtype; the gradient at 0 is 0."""
    return ReLUFn.apply(x)


def leaky_relu(x, negative_slope: float = 0.01) -> Tensor:
    """x where x > 0, else negative_slope * x, elementwise; same shape and dtype."""
    return LeakyReLUFn.apply(x, negative_slope=float(negative_slope))


def gelu(x) -> Tensor:
    """x Phi(x) elementwise (exact erf form, as PyTorch's GELU()); same shape and dtype."""
    return GELUFn.apply(x)


def sigmoid(x) -> Tensor:
    """1 / (1 + exp(-x)) elementwise, same shape and dtype; stable for any x."""
    return SigmoidFn.apply(x)


def tanh(x) -> Tensor:
    """tanh(x) elementwise, same shape and dtype."""
    return TanhFn.apply(x)


def cast(x, dtype) -> Tensor:
    """x converted to `dtype`, same shape; the gradient is converted back. x itself if already
    of that dtype (no graph node)."""
    x = as_tensor(x)
    return x if x.dtype == np.dtype(dtype) else CastFn.apply(x, dtype=np.dtype(dtype))


def dropout(
    x, p: float = 0.5, training: bool = True, rng: np.random.Generator | None = None
) -> Tensor:
    """Inverted dropout: zero each element with probability p and scale the rest by 1/(1-p),
    so the expected value is x; same shape and dtype. Returns x itself when not training or
    p == 0. The mask comes from `rng` (a np.random.Generator, required in training)."""
    if not 0 <= p < 1:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    x = as_tensor(x)
    if not training or p == 0:
        return x
    if rng is None:
        raise ValueError("dropout in training mode needs an explicit rng (np.random.Generator)")
    keep = rng.random(x.shape) >= p
    mask = (keep / (1 - p)).astype(x.dtype)
    if x.device != "cpu":
        from engine.backend import to_device

        mask = to_device(mask, x.device)
    return MaskFn.apply(x, mask=mask)
