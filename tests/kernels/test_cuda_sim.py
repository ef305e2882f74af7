"""The numba_cuda kernels' index logic, without a GPU: Numba's CUDA simulator against numpy_cpu.

NUMBA_ENABLE_CUDASIM must be set before Numba is first imported, and the rest of the suite has
imported it (the numba CPU flavour) long before this module. So in the ordinary run this module
holds one test that runs this same file in a fresh `python -m pytest` with the simulator on; in that
child the parametrised parity tests below are collected: every launcher numba_cuda has of its own,
on the tiny cases of tests/kernels/cases.py (the simulator runs every thread as a Python thread), in
float32 and float64. The launchers are the real ones from kernels/numba_cuda/launchers.py: written
against `xp`, they take NumPy arrays here. Names without a Numba launcher fall back to cupy_cuda's
(checked by test_cupy_sources.py); the child prints the coverage report, and the parent repeats it.
The simulator spends its time starting a Python thread per GPU thread, on one core, so the parent
runs SHARDS children side by side, each on every SHARDS-th parity case (SIM_SHARD="k/SHARDS").
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kernels.cases import (
    DTYPES,
    check_parity,
    report_coverage,
    softmax_cross_entropy_bad_targets,
    tiny_params,
)

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
ROOT = Path(__file__).resolve().parents[2]
SHARDS = 2  # children run side by side (the CI machine has 2 cores)
CHILD_TIMEOUT_S = 300  # both took ~76 s side by side on the 2-core dev box (load 4-5); a hang fails


if not SIMULATED:

    def test_numba_cuda_kernels_under_simulator():
        """Run this file again with the simulator on, in SHARDS children that split the parity
        cases; every case must pass there."""
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            str(Path(__file__)),
            "-q",
            "-rP",
            "-p",
            "no:cacheprovider",
        ]
        children = []
        for shard in range(SHARDS):
            env = {
                **os.environ,
                "NUMBA_ENABLE_CUDASIM": "1",
                "PYTHONDONTWRITEBYTECODE": "1",
                "SIM_SHARD": f"{shard}/{SHARDS}",
            }
            children.append(
                subprocess.Popen(
                    cmd,
                    cwd=ROOT,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
        outs = []
        try:
            for child in children:
                outs.append(child.communicate(timeout=CHILD_TIMEOUT_S)[0])
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
        passed = 0
        for child, out in zip(children, outs, strict=True):
            assert child.returncode == 0, f"simulator tests failed:\n{out[-6000:]}"
            assert "failed" not in out and "skipped" not in out, out[-3000:]
            found = re.search(r"(\d+) passed", out)
            assert found, f"no simulator test ran:\n{out[-3000:]}"
            passed += int(found.group(1))
        assert passed >= 100, f"too few simulator tests ran ({passed}):\n{outs[0][-3000:]}"
        print(re.search(r"numba_cuda: own launchers .*", outs[0]).group(0))  # the child's report


else:
    from kernels.numba_cuda import launchers

    SHARD, _, OF = os.environ.get("SIM_SHARD", "0/1").partition("/")
    OWN = tiny_params(launchers.KERNELS)[int(SHARD) :: int(OF)]

    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("name,case", OWN)
    def test_numba_cuda_parity(name, case, dtype):
        check_parity(launchers.KERNELS, name, case, dtype)

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_numba_cuda_bad_targets_give_nan(dtype):
        softmax_cross_entropy_bad_targets(launchers.KERNELS, dtype)

    def test_simulator_is_on():
        from numba import config

        assert config.ENABLE_CUDASIM

    def test_numba_cuda_coverage():
        """Reported, not demanded: which names have a launcher of their own here."""
        report_coverage("numba_cuda", launchers.KERNELS)
