"""check_grad returns what it checked (a line a reader can see) and still raises on a wrong gradient."""

from __future__ import annotations

import numpy as np
import pytest

from engine import nn
from engine.function import Function
from engine.gradcheck import GradCheckResult, check_grad


def test_check_grad_returns_what_it_checked(rng):
    layer = nn.Linear(3, 2, rng=rng).astype(np.float64)
    result = check_grad(layer, [rng.standard_normal((4, 3))], params=layer.named_parameters())
    assert isinstance(result, GradCheckResult)
    assert result.names == ("input0", "weight", "bias") and result.size == 12 + 6 + 2
    assert 0 <= result.max_abs_error < 1e-6
    assert str(result).startswith("check_grad passed: input0, weight, bias (20 entries)")


class _WrongSquareFn(Function):
    """y = x**2 with the derivative 3x instead of 2x: check_grad must refuse it."""

    def forward(self, x):
        self.x = x
        return x * x

    def backward(self, gy):
        return (3 * self.x * gy,)


def test_check_grad_still_raises_on_a_wrong_gradient(rng):
    with pytest.raises(AssertionError, match="gradient of input0"):
        check_grad(lambda x: _WrongSquareFn.apply(x), [rng.standard_normal((2, 3))])
