"""conv2d: gradient checks (float64, random upstream gradient) and a naive-loop forward oracle."""

from __future__ import annotations

import numpy as np
import pytest

import engine.functional as F
from engine.gradcheck import check_grad
from engine.tensor import Tensor
from tests.conftest import TOL
from tests.helpers import on_device

CASES = [  # x shape, W shape, stride, padding
    ((2, 3, 7, 6), (4, 3, 3, 3), 1, 0),
    ((2, 3, 7, 6), (4, 3, 3, 3), 2, 1),
    ((1, 2, 6, 9), (3, 2, 2, 4), (1, 2), (1, 0)),  # non-square kernel, input, stride and padding
    ((3, 1, 5, 5), (2, 1, 5, 5), 1, 2),  # kernel as large as the input, batch 3
]


def conv2d_loops(x, W, b, stride, padding):
    """Direct definition: y[n,o,i,j] = sum_{c,u,v} xpad[n,c,i*sh+u,j*sw+v] W[o,c,u,v] + b[o]."""
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    n, c, h, w = x.shape
    oc, _, kh, kw = W.shape
    xpad = np.zeros((n, c, h + 2 * ph, w + 2 * pw))
    xpad[:, :, ph : ph + h, pw : pw + w] = x
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    y = np.zeros((n, oc, oh, ow))
    for b_ in range(n):
        for o in range(oc):
            for i in range(oh):
                for j in range(ow):
                    patch = xpad[b_, :, i * sh : i * sh + kh, j * sw : j * sw + kw]
                    y[b_, o, i, j] = (patch * W[o]).sum() + (b[o] if b is not None else 0.0)
    return y


@pytest.mark.parametrize("x_shape,w_shape,stride,padding", CASES)
def test_conv2d_forward_matches_loops(backend, rng, x_shape, w_shape, stride, padding):
    x, W, b = (
        rng.standard_normal(x_shape),
        rng.standard_normal(w_shape),
        rng.standard_normal(w_shape[0]),
    )
    y = F.conv2d(*(on_device(a, backend.device) for a in (x, W, b)), stride=stride, padding=padding)
    np.testing.assert_allclose(y.numpy(), conv2d_loops(x, W, b, stride, padding), **TOL["loops64"])


@pytest.mark.parametrize("x_shape,w_shape,stride,padding", CASES)
def test_conv2d_grad(backend, rng, x_shape, w_shape, stride, padding):
    x, W, b = (
        rng.standard_normal(x_shape),
        rng.standard_normal(w_shape),
        rng.standard_normal(w_shape[0]),
    )
    check_grad(
        lambda x, W, b: F.conv2d(x, W, b, stride, padding),
        [x, W, b],
        device=backend.device,
        **TOL["gradcheck"],
    )


def test_conv2d_grad_without_bias(backend, rng):
    x, W = rng.standard_normal((2, 2, 5, 5)), rng.standard_normal((3, 2, 3, 3))
    check_grad(
        lambda x, W: F.conv2d(x, W, stride=2, padding=1),
        [x, W],
        device=backend.device,
        **TOL["gradcheck"],
    )


def test_conv2d_float32_stays_float32(backend, rng):
    x = on_device(rng.standard_normal((2, 3, 8, 8)).astype(np.float32), backend.device)
    W = Tensor(
        on_device(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), backend.device),
        requires_grad=True,
    )
    y = F.conv2d(x, W, padding=1)
    y.sum().backward()
    assert y.dtype == np.float32 and W.grad.dtype == np.float32


@pytest.mark.parametrize(
    "x_shape,w_shape,kwargs,match",
    [
        ((2, 3, 5, 5), (4, 2, 3, 3), {}, "channels"),
        ((2, 3, 5), (4, 3, 3, 3), {}, r"\(n, c, h, w\)"),
        ((1, 1, 2, 2), (1, 1, 3, 3), {}, "does not fit"),
        ((1, 1, 5, 5), (1, 1, 3, 3), {"stride": 0}, "stride"),
        ((1, 1, 5, 5), (1, 1, 3, 3), {"padding": (1, 2, 3)}, "padding"),
    ],
)
def test_conv2d_bad_arguments(backend, x_shape, w_shape, kwargs, match):
    x, W = (on_device(np.zeros(shape), backend.device) for shape in (x_shape, w_shape))
    with pytest.raises((ValueError, TypeError), match=match):
        F.conv2d(x, W, **kwargs)
