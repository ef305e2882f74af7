"""Function: the unit of differentiation. One op = one Function with forward and backward on arrays.

`Function.apply` alone does the graph bookkeeping: it picks the backend (`self.xp`, `self.k`), records
which inputs need a gradient, runs `forward` on raw arrays, wraps the outputs as Tensors, and links
them to this Function only in grad mode. Outputs are held by weak reference, so a graph lives exactly
as long as the Tensors computed from it.
"""

from __future__ import annotations

import contextlib
import weakref
from contextvars import ContextVar

from engine import amp
from engine.backend import get_backend

_grad_enabled: ContextVar[bool] = ContextVar("grad_enabled", default=True)


def is_grad_enabled() -> bool:
    return _grad_enabled.get()


@contextlib.contextmanager
def no_grad():
    """Inside `with no_grad():` ops build no graph: the normal inference path."""
    token = _grad_enabled.set(False)
    try:
        yield
    finally:
        _grad_enabled.reset(token)


def unbroadcast(g, shape: tuple[int, ...]):
    """Sum a broadcast gradient back to `shape`: over leading axes, then over axes of size 1."""
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, size in enumerate(shape) if size == 1 and g.shape[lead + i] != 1
    )
    return g.sum(axis=axes, keepdims=True).reshape(shape)


class Function:
    """Subclasses implement `forward(*arrays, **attrs)` and `backward(*grad_outputs)`.

    backward returns one gradient per input array, in order, shaped like that input, or None where
    `self.needs_grad[i]` is False or the input is not differentiable.
    """

    generation: int = 0
    # Mixed precision (engine.amp): the inputs (by position) that a bf16/fp16 policy rounds, e.g.
    # (0, 1) = x and W of a conv or dense product; empty for every other op, which stays float32.
    autocast_inputs: tuple[int, ...] = ()
    cast = None  # set by apply while a policy rounds this op: backward rounds its gys with it

    def forward(self, *arrays, **attrs):
        raise NotImplementedError

    def backward(self, *grad_outputs):
        raise NotImplementedError

    def run_backward(self, *grad_outputs):
        """backward, with the upstream gradients rounded as the forward's inputs were (autocast):
        a half-precision product's operands in both passes. Tensor.backward calls this."""
        if self.cast is not None:
            grad_outputs = tuple(self.cast(g) for g in grad_outputs)
        return self.backward(*grad_outputs)

    @property
    def name(self) -> str:
        return type(self).__name__

    @classmethod
    def apply(cls, *inputs, **attrs):
        """Run the op on Tensors (or arrays/scalars, taken as constants); return Tensor(s)."""
        from engine.tensor import Tensor, as_tensor

        fn = cls()
        tensors = [as_tensor(x) for x in inputs]
        arrays = [t.data for t in tensors]
        backend = get_backend(*arrays)
        fn.xp, fn.k = backend.xp, backend.k
        if cls.autocast_inputs:  # a conv/dense product: round its operands under bf16/fp16
            fn.cast = amp.caster([arrays[i] for i in cls.autocast_inputs])
            if fn.cast is not None:
                arrays = [
                    fn.cast(a) if i in cls.autocast_inputs else a for i, a in enumerate(arrays)
                ]
        record = is_grad_enabled() and any(t.requires_grad for t in tensors)
        fn.needs_grad = tuple(record and t.requires_grad for t in tensors)
        ys = fn.forward(*arrays, **attrs)
        single = not isinstance(ys, tuple)
        outputs = [Tensor(y, requires_grad=record) for y in ((ys,) if single else ys)]
        if record:
            fn.inputs = tensors
            fn.generation = max(t.generation for t in tensors)
            for out in outputs:
                out.creator = fn
                out.generation = fn.generation + 1
            fn.outputs = [weakref.ref(out) for out in outputs]
            fn.output_meta = [(out.shape, out.dtype) for out in outputs]
        return outputs[0] if single else tuple(outputs)
