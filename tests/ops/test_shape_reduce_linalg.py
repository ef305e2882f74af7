"""Shape ops, reductions and matrix products: gradient checks and argument errors."""

from __future__ import annotations

import numpy as np
import pytest

import engine.functional as F
from engine.gradcheck import check_grad
from engine.tensor import Tensor
from tests.conftest import TOL
from tests.helpers import on_device, to_host


@pytest.mark.parametrize(
    "fn",
    [
        lambda x: x.reshape(6, 4),
        lambda x: x.transpose(2, 0, 1),
        lambda x: x.T,
        lambda x: x[1],
        lambda x: x[:, 1:3, ::2],
        # repeated fancy index: gradients add up; the index array lives on x's device
        lambda x: x[on_device(np.array([0, 0, 1]), x.device)],
        lambda x: F.flatten(x),
        lambda x: x.sum(),
        lambda x: x.sum(axis=1),
        lambda x: x.sum(axis=(0, 2), keepdims=True),
        lambda x: x.mean(),
        lambda x: x.mean(axis=-1, keepdims=True),
        lambda x: x.mean(axis=(0, 1)),
    ],
    ids=[
        "reshape",
        "transpose",
        "T",
        "index",
        "slice",
        "fancy",
        "flatten",
        "sum",
        "sum_axis",
        "sum_keepdims",
        "mean",
        "mean_axis",
        "mean_axes",
    ],
)
def test_shape_and_reduce_grad(backend, rng, fn):
    check_grad(fn, [rng.standard_normal((2, 3, 4))], device=backend.device, **TOL["gradcheck"])


@pytest.mark.parametrize(
    "a_shape,b_shape", [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((2, 3, 4), (2, 4, 2))]
)
def test_matmul_grad(backend, rng, a_shape, b_shape):
    check_grad(
        lambda a, b: a @ b,
        [rng.standard_normal(a_shape), rng.standard_normal(b_shape)],
        device=backend.device,
        **TOL["gradcheck"],
    )


def test_linear_grad_and_value(backend, rng):
    x, W, b = rng.standard_normal((5, 4)), rng.standard_normal((3, 4)), rng.standard_normal(3)
    y = F.linear(*(on_device(a, backend.device) for a in (x, W, b)))
    np.testing.assert_allclose(to_host(y), x @ W.T + b, rtol=1e-12)
    check_grad(F.linear, [x, W, b], device=backend.device, **TOL["gradcheck"])
    check_grad(F.linear, [x, W], device=backend.device, **TOL["gradcheck"])


def test_shape_errors_name_the_shapes(backend):
    a, b = (on_device(np.zeros(shape), backend.device) for shape in ((2, 3), (4, 5)))
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 5\)"):
        F.matmul(a, b)
    with pytest.raises(ValueError, match="linear"):
        F.linear(a, b)
    with pytest.raises(ValueError, match="permutation"):
        Tensor(a).transpose(0, 0)
    with pytest.raises(ValueError, match="axis"):
        Tensor(a).sum(axis=5)
