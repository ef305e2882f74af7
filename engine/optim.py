"""Optimizers: GD, SGD (momentum, Nesterov, weight decay) and Adam, with PyTorch's update rules.

`step()` updates `p.data` in place through a named kernel and builds no graph; parameters whose grad
is None are skipped. `state_dict()` holds the step count and buffers, so a run can resume exactly.
"""

from __future__ import annotations

import contextlib

import numpy as np

from engine import backend


class Optimizer:
    """Base class: holds the parameters, the learning rate and the step count.

    Subclasses implement `_update(i, p, k)` (one parameter, through kernel table k) and
    `_buffers()` (their per-parameter state, by name) for state_dict.
    """

    def __init__(self, params, lr: float):
        self.params = list(params)
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        if not lr > 0:
            raise ValueError(f"learning rate must be > 0, got {lr}")
        self.lr = float(lr)
        self.steps = 0
        self._device_hyper = None  # (step, lr) as 0-d device arrays while a CUDA graph records

    def hyper(self):
        """(step, lr) as the update kernels get them: this step's number (1-based) and the rate;
        host numbers, or 0-d device arrays inside `device_hyper` (engine.graph)."""
        return self._device_hyper if self._device_hyper is not None else (self.steps, self.lr)

    @contextlib.contextmanager
    def device_hyper(self, step, lr):
        """Pass 0-d arrays `step` and `lr` to the update kernels instead of host numbers, so that
        a captured step (engine.graph) reads them from device memory at every replay."""
        self._device_hyper = (step, lr)
        try:
            yield
        finally:
            self._device_hyper = None

    def zero_grad(self) -> None:
        """Drop every parameter's gradient (set to None) before the next backward."""
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        """One update of every parameter that has a gradient, in place on p.data."""
        self.steps += 1
        for i, p in enumerate(self.params):
            if p.grad is not None:
                self._update(i, p, backend.get_backend(p.data, p.grad).k)

    def _update(self, i, p, k) -> None:
        raise NotImplementedError

    # buffers, by parameter index, so a checkpoint can carry them
    def state_dict(self) -> dict[str, np.ndarray]:
        """{"steps", "lr", "<buffer>.<param index>": NumPy copy}; unset buffers are left out."""
        state = {"steps": np.asarray(self.steps), "lr": np.asarray(self.lr)}
        for name, buffers in self._buffers().items():
            for i, b in enumerate(buffers):
                if b is not None:
                    state[f"{name}.{i}"] = backend.to_device(b, "cpu").copy()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore steps, lr and the buffers, each cast to its parameter's dtype and device."""
        self.steps, self.lr = int(state["steps"]), float(state["lr"])
        for name, buffers in self._buffers().items():
            for i, p in enumerate(self.params):
                key = f"{name}.{i}"
                if key in state:
                    buffers[i] = backend.to_device(np.asarray(state[key], dtype=p.dtype), p.device)

    def _buffers(self) -> dict[str, list]:
        return {}


class SGD(Optimizer):
    """p -= lr * step, step from g + wd p with momentum mu (and Nesterov's look-ahead), as in PyTorch."""

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ):
        super().__init__(params, lr)
        if momentum < 0 or weight_decay < 0:
            raise ValueError(
                f"momentum and weight_decay must be >= 0, got {momentum}, {weight_decay}"
            )
        if nesterov and momentum == 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.momentum, self.nesterov, self.weight_decay = momentum, nesterov, weight_decay
        self.velocity = [None] * len(self.params)

    def _update(self, i, p, k):
        if self.momentum and self.velocity[i] is None:
            self.velocity[i] = backend.get_backend(p.data).xp.zeros_like(p.data)
        k.sgd_update(
            p.data,
            p.grad,
            self.velocity[i],
            self.hyper()[1],
            self.momentum,
            self.nesterov,
            self.weight_decay,
        )

    def _buffers(self):
        return {"velocity": self.velocity}


class GD(SGD):
    """Plain gradient descent, p -= lr * grad: the source article's rule, meant for full-batch steps
    (the training loop feeds the whole training set as one batch)."""

    def __init__(self, params, lr: float):
        super().__init__(params, lr)


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction; weight decay is L2 added to the gradient (torch.optim.Adam)."""

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        super().__init__(params, lr)
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"Adam betas must lie in [0, 1), got {betas}")
        self.betas, self.eps, self.weight_decay = (
            (float(betas[0]), float(betas[1])),
            eps,
            weight_decay,
        )
        self.m = [None] * len(self.params)
        self.v = [None] * len(self.params)

    def _update(self, i, p, k):
        if self.m[i] is None:
            xp = backend.get_backend(p.data).xp
            self.m[i], self.v[i] = xp.zeros_like(p.data), xp.zeros_like(p.data)
        step, lr = self.hyper()
        k.adam_update(
            p.data,
            p.grad,
            self.m[i],
            self.v[i],
            step,
            lr,
            *self.betas,
            self.eps,
            self.weight_decay,
        )

    def _buffers(self):
        return {"m": self.m, "v": self.v}


OPTIMIZERS = {"gd": GD, "sgd": SGD, "adam": Adam}
