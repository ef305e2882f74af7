"""Matrix products: matmul (with batch broadcasting) and the fused dense layer y = x W^T + b.
Every product goes through the `matmul` kernel, so a flavour may route it (the cupy flavour's own
GEMM, which a CUDA graph can record)."""

from __future__ import annotations

from engine.function import Function, unbroadcast
from engine.ops import tensors
from engine.tensor import Tensor, as_tensor


class MatMulFn(Function):
    """y = a @ b: a (..., m, k), b (..., k, n) -> y (..., m, n); batch axes broadcast.

    Both operands have at least 2 dims (the wrapper checks). Each gradient is summed back over
    the batch axes its operand was broadcast along.
    """

    autocast_inputs = (0, 1)  # a and b: rounded under a bf16/fp16 policy (engine.amp)

    def forward(self, a, b):
        self.a, self.b = a, b  # b for ga = gy b^T, a for gb = a^T gy
        return self.k.matmul(a, b)

    def backward(self, gy):
        # y = a b: ga = gy b^T, gb = a^T gy (last two axes), summed over broadcast batch axes
        ga = gb = None
        if self.needs_grad[0]:
            ga = unbroadcast(self.k.matmul(gy, self.b.swapaxes(-1, -2)), self.a.shape)
        if self.needs_grad[1]:
            gb = unbroadcast(self.k.matmul(self.a.swapaxes(-1, -2), gy), self.b.shape)
        return ga, gb


class LinearFn(Function):
    """y = x W^T + b: x (n, in), W (out, in), b (out,) or absent -> y (n, out), x's dtype.

    Called with two inputs (no bias) backward returns two gradients, with three it returns three.
    """

    autocast_inputs = (0, 1)  # x and W: rounded under a bf16/fp16 policy (engine.amp)

    def forward(self, x, W, b=None):
        self.x, self.W = x, W  # x for gW, W for gx
        y = self.k.matmul(x, W.T)
        if b is not None:
            y += b
        return y

    def backward(self, gy):
        # y = x W^T + b: gx = gy W, gW = gy^T x, gb = sum over the batch of gy
        gx = self.k.matmul(gy, self.W) if self.needs_grad[0] else None
        gW = self.k.matmul(gy.T, self.x) if self.needs_grad[1] else None
        if len(self.needs_grad) == 2:
            return gx, gW
        gb = gy.sum(axis=0) if self.needs_grad[2] else None
        return gx, gW, gb


def matmul(a, b) -> Tensor:
    """a @ b for 2-D or batched (..., m, k) @ (..., k, n) tensors."""
    a, b = tensors(a, b)
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"matmul needs tensors of at least 2 dims, got {a.shape} and {b.shape}")
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"matmul shapes {a.shape} and {b.shape} do not align")
    return MatMulFn.apply(a, b)


def linear(x, W, b=None) -> Tensor:
    """y = x @ W.T + b; x (n, in), W (out, in), b (out,) -> y (n, out)."""
    x, W = as_tensor(x), as_tensor(W)
    if x.ndim != 2 or W.ndim != 2 or x.shape[1] != W.shape[1]:
        raise ValueError(f"linear expects x (n, in) and W (out, in), got {x.shape} and {W.shape}")
    if x.dtype != W.dtype:
        raise TypeError(f"linear: x is {x.dtype} but W is {W.dtype}")
    if b is None:
        return LinearFn.apply(x, W)
    b = as_tensor(b)
    if b.shape != (W.shape[0],):
        raise ValueError(f"linear bias must have shape ({W.shape[0]},), got {b.shape}")
    return LinearFn.apply(x, W, b)
