"""Every kernel each fast flavour offers equals the numpy_cpu reference: flavours x names x dtypes.

The names are the required KERNEL_NAMES and whichever OPTIONAL_KERNEL_NAMES the flavour's table
has (on the CPU, less numpy_cpu's own functions taken as they are); the reference of an optional
kernel is its composition on numpy_cpu's primitives. Cases and the comparison come from
tests/kernels/cases.py; GPU flavours carry the `gpu` marker. The coverage of each CPU flavour (own
launcher, fallback, composed) is printed: `pytest -rP -k coverage` shows it.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine import backend
from kernels import (
    ALL_KERNEL_NAMES,
    KERNEL_NAMES,
    OPTIONAL_KERNEL_NAMES,
    build_table,
    coverage,
    describe_coverage,
    numpy_cpu,
)
from kernels.numpy_cpu import REFERENCE
from kernels.numpy_cpu.compose import COMPOSED, complete
from tests.kernels.cases import (
    CASES,
    DTYPES,
    backend_of,
    check_parity,
    flavours_under_test,
    report_coverage,
    softmax_cross_entropy_bad_targets,
)


def _params():
    for flavour in flavours_under_test():
        marks = [pytest.mark.gpu] if flavour.startswith("cuda") else []
        b = backend_of(flavour)
        for name in (n for n in ALL_KERNEL_NAMES if b.has(n)):
            if b.device == "cpu" and getattr(b.k, name) is REFERENCE[name]:
                continue  # numpy_cpu's own function, taken as is (a numba_cpu fallback)
            for case in CASES[name]:
                for dtype in DTYPES:
                    yield pytest.param(
                        flavour,
                        name,
                        case,
                        dtype,
                        marks=marks,
                        id=f"{flavour}-{name}-{case.label}-{np.dtype(dtype).name}",
                    )


@pytest.mark.parametrize("flavour,name,case,dtype", list(_params()))
def test_kernel_parity(flavour, name, case, dtype):
    device = flavour.split(":")[0]
    check_parity(
        backend_of(flavour).k,
        name,
        case,
        dtype,
        dev=lambda a: backend.to_device(a, device),
        host=lambda a: backend.to_device(a, "cpu"),
    )


@pytest.mark.gpu
@pytest.mark.parametrize("flavour", ["cupy", "numba"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_bad_targets_on_gpu(flavour, dtype):
    cp = backend.backend_for("cuda").xp
    k = backend_of(f"cuda:{flavour}").k
    softmax_cross_entropy_bad_targets(k, dtype, dev=cp.asarray, host=cp.asnumpy)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_cupy_norm_lanes_and_conv3d_chunks_on_gpu(monkeypatch, dtype):
    """Paths of the cupy launchers that the cases reach only at large shapes, forced on tiny
    ones: norm slices reduced over several elements per lane (NORM_THREADS lowered) and conv3d
    image by image (COLS_LIMIT lowered)."""
    from kernels.cupy_cuda import launchers

    cp = backend.backend_for("cuda").xp
    k = backend_of("cuda:cupy").k
    monkeypatch.setattr(launchers, "NORM_THREADS", 7)
    monkeypatch.setattr(launchers, "COLS_LIMIT", 1)
    names = ["norm_moments", "norm_backward"] + [n for n in KERNEL_NAMES if n.startswith("conv3d")]
    for name in names:
        for case in (c for c in CASES[name] if c.tiny):
            check_parity(k, name, case, dtype, dev=cp.asarray, host=cp.asnumpy)


def test_every_flavour_offers_the_required_kernels_and_k_has_all():
    """build_table demands every required name; the backend composes the missing optional ones."""
    for flavour in ["cpu:numpy", *flavours_under_test()]:
        b = backend_of(flavour)
        assert set(KERNEL_NAMES) <= b.offered <= set(ALL_KERNEL_NAMES), flavour
        assert set(vars(b.k)) == set(ALL_KERNEL_NAMES), flavour
        assert all(b.has(name) == (name in b.offered) for name in ALL_KERNEL_NAMES)


def test_numba_flavour_is_tested_where_numba_imports():
    """Guard against the parity suite silently testing nothing on a machine with Numba."""
    pytest.importorskip("numba")
    assert "cpu:numba" in flavours_under_test()


def test_build_table_requires_primitives_accepts_optional_rejects_unknown():
    primitives = dict(numpy_cpu.KERNELS)
    optional = next(iter(OPTIONAL_KERNEL_NAMES))
    assert set(build_table("t", {**primitives, optional: print})) == {*KERNEL_NAMES, optional}
    with pytest.raises(RuntimeError, match=r"missing required kernels \['relu_backward'\]"):
        build_table("t", {n: f for n, f in primitives.items() if n != "relu_backward"})
    with pytest.raises(RuntimeError, match=r"unknown names \['no_such_kernel'\]"):
        build_table("t", {**primitives, "no_such_kernel": print})


def test_missing_optional_kernel_composes_the_tables_own_primitives():
    """complete() fills an optional name with its composition on the table's own primitives (so a
    GPU flavour without a fused launcher stays on its device), and leaves an offered one alone."""
    calls = []

    def counted(name):
        def kernel(*args):
            calls.append(name)
            return numpy_cpu.KERNELS[name](*args)

        return kernel

    table = {name: counted(name) for name in KERNEL_NAMES}
    full = complete(table)
    assert set(full) == set(ALL_KERNEL_NAMES)
    case = CASES["conv2d_relu_max_pool2d_forward"][0]
    check_parity(full, "conv2d_relu_max_pool2d_forward", case, np.float64)
    assert calls == ["conv2d_forward", "relu_forward", "max_pool2d_forward"]
    offered = {**table, "conv2d_relu_max_pool2d_forward": print}
    assert complete(offered)["conv2d_relu_max_pool2d_forward"] is print
    assert set(COMPOSED) == set(OPTIONAL_KERNEL_NAMES)
    assert set(REFERENCE) == set(ALL_KERNEL_NAMES)


def test_coverage_report_is_complete_and_correct():
    own = {"relu_forward", "conv2d_relu_max_pool2d_forward"}
    report = coverage(own)
    assert list(report) == list(ALL_KERNEL_NAMES)
    expected = {name: "fallback" for name in KERNEL_NAMES}
    expected.update({name: "composed" for name in OPTIONAL_KERNEL_NAMES})
    expected.update(dict.fromkeys(own, "own"))
    assert report == expected
    line = describe_coverage("fake", own)
    assert f"1/{len(KERNEL_NAMES)} required and 1/{len(OPTIONAL_KERNEL_NAMES)} optional" in line
    assert "composed: conv2d_relu_max_pool2d_backward" in line
    with pytest.raises(RuntimeError, match="no_such_kernel"):
        coverage({"no_such_kernel"})


def own_launchers(flavour: str) -> set[str]:
    """The names a CPU flavour serves with a function of its own, not numpy_cpu's."""
    b = backend_of(flavour)
    base = {} if flavour == "cpu:numpy" else numpy_cpu.KERNELS
    return {name for name in b.offered if getattr(b.k, name) is not base.get(name)}


@pytest.mark.parametrize("flavour", [f for f in backend.available() if f.startswith("cpu:")])
def test_cpu_flavour_coverage(flavour):
    """numpy_cpu has every primitive and composes the optional kernels; numba_cpu's report is
    printed (a name it does not write falls back to numpy_cpu's, the very same function)."""
    own = own_launchers(flavour)
    report_coverage(flavour, own)
    if flavour == "cpu:numpy":
        assert own == set(KERNEL_NAMES)
    b = backend_of(flavour)
    for name, how in coverage(own).items():
        assert (how == "composed") == (not b.has(name)), (flavour, name)
