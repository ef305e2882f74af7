"""The ops: one module per family, each op one Function with forward and backward on arrays.

Wrappers validate their arguments once, with shapes in the message; kernels then assume valid input.
"""

from __future__ import annotations

import numpy as np

from engine.errors import ArgumentError
from engine.tensor import Tensor, as_tensor


class SizeArgumentError(ArgumentError, TypeError):
    """A kernel_size/stride/padding-like argument that is not an int or a tuple of ints: both the
    project's ArgumentError (the CLI reports it in one line) and a TypeError (its nature)."""


_WORDS = {2: "a pair", 3: "a triple"}


def ntuple(value, n: int, name: str = "value") -> tuple[int, ...]:
    """An int or a sequence of n ints (Python or NumPy integers, never bools) -> a tuple of n
    Python ints, for kernel_size/stride/padding arguments; SizeArgumentError naming `name`."""

    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))

    if is_int(value):
        return (int(value),) * n
    if isinstance(value, (tuple, list)) and len(value) == n and all(map(is_int, value)):
        return tuple(int(v) for v in value)
    what = f"{_WORDS[n]} (a tuple of {n} ints)" if n in _WORDS else f"a tuple of {n} ints"
    raise SizeArgumentError(f"{name} must be an int or {what}, got {value!r}")


def pair(v, name: str = "value") -> tuple[int, int]:
    """ntuple(v, 2, name): (h, w) arguments of the 2-D ops."""
    return ntuple(v, 2, name)


def triple(v, name: str = "value") -> tuple[int, int, int]:
    """ntuple(v, 3, name): (d, h, w) arguments of the 3-D ops."""
    return ntuple(v, 3, name)


def tensors(a, b) -> tuple[Tensor, Tensor]:
    """Both operands as Tensors; a Python scalar takes the other operand's dtype."""
    if isinstance(a, Tensor):
        return a, as_tensor(b, like=a)
    b = as_tensor(b)
    return as_tensor(a, like=b), b
