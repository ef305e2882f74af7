"""The workflow functions: cross-validation keeps every patient in one fold's test set, and a
manifest of the training data is recorded in the run directory."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from engine import workflow
from engine.data.phantoms import make_phantoms
from engine.errors import DataError


def _patients(n_patients: int = 15, per_patient: int = 4):
    """Phantoms grouped as patients of `per_patient` slices each (like a CT series)."""
    x, y = make_phantoms(n_patients * per_patient, size=16, seed=1)
    groups = np.repeat([f"P{i:02d}" for i in range(n_patients)], per_patient)
    return SimpleNamespace(
        images=x,
        labels=y,
        groups=groups,
        paths=None,
        classes=["no", "yes"],
        preprocessing={"input_size": 16},
    )


def test_cv_test_sets_never_share_a_patient(monkeypatch, capsys):
    ds = _patients()
    monkeypatch.setattr(workflow, "load_data", lambda *a, **k: ds)
    settings = workflow.TrainSettings(model="mlp", epochs=1, batch_size=16, input_size=16)
    result = workflow.cross_validate("patients", 5, settings)
    folds = [set(f["test_patients"]) for f in result["folds"]]
    assert len(folds) == 5
    assert set().union(*folds) == set(ds.groups)  # every patient is tested once ...
    assert sum(len(f) for f in folds) == len(set(ds.groups))  # ... and only once
    for f in result["folds"]:
        assert 0 <= f["accuracy"] <= 1 and f["n"] == 4 * f["patients"]
    acc = [f["accuracy"] for f in result["folds"]]
    assert result["summary"]["accuracy"]["mean"] == pytest.approx(np.mean(acc))
    assert result["summary"]["accuracy"]["std"] == pytest.approx(np.std(acc, ddof=1))
    assert "mean ± std" in capsys.readouterr().out


def test_cv_refuses_overlapping_test_sets(monkeypatch):
    """The check in cross_validate is real: a splitter that repeats a patient is caught."""
    import engine.data.splits as splits

    ds = _patients(6, 2)
    monkeypatch.setattr(workflow, "load_data", lambda *a, **k: ds)
    monkeypatch.setattr(
        splits,
        "stratified_group_kfold",
        lambda labels, groups, k, seed: [
            (np.arange(2, 12), np.arange(0, 4)),
            (np.arange(4, 12), np.arange(2, 6)),
        ],
    )
    with pytest.raises(DataError, match="P01"):
        workflow.cross_validate("patients", 2, workflow.TrainSettings(model="mlp", epochs=1))


def test_holdout_split_keeps_patients_apart():
    ds = _patients()
    train_idx, val_idx = workflow.holdout(ds, 0.25, seed=0)
    assert not set(ds.groups[train_idx]) & set(ds.groups[val_idx])
    assert len(train_idx) + len(val_idx) == len(ds.labels)
    with pytest.raises(DataError, match="val-split"):
        workflow.holdout(ds, 1.5, seed=0)


def test_dicom_folder_train_predict_evaluate(tmp_path, capsys):
    """The DICOM path end to end on a tiny synthetic cohort: manifest recorded, CSV written."""
    pytest.importorskip("pydicom")
    import csv

    from engine.cli import main
    from engine.data.synthetic_dicom import make_demo_data

    data = make_demo_data(tmp_path / "ct", n_patients=6, slices_per_patient=6, size=32, seed=0)
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--input-size",
                "16",
                "--epochs",
                "1",
                "--val-split",
                "0.34",
                "--out",
                str(run),
                "--quiet",
            ]
        )
        == 0
    )
    manifest = (run / "manifest.json").read_text()
    assert "labels.csv" in manifest and "patient_00/" in manifest
    names = sorted(p.name for p in (run / "explain").iterdir())
    assert len(names) == 4 and all(n.startswith("explain_patient_0") for n in names)
    out = tmp_path / "p.csv"
    assert (
        main(["predict", str(run / "model.npz"), str(data / "patient_01"), "--out", str(out)]) == 0
    )
    with out.open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "predicted", "p_0", "p_1", "error"] and len(rows) == 1 + 6
    assert all(r[4] == "" for r in rows[1:])  # every file read: no error
    assert all(abs(float(r[2]) + float(r[3]) - 1) < 1e-5 for r in rows[1:])
    assert main(["evaluate", str(run / "model.npz"), str(data)]) == 0
    assert "(n = 36)" in capsys.readouterr().out
