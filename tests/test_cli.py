"""The medgrad command: a tiny training run end to end, help text, and errors without tracebacks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from engine.cli import main


def test_train_tiny_run_prints_accuracy(capsys):
    assert main(["train", "--n-train", "64", "--n-test", "32", "--epochs", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out


def test_python_dash_m_engine_help():
    out = subprocess.run(
        [sys.executable, "-m", "engine", "--help"], capture_output=True, text=True, check=True
    )
    assert "train" in out.stdout and "demo" in out.stdout


def test_bad_choice_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--optimizer", "lbfgs"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
