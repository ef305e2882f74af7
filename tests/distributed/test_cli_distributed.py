"""`mpiexec -n 2 medgrad train ... --distributed`: rank 0 writes one run directory whose model
matches a one-process run to float32 rounding; a bad option stops both ranks with one line."""

from __future__ import annotations

import json

import numpy as np

from engine import backend
from engine.checkpoint import load_checkpoint
from tests.test_cli import TINY

ARGS = [*TINY, "--epochs", "2", "--seed", "1"]  # tests/test_cli.py's tiny phantom run


def test_cli_two_ranks_write_one_run_like_one_process(mpirun, tmp_path):
    from engine.cli import main

    done = mpirun(
        2,
        ["-m", "engine", "train", *ARGS, "--out", str(tmp_path / "two"), "--distributed"],
        timeout=120,
        ENGINE_KERNELS="numpy",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("held-out: accuracy") == 1  # rank 0 alone prints the result
    with backend.use_kernels("numpy"):
        assert main(["train", *ARGS, "--out", str(tmp_path / "one")]) == 0
    two = load_checkpoint(tmp_path / "two" / "model.npz").weights
    one = load_checkpoint(tmp_path / "one" / "model.npz").weights
    for name, w in one.items():
        np.testing.assert_allclose(two[name], w, rtol=1e-4, atol=1e-5, err_msg=name)  # float32
    m_two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    m_one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert m_two["ranks"] == 2 and m_two["n_val"] == m_one["n_val"]  # whole validation set
    np.testing.assert_allclose(
        m_two["history"]["val_loss"], m_one["history"]["val_loss"], rtol=1e-4
    )
    assert (tmp_path / "two" / "report.md").exists() and not list((tmp_path / "two").glob(".*.tmp"))


def test_cli_bad_option_on_rank0_stops_both(mpirun, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    args = ["-m", "engine", "train", *ARGS, "--out", str(tmp_path / "file"), "--distributed"]
    done = mpirun(2, args, timeout=60, ENGINE_KERNELS="numpy")
    assert done.returncode != 0
    assert "rank 0 of 2 failed: ArgumentError: --out" in done.stderr
