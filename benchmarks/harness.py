"""Benchmark helpers: environment report, GEMM ceiling, FLOP/byte accounting, warm-up and timing.

Used by the pytest-benchmark suite (benchmarks/bench_*.py, `make bench`) and by the interleaved
comparison script (`python -m benchmarks.compare`). Tests never import this module.
Run benchmarks with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset: an old core type halves GEMM.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable

import numpy as np

THREADS = 2  # the deployment target: a 2-core machine; torch is pinned to the same count


def sync(result=None) -> None:
    """Wait for the device to finish: a no-op on the CPU; CuPy arrays synchronise their stream."""
    if type(result).__module__.partition(".")[0] == "cupy":
        import cupy

        cupy.cuda.get_current_stream().synchronize()


def cpu_model() -> str:
    """The CPU model name as lscpu / /proc/cpuinfo give it."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def blas_info() -> str:
    """Which BLAS libraries are loaded, their kernel (architecture) and thread counts."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed"
    return "; ".join(
        f"{i['internal_api']} {i.get('version')} {i.get('architecture')} x{i['num_threads']} "
        f"({os.path.basename(i['filepath'])})"
        for i in threadpool_info()
        if i["user_api"] == "blas"
    )


def environment() -> dict[str, str]:
    """Machine, libraries and thread settings, printed beside every figure."""
    import numba

    env = {
        "cpu": f"{cpu_model()} ({os.cpu_count()} logical CPUs)",
        "numpy": np.__version__,
        "numba": f"{numba.__version__}, threads {numba.get_num_threads()}, "
        f"layer {numba.config.THREADING_LAYER}",
        "blas": blas_info(),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "(unset)"),
        "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE", "(unset)"),
    }
    torch = import_torch()
    if torch is not None:
        env["torch"] = f"{torch.__version__}, threads {torch.get_num_threads()}"
    return env


def import_torch():
    """torch pinned to THREADS threads, or None where it is not installed (never required)."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(THREADS)
    return torch


def tune_malloc() -> None:
    """Opt in to numba_cpu's glibc malloc tuning for this benchmark process, as a training program
    does (kernels.numba_cpu.tune_malloc: freed blocks up to 32 MiB stay in the heap, so a step
    does not page-fault its fresh activations again; 15-25% of a step on the development VM).
    The library never does it on its own; every contender in the process shares the setting."""
    try:
        from kernels import numba_cpu
    except ImportError:  # no Numba: the numpy flavour alone, malloc left alone
        return
    numba_cpu.tune_malloc()


def time_calls(fn: Callable, *args, warmup: int = 3, repeat: int = 30) -> np.ndarray:
    """Seconds per call of fn(*args): `warmup` untimed calls, then `repeat` timed ones, each
    followed by a device sync."""
    for _ in range(warmup):
        sync(fn(*args))
    times = np.empty(repeat)
    for i in range(repeat):
        t0 = time.perf_counter()
        sync(fn(*args))
        times[i] = time.perf_counter() - t0
    return times


def summary(times: np.ndarray) -> dict[str, float]:
    """median, p10, p90 of per-call seconds."""
    p10, med, p90 = np.percentile(times, [10, 50, 90])
    return {"median_s": float(med), "p10_s": float(p10), "p90_s": float(p90)}


def gemm_ceiling(size: int = 2048, repeat: int = 5) -> float:
    """Float32 GEMM GFLOP/s of NumPy's BLAS on THREADS threads, now (best of `repeat`)."""
    from threadpoolctl import threadpool_limits  # THREADS whatever the process's setting

    a = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    with threadpool_limits(limits=THREADS, user_api="blas"):
        best = time_calls(np.matmul, a, a, warmup=1, repeat=repeat).min()
    return 2 * size**3 / best / 1e9


# ---- analytic FLOPs and bytes ----
def conv_flops(x_shape, w_shape, y_shape) -> int:
    """Multiply-adds x 2 of one conv pass (forward, or either backward pass): 2 n oc oh ow c kh kw."""
    n, oc, oh, ow = y_shape
    return 2 * n * oc * oh * ow * int(np.prod(w_shape[1:]))


def seed_cnn_flops(batch: int, train: bool) -> int:
    """The seed CNN's conv and dense FLOPs: 5.056 MFLOP/image forward; training = 3x forward."""
    fwd = (
        conv_flops((batch, 1, 28, 28), (32, 1, 3, 3), (batch, 32, 26, 26))
        + conv_flops((batch, 32, 13, 13), (64, 32, 3, 3), (batch, 64, 11, 11))
        + 2 * batch * (1600 * 64 + 64 * 10)
    )
    return 3 * fwd if train else fwd


def nbytes(*arrays) -> int:
    """Bytes of the arrays a kernel must at least read and write once."""
    return int(sum(a.nbytes for a in arrays if isinstance(a, np.ndarray)))


def extra_info(seconds: float, flops: int, moved: int, ceiling: float, **more) -> dict:
    """The figures each benchmark records: FLOPs, bytes, GFLOP/s, GB/s and % of the GEMM ceiling."""
    gflops = flops / seconds / 1e9 if flops else 0.0
    return {
        "flops": flops,
        "bytes": moved,
        "gflop_s": round(gflops, 2),
        "gb_s": round(moved / seconds / 1e9, 2),
        "pct_gemm_ceiling": round(100 * gflops / ceiling, 2) if ceiling else None,
        "gemm_ceiling_gflop_s": round(ceiling, 1),
        **more,
    }


def assert_close(got, ref, name: str, rtol: float = 1e-4) -> None:
    """A fast wrong kernel is worthless: compare with the reference before timing (float32:
    relative to the reference's largest magnitude, since long sums round differently)."""
    for i, (g, r) in enumerate(zip(_arrays(got), _arrays(ref), strict=True)):
        g = np.asarray(g)
        scale = max(float(np.abs(r).max()), 1e-30) if r.size else 1.0
        err = float(np.abs(g.astype(np.float64) - r).max()) / scale if r.size else 0.0
        if err > rtol:
            raise AssertionError(f"{name} output {i}: max error {err:.2e} of max |ref| > {rtol}")


def interleaved_steps(steps: dict, rounds: int, reference: str = "numpy") -> tuple[dict, dict]:
    """Time whole training steps of several contenders ({name: object with train_step() -> loss}).

    Each takes one untimed step first (the warm-up: Numba compiles) whose loss must equal the
    `reference` contender's (a fast wrong step is worthless); then `rounds` rounds of one timed step
    each, interleaved, so a swing in the machine's load hits every contender alike. Returns
    (first losses, {name: [seconds per step]})."""
    first = {who: s.train_step() for who, s in steps.items()}
    for who, loss in first.items():
        assert_close(loss, first[reference], f"{who} first loss")
    times = {who: [] for who in steps}
    for _ in range(rounds):
        for who, s in steps.items():
            t0 = time.perf_counter()
            s.train_step()
            times[who].append(time.perf_counter() - t0)
    return first, times


def _arrays(value):
    if isinstance(value, tuple | list):
        return [a for v in value for a in _arrays(v)]
    return [] if value is None else [np.asarray(value)]


# ---- pytest-benchmark glue ----
def cpu_flavours() -> list[str]:
    """The CPU kernel flavours to benchmark ("numpy", "numba" where it imports)."""
    from engine import backend

    return [n.split(":")[1] for n in backend.available() if n.startswith("cpu:")]


def kernel(flavour: str, name: str) -> Callable:
    """Kernel `name` of CPU flavour `flavour`."""
    from engine import backend

    with backend.use_kernels(flavour):
        return getattr(backend.backend_for("cpu").k, name)


def run_kernel(benchmark, flavour, name, args, flops, moved, ceiling, rounds=10) -> None:
    """Check kernel `name` against numpy_cpu once, then time it; record the figures in extra_info."""
    from kernels import numpy_cpu

    fn = kernel(flavour, name)
    assert_close(fn(*args), numpy_cpu.REFERENCE[name](*args), f"{flavour}:{name}")
    benchmark.pedantic(fn, args=args, rounds=rounds, warmup_rounds=2, iterations=1)
    benchmark.extra_info.update(
        extra_info(benchmark.stats.stats.median, flops, moved, ceiling, flavour=flavour)
    )
