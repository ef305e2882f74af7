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


_heap_kept = False
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit
TRIM_THRESHOLD = 256 << 20


def keep_freed_memory() -> None:
    """Ask glibc's malloc to keep freed blocks of up to 32 MiB in the heap (and up to 256 MiB of
    free heap before trimming), once per process, the first time a numba_cpu kernel runs.

    Why: a training step allocates its activations, argmax maps and gradients afresh (5-6 MB each
    for the seed CNN at b256). Above glibc's adaptive threshold each one is a fresh mmap, so every
    step page-faults on it again: 3,500 faults per b256 step, which cost 15 ms of a 60 ms step on
    this VM (measured; 20-25% of the step at b64 and b256). It is a process-wide setting, as
    single_threaded_inner_blas is; the cost is that freed memory returns to the OS later (the
    resident size stays near the peak). ENGINE_MALLOC_TUNING=0 leaves malloc alone; other libcs
    (musl, macOS) are left alone too.
    """
    global _heap_kept
    if _heap_kept:
        return
    _heap_kept = True
    if os.environ.get("ENGINE_MALLOC_TUNING", "1") == "0":
        return
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt  # glibc only; AttributeError elsewhere
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h> parameter numbers
    mallopt(m_mmap_threshold, MMAP_THRESHOLD)
    mallopt(m_trim_threshold, TRIM_THRESHOLD)


def run_tasks(body, n_tasks: int, *args) -> None:
    """Call body(*args, lo, hi) on contiguous slices of range(n_tasks), one slice per thread.
    The caller's thread runs the first slice itself; exceptions from any slice propagate."""
    global _pool
    keep_freed_memory()
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
