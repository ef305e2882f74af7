"""The numba_cpu flavour's threading: run_tasks() splits a kernel body's task range over a few
threads (the bodies release the GIL), with BLAS held at one thread only while such a call runs;
and tune_malloc(), the opt-in glibc heap setting that spares every training step its page faults.

Why threads and not `numba.prange`: the parallel (parfor) versions of the conv bodies took 2-7 s
of CPU each to compile (cold first step > 20 s CPU), and OpenMP's barrier stalls whenever another
process holds one of the 2 cores. Serial `nogil` bodies compile in a fraction of that, and each
thread here runs one contiguous slice of tasks [lo, hi): results do not depend on the thread count.
Nothing here changes the process at import: a library embedded in someone's program leaves its
BLAS threads and its malloc as it found them, unless the program asks (tune_malloc).
"""

from __future__ import annotations

import os
import threading
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


CHUNK_ELEMS = 1 << 17  # elements of one GEMM task's columns: 512 KiB in float32, fits L2


def images_per_task(n: int, per_image: int) -> int:
    """Images per task of a chunked kernel: per_image elements of work buffer each, about
    CHUNK_ELEMS in all (they stay in L2), and at least two tasks per thread so the threads can
    balance."""
    by_cache = max(1, CHUNK_ELEMS // max(per_image, 1))
    by_balance = max(1, -(-n // (2 * threads())))
    return min(by_cache, by_balance)


class _InnerBlas:
    """BLAS at one thread while run_tasks(..., blas=True) runs, the caller's settings restored after.

    Why: the kernel bodies call BLAS (np.dot in Numba goes to SciPy's BLAS) from the threads of
    run_tasks; a multi-threaded BLAS inside them oversubscribes the cores (conv2's GEMM ran at 57
    instead of 128 GFLOP/s). threadpoolctl's `threadpool_limits` would do it, but it inspects the
    loaded libraries on every entry (about 1 ms measured, a tenth of a b64 step); here they are
    inspected once and each call only reads and sets the thread counts (about 5 us for the two
    OpenBLAS builds that NumPy and SciPy load). Nested and concurrent calls share one limit,
    counted under a lock, so the outermost exit restores exactly what it found. Needs
    threadpoolctl (and SciPy, which Numba's np.dot calls); without them nothing is limited: the
    kernels stay correct, only slower.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._libs: list | None = None  # BLAS controllers, found on the first use
        self._saved: list[int] = []
        self._depth = 0

    def _blas_libs(self) -> list:
        if self._libs is None:
            try:
                import scipy.linalg.cython_blas  # noqa: F401  (loads the BLAS Numba will call)
                from threadpoolctl import ThreadpoolController
            except ImportError:
                self._libs = []
            else:
                libs = ThreadpoolController().lib_controllers
                self._libs = [lib for lib in libs if lib.user_api == "blas"]
        return self._libs

    def __enter__(self) -> None:
        with self._lock:
            if self._depth == 0:
                libs = self._blas_libs()
                self._saved = [lib.get_num_threads() for lib in libs]
                for lib, n in zip(libs, self._saved, strict=True):
                    if n != 1:
                        lib.set_num_threads(1)
            self._depth += 1

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                for lib, n in zip(self._libs, self._saved, strict=True):
                    if n != 1:
                        lib.set_num_threads(n)


single_threaded_blas = _InnerBlas()
"""Context manager: every loaded BLAS at one thread inside, the caller's counts restored after."""


def run_tasks(body, n_tasks: int, *args, blas: bool = False) -> None:
    """Call body(*args, lo, hi) on contiguous slices of range(n_tasks), one slice per thread.
    The caller's thread runs the first slice itself; exceptions from any slice propagate. A body
    must not call run_tasks itself (a pool thread would wait on its own queue).
    blas=True: the body calls BLAS, which then runs on one thread for this call only (also on a
    single thread: the tasks' GEMMs are sized for one core's cache)."""
    _tune_malloc_if_asked()
    if not blas:
        _run_slices(body, n_tasks, args)
        return
    with single_threaded_blas:
        _run_slices(body, n_tasks, args)


def _run_slices(body, n_tasks: int, args) -> None:
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


# ---------------------------------------------------------------- malloc ----
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit
TRIM_THRESHOLD = 256 << 20
_malloc_checked = False


def tune_malloc() -> bool:
    """Ask glibc's malloc to keep freed blocks of up to 32 MiB in the heap (and up to 256 MiB of
    free heap before trimming). Process-wide and opt-in: call it from a program's main() (the
    medgrad CLI and the benchmarks do), or set ENGINE_MALLOC_TUNING=1 and the first numba_cpu
    kernel call does it. Returns whether it was applied (False on other libcs: musl, macOS).

    Why: a training step allocates its activations, argmax maps and gradients afresh (5-6 MB each
    for the seed CNN at b256). Above glibc's adaptive threshold each one is a fresh mmap, so every
    step page-faults on it again: 3,500 faults per b256 step, which cost 15 ms of a 60 ms step on
    the development VM (20-25% of the step at b64 and b256). The cost: freed memory returns to
    the OS later (the resident size stays near the peak).
    """
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt  # glibc only; AttributeError elsewhere
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h> parameter numbers
    applied = mallopt(m_mmap_threshold, MMAP_THRESHOLD) == 1  # mallopt returns 1 on success
    return applied and mallopt(m_trim_threshold, TRIM_THRESHOLD) == 1


def _tune_malloc_if_asked() -> None:
    """tune_malloc() once per process, on the first kernel call, if ENGINE_MALLOC_TUNING=1."""
    global _malloc_checked
    if _malloc_checked:
        return
    _malloc_checked = True
    if os.environ.get("ENGINE_MALLOC_TUNING") == "1":
        tune_malloc()
