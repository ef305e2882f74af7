"""Interleaved comparison of the seed CNN: engine flavours vs PyTorch, the table in README.md.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.compare --runs 6

Each run times every contender once per workload, round-robin, in this one process (the machine is
shared and noisy: a baseline measured at another moment is not comparable). A run's figure is the
median of `--steps` timed calls; the table shows the median over runs and [min-max of run medians].
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks import harness
from benchmarks.seed_step import EngineStep, TorchStep

WORKLOADS = [("train", 64), ("train", 256), ("infer", 256)]
# Pause before each contender: after a multi-threaded call OpenBLAS's idle workers spin
# (sched_yield) for about 0.1 s, PyTorch's OpenMP workers likewise, and whoever runs next shares
# the 2 cores with them (measured: a b64 numba step right after the 2-thread GEMM ceiling ran at
# 58% of its speed; the PyTorch rows after the numpy flavour's were hit the same way).
SETTLE_S = 0.3


def _contenders(batch: int, torch, all_live: bool, embedded: bool) -> dict:
    out = {
        flavour: EngineStep(flavour, batch, all_live=all_live, program=not embedded)
        for flavour in harness.cpu_flavours()
    }
    if torch is not None:
        out["torch"] = TorchStep(torch, batch, all_live=all_live)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=6, help="interleaved rounds (default 6)")
    parser.add_argument("--steps", type=int, default=10, help="timed calls per run (default 10)")
    parser.add_argument(
        "--all-live",
        action="store_true",
        help="shift the conv biases so every pooling window passes a gradient "
        "(the numba flavour's backward at its worst case)",
    )
    parser.add_argument(
        "--embedded",
        action="store_true",
        help="no program-level settings: malloc untuned, BLAS at the process's threads outside "
        "the numba kernels (the engine embedded in a program that sets neither)",
    )
    args = parser.parse_args(argv)
    if not args.embedded:
        harness.tune_malloc()
    torch = harness.import_torch()
    for key, value in harness.environment().items():
        print(f"# {key}: {value}")
    models = {
        (kind, b): _contenders(b, torch, args.all_live, args.embedded) for kind, b in WORKLOADS
    }
    rates = {(kind, b, who): [] for (kind, b), c in models.items() for who in c}
    ceilings = []
    for run in range(args.runs):
        ceilings.append(harness.gemm_ceiling(repeat=3))
        for (kind, batch), contenders in models.items():
            for who, m in contenders.items():
                fn = m.train_step if kind == "train" else m.infer
                time.sleep(SETTLE_S)
                t = harness.time_calls(fn, warmup=2, repeat=args.steps)
                rates[(kind, batch, who)].append(batch / np.median(t))
        print(f"# run {run + 1}/{args.runs} done, GEMM ceiling {ceilings[-1]:.0f} GFLOP/s")
    ceiling = float(np.median(ceilings))
    print(
        f"\nfloat32 GEMM ceiling (NumPy BLAS, 2 threads): median {ceiling:.0f} GFLOP/s "
        f"[{min(ceilings):.0f}-{max(ceilings):.0f}]"
    )
    print(
        "\n| workload | contender | img/s median [min-max] | vs numpy | vs torch | % GEMM ceiling |"
    )
    print("|---|---|---|---|---|---|")
    for kind, batch in WORKLOADS:
        per_image = harness.seed_cnn_flops(1, kind == "train")
        for who in models[(kind, batch)]:
            r = np.array(rates[(kind, batch, who)])
            # ratios per run (same moment, same load), then their median
            vs = {
                base: f"{np.median(r / np.array(rates[(kind, batch, base)])):.2f}x"
                if (kind, batch, base) in rates
                else "-"
                for base in ("numpy", "torch")
            }
            pct = 100 * np.median(r) * per_image / 1e9 / ceiling
            print(
                f"| {kind} b{batch} | {who} | {np.median(r):,.0f} [{r.min():,.0f}-{r.max():,.0f}] "
                f"| {vs['numpy']} | {vs['torch']} | {pct:.1f}% |"
            )


if __name__ == "__main__":
    main()
