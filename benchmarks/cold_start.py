"""Cold and warm first training step of the numba flavour: compilation included, then cache reuse.

    python -m benchmarks.cold_start [--batch 64]

Runs the seed CNN's first training step in two fresh processes that share one empty
NUMBA_CACHE_DIR: the first compiles every kernel it needs (and writes the cache), the second must
load them from the cache (issue 3: first step < 10 s, a second process reuses the cache).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

CHILD = """
import time
t0 = time.perf_counter()
from benchmarks.seed_step import EngineStep
step = EngineStep("numba", {batch})
t1 = time.perf_counter()
step.train_step()
t2 = time.perf_counter()
step.train_step()
t3 = time.perf_counter()
print(f"import {{t1 - t0:.2f}} s, first step {{t2 - t1:.2f}} s, second step {{1e3 * (t3 - t2):.1f}} ms")
"""


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    args = parser.parse_args(argv)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory(prefix="medgrad-numba-cache-") as cache:
        # malloc tuning switched on as a training program does (benchmarks.harness.tune_malloc)
        env = {
            **os.environ,
            "NUMBA_CACHE_DIR": cache,
            "ENGINE_KERNELS": "numba",
            "ENGINE_MALLOC_TUNING": "1",
        }
        for label in ("cold (empty cache)", "warm (cache reused)"):
            done = subprocess.run(
                [sys.executable, "-c", CHILD.format(batch=args.batch)],
                cwd=root,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            print(f"{label}: {done.stdout.strip()}")


if __name__ == "__main__":
    main()
