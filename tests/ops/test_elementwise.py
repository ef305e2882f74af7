"""Elementwise ops and activations: gradient checks with broadcasting, dtype rules, dropout."""

from __future__ import annotations

import numpy as np
import pytest

import engine.functional as F
from engine.gradcheck import check_grad
from engine.tensor import Tensor
from tests.conftest import TOL
from tests.helpers import away_from_zero, on_device, to_host

BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "pow": lambda a, b: a**b,
    "matmul_free_mix": lambda a, b: (a * b - a / b) ** 2,
}
SHAPES = [((3, 4), (3, 4)), ((2, 3, 4), (4,)), ((3, 1), (1, 4)), ((4,), (2, 3, 4))]


@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize("a_shape,b_shape", SHAPES)
def test_binary_grad_with_broadcasting(backend, rng, name, a_shape, b_shape):
    a = rng.uniform(0.5, 2.0, a_shape)  # positive: pow's d/db needs log(a)
    b = rng.uniform(0.5, 2.0, b_shape)
    check_grad(BINARY[name], [a, b], device=backend.device, **TOL["gradcheck"])


@pytest.mark.parametrize(
    "fn,make",
    [
        (lambda x: -x, lambda r: r.standard_normal((3, 4))),
        (lambda x: x**3, lambda r: r.standard_normal((3, 4))),
        (lambda x: 2.0 / x - 1.5 * x + 3, lambda r: r.uniform(0.5, 2, (3, 4))),
        (F.exp, lambda r: r.standard_normal((3, 4))),
        (F.log, lambda r: r.uniform(0.5, 2, (3, 4))),
        (F.relu, lambda r: away_from_zero(r, (2, 3, 4))),
        (F.sigmoid, lambda r: r.standard_normal((3, 4)) * 3),
        (F.tanh, lambda r: r.standard_normal((3, 4))),
    ],
    ids=["neg", "pow_scalar", "scalar_mix", "exp", "log", "relu", "sigmoid", "tanh"],
)
def test_unary_grad(backend, rng, fn, make):
    check_grad(fn, [make(rng)], device=backend.device, **TOL["gradcheck"])


def test_sigmoid_is_stable_for_huge_inputs(backend):
    y = F.sigmoid(on_device(np.array([-1e4, -50.0, 0.0, 50.0, 1e4]), backend.device))
    np.testing.assert_allclose(y.numpy(), [0.0, 1.9287498479639178e-22, 0.5, 1.0, 1.0], rtol=1e-12)


def test_dropout_grad_and_scaling(backend, rng):
    mask_rng = np.random.default_rng(3)
    check_grad(
        lambda x: F.dropout(x, 0.3, True, np.random.default_rng(3)),
        [rng.standard_normal((4, 5))],
        device=backend.device,
        **TOL["gradcheck"],
    )
    y = F.dropout(on_device(np.ones((200, 200)), backend.device), 0.25, True, mask_rng).numpy()
    assert set(np.unique(y)) == {0.0, 1 / 0.75}
    assert abs((y == 0).mean() - 0.25) < 0.01


def test_dropout_is_identity_in_eval(backend):
    x = Tensor(on_device(np.ones((3, 3)), backend.device))
    assert F.dropout(x, 0.5, training=False) is x
    with pytest.raises(ValueError, match="rng"):
        F.dropout(x, 0.5, training=True)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        F.dropout(x, 1.0, training=True, rng=np.random.default_rng(0))


def test_scalars_keep_the_tensor_dtype(backend):
    x = Tensor(on_device(np.ones(3, dtype=np.float32), backend.device), requires_grad=True)
    for y in (x * 2.0, 2.0 * x, x + 1, 1 - x, x / 3.0, 3.0 / x, x**2, -x):
        assert y.dtype == np.float32
    (x * 2.0).sum().backward()
    assert x.grad.dtype == np.float32


def test_cast_grad_goes_back_to_input_dtype(backend, rng):
    x = rng.standard_normal(4).astype(np.float32)
    xt = Tensor(on_device(x, backend.device), requires_grad=True)
    y = F.cast(xt, np.float64)
    assert y.dtype == np.float64
    (y * y).sum().backward()
    assert xt.grad.dtype == np.float32
    np.testing.assert_allclose(to_host(xt.grad), 2 * x, rtol=1e-6)
