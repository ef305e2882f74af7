"""Deployment benchmark: engine.deploy float32, engine.deploy int8 and ONNX Runtime, on 1 thread.

    python -m benchmarks.bench_deploy [--model MODEL.npz --data DIR --calibration DIR] [--repeat 30]

Without --model it trains seed_cnn on the demo's lesion phantoms (engine.demo's engine stage:
4,000 training, 1,000 held-out images), quantizes it (128 training images, max calibration) and
exports it. Latencies (single image, batch 32) are interleaved in this one process; import time
and peak memory come from a fresh child process per runtime (import, load, one batch of 32).
The "interpreter" rows run the same files with compiled=False (engine.deploy's layer-by-layer
NCHW path, what deploy ran before its compiled plan). `--clock cpu` times each call by this
thread's CPU time instead of the wall clock (every runtime here computes on the calling thread
at 1 thread): on a machine shared with other jobs it leaves out the time the thread waited for
a core, though not the caches the other jobs share.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"  # before NumPy loads: one thread everywhere

import argparse  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks.harness import cpu_model, summary, time_calls  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# Child: import the runtime, load the file, run one batch; print import seconds and peak RSS
# (VmHWM: ru_maxrss would carry this parent's peak over the fork).
CHILD = """
import time
t0 = time.perf_counter()
{imports}
t1 = time.perf_counter()
import numpy as np
x = np.zeros({shape}, np.float32)
{run}
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")]  # this image's peak
print(t1 - t0, int(hwm[0].split()[1]) * 1024)
"""
RUNTIMES = {
    "engine.deploy float32": ("from engine import deploy", "deploy.load({path!r})(x)"),
    "engine.deploy int8": ("from engine import deploy", "deploy.load({path!r})(x)"),
    "engine.deploy float32, interpreter": (
        "from engine import deploy",
        "deploy.load({path!r}, compiled=False)(x)",
    ),
    "engine.deploy int8, interpreter": (
        "from engine import deploy",
        "deploy.load({path!r}, compiled=False)(x)",
    ),
    "ONNX Runtime": (
        "import onnxruntime as ort",
        "o = ort.SessionOptions(); o.intra_op_num_threads = o.inter_op_num_threads = 1\n"
        "s = ort.InferenceSession({path!r}, o, providers=['CPUExecutionProvider'])\n"
        "s.run(None, {{'input': x}})",
    ),
}


def _child(name: str, path: Path, shape) -> tuple[float, int]:
    imports, run = RUNTIMES[name]
    code = CHILD.format(imports=imports, run=run.format(path=str(path)), shape=tuple(shape))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    seconds, peak = out.stdout.split()
    return float(seconds), int(peak)


def _cpu_time_calls(fn, x, warmup: int, repeat: int) -> np.ndarray:
    """harness.time_calls's figures in this thread's CPU seconds."""
    for _ in range(warmup):
        fn(x)
    times = np.empty(repeat)
    for i in range(repeat):
        t0 = time.thread_time()
        fn(x)
        times[i] = time.thread_time() - t0
    return times


def _step_profile(net, x, repeat: int) -> str:
    """CPU milliseconds per call of each kind of step of net's compiled plan for x's shape
    (the load into NHWC, copyto = im2col, matmul, reduce = pool + ReLU, the int8 kernels)."""
    net(x)  # binds the plan for this shape
    run = net.plan.local.bound[x.shape]
    calls = [("load", partial(run.load, x))]
    for step in run.steps:
        func = getattr(step, "func", step)
        calls.append((getattr(func, "__name__", type(func).__name__), step))
    spent: dict[str, float] = {}
    for _ in range(repeat):
        for label, call in calls:
            t0 = time.thread_time()
            call()
            spent[label] = spent.get(label, 0.0) + time.thread_time() - t0
    parts = ", ".join(f"{label} {1e3 * t / repeat:.3f}" for label, t in spent.items())
    return f"{len(calls)} calls: {parts}"


def _train_phantoms(folder: Path):
    """seed_cnn as engine.demo trains it (SGD); (model file, train images, held-out (x, y))."""
    import models
    from engine import optim
    from engine.checkpoint import save_checkpoint
    from engine.data.phantoms import make_phantoms
    from engine.demo import OPTIMIZER_SETTINGS
    from engine.train import fit

    x, y = make_phantoms(5000, size=28, seed=0)
    train, test = (x[:4000], y[:4000]), (x[4000:], y[4000:])
    model = models.get("seed_cnn", num_classes=2, rng=np.random.default_rng(0))
    opt = optim.OPTIMIZERS["sgd"](model.parameters(), **OPTIMIZER_SETTINGS["sgd"])
    fit(model, opt, train, test, epochs=6, batch_size=64, seed=0, progress=False)
    pre = {"source": "phantoms", "input_size": 28, "in_channels": 1}
    path = save_checkpoint(folder / "model.npz", model.eval(), preprocessing=pre)
    return path, train[0], test


def _from_files(model: str, data: str, calibration: str):
    """A given model file, a labelled held-out dataset and calibration images (a seeded sample
    of the training data, as `medgrad quantize` draws it)."""
    from engine.checkpoint import load_checkpoint
    from engine.workflow import load_data

    ckpt = load_checkpoint(model)
    size, classes = int(ckpt.preprocessing.get("input_size", 28)), ckpt.classes
    ds = load_data(data, input_size=size, classes=classes)
    train = load_data(calibration, input_size=size, classes=classes).images
    pick = np.sort(np.random.default_rng(0).permutation(len(train))[:128])
    return Path(model), train[pick], (ds.images, ds.labels)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a float32 model file (default: train on phantoms)")
    parser.add_argument("--data", help="with --model: a labelled held-out dataset")
    parser.add_argument("--calibration", help="with --model: the training data to calibrate on")
    parser.add_argument("--repeat", type=int, default=30, help="timed calls per figure")
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall", help="time calls by wall or CPU clock"
    )
    parser.add_argument(
        "--steps", action="store_true", help="also profile the compiled plans step by step"
    )
    args = parser.parse_args(argv)

    import onnxruntime as ort

    from engine import deploy, export, quantize
    from engine.checkpoint import load_checkpoint

    folder = Path(tempfile.mkdtemp(prefix="medgrad-bench-deploy-"))
    path, calibration, (x, y) = (
        _from_files(args.model, args.data, args.calibration or args.data)
        if args.model
        else _train_phantoms(folder)
    )
    ckpt = load_checkpoint(path)
    qpath = quantize.save_quantized(
        quantize.quantize(ckpt, calibration[:128]), folder / "model-int8.npz", {"samples": 128}
    )
    opath = export.to_onnx(path, folder / "model.onnx", input_shape=x.shape[1:])
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(opath), options, providers=["CPUExecutionProvider"])
    nets = {
        "engine.deploy float32": deploy.load(path),
        "engine.deploy int8": deploy.load(qpath),
        "engine.deploy float32, interpreter": deploy.load(path, compiled=False),
        "engine.deploy int8, interpreter": deploy.load(qpath, compiled=False),
        "ONNX Runtime": lambda a: session.run(["logits"], {"input": a})[0],
    }
    files = {"engine.deploy float32": path, "engine.deploy int8": qpath, "ONNX Runtime": opath}
    files["engine.deploy float32, interpreter"] = path
    files["engine.deploy int8, interpreter"] = qpath
    logits = {
        name: np.concatenate([net(x[i : i + 256]) for i in range(0, len(x), 256)])
        for name, net in nets.items()
    }
    gap = np.abs(logits["ONNX Runtime"] - logits["engine.deploy float32"]).max()
    assert gap < 1e-4, f"ONNX Runtime and engine.deploy disagree by {gap}"

    batches = {"1 image": x[:1].copy(), "batch 32": x[:32].copy()}
    times = {(name, b): [] for name in nets for b in batches}
    for _ in range(3):  # interleaved rounds: load drifts on a shared machine hit all alike
        for name, net in nets.items():
            for b, inputs in batches.items():
                timer = _cpu_time_calls if args.clock == "cpu" else time_calls
                times[name, b].append(timer(net, inputs, warmup=3, repeat=args.repeat // 3))
    if args.steps:
        for name in ("engine.deploy float32", "engine.deploy int8"):
            for b, inputs in batches.items():
                print(f"{name}, {b}: {_step_profile(nets[name], inputs, args.repeat)}")
    rows = []
    for name in nets:
        seconds, peak = _child(name, files[name], batches["batch 32"].shape)
        median = {b: summary(np.concatenate(times[name, b]))["median_s"] for b in batches}
        accuracy = float(np.mean(logits[name].argmax(1) == y))
        rows.append((name, median, seconds, peak, files[name].stat().st_size, accuracy))

    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"machine: {cpu_model()} ({os.cpu_count()} logical CPUs), 1 thread; uptime: {uptime}")
    print(f"latency clock: {args.clock}; median of {3 * (args.repeat // 3)} calls per cell")
    print(f"held-out images: {len(x)}, input {tuple(x.shape[1:])}; ONNX Runtime {ort.__version__}")
    print(
        "| runtime | 1 image (ms) | batch 32 (ms) | / ORT (1, 32) | import (s) | peak RSS (MiB) |"
        " file (KiB) | held-out accuracy |"
    )
    print("|---|---|---|---|---|---|---|---|")
    ort_median = next(median for name, median, *_ in rows if name == "ONNX Runtime")
    for name, median, seconds, peak, size, accuracy in rows:
        one, batch = (median[b] / ort_median[b] for b in batches)
        print(
            f"| {name} | {1e3 * median['1 image']:.3f} | {1e3 * median['batch 32']:.2f} | "
            f"{one:.2f}x, {batch:.2f}x | {seconds:.2f} | {peak / 2**20:.0f} | "
            f"{size / 1024:.0f} | {accuracy:.4f} |"
        )


if __name__ == "__main__":
    main()
