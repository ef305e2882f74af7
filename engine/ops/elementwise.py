"""Elementwise ops: arithmetic with broadcasting, exp/log, activations, dropout, dtype casts."""

from __future__ import annotations

import numpy as np

from engine.function import Function, unbroadcast
from engine.ops import tensors
from engine.tensor import Tensor, as_tensor


class AddFn(Function):
    def forward(self, a, b):
        return a + b

    def backward(self, gy):
        # d(a+b)/da = d(a+b)/db = 1, summed back over broadcast axes
        ga = unbroadcast(gy, self.inputs[0].shape) if self.needs_grad[0] else None
        gb = unbroadcast(gy, self.inputs[1].shape) if self.needs_grad[1] else None
        return ga, gb


class SubFn(Function):
    def forward(self, a, b):
        return a - b

    def backward(self, gy):
        # d(a-b)/da = 1, d(a-b)/db = -1
        ga = unbroadcast(gy, self.inputs[0].shape) if self.needs_grad[0] else None
        gb = unbroadcast(-gy, self.inputs[1].shape) if self.needs_grad[1] else None
        return ga, gb


class MulFn(Function):
    def forward(self, a, b):
        self.a, self.b = a, b  # each factor is the other's derivative
        return a * b

    def backward(self, gy):
        # d(ab)/da = b, d(ab)/db = a
        ga = unbroadcast(gy * self.b, self.a.shape) if self.needs_grad[0] else None
        gb = unbroadcast(gy * self.a, self.b.shape) if self.needs_grad[1] else None
        return ga, gb


class DivFn(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a / b

    def backward(self, gy):
        # d(a/b)/da = 1/b, d(a/b)/db = -a/b^2
        ga = unbroadcast(gy / self.b, self.a.shape) if self.needs_grad[0] else None
        gb = (
            unbroadcast(-gy * self.a / (self.b * self.b), self.b.shape)
            if self.needs_grad[1]
            else None
        )
        return ga, gb


class NegFn(Function):
    def forward(self, x):
        return -x

    def backward(self, gy):
        return (-gy,)


class PowFn(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
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
    def forward(self, x):
        self.y = self.xp.exp(x)  # d/dx exp(x) = exp(x)
        return self.y

    def backward(self, gy):
        return (gy * self.y,)


class LogFn(Function):
    def forward(self, x):
        self.x = x
        return self.xp.log(x)

    def backward(self, gy):
        # d/dx log(x) = 1/x
        return (gy / self.x,)


class ReLUFn(Function):
    def forward(self, x):
        self.y = self.k.relu_forward(x)  # y > 0 marks where the gradient passes
        return self.y

    def backward(self, gy):
        # d/dx max(x, 0) = 1 where x > 0, else 0
        return (self.k.relu_backward(gy, self.y),)


def stable_sigmoid(xp, x):
    """1 / (1 + exp(-x)) without overflow: exp of -|x| only."""
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


class SigmoidFn(Function):
    def forward(self, x):
        self.y = stable_sigmoid(self.xp, x)
        return self.y

    def backward(self, gy):
        # d/dx s(x) = s (1 - s)
        return (gy * self.y * (1 - self.y),)


class TanhFn(Function):
    def forward(self, x):
        self.y = self.xp.tanh(x)
        return self.y

    def backward(self, gy):
        # d/dx tanh(x) = 1 - tanh^2
        return (gy * (1 - self.y * self.y),)


class MaskFn(Function):
    """y = x * mask for a constant mask (dropout)."""

    def forward(self, x, *, mask):
        self.mask = mask
        return x * mask

    def backward(self, gy):
        return (gy * self.mask,)


class CastFn(Function):
    def forward(self, x, *, dtype):
        self.in_dtype = x.dtype
        return x.astype(dtype)

    def backward(self, gy):
        return (gy.astype(self.in_dtype),)


def add(a, b) -> Tensor:
    return AddFn.apply(*tensors(a, b))


def sub(a, b) -> Tensor:
    return SubFn.apply(*tensors(a, b))


def mul(a, b) -> Tensor:
    return MulFn.apply(*tensors(a, b))


def div(a, b) -> Tensor:
    return DivFn.apply(*tensors(a, b))


def neg(x) -> Tensor:
    return NegFn.apply(x)


def pow(a, b) -> Tensor:  # noqa: A001 - the name of the operator
    return PowFn.apply(*tensors(a, b))


def exp(x) -> Tensor:
    return ExpFn.apply(x)


def log(x) -> Tensor:
    return LogFn.apply(x)


def relu(x) -> Tensor:
    """max(x, 0), elementwise."""
    return ReLUFn.apply(x)


def sigmoid(x) -> Tensor:
    """1 / (1 + exp(-x)), stable for any x."""
    return SigmoidFn.apply(x)


def tanh(x) -> Tensor:
    return TanhFn.apply(x)


def cast(x, dtype) -> Tensor:
    """x converted to `dtype`; the gradient is converted back."""
    x = as_tensor(x)
    return x if x.dtype == np.dtype(dtype) else CastFn.apply(x, dtype=np.dtype(dtype))


def dropout(
    x, p: float = 0.5, training: bool = True, rng: np.random.Generator | None = None
) -> Tensor:
    """Inverted dropout: zero each element with probability p and scale the rest by 1/(1-p).
    Identity when not training or p == 0. The mask comes from `rng` (a np.random.Generator)."""
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
