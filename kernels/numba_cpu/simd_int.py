"""Integer SIMD for the int8 product (kernels/numba_cpu/int8.py's _gemm_pairs): the few
operations of an int16-pair multiply-add micro-kernel, on simd.py's Vec type (int16 x 16 and
int32 x 8: one 32-byte register each).

Why: AVX2 has no int8 x int8 -> int32 multiply-add, but vpmaddwd (llvm.x86.avx2.pmadd.wd) does
16 int16 products and sums adjacent pairs into 8 int32 lanes: 16 multiply-adds per instruction,
against 8 per float32 FMA. LLVM's loop vectoriser emits it only for a single accumulator;
written explicitly, a block of accumulators stays in registers over the whole reduction, as in
a float GEMM micro-kernel. Exact for int8 inputs: a pair sums to at most 2 * 128^2 = 2^15 in
magnitude, far inside int32 (vpmaddwd saturates only for two -32768 * -32768 products).

HAS_PMADDWD says whether Numba's target CPU has AVX2 (checked once, at import: the host, or the
NUMBA_CPU_NAME / NUMBA_CPU_FEATURES target); callers use another kernel where it does not (LLVM
cannot compile the intrinsic there).
"""

from __future__ import annotations

from llvmlite import binding, ir
from numba import types
from numba.core import cgutils, config
from numba.extending import intrinsic

from .simd import Vec, _address


def _target_has_avx2() -> bool:
    """Whether Numba compiles for a CPU with AVX2: the host's features, or, where
    NUMBA_CPU_NAME / NUMBA_CPU_FEATURES pick another target (portable caches), those features."""
    if config.CPU_NAME not in (None, "host") or config.CPU_FEATURES is not None:
        return "+avx2" in (config.CPU_FEATURES or "").split(",")
    return bool(binding.get_host_cpu_features().get("avx2", False))


HAS_PMADDWD = _target_has_avx2()

_I16, _I32 = ir.IntType(16), ir.IntType(32)
_V16, _V32 = ir.VectorType(_I16, 16), ir.VectorType(_I32, 8)


def _splat_pair(builder, pair):
    """The i32 pair in all 8 lanes, seen as 16 int16 (the pair's two halves alternating)."""
    undef = ir.Constant(_V32, ir.Undefined)
    one = builder.insert_element(undef, pair, ir.Constant(_I32, 0))
    eight = builder.shuffle_vector(one, undef, ir.Constant(ir.VectorType(_I32, 8), 0))
    return builder.bitcast(eight, _V16)


def _widen(builder, value, dtype):
    """An int8 or int16 scalar or vector, sign-extended to int16 lanes."""
    if dtype.bitwidth == 16:
        return value
    if isinstance(value.type, ir.VectorType):
        return builder.sext(value, ir.VectorType(_I16, value.type.count))
    return builder.sext(value, _I16)


@intrinsic
def vpair(typingctx, arr, i):
    """(arr[i], arr[i + 1]) as int16 in every pair of a Vec(int16 x 16): the operand that
    multiplies a whole k-pair panel row; arr 1-D contiguous int8 (widened here) or int16."""
    if not (isinstance(arr, types.Array) and arr.dtype in (types.int8, types.int16)):
        return None
    vt = Vec(types.int16)

    def codegen(context, builder, signature, args):
        ptr = _address(context, builder, arr, args[0], args[1])
        two = ir.VectorType(ir.IntType(arr.dtype.bitwidth), 2)
        pair = builder.load(builder.bitcast(ptr, two.as_pointer()), align=1)
        pair = builder.bitcast(_widen(builder, pair, arr.dtype), _I32)
        return _splat_pair(builder, pair)

    return vt(arr, i), codegen


@intrinsic
def vpair_last(typingctx, arr, i):
    """(arr[i], 0) in every pair: vpair for an odd reduction's last element (reads arr[i] only)."""
    if not (isinstance(arr, types.Array) and arr.dtype in (types.int8, types.int16)):
        return None
    vt = Vec(types.int16)

    def codegen(context, builder, signature, args):
        value = builder.load(_address(context, builder, arr, args[0], args[1]))
        pair = builder.zext(_widen(builder, value, arr.dtype), _I32)  # little-endian: lane 0
        return _splat_pair(builder, pair)

    return vt(arr, i), codegen


@intrinsic
def vmaddwd(typingctx, acc, x, w):
    """acc + vpmaddwd(x, w): acc Vec(int32 x 8), x and w Vec(int16 x 16); lane j adds
    x[2j] w[2j] + x[2j + 1] w[2j + 1]."""
    if not (isinstance(acc, Vec) and acc.dtype == types.int32):
        return None

    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_V32, [_V16, _V16]), "llvm.x86.avx2.pmadd.wd"
        )
        return builder.add(args[0], builder.call(fn, [args[1], args[2]]))

    return acc(acc, x, w), codegen


@intrinsic
def vmax32(typingctx, a, b):
    """The lane-wise signed maximum of two Vec(int32 x 8) (vpmaxsd)."""
    if not (isinstance(a, Vec) and a.dtype == types.int32 and a == b):
        return None

    def codegen(context, builder, signature, args):
        return builder.select(builder.icmp_signed(">", args[0], args[1]), args[0], args[1])

    return a(a, b), codegen
