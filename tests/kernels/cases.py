"""The one case table of the kernel parity tests, and the runner that checks a case on any flavour.

`CASES[name]` lists Case(label, make, tiny) for every required and optional kernel name;
`make(rng, dtype)` returns the kernel's positional arguments as NumPy arrays and plain values.
Shapes cover the seed CNN's layers (at a small batch, so float32 reductions stay short) and odd
geometries: stride 2, padding 1, non-square kernels/inputs/strides, batch 1, both conv paths of
numba_cpu (direct for c*kh*kw <= 32, GEMM above), its fused polyphase and Winograd blocks, ties and
NaNs. `tiny` cases (a few hundred outputs) also run in the CUDA simulator and the g++ build of the
CUDA C (test_cuda_sim.py, test_cupy_sources.py); test_parity.py runs every case on every flavour.
`check_parity(k, name, case, dtype, dev, host)` compares a table's kernel with numpy_cpu.REFERENCE.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import NamedTuple

import numpy as np
import pytest

from engine import backend
from kernels import ALL_KERNEL_NAMES, coverage, describe_coverage
from kernels.numpy_cpu import REFERENCE
from tests.conftest import TOL
from tests.helpers import distinct

DTYPES = [np.float32, np.float64]


class Case(NamedTuple):
    label: str
    make: Callable  # make(rng, dtype) -> the kernel's positional arguments
    tiny: bool = False  # small enough for the CUDA simulator and the g++ build of the CUDA C


# x shape, W shape, stride, padding
CONV = [
    ("seed_conv1", (2, 1, 28, 28), (32, 1, 3, 3), (1, 1), (0, 0)),
    ("seed_conv2", (2, 32, 13, 13), (64, 32, 3, 3), (1, 1), (0, 0)),
    ("stride2_pad1", (3, 3, 9, 8), (4, 3, 3, 3), (2, 2), (1, 1)),
    ("nonsquare_gemm", (2, 8, 9, 7), (5, 8, 3, 2), (2, 1), (1, 0)),
    ("batch1_nonsquare", (1, 2, 6, 9), (3, 2, 2, 4), (1, 2), (1, 0)),
    ("batch1_pad_gemm", (1, 16, 5, 6), (4, 16, 3, 3), (1, 1), (1, 1)),
    # 3x3 stride-1 convs on thin inputs: numba_cpu's polyphase conv-ReLU-pool block (odd outputs)
    ("rgb_pad1_odd", (3, 3, 11, 9), (5, 3, 3, 3), (1, 1), (1, 1)),
    ("batch1_grey_pad1", (1, 1, 7, 10), (2, 1, 3, 3), (1, 1), (1, 1)),
    # ... and on thicker ones: the Winograd F(2x2, 3x3) conv-ReLU-pool forward (padded, odd)
    ("wino_pad1_odd", (2, 8, 9, 11), (6, 8, 3, 3), (1, 1), (1, 1)),
    # batches of several tasks (the fused backward sums 8-image chunks; 17 leaves a short one)
    ("batch17_thin_pad1", (17, 1, 9, 8), (3, 1, 3, 3), (1, 1), (1, 1)),
    ("batch17_wino", (17, 5, 7, 9), (4, 5, 3, 3), (1, 1), (0, 0)),
    ("pad_past_reach", (1, 1, 4, 6), (2, 1, 3, 3), (1, 1), (1, 4)),  # the crop ends in padding
    # 3x3 stride-1 convs on small maps (oh*ow <= 16): numba_cpu's plain Winograd conv, all passes
    ("wino_map4x4_pad1", (3, 8, 4, 4), (6, 8, 3, 3), (1, 1), (1, 1)),  # a ResNet stage-3 block
    ("wino_map2x2_pad1", (2, 12, 2, 2), (5, 12, 3, 3), (1, 1), (1, 1)),  # stage 4: one tile
    ("wino_odd_map_pad2", (2, 5, 3, 4), (4, 5, 3, 3), (1, 1), (2, 0)),  # 5x2: odd rows, gx pad 0
    ("wino_odd_nopad", (2, 6, 5, 5), (3, 6, 3, 3), (1, 1), (0, 0)),  # 3x3: odd rows and columns
]
CONV_TINY = [  # small enough for the simulator too
    ("tiny_thin", (2, 2, 4, 4), (3, 2, 3, 3), (1, 1), (0, 0)),  # pool output 1x1 (thin path)
    ("tiny_wino", (2, 6, 5, 4), (3, 6, 3, 3), (1, 1), (0, 0)),  # pool output 1x1 (Winograd)
    ("tiny_3x2", (2, 2, 5, 4), (3, 2, 3, 2), (1, 1), (0, 0)),
    ("tiny_batch1_stride2_pad1", (1, 2, 5, 5), (2, 2, 3, 3), (2, 2), (1, 1)),
    ("tiny_nonsquare", (2, 1, 4, 6), (2, 1, 2, 3), (1, 2), (0, 1)),
    ("tiny_seed_block", (2, 2, 6, 6), (3, 2, 3, 3), (1, 1), (0, 0)),
    ("tiny_odd", (2, 1, 7, 7), (2, 1, 3, 3), (1, 1), (0, 0)),
    ("tiny_pad_rows", (1, 2, 7, 6), (3, 2, 3, 2), (1, 1), (1, 0)),
    ("tiny_stride_cols", (2, 2, 4, 7), (2, 2, 2, 3), (1, 2), (0, 1)),
]
# volumes (n, c, d, h, w): x shape, W shape, stride, padding (numba_cpu: direct for c*kd*kh*kw
# <= 32, im2col + GEMM above; stride 1 and other strides)
CONV3D = [
    ("vol_gemm_pad1", (2, 8, 6, 7, 5), (6, 8, 3, 3, 3), (1, 1, 1), (1, 1, 1)),
    ("vol_thin_pad1", (2, 1, 7, 6, 8), (4, 1, 3, 3, 3), (1, 1, 1), (1, 1, 1)),
    ("vol_stride_nonsquare", (1, 3, 7, 8, 6), (4, 3, 3, 2, 3), (2, 1, 2), (1, 0, 1)),
    ("vol_thin_stride2", (3, 1, 9, 8, 7), (2, 1, 3, 3, 3), (2, 2, 2), (0, 1, 1)),
    ("vol_pad_past_reach", (1, 2, 3, 4, 5), (3, 2, 2, 3, 3), (1, 1, 1), (2, 0, 3)),
    ("vol_direct_odd", (2, 5, 5, 6, 13), (7, 5, 3, 3, 3), (1, 1, 1), (1, 1, 1)),
    ("vol_direct_k2_pad0", (1, 4, 5, 4, 9), (6, 4, 2, 2, 2), (1, 1, 1), (0, 0, 0)),
    ("vol_direct_1x1x1", (2, 16, 3, 4, 5), (3, 16, 1, 1, 1), (1, 1, 1), (0, 0, 0)),
    ("vol_direct_nonsquare_wide", (1, 3, 3, 4, 20), (5, 3, 3, 1, 3), (1, 1, 1), (0, 1, 2)),
    ("vol_k2_stride2", (2, 4, 6, 4, 8), (3, 4, 2, 2, 2), (2, 2, 2), (0, 0, 0)),
]
CONV3D_TINY = [
    ("tiny_vol", (2, 2, 4, 3, 5), (3, 2, 2, 3, 2), (1, 2, 1), (1, 0, 1)),
    ("tiny_vol_thin", (1, 1, 4, 4, 4), (2, 1, 3, 3, 3), (1, 1, 1), (1, 1, 1)),
    ("tiny_vol_gemm_stride2", (2, 2, 5, 5, 4), (2, 2, 3, 3, 3), (2, 2, 2), (1, 1, 1)),
]
# x shape, kernel_size, stride, padding
POOL = [
    ("seed_pool1", (2, 32, 26, 26), (2, 2), (2, 2), (0, 0)),
    ("seed_pool2_odd", (2, 64, 11, 11), (2, 2), (2, 2), (0, 0)),
    ("overlap_pad1", (2, 3, 7, 6), (3, 3), (2, 2), (1, 1)),
    ("batch1_nonsquare", (1, 2, 5, 9), (2, 3), (1, 2), (1, 1)),
]
POOL_TINY = [
    ("tiny_2x2", (2, 2, 4, 6), (2, 2), (2, 2), (0, 0)),
    ("tiny_batch1_pad1", (1, 2, 5, 5), (3, 3), (2, 2), (1, 1)),
    ("tiny_overlap_nonsquare", (2, 1, 4, 5), (2, 3), (1, 2), (1, 1)),
]
# conv geometry (a CONV or CONV_TINY label) + pool kernel_size, stride, padding: the fused layer
FUSED = [
    ("seed_conv1", (2, 2), (2, 2), (0, 0)),
    ("seed_conv2", (2, 2), (2, 2), (0, 0)),  # 11x11 conv output: the last row/column is dropped
    ("stride2_pad1", (3, 3), (2, 2), (1, 1)),  # overlapping, padded pool windows
    ("nonsquare_gemm", (2, 1), (1, 1), (0, 0)),
    ("batch1_nonsquare", (1, 2), (1, 2), (0, 1)),
    ("batch1_pad_gemm", (3, 3), (1, 1), (1, 1)),
    ("rgb_pad1_odd", (2, 2), (2, 2), (0, 0)),  # 11x9 conv output -> 5x4
    ("batch1_grey_pad1", (2, 2), (2, 2), (0, 0)),  # 7x10 -> 3x5
    ("wino_pad1_odd", (2, 2), (2, 2), (0, 0)),  # 9x11 -> 4x5
    ("batch17_thin_pad1", (2, 2), (2, 2), (0, 0)),
    ("batch17_wino", (2, 2), (2, 2), (0, 0)),
    ("pad_past_reach", (1, 1), (1, 100), (0, 0)),  # 4x12 -> 4x1: windows read column 0 only
    ("tiny_thin", (2, 2), (2, 2), (0, 0)),  # 2x2 -> 1x1
    ("tiny_wino", (2, 2), (2, 2), (0, 0)),  # 3x2 -> 1x1
    ("tiny_seed_block", (2, 2), (2, 2), (0, 0)),  # the seed CNN's block
    ("tiny_odd", (2, 2), (2, 2), (0, 0)),  # 5x5 -> 2x2: the last row dropped
    ("tiny_pad_rows", (3, 3), (2, 2), (1, 1)),  # overlapping, padded pool windows
    ("tiny_stride_cols", (1, 2), (1, 2), (0, 1)),  # non-square everything
]
_TINY = {label for label, *_ in CONV_TINY + POOL_TINY}


def out_hw(h, w, k, s, p):
    return (h + 2 * p[0] - k[0]) // s[0] + 1, (w + 2 * p[1] - k[1]) // s[1] + 1


def _normal(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def _conv_cases():
    names = (
        "im2col",
        "col2im",
        "conv2d_forward",
        "conv2d_backward_input",
        "conv2d_backward_weight",
    )
    cases = {name: [] for name in names}
    for label, xs, ws, s, p in CONV + CONV_TINY:
        k = ws[2:]
        oh, ow = out_hw(xs[2], xs[3], k, s, p)
        ys = (xs[0], ws[0], oh, ow)
        cols = (xs[0] * oh * ow, xs[1] * k[0] * k[1])
        makers = {
            "im2col": lambda r, d, xs=xs, k=k, s=s, p=p: (_normal(r, xs, d), k, s, p),
            "col2im": lambda r, d, xs=xs, k=k, s=s, p=p, n=cols: (_normal(r, n, d), xs, k, s, p),
            "conv2d_forward": lambda r, d, xs=xs, ws=ws, s=s, p=p: (
                *(_normal(r, shape, d) for shape in (xs, ws, ws[0])),
                s,
                p,
            ),
            "conv2d_backward_input": lambda r, d, xs=xs, ws=ws, ys=ys, s=s, p=p: (
                *(_normal(r, shape, d) for shape in (ys, ws)),
                xs,
                s,
                p,
            ),
            "conv2d_backward_weight": lambda r, d, xs=xs, ys=ys, k=k, s=s, p=p: (
                *(_normal(r, shape, d) for shape in (ys, xs)),
                k,
                s,
                p,
            ),
        }
        for name, make in makers.items():
            cases[name].append(Case(label, make, label in _TINY))
    _, xs, ws, s, p = CONV_TINY[3]
    cases["conv2d_forward"].append(
        Case("tiny_no_bias", lambda r, d: (_normal(r, xs, d), _normal(r, ws, d), None, s, p), True)
    )
    return cases


def _conv3d_cases():
    """conv3d_forward / _backward_input / _backward_weight on the CONV3D geometries."""
    cases = {f"conv3d_{p}": [] for p in ("forward", "backward_input", "backward_weight")}
    for label, xs, ws, s, p in CONV3D + CONV3D_TINY:
        k = ws[2:]
        ys = (xs[0], ws[0], *((xs[a + 2] + 2 * p[a] - k[a]) // s[a] + 1 for a in range(3)))
        tiny = label.startswith("tiny_")

        def forward(r, d, xs=xs, ws=ws, s=s, p=p, bias=True):
            b = _normal(r, ws[0], d) if bias else None
            return (_normal(r, xs, d), _normal(r, ws, d), b, s, p)

        def backward_input(r, d, xs=xs, ws=ws, ys=ys, s=s, p=p):
            return (_normal(r, ys, d), _normal(r, ws, d), xs, s, p)

        def backward_weight(r, d, xs=xs, ys=ys, k=k, s=s, p=p):
            return (_normal(r, ys, d), _normal(r, xs, d), k, s, p)

        cases["conv3d_forward"].append(Case(label, forward, tiny))
        cases["conv3d_backward_input"].append(Case(label, backward_input, tiny))
        cases["conv3d_backward_weight"].append(Case(label, backward_weight, tiny))
        if label == "tiny_vol":
            no_bias = Case("tiny_vol_no_bias", lambda r, d, f=forward: f(r, d, bias=False), True)
            cases["conv3d_forward"].append(no_bias)
    return cases


def _pool_cases():
    names = ("max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward")
    cases = {name: [] for name in (*names, "avg_pool2d_backward")}
    argmax = REFERENCE["max_pool2d_forward"]  # the backward cases need a consistent argmax
    for label, xs, k, s, p in POOL + POOL_TINY:
        ys = (*xs[:2], *out_hw(xs[2], xs[3], k, s, p))
        makers = {
            "max_pool2d_forward": lambda r, d, xs=xs, k=k, s=s, p=p: (
                distinct(r, xs).astype(d),
                k,
                s,
                p,
            ),
            "max_pool2d_backward": lambda r, d, xs=xs, ys=ys, k=k, s=s, p=p: (
                _normal(r, ys, d),
                argmax(distinct(r, xs), k, s, p)[1],
                xs,
                k,
                s,
                p,
            ),
            "avg_pool2d_forward": lambda r, d, xs=xs, k=k, s=s, p=p: (_normal(r, xs, d), k, s, p),
            "avg_pool2d_backward": lambda r, d, xs=xs, ys=ys, k=k, s=s, p=p: (
                _normal(r, ys, d),
                xs,
                k,
                s,
                p,
            ),
        }
        for name, make in makers.items():
            cases[name].append(Case(label, make, label in _TINY))

    def blocks(r, d):  # 2x2 blocks of equal values
        return np.repeat(np.repeat(_normal(r, (2, 3, 3, 4), d), 2, 2), 2, 3)

    def nans(r, d):  # the first NaN of a window wins over any number, and a later one never
        x = _normal(r, (1, 2, 5, 5), d)
        x.flat[[0, 3, 7, 8, 24, 30, 31]] = np.nan
        return x, (3, 3), (2, 2), (1, 1)

    def nans_2x2(r, d):  # the 2x2 stride-2 path: NaNs at every tap position, signed zeros
        x = _normal(r, (1, 2, 6, 8), d)
        x.flat[[1, 8, 19, 26, 36, 45, 46]] = np.nan  # window taps 1, 2, 3, 0, then two in one
        x[0, 1, :2, :2] = [[-0.0, 0.0], [0.0, -1.0]]  # equal zeros: the first one wins
        return x, (2, 2), (2, 2), (0, 0)

    # ties: blocks of equal values and all-zero planes; the first maximum (row-major) must win
    cases["max_pool2d_forward"] += [
        Case("tiny_ties", lambda r, d: (blocks(r, d), (3, 3), (1, 1), (1, 1)), True),
        Case(
            "tiny_all_ties", lambda r, d: (np.zeros((1, 2, 4, 4), d), (2, 2), (2, 2), (0, 0)), True
        ),
        Case("tiny_nans", nans, True),
        Case("tiny_nans_2x2", nans_2x2, True),
    ]
    return cases


def _relu_x(r, shape, d):
    x = _normal(r, shape, d)
    x.flat[:7] = [0.0, -0.0, 1.0, -1.0, 0.0, 3.0, -2.0]  # exact zeros: the kink's convention
    return x


def _probs(r, shape, d):
    e = np.exp(r.standard_normal(shape))
    return (e / e.sum(axis=1, keepdims=True)).astype(d)


def _elementwise_cases():
    def relu_backward(shape):
        return lambda r, d: (_normal(r, shape, d), np.maximum(_relu_x(r, shape, d), 0))

    def xent_backward(n, k, gloss):
        return lambda r, d: (_probs(r, (n, k), d), r.integers(0, k, n), np.asarray(gloss, d))

    return {
        "relu_forward": [
            Case("seed_act", lambda r, d: (_relu_x(r, (2, 32, 26, 26), d),)),
            Case("tiny_dense_2d", lambda r, d: (_relu_x(r, (3, 64), d),), True),
            # a non-contiguous view: the launchers must not assume C order
            Case(
                "tiny_transposed", lambda r, d: (_relu_x(r, (3, 4, 5), d).transpose(2, 0, 1),), True
            ),
        ],
        "relu_backward": [
            Case("seed_act", relu_backward((2, 32, 26, 26))),
            Case("tiny_dense_2d", relu_backward((3, 64)), True),
        ],
        "softmax_cross_entropy_forward": [
            Case("seed_logits", lambda r, d: (_normal(r, (64, 10), d), r.integers(0, 10, 64))),
            Case("tiny_batch1", lambda r, d: (_normal(r, (1, 3), d), np.array([2])), True),
            Case(
                "tiny_huge_logits",  # the max shift keeps exp finite
                lambda r, d: ((_normal(r, (5, 7), d) * 1e4).astype(d), r.integers(0, 7, 5)),
                True,
            ),
        ],
        "softmax_cross_entropy_backward": [
            Case("seed_probs", xent_backward(64, 10, 0.7)),
            Case("tiny_5x7", xent_backward(5, 7, 0.7), True),
            Case("tiny_batch1", xent_backward(1, 3, 1.0), True),
        ],
    }


def _optim_cases():
    def sgd(shape, momentum, nesterov, wd):
        def make(r, d):
            v = _normal(r, shape, d) if momentum else None  # the velocity buffer
            return (_normal(r, shape, d), _normal(r, shape, d), v, 0.05, momentum, nesterov, wd)

        return make

    def adam(shape, step, wd):
        def make(r, d):
            v = np.abs(_normal(r, shape, d))
            p, g, m = (_normal(r, shape, d) for _ in range(3))
            return (p, g, m, v, step, 1e-3, 0.9, 0.999, 1e-8, wd)

        return make

    cases = {"sgd_update": [], "adam_update": []}
    # the seed CNN's largest parameter (transposed), and a tiny one
    for prefix, shape, tiny in (("", (64, 1600), False), ("tiny_", (3, 5), True)):
        cases["sgd_update"] += [
            Case(f"{prefix}plain", sgd(shape, 0.0, False, 0.0), tiny),
            Case(f"{prefix}wd", sgd(shape, 0.0, False, 0.1), tiny),
            Case(f"{prefix}momentum", sgd(shape, 0.9, False, 0.0), tiny),
            Case(f"{prefix}nesterov_wd", sgd(shape, 0.9, True, 1e-2), tiny),
        ]
        cases["adam_update"] += [
            Case(f"{prefix}step1", adam(shape, 1, 0.0), tiny),
            Case(f"{prefix}step7_wd", adam(shape, 7, 1e-2), tiny),
        ]
    return cases


def _fused_cases():
    """Many windows rectify to all zeros (the ReLU/pool tie rule). The tiny cases draw small
    integers, so every conv sum is exact in any summation order (GEMM, Winograd): their argmax,
    ties included, must match exactly on every flavour."""
    fwd, bwd = "conv2d_relu_max_pool2d_forward", "conv2d_relu_max_pool2d_backward"
    cases = {fwd: [], bwd: []}
    geometry = {label: (xs, ws, s, p) for label, xs, ws, s, p in CONV + CONV_TINY}
    for label, *pool in FUSED:
        tiny = label in _TINY

        def forward(r, d, conv=geometry[label], pool=tuple(pool), tiny=tiny, bias=True):
            xs, ws, s, p = conv
            if tiny:
                x, W = (r.integers(-2, 3, shape).astype(d) for shape in (xs, ws))
                b = r.integers(-4, 2, ws[0]).astype(d)
            else:  # a negative bias: many zero windows
                x, W, b = _normal(r, xs, d), _normal(r, ws, d), _normal(r, ws[0], d) - 1.0
            return (x, W, b if bias else None, s, p, *pool)

        def backward(r, d, forward=forward, need_gx=False):
            x, W, b, s, p, *pool = forward(r, np.float64)
            y, argmax = REFERENCE[fwd](x, W, b, s, p, *pool)
            gy = _normal(r, y.shape, d)
            return (gy, y.astype(d), argmax, x.astype(d), W.astype(d), s, p, *pool, need_gx)

        cases[fwd].append(Case(label, forward, tiny))
        cases[bwd].append(Case(label, backward, tiny))
        cases[bwd].append(Case(f"{label}_gx", lambda r, d, f=backward: f(r, d, need_gx=True), tiny))
    no_bias = next(case.make for case in cases[fwd] if case.label == "tiny_seed_block")
    cases[fwd].append(Case("tiny_no_bias", lambda r, d: no_bias(r, d, bias=False), True))
    return cases


# 3-D pools: x shape, kernel_size, stride, padding; tiny ones carry "tiny" in their label
POOL3D = [
    ("vol_2x2x2", (2, 4, 8, 10, 12), (2, 2, 2), (2, 2, 2), (0, 0, 0)),
    ("vol_overlap_pad1", (1, 3, 7, 6, 9), (3, 3, 3), (2, 2, 2), (1, 1, 1)),
    ("vol_noncubic", (2, 2, 5, 8, 7), (2, 3, 1), (1, 2, 1), (1, 1, 0)),
    ("tiny_vol_2x2x2", (1, 2, 4, 4, 4), (2, 2, 2), (2, 2, 2), (0, 0, 0)),
    ("tiny_vol_pad", (1, 1, 5, 4, 5), (3, 2, 3), (2, 1, 2), (1, 1, 1)),
]
# adaptive average pools: x shape, output_size
ADAPTIVE = [
    ("global_2d", (2, 8, 9, 7), (1, 1)),
    ("overlap_3d", (2, 3, 7, 6, 5), (3, 4, 2)),
    ("tiny_2d", (1, 2, 5, 4), (3, 3)),
    ("tiny_3d", (1, 2, 3, 4, 5), (2, 3, 2)),
    ("tiny_up_3d", (1, 1, 2, 3, 2), (3, 4, 5)),  # more outputs than inputs: overlapping windows
]
# interpolate: x shape, size, mode, align_corners, scales (the user's scale factors or None)
INTERPOLATE = [
    ("trilinear_up2", (1, 4, 8, 8, 8), (16, 16, 16), "trilinear", False, (2.0, 2.0, 2.0)),
    ("trilinear_ac_mixed", (2, 2, 9, 7, 8), (5, 4, 11), "trilinear", True, (None,) * 3),
    ("bilinear_frac", (2, 3, 9, 10), (13, 7), "bilinear", False, (1.5, 0.7)),
    ("nearest_3d", (1, 3, 5, 6, 7), (10, 4, 9), "nearest", False, (None,) * 3),
    ("nearest_2d_frac", (2, 2, 7, 5), (16, 11), "nearest", False, (2.3, 2.3)),
    ("tiny_trilinear", (1, 2, 3, 4, 3), (5, 6, 4), "trilinear", False, (None,) * 3),
    ("tiny_bilinear_ac", (2, 1, 4, 5), (3, 8), "bilinear", True, (None,) * 2),
    ("tiny_nearest_3d", (1, 2, 3, 3, 4), (6, 2, 5), "nearest", False, (None,) * 3),
    ("tiny_nearest_2d", (1, 2, 4, 5), (8, 10), "nearest", False, (2.0, 2.0)),
    ("tiny_trilinear_ac_down", (1, 1, 5, 4, 6), (3, 4, 4), "trilinear", True, (None,) * 3),
    ("tiny_bilinear_frac", (1, 2, 5, 6), (7, 4), "bilinear", False, (1.5, 0.7)),
    # column 37 of 40: floor(37 * (1 / 3.7)) is 10 in float32 (PyTorch's index), 9 in float64
    ("tiny_nearest_f32_index", (1, 1, 3, 11), (11, 40), "nearest", False, (3.7, 3.7)),
]


def _volume_cases():
    """3-D pools (ties and NaNs as the 2-D ones), adaptive average pools and interpolate."""
    cases = {name: [] for name in ("max_pool3d_forward", "max_pool3d_backward")}
    cases.update({name: [] for name in ("avg_pool3d_forward", "avg_pool3d_backward")})
    argmax = REFERENCE["max_pool3d_forward"]  # the backward cases need a consistent argmax
    for label, xs, k, s, p in POOL3D:
        ys = (
            *xs[:2],
            *((n + 2 * q - kk) // ss + 1 for n, kk, ss, q in zip(xs[2:], k, s, p, strict=True)),
        )
        tiny = "tiny" in label
        makers = {
            "max_pool3d_forward": lambda r, d, xs=xs, g=(k, s, p): (distinct(r, xs).astype(d), *g),
            "max_pool3d_backward": lambda r, d, xs=xs, ys=ys, g=(k, s, p): (
                _normal(r, ys, d),
                argmax(distinct(r, xs), *g)[1],
                xs,
                *g,
            ),
            "avg_pool3d_forward": lambda r, d, xs=xs, g=(k, s, p): (_normal(r, xs, d), *g),
            "avg_pool3d_backward": lambda r, d, xs=xs, ys=ys, g=(k, s, p): (
                _normal(r, ys, d),
                xs,
                *g,
            ),
        }
        for name, make in makers.items():
            cases[name].append(Case(label, make, tiny))

    def ties_and_nans(r, d):  # 2x2x2 blocks of equal values, then NaNs: first max / NaN wins
        x = np.repeat(np.repeat(np.repeat(_normal(r, (1, 2, 2, 2, 3), d), 2, 2), 2, 3), 2, 4)
        x.flat[[0, 5, 17, 40, 41, 90]] = np.nan
        return x, (3, 3, 3), (1, 2, 2), (1, 1, 1)

    cases["max_pool3d_forward"].append(Case("tiny_ties_nans", ties_and_nans, True))
    cases["max_pool3d_forward"].append(  # the same volume through numba_cpu's 2x2x2 fast path
        Case(
            "tiny_ties_nans_2x2x2",
            lambda r, d: (ties_and_nans(r, d)[0], *((2, 2, 2),) * 2, (0,) * 3),
            True,
        )
    )

    cases["adaptive_avg_pool_forward"] = [
        Case(label, lambda r, d, xs=xs, o=o: (_normal(r, xs, d), o), "tiny" in label)
        for label, xs, o in ADAPTIVE
    ]
    cases["adaptive_avg_pool_backward"] = [
        Case(label, lambda r, d, xs=xs, o=o: (_normal(r, (*xs[:2], *o), d), xs), "tiny" in label)
        for label, xs, o in ADAPTIVE
    ]
    cases["interpolate_forward"] = [
        Case(label, lambda r, d, xs=xs, a=args: (_normal(r, xs, d), *a), "tiny" in label)
        for label, xs, *args in INTERPOLATE
    ]
    cases["interpolate_backward"] = [
        Case(
            label,
            lambda r, d, xs=xs, size=size, a=args: (_normal(r, (*xs[:2], *size), d), xs, *a),
            "tiny" in label,
        )
        for label, xs, size, *args in INTERPOLATE
    ]
    return cases


def _norm_activation_cases():
    """Views (p, q, r) of batch norm (n, c, h*w: the ResNet benchmark's layer at a small batch),
    instance/group norm (1, n*g, .) and layer norm (1, L, T); an offset mean (the one-pass shift
    must cope); weight/bias given or absent. Activations: exact zeros (the kink's convention)."""
    views = [
        ("bn_resnet", (4, 64, 256), False),
        ("ln_rows", (1, 37, 100), False),
        ("tiny_bn", (3, 4, 5), True),
        ("tiny_groups", (1, 6, 7), True),
        ("tiny_single_slice", (2, 1, 3), True),
    ]

    def moments(shape):
        return lambda r, d: ((_normal(r, shape, np.float64) * 3 + 10).astype(d),)

    def stats(r, q, d):
        return _normal(r, q, d), np.abs(_normal(r, q, d)) + 0.5  # mean, rstd

    def forward(shape, affine):
        def make(r, d):
            wb = (_normal(r, shape[1], d), _normal(r, shape[1], d)) if affine else (None, None)
            return (_normal(r, shape, d), *stats(r, shape[1], d), *wb)

        return make

    def backward(shape, affine):
        def make(r, d):
            x = _normal(r, shape, d)
            mean, var = REFERENCE["norm_moments"](x)
            rstd = (1 / np.sqrt(var + 1e-5)).astype(d)
            w = _normal(r, shape[1], d) if affine else None
            return (_normal(r, shape, d), x, mean, rstd, w)

        return make

    cases = {name: [] for name in ("norm_moments", "norm_forward", "norm_backward")}
    for label, shape, tiny in views:
        cases["norm_moments"].append(Case(label, moments(shape), tiny))
        for affine in (True, False):
            tag = label if affine else f"{label}_no_affine"
            cases["norm_forward"].append(Case(tag, forward(shape, affine), tiny))
            cases["norm_backward"].append(Case(tag, backward(shape, affine), tiny))

    def offset(r, d):  # a mean offset of 1e4 over unit variance: one-pass E[x^2] - E[x]^2
        return ((_normal(r, (3, 2, 40), np.float64) + 1e4).astype(d),)  # loses the variance

    cases["norm_moments"].append(Case("tiny_offset_1e4", offset, True))
    # slices longer than a warp, and one long enough for numba_cuda's full reduction block
    cases["norm_moments"].append(Case("tiny_long_slice", moments((1, 1, 1100)), True))
    cases["norm_backward"].append(Case("tiny_long_slice", backward((1, 1, 1100), True), True))

    def constant_slices(r, d):  # slices 0 and 2 constant (var exactly 0), slice 1 at mean 1e3
        x = _normal(r, (2, 3, 9), np.float64)
        x[:, 0], x[:, 1], x[:, 2] = 7.25, x[:, 1] + 1e3, -3.5
        return (x.astype(d),)

    def chunked(shape):  # slices of several numba_cpu chunks (CHUNK = 2^15 elements)
        return lambda r, d: ((_normal(r, shape, np.float64) * 2 - 50).astype(d),)

    cases["norm_moments"].append(Case("tiny_constant_slices", constant_slices, True))
    cases["norm_moments"].append(Case("chunked_bn", chunked((3, 2, 25000)), False))
    cases["norm_moments"].append(Case("chunked_in", chunked((1, 2, 70000)), False))

    def relu_forward(shape, affine):  # about half the outputs rectified, exact zeros included
        def make(r, d):
            x, mean, rstd, w, b = forward(shape, affine)(r, d)
            x[:, :, ::7] = mean[:, None]  # xhat = 0 exactly here: y = relu(b), 0 without affine
            return (x, mean, rstd, w, b)

        return make

    def relu_backward(shape, affine):
        def make(r, d):
            gy, x, mean, rstd, w = backward(shape, affine)(r, np.float64)
            b = _normal(r, shape[1], np.float64) if affine else None
            y = REFERENCE["norm_relu_forward"](x, mean, rstd, w, b)
            return tuple(None if a is None else a.astype(d) for a in (gy, y, x, mean, rstd, w))

        return make

    cases["norm_relu_forward"], cases["norm_relu_backward"] = [], []
    relu_views = [*views, ("chunked_bn", (3, 2, 25000), False), ("tiny_long", (1, 2, 1100), True)]
    for label, shape, tiny in relu_views:
        for affine in (True, False):
            tag = label if affine else f"{label}_no_affine"
            cases["norm_relu_forward"].append(Case(tag, relu_forward(shape, affine), tiny))
            cases["norm_relu_backward"].append(Case(tag, relu_backward(shape, affine), tiny))
    cases["norm_backward"].append(Case("chunked_bn", backward((3, 2, 25000), True), False))

    def backward_of(make_x):  # norm_backward at x's own statistics, x from a moments case
        def make(r, d):
            x = make_x(r, np.float64)[0]
            mean, var = REFERENCE["norm_moments"](x)
            rstd = 1 / np.sqrt(var + 1e-5)
            gy, w = _normal(r, x.shape, np.float64), _normal(r, x.shape[1], np.float64)
            return tuple(a.astype(d) for a in (gy, x, mean, rstd, w))

        return make

    cases["norm_backward"].append(Case("tiny_constant_slices", backward_of(constant_slices), True))

    def pair(shape, slope=None):
        extra = () if slope is None else (slope,)
        return (
            lambda r, d: (_relu_x(r, shape, d), *extra),
            lambda r, d: (_normal(r, shape, d), _relu_x(r, shape, d), *extra),
        )

    for stem, slopes in (("leaky_relu", (0.01, -0.3)), ("gelu", (None,))):
        cases[f"{stem}_forward"], cases[f"{stem}_backward"] = [], []
        for slope in slopes:
            tag = "" if slope is None else f"_slope{slope}"
            for label, shape, tiny in (("act", (2, 32, 26, 26), False), ("tiny", (3, 4, 5), True)):
                fwd, bwd = pair(shape, slope)
                cases[f"{stem}_forward"].append(Case(f"{label}{tag}", fwd, tiny))
                cases[f"{stem}_backward"].append(Case(f"{label}{tag}", bwd, tiny))
    return cases


def _linalg_cases():
    def pair(a_shape, b_shape, transpose_b=False):
        def make(r, d):
            b = _normal(r, b_shape[::-1] if transpose_b else b_shape, d)
            return _normal(r, a_shape, d), (b.T if transpose_b else b)

        return make

    return {
        "matmul": [
            Case("dense_layer", pair((64, 800), (800, 10))),
            Case("tiny_2d", pair((7, 5), (5, 3)), True),
            # the dense backward's operands: a transposed view, as LinearFn passes W.T
            Case("tiny_transposed_view", pair((6, 4), (4, 9), transpose_b=True), True),
            Case("tiny_batched_broadcast", pair((2, 1, 3, 4), (3, 4, 2)), True),
        ]
    }


CASES: dict[str, list[Case]] = {
    **_conv_cases(),
    **_conv3d_cases(),
    **_fused_cases(),
    **_pool_cases(),
    **_elementwise_cases(),
    **_optim_cases(),
    **_volume_cases(),
    **_norm_activation_cases(),
    **_linalg_cases(),
}
missing = sorted(set(ALL_KERNEL_NAMES) - set(CASES))
assert not missing, f"kernels without parity cases: {missing}"  # a new kernel needs cases here
assert all(any(case.tiny for case in CASES[name]) for name in CASES), (
    "each kernel needs a tiny case"
)


def _same(a):
    return a


def _flatten(value) -> list:
    """A kernel's result as a list of arrays (tuples unpacked, None, scalars and strings dropped)."""
    if isinstance(value, tuple | list):
        return [a for v in value for a in _flatten(v)]
    return [] if value is None or isinstance(value, int | float | bool | str) else [value]


def check_parity(k, name: str, case: Case, dtype, dev=_same, host=_same) -> None:
    """Run `case` of kernel `name` from table `k` (a dict or namespace) with its array arguments
    moved by `dev`, and numpy_cpu.REFERENCE[name] on copies. Their return values and their array
    arguments afterwards (optimizer updates work in place), brought back by `host`, must agree
    in shape and dtype; integer arrays (argmax) exactly, floats to the TOL table's parity."""
    kernel = (k if isinstance(k, Mapping) else vars(k))[name]
    args = case.make(np.random.default_rng(0), dtype)
    ref_args = copy.deepcopy(list(args))
    ref = _flatten(REFERENCE[name](*ref_args)) + _flatten(ref_args)
    got_args = [dev(a) if isinstance(a, np.ndarray) else a for a in copy.deepcopy(list(args))]
    got = _flatten(kernel(*got_args)) + _flatten(got_args)
    assert len(got) == len(ref), f"{name}: {len(got)} arrays returned/updated, expected {len(ref)}"
    tol = TOL["parity32" if dtype == np.float32 else "parity64"]
    for i, (g, r) in enumerate(zip(got, ref, strict=True)):
        g = host(g)
        assert g.shape == r.shape and g.dtype == r.dtype, f"{name} array {i}: {g.shape} {g.dtype}"
        if r.dtype.kind in "iu":  # argmax: the tie rule must match exactly
            np.testing.assert_array_equal(g, r, err_msg=f"{name} array {i}")
        else:
            np.testing.assert_allclose(g, r, **tol, err_msg=f"{name} array {i}")


def tiny_params(own: Mapping) -> list:
    """pytest params (name, case) of the tiny cases of each kernel in `own`, a GPU flavour's own
    launchers: what the CUDA simulator and the g++ build of the CUDA C run."""
    return [
        pytest.param(name, case, id=f"{name}-{case.label}")
        for name in own
        for case in CASES[name]
        if case.tiny
    ]


def report_coverage(flavour: str, own: Mapping) -> None:
    """Print the coverage line of a flavour whose own launchers are `own` (shown by `pytest -rP`)
    and check the report: exactly those names are "own", and each of them has tiny cases."""
    print(describe_coverage(flavour, own))
    report = coverage(own)
    assert {name for name, how in report.items() if how == "own"} == set(own)
    assert all(any(case.tiny for case in CASES[name]) for name in own)


def softmax_cross_entropy_bad_targets(k, dtype, dev=_same, host=_same) -> None:
    """The GPU kernels' own contract (numpy_cpu has no counterpart: it would index out of range):
    a target outside [0, k) is never read, its row's loss and gradient are NaN and the other rows
    are untouched. The op checks targets on the CPU only, since a check would cost a device sync."""
    table = k if isinstance(k, Mapping) else vars(k)
    logits = np.random.default_rng(0).standard_normal((4, 3)).astype(dtype)
    t = np.array([0, 3, 2, -1])
    loss, probs = table["softmax_cross_entropy_forward"](dev(logits), dev(t))
    assert np.isnan(host(loss))
    g = host(table["softmax_cross_entropy_backward"](probs, dev(t), dev(np.asarray(1.0, dtype))))
    assert np.isnan(g[[1, 3]]).all() and np.isfinite(g[[0, 2]]).all()
    good = np.array([0, 2])
    expected = REFERENCE["softmax_cross_entropy_backward"](host(probs)[good], t[good], 1.0) * 2 / 4
    np.testing.assert_allclose(g[good], expected.astype(dtype), **TOL["parity32"])


def flavours_under_test() -> list[str]:
    """Every available "device:flavour" except the reference cpu:numpy, e.g. ["cpu:numba"]."""
    return [name for name in backend.available() if name != "cpu:numpy"]


def backend_of(name: str) -> backend.Backend:
    """The Backend of a "device:flavour" name (as listed by backend.available())."""
    device, flavour = name.split(":")
    with backend.use_kernels(flavour):
        return backend.backend_for(device)
