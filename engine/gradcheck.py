"""Gradient checking, shipped as API so extenders can check their own ops.

Central differences in float64, projected on a random upstream gradient gy (never a plain .sum(),
which is blind to errors that cancel, such as a wrong softmax gradient).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from engine.backend import to_device
from engine.function import no_grad
from engine.tensor import Tensor


def numerical_grad(f: Callable[[], float], x, eps: float = 1e-6) -> np.ndarray:
    """d f / d x by central differences, perturbing x (a NumPy or CuPy array) in place one element
    at a time (restored); returns a NumPy array."""
    g = np.zeros(x.shape, dtype=np.float64)
    flat, gflat = x.reshape(-1), g.reshape(-1)  # flat is a view: perturbing it perturbs x
    for i in range(flat.size):
        old = float(flat[i])
        flat[i] = old + eps
        up = f()
        flat[i] = old - eps
        down = f()
        flat[i] = old
        gflat[i] = (up - down) / (2 * eps)
    return g


@dataclass(frozen=True)
class GradCheckResult:
    """What check_grad compared: the names checked ("input0", "weight", ...), the number of
    gradient entries and the largest |autograd - finite difference| among them. Printing it
    shows a reader that the check ran and passed (a failure raises instead)."""

    names: tuple[str, ...]
    size: int
    max_abs_error: float

    def __str__(self) -> str:
        return (
            f"check_grad passed: {', '.join(self.names)} ({self.size} entries) match central "
            f"differences, max abs error {self.max_abs_error:.1e}"
        )


def check_grad(
    fn: Callable,
    inputs: Iterable,
    params: Iterable = (),
    *,
    device: str = "cpu",
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    seed: int = 0,
) -> GradCheckResult:
    """Assert autograd == finite differences for every input and parameter of `fn`, in float64.

    inputs: arrays, each made a float64 Tensor on `device` that requires grad; params: (name,
    Parameter) pairs, e.g. `layer.named_parameters()` after `layer.astype(np.float64)` (and
    `.to(device)`). The differences are taken on the device, so this checks the GPU kernels too.
    Raises AssertionError naming the first input or parameter whose gradient disagrees; else
    returns a GradCheckResult (names checked, max abs error), which prints as one line.
    """
    xs = [
        Tensor(to_device(np.array(a, dtype=np.float64), device), requires_grad=True) for a in inputs
    ]
    params = list(params)
    for name, p in params:
        if p.dtype != np.float64 or p.device != device:
            raise TypeError(
                f"check_grad needs float64 parameters on {device}; {name} is {p.dtype} on {p.device}"
            )
        p.grad = None
    y = fn(*xs)
    if y.device != device:
        raise AssertionError(f"fn returned a tensor on {y.device}, expected {device}")
    gy = to_device(np.random.default_rng(seed).standard_normal(y.shape), device)
    y.backward(gy)

    def projected() -> float:
        with no_grad():
            return float((fn(*xs).data * gy).sum())

    names, size, worst = [], 0, 0.0
    for name, t in [*((f"input{i}", x) for i, x in enumerate(xs)), *params]:
        num = numerical_grad(projected, t.data, eps)
        got = to_device(t.grad, "cpu") if t.grad is not None else np.zeros(t.shape)
        np.testing.assert_allclose(got, num, atol=atol, rtol=rtol, err_msg=f"gradient of {name}")
        names.append(name)
        size += num.size
        worst = max(worst, float(np.abs(got - num).max(initial=0.0)))
    return GradCheckResult(tuple(names), size, worst)
