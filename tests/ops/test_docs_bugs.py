"""Defects found while documenting engine/ops: each test failed before its fix."""

from __future__ import annotations

import numpy as np
import pytest

import engine.functional as F
from engine.gradcheck import check_grad
from engine.tensor import Tensor
from tests.conftest import TOL


@pytest.mark.parametrize(
    "loss,make_input",
    [
        (F.binary_cross_entropy, lambda rng: rng.uniform(0.1, 0.9, (4, 3))),
        (F.binary_cross_entropy_with_logits, lambda rng: rng.standard_normal((4, 3)) * 3),
    ],
)
def test_bce_target_grad(rng, loss, make_input):
    # a float target that requires grad (soft labels from another network) used to get no
    # gradient at all: backward returned None for it, and t.grad stayed None
    check_grad(loss, [make_input(rng), rng.uniform(0.0, 1.0, (4, 3))], **TOL["gradcheck"])


def test_bce_target_grad_at_clamped_log(rng):
    # p = 0 and p = 1 take the clamped log (-100): d/dt of the forward is -(log_p - log_q) / size
    p = Tensor(np.array([0.0, 1.0, 0.5]))
    t = Tensor(np.array([0.3, 0.6, 0.2]), requires_grad=True)
    F.binary_cross_entropy(p, t).backward()
    np.testing.assert_allclose(t.grad, np.array([100.0, -100.0, 0.0]) / 3, rtol=1e-12)
