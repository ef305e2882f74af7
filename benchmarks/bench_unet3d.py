"""A 3-D U-Net (models.get("unet3d"), features (16, 32, 64, 128)): one Dice + CE training step on
batch 2 of 1x64x64x64 patches, and sliding-window inference over a 128^3 volume, for the numpy and
numba flavours and PyTorch eager (a replica built here from the engine's spec, same weights).

    python -m benchmarks.bench_unet3d [--model unet3d|blocks] [--patch 64] [--volume 128]
        [--rounds 3] [--skip-infer]

--model blocks times issue 12's block stack instead (two levels of conv3d 3x3x3 + instance norm +
ReLU at 32 and 64 channels, a max pool between, a transposed conv back up).

Training contenders run interleaved round by round in one process (a neighbour's load hits all
alike), after checking that their first losses agree. Each inference runs in its own subprocess:
its peak memory is the rise of the resident set (VmHWM after /proc/self/clear_refs) over the
process's size before the call. Torch's inference uses the same engine.inference blending with
the torch network as the window model, so the difference is the networks' forward.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections import OrderedDict

import numpy as np

import engine.functional as F
import models
from benchmarks import harness
from benchmarks.seed_step import blas_threads
from engine import backend, optim
from engine.inference import sliding_window_inference
from engine.tensor import Tensor

FEATURES = (16, 32, 64, 128)


def _blocks(rng):
    """Issue 12's block stack: two levels of (3x3x3 conv, instance norm, ReLU) x 2 at 32 and 64
    channels with a 2x2x2 max pool between, and a stride-2 transposed conv back to the input grid
    (2 classes), so the same Dice + CE step applies."""
    from engine import nn
    from models.unet import two_conv

    opts = {"norm": "instance", "act": "relu", "negative_slope": 0.0, "groups": 8, "bias": True}
    return nn.Sequential(
        {
            "level1": two_conv(1, 32, 3, opts, rng),
            "down": nn.MaxPool3d(2),
            "level2": two_conv(32, 64, 3, opts, rng),
            "up": nn.ConvTranspose3d(64, 2, 2, stride=2, rng=rng),
        }
    )


def _model(name: str = "unet3d"):
    """The benchmarked network: "unet3d" (features FEATURES) or "blocks" (_blocks)."""
    rng = np.random.default_rng(0)
    if name == "blocks":
        return _blocks(rng)
    return models.get("unet3d", features=FEATURES, num_classes=2, rng=rng)


def _data(batch: int, size: int):
    """x (batch, 1, size^3) noise plus a bright ball, t its (batch, size^3) labels."""
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij"))
    t = (((grid - size / 2) ** 2).sum(0) < (size / 4) ** 2).astype(np.int64)
    t = np.broadcast_to(t, (batch, *t.shape)).copy()
    x = (t + 0.5 * rng.standard_normal(t.shape))[:, None].astype(np.float32)
    return x, t


class EngineUNet:
    """The engine's unet3d on one kernel flavour; SGD at lr 0 (every step the same work)."""

    def __init__(self, flavour: str, batch: int, size: int, name: str = "unet3d"):
        self.flavour, self.model = flavour, _model(name)
        self.opt = optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.opt.lr = 0.0  # the optimizer refuses lr 0 when built
        self.x, self.t = _data(batch, size)

    def train_step(self) -> float:
        with backend.use_kernels(self.flavour), blas_threads(self.flavour):
            self.opt.zero_grad()
            loss = F.dice_ce_loss(self.model(Tensor(self.x)), self.t)
            loss.backward()
            self.opt.step()
        return float(loss.data)


def torch_from_spec(torch, spec: dict):
    """The torch module a layer spec describes (the layers a U-Net uses): state_dict names equal
    the engine's, since SkipConnection keeps its body's children directly under itself."""
    nn = torch.nn
    kind = spec["type"]

    class Skip(nn.Sequential):
        def forward(self, x):
            return torch.cat([x, super().forward(x)], dim=1)

    if kind in ("Sequential", "SkipConnection"):
        body = spec if kind == "Sequential" else spec["body"]
        names = body.get("names") or [str(i) for i in range(len(body["layers"]))]
        children = [torch_from_spec(torch, child) for child in body["layers"]]
        cls = nn.Sequential if kind == "Sequential" else Skip
        return cls(OrderedDict(zip(names, children, strict=True)))
    if kind in ("Conv3d", "ConvTranspose3d"):
        extra = {"output_padding": spec["output_padding"]} if "output_padding" in spec else {}
        return getattr(nn, kind)(
            spec["in_channels"],
            spec["out_channels"],
            spec["kernel_size"],
            spec["stride"],
            spec["padding"],
            bias=spec["bias"],
            **extra,
        )
    if kind == "InstanceNorm3d":
        return nn.InstanceNorm3d(spec["num_features"], spec["eps"], affine=spec["affine"])
    if kind == "LeakyReLU":
        return nn.LeakyReLU(spec["negative_slope"])
    if kind == "ReLU":
        return nn.ReLU()
    if kind == "MaxPool3d":
        return nn.MaxPool3d(spec["kernel_size"], spec["stride"], spec["padding"])
    raise ValueError(f"torch_from_spec: no torch layer for {kind}")


def torch_dice_ce(torch, logits, t, smooth: float = 1e-5):
    """F.dice_ce_loss's defaults: softmax Dice per (sample, class) averaged, plus mean CE."""
    p = torch.softmax(logits, dim=1)
    onehot = torch.nn.functional.one_hot(t, logits.shape[1]).movedim(-1, 1).to(p.dtype)
    axes = tuple(range(2, logits.ndim))
    inter, total = (p * onehot).sum(axes), p.sum(axes) + onehot.sum(axes)
    dice = 1 - (2 * inter + smooth) / (total + smooth)
    return dice.mean() + torch.nn.functional.cross_entropy(logits, t)


class TorchUNet:
    """The same network and weights in PyTorch eager, float32, torch.set_num_threads(2)."""

    def __init__(self, torch, batch: int, size: int, name: str = "unet3d"):
        self.torch = torch
        engine_model = _model(name)
        self.model = torch_from_spec(torch, engine_model.spec())
        state = {k: torch.from_numpy(np.array(v)) for k, v in engine_model.state_dict().items()}
        self.model.load_state_dict(state)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.0, momentum=0.9)
        x, t = _data(batch, size)
        self.x, self.t = torch.from_numpy(x), torch.from_numpy(t)

    def train_step(self) -> float:
        self.opt.zero_grad()
        loss = torch_dice_ce(self.torch, self.model(self.x), self.t)
        loss.backward()
        self.opt.step()
        return float(loss.detach())


def _memory_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def infer_once(who: str, patch: int, volume: int, name: str = "unet3d") -> dict:
    """Warm up on one window, reset the peak, time sliding_window_inference over volume^3."""
    x = np.random.default_rng(1).standard_normal((1, volume, volume, volume)).astype(np.float32)
    if who == "torch":
        torch = harness.import_torch()
        engine_model = _model(name)
        net = torch_from_spec(torch, engine_model.spec())
        net.load_state_dict(
            {k: torch.from_numpy(np.array(v)) for k, v in engine_model.state_dict().items()}
        )
        net.eval()

        def model(w):
            with torch.no_grad():
                return net(torch.from_numpy(w)).numpy()

        context = contextlib.nullcontext()
    else:
        model, context = _model(name), backend.use_kernels(who)
    with context, blas_threads(who):
        sliding_window_inference(model, x[:, :patch, :patch, :patch], patch)  # compile, warm up
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set
        before = _memory_kib("VmRSS")
        t0 = time.perf_counter()
        probs = sliding_window_inference(model, x, patch, overlap=0.5, blend="gaussian")
        seconds = time.perf_counter() - t0
        peak = _memory_kib("VmHWM") - before
    return {
        "who": who,
        "seconds": seconds,
        "peak_mib": peak / 1024,
        "checksum": float(probs[1].sum()),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("unet3d", "blocks"), default="unet3d")
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--volume", type=int, default=128)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--skip-infer", action="store_true")
    p.add_argument("--infer-only", help=argparse.SUPPRESS)  # a subprocess: one contender
    args = p.parse_args(argv)
    if args.infer_only:
        print(json.dumps(infer_once(args.infer_only, args.patch, args.volume, args.model)))
        return
    for key, value in harness.environment().items():
        print(f"{key}: {value}")
    print(f"load: {os.getloadavg()} (1, 5, 15 min) on {os.cpu_count()} CPUs")
    steps = {f: EngineUNet(f, args.batch, args.patch, args.model) for f in harness.cpu_flavours()}
    torch = harness.import_torch()
    if torch is not None:
        steps["torch"] = TorchUNet(torch, args.batch, args.patch, args.model)
    first, times = harness.interleaved_steps(steps, args.rounds)
    print(
        f"{args.model if args.model == 'blocks' else f'unet3d {FEATURES}'}, training step, batch {args.batch} x 1x{args.patch}^3, "
        f"{args.rounds} interleaved rounds, first loss {first['numpy']:.5f}"
    )
    median = {who: float(np.median(t)) for who, t in times.items()}
    for who in times:
        print(f"  {who:6s} median {median[who]:.2f} s/step")
    if "torch" in median:
        for who in ("numpy", "numba"):
            if who in median:
                print(
                    f"  {who} vs torch eager: {median['torch'] / median[who]:.2f}x (>= 1: as fast)"
                )
    if args.skip_infer:
        return
    print(
        f"sliding-window inference over {args.volume}^3, roi {args.patch}^3, overlap 0.5, gaussian"
    )
    results = {}
    for who in steps:
        cmd = [sys.executable, "-m", "benchmarks.bench_unet3d", "--infer-only", who]
        cmd += ["--patch", str(args.patch), "--volume", str(args.volume), "--model", args.model]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results[who] = json.loads(out.strip().splitlines()[-1])
        r = results[who]
        print(f"  {who:6s} {r['seconds']:.1f} s, peak memory +{r['peak_mib']:.0f} MiB")
    for who, r in results.items():
        harness.assert_close(r["checksum"], results["numpy"]["checksum"], f"{who} probabilities")
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
