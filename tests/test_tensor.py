"""Tensor and the backward walk: accumulation, broadcasting, no_grad, deep graphs, errors."""

from __future__ import annotations

import numpy as np
import pytest

import engine.functional as F
from engine import Tensor, no_grad


def test_properties_and_conversions():
    x = Tensor(np.arange(6, dtype=np.float32).reshape(2, 3), requires_grad=True)
    assert (
        x.shape == (2, 3) and x.dtype == np.float32 and x.ndim == 2 and x.size == 6 and len(x) == 2
    )
    assert x.device == "cpu"
    assert isinstance(x.numpy(), np.ndarray)
    assert x.sum().item() == 15.0
    with pytest.raises(ValueError, match="one element"):
        x.item()


def test_grad_shape_and_dtype_follow_data(rng):
    x = Tensor(rng.standard_normal((3, 1)).astype(np.float32), requires_grad=True)
    b = Tensor(rng.standard_normal(4).astype(np.float32), requires_grad=True)
    (x * b + b).sum().backward()
    assert x.grad.shape == (3, 1) and b.grad.shape == (4,)
    assert x.grad.dtype == np.float32 and b.grad.dtype == np.float32
    np.testing.assert_allclose(x.grad[:, 0], np.full(3, b.data.sum()), rtol=1e-6)
    np.testing.assert_allclose(b.grad, np.full(4, x.data.sum() + 3), rtol=1e-6)


def test_gradients_accumulate_until_zeroed():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    (x * 3).sum().backward()
    (x * 3).sum().backward()
    np.testing.assert_array_equal(x.grad, [6.0, 6.0])
    x.zero_grad()
    (x * x).sum().backward()
    np.testing.assert_array_equal(x.grad, [2.0, 4.0])


def test_shared_subexpression_gets_both_paths():
    x = Tensor(np.array(3.0), requires_grad=True)
    y = x * x  # used twice below
    z = y * y + y  # z = x^4 + x^2, dz/dx = 4x^3 + 2x = 114
    z.backward()
    assert x.grad == pytest.approx(114.0)


def test_deep_graph_has_no_recursion_limit():
    x = Tensor(np.array(1.0), requires_grad=True)
    y = x
    for _ in range(20000):
        y = y + 1e-3
    y.backward()
    assert x.grad == 1.0


def test_no_grad_builds_no_graph():
    x = Tensor(np.ones(3), requires_grad=True)
    with no_grad():
        y = (x * 2).sum()
    assert y.creator is None and not y.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward()


def test_retain_grad_keeps_intermediate_gradients():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    h = x * 2
    (h * h).sum().backward(retain_grad=True)
    np.testing.assert_array_equal(h.grad, 2 * h.data)
    h2 = x * 2
    (h2 * h2).sum().backward()
    assert h2.grad is None


def test_backward_argument_checks():
    x = Tensor(np.ones((2, 2)), requires_grad=True)
    with pytest.raises(RuntimeError, match="one element"):
        (x * 2).backward()
    with pytest.raises(ValueError, match="shape"):
        (x * 2).backward(np.ones(3))
    with pytest.raises(TypeError, match="floating"):
        Tensor(np.array([1, 2]), requires_grad=True)


def test_ndarray_on_the_left_dispatches_to_tensor():
    x = Tensor(np.ones(2), requires_grad=True)
    y = np.array([2.0, 3.0]) * x
    assert isinstance(y, Tensor)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [2.0, 3.0])


def test_unused_output_of_a_graph_branch_is_fine():
    x = Tensor(np.array([0.5, -0.5]), requires_grad=True)
    F.relu(x)  # dropped at once
    (F.sigmoid(x) * 2).sum().backward()
    s = 1 / (1 + np.exp(-x.data))
    np.testing.assert_allclose(x.grad, 2 * s * (1 - s))
