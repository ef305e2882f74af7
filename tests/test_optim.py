"""Optimizers: update rules against PyTorch's documented algorithms, written out here in NumPy,
and against torch.optim itself when PyTorch is installed (marked `oracle`)."""

from __future__ import annotations

import numpy as np
import pytest

from engine import Tensor, optim
from engine.nn import Parameter


def grads_sequence(rng, shape, steps=5):
    return [rng.standard_normal(shape) for _ in range(steps)]


def reference_sgd(p, grads, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    """torch.optim.SGD's documented algorithm (dampening 0)."""
    p, b = p.copy(), None
    for g in grads:
        g = g + weight_decay * p
        if momentum:
            b = g.copy() if b is None else momentum * b + g
            g = g + momentum * b if nesterov else b
        p = p - lr * g
    return p


def reference_adam(p, grads, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
    """torch.optim.Adam's documented algorithm (amsgrad off)."""
    p, m, v = p.copy(), np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        g = g + weight_decay * p
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        m_hat, v_hat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


def run(opt_cls, p0, grads, **kwargs):
    p = Parameter(p0.copy())
    opt = opt_cls([p], **kwargs)
    for g in grads:
        p.grad = g
        opt.step()
    return p.data


SGD_CASES = [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.05, momentum=0.8, nesterov=True),
    dict(lr=0.1, momentum=0.9, weight_decay=0.01),
]
ADAM_CASES = [
    dict(lr=1e-2),
    dict(lr=1e-3, betas=(0.8, 0.99), eps=1e-6),
    dict(lr=1e-2, weight_decay=0.1),
]


@pytest.mark.parametrize("kwargs", SGD_CASES)
def test_sgd_matches_pytorch_algorithm(rng, flavour, kwargs):
    p0, grads = rng.standard_normal((3, 4)), grads_sequence(rng, (3, 4))
    np.testing.assert_allclose(
        run(optim.SGD, p0, grads, **kwargs), reference_sgd(p0, grads, **kwargs), rtol=1e-12
    )


@pytest.mark.parametrize("kwargs", ADAM_CASES)
def test_adam_matches_pytorch_algorithm(rng, flavour, kwargs):
    p0, grads = rng.standard_normal((3, 4)), grads_sequence(rng, (3, 4))
    np.testing.assert_allclose(
        run(optim.Adam, p0, grads, **kwargs), reference_adam(p0, grads, **kwargs), rtol=1e-10
    )


def test_gd_is_plain_gradient_descent(rng, flavour):
    p0, grads = rng.standard_normal(5), grads_sequence(rng, 5, steps=3)
    np.testing.assert_allclose(run(optim.GD, p0, grads, lr=0.3), p0 - 0.3 * sum(grads), rtol=1e-12)


def test_step_skips_params_without_grad_and_builds_no_graph():
    a, b = Parameter(np.ones(2)), Parameter(np.ones(2))
    opt = optim.Adam([a, b], lr=0.1)
    a.grad = np.ones(2)
    opt.step()
    assert (a.data < 1).all() and (b.data == 1).all()
    assert a.creator is None


def test_float32_params_stay_float32(rng):
    p = Parameter(rng.standard_normal(4).astype(np.float32))
    for cls, kw in ((optim.SGD, dict(lr=0.1, momentum=0.9)), (optim.Adam, dict(lr=0.1))):
        p.grad = np.ones(4, dtype=np.float32)
        cls([p], **kw).step()
        assert p.dtype == np.float32


def test_state_dict_round_trip_continues_identically(rng):
    p0, grads = rng.standard_normal(4), grads_sequence(rng, 4, steps=6)
    straight = run(optim.Adam, p0, grads, lr=1e-2)
    p = Parameter(p0.copy())
    opt = optim.Adam([p], lr=1e-2)
    for g in grads[:3]:
        p.grad = g
        opt.step()
    state = opt.state_dict()
    resumed = optim.Adam([p], lr=5.0)  # lr comes back from the state
    resumed.load_state_dict(state)
    for g in grads[3:]:
        p.grad = g
        resumed.step()
    np.testing.assert_array_equal(p.data, straight)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(lr=0), "learning rate"),
        (dict(lr=0.1, momentum=-1), "momentum"),
        (dict(lr=0.1, nesterov=True), "Nesterov"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        optim.SGD([Parameter(np.ones(1))], **kwargs)
    with pytest.raises(ValueError, match="empty"):
        optim.Adam([], lr=0.1)


@pytest.mark.oracle
def test_against_torch_optim(rng):
    torch = pytest.importorskip("torch")
    p0, grads = rng.standard_normal((3, 4)), grads_sequence(rng, (3, 4))
    for ours, theirs, kw in (
        (optim.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
        (optim.Adam, torch.optim.Adam, dict(lr=1e-2, weight_decay=0.1)),
    ):
        tp = torch.tensor(p0.copy(), requires_grad=True)
        topt = theirs([tp], **kw)
        for g in grads:
            tp.grad = torch.tensor(g)
            topt.step()
        np.testing.assert_allclose(run(ours, p0, grads, **kw), tp.detach().numpy(), rtol=1e-10)
    assert isinstance(Tensor(p0), Tensor)
