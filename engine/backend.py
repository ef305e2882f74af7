"""The one dispatch point: which device an op runs on and which kernel flavour serves it.

Two independent axes:
- device, read off the arrays: numpy.ndarray -> "cpu", cupy.ndarray -> "cuda";
- kernel flavour: on the CPU "numba" (the default whenever Numba imports) or "numpy" (the reference);
  on CUDA "cupy" (the default) or "numba". Chosen by ENGINE_KERNELS=numpy|numba|cupy or, for a block
  of code, `with use_kernels("numpy"):`. A flavour the device does not offer falls back to its default.
A flavour's `k` has every required and optional kernel name: an optional kernel it has no launcher
for runs as its composition on the flavour's own primitives (kernels/numpy_cpu/compose.py).
This module alone imports kernels.numba_cpu, kernels.cupy_cuda and kernels.numba_cuda, and only lazily.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from contextvars import ContextVar
from dataclasses import dataclass
from types import ModuleType, SimpleNamespace

import numpy as np

from engine.errors import DeviceError
from kernels.numpy_cpu.compose import complete

DEVICES = ("cpu", "cuda")
# per device: the flavours it offers, default first, and the module holding each flavour's KERNELS
_FLAVOURS: dict[str, dict[str, str]] = {
    "cpu": {"numba": "kernels.numba_cpu", "numpy": "kernels.numpy_cpu"},
    # the GPU tables live in a `table` module: the packages' bodies and sources import without CuPy
    "cuda": {"cupy": "kernels.cupy_cuda.table", "numba": "kernels.numba_cuda.table"},
}
_ALL_FLAVOURS = ("numpy", "numba", "cupy")

_override: ContextVar[str | None] = ContextVar("engine_kernels", default=None)
_cache: dict[tuple[str, str], Backend] = {}
_unavailable: dict[tuple[str, str], str] = {}  # (device, flavour) -> why it could not load


@dataclass(frozen=True)
class Backend:
    """A device plus a kernel flavour: `xp` for generic array math, `k.<name>` for named kernels."""

    device: str  # "cpu" | "cuda"
    flavour: str  # "numpy" | "numba" | "cupy"
    xp: ModuleType  # numpy or cupy
    k: SimpleNamespace  # every name of kernels.KERNEL_NAMES and kernels.OPTIONAL_KERNEL_NAMES
    offered: frozenset[str]  # the names the flavour's table has (the rest of k is composed)

    def has(self, name: str) -> bool:
        """True when the flavour's table has kernel `name`, False when k composes it."""
        return name in self.offered


def device_of(a) -> str:
    """ "cuda" for a CuPy array, "cpu" for anything else (NumPy arrays, scalars)."""
    return "cuda" if type(a).__module__.partition(".")[0] == "cupy" else "cpu"


def _requested() -> str | None:
    flavour = _override.get() or os.environ.get("ENGINE_KERNELS") or None
    if flavour is not None and flavour not in _ALL_FLAVOURS:
        raise DeviceError(f"ENGINE_KERNELS={flavour!r}: expected one of {', '.join(_ALL_FLAVOURS)}")
    return flavour


def _load(device: str, flavour: str) -> Backend | None:
    """Import one flavour's kernel table; None (and the reason kept) if its library is missing."""
    key = (device, flavour)
    if key in _cache:
        return _cache[key]
    if key in _unavailable:
        return None
    try:
        if device == "cuda":
            xp = _cupy()
        else:
            xp = np
        module = importlib.import_module(_FLAVOURS[device][flavour])
    except (ImportError, DeviceError, OSError, RuntimeError) as exc:
        _unavailable[key] = f"{type(exc).__name__}: {exc}"
        return None
    k = SimpleNamespace(**complete(module.KERNELS))
    _cache[key] = Backend(device, flavour, xp, k, frozenset(module.KERNELS))
    return _cache[key]


def backend_for(device: str) -> Backend:
    """The backend that serves `device` under the current kernel setting."""
    if device not in _FLAVOURS:
        raise DeviceError(f"unknown device {device!r}: expected one of {', '.join(DEVICES)}")
    offered = _FLAVOURS[device]
    requested = _requested()
    if requested in offered:
        backend = _load(device, requested)
        if backend is None:
            why = _unavailable[(device, requested)]
            raise DeviceError(f"kernel flavour {requested!r} is not available on {device}: {why}")
        return backend
    for flavour in offered:  # the device's default first, then its fallbacks
        backend = _load(device, flavour)
        if backend is not None:
            return backend
    reasons = sorted({_unavailable[(device, f)] for f in offered if (device, f) in _unavailable})
    raise DeviceError(f"no kernel flavour is available on {device}: {'; '.join(reasons)}")


def get_backend(*arrays) -> Backend:
    """The backend for an op on `arrays` (None entries ignored); mixed devices are an error."""
    devices = {device_of(a) for a in arrays if a is not None}
    if len(devices) > 1:
        raise DeviceError(
            f"arrays on two devices in one op: {' and '.join(sorted(devices))}; "
            "move them explicitly with .to(device)"
        )
    return backend_for(devices.pop() if devices else "cpu")


@contextlib.contextmanager
def use_kernels(flavour: str):
    """`with use_kernels("numpy"):` runs the ops inside on that kernel flavour."""
    if flavour not in _ALL_FLAVOURS:
        raise DeviceError(f"unknown kernel flavour {flavour!r}: expected one of {_ALL_FLAVOURS}")
    token = _override.set(flavour)
    try:
        yield
    finally:
        _override.reset(token)


def _cupy() -> ModuleType:
    """Import CuPy and check that a GPU answers; DeviceError otherwise."""
    try:
        import cupy
    except ImportError as exc:
        raise DeviceError("CuPy is not installed: pip install 'medgrad[gpu]'") from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDA driver missing or broken: CuPy raises its own runtime errors
        raise DeviceError(f"no usable CUDA device: {exc}") from exc
    if count < 1:
        raise DeviceError("no CUDA device found")
    return cupy


def cuda_available() -> bool:
    """True when CuPy imports and sees at least one GPU."""
    try:
        _cupy()
    except DeviceError:
        return False
    return True


def available() -> list[str]:
    """Every usable "device:flavour" pair here, e.g. ["cpu:numba", "cpu:numpy"]."""
    return [
        f"{device}:{flavour}"
        for device, offered in _FLAVOURS.items()
        if device == "cpu" or cuda_available()
        for flavour in offered
        if _load(device, flavour) is not None
    ]


def to_device(a, device: str):
    """Copy an array to `device` ("cpu" or "cuda"); returns `a` itself if it is already there."""
    if device not in DEVICES:
        raise DeviceError(f"unknown device {device!r}: expected one of {', '.join(DEVICES)}")
    if device_of(a) == device:
        return a
    if device == "cpu":
        return sys.modules["cupy"].asnumpy(a)
    return _cupy().asarray(a)


def capture_blocker(b: Backend) -> str | None:
    """Why a CUDA graph cannot record a step on backend `b` (engine.graph), or None if it can.

    Only the cupy flavour is recorded, and only with its own GEMM kernels selected
    (MEDGRAD_CUPY_GEMM=own, or kernels.cupy_cuda.gemm.GEMM == "own"): CuPy refuses to capture
    cuBLAS, which every conv and dense product calls otherwise."""
    if b.device == "cpu":
        return f"{b.flavour}_cpu has no graphs"
    if b.flavour != "cupy":
        return f"{b.flavour}_cuda kernels are not recorded (only the cupy flavour's are)"
    if _cupy_gemm() != "own":
        return "cuBLAS GEMM in conv2d_forward (CuPy cannot capture cuBLAS; MEDGRAD_CUPY_GEMM=own)"
    return None


def _cupy_gemm() -> str:
    """The cupy flavour's GEMM selection: "own" or "cublas" (gemm.GEMM, which the environment
    variable MEDGRAD_CUPY_GEMM sets when the module is imported; the module needs no CuPy)."""
    return importlib.import_module("kernels.cupy_cuda.gemm").GEMM
