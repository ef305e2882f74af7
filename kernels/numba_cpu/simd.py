"""Explicit SIMD vectors for numba_cpu kernels: a Vec type (one 32-byte vector: 8 float32 or 4
float64 lanes, an LLVM vector value, so it lives in a register) and the few operations the
register-blocked kernels need (load, store, broadcast, multiply-add, lane sum).

Why: LLVM's loop vectoriser only vectorises a kernel's innermost loop, with its accumulators in
memory: a direct convolution written that way loads and stores its outputs once per tap. With Vec
the accumulators of a whole block (4 output channels x 3 vectors of positions) stay in registers
over the full reduction (channels x taps), as in a GEMM micro-kernel (kernels/numba_cpu/
conv3d_direct.py). Loads and stores are unaligned and unchecked: callers keep their indices
inside the array (no bounds or negative-index handling, as Numba's boundscheck=False indexing).
vmuladd is llvm.fmuladd: the backend fuses it into one FMA where the CPU has them (one rounding
instead of two; float64 parity with numpy_cpu stays far inside the 1e-10 tolerance), and emits a
multiply and an add elsewhere. Nothing reorders sums: fastmath stays off.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

VECTOR_BYTES = 32  # one AVX register; LLVM splits it into two on SSE-only CPUs


class Vec(types.Type):
    """VECTOR_BYTES of `dtype` lanes (float32 x 8, float64 x 4)."""

    def __init__(self, dtype):
        self.dtype = dtype
        self.lanes = VECTOR_BYTES // (dtype.bitwidth // 8)
        super().__init__(name=f"Vec({dtype} x {self.lanes})")


@register_model(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        scalar = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(scalar, fe_type.lanes))


def _address(context, builder, arrty, arr, i):
    """Pointer to element i of a contiguous 1-D array."""
    return builder.gep(context.make_array(arrty)(context, builder, arr).data, [i])


def _splat(builder, vtype, lanes, scalar):
    undef = ir.Constant(vtype, ir.Undefined)
    one = builder.insert_element(undef, scalar, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(one, undef, ir.Constant(ir.VectorType(ir.IntType(32), lanes), 0))


@intrinsic
def vlanes(typingctx, arr):
    """Lanes of one Vec of arr's dtype: a compile-time constant (8 for float32, 4 for float64)."""
    n = VECTOR_BYTES // (arr.dtype.bitwidth // 8)

    def codegen(context, builder, signature, args):
        return context.get_constant(types.intp, n)

    return types.intp(arr), codegen


@intrinsic
def vload(typingctx, arr, i):
    """arr[i : i + lanes] as a Vec (arr 1-D contiguous)."""
    vt = Vec(arr.dtype)

    def codegen(context, builder, signature, args):
        ptr = _address(context, builder, arr, args[0], args[1])
        ptr = builder.bitcast(ptr, context.get_value_type(vt).as_pointer())
        return builder.load(ptr, align=arr.dtype.bitwidth // 8)

    return vt(arr, i), codegen


@intrinsic
def vstore(typingctx, arr, i, v):
    """arr[i : i + lanes] = v (arr 1-D contiguous)."""

    def codegen(context, builder, signature, args):
        ptr = _address(context, builder, arr, args[0], args[1])
        builder.store(
            args[2], builder.bitcast(ptr, args[2].type.as_pointer()), align=arr.dtype.bitwidth // 8
        )
        return context.get_dummy_value()

    return types.void(arr, i, v), codegen


@intrinsic
def vbroadcast(typingctx, arr, i):
    """arr[i] in every lane."""
    vt = Vec(arr.dtype)

    def codegen(context, builder, signature, args):
        scalar = builder.load(_address(context, builder, arr, args[0], args[1]))
        return _splat(builder, context.get_value_type(vt), vt.lanes, scalar)

    return vt(arr, i), codegen


@intrinsic
def vsplat(typingctx, x):
    """The scalar x in every lane."""
    vt = Vec(x)

    def codegen(context, builder, signature, args):
        return _splat(builder, context.get_value_type(vt), vt.lanes, args[0])

    return vt(x), codegen


@intrinsic
def vmuladd(typingctx, acc, a, b):
    """acc + a * b per lane (llvm.fmuladd: one FMA where the CPU has it)."""

    def codegen(context, builder, signature, args):
        vty = args[0].type
        name = f"llvm.fmuladd.v{vty.count}f{acc.dtype.bitwidth}"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty] * 3), name)
        return builder.call(fn, [args[1], args[2], args[0]])

    return acc(acc, a, b), codegen


@intrinsic
def hsum(typingctx, v):
    """The lanes' sum in lane order, ((v0 + v1) + v2) + ...: the same on every call."""

    def codegen(context, builder, signature, args):
        lane = [
            builder.extract_element(args[0], ir.Constant(ir.IntType(32), k)) for k in range(v.lanes)
        ]
        total = lane[0]
        for x in lane[1:]:
            total = builder.fadd(total, x)
        return total

    return v.dtype(v), codegen


@intrinsic
def vzeros(typingctx, arr):
    """A Vec of zeros of arr's dtype."""
    vt = Vec(arr.dtype)

    def codegen(context, builder, signature, args):
        return ir.Constant(context.get_value_type(vt), None)

    return vt(arr), codegen
