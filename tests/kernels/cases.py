"""Input generators for the kernel parity tests, one per kernel name, reusable by every flavour.

`CASES[name]` is a list of (label, make) pairs; `make(rng, dtype)` returns the kernel's positional
arguments as NumPy arrays and plain Python values. Shapes cover the seed CNN's layers (at a small
batch, so float32 reductions stay short) and odd geometries: stride 2, padding 1, non-square
kernels/inputs/strides, batch 1, both conv paths of numba_cpu (direct for c*kh*kw <= 32, GEMM above)
and its fused 3x3 + 2x2-pool kernels (polyphase for thin inputs, Winograd above).
`flavours_under_test()` lists every available "device:flavour" except the numpy_cpu reference.
"""

from __future__ import annotations

import numpy as np

from engine import backend
from kernels import KERNEL_NAMES
from tests.helpers import distinct

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
    # pool output 1x1 (thin, Winograd); padding past the pool's reach (the crop ends in it)
    ("tiny_thin", (2, 2, 4, 4), (3, 2, 3, 3), (1, 1), (0, 0)),
    ("tiny_wino", (2, 6, 5, 4), (3, 6, 3, 3), (1, 1), (0, 0)),
    ("pad_past_reach", (1, 1, 4, 6), (2, 1, 3, 3), (1, 1), (1, 4)),
]
# x shape, kernel_size, stride, padding
POOL = [
    ("seed_pool1", (2, 32, 26, 26), (2, 2), (2, 2), (0, 0)),
    ("seed_pool2_odd", (2, 64, 11, 11), (2, 2), (2, 2), (0, 0)),
    ("overlap_pad1", (2, 3, 7, 6), (3, 3), (2, 2), (1, 1)),
    ("batch1_nonsquare", (1, 2, 5, 9), (2, 3), (1, 2), (1, 1)),
]


def out_hw(h, w, k, s, p):
    return (h + 2 * p[0] - k[0]) // s[0] + 1, (w + 2 * p[1] - k[1]) // s[1] + 1


def _normal(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def _conv_cases():
    cases = {n: [] for n in ("im2col", "col2im", "conv2d_forward")}
    cases.update(conv2d_backward_input=[], conv2d_backward_weight=[])
    for label, xs, ws, s, p in CONV:
        k = ws[2:]
        oh, ow = out_hw(xs[2], xs[3], k, s, p)
        ys = (xs[0], ws[0], oh, ow)
        rows, cols = xs[0] * oh * ow, xs[1] * k[0] * k[1]
        cases["im2col"].append(
            (label, lambda r, d, xs=xs, k=k, s=s, p=p: (_normal(r, xs, d), k, s, p))
        )
        cases["col2im"].append(
            (
                label,
                lambda r, d, xs=xs, k=k, s=s, p=p, n=(rows, cols): (_normal(r, n, d), xs, k, s, p),
            )
        )
        cases["conv2d_forward"].append(
            (
                label,
                lambda r, d, xs=xs, ws=ws, s=s, p=p: (
                    _normal(r, xs, d),
                    _normal(r, ws, d),
                    _normal(r, ws[0], d),
                    s,
                    p,
                ),
            )
        )
        cases["conv2d_backward_input"].append(
            (
                label,
                lambda r, d, xs=xs, ws=ws, ys=ys, s=s, p=p: (
                    _normal(r, ys, d),
                    _normal(r, ws, d),
                    xs,
                    s,
                    p,
                ),
            )
        )
        cases["conv2d_backward_weight"].append(
            (
                label,
                lambda r, d, xs=xs, ys=ys, k=k, s=s, p=p: (
                    _normal(r, ys, d),
                    _normal(r, xs, d),
                    k,
                    s,
                    p,
                ),
            )
        )
    label, xs, ws, s, p = CONV[2]
    cases["conv2d_forward"].append(
        ("no_bias", lambda r, d: (_normal(r, xs, d), _normal(r, ws, d), None, s, p))
    )
    return cases


def _pool_argmax(x, k, s, p):
    """argmax of the reference kernel: the backward cases need a consistent one."""
    from kernels.numpy_cpu import pool

    return pool.max_pool2d_forward(x, k, s, p)[1]


def _pool_cases():
    cases = {n: [] for n in ("max_pool2d_forward", "max_pool2d_backward")}
    cases.update(avg_pool2d_forward=[], avg_pool2d_backward=[])
    for label, xs, k, s, p in POOL:
        ys = (*xs[:2], *out_hw(xs[2], xs[3], k, s, p))
        cases["max_pool2d_forward"].append(
            (label, lambda r, d, xs=xs, k=k, s=s, p=p: (distinct(r, xs).astype(d), k, s, p))
        )
        cases["max_pool2d_backward"].append(
            (
                label,
                lambda r, d, xs=xs, ys=ys, k=k, s=s, p=p: (
                    _normal(r, ys, d),
                    _pool_argmax(distinct(r, xs), k, s, p),
                    xs,
                    k,
                    s,
                    p,
                ),
            )
        )
        cases["avg_pool2d_forward"].append(
            (label, lambda r, d, xs=xs, k=k, s=s, p=p: (_normal(r, xs, d), k, s, p))
        )
        cases["avg_pool2d_backward"].append(
            (label, lambda r, d, xs=xs, ys=ys, k=k, s=s, p=p: (_normal(r, ys, d), xs, k, s, p))
        )
    # ties: blocks of equal values; the first maximum (row-major) must win in every flavour
    cases["max_pool2d_forward"].append(
        (
            "ties",
            lambda r, d: (
                np.repeat(np.repeat(_normal(r, (2, 3, 3, 4), d), 2, 2), 2, 3),
                (3, 3),
                (1, 1),
                (1, 1),
            ),
        )
    )
    return cases


def _elementwise_cases():
    def relu_x(r, shape, d):
        x = _normal(r, shape, d)
        x.flat[:7] = [0.0, -0.0, 1.0, -1.0, 0.0, 3.0, -2.0]  # exact zeros: the kink's convention
        return x

    seed_act = (2, 32, 26, 26)
    return {
        "relu_forward": [
            ("seed_act", lambda r, d: (relu_x(r, seed_act, d),)),
            ("dense_2d", lambda r, d: (relu_x(r, (3, 64), d),)),
        ],
        "relu_backward": [
            (
                "seed_act",
                lambda r, d: (_normal(r, seed_act, d), np.maximum(relu_x(r, seed_act, d), 0)),
            ),
            (
                "dense_2d",
                lambda r, d: (_normal(r, (3, 64), d), np.maximum(relu_x(r, (3, 64), d), 0)),
            ),
        ],
        "softmax_cross_entropy_forward": [
            ("seed_logits", lambda r, d: (_normal(r, (64, 10), d), r.integers(0, 10, 64))),
            ("batch1", lambda r, d: (_normal(r, (1, 3), d), np.array([2]))),
            (
                "huge_logits",
                lambda r, d: ((_normal(r, (4, 5), d) * 1e4).astype(d), r.integers(0, 5, 4)),
            ),
        ],
        "softmax_cross_entropy_backward": [
            (
                "seed_probs",
                lambda r, d: (_probs(r, (64, 10), d), r.integers(0, 10, 64), np.asarray(0.7, d)),
            ),
            ("batch1", lambda r, d: (_probs(r, (1, 3), d), np.array([0]), np.asarray(1.0, d))),
        ],
    }


def _probs(r, shape, d):
    e = np.exp(r.standard_normal(shape))
    return (e / e.sum(axis=1, keepdims=True)).astype(d)


def _optim_cases():
    shape = (64, 1600)  # the seed CNN's largest parameter, transposed

    def sgd(momentum, nesterov, wd, with_v=True):
        def make(r, d):
            v = _normal(r, shape, d) if with_v else None
            return (_normal(r, shape, d), _normal(r, shape, d), v, 0.05, momentum, nesterov, wd)

        return make

    def adam(step, wd):
        def make(r, d):
            v = np.abs(_normal(r, shape, d))
            p, g, m = (_normal(r, shape, d) for _ in range(3))
            return (p, g, m, v, step, 1e-3, 0.9, 0.999, 1e-8, wd)

        return make

    return {
        "sgd_update": [
            ("plain", sgd(0.0, False, 0.0, with_v=False)),
            ("momentum", sgd(0.9, False, 0.0)),
            ("nesterov_wd", sgd(0.9, True, 1e-2)),
        ],
        "adam_update": [("step1", adam(1, 0.0)), ("step7_wd", adam(7, 1e-2))],
    }


# conv geometry (a CONV label) + pool kernel_size, stride, padding: the fused conv-ReLU-pool layer
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
    ("tiny_thin", (2, 2), (2, 2), (0, 0)),  # 2x2 -> 1x1
    ("tiny_wino", (2, 2), (2, 2), (0, 0)),  # 3x2 -> 1x1
    ("pad_past_reach", (1, 1), (1, 100), (0, 0)),  # 4x12 -> 4x1: windows read column 0 only
]


def _fused_cases():
    """Inputs chosen so that many windows rectify to all zeros (the ReLU/pool tie rule)."""
    from kernels.numpy_cpu import fused

    BWD = "conv2d_relu_max_pool2d_backward"
    cases = {"conv2d_relu_max_pool2d_forward": [], BWD: []}
    geometry = {label: (xs, ws, s, p) for label, xs, ws, s, p in CONV}
    for label, pk, ps, pp in FUSED:
        xs, ws, s, p = geometry[label]
        conv = (xs, ws, s, p)

        def forward(r, d, conv=conv, pool=(pk, ps, pp), bias=True):
            xs, ws, s, p = conv
            b = _normal(r, ws[0], d) - 1.0 if bias else None  # a negative bias: many zero windows
            return (_normal(r, xs, d), _normal(r, ws, d), b, s, p, *pool)

        def backward(r, d, forward=forward, need_gx=False):
            x, W, b, s, p, *pool = forward(r, np.float64)
            y, argmax = fused.conv2d_relu_max_pool2d_forward(x, W, b, s, p, *pool)
            gy = _normal(r, y.shape, d)
            return (gy, y.astype(d), argmax, x.astype(d), W.astype(d), s, p, *pool, need_gx)

        cases["conv2d_relu_max_pool2d_forward"].append((label, forward))
        cases[BWD].append((label, backward))
        cases[BWD].append((f"{label}_gx", lambda r, d, f=backward: f(r, d, need_gx=True)))
    cases["conv2d_relu_max_pool2d_forward"].append(
        (
            "no_bias",
            lambda r, d: (
                _normal(r, (2, 3, 9, 8), d),
                _normal(r, (4, 3, 3, 3), d),
                None,
                (1, 1),
                (0, 0),
                (2, 2),
                (2, 2),
                (0, 0),
            ),
        )
    )
    return cases


CASES: dict[str, list] = {
    **_conv_cases(),
    **_fused_cases(),
    **_pool_cases(),
    **_elementwise_cases(),
    **_optim_cases(),
}
missing = sorted(set(KERNEL_NAMES) - set(CASES))
assert not missing, f"kernels without parity cases: {missing}"  # a new kernel needs cases here


def flavours_under_test() -> list[str]:
    """Every available "device:flavour" except the reference cpu:numpy, e.g. ["cpu:numba"]."""
    return [name for name in backend.available() if name != "cpu:numpy"]


def kernels_of(name: str):
    """The kernel namespace of a "device:flavour" name (as listed by backend.available())."""
    device, flavour = name.split(":")
    with backend.use_kernels(flavour):
        return backend.backend_for(device).k
