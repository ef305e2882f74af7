"""pytest setup for the benchmarks: collect bench_*.py, measure the GEMM ceiling once per session."""

from __future__ import annotations

import pytest

from benchmarks import harness


def pytest_collect_file(file_path, parent):
    """Benchmark modules are named bench_*.py (STYLE.md), not test_*.py: collect them here."""
    named = file_path.suffix == ".py" and file_path.name.startswith("bench_")
    if named and not parent.session.isinitpath(file_path):  # given on the command line: collected
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_configure(config):
    harness.tune_malloc()  # as a training program opts in (the library never does it alone)


def pytest_report_header(config):
    return [f"{k}: {v}" for k, v in harness.environment().items()]


@pytest.fixture(scope="session")
def gemm_ceiling() -> float:
    """Float32 GEMM GFLOP/s measured in this session: the 100% mark of every benchmark."""
    return harness.gemm_ceiling()
