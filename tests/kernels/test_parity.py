"""Every kernel of every fast flavour equals the numpy_cpu reference: KERNEL_NAMES x flavours x dtypes.

Inputs come from tests/kernels/cases.py. Each kernel runs on its own copies of the inputs (moved to
the flavour's device), and both its return value(s) and its array arguments afterwards (optimizer
updates work in place) are compared with the reference. GPU flavours carry the `gpu` marker.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from engine import backend
from kernels import KERNEL_NAMES, numpy_cpu
from tests.conftest import TOL
from tests.kernels.cases import CASES, flavours_under_test, kernels_of

DTYPES = [np.float32, np.float64]


def _params():
    for flavour in flavours_under_test():
        marks = [pytest.mark.gpu] if flavour.startswith("cuda") else []
        for name in KERNEL_NAMES:
            for label, make in CASES[name]:
                for dtype in DTYPES:
                    yield pytest.param(
                        flavour,
                        name,
                        make,
                        dtype,
                        marks=marks,
                        id=f"{flavour}-{name}-{label}-{np.dtype(dtype).name}",
                    )


def _flatten(value):
    """A kernel's result as a list of arrays (tuples unpacked, None and scalars dropped)."""
    if isinstance(value, tuple | list):
        return [a for v in value for a in _flatten(v)]
    return [] if value is None or isinstance(value, int | float | bool) else [value]


def _on(device, args):
    return [backend.to_device(a, device) if isinstance(a, np.ndarray) else a for a in args]


@pytest.mark.parametrize("flavour,name,make,dtype", list(_params()))
def test_kernel_parity(flavour, name, make, dtype):
    args = make(np.random.default_rng(0), dtype)
    device = flavour.split(":")[0]
    ref_args = copy.deepcopy(list(args))
    ref = _flatten(numpy_cpu.KERNELS[name](*ref_args)) + _flatten(ref_args)
    got_args = _on(device, copy.deepcopy(list(args)))
    got = _flatten(getattr(kernels_of(flavour), name)(*got_args)) + _flatten(got_args)
    assert len(got) == len(ref), f"{name}: {len(got)} arrays returned/updated, expected {len(ref)}"
    tol = TOL["parity32" if dtype == np.float32 else "parity64"]
    for i, (g, r) in enumerate(zip(got, ref, strict=True)):
        g = backend.to_device(g, "cpu")
        assert g.shape == r.shape and g.dtype == r.dtype, f"{name} array {i}: {g.shape} {g.dtype}"
        if r.dtype.kind in "iu":  # argmax: the tie rule must match exactly
            np.testing.assert_array_equal(g, r, err_msg=f"{name} array {i}")
        else:
            np.testing.assert_allclose(g, r, **tol, err_msg=f"{name} array {i}")


def test_every_fast_flavour_covers_the_contract():
    """Each flavour's table names exactly KERNEL_NAMES (build_table enforces it at import)."""
    for flavour in flavours_under_test():
        assert set(vars(kernels_of(flavour))) == set(KERNEL_NAMES), flavour


def test_numba_flavour_is_tested_where_numba_imports():
    """Guard against the parity suite silently testing nothing on a machine with Numba."""
    pytest.importorskip("numba")
    assert "cpu:numba" in flavours_under_test()
