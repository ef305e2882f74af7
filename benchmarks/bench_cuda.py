"""GPU benchmarks: the float32 GEMM ceiling, the seed CNN's kernels and training step on both cuda
flavours, and PyTorch eager's training step on the same GPU in the same run (TF32 off); then the
3-D U-Net's kernels (conv3d, batch norm, max pool 3-D at two levels, batch 2) against PyTorch's.

    python -m benchmarks.bench_cuda [--batches 256,4096] [--flavours cupy,numba] [--csv out.csv]
                                    [--skip-volumes]

Every timing synchronises the device before the clock stops (CUDA events around the work, then an
event synchronize). Each kernel is checked once against kernels/numpy_cpu (at batch 64: the index
logic does not depend on the batch) and each training step's first loss against the CPU, before any
timing. Kernel launches per training step are counted with PyTorch's profiler (CUPTI sees every
kernel in the process, CuPy's and Numba's included) when PyTorch is installed. Flavours and PyTorch
are interleaved round by round, so a slow phase of a shared machine hits all of them alike.
Exits 0 with a note when no GPU is present. Results go to stdout and, with --csv, to a CSV file.
"""

from __future__ import annotations

import argparse
import csv
import platform
import statistics
import sys
import time

import numpy as np

import engine.functional as F
import models
from engine import backend, optim
from engine.tensor import Tensor
from kernels.numpy_cpu import REFERENCE as REF

FLOP_PER_IMAGE = 3 * 5.056e6  # seed CNN training: forward + backward = 3 x the forward FLOPs
ROWS: list[dict] = []  # one CSV row per (benchmark, shape, dtype, flavour)


def _cupy():
    return backend.backend_for("cuda").xp


def time_gpu(fn, warmup: int = 3, repeat: int = 20) -> list[float]:
    """Seconds per call of fn(), each call bracketed by CUDA events on the current stream."""
    cp = _cupy()
    for _ in range(warmup):
        fn()
    cp.cuda.get_current_stream().synchronize()
    times = []
    for _ in range(repeat):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop) / 1e3)
    return times


def record(bench: str, shape: str, flavour: str, times: list[float], **extra) -> dict:
    """Add one CSV row (median and p10/p90 of `times`, in ms) and print it."""
    q = statistics.quantiles(times, n=10) if len(times) > 1 else [times[0]] * 9
    row = {
        "bench": bench,
        "shape": shape,
        "dtype": "float32",
        "flavour": flavour,
        "median_ms": statistics.median(times) * 1e3,
        "p10_ms": q[0] * 1e3,
        "p90_ms": q[-1] * 1e3,
        **extra,
    }
    ROWS.append(row)
    more = "  ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in extra.items()
    )
    print(f"{bench:<28} {shape:<22} {flavour:<14} {row['median_ms']:9.3f} ms  {more}", flush=True)
    return row


def gemm_ceiling(size: int) -> float:
    """float32 GEMM TFLOP/s of cupy.matmul (cuBLAS) at size^3; CuPy uses no TF32 unless asked."""
    cp = _cupy()
    a = cp.random.standard_normal((size, size), dtype=cp.float32)
    b = cp.random.standard_normal((size, size), dtype=cp.float32)
    times = time_gpu(lambda: a @ b, warmup=2, repeat=10)
    tflops = 2 * size**3 / statistics.median(times) / 1e12
    record("gemm_ceiling", f"{size}^3", "cublas", times, tflops=tflops)
    return tflops


# ---- the cupy flavour's own GEMM (kernels/cupy_cuda/gemm.py) against cuBLAS ----
def _step_gemms(batch: int) -> list[tuple[str, int, int, int, bool, bool]]:
    """The seed CNN training step's products at `batch` as (label, M, N, K, trans_a, trans_b),
    in the layouts the cupy launchers use: the fused conv blocks channel-major (conv1 needs no
    input gradient), the dense layers as LinearFn runs them."""
    p1, p2 = batch * 26 * 26, batch * 11 * 11
    return [
        ("conv1_fwd", 32, p1, 9, False, False),
        ("conv1_wgrad", 32, 10, p1, False, True),
        ("conv2_fwd", 64, p2, 288, False, False),
        ("conv2_wgrad", 64, 289, p2, False, True),
        ("conv2_dgrad", 288, p2, 64, True, False),
        ("fc1_fwd", batch, 64, 1600, False, True),
        ("fc1_wgrad", 64, 1600, batch, True, False),
        ("fc1_dgrad", batch, 1600, 64, False, False),
        ("fc2_fwd", batch, 10, 64, False, True),
    ]


def bench_gemm(batches: list[int], repeat: int) -> None:
    """Own dense GEMM (CUDA cores, in the array's float32) and cuBLAS (cupy.matmul, no TF32) on
    the step's products, interleaved per shape; pct_cublas = 100 cuBLAS time / own time (100:
    as fast). Also the implicit-GEMM conv launchers (no im2col) against the cuBLAS path, and
    the tensor-core kernel in TF32 for information (not comparable: TF32 rounds the operands).
    Each own product is checked against cuBLAS first."""
    from kernels.cupy_cuda import gemm, launchers

    cp = _cupy()
    saved = gemm.GEMM, gemm.MMA
    rng = np.random.default_rng(0)
    try:
        for batch in batches:
            total = {"own": 0.0, "cublas": 0.0}
            for label, M, N, K, ta, tb in _step_gemms(batch):
                a = cp.asarray(rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32))
                b = cp.asarray(rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32))
                a, b = (a.T if ta else a), (b.T if tb else b)
                gemm.GEMM, gemm.MMA = "own", ""
                np.testing.assert_allclose(
                    cp.asnumpy(gemm.matmul(a, b)),
                    cp.asnumpy(cp.matmul(a, b)),
                    rtol=1e-4,
                    atol=1e-4 * K**0.5,
                )
                times = {"own": [], "cublas": []}
                for _ in range(3):  # interleaved rounds
                    times["cublas"] += time_gpu(lambda a=a, b=b: cp.matmul(a, b), repeat=repeat)
                    times["own"] += time_gpu(lambda a=a, b=b: gemm.matmul(a, b), repeat=repeat)
                med = {k: statistics.median(v) for k, v in times.items()}
                shape = f"b{batch} {M}x{N}x{K}"
                record(f"gemm_{label}", shape, "cublas", times["cublas"])
                record(
                    f"gemm_{label}",
                    shape,
                    "own",
                    times["own"],
                    pct_cublas=100 * med["cublas"] / med["own"],
                )
                gemm.MMA = "tf32"
                tf32 = time_gpu(lambda a=a, b=b: gemm.matmul(a, b), repeat=repeat)
                record(
                    f"gemm_{label}",
                    shape,
                    "own-tf32",
                    tf32,
                    pct_cublas=100 * med["cublas"] / statistics.median(tf32),
                )
                gemm.MMA = ""
                for k in total:
                    total[k] += med[k]
            print(
                f"own GEMM b{batch}: the step's products in {total['own'] * 1e3:.3f} ms, cuBLAS "
                f"{total['cublas'] * 1e3:.3f} ms: {100 * total['cublas'] / total['own']:.1f}% of cuBLAS "
                "(goal >= 80%)",
                flush=True,
            )
            ROWS.append(
                {
                    "bench": "gemm_step_total",
                    "shape": f"b{batch}",
                    "dtype": "float32",
                    "flavour": "own",
                    "median_ms": total["own"] * 1e3,
                    "pct_cublas": 100 * total["cublas"] / total["own"],
                }
            )
            for name, args in _conv_gemm_cases(batch, rng):
                on_gpu = [cp.asarray(x) if isinstance(x, np.ndarray) else x for x in args]
                k = getattr(launchers, name)
                gemm.GEMM = "cublas"
                ref = k(*on_gpu)
                ref = tuple(cp.asnumpy(v) for v in (ref if isinstance(ref, tuple) else (ref,)))
                gemm.GEMM = "own"
                _same(k(*on_gpu), ref)  # the implicit GEMM against im2col + cuBLAS
                times = {"own": [], "cublas": []}
                for _ in range(3):
                    for choice in ("cublas", "own"):
                        gemm.GEMM = choice
                        times[choice] += time_gpu(lambda k=k, a=on_gpu: k(*a), repeat=repeat)
                pct = 100 * statistics.median(times["cublas"]) / statistics.median(times["own"])
                record(f"implicit_{name}", f"b{batch}", "cublas", times["cublas"])
                record(f"implicit_{name}", f"b{batch}", "own", times["own"], pct_cublas=pct)
    finally:
        gemm.GEMM, gemm.MMA = saved


def _conv_gemm_cases(batch: int, rng):
    """(launcher name, args) of the seed CNN's conv2 layer at `batch`: the conv2d kernels and the
    fused block, whose products the implicit GEMM replaces."""
    x = rng.standard_normal((batch, 32, 13, 13)).astype(np.float32)
    W = (rng.standard_normal((64, 32, 3, 3)) * 0.1).astype(np.float32)
    b = np.zeros(64, np.float32)
    gy = rng.standard_normal((batch, 64, 11, 11)).astype(np.float32)
    one, zero = (1, 1), (0, 0)
    return [
        ("conv2d_forward", (x, W, b, one, zero)),
        ("conv2d_backward_weight", (gy, x, (3, 3), one, zero)),
        ("conv2d_backward_input", (gy, W, x.shape, one, zero)),
        ("conv2d_relu_max_pool2d_forward", (x, W, b, one, zero, (2, 2), (2, 2), zero)),
    ]


# ---- kernels at the seed CNN's layer shapes ----
def _kernel_cases(batch: int, rng):
    """(name, shape label, kernel name, args builder(n) -> numpy args) at the seed CNN's layers."""
    conv = [("conv1", (1, 28, 28), 32), ("conv2", (32, 13, 13), 64)]
    out = []
    for label, (c, h, w), oc in conv:

        def x_of(n, c=c, h=h, w=w):
            return rng.standard_normal((n, c, h, w)).astype(np.float32)

        def W_of(c=c, oc=oc):
            return (rng.standard_normal((oc, c, 3, 3)) * 0.1).astype(np.float32)

        def gy_of(n, oc=oc, h=h, w=w):
            return rng.standard_normal((n, oc, h - 2, w - 2)).astype(np.float32)

        b = np.zeros(oc, np.float32)
        out += [
            (
                f"{label}_forward",
                "conv2d_forward",
                lambda n, x_of=x_of, W_of=W_of, b=b: (x_of(n), W_of(), b, (1, 1), (0, 0)),
            ),
            (
                f"{label}_backward_input",
                "conv2d_backward_input",
                lambda n, gy_of=gy_of, W_of=W_of, c=c, h=h, w=w: (
                    gy_of(n),
                    W_of(),
                    (n, c, h, w),
                    (1, 1),
                    (0, 0),
                ),
            ),
            (
                f"{label}_backward_weight",
                "conv2d_backward_weight",
                lambda n, gy_of=gy_of, x_of=x_of: (gy_of(n), x_of(n), (3, 3), (1, 1), (0, 0)),
            ),
        ]
    for label, (c, h, w), oc in conv:  # the fused conv2d+bias+ReLU+max-pool blocks

        def fused_fwd(n, c=c, h=h, w=w, oc=oc):
            x = rng.standard_normal((n, c, h, w)).astype(np.float32)
            W = (rng.standard_normal((oc, c, 3, 3)) * 0.1).astype(np.float32)
            b = (rng.standard_normal(oc) * 0.1).astype(np.float32)
            return (x, W, b, (1, 1), (0, 0), (2, 2), (2, 2), (0, 0))

        def fused_bwd(n, fused_fwd=fused_fwd, need_gx=label != "conv1"):
            x, W, b, *geometry = fused_fwd(n)
            y, argmax = REF["conv2d_relu_max_pool2d_forward"](x, W, b, *geometry)
            gy = rng.standard_normal(y.shape).astype(np.float32)
            return (gy, y, argmax, x, W, *geometry, need_gx)

        out += [
            (f"{label}_relu_pool_forward", "conv2d_relu_max_pool2d_forward", fused_fwd),
            (f"{label}_relu_pool_backward", "conv2d_relu_max_pool2d_backward", fused_bwd),
        ]
    for label, (c, h) in (("pool1", (32, 26)), ("pool2", (64, 11))):
        out.append(
            (
                f"{label}_forward",
                "max_pool2d_forward",
                lambda n, c=c, h=h: (
                    rng.standard_normal((n, c, h, h)).astype(np.float32),
                    (2, 2),
                    (2, 2),
                    (0, 0),
                ),
            )
        )
    out.append(
        (
            "relu1_forward",
            "relu_forward",
            lambda n: (rng.standard_normal((n, 32, 26, 26)).astype(np.float32),),
        )
    )
    out.append(
        (
            "softmax_xent_forward",
            "softmax_cross_entropy_forward",
            lambda n: (rng.standard_normal((n, 10)).astype(np.float32), rng.integers(0, 10, n)),
        )
    )
    return out


def _same(got, expected) -> None:
    cp = _cupy()
    got = got if isinstance(got, tuple) else (got,)
    expected = expected if isinstance(expected, tuple) else (expected,)
    for g, e in zip(got, expected, strict=True):
        if g is None or e is None:  # the fused backward without gx
            assert g is None and e is None
            continue
        if e.dtype.kind == "i":  # an argmax: float32 GEMMs summing in another order may flip
            # a near-tie between two taps (about one window in 10^5 at batch 64)
            assert (cp.asnumpy(g) == e).mean() > 0.999
            continue
        np.testing.assert_allclose(cp.asnumpy(g), e, atol=1e-3, rtol=1e-4)


def bench_kernels(batch: int, flavours: list[str], repeat: int) -> None:
    cp = _cupy()
    rng = np.random.default_rng(0)
    for label, name, args_of in _kernel_cases(batch, rng):
        small, full = args_of(64), args_of(batch)
        on_gpu = [cp.asarray(a) if isinstance(a, np.ndarray) else a for a in full]
        for flavour in flavours:
            with backend.use_kernels(flavour):
                k = getattr(backend.backend_for("cuda").k, name)
                small_gpu = [cp.asarray(a) if isinstance(a, np.ndarray) else a for a in small]
                _same(k(*small_gpu), REF[name](*small))  # a fast wrong kernel is worthless
                times = time_gpu(lambda k=k, args=on_gpu: k(*args), repeat=repeat)
            record(label, f"b{batch}", f"cuda:{flavour}", times)


# ---- the 3-D U-Net's kernels (conv3d 3x3x3 pad 1, batch norm, 2x2x2 max pool) vs PyTorch ----
# two levels of the U-Net block of issue 12: batch 2, 32 channels at 64^3 and 64 at 32^3
UNET_LEVELS = [("l1_c32_64^3", 32, 64), ("l2_c64_32^3", 64, 32)]


def _volume_cases(rng, n: int, c: int, size: int):
    """[(kernel name, numpy args, torch closure builder or None)] at one U-Net level: x
    (n, c, size^3) and a c -> c 3x3x3 conv with padding 1, its batch norm view (n, c, size^3) and
    a 2x2x2 max pool. A torch builder takes (torch, the args as torch tensors on the GPU) and
    returns the closure PyTorch eager runs for that kernel."""
    x = rng.standard_normal((n, c, size, size, size)).astype(np.float32)
    W = (rng.standard_normal((c, c, 3, 3, 3)) * 0.05).astype(np.float32)
    b = np.zeros(c, np.float32)
    gy = rng.standard_normal(x.shape).astype(np.float32)
    one, pad = (1, 1, 1), (1, 1, 1)
    x3 = x.reshape(n, c, -1)
    mean, var = REF["norm_moments"](x3)
    rstd = (1 / np.sqrt(var + 1e-5)).astype(np.float32)
    w = np.ones(c, np.float32)
    pool = ((2, 2, 2), (2, 2, 2), (0, 0, 0))
    _, argmax = REF["max_pool3d_forward"](x, *pool)
    gp = rng.standard_normal(argmax.shape).astype(np.float32)
    return [
        (
            "conv3d_forward",
            (x, W, b, one, pad),
            lambda t, a: lambda: t.nn.functional.conv3d(a[0], a[1], a[2], padding=1),
        ),
        (
            "conv3d_backward_input",
            (gy, W, x.shape, one, pad),
            lambda t, a: lambda: t.nn.grad.conv3d_input(a[2], a[1], a[0], padding=1),
        ),
        (
            "conv3d_backward_weight",
            (gy, x, (3, 3, 3), one, pad),
            lambda t, a: lambda: t.nn.grad.conv3d_weight(a[1], (c, c, 3, 3, 3), a[0], padding=1),
        ),
        ("norm_moments", (x3,), lambda t, a: lambda: t.var_mean(a[0], dim=(0, 2), unbiased=False)),
        (
            "norm_forward",
            (x3, mean, rstd, w, b),
            lambda t, a: lambda: (a[0] - a[1][:, None]) * (a[2] * a[3])[:, None] + a[4][:, None],
        ),
        (
            "norm_backward",
            (gy.reshape(x3.shape), x3, mean, rstd, w),
            lambda t, a: (
                lambda: t.ops.aten.native_batch_norm_backward(
                    a[0], a[1], a[4], None, None, a[2], a[3], True, 1e-5, [True, True, True]
                )
            ),
        ),
        (
            "max_pool3d_forward",
            (x, *pool),
            lambda t, a: lambda: t.nn.functional.max_pool3d(a[0], 2, 2, return_indices=True),
        ),
        (
            "max_pool3d_backward",
            (gp, argmax, x.shape, *pool),
            lambda t, a: _torch_max_pool3d_backward(t, x, a[0]),
        ),
    ]


def _torch_max_pool3d_backward(torch, x, gp):
    """PyTorch's 2x2x2 max-pool backward of gp, with the indices of its own forward on x."""
    xt = torch.as_tensor(x, device=gp.device)
    _, indices = torch.nn.functional.max_pool3d(xt, 2, 2, return_indices=True)
    return lambda: torch.ops.aten.max_pool3d_with_indices_backward(
        gp, xt, [2, 2, 2], [2, 2, 2], [0, 0, 0], [1, 1, 1], False, indices
    )


def _to_torch(torch, args):
    return [torch.as_tensor(a, device="cuda") if isinstance(a, np.ndarray) else a for a in args]


def bench_volumes(flavours: list[str], repeat: int) -> None:
    """The U-Net levels' kernels in PyTorch eager (cuDNN, TF32 off) and on each cuda flavour, case
    by case; each flavour's kernel checked first against numpy_cpu at a small shape. x_torch is
    PyTorch's median time over the flavour's (above 1: the flavour is faster)."""
    cp = _cupy()
    try:
        import torch

        torch = torch if torch.cuda.is_available() else None
    except ImportError:
        torch = None
    if torch is not None:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    small = {name: args for name, args, _ in _volume_cases(np.random.default_rng(1), 1, 4, 10)}
    for label, c, size in UNET_LEVELS:
        for name, args, torch_of in _volume_cases(np.random.default_rng(0), 2, c, size):
            torch_median = None
            if torch is not None and torch_of is not None:
                try:
                    fn = torch_of(torch, _to_torch(torch, args))
                    times = time_gpu(fn, repeat=repeat)
                    torch_median = statistics.median(times)
                    record(f"unet3d_{name}", label, "torch-eager", times)
                except Exception as exc:  # a torch API mismatch must not cost the other rows
                    print(f"torch {name}: {type(exc).__name__}: {exc}", flush=True)
            on_gpu = [cp.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
            for flavour in flavours:
                with backend.use_kernels(flavour):
                    k = getattr(backend.backend_for("cuda").k, name)
                    check = [cp.asarray(a) if isinstance(a, np.ndarray) else a for a in small[name]]
                    _same(k(*check), REF[name](*small[name]))
                    times = time_gpu(lambda k=k, a=on_gpu: k(*a), repeat=repeat)
                extra = {"x_torch": torch_median / statistics.median(times)} if torch_median else {}
                record(f"unet3d_{name}", label, f"cuda:{flavour}", times, **extra)


# ---- training steps ----
def _engine_step(batch: int, flavour: str):
    """A closure running one seed CNN training step (forward, backward, SGD) on the GPU."""
    cp = _cupy()
    rng = np.random.default_rng(0)
    model = models.get("seed_cnn", rng=np.random.default_rng(0)).to("cuda")
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = Tensor(cp.asarray(rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)))
    t = Tensor(cp.asarray(rng.integers(0, 10, batch)))

    def step():
        with backend.use_kernels(flavour):
            loss = F.softmax_cross_entropy(model(x), t, ignore_index=None)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return loss

    return step


def _check_engine_step(flavour: str) -> None:
    """The first loss at batch 64 on the GPU equals the numpy_cpu flavour's from the same start."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 1, 28, 28)).astype(np.float32)
    t = rng.integers(0, 10, 64)
    losses = []
    for device, kernels in (("cpu", "numpy"), ("cuda", flavour)):
        model = models.get("seed_cnn", rng=np.random.default_rng(0)).to(device)
        with backend.use_kernels(kernels):
            losses.append(
                F.softmax_cross_entropy(
                    model(Tensor(x).to(device)), Tensor(t).to(device), ignore_index=None
                ).item()
            )
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)


def _torch_step(batch: int):
    """PyTorch eager's step for the same network, float32, TF32 off; None without PyTorch/CUDA."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    nn = torch.nn
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(1600, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    ).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 1, 28, 28, device="cuda")
    t = torch.randint(0, 10, (batch,), device="cuda")
    loss_fn = nn.CrossEntropyLoss()

    def step():
        loss = loss_fn(model(x), t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step


def count_launches(step) -> int | None:
    """CUDA kernels launched by one call of step(), seen by CUPTI through PyTorch's profiler."""
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        return None
    step()  # warm: compilation and allocation are not part of a step
    torch.cuda.synchronize()
    _cupy().cuda.Device().synchronize()
    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step()
            _cupy().cuda.Device().synchronize()
        kernels = [
            e
            for e in prof.events()
            if e.device_type.name == "CUDA" and not e.name.startswith(("Memcpy", "Memset"))
        ]
    except Exception as exc:  # a profiler that cannot start must not cost the timings
        print(f"launch count unavailable: {type(exc).__name__}: {exc}", flush=True)
        return None
    return len(kernels)


def bench_training(batches: list[int], flavours: list[str], rounds: int, repeat: int) -> None:
    for flavour in flavours:
        _check_engine_step(flavour)
    for batch in batches:
        steps = {f"cuda:{f}": _engine_step(batch, f) for f in flavours}
        torch_step = _torch_step(batch)
        if torch_step is not None:
            steps["torch-eager"] = torch_step
        launches = {name: count_launches(step) for name, step in steps.items()}
        times: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(rounds):  # interleaved: every contender in every round
            for name, step in steps.items():
                times[name].append(statistics.median(time_gpu(step, warmup=2, repeat=repeat)))
        torch_ips = batch / statistics.median(times["torch-eager"]) if torch_step else None
        for name in steps:
            ips = batch / statistics.median(times[name])
            extra = {"img_per_s": ips, "launches_per_step": launches[name]}
            if torch_ips:
                extra["x_torch"] = ips / torch_ips
            extra["gflops"] = ips * FLOP_PER_IMAGE / 1e9
            record("train_step_seed_cnn", f"b{batch}", name, times[name], **extra)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--batches", default="256,4096", help="training-step batch sizes, e.g. 256,4096"
    )
    parser.add_argument("--flavours", default="cupy,numba", help="cuda kernel flavours to run")
    parser.add_argument(
        "--kernel-batch", type=int, default=256, help="batch of the kernel benchmarks"
    )
    parser.add_argument("--gemm-size", type=int, default=8192, help="n of the n^3 GEMM ceiling")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds per training step"
    )
    parser.add_argument("--repeat", type=int, default=20, help="timed calls per measurement")
    parser.add_argument(
        "--skip-volumes", action="store_true", help="skip the 3-D U-Net kernels vs PyTorch"
    )
    parser.add_argument(
        "--gemm-batches", default="64,256", help="batches of the own-GEMM vs cuBLAS products"
    )
    parser.add_argument("--skip-gemm", action="store_true", help="skip own GEMM vs cuBLAS")
    parser.add_argument("--csv", help="also write every row to this CSV file")
    args = parser.parse_args(argv)
    if not backend.cuda_available():
        print("bench_cuda: no CUDA GPU here (CuPy missing or no device): nothing measured")
        return 0
    cp = _cupy()
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    print(
        f"device: {props['name'].decode()}  CuPy {cp.__version__}  numpy {np.__version__}  "
        f"Python {platform.python_version()}",
        flush=True,
    )
    flavours = [f for f in args.flavours.split(",") if f]
    started = time.perf_counter()
    tflops = gemm_ceiling(args.gemm_size)
    if not args.skip_gemm:
        bench_gemm([int(b) for b in args.gemm_batches.split(",") if b], min(args.repeat, 10))
    bench_kernels(args.kernel_batch, flavours, args.repeat)
    bench_training([int(b) for b in args.batches.split(",")], flavours, args.rounds, args.repeat)
    if not args.skip_volumes:
        bench_volumes(flavours, min(args.repeat, 10))
    for row in ROWS:
        if "gflops" in row:
            row["pct_gemm_ceiling"] = 100 * row["gflops"] / (tflops * 1e3)
    print(f"GEMM ceiling {tflops:.1f} TFLOP/s; total {time.perf_counter() - started:.0f} s")
    if args.csv:
        fields = sorted({k for row in ROWS for k in row}, key=lambda k: (k not in ROWS[0], k))
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(ROWS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
