"""CUDA C of the cupy_cuda flavour's own GEMMs, as plain data (no CuPy: the tests build it with g++).

Two kernels, both compiled by CuPy as one cupy.RawModule per dtype (kernels/cupy_cuda/gemm.py):

- `mg_gemm<A_KIND, B_KIND, OUT_KIND, TRANS_A, TRANS_B>`: C = alpha op(A) op(B) [+ beta C | + bias]
  on CUDA cores in `T` (float or double, a typedef put before this source), tiled in shared
  memory. An operand is read through its *kind*, so the convolutions' three products need no
  copies: DENSE (row-major with a leading dimension), NCHW (an activation (n, rows, P) read as
  the matrix (rows, n*P): channels x pixels) or IM2COL (the channel-major columns (c*kh*kw
  [+ 1 row of ones], n*oh*ow) of an image batch, computed on the fly from x: implicit GEMM).
  The output is DENSE (alpha/beta) or NCHW with a per-row bias (the conv forward's layout).
- `mg_gemm_mma<MMA, TRANS_A, TRANS_B>`: dense C = alpha op(A) op(B) + beta C on tensor cores
  (PTX mma.sync m16n8k16 for fp16 / bf16, m16n8k8 for TF32) with fp32 accumulation; the
  operands, stored as `TS` (float, or the bits of an fp16 as unsigned short), are rounded on
  their way into shared memory to fp16 (MMA_F16), bf16 (MMA_BF16) or TF32 (MMA_TF32). The
  tensor-core body is compiled for sm_80 and newer only (`__CUDA_ARCH__ >= 800`); on older
  devices the same kernel runs a plain CUDA-core loop in float, so one source serves every GPU.
  It includes no header (no cuda_fp16.h, no mma.h: a pip-installed CUDA may lack them): every
  conversion and the mma itself is one line of inline PTX in a small helper.

Row-major throughout. op(A) is M x K: A is stored (M, K) or, with TRANS_A, (K, M); op(B) is
K x N: B stored (K, N) or, with TRANS_B, (N, K). Any M, N, K >= 1: tiles past the edges read
zeros and write nothing. Index arithmetic is 64-bit (long long) except the pixel index of the
NCHW and IM2COL kinds, which is below 2^31 (the launchers check) and divided by magic numbers
(MG_DIV, as in sources.MAGIC_PREAMBLE). With beta == 0, C is never read (it may hold NaN).
"""

from __future__ import annotations

# operand and output kinds: the template arguments of mg_gemm
DENSE, NCHW, IM2COL = 0, 1, 2
# tensor-core input rounding: the MMA template argument of mg_gemm_mma
MMA_F16, MMA_BF16, MMA_TF32 = 0, 1, 2

# the block tile and the per-thread register microtile of mg_gemm (CUDA cores)
BM, BN, BK, TM, TN = 64, 64, 16, 4, 4
THREADS = (BM // TM) * (BN // TN)  # 256
# the block tile of mg_gemm_mma: 4 warps, each a 32 x 32 tile of 2 x 2 wmma fragments
MMA_BM, MMA_BN, MMA_BK, MMA_THREADS = 64, 64, 16, 128

# (C type, name) of mg_gemm's parameters, in order: the launchers pass them positionally and the
# CPU tests generate the argument unpacking from this list. `T` is the element type.
GEMM_PARAMS: list[tuple[str, str]] = [
    ("int", "M"),
    ("int", "N"),
    ("int", "K"),
    ("const T*", "A"),
    ("long long", "lda"),
    ("const T*", "B"),
    ("long long", "ldb"),
    ("T*", "C"),
    ("long long", "ldc"),
    ("const T*", "bias"),  # OUT_KIND == NCHW and has_bias: (M,), added to every output row
    ("int", "has_bias"),
    ("T", "alpha"),
    ("T", "beta"),
    # NCHW operands / output and IM2COL: P pixels per image, as a divisor (value, magic, shift)
    ("int", "P"),
    ("unsigned int", "P_m"),
    ("int", "P_s"),
    # IM2COL only: output width as a divisor, input plane, strides, padding, rows without the
    # ones row (c*kh*kw), and the per-row table ktab[3 r .. 3 r + 2] = (channel * H * W, u, v)
    ("int", "OW"),
    ("unsigned int", "OW_m"),
    ("int", "OW_s"),
    ("int", "H"),
    ("int", "W"),
    ("long long", "CHW"),
    ("int", "sh"),
    ("int", "sw"),
    ("int", "ph"),
    ("int", "pw"),
    ("int", "KROWS"),
    ("const int*", "ktab"),
    # split-K: block b works on K range [s k_split, (s + 1) k_split) with s = b / (tiles of C),
    # writing its partial product to C + s split_stride (a workspace; mg_splitk_sum adds them)
    ("int", "k_split"),
    ("long long", "split_stride"),
]

# (C type, name) of mg_splitk_sum: C[m, n] = alpha sum_s work[s, m, n] + beta C[m, n]
SPLITK_PARAMS: list[tuple[str, str]] = [
    ("const T*", "work"),
    ("int", "splits"),
    ("int", "M"),
    ("int", "N"),
    ("T*", "C"),
    ("long long", "ldc"),
    ("T", "alpha"),
    ("T", "beta"),
]
SPLITK_THREADS = 256

# (C type, name) of mg_gemm_mma's parameters: TS is the operands' storage type, TC the output's
MMA_PARAMS: list[tuple[str, str]] = [
    ("int", "M"),
    ("int", "N"),
    ("int", "K"),
    ("const TS*", "A"),
    ("long long", "lda"),
    ("const TS*", "B"),
    ("long long", "ldb"),
    ("TC*", "C"),
    ("long long", "ldc"),
    ("float", "alpha"),
    ("float", "beta"),
]


def signature(params: list[tuple[str, str]]) -> str:
    """'int M, int N, ...': a parameter list as C."""
    return ", ".join(f"{c_type} {name}" for c_type, name in params)


GEMM_SOURCE = """
#define MG_DIV(n, d) ((__umulhi((unsigned int)(n), d##_m) + (unsigned int)(n)) >> d##_s)
#define MG_BM %(BM)d
#define MG_BN %(BN)d
#define MG_BK %(BK)d
#define MG_TM %(TM)d
#define MG_TN %(TN)d
#define MG_THREADS %(THREADS)d
#define MG_DENSE 0
#define MG_NCHW 1
#define MG_IM2COL 2

// Element (r, c) of an operand as stored (r < rows, c < cols are checked by the caller).
// DENSE: p[r ld + c]. NCHW: channel r, pixel c = img P + q of the array (n, rows, P).
// IM2COL: row r = (channel, u, v) of the kernel window (ktab), column c = (img, oi, oj) of the
// output pixel; the input element x[img, channel, oi sh - ph + u, oj sw - pw + v], 0 in the
// padding, and 1 on row KROWS (the ones row, present when rows == KROWS + 1).
template <int KIND>
__device__ __forceinline__ T mg_fetch(
    const T* __restrict__ p, long long ld, int rows, long long r, long long c,
    int P, unsigned int P_m, int P_s, int OW, unsigned int OW_m, int OW_s, int H, int W,
    long long CHW, int sh, int sw, int ph, int pw, int KROWS, const int* __restrict__ ktab) {
    if (KIND == MG_DENSE) return p[r * ld + c];
    const unsigned int img = MG_DIV(c, P);
    const int q = (int)c - (int)img * P;
    if (KIND == MG_NCHW) return p[((long long)img * rows + r) * P + q];
    if (r >= KROWS) return (T)1;
    const int oi = (int)MG_DIV(q, OW), oj = q - oi * OW;
    const int hh = oi * sh - ph + ktab[3 * r + 1], ww = oj * sw - pw + ktab[3 * r + 2];
    if (hh < 0 || hh >= H || ww < 0 || ww >= W) return (T)0;
    return p[img * CHW + ktab[3 * r] + (long long)hh * W + ww];
}

#define MG_FETCH(KIND, p, ld, rows, r, c) mg_fetch<KIND>(p, ld, rows, r, c, P, P_m, P_s, \\
    OW, OW_m, OW_s, H, W, CHW, sh, sw, ph, pw, KROWS, ktab)

template <int A_KIND, int B_KIND, int OUT_KIND, int TRANS_A, int TRANS_B>
__global__ void __launch_bounds__(MG_THREADS) mg_gemm(%(PARAMS)s) {
    // block b -> the MG_BM x MG_BN tile of C at rows (b % tiles_m) MG_BM, columns
    // (b / tiles_m) MG_BN; thread t = ty (MG_BN / MG_TN) + tx -> the MG_TM x MG_TN microtile of
    // rows ty + i (MG_BM / MG_TM) and columns tx + j (MG_BN / MG_TN) of that tile (strided, so a
    // warp reads shared memory without bank conflicts and writes C coalesced along j)
    __shared__ T As[MG_BK][MG_BM + 1];  // op(A) tile, k-major: As[k][m]
    __shared__ T Bs[MG_BK][MG_BN + 1];  // op(B) tile: Bs[k][n]
    const int tid = threadIdx.x;
    const int tx = tid % (MG_BN / MG_TN), ty = tid / (MG_BN / MG_TN);
    const long long tiles_m = (M + MG_BM - 1) / MG_BM, tiles_n = (N + MG_BN - 1) / MG_BN;
    const long long tile = blockIdx.x % (tiles_m * tiles_n), split = blockIdx.x / (tiles_m * tiles_n);
    const long long m0 = (tile % tiles_m) * MG_BM, n0 = (tile / tiles_m) * MG_BN;
    const long long k_begin = split * k_split;
    const long long k_end = min((long long)K, k_begin + k_split);  // this block's K range
    C += split * split_stride;
    const int a_rows = TRANS_A ? K : M, b_rows = TRANS_B ? N : K;  // as stored (NCHW channels)
    // the bounds of the stored coordinates (r, c) within this block's K range
    const long long a_r_end = TRANS_A ? k_end : M, a_c_end = TRANS_A ? M : k_end;
    const long long b_r_end = TRANS_B ? N : k_end, b_c_end = TRANS_B ? k_end : N;
    const int LA = MG_BM * MG_BK / MG_THREADS, LB = MG_BN * MG_BK / MG_THREADS;
    T ra[LA], rb[LB];  // the next tile, staged in registers while the current one is used

    // Read the k0 tile from global memory into ra, rb. Consecutive threads take consecutive
    // elements along each operand's stored columns (its contiguous axis).
    auto load = [&](long long k0) {
        for (int l = 0; l < LA; ++l) {
            const int e = tid + l * MG_THREADS;
            long long r, c;  // stored coordinates
            if (TRANS_A) { r = k0 + e / MG_BM; c = m0 + e % MG_BM; }
            else { r = m0 + e / MG_BK; c = k0 + e % MG_BK; }
            ra[l] = (r < a_r_end && c < a_c_end) ? MG_FETCH(A_KIND, A, lda, a_rows, r, c) : (T)0;
        }
        for (int l = 0; l < LB; ++l) {
            const int e = tid + l * MG_THREADS;
            long long r, c;
            if (TRANS_B) { r = n0 + e / MG_BK; c = k0 + e % MG_BK; }
            else { r = k0 + e / MG_BN; c = n0 + e % MG_BN; }
            rb[l] = (r < b_r_end && c < b_c_end) ? MG_FETCH(B_KIND, B, ldb, b_rows, r, c) : (T)0;
        }
    };
    // Write the staged tile into As, Bs (same element order as load).
    auto store = [&]() {
        for (int l = 0; l < LA; ++l) {
            const int e = tid + l * MG_THREADS;
            if (TRANS_A) As[e / MG_BM][e % MG_BM] = ra[l];
            else As[e % MG_BK][e / MG_BK] = ra[l];
        }
        for (int l = 0; l < LB; ++l) {
            const int e = tid + l * MG_THREADS;
            if (TRANS_B) Bs[e % MG_BK][e / MG_BK] = rb[l];
            else Bs[e / MG_BN][e % MG_BN] = rb[l];
        }
    };

    T acc[MG_TM][MG_TN];
    for (int i = 0; i < MG_TM; ++i)
        for (int j = 0; j < MG_TN; ++j) acc[i][j] = (T)0;
    load(k_begin);
    store();
    __syncthreads();
    for (long long k0 = k_begin; k0 < k_end; k0 += MG_BK) {
        const bool more = k0 + MG_BK < k_end;
        if (more) load(k0 + MG_BK);  // global reads in flight during the products below
#pragma unroll
        for (int k = 0; k < MG_BK; ++k) {
            T a[MG_TM], b[MG_TN];
            for (int i = 0; i < MG_TM; ++i) a[i] = As[k][ty + i * (MG_BM / MG_TM)];
            for (int j = 0; j < MG_TN; ++j) b[j] = Bs[k][tx + j * (MG_BN / MG_TN)];
            for (int i = 0; i < MG_TM; ++i)
                for (int j = 0; j < MG_TN; ++j) acc[i][j] += a[i] * b[j];
        }
        __syncthreads();
        if (more) {
            store();
            __syncthreads();
        }
    }

    // epilogue: DENSE C[m, n] = alpha acc + beta C[m, n]; NCHW y[img, m, q] for column
    // n = img P + q, = alpha acc + bias[m] (+ beta y)
    for (int i = 0; i < MG_TM; ++i) {
        const long long m = m0 + ty + i * (MG_BM / MG_TM);
        if (m >= M) continue;
        for (int j = 0; j < MG_TN; ++j) {
            const long long n = n0 + tx + j * (MG_BN / MG_TN);
            if (n >= N) continue;
            long long at;
            T v = alpha * acc[i][j];
            if (OUT_KIND == MG_NCHW) {
                const unsigned int img = MG_DIV(n, P);
                at = ((long long)img * M + m) * P + ((int)n - (int)img * P);
                if (has_bias) v += bias[m];
            } else {
                at = m * ldc + n;
            }
            if (beta != (T)0) v += beta * C[at];
            C[at] = v;
        }
    }
}

__global__ void mg_splitk_sum(%(SPLITK_PARAMS)s) {
    // thread i -> element (m, n) = (i / N, i % N) of C: the split partials added in split order
    // (deterministic), then alpha and beta
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)M * N) return;
    T s = work[i];
    for (int k = 1; k < splits; ++k) s += work[k * (long long)M * N + i];
    const long long at = (i / N) * ldc + i % N;
    C[at] = alpha * s + (beta != (T)0 ? beta * C[at] : (T)0);
}
"""
# filled in by name (not %-formatting: the C source has its own % operators)
for _key, _value in {
    "BM": BM,
    "BN": BN,
    "BK": BK,
    "TM": TM,
    "TN": TN,
    "THREADS": THREADS,
}.items():
    GEMM_SOURCE = GEMM_SOURCE.replace(f"%({_key})d", str(_value))
GEMM_SOURCE = GEMM_SOURCE.replace("%(PARAMS)s", signature(GEMM_PARAMS))
GEMM_SOURCE = GEMM_SOURCE.replace("%(SPLITK_PARAMS)s", signature(SPLITK_PARAMS))


# The instances the launchers use: (A_KIND, B_KIND, OUT_KIND, TRANS_A, TRANS_B)
GEMM_INSTANCES: list[tuple[int, int, int, int, int]] = [
    (DENSE, DENSE, DENSE, 0, 0),  # dense products (and the fused path's W^T gz with TRANS_A)
    (DENSE, DENSE, DENSE, 0, 1),
    (DENSE, DENSE, DENSE, 1, 0),
    (DENSE, DENSE, DENSE, 1, 1),
    (DENSE, IM2COL, NCHW, 0, 0),  # conv forward: y = W @ cols_t + b, written NCHW
    (DENSE, IM2COL, DENSE, 0, 0),  # fused forward: z = W @ cols_t, channel-major
    (NCHW, IM2COL, DENSE, 0, 1),  # conv weight grad: gW = gy (oc, n*P) @ cols_t^T
    (DENSE, IM2COL, DENSE, 0, 1),  # fused weight+bias grad: gz @ [cols_t; 1]^T
    (NCHW, DENSE, DENSE, 1, 0),  # conv input grad: gcols = gy^T (n*P, oc) @ W (oc, c*kh*kw)
]


def gemm_name(instance: tuple[int, int, int, int, int]) -> str:
    """The C++ name of one mg_gemm instance, e.g. 'mg_gemm<0, 2, 1, 0, 0>'."""
    return "mg_gemm<{}, {}, {}, {}, {}>".format(*instance)


MMA_SOURCE = """
#define MG_MMA_F16 0
#define MG_MMA_BF16 1
#define MG_MMA_TF32 2
#define MG_MMA_BM %(BM)d
#define MG_MMA_BN %(BN)d
#define MG_MMA_BK %(BK)d
#define MG_MMA_THREADS %(THREADS)d
#define MG_MMA_PAD 8

// No header: fp16 storage is `unsigned short` holding the bits, and every conversion and the
// mma.sync itself is one PTX instruction in a helper below (the CPU tests define MG_CPU_MMA and
// supply the same helpers in C++; the tensor-core path is then emulated one warp at a time).
#ifndef MG_CPU_MMA
__device__ __forceinline__ float mg_to_float(float v) { return v; }
__device__ __forceinline__ float mg_to_float(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ void mg_store(float v, float* p) { *p = v; }
__device__ __forceinline__ void mg_store(float v, unsigned short* p) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    *p = h;
}
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define MG_HAS_MMA 1
// float -> the bits of an fp16 / bf16 (round to nearest even) or a tf32 (nearest, ties away)
__device__ __forceinline__ unsigned short mg_cvt_f16(float v) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
}
__device__ __forceinline__ unsigned short mg_cvt_bf16(float v) {
    unsigned short h;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
}
__device__ __forceinline__ unsigned int mg_cvt_tf32(float v) {
    unsigned int t;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(t) : "f"(v));
    return t;
}
// d += a b for one warp: m16n8k16 (fp16 or bf16 pairs in a[4], b[2]) or m16n8k8 (tf32)
__device__ __forceinline__ void mg_mma_f16(float* d, const unsigned int* a, const unsigned int* b) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
                 "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ void mg_mma_bf16(float* d, const unsigned int* a, const unsigned int* b) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
                 "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ void mg_mma_tf32(float* d, const unsigned int* a, const unsigned int* b) {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, "
                 "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif
#endif

#ifdef MG_HAS_MMA
// per MMA mode: the shared-memory element E (16-bit pairs or 32-bit tf32) and its conversion
template <int MMA> struct MgMma;
template <> struct MgMma<MG_MMA_F16> {
    typedef unsigned short E;
    static __device__ __forceinline__ E cvt(float v) { return mg_cvt_f16(v); }
};
template <> struct MgMma<MG_MMA_BF16> {
    typedef unsigned short E;
    static __device__ __forceinline__ E cvt(float v) { return mg_cvt_bf16(v); }
};
template <> struct MgMma<MG_MMA_TF32> {
    typedef unsigned int E;
    static __device__ __forceinline__ E cvt(float v) { return mg_cvt_tf32(v); }
};
// two consecutive 16-bit elements as one register, the lower column in the low half
__device__ __forceinline__ unsigned int mg_pair(const unsigned short* p) {
    return (unsigned int)p[0] | ((unsigned int)p[1] << 16);
}
#endif

template <int MMA, int TRANS_A, int TRANS_B>
__global__ void __launch_bounds__(MG_MMA_THREADS) mg_gemm_mma(%(PARAMS)s) {
    // block b -> the MG_MMA_BM x MG_MMA_BN tile of C at rows (b % tiles_m) BM, columns
    // (b / tiles_m) BN; warp w (4 warps) -> its 32 x 32 quarter (rows (w / 2) 32, columns
    // (w % 2) 32): 2 x 4 mma tiles of 16 x 8; lane l, g = l / 4, t = l % 4 -> accumulators
    // (rows g, g + 8) x (columns 2t, 2t + 1) of each (PTX's mma.m16n8 fragment layout).
    // Without tensor cores (__CUDA_ARCH__ < 800) thread t -> the elements t, t + 128, ... of
    // the tile, on CUDA cores in float
    const long long tiles_m = (M + MG_MMA_BM - 1) / MG_MMA_BM;
    const long long m0 = ((long long)blockIdx.x % tiles_m) * MG_MMA_BM;
    const long long n0 = ((long long)blockIdx.x / tiles_m) * MG_MMA_BN;
    const int tid = threadIdx.x;
#ifdef MG_HAS_MMA
    typedef typename MgMma<MMA>::E E;
    // op(A) tile (m, k) and op(B) tile stored (n, k): a fragment's pair is two adjacent k
    __shared__ E As[MG_MMA_BM][MG_MMA_BK + MG_MMA_PAD];
    __shared__ E Bs[MG_MMA_BN][MG_MMA_BK + MG_MMA_PAD];
    const int warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
    const int wm = (warp / 2) * 32, wn = (warp % 2) * 32;
    float acc[2][4][4];
    #pragma unroll
    for (int i = 0; i < 2; ++i)
        #pragma unroll
        for (int j = 0; j < 4; ++j)
            #pragma unroll
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;
    for (long long k0 = 0; k0 < K; k0 += MG_MMA_BK) {
        // fill the tiles (zeros past the edges), rounding to the MMA's type; consecutive
        // threads read consecutive elements along each operand's stored columns
        for (int e = tid; e < MG_MMA_BM * MG_MMA_BK; e += MG_MMA_THREADS) {
            int mm, kk;
            if (TRANS_A) { kk = e / MG_MMA_BM; mm = e % MG_MMA_BM; }
            else { mm = e / MG_MMA_BK; kk = e % MG_MMA_BK; }
            const long long m = m0 + mm, k = k0 + kk;
            float v = 0.0f;
            if (m < M && k < K) v = mg_to_float(TRANS_A ? A[k * lda + m] : A[m * lda + k]);
            As[mm][kk] = MgMma<MMA>::cvt(v);
        }
        for (int e = tid; e < MG_MMA_BK * MG_MMA_BN; e += MG_MMA_THREADS) {
            int kk, nn;
            if (TRANS_B) { nn = e / MG_MMA_BK; kk = e % MG_MMA_BK; }
            else { kk = e / MG_MMA_BN; nn = e % MG_MMA_BN; }
            const long long k = k0 + kk, n = n0 + nn;
            float v = 0.0f;
            if (k < K && n < N) v = mg_to_float(TRANS_B ? B[n * ldb + k] : B[k * ldb + n]);
            Bs[nn][kk] = MgMma<MMA>::cvt(v);
        }
        __syncthreads();
        if (MMA == MG_MMA_TF32) {
            #pragma unroll
            for (int kf = 0; kf < MG_MMA_BK; kf += 8) {  // m16n8k8: a (g|g+8, t|t+4), b (t|t+4, g)
                unsigned int a[2][4], b[4][2];
                #pragma unroll
                for (int i = 0; i < 2; ++i) {
                    const int r = wm + 16 * i + g;
                    a[i][0] = (unsigned int)As[r][kf + t];
                    a[i][1] = (unsigned int)As[r + 8][kf + t];
                    a[i][2] = (unsigned int)As[r][kf + t + 4];
                    a[i][3] = (unsigned int)As[r + 8][kf + t + 4];
                }
                #pragma unroll
                for (int j = 0; j < 4; ++j) {
                    b[j][0] = (unsigned int)Bs[wn + 8 * j + g][kf + t];
                    b[j][1] = (unsigned int)Bs[wn + 8 * j + g][kf + t + 4];
                }
                #pragma unroll
                for (int i = 0; i < 2; ++i)
                    #pragma unroll
                    for (int j = 0; j < 4; ++j) mg_mma_tf32(acc[i][j], a[i], b[j]);
            }
        } else {  // m16n8k16: a pairs (g|g+8, 2t|2t+8), b pairs (2t|2t+8, g)
            unsigned int a[2][4], b[4][2];
            #pragma unroll
            for (int i = 0; i < 2; ++i) {
                const int r = wm + 16 * i + g;
                a[i][0] = mg_pair((const unsigned short*)&As[r][2 * t]);
                a[i][1] = mg_pair((const unsigned short*)&As[r + 8][2 * t]);
                a[i][2] = mg_pair((const unsigned short*)&As[r][2 * t + 8]);
                a[i][3] = mg_pair((const unsigned short*)&As[r + 8][2 * t + 8]);
            }
            #pragma unroll
            for (int j = 0; j < 4; ++j) {
                b[j][0] = mg_pair((const unsigned short*)&Bs[wn + 8 * j + g][2 * t]);
                b[j][1] = mg_pair((const unsigned short*)&Bs[wn + 8 * j + g][2 * t + 8]);
            }
            #pragma unroll
            for (int i = 0; i < 2; ++i)
                #pragma unroll
                for (int j = 0; j < 4; ++j) {
                    if (MMA == MG_MMA_F16) mg_mma_f16(acc[i][j], a[i], b[j]);
                    else mg_mma_bf16(acc[i][j], a[i], b[j]);
                }
        }
        __syncthreads();
    }
    #pragma unroll
    for (int i = 0; i < 2; ++i)
        #pragma unroll
        for (int j = 0; j < 4; ++j)
            #pragma unroll
            for (int r = 0; r < 4; ++r) {
                const long long m = m0 + wm + 16 * i + g + 8 * (r / 2);
                const long long n = n0 + wn + 8 * j + 2 * t + (r % 2);
                if (m >= M || n >= N) continue;
                float v = alpha * acc[i][j][r];
                if (beta != 0.0f) v += beta * mg_to_float(C[m * ldc + n]);
                mg_store(v, &C[m * ldc + n]);
            }
#else
    for (int e = tid; e < MG_MMA_BM * MG_MMA_BN; e += MG_MMA_THREADS) {
        const long long m = m0 + e / MG_MMA_BN, n = n0 + e % MG_MMA_BN;
        if (m >= M || n >= N) continue;
        float s = 0.0f;
        for (long long k = 0; k < K; ++k)
            s += mg_to_float(TRANS_A ? A[k * lda + m] : A[m * lda + k]) *
                 mg_to_float(TRANS_B ? B[n * ldb + k] : B[k * ldb + n]);
        float v = alpha * s;
        if (beta != 0.0f) v += beta * mg_to_float(C[m * ldc + n]);
        mg_store(v, &C[m * ldc + n]);
    }
#endif
}
"""
# filled in by name (not %-formatting: the PTX operands are %0, %1, ...)
for _key, _value in {
    "BM": MMA_BM,
    "BN": MMA_BN,
    "BK": MMA_BK,
    "THREADS": MMA_THREADS,
    "PARAMS": signature(MMA_PARAMS),
}.items():
    MMA_SOURCE = MMA_SOURCE.replace(f"%({_key})" + ("s" if _key == "PARAMS" else "d"), str(_value))


def mma_name(mma: int, trans_a: int, trans_b: int) -> str:
    """The C++ name of one mg_gemm_mma instance, e.g. 'mg_gemm_mma<2, 0, 1>'."""
    return f"mg_gemm_mma<{mma}, {trans_a}, {trans_b}>"


MMA_INSTANCES = [
    (mma, ta, tb) for mma in (MMA_F16, MMA_BF16, MMA_TF32) for ta in (0, 1) for tb in (0, 1)
]
