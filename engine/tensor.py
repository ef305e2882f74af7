"""Tensor: an ndarray plus the autograd bookkeeping (grad, requires_grad, creator, generation).

Operators call the functional wrappers in engine.ops, imported lazily to break the import cycle.
`backward()` walks the graph iteratively, newest Function first, so deep graphs never hit Python's
recursion limit. Leaf gradients accumulate across calls until zeroed; intermediate ones are freed
unless `retain_grad=True`.
"""

from __future__ import annotations

import heapq
import itertools

import numpy as np

from engine import backend as _backend


def _leaf_uses(root) -> dict:
    """id(leaf) -> [number of (Function, input) edges reaching it, leaf], over the Functions
    backward can reach from `root` (through inputs that require grad)."""
    uses, stack, seen = {}, [root], {id(root)}
    while stack:
        for x in stack.pop().inputs:
            if not x.requires_grad:
                continue
            if x.creator is None:
                uses.setdefault(id(x), [0, x])[0] += 1
            elif id(x.creator) not in seen:
                seen.add(id(x.creator))
                stack.append(x.creator)
    return uses


class Tensor:
    """A NumPy (or CuPy) array that records the ops applied to it when `requires_grad` is True."""

    __array_priority__ = 100  # make `ndarray + Tensor` call Tensor.__radd__

    def __init__(self, data, requires_grad: bool = False):
        if isinstance(data, Tensor):
            data = data.data
        if _backend.device_of(data) == "cpu":
            data = np.asarray(data)
            if data.dtype.kind in "biu" and requires_grad:
                raise TypeError(
                    f"only floating-point tensors can require gradients, got {data.dtype}"
                )
            if data.dtype == np.float16 or data.dtype.kind not in "fbiu":
                raise TypeError(f"Tensor data must be float32/float64/int/bool, got {data.dtype}")
        self.data = data
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self.creator = None
        self.generation = 0

    # ---- array-like properties ----
    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return self.data.size

    @property
    def device(self) -> str:
        return _backend.device_of(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({self.data!r}{grad})"

    def numpy(self) -> np.ndarray:
        """The data as a NumPy array (copied from the GPU if needed)."""
        return _backend.to_device(self.data, "cpu")

    def item(self) -> float:
        if self.size != 1:
            raise ValueError(f"item() needs a tensor of one element, got shape {self.shape}")
        return self.numpy().reshape(()).item()

    def detach(self) -> Tensor:
        """The same data, cut from the graph."""
        return Tensor(self.data)

    def to(self, device: str) -> Tensor:
        """A copy on `device` ("cpu" or "cuda"), cut from the graph; self if already there."""
        if self.device == device:
            return self
        return Tensor(_backend.to_device(self.data, device), requires_grad=self.requires_grad)

    def astype(self, dtype) -> Tensor:
        from engine.ops.elementwise import cast

        return cast(self, dtype)

    def zero_grad(self) -> None:
        self.grad = None

    # ---- autograd ----
    def backward(self, grad=None, retain_grad: bool = False, on_leaf_ready=None) -> None:
        """Accumulate d(self)/d(leaf) * grad into every leaf's `.grad`.

        grad defaults to 1 for a one-element tensor. The walk pops Functions by generation, newest
        first, from a heap, so each runs once after all its outputs' gradients are summed.
        on_leaf_ready: optional callable(leaf), called once for every leaf that requires grad as
        soon as its `.grad` is final for this call (every Function taking it as input has run),
        the leaves no gradient reached at the end; data-parallel training starts its gradient
        allreduce there (engine.distributed), while the rest of backward still runs.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad")
        xp = _backend.get_backend(self.data).xp
        if grad is None:
            if self.size != 1:
                raise RuntimeError(
                    f"backward() without grad needs one element, got shape {self.shape}"
                )
            grad = xp.ones_like(self.data)
        grad = grad.data if isinstance(grad, Tensor) else xp.asarray(grad, dtype=self.dtype)
        if grad.shape != self.shape:
            raise ValueError(f"backward grad shape {grad.shape} != tensor shape {self.shape}")
        if self.creator is None:
            self._accumulate(grad)
            if on_leaf_ready is not None:
                on_leaf_ready(self)
            return
        # uses left per leaf (id -> [count, leaf]): counted only when someone listens
        uses = _leaf_uses(self.creator) if on_leaf_ready is not None else None
        pending = {id(self): grad}  # gradients of non-leaf tensors still to be passed on
        counter = itertools.count()  # tie-breaker: heapq never compares Functions
        heap = [(-self.creator.generation, next(counter), self.creator)]
        seen = {id(self.creator)}
        while heap:
            fn = heapq.heappop(heap)[2]
            gys = []
            for ref, (shape, dtype) in zip(fn.outputs, fn.output_meta, strict=True):
                out = ref()  # an output nobody holds any more contributes a zero gradient
                g = pending.pop(id(out), None) if out is not None else None
                g = xp.zeros(shape, dtype=dtype) if g is None else g
                if retain_grad and out is not None and out is not self:
                    out._accumulate(g)
                gys.append(g)
            gxs = fn.run_backward(*gys)
            gxs = gxs if isinstance(gxs, tuple) else (gxs,)
            for x, gx in zip(fn.inputs, gxs, strict=True):
                if uses is not None and x.creator is None and x.requires_grad:
                    uses[id(x)][0] -= 1  # the leaf's gradient is final once this reaches 0
                if gx is None or not x.requires_grad:
                    if uses is not None and id(x) in uses and uses[id(x)][0] == 0:
                        on_leaf_ready(uses.pop(id(x))[1])
                    continue
                if gx.shape != x.shape:
                    raise RuntimeError(
                        f"{fn.name}.backward returned shape {gx.shape} for an input of {x.shape}"
                    )
                if gx.dtype != x.dtype:  # type promotion in forward (float32 op float64)
                    gx = gx.astype(x.dtype)
                if x.creator is None:
                    x._accumulate(gx)
                    if uses is not None and uses[id(x)][0] == 0:
                        on_leaf_ready(uses.pop(id(x))[1])
                else:
                    pending[id(x)] = gx if id(x) not in pending else pending[id(x)] + gx
                    if id(x.creator) not in seen:
                        seen.add(id(x.creator))
                        heapq.heappush(heap, (-x.creator.generation, next(counter), x.creator))
        for _, leaf in (uses or {}).values():  # behind Functions no gradient reached
            on_leaf_ready(leaf)

    def _accumulate(self, g) -> None:
        # out of place: g may be an array another tensor also holds
        self.grad = g if self.grad is None else self.grad + g

    # ---- operators: each calls a functional wrapper ----
    def __add__(self, other):
        return _ops().add(self, other)

    def __radd__(self, other):
        return _ops().add(other, self)

    def __sub__(self, other):
        return _ops().sub(self, other)

    def __rsub__(self, other):
        return _ops().sub(other, self)

    def __mul__(self, other):
        return _ops().mul(self, other)

    def __rmul__(self, other):
        return _ops().mul(other, self)

    def __truediv__(self, other):
        return _ops().div(self, other)

    def __rtruediv__(self, other):
        return _ops().div(other, self)

    def __pow__(self, other):
        return _ops().pow(self, other)

    def __rpow__(self, other):
        return _ops().pow(other, self)

    def __matmul__(self, other):
        return _ops().matmul(self, other)

    def __rmatmul__(self, other):
        return _ops().matmul(other, self)

    def __neg__(self):
        return _ops().neg(self)

    def __getitem__(self, index):
        return _ops().getitem(self, index)

    def sum(self, axis=None, keepdims: bool = False):
        return _ops().sum(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims: bool = False):
        return _ops().mean(self, axis=axis, keepdims=keepdims)

    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return _ops().reshape(self, tuple(shape))

    def transpose(self, *axes):
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        return _ops().transpose(self, tuple(axes) if axes else None)

    @property
    def T(self):
        return self.transpose()

    def exp(self):
        return _ops().exp(self)

    def log(self):
        return _ops().log(self)

    def relu(self):
        return _ops().relu(self)


def _ops():
    import engine.functional as F

    return F


def as_tensor(x, like: Tensor | None = None) -> Tensor:
    """x itself if a Tensor; otherwise a constant Tensor. Python scalars take `like`'s dtype, so
    `float32_tensor * 2.0` stays float32."""
    if isinstance(x, Tensor):
        return x
    if like is not None and np.isscalar(x):
        return Tensor(_backend.get_backend(like.data).xp.asarray(x, dtype=like.dtype))
    return Tensor(x)
