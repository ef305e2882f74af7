"""The numba_cuda kernels' index logic, without a GPU: Numba's CUDA simulator against numpy_cpu.

NUMBA_ENABLE_CUDASIM must be set before Numba is first imported, and the rest of the suite has
imported it (the numba CPU flavour) long before this module. So in the ordinary run this module
holds one test that runs this same file in a fresh `python -m pytest` with the simulator on; in that
child the parametrised parity tests below are collected. The launchers are the real ones from
kernels/numba_cuda/launchers.py: written against `xp`, they take NumPy arrays here. Shapes are tiny
(the simulator runs every thread as a Python thread); stride, padding, non-square and batch 1 are
all covered, in float32 and float64, with the TOL table of tests/conftest.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TOL
from tests.helpers import distinct

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
ROOT = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT_S = 240  # the child takes ~20 s on 2 cores; a hang must fail, not stall CI


if not SIMULATED:

    def test_numba_cuda_kernels_under_simulator():
        """Run this file again with the simulator on; every parity case must pass there."""
        env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        cmd = [sys.executable, "-m", "pytest", str(Path(__file__)), "-q", "-p", "no:cacheprovider"]
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=CHILD_TIMEOUT_S)  # fmt: skip
        out = done.stdout + done.stderr
        assert done.returncode == 0, f"simulator tests failed:\n{out[-6000:]}"
        passed = re.search(r"(\d+) passed", out)
        assert passed and int(passed.group(1)) >= 50, f"too few simulator tests ran:\n{out[-3000:]}"
        assert "failed" not in out and "skipped" not in out, out[-3000:]

else:
    from kernels.numba_cuda import launchers
    from kernels.numpy_cpu import KERNELS as REF

    DTYPES = [np.float32, np.float64]
    CONV = [  # x shape, W shape, stride, padding
        ((2, 2, 5, 4), (3, 2, 3, 2), (1, 1), (0, 0)),
        ((1, 2, 5, 5), (2, 2, 3, 3), (2, 2), (1, 1)),  # batch 1, stride 2, padding 1
        ((2, 1, 4, 6), (2, 1, 2, 3), (1, 2), (0, 1)),  # non-square everything
    ]
    POOL = [  # x shape, kernel_size, stride, padding
        ((2, 2, 4, 6), (2, 2), (2, 2), (0, 0)),
        ((1, 2, 5, 5), (3, 3), (2, 2), (1, 1)),
        ((2, 1, 4, 5), (2, 3), (1, 2), (1, 1)),  # overlapping windows, non-square
    ]

    def tol(dtype, scale: float = 1.0) -> dict:
        """The parity tolerance of `dtype`; float32's atol scaled with the reduction length."""
        if dtype == np.float64:
            return TOL["parity64"]
        return {"atol": TOL["parity32"]["atol"] * scale, "rtol": TOL["parity32"]["rtol"]}

    def check(got, expected, dtype, scale: float = 1.0):
        assert got.dtype == expected.dtype, (got.dtype, expected.dtype)
        assert got.shape == expected.shape, (got.shape, expected.shape)
        np.testing.assert_allclose(got, expected, **tol(dtype, scale))

    @pytest.fixture
    def rng():
        return np.random.default_rng(0)

    def test_simulator_is_on():
        from numba import config

        assert config.ENABLE_CUDASIM

    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("x_shape,W_shape,stride,padding", CONV)
    def test_im2col_col2im_parity(rng, dtype, x_shape, W_shape, stride, padding):
        x = rng.standard_normal(x_shape).astype(dtype)
        ks = W_shape[2:]
        cols = launchers.im2col(x, ks, stride, padding)
        check(cols, REF["im2col"](x, ks, stride, padding), dtype)
        g = rng.standard_normal(cols.shape).astype(dtype)
        check(launchers.col2im(g, x_shape, ks, stride, padding),
              REF["col2im"](g, x_shape, ks, stride, padding), dtype)  # fmt: skip

    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("bias", [True, False])
    @pytest.mark.parametrize("x_shape,W_shape,stride,padding", CONV)
    def test_conv2d_parity(rng, dtype, bias, x_shape, W_shape, stride, padding):
        x = rng.standard_normal(x_shape).astype(dtype)
        W = rng.standard_normal(W_shape).astype(dtype)
        b = rng.standard_normal(W_shape[0]).astype(dtype) if bias else None
        y = launchers.conv2d_forward(x, W, b, stride, padding)
        check(y, REF["conv2d_forward"](x, W, b, stride, padding), dtype)
        gy = rng.standard_normal(y.shape).astype(dtype)
        check(launchers.conv2d_backward_input(gy, W, x_shape, stride, padding),
              REF["conv2d_backward_input"](gy, W, x_shape, stride, padding), dtype)  # fmt: skip
        check(
            launchers.conv2d_backward_weight(gy, x, W_shape[2:], stride, padding),
            REF["conv2d_backward_weight"](gy, x, W_shape[2:], stride, padding),
            dtype,
            scale=4,
        )  # fmt: skip  (a sum over n*oh*ow up to 40 products)

    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("x_shape,kernel_size,stride,padding", POOL)
    def test_max_pool2d_parity(rng, dtype, x_shape, kernel_size, stride, padding):
        x = distinct(rng, x_shape).astype(dtype)  # no ties: the argmax is unambiguous
        y, argmax = launchers.max_pool2d_forward(x, kernel_size, stride, padding)
        y_ref, argmax_ref = REF["max_pool2d_forward"](x, kernel_size, stride, padding)
        check(y, y_ref, dtype)
        assert argmax.dtype == np.int32
        np.testing.assert_array_equal(argmax, argmax_ref)
        gy = rng.standard_normal(y.shape).astype(dtype)
        check(launchers.max_pool2d_backward(gy, argmax, x_shape, kernel_size, stride, padding),
              REF["max_pool2d_backward"](gy, argmax_ref, x_shape, kernel_size, stride, padding),
              dtype)  # fmt: skip

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_max_pool2d_ties_take_the_first_tap(dtype):
        x = np.zeros((1, 1, 4, 4), dtype=dtype)  # every window a tie: the first tap must win
        _, argmax = launchers.max_pool2d_forward(x, (2, 2), (2, 2), (0, 0))
        np.testing.assert_array_equal(argmax, 0)

    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("x_shape,kernel_size,stride,padding", POOL)
    def test_avg_pool2d_parity(rng, dtype, x_shape, kernel_size, stride, padding):
        x = rng.standard_normal(x_shape).astype(dtype)
        y = launchers.avg_pool2d_forward(x, kernel_size, stride, padding)
        check(y, REF["avg_pool2d_forward"](x, kernel_size, stride, padding), dtype)
        gy = rng.standard_normal(y.shape).astype(dtype)
        check(launchers.avg_pool2d_backward(gy, x_shape, kernel_size, stride, padding),
              REF["avg_pool2d_backward"](gy, x_shape, kernel_size, stride, padding), dtype)  # fmt: skip

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_relu_parity(rng, dtype):
        x = rng.standard_normal((3, 4, 5)).astype(dtype).transpose(2, 0, 1)  # non-contiguous
        y = launchers.relu_forward(x)
        check(y, REF["relu_forward"](x), dtype)
        gy = rng.standard_normal(y.shape).astype(dtype)
        check(launchers.relu_backward(gy, y), REF["relu_backward"](gy, y), dtype)

    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("n,k", [(5, 7), (1, 3)])
    def test_softmax_cross_entropy_parity(rng, dtype, n, k):
        logits = (rng.standard_normal((n, k)) * 30).astype(dtype)  # large logits: the max shift
        t = rng.integers(0, k, n)
        loss, probs = launchers.softmax_cross_entropy_forward(logits, t)
        loss_ref, probs_ref = REF["softmax_cross_entropy_forward"](logits, t)
        check(loss, loss_ref, dtype)
        check(probs, probs_ref, dtype)
        gloss = np.asarray(0.7, dtype=dtype)
        check(launchers.softmax_cross_entropy_backward(probs, t, gloss),
              REF["softmax_cross_entropy_backward"](probs_ref, t, gloss), dtype)  # fmt: skip

    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize(
        "momentum,nesterov,weight_decay",
        [(0.0, False, 0.0), (0.0, False, 0.1), (0.9, False, 0.0), (0.9, True, 0.01)],  # fmt: skip
    )
    def test_sgd_update_parity(rng, dtype, momentum, nesterov, weight_decay):
        p, g = (rng.standard_normal((3, 5)).astype(dtype) for _ in range(2))
        v = rng.standard_normal((3, 5)).astype(dtype) if momentum else None
        p_ref, v_ref = p.copy(), None if v is None else v.copy()
        for _ in range(2):  # two steps: the velocity carries over
            launchers.sgd_update(p, g, v, 0.1, momentum, nesterov, weight_decay)
            REF["sgd_update"](p_ref, g, v_ref, 0.1, momentum, nesterov, weight_decay)
        check(p, p_ref, dtype)
        if momentum:
            check(v, v_ref, dtype)

    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("weight_decay", [0.0, 0.01])
    def test_adam_update_parity(rng, dtype, weight_decay):
        p, g = (rng.standard_normal((4, 3)).astype(dtype) for _ in range(2))
        m, v = np.zeros_like(p), np.zeros_like(p)
        p_ref, m_ref, v_ref = p.copy(), m.copy(), v.copy()
        for step in (1, 2, 3):
            launchers.adam_update(p, g, m, v, step, 1e-2, 0.9, 0.999, 1e-8, weight_decay)
            REF["adam_update"](p_ref, g, m_ref, v_ref, step, 1e-2, 0.9, 0.999, 1e-8, weight_decay)
        for got, expected in ((p, p_ref), (m, m_ref), (v, v_ref)):
            check(got, expected, dtype)

    def test_every_kernel_is_covered():
        """A kernel added to KERNEL_NAMES must get a Numba body and a case here."""
        from kernels import KERNEL_NAMES

        assert set(launchers.KERNELS) == set(KERNEL_NAMES)
