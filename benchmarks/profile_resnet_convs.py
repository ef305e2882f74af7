"""resnet18_2d's conv layers one by one: forward, input gradient and weight gradient of each
distinct conv shape, numba_cpu and numpy_cpu kernels against PyTorch's own conv ops
(F.conv2d, aten.convolution_backward with one output each), interleaved round by round in one
process, with the layer's multiply-adds and each contender's GFLOP/s.

    NUMBA_NUM_THREADS=1 python -m benchmarks.profile_resnet_convs --threads 1 [--rounds 5]

--threads sets torch's and the BLAS's thread count (NUMBA_NUM_THREADS must match: it is read
by kernels/numba_cpu/tasks.py). The stem's input gradient is skipped (the image needs none).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from benchmarks import harness

# (c, oc, k, stride, padding, input size, count in the network): width 64, batch 32, 64x64
# input, imagenet stem (7x7 s2, then 3x3 max pool s2)
LAYERS = [
    (1, 64, 7, 2, 3, 64, 1),
    (64, 64, 3, 1, 1, 16, 4),
    (64, 128, 3, 2, 1, 16, 1),
    (64, 128, 1, 2, 0, 16, 1),
    (128, 128, 3, 1, 1, 8, 3),
    (128, 256, 3, 2, 1, 8, 1),
    (128, 256, 1, 2, 0, 8, 1),
    (256, 256, 3, 1, 1, 4, 3),
    (256, 512, 3, 2, 1, 4, 1),
    (256, 512, 1, 2, 0, 4, 1),
    (512, 512, 3, 1, 1, 2, 3),
]
PASSES = ("fwd", "gx", "gW")


def _calls(flavour, x, W, gy, s, p):
    """The three passes of one conv on one kernel flavour, as zero-argument callables."""
    fwd = harness.kernel(flavour, "conv2d_forward")
    bx = harness.kernel(flavour, "conv2d_backward_input")
    bw = harness.kernel(flavour, "conv2d_backward_weight")
    k = W.shape[2:]
    return {
        "fwd": lambda: fwd(x, W, None, (s, s), (p, p)),
        "gx": lambda: bx(gy, W, x.shape, (s, s), (p, p)),
        "gW": lambda: bw(gy, x, k, (s, s), (p, p)),
    }


def _torch_calls(torch, x, W, gy, s, p):
    xt, wt, gt = (torch.from_numpy(a) for a in (x, W, gy))
    conv_bw = torch.ops.aten.convolution_backward

    def back(mask):
        return conv_bw(gt, xt, wt, None, [s, s], [p, p], [1, 1], False, [0, 0], 1, mask)

    return {
        "fwd": lambda: torch.nn.functional.conv2d(xt, wt, None, s, p),
        "gx": lambda: back([True, False, False]),
        "gW": lambda: back([False, True, False]),
    }


def _best(fn, repeat):
    t = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return min(t)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--no-numpy", action="store_true")
    args = ap.parse_args(argv)
    from threadpoolctl import threadpool_limits

    torch = harness.import_torch()
    torch.set_num_threads(args.threads)
    threadpool_limits(limits=args.threads, user_api="blas")
    print(f"load: {os.getloadavg()}, threads {args.threads}")
    rng = np.random.default_rng(0)
    who = ["numba", "torch"] + ([] if args.no_numpy else ["numpy"])
    total = {w: 0.0 for w in who}
    total_macs = 0
    rows = []
    for c, oc, k, s, p, size, count in LAYERS:
        n = args.batch
        o = (size + 2 * p - k) // s + 1
        x = rng.standard_normal((n, c, size, size)).astype(np.float32)
        W = (rng.standard_normal((oc, c, k, k)) / np.sqrt(c * k * k)).astype(np.float32)
        gy = rng.standard_normal((n, oc, o, o)).astype(np.float32)
        calls = {f: _calls(f, x, W, gy, s, p) for f in who if f != "torch"}
        calls["torch"] = _torch_calls(torch, x, W, gy, s, p)
        macs = n * oc * o * o * c * k * k
        for ps in PASSES:
            if ps == "gx" and c == 1:
                continue
            for w in who:
                calls[w][ps]()  # warm-up (compiles)
            best = {w: np.inf for w in who}
            for _ in range(args.rounds):
                for w in who:
                    rep = 1 if w == "numpy" else 3
                    best[w] = min(best[w], _best(calls[w][ps], rep))
            for w in who:
                total[w] += count * best[w]
            total_macs += count * macs
            name = f"{c}->{oc} k{k} s{s} {size}x{size}"
            ratio = " ".join(f"{w}/numba {best[w] / best['numba']:.2f}" for w in who[1:])
            rows.append(
                f"{name:24s} x{count} {ps:3s} {macs / 1e6:7.1f} MMAC  "
                + "  ".join(
                    f"{w} {best[w] * 1e3:7.2f} ms {2 * macs / best[w] / 1e9:5.1f} GF/s" for w in who
                )
                + "  "
                + ratio
            )
            print(rows[-1], flush=True)
    print(f"all convs, weighted by count: {2 * total_macs / 1e9:.1f} GFLOP")
    for w in who:
        print(f"  {w}: {total[w]:.3f} s  {2 * total_macs / total[w] / 1e9:.1f} GFLOP/s")
    print(f"load: {os.getloadavg()}")


if __name__ == "__main__":
    main()
