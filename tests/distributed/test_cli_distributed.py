"""`mpiexec -n 2 medgrad train ... --distributed`: rank 0 writes one run directory whose model
matches a one-process run to float32 rounding; a bad option stops both ranks with one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from engine import backend
from engine.checkpoint import load_checkpoint
from tests.test_cli import TINY

ARGS = [*TINY, "--epochs", "2", "--seed", "1"]  # tests/test_cli.py's tiny phantom run


def _same_models(one, two) -> tuple[dict, dict]:
    """Assert the runs in folders one and two saved the same model (to float32 rounding);
    -> their metrics.json."""
    w_two = load_checkpoint(two / "model.npz").weights
    for name, w in load_checkpoint(one / "model.npz").weights.items():
        np.testing.assert_allclose(w_two[name], w, rtol=1e-4, atol=1e-5, err_msg=name)
    return tuple(json.loads((run / "metrics.json").read_text()) for run in (one, two))


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
    m_one, m_two = _same_models(tmp_path / "one", tmp_path / "two")
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


def test_cli_each_rank_decodes_only_its_patients(mpirun, tmp_path):
    from engine.cli import main
    from tests.distributed.cases import write_phantom_site

    site = write_phantom_site(tmp_path / "site", n_patients=10, per_patient=3, seed=4)
    args = ["--data", str(site), "--input-size", "16", "--batch-size", "8", "--epochs", "2"]
    args += ["--seed", "1", "--quiet"]
    script = "tests/distributed/_decode_log_script.py"
    log = tmp_path / "decoded"
    done = mpirun(
        2,
        [script, str(log), "train", *args, "--out", str(tmp_path / "two"), "--distributed"],
        timeout=120,
        ENGINE_KERNELS="numpy",
    )
    assert done.returncode == 0, done.stderr
    decoded = [Path(f"{log}.{r}").read_text().split() for r in range(2)]
    files = sorted(str(p) for p in site.rglob("*.dcm"))
    assert sorted(decoded[0] + decoded[1]) == files  # each file decoded once, by one rank
    patients = [{Path(p).parent.name for p in d} for d in decoded]
    assert patients[0] and patients[1] and not patients[0] & patients[1]  # whole patients
    with backend.use_kernels("numpy"):
        assert main(["train", *args, "--out", str(tmp_path / "one")]) == 0
    m_one, m_two = _same_models(tmp_path / "one", tmp_path / "two")
    assert m_two["n_val"] == m_one["n_val"] and m_two["n_train"] == m_one["n_train"]
    for key in ("accuracy", "auc"):  # the whole validation set, gathered from both ranks
        np.testing.assert_allclose(m_two["held_out"][key], m_one["held_out"][key], rtol=1e-4)
    shown = sorted(p.name for p in (tmp_path / "two" / "explain").glob("*.png"))
    assert shown and shown == sorted(p.name for p in (tmp_path / "one" / "explain").glob("*.png"))
