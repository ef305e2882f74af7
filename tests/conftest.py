"""Shared fixtures: a seeded rng, the `backend` fixture over every device and kernel flavour, the
tolerance table. Tests under tests/ops and tests/nn run once per backend (their conftests)."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from engine import backend as dispatch
from engine.errors import DeviceError

# One table of tolerances (STYLE.md section 6). Loosen one only with a comment that says why.
TOL = {
    "gradcheck": dict(atol=1e-5, rtol=1e-4),  # float64 central differences, eps 1e-6
    "loops64": dict(atol=1e-10, rtol=1e-8),  # forward vs naive loops, float64
    "parity32": dict(atol=1e-4, rtol=1e-4),  # kernel flavour vs numpy_cpu, float32
    "parity64": dict(atol=1e-10, rtol=1e-10),  # kernel flavour vs numpy_cpu, float64
}

# The kernel flavours each device declares, as engine/backend.py's private _FLAVOURS table does.
# backend.available() cannot serve here: it omits the cuda flavours where no GPU answers, and the
# suite must still collect them (marked gpu, skipped) so that `pytest -m gpu` lists them everywhere.
DECLARED = {"cpu": ("numpy", "numba"), "cuda": ("cupy", "numba")}
BACKENDS = [f"{device}:{flavour}" for device in dispatch.DEVICES for flavour in DECLARED[device]]
CPU_FLAVOURS = [name.split(":")[1] for name in dispatch.available() if name.startswith("cpu:")]


def backend_params(device: str | None = None) -> list:
    """One pytest.param per "device:flavour" of BACKENDS (on `device` only, if given); the cuda
    ones carry the `gpu` marker, so they are skipped where no GPU answers."""
    return [
        pytest.param(name, marks=[pytest.mark.gpu] if name.startswith("cuda:") else [], id=name)
        for name in BACKENDS
        if device is None or name.startswith(f"{device}:")
    ]


@contextlib.contextmanager
def use_backend(name: str):
    """Run the block on the "device:flavour" `name`; yields its engine.backend.Backend.

    A CPU flavour that does not load (Numba missing: a NumPy-only install) skips the test; a cuda
    flavour that does not load on a GPU machine is an error, since `pytest -m gpu` must check both.
    """
    device, flavour = name.split(":")
    with dispatch.use_kernels(flavour):
        try:
            chosen = dispatch.backend_for(device)
        except DeviceError as exc:
            if device == "cpu":
                pytest.skip(f"{name} is not available here: {exc}")
            raise
        assert chosen.flavour == flavour, f"{name} requested, {device}:{chosen.flavour} loaded"
        yield chosen


def cpu_only(reason: str):
    """Decorator: run the test on the CPU backends only (it overrides the `backend` parameters).
    `reason` says why the test has no cuda counterpart; it stays next to the test for readers."""
    if not reason:
        raise ValueError("cpu_only needs a reason: why does this test not run on cuda?")
    return pytest.mark.parametrize("backend", backend_params("cpu"), indirect=True)


@pytest.fixture(name="backend", params=backend_params())
def _backend(request, monkeypatch):
    """The test runs on one "device:flavour"; the value is its engine.backend.Backend (`.device`,
    `.flavour`, `.xp`), so the test places its inputs with tests.helpers.on_device(a, b.device).

    An op that dispatches to another device fails the test: an input left on the CPU in a cuda
    run would otherwise fall back to the CPU kernels and pass without testing the GPU."""
    with use_backend(request.param) as chosen:
        seen = set()
        dispatch_to = dispatch.backend_for

        def recording(device: str):
            seen.add(device)
            return dispatch_to(device)

        monkeypatch.setattr(dispatch, "backend_for", recording)
        yield chosen
    strays = sorted(seen - {chosen.device})
    if strays:
        pytest.fail(
            f"{request.node.nodeid}: ops ran on {', '.join(strays)} under {request.param}; "
            "place every input on the backend's device with tests.helpers.on_device"
        )


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(params=CPU_FLAVOURS)
def flavour(request):
    """Run the test once per CPU kernel flavour (numpy, and numba where it imports)."""
    with dispatch.use_kernels(request.param):
        yield request.param


def pytest_collection_modifyitems(config, items):
    """Skip `gpu` tests, reported as skipped, where no CUDA device answers."""
    if dispatch.cuda_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
