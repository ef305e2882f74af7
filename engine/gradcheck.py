"""Gradient checking, shipped as API so extenders can check their own ops.

Central differences in float64, projected on a random upstream gradient gy (never a plain .sum(),
which is blind to errors that cancel, such as a wrong softmax gradient).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from engine.function import no_grad
from engine.tensor import Tensor


def numerical_grad(f: Callable[[], float], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """d f / d x by central differences, perturbing x in place one element at a time (restored)."""
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = f()
        flat[i] = old - eps
        down = f()
        flat[i] = old
        gflat[i] = (up - down) / (2 * eps)
    return g


def check_grad(fn: Callable, inputs: Iterable, params: Iterable = (), *, eps: float = 1e-6,
               atol: float = 1e-5, rtol: float = 1e-4, seed: int = 0) -> None:  # fmt: skip
    """Assert autograd == finite differences for every input and parameter of `fn` (float64, CPU).

    inputs: arrays, each made a float64 Tensor that requires grad; params: (name, Parameter) pairs,
    e.g. `layer.named_parameters()` after `layer.astype(np.float64)`. Raises AssertionError naming
    the first input or parameter whose gradient disagrees.
    """
    xs = [Tensor(np.array(a, dtype=np.float64), requires_grad=True) for a in inputs]
    params = list(params)
    for name, p in params:
        if p.dtype != np.float64:
            raise TypeError(f"check_grad needs float64 parameters; {name} is {p.dtype}")
        p.grad = None
    y = fn(*xs)
    gy = np.random.default_rng(seed).standard_normal(y.shape)
    y.backward(gy)

    def projected() -> float:
        with no_grad():
            return float((fn(*xs).data * gy).sum())

    for name, t in [*((f"input{i}", x) for i, x in enumerate(xs)), *params]:
        num = numerical_grad(projected, t.data, eps)
        got = t.grad if t.grad is not None else np.zeros_like(t.data)
        np.testing.assert_allclose(got, num, atol=atol, rtol=rtol, err_msg=f"gradient of {name}")
