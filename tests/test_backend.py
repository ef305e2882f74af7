"""The backend switch: ENGINE_KERNELS, use_kernels(), available(), mixed devices, Numba fallback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from engine import backend
from engine.errors import DeviceError

ROOT = Path(__file__).resolve().parents[1]
HAS_NUMBA = "cpu:numba" in backend.available()

# Run in a fresh interpreter: `import numba` (and anything under it) raises ImportError.
BLOCK_NUMBA = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "numba" or name.startswith("numba."):
            raise ImportError(f"{name} blocked by the test")
sys.meta_path.insert(0, _Block())
"""

INFER = """
import json, sys
import numpy as np
import models
from engine import backend, no_grad
from engine.tensor import Tensor
model = models.get("seed_cnn", rng=np.random.default_rng(0))
x = np.random.default_rng(1).standard_normal((4, 1, 28, 28)).astype(np.float32)
with no_grad():
    y = model(Tensor(x)).data
print(json.dumps({"shape": list(y.shape), "finite": bool(np.isfinite(y).all()),
                  "flavour": backend.get_backend(x).flavour, "available": backend.available(),
                  "numba_loaded": "numba" in sys.modules, "y": y.tolist()}))
"""


def _run(code: str, **env) -> dict:
    full_env = {k: v for k, v in os.environ.items() if k != "ENGINE_KERNELS"}
    full_env.update(PYTHONPATH=str(ROOT), **env)
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_default_flavour_is_numba_when_it_imports(monkeypatch):
    monkeypatch.delenv("ENGINE_KERNELS", raising=False)
    expected = "numba" if HAS_NUMBA else "numpy"
    assert backend.get_backend(np.zeros(2)).flavour == expected


def test_env_var_selects_flavour(monkeypatch):
    monkeypatch.setenv("ENGINE_KERNELS", "numpy")
    b = backend.get_backend(np.zeros(2))
    assert (b.device, b.flavour) == ("cpu", "numpy")


def test_env_var_rejects_unknown_flavour(monkeypatch):
    monkeypatch.setenv("ENGINE_KERNELS", "fortran")
    with pytest.raises(DeviceError, match="fortran"):
        backend.get_backend(np.zeros(2))


def test_context_manager_overrides_env_and_restores(monkeypatch):
    monkeypatch.delenv("ENGINE_KERNELS", raising=False)
    before = backend.get_backend(np.zeros(1)).flavour
    with backend.use_kernels("numpy"):
        assert backend.get_backend(np.zeros(1)).flavour == "numpy"
        if HAS_NUMBA:
            with backend.use_kernels("numba"):
                assert backend.get_backend(np.zeros(1)).flavour == "numba"
            assert backend.get_backend(np.zeros(1)).flavour == "numpy"
    assert backend.get_backend(np.zeros(1)).flavour == before
    with pytest.raises(DeviceError, match="unknown kernel flavour"):
        with backend.use_kernels("fortran"):
            pass


def test_cuda_only_flavour_falls_back_to_cpu_default():
    """`cupy` names no CPU flavour: CPU arrays keep the CPU default instead of failing."""
    with backend.use_kernels("cupy"):
        assert backend.get_backend(np.zeros(1)).device == "cpu"


def test_available_lists_cpu_flavours():
    names = backend.available()
    assert "cpu:numpy" in names
    assert ("cpu:numba" in names) == HAS_NUMBA
    assert all(n.split(":")[0] in backend.DEVICES for n in names)


class _FakeCupyArray:
    """Claims to come from CuPy: enough for device_of() without a GPU."""

    __module__ = "cupy._core.core"


def test_mixed_devices_raise_naming_both():
    with pytest.raises(DeviceError, match="cpu and cuda"):
        backend.get_backend(np.zeros(2), _FakeCupyArray())


@pytest.mark.skipif(not HAS_NUMBA, reason="numba not installed")
def test_numba_flavour_gives_the_same_step_as_numpy():
    """One seed-CNN training step (float64) on both flavours: same loss and same gradients."""
    import engine.functional as F
    import models
    from engine.tensor import Tensor

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 1, 28, 28))
    t = rng.integers(0, 10, 3)
    results = {}
    for flavour in ("numpy", "numba"):
        with backend.use_kernels(flavour):
            model = models.get("seed_cnn", rng=np.random.default_rng(5)).astype(np.float64)
            loss = F.softmax_cross_entropy(model(Tensor(x)), t)
            loss.backward()
            results[flavour] = [loss.data] + [p.grad for p in model.parameters()]
    for a, b in zip(results["numpy"], results["numba"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_inference_works_with_numba_blocked():
    out = _run(BLOCK_NUMBA + INFER)
    assert out["shape"] == [4, 10] and out["finite"]
    assert out["flavour"] == "numpy"
    assert out["available"] == ["cpu:numpy"]
    assert not out["numba_loaded"]


def test_requesting_numba_when_blocked_is_a_clear_error():
    code = BLOCK_NUMBA + textwrap.dedent("""
        import numpy as np
        from engine import backend
        from engine.errors import DeviceError
        try:
            backend.get_backend(np.zeros(1))
        except DeviceError as exc:
            print('{"error": %s}' % __import__("json").dumps(str(exc)))
    """)
    out = _run(code, ENGINE_KERNELS="numba")
    assert "numba" in out["error"] and "not available" in out["error"]


def test_env_numpy_is_honoured_in_a_fresh_process():
    """ENGINE_KERNELS=numpy: inference runs on NumPy and Numba is never even imported."""
    out = _run(INFER.replace('"available": backend.available(),', ""), ENGINE_KERNELS="numpy")
    assert out["flavour"] == "numpy" and out["finite"]
    assert not out["numba_loaded"]


def test_optional_kernels_compose_where_a_flavour_has_none():
    """numpy_cpu offers no fused kernel: its k runs the composition on its own primitives, which
    is the reference; numba_cpu offers its own. `has` tells which."""
    from kernels import KERNEL_NAMES, OPTIONAL_KERNEL_NAMES
    from kernels.numpy_cpu import REFERENCE

    with backend.use_kernels("numpy"):
        b = backend.get_backend(np.zeros(1))
    assert all(b.has(name) for name in KERNEL_NAMES)
    assert not any(b.has(name) for name in OPTIONAL_KERNEL_NAMES)
    rng = np.random.default_rng(0)
    x, W, b_ = rng.standard_normal((2, 3, 8, 8)), rng.standard_normal((4, 3, 3, 3)), np.zeros(4)
    args = (x, W, b_, (1, 1), (0, 0), (2, 2), (2, 2), (0, 0))
    y, argmax = b.k.conv2d_relu_max_pool2d_forward(*args)
    y_ref, argmax_ref = REFERENCE["conv2d_relu_max_pool2d_forward"](*args)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(argmax, argmax_ref)
    if HAS_NUMBA:
        with backend.use_kernels("numba"):
            assert backend.get_backend(np.zeros(1)).has("conv2d_relu_max_pool2d_forward")
