"""The `medgrad` command (also `python -m engine`): parsing only; the work lives in the library."""

from __future__ import annotations

import argparse
import sys
import time

from engine.errors import MedgradError


def _cmd_train(args: argparse.Namespace) -> int:
    import numpy as np

    import models
    from engine import optim
    from engine.data.phantoms import make_phantoms
    from engine.train import evaluate, fit

    x, y = make_phantoms(args.n_train + args.n_test, size=28, seed=args.seed)
    train, test = (x[: args.n_train], y[: args.n_train]), (x[args.n_train :], y[args.n_train :])
    model = models.get(args.model, num_classes=2, rng=np.random.default_rng(args.seed))
    kwargs = {"momentum": args.momentum} if args.optimizer == "sgd" else {}
    opt = optim.OPTIMIZERS[args.optimizer](model.parameters(), lr=args.lr, **kwargs)
    print(f"training {args.model} with {args.optimizer} (lr {args.lr}) on {len(train[0])} phantoms")
    start = time.perf_counter()
    fit(model, opt, train, test, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
        progress=not args.quiet)  # fmt: skip
    result = evaluate(model, *test)
    print(f"test accuracy {result['accuracy']:.4f}  test loss {result['loss']:.4f}  "
          f"({time.perf_counter() - start:.1f} s)")  # fmt: skip
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from engine import demo

    demo.run(seed=args.seed, progress=not args.quiet)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medgrad", description="Framework-free deep learning for medical images."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train a model on the built-in synthetic phantoms",
                           description="Train a model and print per-epoch loss and accuracy.")  # fmt: skip
    train.add_argument("--model", default="seed_cnn", help="architecture: seed_cnn, lenet5, mlp")
    train.add_argument("--optimizer", default="adam", choices=["gd", "sgd", "adam"])
    train.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    train.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    train.add_argument("--epochs", type=int, default=3)
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--n-train", type=int, default=2000, help="training phantoms (default 2000)")
    train.add_argument("--n-test", type=int, default=500, help="test phantoms (default 500)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=_cmd_train)

    demo = sub.add_parser("demo", help="the main job: train the seed CNN with SGD and Adam",
                          description="Train the seed CNN with SGD and with Adam on the built-in data.")  # fmt: skip
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MedgradError as exc:
        print(f"medgrad: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medgrad: interrupted", file=sys.stderr)
        return 130
