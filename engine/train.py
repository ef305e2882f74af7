"""The training loop: shuffled mini-batches from one explicit Generator, optional augmentation, a
progress bar, validation after each epoch, learning-rate schedules, early stopping, and a run
directory with checkpoints that resume bit for bit.

Run directory written by `fit(..., run_dir=...)`:
- checkpoint.npz  the last finished epoch: weights, optimizer buffers, RNG states, history (resume);
- model.npz       the weights to use: the epoch with the lowest validation loss (training loss
                  without validation data); no optimizer state;
- metrics.json    the per-epoch history, rewritten (atomically) after every epoch.
All three are written before the epoch's line is printed, so after Ctrl-C the files hold at least
every epoch shown.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

import engine.functional as F
from engine import amp, backend, graph, metrics, nn, optim
from engine.checkpoint import (
    atomic_write,
    load_checkpoint,
    remove_stale_temporaries,
    rng_from_state,
    rng_state,
    save_checkpoint,
)
from engine.errors import ArgumentError, MedgradError
from engine.function import no_grad
from engine.tensor import Tensor

if TYPE_CHECKING:  # engine.distributed is imported only when training data-parallel
    from engine.distributed import Communicator, Shard


def batches(
    n: int, batch_size: int, rng: np.random.Generator | None = None
) -> Iterator[np.ndarray]:
    """Index arrays covering range(n) in chunks of batch_size, shuffled when rng is given."""
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def on_device_of(model: nn.Module, a: np.ndarray) -> Tensor:
    """`a` as a constant Tensor on the device of the model's parameters (CuPy for "cuda")."""
    params = model.parameters()
    return Tensor(backend.to_device(a, params[0].device) if params else a)


def predict_logits(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits (n, k) of `model` on images x (n, c, h, w), in eval mode and without a graph."""
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            out = [
                model(on_device_of(model, x[idx])).numpy() for idx in batches(len(x), batch_size)
            ]
    finally:
        model.train(was_training)
    return np.concatenate(out)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (n, k) logits in float64 (max subtracted, so any logit is safe)."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def predict_proba(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Class probabilities float64 (n, k) of `model` on x (n, c, h, w)."""
    return softmax(predict_logits(model, x, batch_size))


def evaluate(
    model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 256
) -> dict[str, float]:
    """Mean cross-entropy ("loss") and every engine.metrics.summary entry of `model` on (x, y)."""
    logits = predict_logits(model, x, batch_size)
    loss = F.softmax_cross_entropy(logits, y, ignore_index=None).item()
    return {"loss": loss, **metrics.summary(y, softmax(logits))}


@dataclass
class History:
    """Per-epoch metrics, one list per name ("loss", "accuracy", "val_loss", "lr", ...)."""

    epochs: dict[str, list[float | None]] = field(default_factory=dict)

    def add(self, **values: float | None) -> None:
        for name, value in values.items():
            self.epochs.setdefault(name, []).append(None if value is None else float(value))


@dataclass
class Schedule:
    """Learning rate per epoch (0-based) from the base rate lr0.

    constant: lr0. step: lr0 * gamma ** (epoch // step_size). cosine: from lr0 down to min_lr
    over `epochs` epochs, lr0 * ... = min_lr + (lr0 - min_lr) (1 + cos(pi epoch / epochs)) / 2.
    """

    kind: str = "constant"
    step_size: int = 10
    gamma: float = 0.1
    min_lr: float = 0.0

    KINDS = ("constant", "step", "cosine")

    def __post_init__(self):
        if self.kind not in self.KINDS:
            raise ValueError(f"schedule must be one of {self.KINDS}, got {self.kind!r}")
        if self.step_size < 1:
            raise ValueError(f"step_size must be >= 1, got {self.step_size}")

    def lr(self, lr0: float, epoch: int, epochs: int) -> float:
        if self.kind == "step":
            return lr0 * self.gamma ** (epoch // self.step_size)
        if self.kind == "cosine":
            return self.min_lr + (lr0 - self.min_lr) * (1 + math.cos(math.pi * epoch / epochs)) / 2
        return lr0


def train_epoch(
    model,
    optimizer,
    x,
    y,
    batch_size,
    rng,
    on_batch: Callable | None = None,
    augment: Callable | None = None,
    scaler: amp.LossScaler | None = None,
    step: graph.Step | None = None,
):
    """One pass over (x, y) in mini-batches shuffled by `rng`; returns mean loss and accuracy.

    augment(batch, rng) -> batch, if given, transforms each batch with draws from the same rng,
    so one Generator state fixes both the order and the augmentation of every later epoch.
    scaler: fp16 loss scaling (engine.amp); step: a captured step (engine.graph) that trains on
    each batch instead, its loss then checked after the update rather than before.
    """
    model.train()
    total_loss = correct = 0.0
    for idx in batches(len(x), batch_size, rng):
        xb = x[idx] if augment is None else augment(x[idx], rng)
        yb = on_device_of(model, y[idx]).data
        if step is not None:
            value = float(step(xb, yb))
            logits = Tensor(step.logits)
        else:
            logits = model(on_device_of(model, xb))
            loss = class_loss(logits, yb)
            value = loss.item()
        if not math.isfinite(value):  # eager: checked before the update, so the weights stay usable
            raise DivergedError(
                f"the training loss became {value}: non-finite inputs, labels outside "
                f"[0, {logits.shape[1]}) (not checked per step on cuda), or a learning rate too high"
            )
        if step is None:
            amp.backward_step(loss, optimizer, scaler)
        total_loss += value * len(idx)
        correct += float((logits.data.argmax(axis=1) == yb).sum())
        if on_batch is not None:
            on_batch(value)
    return total_loss / len(x), correct / len(x)


def class_loss(logits: Tensor, t) -> Tensor:
    """The classification loss fit trains with: mean softmax cross-entropy over every row."""
    # class labels have nothing to ignore: ignore_index=None keeps the fused kernels on cuda
    return F.softmax_cross_entropy(logits, t, ignore_index=None)


def model_rngs(model: nn.Module) -> list[nn.Module]:
    """Sub-modules that draw random numbers while training (Dropout's `rng`)."""
    return [m for m in model.modules() if isinstance(getattr(m, "rng", None), np.random.Generator)]


class DivergedError(MedgradError, ArithmeticError):
    """The training loss became NaN or infinite; raised before the step that would spread it."""


class ResumeError(MedgradError, ValueError):
    """--resume with a checkpoint that does not match this run's model, optimizer or settings."""


def _write_json(path: Path, obj: dict) -> None:
    text = json.dumps(obj, indent=1, allow_nan=False)
    atomic_write(path, lambda f: f.write(text.encode()))


def fit(
    model: nn.Module,
    optimizer: optim.Optimizer,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    epochs: int = 5,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    schedule: Schedule | None = None,
    patience: int | None = None,
    augment: Callable | None = None,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    preprocessing: dict | None = None,
    classes: list[str] | None = None,
    on_epoch_end: Callable[[int, dict], bool | None] | None = None,
    comm: Communicator | None = None,
    shard: Shard | None = None,
    precision: str = "fp32",
    capture: bool = False,
) -> History:
    """Train `model` on train=(x, y) for `epochs`, validating on `val` after each epoch.

    x: float32 (n, c, h, w); y: int (n,). GD optimizers take the whole set as one batch.
    Shuffling and augmentation draw from np.random.default_rng(seed), so a run is reproducible.
    schedule sets optimizer.lr each epoch from the optimizer's initial lr. patience: stop after
    that many epochs without a lower validation loss. run_dir: write checkpoint.npz, model.npz
    and metrics.json there after every epoch (see the module docstring); resume=True continues
    from run_dir/checkpoint.npz, restoring weights, optimizer buffers and every RNG state, so the
    result equals an uninterrupted run bit for bit. on_epoch_end(epoch, metrics) returning True
    stops training after that epoch (the checkpoint is written first).

    Data-parallel (engine.distributed): comm, a Communicator, and shard, the Shard whose rows
    train and val hold on this rank (val: this rank's part of the validation set). batch_size
    stays the global batch; gradients are averaged over ranks weighted by sample counts, so N
    ranks give one process's model; rank 0's weights and optimizer state are broadcast at the
    start (after resume); only rank 0 writes run_dir and prints; validation is gathered.

    precision: "fp32" (default), "bf16" or "fp16", the policy of engine.amp for the training
    steps (validation runs in fp32 on the fp32 master weights); fp16 adds a dynamic loss scaler
    whose state the checkpoint carries. capture: train through engine.graph.capture (a CUDA graph
    replayed per batch on the cupy flavour; elsewhere eager, with one CaptureWarning saying why).
    """
    from tqdm.auto import tqdm

    x, y = train
    amp.check_precision(precision)
    if capture and comm is not None:
        raise ArgumentError("a captured step (--graph) does not run data-parallel (--distributed)")
    scaler = amp.LossScaler() if precision == "fp16" else None
    base_optimizer = getattr(optimizer, "optimizer", optimizer)  # unwrapped DistributedOptimizer
    if comm is not None:
        from engine import distributed

        shard = shard or distributed.Shard(np.arange(len(x)), len(x))
        if not isinstance(optimizer, distributed.DistributedOptimizer):
            optimizer = distributed.DistributedOptimizer(optimizer, comm)
        if comm.rank != 0:  # only rank 0 writes files and prints; the others read its state
            run_dir, progress = None, False
    n_train = shard.n_total if comm is not None else len(x)
    if isinstance(base_optimizer, optim.GD):
        batch_size = n_train
    schedule = schedule or Schedule()
    rng = np.random.default_rng(seed)
    history = History()
    lr0, start, best = optimizer.lr, 0, {"loss": math.inf, "epoch": 0, "bad_epochs": 0}
    settings = {
        "batch_size": batch_size,
        "seed": seed,
        "schedule": asdict(schedule),
        "patience": patience,
        "n_train": n_train,
        "lr0": lr0,
    }
    if precision != "fp32":  # fp32 runs keep the settings (and so the checkpoints) they had
        settings["precision"] = precision
    run_dir = Path(run_dir) if run_dir is not None else None
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run_dir)
    if resume:
        if run_dir is None and (comm is None or comm.rank == 0):
            raise ResumeError("resume needs the run directory that holds checkpoint.npz")
        state = None
        if comm is None or comm.rank == 0:
            state = _restore(run_dir / "checkpoint.npz", model, base_optimizer, settings)
            state = {k: state.get(k) for k in ("rng", "history", "epoch", "best", "loss_scaler")}
        if comm is not None:  # every rank continues from rank 0's checkpoint
            state = comm.bcast_object(state)
        rng = rng_from_state(state["rng"])
        history.epochs, start, best = state["history"], state["epoch"], state["best"]
        if best["bad_epochs"] == -1:  # the previous run had stopped early: nothing left to do
            return history
        if scaler is not None and state["loss_scaler"] is not None:
            scaler.load_state_dict(state["loss_scaler"])
    if comm is not None:
        distributed.broadcast_model(model, comm)
        distributed.broadcast_optimizer(base_optimizer, comm)
    step = None
    if capture:
        with amp.autocast(precision):
            example = (x[: min(batch_size, len(x))], y[: min(batch_size, len(x))])
            step = graph.capture(model, class_loss, optimizer, example, scaler=scaler)
    for epoch in range(start, epochs):
        optimizer.lr = schedule.lr(lr0, epoch, epochs)
        n_batches = -(-n_train // batch_size)
        with tqdm(
            total=n_batches, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False
        ) as bar:

            def tick(loss_value: float, bar=bar) -> None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}")

            if comm is None:
                with amp.autocast(precision):
                    loss, acc = train_epoch(
                        model, optimizer, x, y, batch_size, rng, tick, augment, scaler, step
                    )
            else:
                loss, acc = distributed.train_epoch_sharded(
                    model,
                    optimizer,
                    x,
                    y,
                    shard,
                    batch_size,
                    rng,
                    seed=seed,
                    epoch=epoch,
                    on_batch=tick,
                    augment=augment,
                )
        row = {"loss": loss, "accuracy": acc, "lr": optimizer.lr}
        if val is not None:
            if comm is None:
                v = evaluate(model, *val)
            else:
                v = distributed.evaluate_gathered(model, *val, comm)
            row.update(
                val_loss=v["loss"],
                val_accuracy=v["accuracy"],
                val_recall=v["recall"],
                val_f1=v["f1"],
                val_auc=v["auc"],
            )
        history.add(**row)
        monitored = row.get("val_loss", loss)
        improved = monitored < best["loss"]
        if improved:
            best = {"loss": monitored, "epoch": epoch + 1, "bad_epochs": 0}
        else:
            best["bad_epochs"] += 1
        stop = patience is not None and best["bad_epochs"] >= patience
        if run_dir is not None:
            state = {
                "epoch": epoch + 1,
                "history": history.epochs,
                "best": best,
                "rng": rng_state(rng),
                "model_rngs": [rng_state(m.rng) for m in model_rngs(model)],
                "settings": settings,
            }
            if scaler is not None:
                state["loss_scaler"] = scaler.state_dict()
            if stop:
                state["best"] = {**best, "bad_epochs": -1}  # marks "stopped early" for resume
            meta = {"preprocessing": preprocessing, "classes": classes}
            save_checkpoint(
                run_dir / "checkpoint.npz",
                model,
                optimizer=base_optimizer,
                train_state=state,
                **meta,
            )
            if improved:
                save_checkpoint(
                    run_dir / "model.npz", model, train_state={"epoch": epoch + 1}, **meta
                )
            _write_json(
                run_dir / "metrics.json",
                {
                    "history": history.epochs,
                    "best_epoch": best["epoch"],
                    "epochs_run": epoch + 1,
                    "stopped_early": stop,
                },
            )
        if progress:  # after the files: an epoch printed is an epoch saved (Ctrl-C safe)
            print(
                f"epoch {epoch + 1:3d}/{epochs}  "
                + "  ".join(f"{k} {v:.4g}" for k, v in row.items() if v is not None)
            )
        if stop:
            if progress:
                print(f"early stop: no lower validation loss for {patience} epochs")
            break
        if on_epoch_end is not None and on_epoch_end(epoch + 1, row):
            break
    return history


def _restore(path: Path, model: nn.Module, optimizer: optim.Optimizer, settings: dict) -> dict:
    """Load checkpoint `path` into model and optimizer after checking it belongs to this run."""
    ckpt = load_checkpoint(path)
    state = ckpt.train_state
    differ = []
    if ckpt.model_config != getattr(model, "config", None):
        differ.append(f"model {ckpt.model_config} != {getattr(model, 'config', None)}")
    saved_opt = (ckpt.optimizer or {}).get("name")
    if saved_opt != type(optimizer).__name__.lower():
        differ.append(f"optimizer {saved_opt} != {type(optimizer).__name__.lower()}")
    saved = state.get("settings", {})
    for key in [*settings, *(k for k in saved if k not in settings)]:  # both ways: "precision"
        if saved.get(key) != settings.get(key):
            differ.append(f"{key} {saved.get(key)} != {settings.get(key)}")
    if differ:
        raise ResumeError(f"{path}: cannot resume a different run: " + "; ".join(differ))
    try:
        model.load_state_dict(ckpt.weights)
    except (KeyError, ValueError) as exc:
        raise ResumeError(f"{path}: weights do not fit the model: {exc}") from exc
    optimizer.load_state_dict(ckpt.optimizer_state)
    for module, saved in zip(model_rngs(model), state["model_rngs"], strict=True):
        module.rng = rng_from_state(saved)
    return state
