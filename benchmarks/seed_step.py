"""The seed CNN's training step and inference, for the engine (per kernel flavour) and for PyTorch.

Both are built from the same initial weights, so their first losses can be compared before timing.
One training step = zero_grad, forward, softmax cross-entropy, backward, SGD(momentum 0.9) update.

The update runs in full but with lr 0, so every timed step does the same work on the initial
weights. Why: the numba flavour's conv backward only touches the pooling windows that pass a
gradient (kernels/numba_cpu/sparse_grad.py), so its cost follows how many ReLUs are alive; with
lr 0.01 on this noise batch, 90% of conv2's windows die within five steps (measured: 74% alive at
init, 8-13% after), which would time it on an unrepresentatively dead network. At the initial
weights 74% of conv2's and 93% of conv1's windows pass a gradient (`benchmarks.profile_step` prints
the fractions). The dense contenders (numpy flavour, PyTorch) cost the same either way.
`all_live=True` shifts the conv biases (+10 and +1e4) so that every window passes a gradient:
the window-driven backward's worst case (`python -m benchmarks.compare --all-live`).
"""

from __future__ import annotations

import contextlib

import numpy as np

import engine.functional as F
import models
from benchmarks import harness
from engine import backend, no_grad, optim
from engine.tensor import Tensor

LR, MOMENTUM = 0.01, 0.9  # the update's arguments; the timed steps then run at lr 0 (above)


def data(batch: int, seed: int = 0):
    """x (batch, 1, 28, 28) float32, t (batch,) int64 classes 0..9."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, batch)


def blas_threads(flavour: str, program: bool = True):
    """The BLAS threads a contender's step runs with, whatever another contender left behind.

    numpy flavour: NumPy's BLAS on THREADS threads, its default. numba flavour with `program`:
    every BLAS on one thread for the whole step, the setting a training program opts into (the
    medgrad CLI, as it opts into tune_malloc): the flavour runs its own thread pool, and the
    dense layers' small NumPy matmuls on a 2-thread OpenBLAS cost 3-5x more on this shared
    machine (its idle workers spin against the pool; measured with benchmarks.profile_step).
    Without `program` (an embedding program's default), the numba flavour limits BLAS only
    inside its own kernels that call it (kernels/numba_cpu/tasks.py) and the dense layers run
    at the process's setting."""
    global _controller
    if flavour == "numba" and program:
        from kernels.numba_cpu.tasks import single_threaded_blas

        return single_threaded_blas
    if flavour != "numpy":
        return contextlib.nullcontext()
    if _controller is None:  # built once: inspecting the loaded libraries costs milliseconds
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    return _controller.limit(limits=harness.THREADS, user_api="blas")


_controller = None


def initial_model(seed: int, all_live: bool):
    """The engine's seed CNN at its initial weights; all_live: conv biases shifted (see above)."""
    model = models.get("seed_cnn", rng=np.random.default_rng(seed))
    if all_live:
        model[0].bias.data += 10.0  # conv1: every unit positive on this batch
        model[3].bias.data += 1e4  # conv2: likewise (its inputs are now large, of either sign)
    return model


class EngineStep:
    """The engine's seed CNN on one kernel flavour ("numpy" | "numba"); program=False: the numba
    flavour without a training program's BLAS setting (see blas_threads)."""

    def __init__(
        self, flavour: str, batch: int, seed: int = 0, all_live: bool = False, program=True
    ):
        self.flavour, self.program = flavour, program
        self.model = initial_model(seed, all_live)
        self.opt = optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)
        self.opt.lr = 0.0  # weights frozen (see above); the optimizer refuses lr 0 when built
        self.x, self.t = data(batch, seed)

    def train_step(self) -> float:
        with backend.use_kernels(self.flavour), blas_threads(self.flavour, self.program):
            self.opt.zero_grad()
            loss = F.softmax_cross_entropy(self.model(Tensor(self.x)), self.t, ignore_index=None)
            loss.backward()
            self.opt.step()
        return float(loss.data)

    def infer(self) -> np.ndarray:
        with backend.use_kernels(self.flavour), no_grad(), blas_threads(self.flavour, self.program):
            return self.model(Tensor(self.x)).data


class TorchStep:
    """The same network in PyTorch eager (float32, torch.set_num_threads(2)), same weights."""

    def __init__(self, torch, batch: int, seed: int = 0, all_live: bool = False):
        nn = torch.nn
        self.torch = torch
        self.model = nn.Sequential(
            nn.Conv2d(1, 32, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(1600, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )
        state = initial_model(seed, all_live).state_dict()
        self.model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.0, momentum=MOMENTUM)
        x, t = data(batch, seed)
        self.x, self.t = torch.from_numpy(x), torch.from_numpy(t)

    def train_step(self) -> float:
        self.opt.zero_grad()
        loss = self.torch.nn.functional.cross_entropy(self.model(self.x), self.t)
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def infer(self) -> np.ndarray:
        with self.torch.no_grad():
            return self.model(self.x).numpy()
