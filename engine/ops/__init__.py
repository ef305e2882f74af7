"""The ops: one module per family, each op one Function with forward and backward on arrays.

Wrappers validate their arguments once, with shapes in the message; kernels then assume valid input.
"""

from __future__ import annotations

from engine.tensor import Tensor, as_tensor


def pair(v, name: str = "value") -> tuple[int, int]:
    """An int or a pair of ints -> (a, b), for kernel_size/stride/padding arguments."""
    if isinstance(v, (int,)) and not isinstance(v, bool):
        return (v, v)
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(i, int) for i in v):
        return (int(v[0]), int(v[1]))
    raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}")


def triple(v, name: str = "value") -> tuple[int, int, int]:
    """An int or a triple of ints -> (a, b, c), for 3-D kernel_size/stride/padding arguments."""
    if isinstance(v, int) and not isinstance(v, bool):
        return (v, v, v)
    if isinstance(v, (tuple, list)) and len(v) == 3 and all(isinstance(i, int) for i in v):
        return (int(v[0]), int(v[1]), int(v[2]))
    raise TypeError(f"{name} must be an int or a triple of ints, got {v!r}")


def tensors(a, b) -> tuple[Tensor, Tensor]:
    """Both operands as Tensors; a Python scalar takes the other operand's dtype."""
    if isinstance(a, Tensor):
        return a, as_tensor(b, like=a)
    b = as_tensor(b)
    return as_tensor(a, like=b), b
