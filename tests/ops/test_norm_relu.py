"""batch_norm_relu and instance_norm_relu (the fused norm -> ReLU ops): float64 gradient checks,
equality with relu(norm(.)) in values, gradients and running statistics, and nn.Sequential's
fused execution of BatchNorm*d / InstanceNorm*d -> ReLU (state_dict keys unchanged)."""

from __future__ import annotations

import numpy as np
import pytest

import engine.functional as F
from engine import nn
from engine.gradcheck import check_grad
from engine.tensor import Tensor
from tests.conftest import TOL
from tests.helpers import on_device, to_host


def _away_from_kink(rng, shape, norm):
    """x, w, b (c,) with |norm(x, w, b)| >= 0.05 everywhere: no ReLU kink within a finite
    difference step (norm: numpy arrays -> the normalised, affine output)."""
    c = shape[1]
    for _ in range(200):
        x = rng.standard_normal(shape) * 2 + 1
        w, b = rng.standard_normal(c), rng.standard_normal(c) * 0.5
        if np.abs(norm(x, w, b)).min() >= 0.05:
            return x, w, b
    raise AssertionError("no well-conditioned draw found")


def _bn(x, w, b, axes=None):
    axes = (0, *range(2, x.ndim)) if axes is None else axes
    shape = (1, -1) + (1,) * (x.ndim - 2)
    xhat = (x - x.mean(axes, keepdims=True)) / np.sqrt(x.var(axes, keepdims=True) + 1e-5)
    return xhat * w.reshape(shape) + b.reshape(shape)


def _in(x, w, b):
    return _bn(x, w, b, axes=tuple(range(2, x.ndim)))


@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 4, 3)], ids=["nc", "nchw"])
def test_batch_norm_relu_training_grad(backend, rng, shape):
    x, w, b = _away_from_kink(rng, shape, _bn)
    fn = lambda x, w, b: F.batch_norm_relu(x, None, None, w, b, training=True)  # noqa: E731
    check_grad(fn, [x, w, b], device=backend.device, **TOL["gradcheck"])


def test_batch_norm_relu_eval_grad(backend, rng):
    x, w, b = rng.standard_normal((2, 3, 4, 3)), rng.standard_normal(3), rng.standard_normal(3)
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    shape = (1, 3, 1, 1)
    z = (x - rm.reshape(shape)) / np.sqrt(rv.reshape(shape) + 1e-5) * w.reshape(shape)
    x[np.abs(z + b.reshape(shape)) < 0.05] += 0.2  # keep away from the kink
    rm_d, rv_d = on_device(rm, backend.device), on_device(rv, backend.device)
    fn = lambda x, w, b: F.batch_norm_relu(x, rm_d, rv_d, w, b)  # noqa: E731
    check_grad(fn, [x, w, b], device=backend.device, **TOL["gradcheck"])


@pytest.mark.parametrize("shape", [(2, 3, 5), (2, 2, 3, 2, 3)], ids=["ncl", "ncdhw"])
def test_instance_norm_relu_grad(backend, rng, shape):
    x, w, b = _away_from_kink(rng, shape, _in)
    fn = lambda x, w, b: F.instance_norm_relu(x, None, None, w, b)  # noqa: E731
    check_grad(fn, [x, w, b], device=backend.device, **TOL["gradcheck"])


@pytest.mark.parametrize("op", ["batch_norm", "instance_norm"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_norm_relu_equals_composition(backend, rng, op, training, affine):
    """Values, gradients (exact zeros where the ReLU cut, about half) and the running statistics
    updated in place equal relu(norm(.)) run as two ops, in training and eval mode."""
    shape, dev = (3, 4, 5, 6), backend.device
    x, gy = rng.standard_normal(shape) * 3 + 2, rng.standard_normal(shape)
    params = (rng.standard_normal(4), rng.standard_normal(4)) if affine else ()
    results = []
    for fused in (True, False):
        rm, rv = on_device(np.zeros(4), dev), on_device(np.ones(4), dev)
        xs = [Tensor(on_device(a, dev), requires_grad=True) for a in (x, *params)]
        wb = xs[1:] if affine else [None, None]
        args = (xs[0], rm, rv, *wb, training, 0.3)
        if fused:
            y = getattr(F, f"{op}_relu")(*args)
        else:
            y = F.relu(getattr(F, op)(*args))
        y.backward(on_device(gy, dev))
        results.append([y.numpy(), to_host(rm), to_host(rv)] + [to_host(t.grad) for t in xs])
    assert 0.2 < (results[0][0] == 0).mean() < 0.8  # the ReLU cut a fair share
    if training:  # the running statistics moved (in place)
        assert not np.allclose(results[0][1], 0)
    else:  # constant statistics: no gradient reaches x where the ReLU cut
        assert (results[0][3][results[0][0] == 0] == 0).all()
    for got, ref in zip(*results, strict=True):
        np.testing.assert_allclose(got, ref, **TOL["loops64"])


def _creators(y) -> list[str]:
    names, fn = [], y.creator
    while fn is not None:
        names.append(fn.name)
        fn = fn.inputs[0].creator
    return names


@pytest.mark.parametrize("norm", ["BatchNorm2d", "InstanceNorm2d"])
def test_sequential_norm_relu_fused_equals_layer_by_layer(backend, rng, norm):
    """conv -> norm -> ReLU -> conv: outputs, every gradient and the running statistics are the
    same with Sequential.fuse on and off, in training and then eval mode; fused, the norm and
    the ReLU run as one op; the state_dict keys stay the layers' own."""
    layer = getattr(nn, norm)(3, affine=True, track_running_stats=True)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, rng=np.random.default_rng(1)),
        layer,
        nn.ReLU(),
        nn.Conv2d(3, 2, 1, rng=np.random.default_rng(2)),
    ).astype(np.float64)
    model.to(backend.device)
    layer.weight.data[...] = on_device(rng.uniform(0.5, 1.5, 3), backend.device)
    layer.bias.data[...] = on_device(rng.standard_normal(3) * 0.3, backend.device)
    x = rng.standard_normal((2, 2, 5, 4))
    gys = {mode: rng.standard_normal((2, 2, 5, 4)) for mode in (True, False)}
    keys = sorted(model.state_dict())
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    start = {name: to_host(getattr(layer, name)).copy() for name in buffers}
    results = []
    for fuse in (True, False):
        model.fuse = fuse
        for name, v in start.items():  # the same buffers for both runs, set in place
            getattr(layer, name)[...] = on_device(v, backend.device)
        for training in (True, False):
            model.train(training)
            model.zero_grad()
            xt = Tensor(on_device(x, backend.device), requires_grad=True)
            y = model(xt)
            norm_fn = (
                "InstanceNormFn" if training and norm.startswith("Instance") else "BatchNormFn"
            )
            relu = [] if fuse else ["ReLUFn"]
            assert _creators(y) == ["Conv2dFn", *relu, norm_fn, "Conv2dFn"]
            y.backward(on_device(gys[training], backend.device))
            grads = [xt.grad] + [p.grad for p in model.parameters()]
            state = [to_host(getattr(layer, name)) for name in buffers]
            results.append([y.numpy()] + [to_host(g) for g in grads] + state)
    assert sorted(model.state_dict()) == keys
    assert results[0][-3].any()  # training moved the running mean
    half = len(results) // 2
    for got_run, ref_run in zip(results[:half], results[half:], strict=True):
        for got, ref in zip(got_run, ref_run, strict=True):
            np.testing.assert_allclose(got, ref, **TOL["loops64"])
