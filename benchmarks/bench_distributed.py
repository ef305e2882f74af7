"""Data-parallel scaling: 1 rank x 2 threads against 2 ranks x 1 thread (MPI) on the same global
batch, and the allreduce time per step; with --device cuda, the NCCL overhead per step on 1 GPU.

    python -m benchmarks.bench_distributed --model seed_cnn --batch 64 --steps 20
    python -m benchmarks.bench_distributed --model unet3d --size 32 --batch 2 --steps 3
    python -m benchmarks.bench_distributed --device cuda --batch 256   # GPU machine, 1 rank

Not a pytest benchmark: it launches `mpiexec` itself (the Open MPI wheel's, next to this Python).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _worker(args) -> None:
    """Under mpiexec: time `steps` training steps of the global batch split over the ranks."""
    import engine.functional as F
    import models
    from engine import distributed, optim
    from engine.tensor import Tensor

    comm = distributed.init(args.device)
    rng = np.random.default_rng(0)
    model = models.get(args.model, in_channels=1, input_size=args.size, num_classes=2, rng=rng)
    model.to(args.device)
    opt = distributed.DistributedOptimizer(optim.SGD(model.parameters(), lr=1e-12), comm)
    distributed.broadcast_model(model, comm)
    local = args.batch // comm.size  # the global batch split evenly (--batch divisible by N)
    # a classifier takes (n, 1, size, size) images and one label each; a U-Net (models.TASKS)
    # images or volumes ("...3d": size^3) and a label per pixel (per-voxel cross-entropy)
    ndim = 3 if args.model.endswith("3d") else 2
    x = rng.standard_normal((local, 1, *(args.size,) * ndim)).astype(np.float32)
    per_pixel = models.TASKS.get(args.model) == "segmentation"
    y = rng.integers(0, 2, (local, *x.shape[2:]) if per_pixel else local)
    if args.device == "cuda":
        from engine import backend

        x, y = backend.to_device(x, "cuda"), backend.to_device(y, "cuda")

    waited = [0.0]

    def step():
        opt.zero_grad()
        loss = F.softmax_cross_entropy(model(Tensor(x)), y, ignore_index=None)
        loss.backward()
        start = time.perf_counter()
        comm.allreduce_sum([np.zeros(1)])  # meet the other ranks first: the allreduce below
        waited[0] += time.perf_counter() - start  # then times communication, not imbalance
        opt.step(local / args.batch)
        loss.item()  # waits for the device

    for _ in range(3):
        step()
    opt.comm_seconds, opt.comm_steps, waited[0] = 0.0, 0, 0.0
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = (time.perf_counter() - start) / args.steps
    times = comm.allgather_array(
        np.array([seconds, opt.comm_seconds / args.steps, waited[0] / args.steps])
    )
    if comm.rank == 0:
        worst = np.max(np.stack(times), axis=0)  # a step lasts as long as its slowest rank
        print(
            json.dumps(
                {
                    "ranks": comm.size,
                    "step_s": worst[0],
                    "allreduce_s": worst[1],
                    "wait_s": worst[2],
                }
            )
        )


def _launch(n: int, threads: int, args) -> dict:
    exe = Path(sys.executable).parent / "mpiexec"
    env = dict(os.environ)
    env.update(
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        NUMBA_NUM_THREADS=str(threads),
        OMP_NUM_THREADS=str(threads),
        # what `medgrad train` sets for its process (engine/cli.py::_program_settings): the numba
        # flavour runs its own threads, NumPy's BLAS one, and malloc keeps freed blocks
        OPENBLAS_NUM_THREADS="1",
        ENGINE_MALLOC_TUNING="1",
        PYTHONPATH=str(Path(__file__).resolve().parents[1]),
    )
    cmd = [
        str(exe),
        "--oversubscribe",
        "--bind-to",
        "none",
        "-n",
        str(n),
        sys.executable,
        "-m",
        "benchmarks.bench_distributed",
        "--worker",
        *sys.argv[1:],
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="seed_cnn")
    p.add_argument("--size", type=int, default=28, help="input size (default 28)")
    p.add_argument("--batch", type=int, default=64, help="global batch (default 64)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return _worker(args)
    print(f"model {args.model}, input {args.size}, global batch {args.batch}, {args.steps} steps")
    if args.device == "cuda":
        one = _launch(1, 1, args)
        print(
            f"1 rank on 1 GPU (NCCL): step {one['step_s'] * 1e3:.2f} ms, of which NCCL "
            f"allreduce (pack, reduce, unpack) {one['allreduce_s'] * 1e3:.3f} ms"
        )
        return None
    one, two = _launch(1, 2, args), _launch(2, 1, args)
    for name, r in (("1 rank x 2 threads", one), ("2 ranks x 1 thread", two)):
        print(
            f"{name}: step {r['step_s'] * 1e3:.1f} ms, allreduce {r['allreduce_s'] * 1e3:.2f} "
            f"ms, waiting for the slower rank {r['wait_s'] * 1e3:.2f} ms"
        )
    print(
        f"speed-up of 2 ranks over 1 rank x 2 threads: {one['step_s'] / two['step_s']:.2f} "
        f"(scaling efficiency against the same 2 cores)"
    )
    return None


if __name__ == "__main__":
    main()
