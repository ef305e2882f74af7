"""conv3d: gradient checks (float64, random upstream gradient), a naive-loop forward oracle, bad
arguments, and PyTorch as an optional oracle (marked `oracle`)."""

from __future__ import annotations

import numpy as np
import pytest

import engine.functional as F
from engine.errors import ArgumentError
from engine.gradcheck import check_grad
from engine.tensor import Tensor
from tests.conftest import TOL, cpu_only
from tests.helpers import on_device

CASES = [  # x shape, W shape, stride, padding
    ((2, 2, 4, 5, 3), (3, 2, 3, 3, 2), 1, 0),
    ((1, 2, 5, 4, 6), (2, 2, 3, 2, 3), 2, 1),  # stride 2, padding 1, non-cubic kernel and input
    ((2, 1, 5, 6, 4), (2, 1, 2, 3, 3), (2, 1, 2), (1, 0, 1)),  # per-axis stride and padding
    ((1, 3, 3, 3, 3), (2, 3, 3, 3, 3), 1, 1),  # kernel as large as the input, padded
]


def triple(v):
    return (v, v, v) if isinstance(v, int) else tuple(v)


def conv3d_loops(x, W, b, stride, padding):
    """Direct definition: y[n,o,i,j,l] = sum_{c,t,u,v} xpad[n,c,i sd+t,j sh+u,l sw+v] W[o,c,t,u,v]
    + b[o]."""
    (sd, sh, sw), (pd, ph, pw) = triple(stride), triple(padding)
    n, c, d, h, w = x.shape
    oc, _, kd, kh, kw = W.shape
    xpad = np.zeros((n, c, d + 2 * pd, h + 2 * ph, w + 2 * pw))
    xpad[:, :, pd : pd + d, ph : ph + h, pw : pw + w] = x
    od, oh, ow = (
        (d + 2 * pd - kd) // sd + 1,
        (h + 2 * ph - kh) // sh + 1,
        (w + 2 * pw - kw) // sw + 1,
    )
    y = np.zeros((n, oc, od, oh, ow))
    for b_ in range(n):
        for o in range(oc):
            for i in range(od):
                for j in range(oh):
                    for k in range(ow):
                        patch = xpad[
                            b_, :, i * sd : i * sd + kd, j * sh : j * sh + kh, k * sw : k * sw + kw
                        ]
                        y[b_, o, i, j, k] = (patch * W[o]).sum() + (0.0 if b is None else b[o])
    return y


def _inputs(rng, x_shape, w_shape):
    return (
        rng.standard_normal(x_shape),
        rng.standard_normal(w_shape),
        rng.standard_normal(w_shape[0]),
    )


@pytest.mark.parametrize("x_shape,w_shape,stride,padding", CASES)
def test_conv3d_forward_matches_loops(backend, rng, x_shape, w_shape, stride, padding):
    x, W, b = _inputs(rng, x_shape, w_shape)
    y = F.conv3d(*(on_device(a, backend.device) for a in (x, W, b)), stride=stride, padding=padding)
    np.testing.assert_allclose(y.numpy(), conv3d_loops(x, W, b, stride, padding), **TOL["loops64"])


@pytest.mark.parametrize("x_shape,w_shape,stride,padding", CASES)
def test_conv3d_grad(backend, rng, x_shape, w_shape, stride, padding):
    check_grad(
        lambda x, W, b: F.conv3d(x, W, b, stride, padding),
        list(_inputs(rng, x_shape, w_shape)),
        device=backend.device,
        **TOL["gradcheck"],
    )


def test_conv3d_grad_without_bias(backend, rng):
    x, W = rng.standard_normal((2, 2, 5, 4, 5)), rng.standard_normal((3, 2, 3, 2, 3))
    check_grad(
        lambda x, W: F.conv3d(x, W, stride=2, padding=(1, 0, 1)),
        [x, W],
        device=backend.device,
        **TOL["gradcheck"],
    )


def test_conv3d_float32_stays_float32(backend, rng):
    x = on_device(rng.standard_normal((2, 3, 6, 5, 4)).astype(np.float32), backend.device)
    W = Tensor(
        on_device(rng.standard_normal((4, 3, 3, 3, 3)).astype(np.float32), backend.device),
        requires_grad=True,
    )
    y = F.conv3d(x, W, padding=1)
    y.sum().backward()
    assert y.shape == (2, 4, 6, 5, 4)
    assert y.dtype == np.float32 and W.grad.dtype == np.float32


@pytest.mark.parametrize(
    "x_shape,w_shape,kwargs,match",
    [
        ((2, 3, 4, 5, 5), (4, 2, 3, 3, 3), {}, "x has 3 channels but W"),
        ((2, 3, 5, 5), (4, 3, 3, 3, 3), {}, r"x \(n, c, d, h, w\)"),
        ((2, 3, 5, 5, 5), (4, 3, 3, 3), {}, r"W \(oc, c, kd, kh, kw\)"),
        ((1, 1, 2, 5, 5), (1, 1, 3, 3, 3), {}, "kernel 3x3x3 does not fit"),
        ((1, 1, 5, 5, 5), (1, 1, 3, 3, 3), {"stride": (1, 0, 1)}, "stride must be >= 1"),
        ((1, 1, 5, 5, 5), (1, 1, 3, 3, 3), {"padding": -1}, "padding must be >= 0"),
        ((1, 1, 5, 5, 5), (1, 1, 3, 3, 3), {"padding": (1, 2)}, "padding must be .* 3 ints"),
        ((1, 1, 5, 5, 5), (1, 1, 3, 3, 3), {"stride": 1.5}, "stride must be an int"),
    ],
)
def test_conv3d_bad_arguments(backend, x_shape, w_shape, kwargs, match):
    x, W = (on_device(np.zeros(shape), backend.device) for shape in (x_shape, w_shape))
    with pytest.raises(ArgumentError, match=match):
        F.conv3d(x, W, **kwargs)


def test_conv3d_bad_bias_and_dtype(backend):
    x, W = (on_device(np.zeros(s), backend.device) for s in ((1, 2, 3, 3, 3), (4, 2, 1, 1, 1)))
    with pytest.raises(ArgumentError, match=r"bias b must have shape \(4,\)"):
        F.conv3d(x, W, on_device(np.zeros(3), backend.device))
    with pytest.raises(ArgumentError, match="x is float32 but W is float64"):
        F.conv3d(on_device(np.zeros((1, 2, 3, 3, 3), np.float32), backend.device), W)


@pytest.mark.oracle
@cpu_only("PyTorch is the oracle on the CPU; the backends agree with the loops above")
@pytest.mark.parametrize("x_shape,w_shape,stride,padding", CASES)
def test_conv3d_matches_torch(rng, x_shape, w_shape, stride, padding):
    torch = pytest.importorskip("torch")
    x, W, b = _inputs(rng, x_shape, w_shape)
    xt, Wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, W, b))
    yt = torch.nn.functional.conv3d(xt, Wt, bt, stride=stride, padding=padding)
    gy = rng.standard_normal(yt.shape)
    yt.backward(torch.tensor(gy))
    xs = [Tensor(a, requires_grad=True) for a in (x, W, b)]
    y = F.conv3d(*xs, stride=stride, padding=padding)
    y.backward(gy)
    np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), **TOL["loops64"])
    for ours, theirs in zip(xs, (xt, Wt, bt), strict=True):
        np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), **TOL["loops64"])
