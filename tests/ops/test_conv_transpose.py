"""conv_transpose2d / conv_transpose3d: gradient checks (float64, random upstream gradient), a
naive scatter-loop oracle, bad arguments, and PyTorch as an optional oracle (marked `oracle`)."""

from __future__ import annotations

import numpy as np
import pytest

import engine.functional as F
from engine.errors import ArgumentError
from engine.gradcheck import check_grad
from engine.tensor import Tensor
from tests.conftest import TOL, cpu_only
from tests.helpers import on_device

OPS = {2: F.conv_transpose2d, 3: F.conv_transpose3d}
CASES = [  # x shape, W shape (c_in, c_out, *k), stride, padding, output_padding
    ((2, 3, 4, 3), (3, 2, 3, 3), 1, 0, 0),
    ((1, 2, 3, 4), (2, 3, 3, 2), 2, 1, 1),  # stride 2, padding, output_padding, non-square
    ((2, 2, 3, 2), (2, 2, 2, 3), (2, 3), (0, 1), (1, 2)),
    ((2, 2, 2, 3, 2), (2, 3, 2, 2, 3), 1, 0, 0),
    ((1, 2, 3, 2, 3), (2, 2, 3, 2, 2), 2, 1, 1),  # stride 2, padding, output_padding, non-cubic
    ((1, 3, 2, 3, 2), (3, 2, 2, 3, 2), (2, 1, 3), (1, 0, 0), (0, 0, 2)),
]


def _tuple(v, nd):
    return (v,) * nd if isinstance(v, int) else tuple(v)


def conv_transpose_loops(x, W, b, stride, padding, output_padding):
    """Direct definition: every input value scatters its kernel, y[n, :, *(i s + t - p)] +=
    x[n, c, *i] W[c, :, *t]; positions in the padding are dropped, then b[j] is added."""
    nd = x.ndim - 2
    s, p, op = (_tuple(v, nd) for v in (stride, padding, output_padding))
    n, c_in, *size = x.shape
    c_out, k = W.shape[1], W.shape[2:]
    out = [
        (i - 1) * s_ - 2 * p_ + k_ + o for i, s_, p_, k_, o in zip(size, s, p, k, op, strict=True)
    ]
    full = np.zeros(
        (n, c_out, *((i - 1) * s_ + k_ + o for i, s_, k_, o in zip(size, s, k, op, strict=True)))
    )
    for b_ in range(n):
        for c in range(c_in):
            for i in np.ndindex(*size):
                for t in np.ndindex(*k):
                    at = tuple(i_ * s_ + t_ for i_, s_, t_ in zip(i, s, t, strict=True))
                    full[(b_, slice(None), *at)] += x[(b_, c, *i)] * W[(c, slice(None), *t)]
    y = full[(slice(None), slice(None), *(slice(p_, p_ + o) for p_, o in zip(p, out, strict=True)))]
    return y + (0.0 if b is None else b.reshape(-1, *(1,) * nd))


def _inputs(rng, x_shape, w_shape):
    return (
        rng.standard_normal(x_shape),
        rng.standard_normal(w_shape),
        rng.standard_normal(w_shape[1]),
    )


@pytest.mark.parametrize("x_shape,w_shape,stride,padding,output_padding", CASES)
def test_conv_transpose_forward_matches_loops(
    backend, rng, x_shape, w_shape, stride, padding, output_padding
):
    x, W, b = _inputs(rng, x_shape, w_shape)
    args = (on_device(a, backend.device) for a in (x, W, b))
    y = OPS[len(x_shape) - 2](*args, stride, padding, output_padding)
    expected = conv_transpose_loops(x, W, b, stride, padding, output_padding)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y.numpy(), expected, **TOL["loops64"])


@pytest.mark.parametrize("x_shape,w_shape,stride,padding,output_padding", CASES)
def test_conv_transpose_grad(backend, rng, x_shape, w_shape, stride, padding, output_padding):
    op = OPS[len(x_shape) - 2]
    check_grad(
        lambda x, W, b: op(x, W, b, stride, padding, output_padding),
        list(_inputs(rng, x_shape, w_shape)),
        device=backend.device,
        **TOL["gradcheck"],
    )


@pytest.mark.parametrize("nd", [2, 3])
def test_conv_transpose_grad_without_bias(backend, rng, nd):
    x = rng.standard_normal((2, 2, 3, 2, 3)[: nd + 2])
    W = rng.standard_normal((2, 3, 3, 2, 2)[: nd + 2])
    check_grad(
        lambda x, W: OPS[nd](x, W, stride=2, padding=1, output_padding=1),
        [x, W],
        device=backend.device,
        **TOL["gradcheck"],
    )


def test_conv_transpose_inverts_conv_shapes(backend, rng):
    """A stride-2 conv maps 9 and 10 onto 5; output_padding picks which one comes back. W
    (c_in, c_out, *k) is the weight (oc, c, *k) of the conv that the transposed conv inverts."""
    x = on_device(rng.standard_normal((1, 2, 5, 5, 5)), backend.device)
    W = on_device(rng.standard_normal((2, 3, 3, 3, 3)), backend.device)
    y = F.conv_transpose3d(x, W, stride=2, padding=1, output_padding=(0, 1, 0))
    assert y.shape == (1, 3, 9, 10, 9)
    assert F.conv3d(y, W, stride=2, padding=1).shape == x.shape


@pytest.mark.parametrize(
    "nd,x_shape,w_shape,kwargs,match",
    [
        (2, (1, 3, 4, 4), (2, 3, 3, 3), {}, "x has 3 channels but W"),
        (3, (1, 2, 4, 4), (2, 3, 3, 3, 3), {}, r"x \(n, c, d, h, w\)"),
        (2, (1, 2, 4, 4), (2, 3, 3, 3, 3), {}, r"W \(c_in, c_out, kh, kw\)"),
        (2, (1, 2, 4, 4), (2, 3, 3, 3), {"stride": 2, "output_padding": 2}, "output_padding"),
        (3, (1, 2, 4, 4, 4), (2, 3, 3, 3, 3), {"output_padding": 1}, "smaller than stride"),
        (2, (1, 2, 4, 4), (2, 3, 3, 3), {"output_padding": -1}, "output_padding"),
        (2, (1, 2, 4, 4), (2, 3, 3, 3), {"padding": -1}, "padding must be >= 0"),
        (3, (1, 2, 1, 4, 4), (2, 3, 1, 3, 3), {"padding": (1, 0, 0)}, "crops the whole output"),
        (3, (1, 2, 4, 4, 4), (2, 3, 3, 3, 3), {"stride": (2, 2)}, "stride must be .* 3 ints"),
        (2, (1, 2, 4, 4), (2, 3, 3, 3), {"stride": 0}, "stride must be >= 1"),
    ],
)
def test_conv_transpose_bad_arguments(backend, nd, x_shape, w_shape, kwargs, match):
    x, W = (on_device(np.zeros(shape), backend.device) for shape in (x_shape, w_shape))
    with pytest.raises(ArgumentError, match=match):
        OPS[nd](x, W, **kwargs)


def test_conv_transpose_bias_is_per_output_channel(backend):
    x, W = (on_device(np.zeros(s), backend.device) for s in ((1, 2, 3, 3), (2, 5, 1, 1)))
    with pytest.raises(ArgumentError, match=r"bias b must have shape \(5,\)"):
        F.conv_transpose2d(x, W, on_device(np.zeros(2), backend.device))


@pytest.mark.oracle
@cpu_only("PyTorch is the oracle on the CPU; the backends agree with the loops above")
@pytest.mark.parametrize("x_shape,w_shape,stride,padding,output_padding", CASES)
def test_conv_transpose_matches_torch(rng, x_shape, w_shape, stride, padding, output_padding):
    torch = pytest.importorskip("torch")
    nd = len(x_shape) - 2
    x, W, b = _inputs(rng, x_shape, w_shape)
    theirs = [torch.tensor(a, requires_grad=True) for a in (x, W, b)]
    torch_op = {2: torch.nn.functional.conv_transpose2d, 3: torch.nn.functional.conv_transpose3d}
    yt = torch_op[nd](*theirs, stride=stride, padding=padding, output_padding=output_padding)
    gy = rng.standard_normal(yt.shape)
    yt.backward(torch.tensor(gy))
    ours = [Tensor(a, requires_grad=True) for a in (x, W, b)]
    y = OPS[nd](*ours, stride=stride, padding=padding, output_padding=output_padding)
    y.backward(gy)
    np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), **TOL["loops64"])
    for mine, torch_t in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(mine.grad, torch_t.grad.numpy(), **TOL["loops64"])
