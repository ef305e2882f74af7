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


def _add_anonymize(sub) -> None:
    p = sub.add_parser("anonymize", help="de-identify DICOM files (PS3.15 Basic Profile)",
                       description="Copy every DICOM file under IN to the new folder OUT, "
                       "de-identified by the Basic Application Level Confidentiality Profile "
                       "(DICOM PS3.15 Table E.1-1). Never writes into IN.")  # fmt: skip
    p.add_argument("input", metavar="IN", help="a DICOM file or a folder of them")
    p.add_argument("output", metavar="OUT", help="a new or empty folder, outside IN")
    p.add_argument("--key", default=None,
                   help="secret for the keyed UID/ID/date mapping: the same key gives the same "
                   "output (default: a random key, not saved)")  # fmt: skip
    dates = p.add_mutually_exclusive_group()
    dates.add_argument("--shift-dates", action="store_true",
                       help="shift dates by a secret per-patient offset (keeps intervals)")  # fmt: skip
    dates.add_argument("--replace-dates", action="store_true",
                       help="empty, remove or replace dates as the Basic Profile says (default)")  # fmt: skip
    p.add_argument("--allow-burned-in", action="store_true",
                   help="also copy files whose pixels may carry burned-in identity "
                   "(BurnedInAnnotation YES, or absent for US, XA, RF, endoscopy, secondary "
                   "capture); their pixels are NOT cleaned")  # fmt: skip
    p.set_defaults(func=_cmd_anonymize)


def _cmd_anonymize(args: argparse.Namespace) -> int:
    from engine.data.deidentify import anonymize

    report = anonymize(args.input, args.output, key=args.key, shift_dates=args.shift_dates,
                       allow_burned_in=args.allow_burned_in)  # fmt: skip
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(report.skipped.items())) or "none"
    print(f"wrote {len(report.written)} de-identified files to {args.output} "
          f"(skipped: {skipped}); log: {report.log_path}")  # fmt: skip
    for path, reason in report.refused:
        print(f"refused {path}: {reason}", file=sys.stderr)
    return 1 if report.refused else 0


def _add_verify(sub) -> None:
    p = sub.add_parser("verify", help="check a dataset folder against its SHA-256 manifest",
                       description="Report files changed, missing or added since the manifest "
                       "was built; exit status 1 if any.")  # fmt: skip
    p.add_argument("data", metavar="DATA", help="the dataset folder")
    p.add_argument("--manifest", required=True, metavar="FILE", help="the manifest JSON file")
    p.add_argument("--write", action="store_true",
                   help="build a new manifest of DATA and write it to FILE instead of checking")  # fmt: skip
    p.set_defaults(func=_cmd_verify)


def _cmd_verify(args: argparse.Namespace) -> int:
    from engine.data.manifest import build_manifest, verify_manifest, write_manifest

    if args.write:
        manifest = build_manifest(args.data, exclude=[args.manifest])
        write_manifest(manifest, args.manifest)
        print(f"wrote manifest of {manifest['count']} files to {args.manifest}")
        return 0
    report = verify_manifest(args.data, args.manifest)
    for kind in ("changed", "missing", "added"):
        for rel in getattr(report, kind):
            print(f"{kind}: {rel}")
    print(report.summary())
    return 0 if report.ok else 1


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
    _add_anonymize(sub)
    _add_verify(sub)
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
