"""Batch, instance, group and layer norm: float64 gradient checks on every backend, forward and
running statistics against hand computation, argument errors, and torch as an `oracle`."""

from __future__ import annotations

import numpy as np
import pytest

import engine.functional as F
from engine.errors import ArgumentError
from engine.gradcheck import check_grad
from engine.tensor import Tensor
from tests.conftest import TOL
from tests.helpers import on_device, to_host

SHAPES = [(4, 3), (3, 2, 5), (2, 3, 4, 5), (2, 2, 3, 2, 4)]  # (n,c), (n,c,l), NCHW, NCDHW


def _stats_axes(ndim):
    return (0, *range(2, ndim))


def _hand_batch_norm(x, mean, var, w, b, eps):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) * w.reshape(
        shape
    ) + b.reshape(shape)


@pytest.mark.parametrize("shape", SHAPES, ids=["nc", "ncl", "nchw", "ncdhw"])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_training_grad(backend, rng, shape, affine):
    c = shape[1]
    x = rng.standard_normal(shape) * 2 + 1
    if affine:
        w, b = rng.standard_normal(c), rng.standard_normal(c)
        fn = lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True)  # noqa: E731
        check_grad(fn, [x, w, b], device=backend.device, **TOL["gradcheck"])
    else:
        fn = lambda x: F.batch_norm(x, None, None, training=True)  # noqa: E731
        check_grad(fn, [x], device=backend.device, **TOL["gradcheck"])


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 4, 5)], ids=["nc", "nchw"])
def test_batch_norm_eval_grad_and_forward(backend, rng, shape):
    c = shape[1]
    x, w, b = rng.standard_normal(shape), rng.standard_normal(c), rng.standard_normal(c)
    rm, rv = rng.standard_normal(c), rng.uniform(0.5, 2, c)
    dev = backend.device
    rm_d, rv_d = on_device(rm.copy(), dev), on_device(rv.copy(), dev)
    fn = lambda x, w, b: F.batch_norm(x, rm_d, rv_d, w, b, training=False, eps=1e-3)  # noqa: E731
    check_grad(fn, [x, w, b], device=dev, **TOL["gradcheck"])
    y = F.batch_norm(on_device(x, dev), rm_d, rv_d, on_device(w, dev), on_device(b, dev), eps=1e-3)
    np.testing.assert_allclose(
        to_host(y), _hand_batch_norm(x, rm, rv, w, b, 1e-3), **TOL["loops64"]
    )
    np.testing.assert_array_equal(to_host(rm_d), rm)  # eval never updates the running stats


@pytest.mark.parametrize("shape", SHAPES, ids=["nc", "ncl", "nchw", "ncdhw"])
def test_batch_norm_running_statistics_by_hand(backend, rng, shape):
    """Two training steps: y uses the batch's biased variance; the running stats move by
    momentum towards the batch mean and the UNBIASED variance (N / (N - 1), N = n * spatial)."""
    c, dev = shape[1], backend.device
    rm, rv = np.zeros(c), np.ones(c)
    rm_d, rv_d = on_device(rm.copy(), dev), on_device(rv.copy(), dev)  # updated in place
    w, b = rng.standard_normal(c), rng.standard_normal(c)
    for step in range(2):
        x = rng.standard_normal(shape) * (step + 2) + step
        y = F.batch_norm(
            on_device(x, dev),
            rm_d,
            rv_d,
            on_device(w, dev),
            on_device(b, dev),
            training=True,
            momentum=0.3,
            eps=1e-4,
        )
        axes = _stats_axes(x.ndim)
        mean, var = x.mean(axis=axes), x.var(axis=axes)
        count = x.size // c
        np.testing.assert_allclose(
            to_host(y), _hand_batch_norm(x, mean, var, w, b, 1e-4), **TOL["loops64"]
        )
        rm = 0.7 * rm + 0.3 * mean
        rv = 0.7 * rv + 0.3 * var * count / (count - 1)
        np.testing.assert_allclose(to_host(rm_d), rm, **TOL["loops64"])
        np.testing.assert_allclose(to_host(rv_d), rv, **TOL["loops64"])


@pytest.mark.parametrize("shape", [(2, 3, 5), (2, 2, 3, 4), (1, 2, 2, 3, 3)])
def test_instance_norm_grad_and_forward(backend, rng, shape):
    c, dev = shape[1], backend.device
    x, w, b = rng.standard_normal(shape), rng.standard_normal(c), rng.standard_normal(c)
    check_grad(
        lambda x, w, b: F.instance_norm(x, weight=w, bias=b),
        [x, w, b],
        device=dev,
        **TOL["gradcheck"],
    )
    check_grad(F.instance_norm, [x], device=dev, **TOL["gradcheck"])
    axes = tuple(range(2, x.ndim))
    mean, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
    shape_c = (1, c) + (1,) * (x.ndim - 2)
    expected = (x - mean) / np.sqrt(var + 1e-5) * w.reshape(shape_c) + b.reshape(shape_c)
    y = F.instance_norm(on_device(x, dev), weight=on_device(w, dev), bias=on_device(b, dev))
    np.testing.assert_allclose(to_host(y), expected, **TOL["loops64"])


def test_instance_norm_running_statistics_by_hand(backend, rng):
    """Running stats: the batch mean of the per-instance means and unbiased variances."""
    dev, x = backend.device, rng.standard_normal((3, 2, 4, 5))
    rm, rv = on_device(np.zeros(2), dev), on_device(np.ones(2), dev)
    F.instance_norm(on_device(x, dev), rm, rv, momentum=0.2)
    per_mean = x.mean(axis=(2, 3))
    per_var = x.var(axis=(2, 3), ddof=1)
    np.testing.assert_allclose(to_host(rm), 0.2 * per_mean.mean(axis=0), **TOL["loops64"])
    np.testing.assert_allclose(to_host(rv), 0.8 + 0.2 * per_var.mean(axis=0), **TOL["loops64"])
    y = F.instance_norm(on_device(x, dev), rm, rv, use_input_stats=False)
    m, v = to_host(rm).reshape(1, 2, 1, 1), to_host(rv).reshape(1, 2, 1, 1)
    np.testing.assert_allclose(to_host(y), (x - m) / np.sqrt(v + 1e-5), **TOL["loops64"])


@pytest.mark.parametrize(
    "shape,groups", [((2, 4, 3), 2), ((2, 6, 3, 2), 3), ((1, 4, 2, 2, 3), 4), ((3, 4), 1)]
)
def test_group_norm_grad_and_forward(backend, rng, shape, groups):
    c, dev = shape[1], backend.device
    x, w, b = rng.standard_normal(shape), rng.standard_normal(c), rng.standard_normal(c)
    check_grad(
        lambda x, w, b: F.group_norm(x, groups, w, b), [x, w, b], device=dev, **TOL["gradcheck"]
    )
    check_grad(lambda x: F.group_norm(x, groups), [x], device=dev, **TOL["gradcheck"])
    xg = x.reshape(shape[0], groups, -1)
    xhat = (xg - xg.mean(axis=2, keepdims=True)) / np.sqrt(xg.var(axis=2, keepdims=True) + 1e-5)
    shape_c = (1, c) + (1,) * (x.ndim - 2)
    expected = xhat.reshape(shape) * w.reshape(shape_c) + b.reshape(shape_c)
    y = F.group_norm(on_device(x, dev), groups, on_device(w, dev), on_device(b, dev))
    np.testing.assert_allclose(to_host(y), expected, **TOL["loops64"])


@pytest.mark.parametrize(
    "shape,normalized", [((3, 5), 5), ((2, 3, 4), (3, 4)), ((2, 2, 3, 4), (4,))]
)
def test_layer_norm_grad_and_forward(backend, rng, shape, normalized):
    dev = backend.device
    ns = (normalized,) if isinstance(normalized, int) else normalized
    x, w, b = rng.standard_normal(shape), rng.standard_normal(ns), rng.standard_normal(ns)
    check_grad(
        lambda x, w, b: F.layer_norm(x, normalized, w, b), [x, w, b], device=dev, **TOL["gradcheck"]
    )
    check_grad(lambda x: F.layer_norm(x, normalized), [x], device=dev, **TOL["gradcheck"])
    axes = tuple(range(x.ndim - len(ns), x.ndim))
    mean, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
    y = F.layer_norm(on_device(x, dev), normalized, on_device(w, dev), on_device(b, dev))
    np.testing.assert_allclose(
        to_host(y), (x - mean) / np.sqrt(var + 1e-5) * w + b, **TOL["loops64"]
    )


def test_norms_keep_float32(backend, rng):
    x = on_device(rng.standard_normal((2, 4, 3, 3)).astype(np.float32), backend.device)
    w = on_device(np.ones(4, np.float32), backend.device)
    for y in (
        F.batch_norm(x, None, None, w, w, training=True),
        F.instance_norm(x, weight=w),
        F.group_norm(x, 2, w, w),
        F.layer_norm(x, (3, 3)),
    ):
        assert y.dtype == np.float32 and y.shape == x.shape


def test_norm_arguments_are_checked(backend, rng):
    x = on_device(rng.standard_normal((2, 6, 3, 3)), backend.device)
    with pytest.raises(ArgumentError, match="num_groups=4 must be a positive divisor of the 6"):
        F.group_norm(x, 4)
    with pytest.raises(ArgumentError, match=r"normalized_shape \(4, 3\) must equal the trailing"):
        F.layer_norm(x, (4, 3))
    with pytest.raises(ArgumentError, match=r"normalized_shape \(1, 2, 6, 3, 3\)"):
        F.layer_norm(x, (1, 2, 6, 3, 3))
    with pytest.raises(ArgumentError, match=r"running_mean must have shape \(6,\)"):
        F.batch_norm(x, on_device(np.zeros(5), backend.device), None, training=True)
    with pytest.raises(ArgumentError, match=r"batch_norm: weight must have shape \(6,\)"):
        F.batch_norm(x, None, None, on_device(np.ones(3), backend.device), training=True)
    with pytest.raises(ArgumentError, match="more than 1 value per channel"):
        F.batch_norm(on_device(np.ones((1, 6)), backend.device), None, None, training=True)
    with pytest.raises(ArgumentError, match="running_mean and running_var are needed"):
        F.batch_norm(x, None, None, training=False)
    with pytest.raises(ArgumentError, match="instance_norm: x must be"):
        F.instance_norm(on_device(np.ones((2, 6)), backend.device))


# ---- torch as an oracle: forward and backward in float64 ----

NORMS = {
    "batch_norm_train": (
        (2, 3, 4, 5),
        lambda f, x, w, b: f.batch_norm(x, None, None, w, b, training=True),
    ),
    "batch_norm_ncdhw": (
        (2, 3, 2, 3, 4),
        lambda f, x, w, b: f.batch_norm(x, None, None, w, b, training=True),
    ),
    "instance_norm": ((2, 3, 4, 5), lambda f, x, w, b: f.instance_norm(x, weight=w, bias=b)),
    "group_norm": ((2, 4, 3, 5), lambda f, x, w, b: f.group_norm(x, 2, w, b)),
    "layer_norm": ((2, 3, 4, 5), lambda f, x, w, b: f.layer_norm(x, (4, 5), w, b)),
}


@pytest.mark.oracle
@pytest.mark.parametrize("name", NORMS)
def test_norm_matches_torch(backend, rng, name):
    torch = pytest.importorskip("torch")
    shape, call = NORMS[name]
    ps = (4, 5) if name == "layer_norm" else (shape[1],)
    x, w, b = rng.standard_normal(shape) * 3 + 1, rng.standard_normal(ps), rng.standard_normal(ps)
    gy = rng.standard_normal(shape)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = call(torch.nn.functional, tx, tw, tb)
    ty.backward(torch.tensor(gy))
    ours = [Tensor(on_device(a, backend.device), requires_grad=True) for a in (x, w, b)]
    y = call(F, *ours)
    y.backward(on_device(gy, backend.device))
    np.testing.assert_allclose(to_host(y), ty.detach().numpy(), **TOL["loops64"])
    for t, mine in zip((tx, tw, tb), ours, strict=True):
        np.testing.assert_allclose(to_host(mine.grad), t.grad.numpy(), **TOL["loops64"])


@pytest.mark.oracle
def test_batch_norm_running_stats_match_torch(backend, rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((3, 2, 4, 4)) * 2 + 0.5
    rm, rv = on_device(np.zeros(2), backend.device), on_device(np.ones(2), backend.device)
    trm, trv = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    for _ in range(2):
        F.batch_norm(on_device(x, backend.device), rm, rv, training=True, momentum=0.25)
        torch.nn.functional.batch_norm(torch.tensor(x), trm, trv, training=True, momentum=0.25)
    np.testing.assert_allclose(to_host(rm), trm.numpy(), **TOL["loops64"])
    np.testing.assert_allclose(to_host(rv), trv.numpy(), **TOL["loops64"])
