"""The int8 product alone: numba_cpu's kernels against float32 sgemm of the same shape, 1 thread.

    python -m benchmarks.bench_int8_gemm [--rounds 40] [--clock wall|cpu]

Shapes: seed_cnn's products in engine.deploy's int8 plan: the second conv's columns (4 pool
taps x 25 positions per image, 3 x 3 x 32) times its (64, 288) weight, for 32 images at once,
for the 9 images of one of the plan's cache-sized chunks (deploy.CHUNK_BYTES) and for one
image; the first dense layer at batch 32. Contenders, interleaved call by call in this process
(ratios within one run hold on a shared machine; absolute times do not): _gemm_pairs (the AVX2
vpmaddwd micro-kernel, weights packed beforehand as the plan does, int8 columns and int16
ones), _gemm_nt (the plain-loop fallback) and NumPy's float32 matmul (OpenBLAS sgemm) of the
same (m, k) x (k, n). Every int8 result is checked against the int64 product first.
`--plan` also times whole engine.deploy plans of seed_cnn (random weights, quantized on
phantoms: timing only) interleaved: float32, and int8 on the micro-kernel (kernels.numba_cpu.int8
.PAIRS: every conv _conv_pairs, the dense layers _gemm_pairs, int16 codes) and on the plain loops
(the first conv _conv_pool2, the second columns + _gemm_nt, int8 codes), the int8 outputs checked
equal.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"  # before NumPy loads: one thread everywhere

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks.harness import cpu_model  # noqa: E402

SHAPES = {  # name: (m, k, n)
    "conv2, batch 32 at once": (3200, 288, 64),
    "conv2, the plan's chunk (9 images)": (900, 288, 64),
    "conv2, 1 image": (100, 288, 64),
    "dense 1600 -> 64, batch 32": (32, 1600, 64),
}


def _contenders(m: int, k: int, n: int, rng) -> dict:
    """{name: call} on one shape's operands, every int8 result checked first."""
    from kernels.numba_cpu import int8

    a = rng.integers(-127, 128, (m, k)).astype(np.int8)
    bt = rng.integers(-127, 128, (n, k)).astype(np.int8)
    want = a.astype(np.int64) @ bt.astype(np.int64).T
    a16, panels, c = a.astype(np.int16), int8.pack_pairs(bt), np.empty((m, n), np.int32)
    af, wf = a.astype(np.float32), np.ascontiguousarray(bt.T, np.float32)
    cf = np.empty((m, n), np.float32)
    calls = {"float32 sgemm": lambda: np.matmul(af, wf, out=cf)}
    if int8.HAS_PMADDWD:
        calls["_gemm_pairs, int8 cols"] = lambda: int8._gemm_pairs(a, panels, c)
        calls["_gemm_pairs, int16 cols"] = lambda: int8._gemm_pairs(a16, panels, c)
    calls["_gemm_nt (fallback)"] = lambda: int8._gemm_nt(a, bt, c)
    for name, call in calls.items():
        if name != "float32 sgemm":
            c[:] = 0
            call()
            assert np.array_equal(c, want), name
    return calls


def _plans(rounds: int, clock) -> None:
    """Whole plans, 1 image and batch 32, interleaved: ms and the ratio to float32's."""
    import models
    from engine import deploy
    from engine import quantize as Q
    from engine.checkpoint import Checkpoint
    from engine.data.phantoms import make_phantoms
    from kernels.numba_cpu import int8

    model = models.get("seed_cnn", num_classes=2, rng=np.random.default_rng(0)).eval()
    x = make_phantoms(64, size=28, seed=0)[0].astype(np.float32)
    ckpt = Checkpoint("<m>", None, model.spec(), model.state_dict())
    qckpt = Q.quantize(ckpt, x[:32])
    nets = {"float32": deploy.NumpyModel(ckpt)}
    kinds = (("int8, micro-kernel", True), ("int8, plain loops", False))
    for name, pairs in kinds:
        if pairs and not int8.HAS_PMADDWD:
            continue
        int8.PAIRS = pairs  # read when the plan binds a shape: bind both shapes now
        nets[name] = net = deploy.NumpyModel(qckpt)
        net(x[:1]), net(x[:32])
    int8.PAIRS = int8.HAS_PMADDWD
    outputs = [net(x[:32]) for name, net in nets.items() if name != "float32"]
    assert all(np.array_equal(y, outputs[0]) for y in outputs)
    print("| seed_cnn plan | batch | ms | / float32 |\n|---|---|---|---|")
    for batch in (1, 32):
        spent = {name: [] for name in nets}
        for _ in range(rounds):
            for name, net in nets.items():
                t0 = clock()
                net(x[:batch])
                spent[name].append(clock() - t0)
        med = {name: float(np.median(t)) for name, t in spent.items()}
        for name, t in med.items():
            print(f"| {name} | {batch} | {1e3 * t:.3f} | {t / med['float32']:.2f}x |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40, help="timed calls per contender")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--plan", action="store_true", help="also time whole seed_cnn plans")
    args = parser.parse_args(argv)
    clock = time.perf_counter if args.clock == "wall" else time.thread_time
    rng = np.random.default_rng(0)
    print(f"machine: {cpu_model()}, 1 thread; {os.popen('uptime').read().strip()}")
    print(f"clock: {args.clock}; median of {args.rounds} interleaved calls each")
    print("| product (m, k) x (k, n) | contender | ms | GMAC/s | / sgemm |\n|---|---|---|---|---|")
    for label, (m, k, n) in SHAPES.items():
        calls = _contenders(m, k, n, rng)
        for call in calls.values():  # warm-up (compiles)
            call()
        spent = {name: [] for name in calls}
        for _ in range(args.rounds):
            for name, call in calls.items():
                t0 = clock()
                call()
                spent[name].append(clock() - t0)
        med = {name: float(np.median(t)) for name, t in spent.items()}
        for name, t in med.items():
            ratio = t / med["float32 sgemm"]
            shape = f"{label}: ({m}, {k}) x ({k}, {n})"
            print(
                f"| {shape} | {name} | {1e3 * t:.3f} | {m * k * n / t / 1e9:.1f} | {ratio:.2f}x |"
            )
    if args.plan:
        _plans(args.rounds, clock)


if __name__ == "__main__":
    main()
