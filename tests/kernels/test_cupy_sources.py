"""The cupy_cuda kernels' CUDA C, without a GPU: each source built with g++ and run on the CPU.

A stand-in for cupy.ElementwiseKernel wraps a source's body in `for (i = 0; i < n; ++i)`, with
CuPy's conventions (a raw array indexed flat, a non-raw output a reference to element i, T and I
bound from the arguments), compiles it and calls it through ctypes. The cupy_cuda launchers then run
unchanged on NumPy arrays, so their argument order, output shapes and index formulas are checked
against kernels/numpy_cpu on the tiny cases of tests/kernels/cases.py, for every launcher cupy_cuda
has of its own (the coverage report says which; the others run numpy_cpu's xp-generic kernels).
What this cannot check (NVRTC's compiler, CuPy's own argument casting, cuBLAS) is left to the `gpu`
tests of test_parity.py on a GPU. Skipped where no C++ compiler exists.
"""

from __future__ import annotations

import ctypes
import hashlib
import re
import shutil
import subprocess

import numpy as np
import pytest

from kernels.cupy_cuda import launchers
from kernels.numpy_cpu import REFERENCE
from tests.kernels.cases import (
    DTYPES,
    check_parity,
    report_coverage,
    softmax_cross_entropy_bad_targets,
    tiny_params,
)

CXX = shutil.which("g++") or shutil.which("c++")
pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler to build the CUDA C on a CPU")

_PRELUDE = r"""
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
using std::erf; using std::exp; using std::log; using std::max; using std::min; using std::sqrt;
#define __device__
#define __forceinline__ inline
static inline double __longlong_as_double(long long v) { double d; std::memcpy(&d, &v, 8); return d; }
static inline unsigned int __umulhi(unsigned int a, unsigned int b) {
    return (unsigned int)(((unsigned long long)a * b) >> 32);
}
template <typename U> struct Raw {  // CuPy's CArray as a raw argument: flat, row-major indexing
    U* d;
    U& operator[](ptrdiff_t k) const { return d[k]; }
};
"""
_CTYPES = {
    "float": ctypes.c_float,
    "double": ctypes.c_double,
    "int": ctypes.c_int,
    "long long": ctypes.c_longlong,
    "bool": ctypes.c_bool,
    "unsigned int": ctypes.c_uint,
}
_NUMPY = {
    "float": np.float32,
    "double": np.float64,
    "int": np.int32,
    "long long": np.int64,
    "bool": np.bool_,
    "unsigned int": np.uint32,
}
_SCALAR_C = {
    "float64": "double",
    "int32": "int",
    "int64": "long long",
    "uint32": "unsigned int",
    "bool": "bool",
}  # CuPy type -> C type
_C_OF = {
    np.dtype(np.float32): "float",
    np.dtype(np.float64): "double",
    np.dtype(np.int32): "int",
    np.dtype(np.int64): "long long",
}


def _params(spec: str) -> list[tuple[bool, str, str]]:
    """'raw T x, int32 c' -> [(True, 'T', 'x'), (False, 'int32', 'c')]."""
    out = []
    for part in spec.split(","):
        words = part.split()
        out.append((words[0] == "raw", words[-2], words[-1]))
    return out


class CpuElementwise:
    """Runs a kernels.cupy_cuda.sources.Source on NumPy arrays, built once per type binding."""

    def __init__(self, source, build_dir):
        self.source, self.build_dir = source, build_dir
        self.ins, self.outs = _params(source.in_params), _params(source.out_params)
        self.libs: dict = {}

    def __call__(self, *args):
        params = self.ins + self.outs
        assert len(args) == len(params), f"{self.source.name}: {len(args)} args for {params}"
        binding = {}  # placeholder (T, I) -> C type, read off the array arguments
        for (_, typ, name), a in zip(params, args, strict=True):
            if isinstance(a, np.ndarray) and len(typ) == 1:
                c_type = _C_OF[a.dtype]
                assert binding.setdefault(typ, c_type) == c_type, f"{name}: {typ} bound twice"
        kinds = tuple(isinstance(a, np.ndarray) for a in args)
        fn = self._compiled(tuple(sorted(binding.items())), kinds)
        keep, pointers, size = [], [], None
        for (raw, typ, name), a in zip(params, args, strict=True):
            c_type = binding.get(typ, _SCALAR_C.get(typ))
            if isinstance(a, np.ndarray):
                assert a.dtype == _NUMPY[c_type], f"{name}: {a.dtype}, expected {c_type}"
                is_out = (raw, typ, name) in self.outs
                assert a.flags.c_contiguous or not is_out, f"output {name} must be contiguous"
                a = np.ascontiguousarray(a)
                if not raw:
                    assert size in (None, a.size), f"{name}: non-raw arrays differ in size"
                    size = a.size
                keep.append(a)
                pointers.append(a.ctypes.data)
            else:
                value = _CTYPES[c_type](a)
                keep.append(value)
                pointers.append(ctypes.addressof(value))
        assert size is not None, f"{self.source.name}: no non-raw array gives the size"
        fn(ctypes.c_ssize_t(size), (ctypes.c_void_p * len(pointers))(*pointers))

    def _compiled(self, binding: tuple, kinds: tuple):
        key = (binding, kinds)
        if key not in self.libs:
            code = self._code(dict(binding), kinds)
            digest = hashlib.sha1(code.encode()).hexdigest()[:16]
            src, lib = self.build_dir / f"{digest}.cpp", self.build_dir / f"{digest}.so"
            src.write_text(code)
            done = subprocess.run(
                [CXX, "-O1", "-shared", "-fPIC", "-std=c++14", "-o", str(lib), str(src)],
                capture_output=True,
                text=True,
            )
            assert done.returncode == 0, f"{self.source.name} does not compile:\n{done.stderr}"
            fn = ctypes.CDLL(str(lib)).run
            fn.argtypes, fn.restype = [ctypes.c_ssize_t, ctypes.c_void_p], None
            self.libs[key] = fn
        return self.libs[key]

    def _code(self, binding: dict, kinds: tuple) -> str:
        """The body inside a loop over i, each parameter declared as CuPy declares it."""
        lines = [_PRELUDE, *(f"typedef {c} {t};" for t, c in binding.items()), self.source.preamble]
        lines.append('extern "C" void run(ptrdiff_t n, void** a) {')
        loop = []
        for index, ((raw, typ, name), is_array) in enumerate(
            zip(self.ins + self.outs, kinds, strict=True)
        ):
            c_type = _SCALAR_C.get(typ, typ)
            is_out = index >= len(self.ins)
            if raw:
                lines.append(f"    Raw<{c_type}> {name}{{({c_type}*)a[{index}]}};")
            elif not is_array:
                lines.append(f"    const {c_type} {name} = *(const {c_type}*)a[{index}];")
            elif is_out:
                loop.append(f"        {c_type}& {name} = (({c_type}*)a[{index}])[i];")
            else:
                loop.append(f"        const {c_type} {name} = ((const {c_type}*)a[{index}])[i];")
        lines += [
            "    for (ptrdiff_t i = 0; i < n; ++i) {",
            *loop,
            self.source.operation,
            "    }",
            "}",
        ]
        return "\n".join(lines)


@pytest.fixture(scope="module")
def cpu_launchers(tmp_path_factory):
    """kernels.cupy_cuda.launchers with every ElementwiseKernel replaced by its g++ build."""
    build_dir = tmp_path_factory.mktemp("cupy_sources")
    saved_build, saved_kernels = launchers._build, dict(launchers._kernels)
    launchers._build = lambda source: CpuElementwise(source, build_dir)
    launchers._kernels.clear()
    yield launchers
    launchers._build = saved_build
    launchers._kernels.clear()
    launchers._kernels.update(saved_kernels)


OWN = tiny_params(launchers.KERNELS)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,case", OWN)
def test_cupy_cuda_parity_on_cpu(cpu_launchers, name, case, dtype):
    check_parity(cpu_launchers.KERNELS, name, case, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cupy_cuda_bad_targets_give_nan_on_cpu(cpu_launchers, dtype):
    softmax_cross_entropy_bad_targets(cpu_launchers.KERNELS, dtype)


def test_cupy_cuda_coverage():
    """Reported, not demanded: which names have a launcher of their own here."""
    report_coverage("cupy_cuda", launchers.KERNELS)


def test_every_source_comments_its_thread_mapping():
    """STYLE 4: a kernel body begins with a comment giving the thread-to-element mapping."""
    from kernels.cupy_cuda.sources import SOURCES

    for name, source in SOURCES.items():
        first = source.operation.strip().splitlines()[0].strip()
        assert re.match(r"//\s*thread i ->", first), name


def test_magic_division_is_exact():
    """launchers._divisor's (m, s) give n // d == (umulhi(n, m) + n) >> s over the whole range
    the 32-bit kernels use (0 <= n < 2^31): every divisor up to 4100 and some large ones, at the
    edges of the range and around multiples of d, where a wrong magic number fails first."""
    rng = np.random.default_rng(0)
    divisors = [*range(1, 4101), 2**15 + 1, 676 * 4096, 121 * 4096, 2**30 + 3, 2**31 - 1]
    for d in divisors:
        d_, m, s = launchers._divisor(d)
        assert d_ == d and 0 < m < 2**32 and 0 <= s <= 31
        n = np.concatenate(
            [
                np.arange(0, min(3 * d + 3, 5000)),
                rng.integers(0, 2**31, 200),
                np.arange(2**31 - min(3 * d + 3, 5000), 2**31),
                (rng.integers(1, (2**31 - 1) // d + 1, 200) * d)[:, None] + np.array([-1, 0, 1]),
            ],
            axis=None,
        )
        n = n[(n >= 0) & (n < 2**31)].astype(np.uint64)
        q = (((n * np.uint64(m)) >> np.uint64(32)) + n) >> np.uint64(s)
        np.testing.assert_array_equal(q, n // np.uint64(d), err_msg=f"d={d}")
    with pytest.raises(ValueError, match="divisor"):
        launchers._divisor(0)


@pytest.mark.parametrize("need_gx", [True, False])
def test_fused_past_32_bit_indexing_takes_the_64_bit_kernels(cpu_launchers, monkeypatch, need_gx):
    """Past INDEX_LIMIT elements the fused launchers run the composition of the 64-bit
    primitives: same results (the limit is lowered here so that tiny shapes cross it)."""
    rng = np.random.default_rng(1)
    x = rng.integers(-2, 3, (2, 2, 6, 6)).astype(np.float64)
    W = rng.integers(-2, 3, (3, 2, 3, 3)).astype(np.float64)
    b = rng.integers(-2, 2, 3).astype(np.float64)
    geometry = ((1, 1), (0, 0), (2, 2), (2, 2), (0, 0))
    y_ref, argmax_ref = REFERENCE["conv2d_relu_max_pool2d_forward"](x, W, b, *geometry)
    gy = rng.standard_normal(y_ref.shape)
    ref = REFERENCE["conv2d_relu_max_pool2d_backward"](
        gy, y_ref, argmax_ref, x, W, *geometry, need_gx
    )
    monkeypatch.setattr(cpu_launchers, "INDEX_LIMIT", 100)
    assert not cpu_launchers._fused_fits32(x.shape, W.shape, 4, 4)
    y, argmax = cpu_launchers.conv2d_relu_max_pool2d_forward(x, W, b, *geometry)
    np.testing.assert_array_equal(argmax, argmax_ref)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12)
    got = cpu_launchers.conv2d_relu_max_pool2d_backward(gy, y, argmax, x, W, *geometry, need_gx)
    for g, e in zip(got, ref, strict=True):
        assert (g is None) == (e is None)
        if e is not None:
            assert g.shape == e.shape and g.dtype == e.dtype
            np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-12)


_NORM_TINY = [
    p for p in tiny_params(launchers.KERNELS) if p.values[0] in ("norm_moments", "norm_backward")
]


@pytest.mark.parametrize("threads", [1, 7, 13])
@pytest.mark.parametrize("name,case", _NORM_TINY)
def test_norm_reductions_over_few_lanes_on_cpu(cpu_launchers, monkeypatch, name, case, threads):
    """With NORM_THREADS lowered, each lane reduces several elements (the lane loop, its
    (outer, inner) stepping across rows of r, the lane merge): the same results. 1 thread: one
    lane per slice; 7: lanes that do not divide r; 13: lanes past r (steps of whole rows)."""
    monkeypatch.setattr(cpu_launchers, "NORM_THREADS", threads)
    for dtype in DTYPES:
        check_parity(cpu_launchers.KERNELS, name, case, dtype)


def test_norm_moments_float32_is_stable_at_a_large_mean(cpu_launchers, monkeypatch):
    """float32 slices of mean 1e4 and variance 1 and 4, 600 elements in one lane: the shifted
    double sums keep the variance to float32 rounding (E[x^2] - E[x]^2 in float32 keeps none)."""
    monkeypatch.setattr(cpu_launchers, "NORM_THREADS", 2)  # one lane per slice
    x = np.random.default_rng(3).standard_normal((6, 2, 100)) * np.array([1.0, 2.0])[:, None] + 1e4
    mean, var = cpu_launchers.norm_moments(x.astype(np.float32))
    x32 = x.astype(np.float32).astype(np.float64)  # the float32 data, exactly
    np.testing.assert_allclose(mean, x32.mean(axis=(0, 2)), rtol=1e-7)
    np.testing.assert_allclose(var, x32.var(axis=(0, 2)), rtol=1e-6)


@pytest.mark.parametrize(
    "name,case", [p for p in tiny_params(launchers.KERNELS) if p.values[0].startswith("conv3d")]
)
def test_conv3d_in_chunks_of_images_on_cpu(cpu_launchers, monkeypatch, name, case):
    """Past COLS_LIMIT column elements the conv3d launchers run one chunk of images at a time
    (lowered here so that every tiny batch runs image by image): the same results."""
    monkeypatch.setattr(cpu_launchers, "COLS_LIMIT", 1)
    assert cpu_launchers._image_chunks(3, 10) == [(0, 1), (1, 2), (2, 3)]
    for dtype in DTYPES:
        check_parity(cpu_launchers.KERNELS, name, case, dtype)
