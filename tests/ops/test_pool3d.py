"""max_pool3d, avg_pool3d and adaptive average pooling (2-D and 3-D): naive-loop forward oracles,
gradient checks, the max-pool tie and NaN rules, bad arguments, and PyTorch as an oracle."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

import engine.functional as F
from engine.errors import ArgumentError
from engine.gradcheck import check_grad
from engine.tensor import Tensor
from tests.conftest import TOL
from tests.helpers import distinct, on_device, to_host

CASES = [  # x shape (n, c, d, h, w), kernel_size, stride, padding
    ((2, 2, 4, 5, 6), 2, None, 0),
    ((1, 2, 5, 6, 5), 3, 2, 1),  # overlapping windows, stride 2, padding 1
    ((2, 1, 4, 6, 5), (2, 3, 2), (1, 2, 2), (1, 1, 0)),  # non-cubic everything
    ((1, 3, 3, 4, 4), (3, 1, 2), 1, (1, 0, 1)),
]


def _triple(v):
    return (v, v, v) if isinstance(v, int) else tuple(v)


def pool3d_loops(x, kernel_size, stride, padding, reduce):
    """The pool by its definition: a window per output voxel of the padded input."""
    k = _triple(kernel_size)
    s = k if stride is None else _triple(stride)
    p = _triple(padding)
    fill = -np.inf if reduce == "max" else 0.0
    xpad = np.pad(x, ((0, 0), (0, 0), *((q, q) for q in p)), constant_values=fill)
    out = [(n + 2 * q - kk) // ss + 1 for n, kk, ss, q in zip(x.shape[2:], k, s, p, strict=True)]
    y = np.zeros((*x.shape[:2], *out))
    for b, ch, i, j, q in itertools.product(*map(range, y.shape)):
        win = xpad[b, ch, i * s[0] :, j * s[1] :, q * s[2] :][: k[0], : k[1], : k[2]]
        y[b, ch, i, j, q] = win.max() if reduce == "max" else win.sum() / win.size
    return y


@pytest.mark.parametrize("x_shape,kernel_size,stride,padding", CASES)
@pytest.mark.parametrize("reduce", ["max", "avg"])
def test_pool3d_forward_matches_loops(backend, rng, x_shape, kernel_size, stride, padding, reduce):
    x = rng.standard_normal(x_shape)
    pool = F.max_pool3d if reduce == "max" else F.avg_pool3d
    y = pool(on_device(x, backend.device), kernel_size, stride, padding)
    expected = pool3d_loops(x, kernel_size, stride, padding, reduce)
    np.testing.assert_allclose(y.numpy(), expected, **TOL["loops64"])


@pytest.mark.parametrize("x_shape,kernel_size,stride,padding", CASES)
def test_max_pool3d_grad(backend, rng, x_shape, kernel_size, stride, padding):
    x = distinct(rng, x_shape)  # tie-free: distinct values 0.01 apart
    check_grad(
        lambda x: F.max_pool3d(x, kernel_size, stride, padding),
        [x],
        device=backend.device,
        **TOL["gradcheck"],
    )


@pytest.mark.parametrize("x_shape,kernel_size,stride,padding", CASES)
def test_avg_pool3d_grad(backend, rng, x_shape, kernel_size, stride, padding):
    check_grad(
        lambda x: F.avg_pool3d(x, kernel_size, stride, padding),
        [rng.standard_normal(x_shape)],
        device=backend.device,
        **TOL["gradcheck"],
    )


def test_max_pool3d_tie_gradient_goes_to_first_maximum(backend):
    # every 2x2x2 window is constant: all eight taps tie, the first (t, u, v) = (0, 0, 0) wins
    x = Tensor(on_device(np.ones((1, 1, 4, 4, 2)), backend.device), requires_grad=True)
    y = F.max_pool3d(x, 2)
    gy = np.arange(1.0, 5.0).reshape(1, 1, 2, 2, 1)
    y.backward(on_device(gy, backend.device))
    expected = np.zeros((4, 4, 2))
    expected[::2, ::2, 0] = gy[0, 0, :, :, 0]
    np.testing.assert_array_equal(to_host(x.grad)[0, 0], expected)


def test_max_pool3d_nan_wins_and_propagates(backend, rng):
    x = distinct(rng, (1, 1, 4, 4, 4))
    x[0, 0, 1, 0, 1] = np.nan  # in window (0, 0, 0) only
    xt = Tensor(on_device(x, backend.device), requires_grad=True)
    y = F.max_pool3d(xt, 2)
    nan = np.isnan(y.numpy())
    assert nan[0, 0, 0, 0, 0] and nan.sum() == 1
    y.backward(on_device(np.ones(y.shape), backend.device))
    assert to_host(xt.grad)[0, 0, 1, 0, 1] == 1  # the NaN took its window's gradient


def test_max_pool3d_padding_never_wins(backend):
    x = on_device(-np.arange(1.0, 28.0).reshape(1, 1, 3, 3, 3), backend.device)  # all negative
    y = F.max_pool3d(x, 3, stride=1, padding=1).numpy()
    assert np.isfinite(y).all() and y.max() == -1.0


def adaptive_loops(x, out):
    """Adaptive average pooling by its definition: window i of an axis of length n is
    [floor(i n / o), ceil((i + 1) n / o)); the output is the window's mean."""
    spans = [
        [(math.floor(i * n / o), math.ceil((i + 1) * n / o)) for i in range(o)]
        for n, o in zip(x.shape[2:], out, strict=True)
    ]
    y = np.zeros((*x.shape[:2], *out))
    for idx in itertools.product(*(range(o) for o in out)):
        window = tuple(slice(*spans[a][i]) for a, i in enumerate(idx))
        y[(..., *idx)] = x[(..., *window)].mean(axis=tuple(range(2, x.ndim)))
    return y


ADAPTIVE = [  # x shape, output_size
    ((2, 3, 5, 7), 1),  # global average pooling
    ((2, 2, 7, 5), (3, 2)),  # overlapping windows (7 -> 3)
    ((1, 2, 4, 3), (6, 3)),  # larger than the input along h: windows of one, repeated
    ((2, 2, 3, 4, 5), 1),
    ((1, 2, 5, 4, 6), (2, 3, 4)),
    ((2, 1, 3, 5, 4), (3, 2, 1)),
]


def _adaptive(x, out):
    return (F.adaptive_avg_pool2d if x.ndim == 4 else F.adaptive_avg_pool3d)(x, out)


@pytest.mark.parametrize("x_shape,output_size", ADAPTIVE)
def test_adaptive_avg_pool_forward_matches_loops(backend, rng, x_shape, output_size):
    x = rng.standard_normal(x_shape)
    y = _adaptive(on_device(x, backend.device), output_size)
    out = (output_size,) * (x.ndim - 2) if isinstance(output_size, int) else output_size
    np.testing.assert_allclose(y.numpy(), adaptive_loops(x, out), **TOL["loops64"])


@pytest.mark.parametrize("x_shape,output_size", ADAPTIVE)
def test_adaptive_avg_pool_grad(backend, rng, x_shape, output_size):
    check_grad(
        lambda x: _adaptive(x, output_size),
        [rng.standard_normal(x_shape)],
        device=backend.device,
        **TOL["gradcheck"],
    )


@pytest.mark.parametrize(
    "pool,x_shape,kwargs,match",
    [
        (F.max_pool3d, (1, 1, 4, 4), {}, r"x \(n, c, d, h, w\)"),  # wrong rank
        (F.avg_pool3d, (1, 1, 2, 4, 4, 4), {}, r"x \(n, c, d, h, w\)"),
        (F.max_pool3d, (1, 1, 4, 4, 4), {"kernel_size": (2, 2, 6)}, "kernel .* does not fit"),
        (F.avg_pool3d, (1, 1, 4, 4, 4), {"kernel_size": 2, "padding": 2}, "padding .* half"),
        (F.max_pool3d, (1, 1, 4, 4, 4), {"kernel_size": 2, "stride": 0}, "stride must be >= 1"),
        (F.max_pool2d, (1, 1, 4, 4, 4), {}, r"x \(n, c, h, w\)"),
        (F.adaptive_avg_pool3d, (1, 1, 4, 4), {"output_size": 1}, r"x \(n, c, d, h, w\)"),
        (F.adaptive_avg_pool2d, (1, 1, 4, 4), {"output_size": (2, 0)}, "output_size must be >= 1"),
    ],
)
def test_pool3d_bad_arguments(backend, pool, x_shape, kwargs, match):
    with pytest.raises(ArgumentError, match=match):
        pool(on_device(np.zeros(x_shape), backend.device), **kwargs)


def test_pool3d_kernel_size_must_be_int_or_triple(backend):
    with pytest.raises(TypeError, match="kernel_size must be an int or a triple"):
        F.max_pool3d(on_device(np.zeros((1, 1, 4, 4, 4)), backend.device), (2, 2))


def torch_pair(torch, ours, theirs, x, device, rng):
    """[(ours, torch) y, (ours, torch) gx] of y = op(x), float64, one random upstream gradient:
    ours runs on a Tensor on `device`, theirs on a torch tensor."""
    tx = torch.tensor(x, requires_grad=True)
    ty = theirs(tx)
    gy = rng.standard_normal(tuple(ty.shape))
    ty.backward(torch.tensor(gy))
    xt = Tensor(on_device(x, device), requires_grad=True)
    y = ours(xt)
    y.backward(on_device(gy, device))
    return [(y.numpy(), ty.detach().numpy()), (to_host(xt.grad), tx.grad.numpy())]


@pytest.mark.oracle
@pytest.mark.parametrize("x_shape,kernel_size,stride,padding", CASES)
def test_pool3d_against_torch(backend, rng, x_shape, kernel_size, stride, padding):
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    x = distinct(rng, x_shape)
    for ours, theirs in ((F.max_pool3d, tf.max_pool3d), (F.avg_pool3d, tf.avg_pool3d)):
        for got, expected in torch_pair(
            torch,
            lambda t, ours=ours: ours(t, kernel_size, stride, padding),
            lambda t, theirs=theirs: theirs(t, kernel_size, stride, padding),
            x,
            backend.device,
            rng,
        ):
            np.testing.assert_allclose(got, expected, **TOL["loops64"])


@pytest.mark.oracle
@pytest.mark.parametrize("x_shape,output_size", ADAPTIVE)
def test_adaptive_avg_pool_against_torch(backend, rng, x_shape, output_size):
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    theirs = tf.adaptive_avg_pool2d if len(x_shape) == 4 else tf.adaptive_avg_pool3d
    for got, expected in torch_pair(
        torch,
        lambda t: _adaptive(t, output_size),
        lambda t: theirs(t, output_size),
        rng.standard_normal(x_shape),
        backend.device,
        rng,
    ):
        np.testing.assert_allclose(got, expected, **TOL["loops64"])
