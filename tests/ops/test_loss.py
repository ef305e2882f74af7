"""Softmax, log-softmax and the losses: gradient checks, extreme logits, float32 MSE accuracy."""

from __future__ import annotations

import numpy as np
import pytest

import engine.functional as F
from engine.gradcheck import check_grad
from engine.tensor import Tensor
from tests.conftest import TOL, cpu_only
from tests.helpers import on_device, to_host


@pytest.mark.parametrize("axis", [-1, 0])
def test_softmax_and_log_softmax_grad(backend, rng, axis):
    x = rng.standard_normal((3, 5))
    check_grad(lambda x: F.softmax(x, axis), [x], device=backend.device, **TOL["gradcheck"])
    check_grad(lambda x: F.log_softmax(x, axis), [x], device=backend.device, **TOL["gradcheck"])
    y = F.softmax(on_device(x, backend.device), axis).numpy()
    np.testing.assert_allclose(y.sum(axis=axis), 1.0, rtol=1e-12)


def test_losses_grad(backend, rng):
    tol = dict(device=backend.device, **TOL["gradcheck"])
    y, t = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    check_grad(F.mse_loss, [y, t], **tol)  # both sides differentiable
    labels = on_device(np.array([0, 2, 1, 2]), backend.device)
    check_grad(lambda z: F.softmax_cross_entropy(z, labels), [rng.standard_normal((4, 3))], **tol)
    targets = on_device(rng.integers(0, 2, (4, 3)).astype(np.float64), backend.device)
    check_grad(lambda p: F.binary_cross_entropy(p, targets), [rng.uniform(0.1, 0.9, (4, 3))], **tol)
    check_grad(
        lambda z: F.binary_cross_entropy_with_logits(z, targets),
        [rng.standard_normal((4, 3)) * 3],
        **tol,
    )


def test_softmax_cross_entropy_value(backend, rng):
    z, t = rng.standard_normal((6, 4)), rng.integers(0, 4, 6)
    expected = np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(6), t])
    loss = F.softmax_cross_entropy(on_device(z, backend.device), on_device(t, backend.device))
    np.testing.assert_allclose(loss.item(), expected, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_cross_entropy_huge_logits(backend, dtype):
    z = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 5.0]], dtype=dtype)
    z = Tensor(on_device(z, backend.device), requires_grad=True)
    loss = F.softmax_cross_entropy(z, on_device(np.array([0, 2]), backend.device))
    loss.backward()
    # row 0 is right with certainty (loss 0); row 1 misses by 1e4 - 5
    np.testing.assert_allclose(loss.item(), (1e4 - 5) / 2, rtol=1e-6)
    expected = np.array([[0, 0, 0], [0, 1, -1]]) / 2
    gz = to_host(z.grad)
    assert np.isfinite(gz).all()
    np.testing.assert_allclose(gz, expected, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bce_with_logits_huge_logits(backend, dtype):
    z = np.array([1e4, -1e4, 1e4, -1e4], dtype=dtype)
    z = Tensor(on_device(z, backend.device), requires_grad=True)
    t = on_device(np.array([1.0, 0.0, 0.0, 1.0], dtype=dtype), backend.device)
    loss = F.binary_cross_entropy_with_logits(z, t)
    loss.backward()
    np.testing.assert_allclose(loss.item(), 2e4 / 4, rtol=1e-6)  # two certain hits, two 1e4 misses
    np.testing.assert_allclose(to_host(z.grad), np.array([0, 0, 1, -1]) / 4, atol=1e-7)


def test_bce_matches_logits_version_and_clamps(backend, rng):
    z, t = rng.standard_normal(10), rng.integers(0, 2, 10).astype(np.float64)
    p = 1 / (1 + np.exp(-z))
    z, t, p = (on_device(a, backend.device) for a in (z, t, p))
    np.testing.assert_allclose(
        F.binary_cross_entropy(p, t).item(),
        F.binary_cross_entropy_with_logits(z, t).item(),
        rtol=1e-10,
    )
    p, t = (on_device(np.array(a), backend.device) for a in ([0.0, 1.0], [1.0, 0.0]))
    assert F.binary_cross_entropy(p, t).item() == 100.0  # log clamped at -100, as in PyTorch


def test_mse_float32_large_values_match_float64(backend, rng):
    y = rng.integers(0, 65536, (64, 1, 28, 28)).astype(np.float32)
    t = rng.integers(0, 65536, (64, 1, 28, 28)).astype(np.float32)
    got = F.mse_loss(on_device(y, backend.device), on_device(t, backend.device))
    assert got.dtype == np.float32
    expected = np.mean((y.astype(np.float64) - t.astype(np.float64)) ** 2)
    np.testing.assert_allclose(float(got.item()), expected, rtol=1e-6)


def test_loss_argument_errors(backend):
    z = on_device(np.zeros((2, 3)), backend.device)
    with pytest.raises(ValueError, match="integer targets"):
        F.softmax_cross_entropy(z, on_device(np.array([0.0, 1.0]), backend.device))
    with pytest.raises(ValueError, match="shape"):
        F.mse_loss(z, on_device(np.zeros((3, 2)), backend.device))


@cpu_only("on cuda an invalid target gives a NaN loss instead (no device sync): test_gpu.py")
def test_softmax_cross_entropy_target_out_of_range_raises():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        F.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 3]))
