"""run_tasks(): split a kernel body's task range over a few threads; the bodies release the GIL.

Why threads and not `numba.prange`: the parallel (parfor) versions of the conv bodies took 2-7 s
of CPU each to compile (cold first step > 20 s CPU), and OpenMP's barrier stalls whenever another
process holds one of the 2 cores. Serial `nogil` bodies compile in a fraction of that, and each
thread here runs one contiguous slice of tasks [lo, hi): results do not depend on the thread count.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

_pool: ThreadPoolExecutor | None = None


def threads() -> int:
    """Worker threads: NUMBA_NUM_THREADS if set, else the CPUs this process may run on."""
    env = os.environ.get("NUMBA_NUM_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def run_tasks(body, n_tasks: int, *args) -> None:
    """Call body(*args, lo, hi) on contiguous slices of range(n_tasks), one slice per thread.
    The caller's thread runs the first slice itself; exceptions from any slice propagate."""
    global _pool
    k = min(threads(), n_tasks)
    if k <= 1:
        body(*args, 0, n_tasks)
        return
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=threads() - 1, thread_name_prefix="medgrad-kernel")
    bounds = [n_tasks * i // k for i in range(k + 1)]
    futures = [_pool.submit(body, *args, bounds[i], bounds[i + 1]) for i in range(1, k)]
    body(*args, bounds[0], bounds[1])
    for f in futures:
        f.result()
