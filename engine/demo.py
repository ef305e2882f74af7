"""The main job behind `make demo`: train the seed CNN with SGD and with Adam on the built-in data."""

from __future__ import annotations

import time

import numpy as np

import models
from engine import optim
from engine.data.phantoms import make_phantoms
from engine.train import evaluate, fit

# Settings that reach >= 95% test accuracy with both optimizers on this machine in about 20 s each.
OPTIMIZER_SETTINGS = {"sgd": {"lr": 0.05, "momentum": 0.9}, "adam": {"lr": 2e-3}}


def train_phantoms(optimizer: str, *, n_train: int = 4000, n_test: int = 1000, epochs: int = 6,
                   batch_size: int = 64, seed: int = 0, progress: bool = True) -> dict[str, float]:  # fmt: skip
    """Train seed_cnn (2 classes) on lesion phantoms with `optimizer`; return its test metrics."""
    x, y = make_phantoms(n_train + n_test, size=28, seed=seed)
    train, test = (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])
    model = models.get("seed_cnn", num_classes=2, rng=np.random.default_rng(seed))
    opt = optim.OPTIMIZERS[optimizer](model.parameters(), **OPTIMIZER_SETTINGS[optimizer])
    fit(model, opt, train, test, epochs=epochs, batch_size=batch_size, seed=seed, progress=progress)
    return evaluate(model, *test)


def run(seed: int = 0, progress: bool = True) -> dict[str, dict[str, float]]:
    results = {}
    for name in OPTIMIZER_SETTINGS:
        print(
            f"== seed_cnn on synthetic lesion phantoms, optimizer {name} {OPTIMIZER_SETTINGS[name]}"
        )
        start = time.perf_counter()
        results[name] = train_phantoms(name, seed=seed, progress=progress)
        print(f"   test accuracy {results[name]['accuracy']:.4f} "
              f"(loss {results[name]['loss']:.4f}, {time.perf_counter() - start:.1f} s)")  # fmt: skip
    return results
