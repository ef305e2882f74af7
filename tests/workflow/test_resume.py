"""Resume: N epochs == N/2 epochs, stop, resume for N/2 more, bit for bit on the CPU (F4), with a
mutation control showing the test would catch a lost RNG state; early stopping and schedules."""

from __future__ import annotations

import json

import numpy as np
import pytest

import engine.train as train_module
import models
from engine import optim
from engine.data.phantoms import make_phantoms
from engine.train import ResumeError, Schedule, fit

X, Y = make_phantoms(96, size=16, seed=0)
TRAIN, VAL = (X[:64], Y[:64]), (X[64:], Y[64:])


def _noise(batch, rng):
    """A stand-in augmentation that draws from the training rng (as engine.data.transforms does)."""
    return batch + np.float32(0.05) * rng.standard_normal(batch.shape, dtype=np.float32)


def _run(run_dir, *, epochs=4, resume=False, stop_at=None, optimizer="sgd"):
    model = models.get("seed_cnn", input_size=16, num_classes=2, rng=np.random.default_rng(0))
    opt = (
        optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        if optimizer == "sgd"
        else optim.Adam(model.parameters(), lr=2e-3)
    )
    history = fit(
        model,
        opt,
        TRAIN,
        VAL,
        epochs=epochs,
        batch_size=16,
        seed=3,
        progress=False,
        schedule=Schedule("cosine"),
        augment=_noise,
        run_dir=run_dir,
        resume=resume,
        on_epoch_end=(lambda epoch, _: epoch == stop_at) if stop_at else None,
    )
    return model, opt, history


def _same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(np.array_equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_resumed_run_equals_uninterrupted_bit_for_bit(tmp_path, optimizer):
    full, full_opt, full_history = _run(tmp_path / "full", optimizer=optimizer)
    _run(tmp_path / "split", stop_at=2, optimizer=optimizer)  # "killed" after epoch 2
    resumed, resumed_opt, resumed_history = _run(
        tmp_path / "split", resume=True, optimizer=optimizer
    )
    assert _same(full, resumed)
    assert full_history.epochs == resumed_history.epochs  # losses, metrics, lr: all 4 epochs
    for name, buf in full_opt.state_dict().items():
        np.testing.assert_array_equal(buf, resumed_opt.state_dict()[name], err_msg=name)
    saved = json.loads((tmp_path / "split" / "metrics.json").read_text())
    assert saved["epochs_run"] == 4 and len(saved["history"]["loss"]) == 4


def test_mutation_control_lost_rng_state_breaks_equality(tmp_path, monkeypatch):
    """Guards against a vacuous test: resuming with a fresh RNG instead of the saved one differs."""
    full, _, _ = _run(tmp_path / "full")
    _run(tmp_path / "split", stop_at=2)
    monkeypatch.setattr(train_module, "rng_from_state", lambda state: np.random.default_rng(3))
    resumed, _, _ = _run(tmp_path / "split", resume=True)
    assert not _same(full, resumed)


def test_resume_refuses_a_different_run(tmp_path):
    _run(tmp_path / "run", epochs=1)
    with pytest.raises(ResumeError, match="optimizer"):
        _run(tmp_path / "run", epochs=2, resume=True, optimizer="adam")
    with pytest.raises(ResumeError, match="checkpoint.npz"):
        fit(*_model_opt(), TRAIN, epochs=1, progress=False, resume=True)


def _model_opt():
    model = models.get("mlp", input_size=16, num_classes=2, hidden=8, rng=np.random.default_rng(0))
    return model, optim.SGD(model.parameters(), lr=0.1)


def test_early_stopping_and_best_model(tmp_path):
    model, opt = _model_opt()
    opt.lr = 50.0  # diverges: the validation loss stops improving at once
    history = fit(
        model,
        opt,
        TRAIN,
        VAL,
        epochs=20,
        batch_size=16,
        progress=False,
        patience=2,
        run_dir=tmp_path,
    )
    n = len(history.epochs["loss"])
    assert n < 20
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["stopped_early"] and saved["epochs_run"] == n
    best = int(np.argmin(history.epochs["val_loss"])) + 1
    assert saved["best_epoch"] == best and n == best + 2


def test_schedules():
    assert Schedule("step", step_size=2, gamma=0.5).lr(1.0, 5, 10) == 0.25
    cosine = Schedule("cosine", min_lr=0.1)
    assert cosine.lr(1.0, 0, 10) == 1.0 and cosine.lr(1.0, 5, 10) == pytest.approx(0.55)
    assert Schedule().lr(0.3, 7, 10) == 0.3
    with pytest.raises(ValueError, match="schedule"):
        Schedule("warmup")


def test_non_finite_loss_stops_before_the_step():
    """A NaN in the inputs (or, on cuda, a label out of range) stops training with the project's
    error before the optimizer spreads NaN into the weights."""
    from engine.train import DivergedError, train_epoch

    x, y = make_phantoms(16, seed=3)
    x[5, 0, 3, 3] = np.nan
    model = models.get("seed_cnn", num_classes=2, rng=np.random.default_rng(0))
    before = {k: v.copy() for k, v in model.state_dict().items()}
    opt = optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(DivergedError, match="nan"):
        train_epoch(model, opt, x, y, batch_size=16, rng=np.random.default_rng(0))
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_ctrl_c_during_a_save_leaves_every_printed_epoch_in_metrics_json(
    tmp_path, monkeypatch, capsys
):
    """An interrupt while epoch 2 is being saved: metrics.json (written atomically) must hold at
    least every epoch printed, and resume continues from what was saved."""
    real_save, calls = train_module.save_checkpoint, []

    def interrupted_save(path, *args, **kwargs):
        calls.append(path.name)
        if calls.count("checkpoint.npz") == 2:  # the second epoch's checkpoint
            raise KeyboardInterrupt
        return real_save(path, *args, **kwargs)

    monkeypatch.setattr(train_module, "save_checkpoint", interrupted_save)
    model = models.get("mlp", input_size=16, num_classes=2, rng=np.random.default_rng(0))
    opt = optim.SGD(model.parameters(), lr=0.05)
    with pytest.raises(KeyboardInterrupt):
        fit(model, opt, TRAIN, VAL, epochs=3, batch_size=32, progress=True, run_dir=tmp_path)
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch")]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert len(printed) == saved["epochs_run"] == len(saved["history"]["loss"]) == 1
    assert not list(tmp_path.glob(".*.tmp"))  # no half-written file left behind
