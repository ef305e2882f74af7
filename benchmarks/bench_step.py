"""Whole seed-CNN training steps (b64, b256) and inference (b256): engine flavours and PyTorch eager.

PyTorch runs in the same session when it is installed (torch.set_num_threads(2)); otherwise its rows
are skipped, never faked. Every contender's first loss / logits are checked against the numpy
flavour's on the same weights and data before timing. img/s = batch / median step time.
"""

from __future__ import annotations

import pytest

from benchmarks import harness
from benchmarks.seed_step import EngineStep, TorchStep

CONTENDERS = [*harness.cpu_flavours(), "torch"]


def _make(who: str, batch: int):
    if who == "torch":
        torch = harness.import_torch()
        if torch is None:
            pytest.skip("PyTorch is not installed: no comparison row")
        return TorchStep(torch, batch)
    return EngineStep(who, batch)


def _record(benchmark, batch, train, ceiling, who):
    seconds = benchmark.stats.stats.median
    flops = harness.seed_cnn_flops(batch, train)
    benchmark.extra_info.update(
        harness.extra_info(
            seconds, flops, 0, ceiling, images_per_s=round(batch / seconds, 1), contender=who
        )
    )


@pytest.mark.parametrize("who", CONTENDERS)
@pytest.mark.parametrize("batch", [64, 256])
def test_train_step(benchmark, gemm_ceiling, who, batch):
    step = _make(who, batch)
    reference = EngineStep("numpy", batch).train_step()
    harness.assert_close(step.train_step(), reference, f"{who} first loss")
    benchmark.pedantic(step.train_step, rounds=15, warmup_rounds=3, iterations=1)
    _record(benchmark, batch, True, gemm_ceiling, who)


@pytest.mark.parametrize("who", CONTENDERS)
def test_inference(benchmark, gemm_ceiling, who):
    batch = 256
    model = _make(who, batch)
    harness.assert_close(model.infer(), EngineStep("numpy", batch).infer(), f"{who} logits")
    benchmark.pedantic(model.infer, rounds=15, warmup_rounds=3, iterations=1)
    _record(benchmark, batch, False, gemm_ceiling, who)
