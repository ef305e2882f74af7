"""Mixed precision (issue 16): a precision policy for the conv and dense products, the exact bf16 and
fp16 roundings, and the dynamic loss scaler fp16 needs.

Autocast-style: under `with autocast("bf16"):` (or "fp16") the Functions that mark `autocast_inputs`
(convolutions, linear, matmul, the fused conv-ReLU-pool) get those inputs rounded to the half type
and their upstream gradients rounded likewise in backward (engine/function.py does both, in one
place). The rounded values stay float32 arrays, so every product runs on half-precision operands
with float32 accumulation and float32 outputs: the arithmetic of tensor cores (fp16/bf16 inputs,
fp32 accumulate). Master weights, optimizer state and every other op stay float32. "fp32", the
default, rounds nothing: the engine's results are bit for bit those without a policy.

On the CPU NumPy has float16 but no bfloat16, so bf16 is rounded exactly in integer arithmetic on
the float32 bits (round to nearest, ties to even, on the top 16 bits); fp16 goes through
np.float16, overflow giving inf as on a GPU. The same xp-generic code runs on CuPy arrays (fp16
through real cupy.float16). Only float32 inputs are rounded: float64 (gradient checks) never is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np

from engine.backend import get_backend
from engine.errors import ArgumentError

PRECISIONS = ("fp32", "bf16", "fp16")

_policy: ContextVar[str] = ContextVar("precision", default="fp32")


def check_precision(precision: str) -> str:
    """`precision` itself if it is one of PRECISIONS; ArgumentError naming it otherwise."""
    if precision not in PRECISIONS:
        raise ArgumentError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def current() -> str:
    """The precision policy in force here: "fp32" (default), "bf16" or "fp16"."""
    return _policy.get()


@contextlib.contextmanager
def autocast(precision: str):
    """`with autocast("bf16"):` rounds the conv and dense products' inputs inside (see above)."""
    token = _policy.set(check_precision(precision))
    try:
        yield
    finally:
        _policy.reset(token)


def round_bf16(a):
    """float32 array -> the nearest bfloat16 values (ties to even), still float32 (same device).

    bf16 is float32's top 16 bits: add 0x7FFF plus the lowest kept bit (bit 16), then clear the
    low 16 bits. Finite values past bf16's largest round to inf, as the format says; inf stays inf;
    NaN stays NaN (made quiet, so clearing the low bits cannot turn it into inf)."""
    xp = get_backend(a).xp
    bits = xp.ascontiguousarray(a, dtype=xp.float32).view(xp.uint32)
    rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000  # wraps mod 2^32 for NaNs only
    quiet_nan = (bits | 0x00400000) & 0xFFFF0000
    is_nan = (bits & 0x7FFFFFFF) > 0x7F800000
    return xp.where(is_nan, quiet_nan, rounded).view(xp.float32)


def round_fp16(a):
    """float32 array -> the nearest float16 values (ties to even; beyond 65504 -> inf), as float32."""
    xp = get_backend(a).xp
    with np.errstate(over="ignore"):  # overflow to inf is the point (CuPy never warns)
        return a.astype(xp.float16).astype(xp.float32)


ROUNDINGS: dict[str, Callable] = {"bf16": round_bf16, "fp16": round_fp16}


def caster(arrays) -> Callable | None:
    """The rounding the current policy applies to `arrays` (a Function's autocast inputs), or None:
    under "fp32", or when any of them is not float32 (float64 checks are never rounded)."""
    precision = _policy.get()
    if precision == "fp32" or any(getattr(a, "dtype", None) != np.float32 for a in arrays):
        return None
    return ROUNDINGS[precision]


@dataclass
class LossScaler:
    """Dynamic loss scaling for fp16: backward runs on loss * scale, so small gradients survive the
    fp16 rounding of the upstream gradients; the gradients are divided by scale before the update.

    A step whose gradients hold inf or NaN is skipped (weights, optimizer buffers and step count
    untouched) and halves the scale; `growth_interval` clean steps in a row double it. scale is a
    power of two, so unscaling is exact. PyTorch's GradScaler defaults: 2^16, x2 per 2000, /2."""

    scale: float = 2.0**16
    growth_interval: int = 2000
    good_steps: int = 0  # clean steps since the scale last changed
    skipped: int = 0  # steps skipped so far (not saved: a count for reports)

    def step(self, loss, optimizer) -> bool:
        """Backward of `loss` (a 0-d Tensor) scaled, unscale, then optimizer.step() unless a
        gradient is not finite. Returns True when the step ran. One host sync (the finite check)."""
        xp = get_backend(loss.data).xp
        optimizer.zero_grad()
        with np.errstate(over="ignore", invalid="ignore"):  # inf/NaN gradients: the skip below
            loss.backward(xp.full(loss.shape, self.scale, dtype=loss.dtype))
            grads = [p for p in optimizer.params if p.grad is not None]
            for p in grads:
                p.grad = p.grad * p.grad.dtype.type(1.0 / self.scale)  # new arrays: grads may alias
        finite = not grads or bool(xp.stack([xp.isfinite(p.grad).all() for p in grads]).all())
        if finite:
            optimizer.step()
        self.update(finite)
        return finite

    def update(self, finite: bool) -> None:
        """Halve the scale after a skipped step; double it after growth_interval clean ones."""
        if not finite:
            self.scale, self.good_steps, self.skipped = self.scale / 2, 0, self.skipped + 1
            return
        self.good_steps += 1
        if self.good_steps >= self.growth_interval:
            self.scale, self.good_steps = self.scale * 2, 0

    def state_dict(self) -> dict:
        """JSON-ready state for a checkpoint's train_state: {"scale", "good_steps"}."""
        return {"scale": float(self.scale), "good_steps": int(self.good_steps)}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.good_steps = float(state["scale"]), int(state["good_steps"])


def backward_step(loss, optimizer, scaler: LossScaler | None = None) -> bool:
    """zero_grad, backward of `loss`, optimizer.step(): plainly, or through `scaler` (fp16).
    Returns False when the scaler skipped the update."""
    if scaler is not None:
        return scaler.step(loss, optimizer)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return True
