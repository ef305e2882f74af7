"""The medgrad command: every subcommand's help, a tiny train -> evaluate -> explain -> resume run on
phantoms, cross-validation by patient, and errors as one line without a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from engine.cli import build_parser, main

SUBCOMMANDS = ["train", "evaluate", "predict", "cv", "explain", "bench", "demo"]
TINY = [
    "--data",
    "phantoms",
    "--n-phantoms",
    "96",
    "--input-size",
    "16",
    "--batch-size",
    "16",
    "--quiet",
]


def test_python_dash_m_engine_help_lists_the_subcommands():
    out = subprocess.run(
        [sys.executable, "-m", "engine", "--help"], capture_output=True, text=True, check=True
    )
    for name in SUBCOMMANDS:
        assert name in out.stdout


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_option_has_help(name):
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[name]
    assert sub.description, name
    for action in sub._actions:
        assert action.help, f"{name} {action.option_strings or action.dest} has no help"


def test_bad_choice_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--optimizer", "lbfgs"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_train_evaluate_explain_resume_on_phantoms(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "2", "--val-split", "0.25", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "held-out: accuracy" in out and "recall" in out and "F1" in out and "AUC" in out
    for name in (
        "model.npz",
        "checkpoint.npz",
        "metrics.json",
        "curves.png",
        "confusion_matrix.png",
        "roc.png",
        "report.md",
    ):
        assert (run / name).is_file(), name
    assert len(list((run / "explain").glob("*.png"))) == 4
    saved = json.loads((run / "metrics.json").read_text())
    assert len(saved["history"]["val_loss"]) == 2 and saved["held_out"]["n"] == 24
    report = (run / "report.md").read_text()
    assert "![Learning curves](curves.png)" in report and "explain/" in report

    assert (
        main(["evaluate", str(run / "model.npz"), "phantoms", "--out", str(tmp_path / "e.json")])
        == 0
    )
    assert json.loads((tmp_path / "e.json").read_text())["n"] == 2000  # the default phantom set
    assert (
        main(
            [
                "explain",
                str(run / "model.npz"),
                "phantoms",
                "--index",
                "3",
                "5",
                "--layer",
                "0",
                "--out",
                str(tmp_path / "ex"),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "ex").iterdir()) == [
        "explain_image00003.png",
        "explain_image00005.png",
    ]

    # 2 epochs + resume to 4 == 4 epochs straight, bit for bit (the command-line path of F4)
    straight = tmp_path / "straight"
    assert (
        main(["train", *TINY, "--epochs", "4", "--val-split", "0.25", "--out", str(straight)]) == 0
    )
    assert (
        main(
            ["train", *TINY, "--epochs", "4", "--val-split", "0.25", "--out", str(run), "--resume"]
        )
        == 0
    )
    from engine.checkpoint import load_checkpoint

    a, b = load_checkpoint(straight / "checkpoint.npz"), load_checkpoint(run / "checkpoint.npz")
    assert a.train_state["epoch"] == b.train_state["epoch"] == 4
    for name, w in a.weights.items():
        np.testing.assert_array_equal(w, b.weights[name], err_msg=name)


def test_cv_prints_folds_and_mean_std(tmp_path, capsys):
    out_json = tmp_path / "cv.json"
    assert (
        main(
            ["cv", *TINY, "--folds", "3", "--epochs", "1", "--model", "mlp", "--out", str(out_json)]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.count("fold ") == 3 and "mean ± std" in out and "auc" in out
    result = json.loads(out_json.read_text())
    assert len(result["folds"]) == 3 and set(result["summary"]["accuracy"]) == {"mean", "std"}


def test_errors_are_one_line(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "missing.npz"), "phantoms"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medgrad: error:") and "missing.npz" in err and err.count("\n") == 1
    assert main(["train", "--data", str(tmp_path / "nope"), "--quiet"]) == 2
    assert "nope" in capsys.readouterr().err


def test_device_cuda_without_gpu_is_one_clear_line(capsys):
    from engine import backend

    if backend.cuda_available():
        pytest.skip("a GPU is present here")
    assert main(["train", *TINY, "--epochs", "1", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medgrad: error:") and err.count("\n") == 1 and "Traceback" not in err
    assert "CuPy" in err or "CUDA" in err


def test_bench_passes_arguments_to_pytest(monkeypatch):
    import subprocess as sp

    seen = []
    monkeypatch.setattr(sp, "call", lambda cmd: seen.append(cmd) or 0)
    assert main(["bench", "--", "-k", "conv"]) == 0
    assert seen[0][1:] == ["-m", "pytest", "benchmarks", "--benchmark-only", "-k", "conv"]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--epochs", "0"], "--epochs: 0 must be >= 1"),
        (["train", "--lr", "-1"], "--lr: -1 must be > 0"),
        (["train", "--batch-size", "zero"], "--batch-size: 'zero' is not a valid int"),
        (["train", "--val-split", "1.5"], "--val-split: 1.5 must be > 0 and < 1"),
        (["cv", "--folds", "1"], "--folds: 1 must be >= 2"),
    ],
)
def test_bad_numbers_are_usage_errors_not_tracebacks(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_train_precision_and_graph_are_recorded(tmp_path, capsys):
    from engine.checkpoint import load_checkpoint
    from engine.errors import CaptureWarning

    run = tmp_path / "run"
    argv = ["train", *TINY, "--model", "mlp", "--epochs", "1", "--out", str(run)]
    with pytest.warns(CaptureWarning, match="has no graphs"):
        assert main([*argv, "--precision", "bf16", "--graph"]) == 0
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["settings"]["precision"] == "bf16" and saved["settings"]["graph"] is True
    state = load_checkpoint(run / "checkpoint.npz").train_state
    assert state["settings"]["precision"] == "bf16"
    capsys.readouterr()
    seg = ["train", "--task", "segmentation", "--data", str(tmp_path), "--precision", "fp16"]
    assert main(seg) == 2
    assert "does not support --precision fp16" in capsys.readouterr().err
