"""Shape ops, reductions and matrix products: gradient checks and argument errors."""

from __future__ import annotations

import numpy as np
import pytest

import engine.functional as F
from engine.gradcheck import check_grad
from engine.tensor import Tensor
from tests.conftest import TOL


@pytest.mark.parametrize(
    "fn",
    [
        lambda x: x.reshape(6, 4),
        lambda x: x.transpose(2, 0, 1),
        lambda x: x.T,
        lambda x: x[1],
        lambda x: x[:, 1:3, ::2],
        lambda x: x[np.array([0, 0, 1])],  # repeated fancy index: gradients add up
        lambda x: F.flatten(x),
        lambda x: x.sum(),
        lambda x: x.sum(axis=1),
        lambda x: x.sum(axis=(0, 2), keepdims=True),
        lambda x: x.mean(),
        lambda x: x.mean(axis=-1, keepdims=True),
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
    ],
)
def test_shape_and_reduce_grad(rng, fn):
    check_grad(fn, [rng.standard_normal((2, 3, 4))], **TOL["gradcheck"])


@pytest.mark.parametrize(
    "a_shape,b_shape", [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((2, 3, 4), (2, 4, 2))]
)
def test_matmul_grad(rng, a_shape, b_shape):
    check_grad(
        lambda a, b: a @ b,
        [rng.standard_normal(a_shape), rng.standard_normal(b_shape)],
        **TOL["gradcheck"],
    )


def test_linear_grad_and_value(rng):
    x, W, b = rng.standard_normal((5, 4)), rng.standard_normal((3, 4)), rng.standard_normal(3)
    np.testing.assert_allclose(F.linear(x, W, b).data, x @ W.T + b, rtol=1e-12)
    check_grad(F.linear, [x, W, b], **TOL["gradcheck"])
    check_grad(F.linear, [x, W], **TOL["gradcheck"])


def test_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 5\)"):
        F.matmul(np.zeros((2, 3)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="linear"):
        F.linear(np.zeros((2, 3)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="permutation"):
        Tensor(np.zeros((2, 3))).transpose(0, 0)
    with pytest.raises(ValueError, match="axis"):
        Tensor(np.zeros((2, 3))).sum(axis=5)
