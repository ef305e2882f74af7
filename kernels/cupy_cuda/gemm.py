"""The cupy_cuda flavour's own GEMMs: dense products and implicit-GEMM conv2d (gemm_sources.py).

Why: CuPy refuses to capture cuBLAS calls in a CUDA graph, so a captured training step needs
products of its own. Selection: `GEMM` ("cublas", the default, or "own"; the environment variable
MEDGRAD_CUPY_GEMM sets it at import, and tests or callers may set the attribute). The launchers
(kernels/cupy_cuda/launchers.py) ask `use_own(dtype)` before each product; "cublas" keeps
`xp.matmul` and the explicit im2col. `MMA` ("" = off, "tf32", "fp16", "bf16"; env
MEDGRAD_CUPY_GEMM_MMA) sends the dense float32 / float16 products to the tensor-core kernel
mg_gemm_mma, which rounds the operands to that type and accumulates in float32; the convolutions
stay on the CUDA-core kernel mg_gemm, in the array's dtype.

Written against `xp` read off the inputs: every launch goes through `_launch`, which the CPU
tests replace with a g++ build of the same source run with one std::thread per CUDA thread.
The own GEMM has not yet run on a GPU (no device in the session that wrote it): "cublas" stays
the default until tests/kernels/test_gpu.py's own-GEMM tests have passed on one.
"""

from __future__ import annotations

import functools
import os
import sys

import numpy as np

from kernels.numpy_cpu.xp import array_module, out_size

from . import gemm_sources as src

GEMM = os.environ.get("MEDGRAD_CUPY_GEMM", "cublas")  # "cublas" | "own"
MMA = os.environ.get("MEDGRAD_CUPY_GEMM_MMA", "")  # "" | "tf32" | "fp16" | "bf16"
_MMA_MODES = {"fp16": src.MMA_F16, "bf16": src.MMA_BF16, "tf32": src.MMA_TF32}
# split-K: a product with fewer C tiles than SPLIT_TARGET_BLOCKS (about two blocks per SM of an
# H200's 132) splits K into ranges of at least MIN_SPLIT_K, partials summed by mg_splitk_sum
SPLIT_TARGET_BLOCKS = 264
MIN_SPLIT_K = 4 * src.BK
INDEX_LIMIT = 2**31 - 1  # pixel indices (n*oh*ow) and ktab offsets (c*h*w) stay below this
_C_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


def use_own(dtype) -> bool:
    """True when the own kernels should run a product in this dtype (float32 or float64)."""
    if GEMM not in ("own", "cublas"):
        raise ValueError(f"kernels.cupy_cuda.gemm.GEMM must be 'own' or 'cublas', got {GEMM!r}")
    return GEMM == "own" and np.dtype(dtype) in _C_TYPES


# ---- compiling and launching ----
@functools.cache
def _module(kind: str, dtype_str: str):
    """The cupy.RawModule of one source ("gemm" or "mma") for one dtype, every instance named."""
    cupy = sys.modules["cupy"]
    if kind == "gemm":
        code = f"typedef {_C_TYPES[np.dtype(dtype_str)]} T;\n{src.GEMM_SOURCE}"
        names = [src.gemm_name(i) for i in src.GEMM_INSTANCES] + ["mg_splitk_sum"]
    else:
        ts = "unsigned short" if np.dtype(dtype_str) == np.float16 else "float"  # fp16 as bits
        code = f"typedef {ts} TS;\ntypedef {ts} TC;\n{src.MMA_SOURCE}"
        names = [src.mma_name(*i) for i in src.MMA_INSTANCES]
    # no --std option: NVRTC 12's default dialect (C++17) has the lambdas and auto the sources use
    return cupy.RawModule(code=code, name_expressions=names)


def _launch(kind: str, name: str, dtype, blocks: int, threads: int, args: tuple) -> None:
    """Run kernel `name` of _module(kind, dtype) on a 1-D grid (the CPU tests replace this)."""
    kernel = _module(kind, np.dtype(dtype).str).get_function(name)
    kernel((blocks,), (threads,), args)


def _pack(params, values, dtype) -> tuple:
    """The kernel arguments with each scalar in its C type's NumPy type (T -> dtype)."""
    scalar = {
        "int": np.int32,
        "unsigned int": np.uint32,
        "long long": np.int64,
        "float": np.float32,
        "T": np.dtype(dtype).type,
    }
    out = []
    for (c_type, _), v in zip(params, values, strict=True):
        if c_type.endswith("*"):
            out.append(v)
        else:
            out.append(scalar[c_type](v))
    return tuple(out)


def _divisor(d: int) -> tuple[int, int, int]:
    """(d, m, s) of launchers._divisor (the magic-number division the sources share)."""
    from .launchers import _divisor

    return _divisor(d)


_dummies: dict = {}


def _dummy(xp):
    """A small int32 device array passed where a pointer argument is never read."""
    key = (xp.__name__, _device_id(xp))
    if key not in _dummies:
        _dummies[key] = xp.zeros(4, dtype=xp.int32)
    return _dummies[key]


def _device_id(xp) -> int:
    return xp.cuda.Device().id if xp.__name__ == "cupy" else -1


def _blocks(M: int, N: int, bm: int, bn: int) -> int:
    return -(-M // bm) * -(-N // bn)


def _run_gemm(instance, M, N, K, A, lda, B, ldb, C, ldc, dtype, **extra) -> None:
    """Launch mg_gemm<instance> with the parameters of GEMM_PARAMS (extra: the conv ones)."""
    xp = array_module(C)
    values = {
        "M": M,
        "N": N,
        "K": K,
        "A": A,
        "lda": lda,
        "B": B,
        "ldb": ldb,
        "C": C,
        "ldc": ldc,
        "bias": C,
        "has_bias": 0,
        "alpha": 1.0,
        "beta": 0.0,
        "P": 1,
        "P_m": 0,
        "P_s": 0,
        "OW": 1,
        "OW_m": 0,
        "OW_s": 0,
        "H": 1,
        "W": 1,
        "CHW": 0,
        "sh": 1,
        "sw": 1,
        "ph": 0,
        "pw": 0,
        "KROWS": 0,
        "ktab": _dummy(xp),
        "k_split": K,
        "split_stride": 0,
    }
    unknown = set(extra) - set(values)
    assert not unknown, f"unknown mg_gemm parameters {sorted(unknown)}"
    values.update(extra)
    tiles = _blocks(M, N, src.BM, src.BN)
    splits, k_split = _split_k(tiles, K) if instance[2] == src.DENSE else (1, K)
    work = None
    if splits > 1:  # partials into work (splits, M, N), then C = alpha sum + beta C
        work = xp.empty((splits, M, N), dtype=dtype)
        values.update(C=work, ldc=N, alpha=1.0, beta=0.0, k_split=k_split, split_stride=M * N)
    args = _pack(src.GEMM_PARAMS, [values[name] for _, name in src.GEMM_PARAMS], dtype)
    _launch("gemm", src.gemm_name(instance), dtype, tiles * splits, src.THREADS, args)
    if work is not None:
        alpha, beta = extra.get("alpha", 1.0), extra.get("beta", 0.0)
        args = _pack(src.SPLITK_PARAMS, [work, splits, M, N, C, ldc, alpha, beta], dtype)
        blocks = -(-M * N // src.SPLITK_THREADS)
        _launch("gemm", "mg_splitk_sum", dtype, blocks, src.SPLITK_THREADS, args)


def _split_k(tiles: int, K: int) -> tuple[int, int]:
    """(splits, K per split, a multiple of BK): enough splits for about SPLIT_TARGET_BLOCKS
    blocks, each over at least MIN_SPLIT_K; (1, K) when the tiles alone fill the GPU."""
    splits = min(-(-SPLIT_TARGET_BLOCKS // tiles), K // max(MIN_SPLIT_K, 1))
    if splits <= 1:
        return 1, K
    k_split = -(-K // splits)
    k_split = -(-k_split // src.BK) * src.BK
    return -(-K // k_split), k_split


# ---- dense products ----
def _as_operand(a):
    """(stored array, trans, ld) with `stored` row-major and a == stored (or stored.T): a
    C-ordered 2-D view (rows may be padded, as G[:, :k]) or the transpose of one; else a copy."""
    xp = array_module(a)
    item = a.itemsize
    rows, cols = a.shape
    s0, s1 = a.strides
    if (s1 == item or cols == 1) and s0 % item == 0 and s0 >= cols * item and s0 > 0:
        return a, False, s0 // item
    if (s0 == item or rows == 1) and s1 % item == 0 and s1 >= rows * item and s1 > 0:
        return a.T, True, s1 // item
    a = xp.ascontiguousarray(a)
    return a, False, cols


def matmul(a, b, out=None, alpha: float = 1.0, beta: float = 0.0):
    """C = alpha a @ b + beta out for 2-D a (M, K), b (K, N) of one float dtype: out (M, N)
    C-contiguous, written in place and returned (allocated when None; beta then must be 0).
    Transposed views need no copy. float32/float64 on mg_gemm; with MMA set, float32 (tf32,
    fp16, bf16) and float16 (fp16) on the tensor-core mg_gemm_mma."""
    xp = array_module(a)
    (M, K), (K2, N) = a.shape, b.shape
    if K != K2 or a.dtype != b.dtype:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape}, dtypes {a.dtype} and {b.dtype}")
    if out is None:
        if beta != 0:
            raise ValueError("matmul: beta != 0 needs an out array")
        out = xp.empty((M, N), dtype=a.dtype)
    if out.shape != (M, N) or out.dtype != a.dtype or not out.flags.c_contiguous:
        raise ValueError(f"matmul: out must be C-contiguous {(M, N)} {a.dtype}")
    if M == 0 or N == 0:
        return out
    if K == 0:  # no products: alpha * 0 + beta * out
        out *= beta
        return out
    A, ta, lda = _as_operand(a)
    B, tb, ldb = _as_operand(b)
    if MMA and (a.dtype == np.float32 or (a.dtype == np.float16 and MMA == "fp16")):
        args = _pack(
            src.MMA_PARAMS,
            [M, N, K, A, lda, B, ldb, out, N, alpha, beta],
            a.dtype,
        )
        blocks = _blocks(M, N, src.MMA_BM, src.MMA_BN)
        name = src.mma_name(_MMA_MODES[MMA], int(ta), int(tb))
        _launch("mma", name, a.dtype, blocks, src.MMA_THREADS, args)
        return out
    if a.dtype not in _C_TYPES:
        raise TypeError(f"matmul: the own GEMM takes float32 or float64, got {a.dtype}")
    instance = (src.DENSE, src.DENSE, src.DENSE, int(ta), int(tb))
    _run_gemm(instance, M, N, K, A, lda, B, ldb, out, N, a.dtype, alpha=alpha, beta=beta)
    return out


# ---- implicit-GEMM convolution ----
@functools.lru_cache(maxsize=256)
def _ktab_host(c: int, kh: int, kw: int, h: int, w: int) -> np.ndarray:
    """int32 (c*kh*kw, 3): row r = (ci, u, v) of the window as (ci*h*w, u, v), im2col's order."""
    ci, u, v = np.meshgrid(np.arange(c), np.arange(kh), np.arange(kw), indexing="ij")
    return np.stack([ci.ravel() * h * w, u.ravel(), v.ravel()], axis=1).astype(np.int32)


_ktabs: dict = {}


def _ktab(xp, c, kh, kw, h, w):
    """_ktab_host on x's device, cached per device (no host copy in a captured step)."""
    key = (xp.__name__, _device_id(xp), c, kh, kw, h, w)
    if key not in _ktabs:
        _ktabs[key] = xp.asarray(_ktab_host(c, kh, kw, h, w))
    return _ktabs[key]


def fits(x_shape, W_shape, stride, padding) -> bool:
    """The implicit-GEMM kernels index pixels (n*oh*ow) and one image (c*h*w) in 32 bits."""
    n, c, h, w = x_shape
    oh = out_size(h, W_shape[2], stride[0], padding[0])
    ow = out_size(w, W_shape[3], stride[1], padding[1])
    return n * oh * ow <= INDEX_LIMIT and c * h * w <= INDEX_LIMIT and oh > 0 and ow > 0


def _im2col_params(x, kernel_size, stride, padding, ones_row: bool) -> tuple[dict, int, int]:
    """(the IM2COL parameters of mg_gemm, rows of the columns incl. any ones row, pixels)."""
    xp = array_module(x)
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    oh, ow = out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)
    P_d, P_m, P_s = _divisor(oh * ow)
    OW_d, OW_m, OW_s = _divisor(ow)
    params = {
        "P": P_d,
        "P_m": P_m,
        "P_s": P_s,
        "OW": OW_d,
        "OW_m": OW_m,
        "OW_s": OW_s,
        "H": h,
        "W": w,
        "CHW": c * h * w,
        "sh": sh,
        "sw": sw,
        "ph": ph,
        "pw": pw,
        "KROWS": c * kh * kw,
        "ktab": _ktab(xp, c, kh, kw, h, w),
    }
    return params, c * kh * kw + ones_row, n * oh * ow


def conv2d_forward(x, W, b, stride, padding):
    """numpy_cpu.conv2d_forward as one implicit GEMM: y (n, oc, oh, ow) = W (oc, c*kh*kw) @
    cols_t (c*kh*kw, n*oh*ow) + b, the columns read from x in the tile loader, y written NCHW."""
    xp = array_module(x)
    x, W = xp.ascontiguousarray(x), xp.ascontiguousarray(W)
    n = x.shape[0]
    oc, _, kh, kw = W.shape
    params, k, npix = _im2col_params(x, (kh, kw), stride, padding, False)
    oh = out_size(x.shape[2], kh, stride[0], padding[0])
    ow = out_size(x.shape[3], kw, stride[1], padding[1])
    y = xp.empty((n, oc, oh, ow), dtype=x.dtype)
    if y.size == 0:
        return y
    if b is not None:
        params.update(bias=xp.ascontiguousarray(b), has_bias=1)
    instance = (src.DENSE, src.IM2COL, src.NCHW, 0, 0)
    _run_gemm(instance, oc, npix, k, W, k, x, 0, y, 0, x.dtype, **params)
    return y


def conv2d_weight_grad(gy, x, kernel_size, stride, padding):
    """numpy_cpu.conv2d_backward_weight as one implicit GEMM: gW (oc, c*kh*kw) = gy (oc, n*P),
    read NCHW, @ cols_t^T, the columns read from x in the tile loader."""
    xp = array_module(gy)
    gy, x = xp.ascontiguousarray(gy), xp.ascontiguousarray(x)
    n, oc = gy.shape[:2]
    params, k, npix = _im2col_params(x, kernel_size, stride, padding, False)
    gW = xp.empty((oc, k), dtype=gy.dtype)
    if npix == 0:
        gW[...] = 0
    else:
        instance = (src.NCHW, src.IM2COL, src.DENSE, 0, 1)
        _run_gemm(instance, oc, k, npix, gy, 0, x, 0, gW, k, gy.dtype, **params)
    return gW.reshape(oc, x.shape[1], *kernel_size)


def conv2d_input_columns(gy, W):
    """gcols (n*oh*ow, c*kh*kw) = gy^T (n*oh*ow, oc), read NCHW, @ W (oc, c*kh*kw): the input
    gradient's columns in im2col's layout (launchers.col2im gathers them into gx)."""
    xp = array_module(gy)
    gy, W = xp.ascontiguousarray(gy), xp.ascontiguousarray(W)
    n, oc, oh, ow = gy.shape
    k = W.size // oc
    gcols = xp.empty((n * oh * ow, k), dtype=gy.dtype)
    P_d, P_m, P_s = _divisor(max(oh * ow, 1))
    instance = (src.NCHW, src.DENSE, src.DENSE, 1, 0)
    _run_gemm(
        instance, n * oh * ow, k, oc, gy, 0, W, k, gcols, k, gy.dtype, P=P_d, P_m=P_m, P_s=P_s
    )
    return gcols


def conv_columns_product(A, x, kernel_size, stride, padding, ones_row: bool = False, trans=False):
    """The fused conv-ReLU-pool path's products with the channel-major columns cols_t
    (c*kh*kw [+ 1 row of ones], n*oh*ow) of x, never materialised: A (oc, c*kh*kw) @ cols_t ->
    (oc, n*oh*ow) (the conv output, channel-major), or with trans A (oc, n*oh*ow) @ cols_t^T ->
    (oc, c*kh*kw [+ 1]) (the weight gradient, and with the ones row the bias gradient)."""
    xp = array_module(A)
    A, x = xp.ascontiguousarray(A), xp.ascontiguousarray(x)
    oc = A.shape[0]
    params, k, npix = _im2col_params(x, kernel_size, stride, padding, ones_row)
    if trans:
        out = xp.empty((oc, k), dtype=A.dtype)
        instance = (src.DENSE, src.IM2COL, src.DENSE, 0, 1)
        _run_gemm(instance, oc, k, npix, A, npix, x, 0, out, k, A.dtype, **params)
    else:
        out = xp.empty((oc, npix), dtype=A.dtype)
        instance = (src.DENSE, src.IM2COL, src.DENSE, 0, 0)
        _run_gemm(instance, oc, npix, k, A, k, x, 0, out, npix, A.dtype, **params)
    return out
