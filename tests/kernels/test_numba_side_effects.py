"""Importing the engine and running numba_cpu kernels leaves the process as it found it: BLAS thread
counts are limited only while a kernel that calls BLAS runs, and glibc's malloc is tuned only when
the program opts in (ENGINE_MALLOC_TUNING=1 or kernels.numba_cpu.tune_malloc()).

The process-level checks run in a fresh interpreter each (subprocess): what a first import and a
first kernel call do cannot be observed in a process where both already happened.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from engine import backend

pytestmark = pytest.mark.skipif(
    "cpu:numba" not in backend.available(), reason="Numba is not installed"
)
threadpoolctl = pytest.importorskip("threadpoolctl")

ROOT = Path(__file__).resolve().parents[2]

# Runs the numba flavour's kernels that call BLAS from its thread pool (Winograd, the wide and
# strided im2col + GEMM paths, the unfused conv's GEMMs) and one that does not (polyphase).
KERNEL_CALLS = """
import numpy as np
from engine import backend
rng = np.random.default_rng(0)
x, W = rng.standard_normal((4, 8, 9, 9), dtype=np.float32), rng.standard_normal((6, 8, 3, 3), dtype=np.float32)
b = np.zeros(6, np.float32)
with backend.use_kernels("numba"):
    k = backend.get_backend(x).k
for pool in (((2, 2), (2, 2), (0, 0)), ((3, 3), (2, 2), (1, 1))):
    for stride in ((1, 1), (2, 2)):
        y, a = k.conv2d_relu_max_pool2d_forward(x, W, b, stride, (1, 1), *pool)
        k.conv2d_relu_max_pool2d_backward(y, y, a, x, W, stride, (1, 1), *pool, True)
y = k.conv2d_forward(x, W, b, (1, 1), (1, 1))
k.conv2d_backward_input(y, W, x.shape, (1, 1), (1, 1))
k.conv2d_backward_weight(y, x, (3, 3), (1, 1), (1, 1))
k.conv2d_relu_max_pool2d_forward(x[:, :1], W[:, :1], b, (1, 1), (0, 0), (2, 2), (2, 2), (0, 0))
"""

BLAS_PROBE = f"""
import json
import scipy.linalg.cython_blas  # the BLAS Numba calls, loaded first so both reports list it
from threadpoolctl import threadpool_info, threadpool_limits

# the program's own setting: 3 threads, not the default, so "unchanged" cannot hold by accident
threadpool_limits(limits=3, user_api="blas")

def counts():
    return {{i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}}

before = counts()
{KERNEL_CALLS}
print(json.dumps({{"before": before, "after": counts()}}))
"""

# Records every mallopt call that goes through ctypes, then runs the kernels.
MALLOPT_PROBE = f"""
import ctypes, json, os, sys
calls = []
real_cdll = ctypes.CDLL

class Recording:
    def __init__(self, lib):
        self._lib = lib
    def __getattr__(self, name):
        fn = getattr(self._lib, name)
        if name != "mallopt":
            return fn
        return lambda *a: calls.append(list(a)) or fn(*a)

ctypes.CDLL = lambda *a, **kw: Recording(real_cdll(*a, **kw))
{KERNEL_CALLS}
if sys.argv[1:] == ["explicit"]:
    from kernels import numba_cpu
    applied = numba_cpu.tune_malloc()
    calls.append(["applied", applied])
print(json.dumps(calls))
"""


def _run(code: str, *args: str, **env: str):
    full_env = {k: v for k, v in os.environ.items() if k not in ("ENGINE_MALLOC_TUNING",)}
    full_env.update(PYTHONPATH=str(ROOT), **env)
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_numba_kernels_leave_blas_threads_unchanged():
    got = _run(BLAS_PROBE)
    assert got["before"], "no BLAS library found"
    assert set(got["before"].values()) == {3}
    assert got["after"] == got["before"]


def _blas_counts() -> list[int]:
    return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]


def test_run_tasks_limits_blas_only_inside_the_call():
    import scipy.linalg.cython_blas  # noqa: F401  (the BLAS Numba calls: limited below with the rest)

    from kernels.numba_cpu import tasks

    seen = []

    def body(lo, hi):  # a task body that records the BLAS thread counts it runs under
        seen.extend(_blas_counts())

    with threadpoolctl.threadpool_limits(limits=3, user_api="blas"):
        tasks.run_tasks(body, 4, blas=True)
        inside, seen[:] = list(seen), []
        assert set(_blas_counts()) == {3}
        tasks.run_tasks(body, 4)  # a body without BLAS runs under the caller's settings
        outside = list(seen)
    assert inside and set(inside) == {1}
    assert outside and set(outside) == {3}


def test_nested_blas_limits_restore_the_outer_setting():
    import scipy.linalg.cython_blas  # noqa: F401

    from kernels.numba_cpu import tasks

    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        with tasks.single_threaded_blas:
            tasks.run_tasks(lambda lo, hi: None, 2, blas=True)  # enters and leaves again inside
            inside = _blas_counts()
        after = _blas_counts()
    assert inside and set(inside) == {1}
    assert after and set(after) == {2}


def test_numba_kernels_do_not_tune_malloc_by_default():
    assert _run(MALLOPT_PROBE) == []
    assert _run(MALLOPT_PROBE, ENGINE_MALLOC_TUNING="0") == []


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_malloc_tuning_opt_in_by_env():
    calls = _run(MALLOPT_PROBE, ENGINE_MALLOC_TUNING="1")
    assert calls == [[-3, 32 << 20], [-1, 256 << 20]]  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, once


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_tune_malloc_called_explicitly():
    calls = _run(MALLOPT_PROBE, "explicit")
    assert calls[:2] == [[-3, 32 << 20], [-1, 256 << 20]]
    assert calls[2] == ["applied", True]
