"""The numba_cuda kernels' index logic, without a GPU: Numba's CUDA simulator against numpy_cpu.

NUMBA_ENABLE_CUDASIM must be set before Numba is first imported, and the rest of the suite has
imported it (the numba CPU flavour) long before this module. So in the ordinary run this module
holds one test that runs this same file in a fresh `python -m pytest` with the simulator on; in that
child the parametrised parity tests below are collected. The launchers are the real ones from
kernels/numba_cuda/launchers.py: written against `xp`, they take NumPy arrays here. Shapes are tiny
(the simulator runs every thread as a Python thread); stride, padding, non-square and batch 1 are
all covered, in float32 and float64, with the TOL table of tests/conftest.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kernels.gpu_cases import CASES, DTYPES, run, uncovered

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
ROOT = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT_S = 240  # the child takes ~20 s on 2 cores; a hang must fail, not stall CI


if not SIMULATED:

    def test_numba_cuda_kernels_under_simulator():
        """Run this file again with the simulator on; every parity case must pass there."""
        env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        cmd = [sys.executable, "-m", "pytest", str(Path(__file__)), "-q", "-p", "no:cacheprovider"]
        done = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S
        )
        out = done.stdout + done.stderr
        assert done.returncode == 0, f"simulator tests failed:\n{out[-6000:]}"
        passed = re.search(r"(\d+) passed", out)
        assert passed and int(passed.group(1)) >= 50, f"too few simulator tests ran:\n{out[-3000:]}"
        assert "failed" not in out and "skipped" not in out, out[-3000:]

else:
    from kernels.numba_cuda import launchers

    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("case", CASES)
    def test_numba_cuda_parity(case, dtype):
        run(case, launchers.KERNELS, dtype)

    def test_simulator_is_on():
        from numba import config

        assert config.ENABLE_CUDASIM

    def test_every_kernel_is_covered():
        """A kernel added to KERNEL_NAMES must get a Numba body and a parity case."""
        from kernels import GENERIC_ON_GPU, KERNEL_NAMES

        # GENERIC_ON_GPU (now empty): kernels that would run the xp-generic numpy_cpu version
        assert set(launchers.KERNELS) == set(KERNEL_NAMES) - GENERIC_ON_GPU
        assert uncovered() == []
