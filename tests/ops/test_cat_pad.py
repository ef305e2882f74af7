"""F.cat and F.pad: gradient checks on every backend, PyTorch cross-checks, argument errors."""

from __future__ import annotations

import numpy as np
import pytest

import engine.functional as F
from engine.errors import ArgumentError
from engine.gradcheck import check_grad
from engine.tensor import Tensor
from tests.conftest import TOL
from tests.helpers import on_device, to_host


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_cat_grad(backend, rng, axis):
    shapes = [[2, 3, 4], [2, 3, 4], [2, 3, 4]]
    for i, size in enumerate((1, 2, 3)):  # unequal sizes along the cat axis
        shapes[i][axis] = size
    xs = [rng.standard_normal(shape) for shape in shapes]
    check_grad(lambda *t: F.cat(list(t), axis=axis), xs, device=backend.device, **TOL["gradcheck"])


@pytest.mark.parametrize(
    "pad", [(1, 2), (0, 1, 2, 0), (1, 1, 1, 1, 1, 1), (0, 0, 3, 1)], ids=lambda p: f"pad{p}"
)
def test_pad_grad(backend, rng, pad):
    x = rng.standard_normal((2, 3, 4))
    check_grad(lambda t: F.pad(t, pad, value=0.5), [x], device=backend.device, **TOL["gradcheck"])


def test_pad_and_cat_values(backend, rng):
    x = rng.standard_normal((2, 3))
    y = to_host(F.pad(on_device(x, backend.device), (1, 0, 0, 2), value=-7.0))
    expected = np.full((4, 4), -7.0)
    expected[:2, 1:] = x
    np.testing.assert_array_equal(y, expected)
    a, b = rng.standard_normal((2, 1)), rng.standard_normal((2, 2))
    got = F.cat([on_device(a, backend.device), on_device(b, backend.device)], axis=1)
    np.testing.assert_array_equal(to_host(got), np.hstack([a, b]))


def test_cat_gradients_keep_each_input_dtype(backend, rng):
    a = Tensor(on_device(rng.standard_normal((2, 2)).astype(np.float32), backend.device), True)
    b = Tensor(on_device(rng.standard_normal((1, 2)), backend.device), requires_grad=True)
    y = F.cat([a, b], axis=0)
    assert y.dtype == np.float64  # promoted, as torch.cat
    y.sum().backward()
    assert a.grad.dtype == np.float32 and b.grad.dtype == np.float64
    np.testing.assert_array_equal(to_host(a.grad), np.ones((2, 2)))


def test_cat_one_tensor_and_zero_pad_are_identities(backend, rng):
    x = Tensor(on_device(rng.standard_normal((2, 3)), backend.device))
    assert F.cat([x], axis=1) is x
    assert F.pad(x, (0, 0, 0, 0)) is x


def test_cat_and_pad_errors_name_the_argument(backend):
    a, b = (on_device(np.zeros(shape), backend.device) for shape in ((2, 3), (2, 4)))
    with pytest.raises(ArgumentError, match=r"tensors\[1\] has shape \(2, 4\).*\(2, 3\).*axis 0"):
        F.cat([a, b], axis=0)
    with pytest.raises(ArgumentError, match="empty"):
        F.cat([], axis=0)
    with pytest.raises(ArgumentError, match="list or tuple"):
        F.cat(Tensor(a), axis=0)
    with pytest.raises(ArgumentError, match="axis 2 out of range"):
        F.cat([a, a], axis=2)
    with pytest.raises(ArgumentError, match=r"tensors\[1\]"):
        F.cat([a, on_device(np.zeros((2, 3, 1)), backend.device)], axis=0)
    with pytest.raises(ArgumentError, match="even length"):
        F.pad(a, (1, 2, 3))
    with pytest.raises(ArgumentError, match="at most 2 \\* x.ndim = 4"):
        F.pad(a, (1,) * 6)
    with pytest.raises(ArgumentError, match=">= 0"):
        F.pad(a, (1, -1))
    with pytest.raises(ArgumentError, match="tuple of ints"):
        F.pad(a, (1.5, 1))


@pytest.mark.oracle
def test_cat_and_pad_match_torch(rng):
    torch = pytest.importorskip("torch")
    xs = [rng.standard_normal((2, size, 3)) for size in (1, 4)]
    pads = [(1, 2), (0, 1, 2, 0), (2, 0, 1, 1, 0, 3)]
    for case in [("cat", None), *(("pad", p) for p in pads)]:
        ours = [Tensor(x.copy(), requires_grad=True) for x in xs]
        theirs = [torch.tensor(x, requires_grad=True) for x in xs]
        if case[0] == "cat":
            y, ty = F.cat(ours, axis=1), torch.cat(theirs, dim=1)
        else:
            ours, theirs = ours[1:], theirs[1:]
            y = F.pad(ours[0], case[1], value=0.25)
            ty = torch.nn.functional.pad(theirs[0], case[1], value=0.25)
        gy = rng.standard_normal(ty.shape)
        y.backward(gy)
        ty.backward(torch.tensor(gy))
        np.testing.assert_array_equal(y.data, ty.detach().numpy(), err_msg=str(case))
        for ours_x, theirs_x in zip(ours, theirs, strict=True):
            np.testing.assert_array_equal(ours_x.grad, theirs_x.grad.numpy(), err_msg=str(case))
