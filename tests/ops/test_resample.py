"""F.interpolate: a naive-loop oracle (each output point from its source coordinates), gradient
checks, bad arguments, and PyTorch as an oracle (forward and backward, float64)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

import engine.functional as F
from engine.errors import ArgumentError
from engine.gradcheck import check_grad
from tests.conftest import TOL, cpu_only
from tests.helpers import on_device
from tests.ops.test_pool3d import torch_pair

CASES = [  # x shape, size, scale_factor, mode, align_corners
    ((2, 2, 4, 5), None, 2.0, "nearest", False),  # up, integer scale (o // 2)
    ((1, 2, 7, 6), (3, 4), None, "nearest", False),  # down
    ((2, 1, 5, 4), None, (1.7, 2.3), "nearest", False),  # non-integer scales
    ((2, 2, 4, 5), (7, 9), None, "bilinear", False),
    ((1, 2, 4, 5), None, (1.5, 0.6), "bilinear", True),  # up along h, down along w
    ((2, 1, 7, 6), (3, 4), None, "bilinear", False),
    ((1, 2, 6, 5), None, (0.7, 1.3), "bilinear", False),
    ((1, 1, 1, 4), (3, 6), None, "bilinear", True),  # a single input row
    ((1, 2, 3, 4, 3), None, 2.0, "nearest", False),
    ((2, 1, 4, 3, 5), (2, 5, 3), None, "nearest", False),
    ((1, 2, 3, 4, 3), (5, 6, 4), None, "trilinear", False),
    ((1, 1, 4, 3, 5), None, (1.5, 2.0, 0.6), "trilinear", True),
    ((2, 1, 5, 4, 3), (3, 2, 7), None, "trilinear", True),
    ((1, 2, 3, 4, 5), None, (1.2, 1.0, 0.7), "trilinear", False),  # depth 3 -> 3: copied
]
IDS = [
    f"{mode}-{len(shape)}d-{size or scale}-ac{int(ac)}" for shape, size, scale, mode, ac in CASES
]


def taps(o: int, n_in: int, n_out: int, mode: str, align: bool, scale) -> list:
    """[(input index, weight)] of output index o along one axis, by PyTorch's rules."""
    if n_out == n_in:
        return [(o, 1.0)]
    if mode == "nearest":
        if n_out == 2 * n_in:
            return [(o // 2, 1.0)]
        r = 1 / scale if scale else n_in / n_out
        return [(min(math.floor(o * r), n_in - 1), 1.0)]
    if align:
        src = o * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    else:
        r = 1 / scale if scale else n_in / n_out
        src = max((o + 0.5) * r - 0.5, 0.0)
    i0 = min(math.floor(src), n_in - 1)
    return [(i0, 1 - (src - i0)), (min(i0 + 1, n_in - 1), src - i0)]


def interpolate_loops(x, size, scale_factor, mode, align):
    """Every output point as the weighted sum over its 2^axes (linear) or 1 (nearest) sources."""
    spatial = x.shape[2:]
    if size is not None:
        out = (size,) * len(spatial) if isinstance(size, int) else size
        scales = (None,) * len(spatial)
    else:
        scales = scale_factor if isinstance(scale_factor, tuple) else (scale_factor,) * len(spatial)
        out = tuple(math.floor(n * s) for n, s in zip(spatial, scales, strict=True))
    y = np.zeros((*x.shape[:2], *out))
    for idx in itertools.product(*(range(o) for o in out)):
        per_axis = [
            taps(o, n, m, mode, align, s)
            for o, n, m, s in zip(idx, spatial, out, scales, strict=True)
        ]
        for corner in itertools.product(*per_axis):
            src = tuple(i for i, _ in corner)
            y[(..., *idx)] += math.prod(w for _, w in corner) * x[(..., *src)]
    return y


@pytest.mark.parametrize("x_shape,size,scale_factor,mode,align", CASES, ids=IDS)
def test_interpolate_forward_matches_loops(backend, rng, x_shape, size, scale_factor, mode, align):
    x = rng.standard_normal(x_shape)
    y = F.interpolate(on_device(x, backend.device), size, scale_factor, mode, align)
    expected = interpolate_loops(x, size, scale_factor, mode, align)
    np.testing.assert_allclose(y.numpy(), expected, **TOL["loops64"])


@pytest.mark.parametrize("x_shape,size,scale_factor,mode,align", CASES, ids=IDS)
def test_interpolate_grad(backend, rng, x_shape, size, scale_factor, mode, align):
    check_grad(
        lambda x: F.interpolate(x, size, scale_factor, mode, align),
        [rng.standard_normal(x_shape)],
        device=backend.device,
        **TOL["gradcheck"],
    )


def test_interpolate_nearest_upsampling_repeats(backend, rng):
    x = rng.standard_normal((1, 2, 3, 4, 2))
    y = F.interpolate(on_device(x, backend.device), scale_factor=(1, 2, 3)).numpy()
    np.testing.assert_array_equal(y, x.repeat(2, axis=3).repeat(3, axis=4))


@pytest.mark.parametrize(
    "x_shape,kwargs,match",
    [
        ((1, 1, 4, 4), {"size": 8, "scale_factor": 2.0}, "exactly one of size and scale_factor"),
        ((1, 1, 4, 4), {}, "exactly one of size and scale_factor"),
        ((1, 1, 4, 4, 4), {"size": 8, "mode": "bilinear"}, "'bilinear' needs x 4-D"),
        ((1, 1, 4, 4), {"size": 8, "mode": "trilinear"}, "'trilinear' needs x 5-D"),
        ((1, 4, 4), {"size": 8}, "'nearest' needs x 4-D or 5-D"),
        ((1, 1, 4, 4), {"size": 8, "mode": "bicubic"}, "mode must be one of"),
        ((1, 1, 4, 4), {"size": 8, "align_corners": True}, "align_corners is for the linear"),
        ((1, 1, 4, 4), {"size": (8, 8, 8)}, "size must be an int or 2 of them"),
        ((1, 1, 4, 4), {"size": 2.5}, "size must be an int"),
        ((1, 1, 4, 4), {"scale_factor": "2"}, "scale_factor must be a number or 2 of them"),
        ((1, 1, 4, 4), {"scale_factor": (2.0, -1.0)}, "scale_factor must be > 0"),
        ((1, 1, 4, 4), {"scale_factor": 0.1}, "output size .* is empty"),
    ],
)
def test_interpolate_bad_arguments(backend, x_shape, kwargs, match):
    with pytest.raises(ArgumentError, match=match):
        F.interpolate(on_device(np.zeros(x_shape), backend.device), **kwargs)


@pytest.mark.oracle
@pytest.mark.parametrize("x_shape,size,scale_factor,mode,align", CASES, ids=IDS)
def test_interpolate_against_torch(backend, rng, x_shape, size, scale_factor, mode, align):
    torch = pytest.importorskip("torch")
    theirs = dict(size=size, scale_factor=scale_factor, mode=mode)
    theirs["align_corners"] = None if mode == "nearest" else align
    for got, expected in torch_pair(
        torch,
        lambda t: F.interpolate(t, size, scale_factor, mode, align),
        lambda t: torch.nn.functional.interpolate(t, **theirs),
        rng.standard_normal(x_shape),
        backend.device,
        rng,
    ):
        np.testing.assert_allclose(got, expected, **TOL["loops64"])


@pytest.mark.oracle
@cpu_only("the index tables are computed on the host, the same for every device")
def test_interpolate_nearest_picks_torchs_inputs_in_float32():
    """PyTorch computes nearest's source index in float32 (floorf(o * scale)); a float64 rule
    would pick a different input for some size pairs. Every pair of lengths up to 24 x 48, and
    non-integer scale factors, pick exactly PyTorch's inputs."""
    torch = pytest.importorskip("torch")
    for n in range(1, 25):
        x = np.arange(1, n + 1, dtype=np.float32).reshape(1, 1, 1, n)
        tx = torch.tensor(x)
        for kw in [*({"size": (1, m)} for m in range(1, 49)), {"scale_factor": (1.0, 2.3)}]:
            expected = torch.nn.functional.interpolate(tx, **kw).numpy()
            np.testing.assert_array_equal(F.interpolate(x, **kw).numpy(), expected, err_msg=kw)
