"""conv2d_relu_max_pool2d (the fused layer op): loops oracle, gradient checks, equality with the
three-op composition, and nn.Sequential's fused execution of Conv2d -> ReLU -> MaxPool2d."""

from __future__ import annotations

import numpy as np
import pytest

import engine.functional as F
import models
from engine import nn
from engine.gradcheck import check_grad
from engine.ops.fused import conv2d_relu_max_pool2d
from engine.tensor import Tensor
from tests.conftest import TOL
from tests.helpers import on_device, to_host
from tests.ops.test_conv import conv2d_loops
from tests.ops.test_pool import pool_loops

CASES = [  # x shape, W shape, stride, padding, pool kernel, pool stride, pool padding
    ((2, 1, 8, 8), (3, 1, 3, 3), 1, 0, 2, None, 0),  # the seed CNN's conv1 block (polyphase path)
    ((2, 3, 7, 8), (4, 3, 3, 3), 1, 1, 2, None, 0),  # RGB, padded, odd 7x8 -> 3x4 (polyphase)
    ((2, 5, 7, 7), (4, 5, 3, 3), 1, 0, 2, None, 0),  # c*kh*kw = 45: Winograd, odd 5x5 -> 2x2
    ((2, 4, 7, 8), (3, 4, 3, 3), 1, 1, 2, None, 0),  # Winograd, padded, 7x8 -> 3x4
    ((1, 2, 7, 6), (3, 2, 3, 3), 2, 1, 3, 1, 1),  # strided conv, overlapping padded pool windows
    ((2, 4, 6, 9), (2, 4, 2, 4), (1, 2), (1, 0), (2, 1), (1, 2), (1, 0)),  # non-square everything
]


def _draw(rng, x_shape, w_shape, stride, padding, pool):
    """x, W, b whose conv outputs keep |z| >= 0.01 and, within every pool window, distinct
    values >= 0.01 apart: no ReLU kink or max tie within a finite-difference step."""
    for _ in range(500):
        x, W = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
        b = rng.standard_normal(w_shape[0])
        z = conv2d_loops(x, W, b, stride, padding)
        taps = _windows(np.maximum(z, 0), *pool)
        top2 = np.sort(taps, axis=-1)[..., -2:]
        if (
            np.abs(z).min() >= 0.01
            and (top2[..., 1] - top2[..., 0] >= 0.01)[top2[..., 1] > 0].all()
        ):
            return x, W, b
    raise AssertionError("no well-conditioned draw found")


def _windows(z, kernel_size, stride, padding):
    """Every pool window's rectified values (n, c, qh, qw, taps); padding is -1 (never wins)."""
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    stride = (kh, kw) if stride is None else stride
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    n, c, h, w = z.shape
    zpad = np.full((n, c, h + 2 * ph, w + 2 * pw), -1.0)
    zpad[:, :, ph : ph + h, pw : pw + w] = z
    qh, qw = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    out = np.empty((n, c, qh, qw, kh * kw))
    for i in range(qh):
        for j in range(qw):
            win = zpad[:, :, i * sh : i * sh + kh, j * sw : j * sw + kw]
            out[:, :, i, j] = win.reshape(n, c, -1)
    return out


@pytest.mark.parametrize("x_shape,w_shape,stride,padding,pk,ps,pp", CASES)
def test_conv2d_relu_max_pool2d_forward_matches_loops(
    backend, rng, x_shape, w_shape, stride, padding, pk, ps, pp
):
    x, W, b = rng.standard_normal(x_shape), rng.standard_normal(w_shape), rng.standard_normal(4)
    b = b[: w_shape[0]] - 0.5  # some windows rectify to all zeros
    xd, Wd, bd = (on_device(a, backend.device) for a in (x, W, b))
    y = conv2d_relu_max_pool2d(xd, Wd, bd, stride, padding, pk, ps, pp)
    expected = pool_loops(np.maximum(conv2d_loops(x, W, b, stride, padding), 0), pk, ps, pp, "max")
    np.testing.assert_allclose(y.numpy(), expected, **TOL["loops64"])


@pytest.mark.parametrize("x_shape,w_shape,stride,padding,pk,ps,pp", CASES)
def test_conv2d_relu_max_pool2d_grad(backend, rng, x_shape, w_shape, stride, padding, pk, ps, pp):
    x, W, b = _draw(rng, x_shape, w_shape, stride, padding, (pk, ps, pp))
    check_grad(
        lambda x, W, b: conv2d_relu_max_pool2d(x, W, b, stride, padding, pk, ps, pp),
        [x, W, b],
        device=backend.device,
        **TOL["gradcheck"],
    )


@pytest.mark.parametrize("x_shape,w_shape,stride,padding,pk,ps,pp", CASES)
def test_conv2d_relu_max_pool2d_grad_without_input_grad(
    backend, rng, x_shape, w_shape, stride, padding, pk, ps, pp
):
    """The weight and bias gradients alone (x a constant, as for a network's first layer): the
    backward kernels may take another path when no input gradient is asked for."""
    x, W, b = _draw(rng, x_shape, w_shape, stride, padding, (pk, ps, pp))
    x = Tensor(on_device(x, backend.device))
    check_grad(
        lambda W, b: conv2d_relu_max_pool2d(x, W, b, stride, padding, pk, ps, pp),
        [W, b],
        device=backend.device,
        **TOL["gradcheck"],
    )


@pytest.mark.parametrize("with_bias", [True, False])
def test_conv2d_relu_max_pool2d_equals_composition(backend, rng, with_bias):
    """Values and every gradient equal max_pool2d(relu(conv2d)), ties at zero included (a negative
    bias makes many windows all-zero after the ReLU: their gradient must vanish)."""
    x, W = rng.standard_normal((3, 3, 9, 8)), rng.standard_normal((5, 3, 3, 3))
    b = rng.standard_normal(5) - 3.0 if with_bias else None
    gy = rng.standard_normal((3, 5, 3, 3))
    results = []
    for fused in (True, False):
        xs = [
            Tensor(on_device(a, backend.device), requires_grad=True)
            for a in (x, W, b)
            if a is not None
        ]
        if fused:
            y = conv2d_relu_max_pool2d(*xs, stride=1, padding=0, pool_size=2)
        else:
            y = F.max_pool2d(F.relu(F.conv2d(*xs)), 2)
        y.backward(on_device(gy, backend.device))
        results.append([y.numpy()] + [to_host(t.grad) for t in xs])
    if with_bias:
        assert (results[1][0] == 0).sum() > 5  # the all-zero windows the test is about
    for got, ref in zip(*results, strict=True):
        np.testing.assert_allclose(got, ref, **TOL["loops64"])


def test_sequential_fused_equals_layer_by_layer(backend, rng):
    """The seed CNN's output, parameter gradients and input gradient (saliency) are the same with
    Sequential.fuse on and off; fusion is an execution detail, the layers stay the article's."""
    x = rng.standard_normal((4, 1, 28, 28))
    t = rng.integers(0, 10, 4)
    model = models.get("seed_cnn", rng=np.random.default_rng(1)).astype(np.float64)
    model.to(backend.device)
    t = on_device(t, backend.device)
    assert [type(m).__name__ for m in model.layers[:3]] == ["Conv2d", "ReLU", "MaxPool2d"]
    keys = list(model.state_dict())
    results = []
    for fuse in (True, False):
        model.fuse = fuse
        model.zero_grad()
        xt = Tensor(on_device(x, backend.device), requires_grad=True)
        logits = model(xt)
        F.softmax_cross_entropy(logits, t).backward()
        grads = [xt.grad] + [p.grad for p in model.parameters()]
        results.append([logits.numpy()] + [to_host(g) for g in grads])
    assert list(model.state_dict()) == keys
    for got, ref in zip(*results, strict=True):
        np.testing.assert_allclose(got, ref, **TOL["loops64"])


def test_sequential_fuses_only_exact_runs(backend):
    """Conv2d -> ReLU -> MaxPool2d runs fused; a run broken by another layer does not."""
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, rng=np.random.default_rng(0)),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(2, 2, 3, rng=np.random.default_rng(0)),
        nn.ReLU(),
        nn.AvgPool2d(2),
    ).to(backend.device)
    x = on_device(np.ones((1, 1, 12, 12), dtype=np.float32), backend.device)
    x = Tensor(x, requires_grad=True)
    names, fn = [], model(x).creator
    while fn is not None:
        names.append(fn.name)
        fn = fn.inputs[0].creator
    assert names == ["AvgPool2dFn", "ReLUFn", "Conv2dFn", "ConvReLUPool2dFn"]


def test_conv2d_relu_max_pool2d_rejects_bad_pool(backend):
    x, W = (on_device(np.zeros(shape), backend.device) for shape in ((1, 1, 5, 5), (1, 1, 3, 3)))
    with pytest.raises(
        ValueError, match=r"max_pool2d: kernel \(4, 4\) does not fit input \(3, 3\)"
    ):
        conv2d_relu_max_pool2d(x, W, None, pool_size=4)
    with pytest.raises(ValueError, match="conv2d: x has 1 channels but W expects 2"):
        conv2d_relu_max_pool2d(x, on_device(np.zeros((1, 2, 3, 3)), backend.device))
