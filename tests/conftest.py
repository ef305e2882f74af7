"""Shared fixtures: a seeded rng, the kernel flavours to parametrise over, the tolerance table."""

from __future__ import annotations

import numpy as np
import pytest

from engine import backend

# One table of tolerances (STYLE.md section 6). Loosen one only with a comment that says why.
TOL = {
    "gradcheck": dict(atol=1e-5, rtol=1e-4),  # float64 central differences, eps 1e-6
    "loops64": dict(atol=1e-10, rtol=1e-8),  # forward vs naive loops, float64
    "parity32": dict(atol=1e-4, rtol=1e-4),  # kernel flavour vs numpy_cpu, float32
    "parity64": dict(atol=1e-10, rtol=1e-10),  # kernel flavour vs numpy_cpu, float64
}

CPU_FLAVOURS = [name.split(":")[1] for name in backend.available() if name.startswith("cpu:")]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(params=CPU_FLAVOURS)
def flavour(request):
    """Run the test once per CPU kernel flavour (numpy, and numba where it imports)."""
    with backend.use_kernels(request.param):
        yield request.param


def pytest_collection_modifyitems(config, items):
    """Skip `gpu` tests, reported as skipped, where no CUDA device answers."""
    if backend.cuda_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
