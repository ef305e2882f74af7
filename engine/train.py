"""The training loop: mini-batches from an explicit seed, a progress bar, validation after each epoch."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

import engine.functional as F
from engine import nn, optim
from engine.function import no_grad
from engine.tensor import Tensor


def batches(
    n: int, batch_size: int, rng: np.random.Generator | None = None
) -> Iterator[np.ndarray]:
    """Index arrays covering range(n) in chunks of batch_size, shuffled when rng is given."""
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def predict_logits(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits (n, k) of `model` on images x (n, c, h, w), in eval mode and without a graph."""
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            out = [model(Tensor(x[idx])).numpy() for idx in batches(len(x), batch_size)]
    finally:
        model.train(was_training)
    return np.concatenate(out)


def evaluate(
    model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 256
) -> dict[str, float]:
    """Mean cross-entropy and accuracy of `model` on (x, y)."""
    logits = predict_logits(model, x, batch_size)
    loss = F.softmax_cross_entropy(logits, y).item()
    return {"loss": loss, "accuracy": float((logits.argmax(axis=1) == y).mean())}


@dataclass
class History:
    """Per-epoch metrics, one list per name ("loss", "accuracy", "val_loss", "val_accuracy")."""

    epochs: dict[str, list[float]] = field(default_factory=dict)

    def add(self, **metrics: float) -> None:
        for name, value in metrics.items():
            self.epochs.setdefault(name, []).append(float(value))


def train_epoch(model, optimizer, x, y, batch_size, rng, on_batch: Callable | None = None):
    """One pass over (x, y) in shuffled mini-batches; returns mean loss and accuracy over the epoch."""
    model.train()
    total_loss = correct = 0.0
    for idx in batches(len(x), batch_size, rng):
        logits = model(Tensor(x[idx]))
        loss = F.softmax_cross_entropy(logits, y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(idx)
        correct += float((logits.data.argmax(axis=1) == y[idx]).sum())
        if on_batch is not None:
            on_batch(loss.item())
    return total_loss / len(x), correct / len(x)


def fit(model: nn.Module, optimizer: optim.Optimizer, train: tuple[np.ndarray, np.ndarray],
        val: tuple[np.ndarray, np.ndarray] | None = None, *, epochs: int = 5, batch_size: int = 64,
        seed: int = 0, progress: bool = True) -> History:  # fmt: skip
    """Train `model` on train=(x, y) for `epochs`, validating on `val` after each epoch.

    x: float32 (n, c, h, w); y: int (n,). GD optimizers take the whole set as one batch.
    Shuffling draws from np.random.default_rng(seed), so a run is reproducible.
    """
    from tqdm.auto import tqdm

    x, y = train
    if isinstance(optimizer, optim.GD):
        batch_size = len(x)
    rng = np.random.default_rng(seed)
    history = History()
    for epoch in range(1, epochs + 1):
        n_batches = -(-len(x) // batch_size)
        with tqdm(
            total=n_batches, desc=f"epoch {epoch}/{epochs}", disable=not progress, leave=False
        ) as bar:

            def tick(loss_value: float, bar=bar) -> None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}")

            loss, acc = train_epoch(model, optimizer, x, y, batch_size, rng, on_batch=tick)
        metrics = {"loss": loss, "accuracy": acc}
        if val is not None:
            v = evaluate(model, *val)
            metrics.update(val_loss=v["loss"], val_accuracy=v["accuracy"])
        history.add(**metrics)
        if progress:
            print(
                f"epoch {epoch:3d}/{epochs}  "
                + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            )
    return history
