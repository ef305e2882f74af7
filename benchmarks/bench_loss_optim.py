"""Softmax cross-entropy and optimizer-update kernels per flavour (seed CNN sizes)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import harness


def _args(name, batch):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((batch, 10)).astype(np.float32)
    t = rng.integers(0, 10, batch)
    e = np.exp(logits)
    probs = e / e.sum(axis=1, keepdims=True)
    p, g, m = (rng.standard_normal((64, 1600)).astype(np.float32) for _ in range(3))
    v = np.abs(rng.standard_normal((64, 1600))).astype(np.float32)
    table = {
        "softmax_cross_entropy_forward": ((logits, t), 4 * logits.size, harness.nbytes(logits) * 2),
        "softmax_cross_entropy_backward": (
            (probs, t, np.asarray(1.0, np.float32)),
            2 * probs.size,
            2 * probs.nbytes,
        ),
        "sgd_update": ((p, g, m, 0.01, 0.9, False, 0.0), 4 * p.size, 5 * p.nbytes),
        "adam_update": ((p, g, m, v, 3, 1e-3, 0.9, 0.999, 1e-8, 0.0), 12 * p.size, 7 * p.nbytes),
    }
    return table[name]


@pytest.mark.parametrize("flavour", harness.cpu_flavours())
@pytest.mark.parametrize(
    "name",
    [
        "softmax_cross_entropy_forward",
        "softmax_cross_entropy_backward",
        "sgd_update",
        "adam_update",
    ],
)
@pytest.mark.parametrize("batch", [64, 256])
def test_loss_optim(benchmark, gemm_ceiling, flavour, name, batch):
    if name in ("sgd_update", "adam_update") and batch != 64:
        pytest.skip("optimizer updates do not depend on the batch")
    args, flops, moved = _args(name, batch)
    if name in ("sgd_update", "adam_update"):  # in place: check on copies, time on the originals
        ref_args = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
        got_args = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
        from kernels import numpy_cpu

        numpy_cpu.REFERENCE[name](*ref_args)
        harness.kernel(flavour, name)(*got_args)
        harness.assert_close(got_args[:4], ref_args[:4], f"{flavour}:{name}")
    harness.run_kernel(benchmark, flavour, name, args, flops, moved, gemm_ceiling)
