"""Softmax, log-softmax and the losses: gradient checks, extreme logits, float32 MSE accuracy."""

from __future__ import annotations

import numpy as np
import pytest

import engine.functional as F
from engine.gradcheck import check_grad
from engine.tensor import Tensor
from tests.conftest import TOL


@pytest.mark.parametrize("axis", [-1, 0])
def test_softmax_and_log_softmax_grad(rng, axis):
    x = rng.standard_normal((3, 5))
    check_grad(lambda x: F.softmax(x, axis), [x], **TOL["gradcheck"])
    check_grad(lambda x: F.log_softmax(x, axis), [x], **TOL["gradcheck"])
    np.testing.assert_allclose(F.softmax(x, axis).data.sum(axis=axis), 1.0, rtol=1e-12)


def test_losses_grad(rng):
    y, t = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    check_grad(F.mse_loss, [y, t], **TOL["gradcheck"])  # both sides differentiable
    labels = np.array([0, 2, 1, 2])
    check_grad(
        lambda z: F.softmax_cross_entropy(z, labels),
        [rng.standard_normal((4, 3))],
        **TOL["gradcheck"],
    )
    targets = rng.integers(0, 2, (4, 3)).astype(np.float64)
    check_grad(
        lambda p: F.binary_cross_entropy(p, targets),
        [rng.uniform(0.1, 0.9, (4, 3))],
        **TOL["gradcheck"],
    )
    check_grad(
        lambda z: F.binary_cross_entropy_with_logits(z, targets),
        [rng.standard_normal((4, 3)) * 3],
        **TOL["gradcheck"],
    )


def test_softmax_cross_entropy_value(rng):
    z, t = rng.standard_normal((6, 4)), rng.integers(0, 4, 6)
    expected = np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(6), t])
    np.testing.assert_allclose(F.softmax_cross_entropy(z, t).item(), expected, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_cross_entropy_huge_logits(dtype):
    z = Tensor(np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 5.0]], dtype=dtype), requires_grad=True)
    loss = F.softmax_cross_entropy(z, np.array([0, 2]))
    loss.backward()
    # row 0 is right with certainty (loss 0); row 1 misses by 1e4 - 5
    np.testing.assert_allclose(loss.item(), (1e4 - 5) / 2, rtol=1e-6)
    expected = np.array([[0, 0, 0], [0, 1, -1]]) / 2
    assert np.isfinite(z.grad).all()
    np.testing.assert_allclose(z.grad, expected, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bce_with_logits_huge_logits(dtype):
    z = Tensor(np.array([1e4, -1e4, 1e4, -1e4], dtype=dtype), requires_grad=True)
    t = np.array([1.0, 0.0, 0.0, 1.0], dtype=dtype)
    loss = F.binary_cross_entropy_with_logits(z, t)
    loss.backward()
    np.testing.assert_allclose(
        loss.item(), 2e4 / 4, rtol=1e-6
    )  # two certain hits, two misses by 1e4
    np.testing.assert_allclose(z.grad, np.array([0, 0, 1, -1]) / 4, atol=1e-7)


def test_bce_matches_logits_version_and_clamps(rng):
    z, t = rng.standard_normal(10), rng.integers(0, 2, 10).astype(np.float64)
    p = 1 / (1 + np.exp(-z))
    np.testing.assert_allclose(
        F.binary_cross_entropy(p, t).item(),
        F.binary_cross_entropy_with_logits(z, t).item(),
        rtol=1e-10,
    )
    edge = F.binary_cross_entropy(np.array([0.0, 1.0]), np.array([1.0, 0.0]))
    assert edge.item() == 100.0  # log clamped at -100, as in PyTorch


def test_mse_float32_large_values_match_float64(rng):
    y = rng.integers(0, 65536, (64, 1, 28, 28)).astype(np.float32)
    t = rng.integers(0, 65536, (64, 1, 28, 28)).astype(np.float32)
    got = F.mse_loss(y, t)
    assert got.dtype == np.float32
    expected = np.mean((y.astype(np.float64) - t.astype(np.float64)) ** 2)
    np.testing.assert_allclose(float(got.item()), expected, rtol=1e-6)


def test_loss_argument_errors():
    with pytest.raises(ValueError, match="integer targets"):
        F.softmax_cross_entropy(np.zeros((2, 3)), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        F.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="shape"):
        F.mse_loss(np.zeros((2, 3)), np.zeros((3, 2)))
