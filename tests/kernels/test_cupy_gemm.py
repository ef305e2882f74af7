"""The cupy_cuda flavour's own GEMM kernels (kernels/cupy_cuda/gemm*.py), without a GPU.

The CUDA C of mg_gemm is built with g++ (C++20) under a small prelude that makes it a CPU program:
blockIdx / threadIdx are thread_local, `__shared__` is static storage (one block runs at a time,
so a block's threads share it), each block's threads run as std::threads and `__syncthreads()` is
a std::barrier over them. kernels.cupy_cuda.gemm._launch is replaced by a call into that build,
so the launchers, their argument packing and every tile/bounds/transpose path run as on a GPU
(one block at a time, which is one legal schedule), on NumPy arrays:
- dense products, every transpose flag, odd M/N/K, K not a multiple of the tile, alpha/beta,
  strided views: exact on small-integer data in float32 and float64, and on normal data;
- the conv2d kernels and the fused conv-ReLU-pool path with gemm.GEMM = "own" against
  kernels/numpy_cpu on tests/kernels/cases.py's tiny cases (the ElementwiseKernels around them
  built by test_cupy_sources.py's g++ stand-in).
The tensor-core kernel runs with its mma.sync emulated per warp in C++ (the fragment layout of
PTX's mma.m16n8k16 / m16n8k8 as the kernel assumes it) and through its pre-sm_80 CUDA-core body.
The PTX itself cannot run on a CPU: with NVRTC available (env MEDGRAD_NVRTC_LIB,
or the nvidia-cuda-nvrtc / nvidia-cuda-runtime wheels importable) both sources are compiled to
PTX for sm_80 and sm_90, which checks that they compile; skipped otherwise. What neither shows
(NVRTC's code running, speed) is left to the `gpu` tests of tests/kernels/test_gpu.py.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import shutil
import subprocess

import numpy as np
import pytest

from kernels.cupy_cuda import gemm, launchers
from kernels.cupy_cuda import gemm_sources as src
from tests.kernels.cases import DTYPES, check_parity, tiny_params
from tests.kernels.test_cupy_sources import cpu_launchers  # noqa: F401  (the fixture)

CXX = shutil.which("g++") or shutil.which("c++")

_PRELUDE = r"""
#include <algorithm>
#include <barrier>
#include <memory>
#include <thread>
#include <vector>
using std::max; using std::min;
struct MgDim3 { unsigned int x, y, z; };
static thread_local MgDim3 threadIdx, blockIdx;
static MgDim3 blockDim, gridDim;
static std::barrier<>* mg_block_barrier;
static std::barrier<>* mg_warp_barriers[32];
#define __syncthreads() mg_block_barrier->arrive_and_wait()
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static
static inline unsigned int __umulhi(unsigned int a, unsigned int b) {
    return (unsigned int)(((unsigned long long)a * b) >> 32);
}
// one block at a time: `threads` std::threads run every block in turn, meeting at the barrier
// after each (so no thread enters block b + 1 while another still reads block b's shared memory)
template <typename F> void mg_run_grid(unsigned int blocks, unsigned int threads, F body) {
    gridDim = {blocks, 1, 1};
    blockDim = {threads, 1, 1};
    std::barrier<> barrier((std::ptrdiff_t)threads);
    mg_block_barrier = &barrier;
    std::vector<std::unique_ptr<std::barrier<>>> warps;  // for the emulated mma.sync
    for (unsigned int w = 0; w < (threads + 31) / 32 && w < 32; ++w)
        warps.push_back(std::make_unique<std::barrier<>>(std::min(32u, threads - 32 * w)));
    for (unsigned int w = 0; w < warps.size(); ++w) mg_warp_barriers[w] = warps[w].get();
    std::vector<std::thread> pool;
    for (unsigned int t = 0; t < threads; ++t)
        pool.emplace_back([&body, &barrier, blocks, t] {
            threadIdx = {t, 0, 0};
            for (unsigned int b = 0; b < blocks; ++b) {
                blockIdx = {b, 0, 0};
                body();
                barrier.arrive_and_wait();
            }
        });
    for (auto& thread : pool) thread.join();
}
"""

# The tensor-core kernel's helpers in C++ (MG_CPU_MMA replaces their inline PTX). Conversions
# round as the PTX does: cvt.rn (nearest even) to fp16 and bf16, cvt.rna (nearest, ties away)
# to TF32. An mma.sync is emulated per warp: every lane puts its fragment registers in the warp's
# staging area, the warp meets at a barrier, each lane rebuilds the 16 x k A and k x 8 B tiles
# from the fragment layout of PTX's mma.m16n8k16 / m16n8k8 (the same layout the kernel assumes:
# what this checks is the kernel's use of it, not the hardware) and adds its four accumulators.
_MMA_PRELUDE = r"""
#include <cstring>
#define MG_CPU_MMA 1
static inline float mg_to_float(float v) { return v; }
static inline float mg_to_float(unsigned short h) { _Float16 f; std::memcpy(&f, &h, 2); return (float)f; }
static inline void mg_store(float v, float* p) { *p = v; }
static inline void mg_store(float v, unsigned short* p) { _Float16 f = (_Float16)v; std::memcpy(p, &f, 2); }
static inline unsigned short mg_cvt_f16(float v) { unsigned short h; mg_store(v, &h); return h; }
static inline unsigned short mg_cvt_bf16(float v) {
    unsigned int b; std::memcpy(&b, &v, 4);
    if ((b & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
    b += 0x7fffu + ((b >> 16) & 1u);
    return (unsigned short)(b >> 16);
}
static inline unsigned int mg_cvt_tf32(float v) {
    unsigned int b; std::memcpy(&b, &v, 4);
    if ((b & 0x7f800000u) != 0x7f800000u) b += 0x1000u;
    return b & 0xffffe000u;
}
static inline float mg_value(int kind, unsigned int bits) {  // one element of a fragment
    float f;
    if (kind == 0) return mg_to_float((unsigned short)bits);
    if (kind == 1) bits <<= 16;
    std::memcpy(&f, &bits, 4);
    return f;
}
static unsigned int mg_stage[32][32][6];  // [warp][lane][a0..a3, b0, b1]
template <int KIND>  // 0 fp16, 1 bf16 (m16n8k16); 2 tf32 (m16n8k8)
static void mg_mma(float* d, const unsigned int* a, const unsigned int* b) {
    const int w = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    for (int r = 0; r < 4; ++r) mg_stage[w][lane][r] = a[r];
    mg_stage[w][lane][4] = b[0];
    mg_stage[w][lane][5] = b[1];
    mg_warp_barriers[w]->arrive_and_wait();
    const int K = KIND == 2 ? 8 : 16;
    for (int r = 0; r < 4; ++r) {
        const int row = g + 8 * (r / 2), col = 2 * t + r % 2;
        float s = 0.0f;
        for (int k = 0; k < K; ++k) {
            unsigned int abits, bbits;
            if (KIND == 2) {  // a[(row / 8) + 2 (k / 4)] of lane (row % 8) 4 + k % 4
                abits = mg_stage[w][(row % 8) * 4 + k % 4][row / 8 + 2 * (k / 4)];
                bbits = mg_stage[w][col * 4 + k % 4][4 + k / 4];
            } else {  // pairs: a[(row / 8) + 2 (k / 8)] of lane (row % 8) 4 + (k % 8) / 2
                const int shift = 16 * (k % 2);
                abits = mg_stage[w][(row % 8) * 4 + (k % 8) / 2][row / 8 + 2 * (k / 8)] >> shift;
                bbits = mg_stage[w][col * 4 + (k % 8) / 2][4 + k / 8] >> shift;
                abits &= 0xffffu;
                bbits &= 0xffffu;
            }
            s += mg_value(KIND, abits) * mg_value(KIND, bbits);
        }
        d[r] += s;
    }
    mg_warp_barriers[w]->arrive_and_wait();  // the staging area is reused by the next mma
}
static inline void mg_mma_f16(float* d, const unsigned int* a, const unsigned int* b) { mg_mma<0>(d, a, b); }
static inline void mg_mma_bf16(float* d, const unsigned int* a, const unsigned int* b) { mg_mma<1>(d, a, b); }
static inline void mg_mma_tf32(float* d, const unsigned int* a, const unsigned int* b) { mg_mma<2>(d, a, b); }
"""
_C_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_MMA_TS = {np.dtype(np.float32): "float", np.dtype(np.float16): "unsigned short"}


def _launcher(symbol: str, call: str, params) -> str:
    unpack = ", ".join(
        f"({c})a[{i}]" if c.endswith("*") else f"*({c}*)a[{i}]" for i, (c, _) in enumerate(params)
    )
    return (
        f'extern "C" void {symbol}(unsigned int blocks, unsigned int threads, void** a) {{\n'
        f"    mg_run_grid(blocks, threads, [&] {{ {call}({unpack}); }});\n}}"
    )


def _cpu_source() -> str:
    """Every kernel in one C++ file: mg_gemm per dtype (namespace g_float, g_double) and
    mg_gemm_mma per storage type, with tensor cores emulated (m_*) and without (f_*: the
    pre-sm_80 CUDA-core body), each instance behind an extern "C" launcher."""
    lines = [_PRELUDE, _MMA_PRELUDE]
    for dtype, c_type in _C_TYPES.items():
        lines += [f"namespace g_{c_type} {{ typedef {c_type} T;", src.GEMM_SOURCE]
        for index, instance in enumerate(src.GEMM_INSTANCES):
            symbol = f"gemm_{dtype}_{index}"
            lines.append(_launcher(symbol, src.gemm_name(instance), src.GEMM_PARAMS))
        lines.append(_launcher(f"splitk_{dtype}", "mg_splitk_sum", src.SPLITK_PARAMS))
        lines.append("}")
    for prefix, has_mma in (("m", True), ("f", False)):
        lines.append("#define MG_HAS_MMA 1" if has_mma else "#undef MG_HAS_MMA")
        for dtype, ts in _MMA_TS.items():
            space = f"{prefix}_{dtype}"
            lines += [f"namespace {space} {{ typedef {ts} TS; typedef {ts} TC;", src.MMA_SOURCE]
            for index, instance in enumerate(src.MMA_INSTANCES):
                symbol = f"mma_{space}_{index}"
                lines.append(_launcher(symbol, src.mma_name(*instance), src.MMA_PARAMS))
            lines.append("}")
    return "\n".join(lines)


class CpuGemm:
    """gemm._launch's stand-in: the g++ build of gemm_sources (one library for all kernels).
    `tensor_cores` False runs mg_gemm_mma's CUDA-core body (what a pre-sm_80 GPU runs)."""

    def __init__(self, build_dir):
        self.build_dir, self.lib, self.launches, self.tensor_cores = build_dir, None, [], True

    def _library(self):
        if self.lib is None:
            code = _cpu_source()
            digest = hashlib.sha1(code.encode()).hexdigest()[:16]
            cpp, lib = self.build_dir / f"gemm_{digest}.cpp", self.build_dir / f"gemm_{digest}.so"
            cpp.write_text(code)
            flags = ["-O0", "-shared", "-fPIC", "-std=c++20", "-pthread"]
            done = subprocess.run(
                [CXX, *flags, "-o", str(lib), str(cpp)], capture_output=True, text=True
            )
            assert done.returncode == 0, f"gemm_sources do not compile with g++:\n{done.stderr}"
            self.lib = ctypes.CDLL(str(lib))
        return self.lib

    def __call__(self, kind, name, dtype, blocks, threads, args):
        dtype = np.dtype(dtype)
        if name == "mg_splitk_sum":
            params, symbol = src.SPLITK_PARAMS, f"splitk_{dtype}"
        elif kind == "gemm":
            params = src.GEMM_PARAMS
            symbol = f"gemm_{dtype}_{[src.gemm_name(i) for i in src.GEMM_INSTANCES].index(name)}"
        else:
            params = src.MMA_PARAMS
            index = [src.mma_name(*i) for i in src.MMA_INSTANCES].index(name)
            symbol = f"mma_{'m' if self.tensor_cores else 'f'}_{dtype}_{index}"
        fn = getattr(self._library(), symbol)
        keep, pointers = [], []
        for (c_type, pname), a in zip(params, args, strict=True):
            if c_type.endswith("*"):
                assert isinstance(a, np.ndarray), f"{pname}: {type(a)}"
                keep.append(a)
                pointers.append(a.ctypes.data)
            else:
                assert isinstance(a, np.generic), f"{pname}: {type(a)} is not a NumPy scalar"
                box = np.array(a)
                keep.append(box)
                pointers.append(box.ctypes.data)
        self.launches.append(name)
        fn.argtypes = [ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p]
        fn(blocks, threads, (ctypes.c_void_p * len(pointers))(*pointers))


@pytest.fixture(scope="module")
def cpu_gemm(tmp_path_factory):
    if CXX is None:
        pytest.skip("no C++ compiler to build the CUDA C on a CPU")
    runner = CpuGemm(tmp_path_factory.mktemp("cupy_gemm"))
    saved = gemm._launch
    gemm._launch = runner
    yield runner
    gemm._launch = saved


@pytest.fixture
def own_gemm(cpu_gemm, monkeypatch):
    """gemm.GEMM = "own" with the g++ build behind it; the launches recorded from here."""
    monkeypatch.setattr(gemm, "GEMM", "own")
    monkeypatch.setattr(gemm, "MMA", "")
    cpu_gemm.launches.clear()
    return cpu_gemm


def _stored(rng, rows, cols, dtype, integers):
    if integers:
        return rng.integers(-3, 4, (rows, cols)).astype(dtype)
    return rng.standard_normal((rows, cols)).astype(dtype)


def _operands(rng, M, N, K, trans_a, trans_b, dtype=np.float32):
    """Integer-valued a (M, K) and b (K, N), each stored transposed (a .T view) when its flag is set."""
    a = _stored(rng, K, M, dtype, True).T if trans_a else _stored(rng, M, K, dtype, True)
    b = _stored(rng, N, K, dtype, True).T if trans_b else _stored(rng, K, N, dtype, True)
    return a, b


# M, N, K: one element; odd sizes inside one tile; several tiles with K not a multiple of BK;
# a tall-thin and a wide-short product; more row tiles than column tiles
_SHAPES = [(1, 1, 1), (37, 29, 19), (70, 65, 33), (130, 3, 17), (5, 131, 40)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_own_matmul_every_transpose_exact_on_integers(own_gemm, dtype, trans_a, trans_b):
    """Small-integer operands: every product and sum is exact in float32 too, so any index or
    bounds error shows as a wrong number. Transposes are views (no copy) passed as flags."""
    rng = np.random.default_rng(trans_a * 2 + trans_b)
    for M, N, K in _SHAPES:
        a, b = _operands(rng, M, N, K, trans_a, trans_b, dtype)
        got = gemm.matmul(a, b)
        expected = a.astype(np.float64) @ b.astype(np.float64)
        assert got.dtype == dtype and got.shape == (M, N)
        np.testing.assert_array_equal(got, expected.astype(dtype), err_msg=f"{(M, N, K)}")
    name = src.gemm_name((src.DENSE, src.DENSE, src.DENSE, trans_a, trans_b))
    assert own_gemm.launches[1:] == [name] * (len(_SHAPES) - 1)  # flags, not copies (1x1: either)


@pytest.mark.parametrize("dtype", DTYPES)
def test_own_matmul_alpha_beta_and_strided_views(own_gemm, dtype):
    """out = alpha a b + beta out, on normal data; a row-padded view (G[:, :k]) as an operand."""
    rng = np.random.default_rng(5)
    big = rng.standard_normal((45, 80)).astype(dtype)
    a = big[:, :71]  # rows padded to 80: lda 80, no copy
    b = rng.standard_normal((71, 66)).astype(dtype)
    c0 = rng.standard_normal((45, 66)).astype(dtype)
    out = c0.copy()
    assert gemm.matmul(a, b, out=out, alpha=0.5, beta=-2.0) is out
    expected = 0.5 * (a.astype(np.float64) @ b) - 2.0 * c0
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out, expected, **tol)
    nan_out = np.full((45, 66), np.nan, dtype)  # beta == 0: out is never read
    np.testing.assert_allclose(gemm.matmul(a, b, out=nan_out), a.astype(np.float64) @ b, **tol)


@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_own_matmul_split_k(own_gemm, monkeypatch, trans_a, trans_b):
    """Split-K (forced: every 16 of K may be a split): each block's K range, its partial in the
    workspace and the ordered sum with alpha/beta give the same exact products."""
    monkeypatch.setattr(gemm, "MIN_SPLIT_K", src.BK)
    rng = np.random.default_rng(11)
    for M, N, K in [(37, 29, 70), (5, 131, 40), (70, 65, 33)]:
        a, b = _operands(rng, M, N, K, trans_a, trans_b)
        c0 = _stored(rng, M, N, np.float32, True)
        out = c0.copy()
        gemm.matmul(a, b, out=out, alpha=2.0, beta=-1.0)
        np.testing.assert_array_equal(
            out, 2 * (a.astype(np.float64) @ b) - c0, err_msg=f"{M, N, K}"
        )
    assert own_gemm.launches.count("mg_splitk_sum") == 3
    assert gemm._split_k(1, 70) == (3, 32) and gemm._split_k(1000, 70) == (1, 70)


def test_own_matmul_bad_arguments(own_gemm):
    a, b = np.ones((3, 4)), np.ones((5, 2))
    with pytest.raises(ValueError, match=r"\(3, 4\) and \(5, 2\)"):
        gemm.matmul(a, b)
    with pytest.raises(ValueError, match="beta"):
        gemm.matmul(np.ones((3, 4)), np.ones((4, 2)), beta=1.0)
    with pytest.raises(TypeError, match="int64"):
        gemm.matmul(np.ones((3, 4), np.int64), np.ones((4, 2), np.int64))


def test_gemm_switch_rejects_unknown_values(monkeypatch):
    monkeypatch.setattr(gemm, "GEMM", "cudnn")
    with pytest.raises(ValueError, match="'own' or 'cublas'"):
        gemm.use_own(np.float32)


# ---- the tensor-core kernel, its mma.sync emulated (see _MMA_PRELUDE) ----
def _rounded(a, mode):
    """a's float32 values rounded as mg_gemm_mma rounds its operands, as float64."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    if mode == "fp16":
        return a.astype(np.float16).astype(np.float64)
    bits = a.view(np.uint32).astype(np.uint64)
    if mode == "bf16":  # nearest even
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    else:  # tf32: nearest, ties away
        bits = (bits + 0x1000) & 0xFFFFE000
    return bits.astype(np.uint32).view(np.float32).astype(np.float64)


@pytest.fixture
def mma(own_gemm, monkeypatch):
    """Sets gemm.MMA; the tensor-core body (emulated) runs unless tensor_cores is cleared."""
    own_gemm.tensor_cores = True
    yield lambda mode: monkeypatch.setattr(gemm, "MMA", mode)
    own_gemm.tensor_cores = True


@pytest.mark.parametrize("mode", ["tf32", "fp16", "bf16"])
@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_mma_matmul_every_transpose_exact_on_integers(mma, own_gemm, mode, trans_a, trans_b):
    """Small integers are exact in fp16, bf16 and TF32 and their sums in float32, so the
    fragment indexing, tile loads and bounded epilogue must give the exact product."""
    mma(mode)
    rng = np.random.default_rng(7)
    for M, N, K in [(37, 29, 19), (70, 65, 33)]:
        a, b = _operands(rng, M, N, K, trans_a, trans_b)
        got = gemm.matmul(a, b)
        np.testing.assert_array_equal(got, (a.astype(np.float64) @ b).astype(np.float32))
    expected = src.mma_name(gemm._MMA_MODES[mode], trans_a, trans_b)
    assert own_gemm.launches == [expected] * 2


@pytest.mark.parametrize("mode", ["tf32", "fp16", "bf16"])
def test_mma_rounds_operands_and_accumulates_in_float32(mma, mode):
    """Normal data: the product of the operands rounded to the MMA type, summed in float32
    (to float32 rounding), with alpha and beta; not the float32 product (the rounding is real)."""
    mma(mode)
    rng = np.random.default_rng(8)
    a = rng.standard_normal((45, 70)).astype(np.float32)
    b = rng.standard_normal((70, 50)).astype(np.float32)
    c0 = rng.standard_normal((45, 50)).astype(np.float32)
    out = c0.copy()
    gemm.matmul(a, b, out=out, alpha=2.0, beta=0.5)
    expected = 2.0 * (_rounded(a, mode) @ _rounded(b, mode)) + 0.5 * c0
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)
    exact = 2.0 * (a.astype(np.float64) @ b) + 0.5 * c0
    assert np.abs(out - exact).max() > 1e-3  # fp16 / bf16 / TF32 operands, not float32


@pytest.mark.parametrize("tensor_cores", [True, False], ids=["sm80", "pre_sm80"])
def test_mma_float16_storage_and_the_cuda_core_fallback(mma, own_gemm, tensor_cores):
    """float16 arrays in, float16 out (MMA "fp16"), on tensor cores and on the body older GPUs
    run; and float32 with TF32 on that body (plain float32 math there)."""
    mma("fp16")
    own_gemm.tensor_cores = tensor_cores
    rng = np.random.default_rng(9)
    a = rng.integers(-3, 4, (40, 70)).astype(np.float16)
    b = rng.integers(-3, 4, (50, 70)).astype(np.float16).T
    got = gemm.matmul(a, b)
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, (a.astype(np.float64) @ b).astype(np.float16))
    mma("tf32")
    a32 = rng.standard_normal((33, 21)).astype(np.float32)
    b32 = rng.standard_normal((21, 17)).astype(np.float32)
    ref = (
        _rounded(a32, "tf32") @ _rounded(b32, "tf32")
        if tensor_cores
        else a32 @ b32.astype(np.float64)
    )
    np.testing.assert_allclose(gemm.matmul(a32, b32), ref, rtol=1e-5, atol=1e-5)


# every tiny conv2d and fused case in float64; the seed block's in float32 too (the same source
# with T = float, whose dense instances the tests above run); conv3d's products are dense ones
_CONV = [
    pytest.param(*p.values, dtype, id=f"{p.id}-{dtype.__name__}")
    for p in tiny_params(launchers.KERNELS)
    for dtype in DTYPES
    if (p.values[0].startswith("conv2d_") and (dtype == np.float64 or "seed" in p.id))
    or (p.id == "conv3d_forward-tiny_vol" and dtype == np.float64)
    or (p.values[0] == "matmul" and "batched" not in p.id)  # the dense layers' 2-D products
]


@pytest.mark.parametrize("name,case,dtype", _CONV)
def test_own_gemm_conv_parity_on_cpu(cpu_launchers, own_gemm, name, case, dtype):  # noqa: F811
    """The conv launchers with GEMM = "own" (implicit GEMM, no im2col for forward and weight
    gradient; the fused path's products over never-materialised columns) and the dense layers'
    matmul kernel (a transposed view included) against numpy_cpu."""
    check_parity(cpu_launchers.KERNELS, name, case, dtype)
    assert own_gemm.launches, f"{name} did not run the own GEMM"


_SPLIT_CONV = [
    p
    for p in tiny_params(launchers.KERNELS)
    if p.values[0] in ("conv2d_backward_weight", "conv2d_relu_max_pool2d_backward")
]


def test_own_gemm_weight_gradients_split_k(cpu_launchers, own_gemm, monkeypatch):  # noqa: F811
    """The weight gradients (K = n*oh*ow pixels, the products split-K is for) with splits forced
    down to one tile of K: the implicit-GEMM loaders start mid-K, the same results (the cases
    with at least two tiles of pixels split)."""
    monkeypatch.setattr(gemm, "MIN_SPLIT_K", src.BK)
    for param in _SPLIT_CONV:
        check_parity(cpu_launchers.KERNELS, *param.values, np.float64)
    assert own_gemm.launches.count("mg_splitk_sum") >= 5  # 9 of the 21 cases today


def test_im2col_operand_table_matches_im2col():
    """ktab row r = (ci*h*w, u, v) in numpy_cpu's im2col column order (c, kh, kw)."""
    tab = gemm._ktab_host(2, 3, 2, 5, 7)
    ci, u, v = np.unravel_index(np.arange(12), (2, 3, 2))
    np.testing.assert_array_equal(tab, np.stack([ci * 35, u, v], axis=1))


# ---- NVRTC: the CUDA sources compile for the GPUs they target ----
def _nvrtc():
    """(libnvrtc, CUDA include dir) or None: env MEDGRAD_NVRTC_LIB / MEDGRAD_CUDA_INCLUDE, else
    the nvidia-cuda-nvrtc-cu12 / nvidia-cuda-runtime-cu12 wheels if importable."""
    lib, include = os.environ.get("MEDGRAD_NVRTC_LIB"), os.environ.get("MEDGRAD_CUDA_INCLUDE")
    try:
        import nvidia.cuda_nvrtc
        import nvidia.cuda_runtime

        root = list(nvidia.cuda_nvrtc.__path__)[0]
        libs = sorted(f for f in os.listdir(f"{root}/lib") if f.startswith("libnvrtc.so"))
        lib = lib or (f"{root}/lib/{libs[0]}" if libs else None)
        include = include or f"{list(nvidia.cuda_runtime.__path__)[0]}/include"
    except ImportError:
        lib = lib or ctypes.util.find_library("nvrtc")
    if not lib or not include or not os.path.isdir(include):
        return None
    try:
        return ctypes.CDLL(lib), include
    except OSError:
        return None


def _to_ptx(nvrtc, include, code: str, names: list[str], arch: str) -> str:
    """PTX of `code` with every name expression instantiated; AssertionError with the log."""
    prog = ctypes.c_void_p()
    assert nvrtc.nvrtcCreateProgram(ctypes.byref(prog), code.encode(), b"mg.cu", 0, None, None) == 0
    for name in names:
        assert nvrtc.nvrtcAddNameExpression(prog, name.encode()) == 0
    options = [f"--gpu-architecture={arch}", "--std=c++14", f"-I{include}"]
    argv = (ctypes.c_char_p * len(options))(*(o.encode() for o in options))
    status = nvrtc.nvrtcCompileProgram(prog, len(options), argv)
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(prog, log)
    assert status == 0, f"NVRTC ({arch}):\n{log.value.decode(errors='replace')}"
    nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetPTX(prog, ptx)
    nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))
    return ptx.value.decode()


@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
def test_sources_compile_to_ptx_with_nvrtc(arch):
    """mg_gemm (float, double) and mg_gemm_mma (float and fp16 storage) compile with no
    header; on sm_80+ the tensor-core kernel's PTX has the fp16, bf16 and TF32 mma.sync."""
    found = _nvrtc()
    if found is None:
        pytest.skip("NVRTC not available (set MEDGRAD_NVRTC_LIB and MEDGRAD_CUDA_INCLUDE)")
    nvrtc, include = found
    for c_type in ("float", "double"):
        code = f"typedef {c_type} T;\n{src.GEMM_SOURCE}"
        names = [src.gemm_name(i) for i in src.GEMM_INSTANCES] + ["mg_splitk_sum"]
        ptx = _to_ptx(nvrtc, include, code, names, arch)
        assert ptx.count(".entry") == len(names)
    for ts in ("float", "unsigned short"):
        code = f"typedef {ts} TS;\ntypedef {ts} TC;\n{src.MMA_SOURCE}"
        names = [src.mma_name(*i) for i in src.MMA_INSTANCES]
        ptx = _to_ptx(nvrtc, include, code, names, arch)
        assert ptx.count(".entry") == len(src.MMA_INSTANCES)
        for instruction in ("m16n8k16.row.col.f32.f16", "m16n8k16.row.col.f32.bf16", "m16n8k8"):
            assert instruction in ptx, instruction
