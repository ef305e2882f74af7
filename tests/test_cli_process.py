"""The `medgrad` program's own process settings (engine.cli._program_settings): malloc tuning and one
BLAS thread for the numba flavour, only around the subcommands that compute, restored afterwards."""

from __future__ import annotations

import argparse

import pytest

from engine.cli import _program_settings

threadpoolctl = pytest.importorskip("threadpoolctl")


def _blas_threads() -> set[int]:
    return {i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"}


def _args(func_name: str, kernels=None) -> argparse.Namespace:
    def func(args):
        return 0

    func.__name__ = func_name
    return argparse.Namespace(func=func, kernels=kernels)


@pytest.fixture
def two_blas_threads(monkeypatch):
    monkeypatch.delenv("ENGINE_MALLOC_TUNING", raising=False)
    if not _blas_threads():
        pytest.skip("NumPy reports no BLAS library to threadpoolctl")
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        yield


def test_compute_commands_run_numba_on_one_blas_thread_and_restore_it(two_blas_threads):
    pytest.importorskip("numba")
    import os

    with _program_settings(_args("_cmd_train", kernels="numba")):
        assert _blas_threads() == {1}
        assert os.environ["ENGINE_MALLOC_TUNING"] == "1"
    assert _blas_threads() == {2}


def test_the_numpy_flavour_keeps_its_blas_threads(two_blas_threads):
    with _program_settings(_args("_cmd_train", kernels="numpy")):
        assert _blas_threads() == {2}


def test_other_commands_change_nothing(two_blas_threads):
    import os

    with _program_settings(_args("_cmd_anonymize")):
        assert _blas_threads() == {2}
        assert "ENGINE_MALLOC_TUNING" not in os.environ


def test_a_users_malloc_setting_wins(two_blas_threads, monkeypatch):
    import os

    monkeypatch.setenv("ENGINE_MALLOC_TUNING", "0")
    with _program_settings(_args("_cmd_evaluate", kernels="numpy")):
        assert os.environ["ENGINE_MALLOC_TUNING"] == "0"
