"""Leaky ReLU, GELU and softmax over a volume's channel axis: float64 gradient checks on every
backend, forward against hand formulas, and torch as an `oracle`."""

from __future__ import annotations

import math

import numpy as np
import pytest

import engine.functional as F
from engine.gradcheck import check_grad
from engine.tensor import Tensor
from tests.conftest import TOL
from tests.helpers import away_from_zero, on_device, to_host


@pytest.mark.parametrize("slope", [0.01, 0.2, -0.5])
def test_leaky_relu_grad_and_forward(backend, rng, slope):
    x = away_from_zero(rng, (2, 3, 4))
    check_grad(lambda x: F.leaky_relu(x, slope), [x], device=backend.device, **TOL["gradcheck"])
    y = F.leaky_relu(on_device(x, backend.device), slope)
    np.testing.assert_allclose(to_host(y), np.where(x > 0, x, slope * x), **TOL["loops64"])


def test_leaky_relu_gradient_at_zero_is_the_slope(backend):
    x = Tensor(on_device(np.array([-1.0, 0.0, 2.0]), backend.device), requires_grad=True)
    F.leaky_relu(x, 0.1).backward(on_device(np.ones(3), backend.device))
    np.testing.assert_array_equal(to_host(x.grad), [0.1, 0.1, 1.0])


def test_gelu_grad_and_forward(backend, rng):
    x = rng.standard_normal((3, 4, 5)) * 2
    check_grad(F.gelu, [x], device=backend.device, **TOL["gradcheck"])
    y = F.gelu(on_device(x, backend.device))
    expected = [v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x.ravel()]
    np.testing.assert_allclose(to_host(y).ravel(), expected, **TOL["loops64"])


def test_activations_keep_float32(backend, rng):
    x = on_device(rng.standard_normal((2, 5)).astype(np.float32), backend.device)
    assert F.gelu(x).dtype == np.float32 and F.leaky_relu(x).dtype == np.float32


def test_softmax_over_the_channel_axis_of_a_volume(backend, rng):
    """Segmentation: class probabilities per voxel, softmax over axis 1 of (n, k, d, h, w)."""
    x = rng.standard_normal((2, 3, 2, 3, 4))
    check_grad(lambda x: F.softmax(x, axis=1), [x], device=backend.device, **TOL["gradcheck"])
    y = to_host(F.softmax(on_device(x, backend.device), axis=1))
    e = np.exp(x)
    np.testing.assert_allclose(y, e / e.sum(axis=1, keepdims=True), **TOL["loops64"])
    np.testing.assert_allclose(y.sum(axis=1), 1.0, **TOL["loops64"])


@pytest.mark.oracle
@pytest.mark.parametrize("name", ["leaky_relu", "gelu", "softmax_ncdhw"])
def test_activation_matches_torch(backend, rng, name):
    torch = pytest.importorskip("torch")
    ours, theirs = {
        "leaky_relu": (
            lambda x: F.leaky_relu(x, 0.05),
            lambda x: torch.nn.functional.leaky_relu(x, 0.05),
        ),
        "gelu": (F.gelu, torch.nn.functional.gelu),
        "softmax_ncdhw": (lambda x: F.softmax(x, axis=1), lambda x: torch.softmax(x, dim=1)),
    }[name]
    x, gy = rng.standard_normal((2, 3, 2, 3, 4)) * 2, rng.standard_normal((2, 3, 2, 3, 4))
    tx = torch.tensor(x, requires_grad=True)
    theirs(tx).backward(torch.tensor(gy))
    xt = Tensor(on_device(x, backend.device), requires_grad=True)
    y = ours(xt)
    y.backward(on_device(gy, backend.device))
    np.testing.assert_allclose(to_host(y), theirs(torch.tensor(x)).numpy(), **TOL["loops64"])
    np.testing.assert_allclose(to_host(xt.grad), tx.grad.numpy(), **TOL["loops64"])
