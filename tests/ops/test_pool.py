"""max_pool2d and avg_pool2d: gradient checks, naive-loop forward oracles, the max-pool tie rule."""

from __future__ import annotations

import numpy as np
import pytest

import engine.functional as F
from engine.gradcheck import check_grad
from engine.tensor import Tensor
from tests.conftest import TOL
from tests.helpers import distinct, on_device, to_host

CASES = [  # x shape, kernel_size, stride, padding
    ((2, 3, 6, 6), 2, None, 0),
    ((2, 2, 7, 6), 3, 2, 1),  # overlapping windows, stride 2, padding 1
    ((1, 2, 5, 8), (2, 3), (1, 2), (1, 1)),  # non-square everything
    ((3, 1, 5, 5), 3, 1, 0),
]


def pool_loops(x, kernel_size, stride, padding, reduce):
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    stride = (kh, kw) if stride is None else stride
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    n, c, h, w = x.shape
    fill = -np.inf if reduce == "max" else 0.0
    xpad = np.full((n, c, h + 2 * ph, w + 2 * pw), fill)
    xpad[:, :, ph : ph + h, pw : pw + w] = x
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    y = np.zeros((n, c, oh, ow))
    for b in range(n):
        for ch in range(c):
            for i in range(oh):
                for j in range(ow):
                    win = xpad[b, ch, i * sh : i * sh + kh, j * sw : j * sw + kw]
                    y[b, ch, i, j] = win.max() if reduce == "max" else win.sum() / (kh * kw)
    return y


@pytest.mark.parametrize("x_shape,kernel_size,stride,padding", CASES)
def test_max_pool2d_forward_matches_loops(backend, rng, x_shape, kernel_size, stride, padding):
    x = rng.standard_normal(x_shape)
    y = F.max_pool2d(on_device(x, backend.device), kernel_size, stride, padding)
    np.testing.assert_allclose(
        y.numpy(), pool_loops(x, kernel_size, stride, padding, "max"), **TOL["loops64"]
    )


@pytest.mark.parametrize("x_shape,kernel_size,stride,padding", CASES)
def test_avg_pool2d_forward_matches_loops(backend, rng, x_shape, kernel_size, stride, padding):
    x = rng.standard_normal(x_shape)
    y = F.avg_pool2d(on_device(x, backend.device), kernel_size, stride, padding)
    np.testing.assert_allclose(
        y.numpy(), pool_loops(x, kernel_size, stride, padding, "avg"), **TOL["loops64"]
    )


@pytest.mark.parametrize("x_shape,kernel_size,stride,padding", CASES)
def test_max_pool2d_grad(backend, rng, x_shape, kernel_size, stride, padding):
    x = distinct(rng, x_shape)  # tie-free: distinct values 0.01 apart
    check_grad(
        lambda x: F.max_pool2d(x, kernel_size, stride, padding),
        [x],
        device=backend.device,
        **TOL["gradcheck"],
    )


@pytest.mark.parametrize("x_shape,kernel_size,stride,padding", CASES)
def test_avg_pool2d_grad(backend, rng, x_shape, kernel_size, stride, padding):
    x = rng.standard_normal(x_shape)
    check_grad(
        lambda x: F.avg_pool2d(x, kernel_size, stride, padding),
        [x],
        device=backend.device,
        **TOL["gradcheck"],
    )


def test_max_pool2d_tie_gradient_goes_to_first_maximum(backend):
    # every window is constant: all four taps tie, the first (top-left) one takes the gradient
    x = Tensor(on_device(np.ones((1, 1, 4, 4)), backend.device), requires_grad=True)
    y = F.max_pool2d(x, 2)
    y.backward(on_device(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]), backend.device))
    expected = np.zeros((4, 4))
    expected[0, 0], expected[0, 2], expected[2, 0], expected[2, 2] = 1, 2, 3, 4
    gx = to_host(x.grad)
    np.testing.assert_array_equal(gx[0, 0], expected)
    assert gx.sum() == y.size * 2.5  # nothing lost, nothing doubled


def test_max_pool2d_padding_never_wins(backend):
    x = on_device(-np.arange(1.0, 10.0).reshape(1, 1, 3, 3), backend.device)  # all negative
    y = F.max_pool2d(Tensor(x, requires_grad=True), 3, stride=1, padding=1).numpy()
    assert np.isfinite(y).all() and y.max() == -1.0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"kernel_size": 2, "padding": 2}, "half"),
        ({"kernel_size": 0}, ">= 1"),
        ({"kernel_size": 9}, "does not fit"),
    ],
)
def test_pool_bad_arguments(backend, kwargs, match):
    x = on_device(np.zeros((1, 1, 4, 4)), backend.device)
    for pool in (F.max_pool2d, F.avg_pool2d):
        with pytest.raises(ValueError, match=match):
            pool(x, **kwargs)
