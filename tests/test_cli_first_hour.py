"""A new user's first hour (issue 18): every bad input on the medgrad command line ends in one line
naming the file or option and what was expected, exit status 2, never a traceback; nothing is
overwritten unasked; unreadable files can be skipped and are then listed."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine import cli

pytest.importorskip("pydicom")

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["--input-size", "10", "--model", "mlp", "--epochs", "1", "--val-split", "0.34", "--quiet"]


def medgrad(*args) -> subprocess.CompletedProcess:
    """Run `python -m engine ARGS` as a new process, as a user's shell would."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "engine", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)


def main(argv: list) -> int:
    """The command in this process (faster where a run must really train)."""
    return cli.main([str(a) for a in argv])


def one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2, no traceback, exactly one stderr line 'medgrad: error: ...' holding every needle."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medgrad: error:"), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _rows(folder: Path) -> list[dict]:
    with open(folder / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))


def _write_rows(folder: Path, rows: list[dict]) -> None:
    with open(folder / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


@pytest.fixture(scope="module")
def ct(tmp_path_factory) -> Path:
    """6 patients x 6 slices of 32 x 32 (28 with a nodule, 8 without); about 1 s to write."""
    from engine.data.synthetic_dicom import make_demo_data

    return make_demo_data(
        tmp_path_factory.mktemp("ct"), n_patients=6, slices_per_patient=6, size=32, seed=1
    )


@pytest.fixture(scope="module")
def run(ct, tmp_path_factory) -> Path:
    """A finished one-epoch run on `ct` (trained in this process: faster than a subprocess)."""
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(["train", "--data", ct, *TRAIN, "--out", out]) == 0
    return out


def _copy(ct: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(ct, tmp_path / "ct"))


# 1. evaluate on data whose classes the model does not have
def test_evaluate_data_with_other_classes(run, ct, tmp_path):
    data = _copy(ct, tmp_path)
    rows = _rows(data)
    for i, row in enumerate(rows):
        row["label"] = str(i % 12)  # line 2 -> "0", line 3 -> "1", line 4 -> "2"
    _write_rows(data, rows)
    one_line_error(
        medgrad("evaluate", run / "model.npz", data),
        "labels.csv",
        "line 4",
        "'2'",
        "['0', '1']",
    )


# 2. a labels.csv row naming a missing file; 7. a truncated file among real ones
def test_missing_and_truncated_files_raise_or_are_skipped_and_listed(ct, tmp_path, capsys):
    data = _copy(ct, tmp_path)
    rows = _rows(data)
    rows.append({**rows[0], "path": "patient_00/gone.dcm"})
    _write_rows(data, rows)
    one_line_error(
        medgrad("train", "--data", data, *TRAIN, "--out", tmp_path / "r0"),
        f"line {len(rows) + 1}",
        "gone.dcm",
        "no such file",
    )
    assert not (tmp_path / "r0" / "model.npz").exists()
    victim = data / rows[5]["path"]
    victim.write_bytes(victim.read_bytes()[:300])
    rows.pop()  # only the truncated file now: the default stops at it, naming it
    _write_rows(data, rows)
    one_line_error(medgrad("train", "--data", data, *TRAIN, "--out", tmp_path / "r1"), victim.name)
    rows.append({**rows[0], "path": "patient_00/gone.dcm"})
    _write_rows(data, rows)
    out = tmp_path / "r2"
    assert main(["train", "--data", data, *TRAIN, "--on-error", "skip", "--out", out]) == 0
    assert "skipped 2 unreadable files" in capsys.readouterr().out
    skipped = dict(json.loads((out / "metrics.json").read_text())["skipped"])
    assert {Path(p).name for p in skipped} == {"gone.dcm", victim.name}
    report = (out / "report.md").read_text()
    assert "## Skipped files (2" in report and "gone.dcm" in report and victim.name in report
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["n_train"] + saved["n_val"] == len(rows) - 2
    scores = tmp_path / "scores.json"
    argv = ["evaluate", out / "model.npz", data, "--on-error", "skip", "--out", scores]
    assert main(argv) == 0
    scored = json.loads(scores.read_text())
    assert scored["n"] == len(rows) - 2 and len(scored["skipped"]) == 2


# 3. a mistyped label is an error naming its line
def test_mistyped_label_is_one_line(ct, tmp_path):
    data = _copy(ct, tmp_path)
    rows = _rows(data)
    rows[6]["label"] = "maybe"
    _write_rows(data, rows)
    one_line_error(
        medgrad("train", "--data", data, *TRAIN, "--out", tmp_path / "r"),
        "labels.csv",
        "line 8",
        "'maybe'",
        "--classes",
    )


# 4. an earlier run is never replaced unasked
def test_train_refuses_to_replace_a_run_unless_overwrite(run, ct, tmp_path):
    before = (run / "model.npz").read_bytes(), (run / "metrics.json").read_text()
    one_line_error(
        medgrad("train", "--data", ct, *TRAIN, "--out", run),
        f"--out {run} holds an earlier run",
        "--resume",
        "--overwrite",
    )
    assert ((run / "model.npz").read_bytes(), (run / "metrics.json").read_text()) == before
    copy = Path(shutil.copytree(run, tmp_path / "run"))
    (copy / "explain" / "old_image.png").write_bytes(b"stale")
    failed = medgrad("train", "--data", tmp_path / "nope", *TRAIN, "--out", copy, "--overwrite")
    one_line_error(failed, "nope")
    assert (copy / "model.npz").read_bytes() == before[0]  # a failed run replaces nothing
    assert main(["train", "--data", ct, *TRAIN, "--out", copy, "--overwrite"]) == 0
    assert not (copy / "explain" / "old_image.png").exists()
    assert json.loads((copy / "metrics.json").read_text())["epochs_run"] == 1


# 5. --out on a file or where no folder can be made: train and explain
def test_out_on_a_file_or_unmakeable_folder(run, ct, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    one_line_error(
        medgrad("train", "--data", ct, *TRAIN, "--out", a_file), f"--out {a_file}", "is a file"
    )
    one_line_error(
        medgrad("train", "--data", ct, *TRAIN, "--out", a_file / "run"),
        f"--out {a_file / 'run'}",
        "cannot create",
    )
    one_line_error(
        medgrad("explain", run / "model.npz", ct, "--out", a_file), f"--out {a_file}", "is a file"
    )


# 6. model name and input size are checked before the data loads
def test_options_are_checked_before_the_data(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "labels.csv").write_text("no,columns,here\n")  # loading this would fail otherwise
    one_line_error(
        medgrad("train", "--data", broken, "--input-size", "8", "--out", tmp_path / "r"),
        "--input-size 8",
        "seed_cnn",
        ">= 10",
    )
    one_line_error(
        medgrad("train", "--data", broken, "--model", "resnet", "--out", tmp_path / "r"),
        "unknown model 'resnet'",
        "seed_cnn",
    )
    usage = medgrad("train", "--input-size", "3")
    assert usage.returncode == 2 and "--input-size: 3 must be >= 4" in usage.stderr
    assert "Traceback" not in usage.stderr


# 7. predict lists a stray file with its reason instead of writing nothing
def test_predict_skips_a_stray_file_and_lists_it(run, ct, tmp_path):
    folder = Path(shutil.copytree(ct / "patient_01", tmp_path / "scans"))
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "p.csv"
    result = medgrad("predict", run / "model.npz", folder, "--out", out)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 7
    stray = [r for r in rows if r["path"].endswith("notes.txt")]
    assert len(stray) == 1 and stray[0]["error"] and stray[0]["predicted"] == ""
    assert all(r["error"] == "" and r["predicted"] in ("0", "1") for r in rows if r not in stray)
    one_line_error(
        medgrad("predict", run / "model.npz", folder, "--out", out, "--on-error", "raise"),
        "notes.txt",
    )


# 8. --resume with no epochs left to run
def test_resume_without_more_epochs_is_one_line(run, ct):
    one_line_error(
        medgrad("train", "--data", ct, *TRAIN, "--out", run, "--resume"),
        "--epochs 1",
        "already run 1 epochs",
    )


# 9. the hold-out option is named as the user typed it
def test_val_split_leaving_a_side_empty_names_the_option(tmp_path):
    tiny = ["--n-phantoms", "4", "--input-size", "10", "--model", "mlp", "--quiet"]
    result = medgrad(
        "train", "--data", "phantoms", *tiny, "--val-split", "0.05", "--out", tmp_path / "r"
    )
    line = one_line_error(result, "--val-split 0.05", "4 patients")
    assert "val_fraction" not in line


def test_training_on_one_class_is_refused(ct, tmp_path):
    data = _copy(ct, tmp_path)
    rows = [r for r in _rows(data) if r["label"] == "1"]
    _write_rows(data, rows)
    one_line_error(
        medgrad("train", "--data", data, *TRAIN, "--out", tmp_path / "r"), "'1'", "2 classes"
    )
