"""The `medgrad` command (also `python -m engine`): parsing only; the work lives in the library."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from engine.errors import MedgradError


def _number(kind, low: float, *, inclusive: bool, high: float | None = None):
    """An argparse type: `kind` (int or float) >= low (or > low), and < high when given."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}") from None
        ok = (value >= low if inclusive else value > low) and (high is None or value < high)
        if not ok:
            bound = f"{'>=' if inclusive else '>'} {low}" + (
                f" and < {high}" if high is not None else ""
            )
            raise argparse.ArgumentTypeError(f"{text} must be {bound}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


POSITIVE_INT = _number(int, 1, inclusive=True)


def _layer_ref(text: str) -> int | str:
    """--layer: an index ("5") or a dotted module name ("layer2.0.conv1")."""
    return int(text) if text.isdigit() else text


POSITIVE_FLOAT = _number(float, 0, inclusive=False)
NON_NEGATIVE_FLOAT = _number(float, 0, inclusive=True)
FRACTION = _number(float, 0, inclusive=False, high=1)


def _class_list(text: str) -> list[str]:
    """An argparse type: "0,1" -> ["0", "1"] (engine.data.labels.parse_classes)."""
    from engine.data.labels import parse_classes

    try:
        return parse_classes(text)
    except MedgradError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _on_error_option(p: argparse.ArgumentParser, default: str, where: str) -> None:
    p.add_argument(
        "--on-error",
        choices=["raise", "skip"],
        default=default,
        help=f"an unreadable image file: stop with its name (raise), or leave it out and list it "
        f"{where} (skip); default {default}",
    )


def _train_options(p: argparse.ArgumentParser) -> None:
    """Options shared by `train` and `cv`: data, model, optimizer, schedule, device."""
    import models  # the registry names the architectures --model accepts

    p.add_argument(
        "--data",
        default="phantoms",
        help="dataset: 'phantoms' (built-in synthetic lesion phantoms) or a path that "
        "engine.data.datasets reads (DICOM folder with labels.csv, MedMNIST .npz, ...)",
    )
    p.add_argument(
        "--n-phantoms",
        type=POSITIVE_INT,
        default=2000,
        help="number of images when --data phantoms (default 2000)",
    )
    p.add_argument(
        "--input-size",
        type=_number(int, 4, inclusive=True),
        default=28,
        help="images are resized to SIZE x SIZE (default 28; seed_cnn needs >= 10)",
    )
    p.add_argument(
        "--classes",
        type=_class_list,
        default=None,
        help="the class labels, comma-separated, in index order (e.g. 0,1): any other label in "
        "the data is an error; without it, labels must be all integers or all text and every "
        "class needs at least 3 files",
    )
    p.add_argument(
        "--model",
        default="seed_cnn",
        help=f"architecture: {', '.join(models.names('classification'))}",
    )
    p.add_argument(
        "--optimizer",
        default="adam",
        choices=["gd", "sgd", "adam"],
        help="gd = full-batch gradient descent, sgd (momentum), adam (default)",
    )
    p.add_argument(
        "--lr",
        type=POSITIVE_FLOAT,
        default=None,
        help="learning rate (default: gd 0.1, sgd 0.05, adam 0.002)",
    )
    p.add_argument(
        "--momentum", type=NON_NEGATIVE_FLOAT, default=0.9, help="SGD momentum (default 0.9)"
    )
    p.add_argument(
        "--weight-decay", type=NON_NEGATIVE_FLOAT, default=0.0, help="L2 weight decay (default 0)"
    )
    p.add_argument("--epochs", type=POSITIVE_INT, default=8, help="epochs (default 8)")
    p.add_argument(
        "--batch-size", type=POSITIVE_INT, default=64, help="mini-batch size (default 64)"
    )
    p.add_argument(
        "--schedule",
        default="constant",
        choices=["constant", "step", "cosine"],
        help="learning-rate schedule per epoch (default constant)",
    )
    p.add_argument(
        "--step-size",
        type=POSITIVE_INT,
        default=5,
        help="step schedule: multiply the rate by --gamma every N epochs (default 5)",
    )
    p.add_argument(
        "--gamma", type=POSITIVE_FLOAT, default=0.1, help="step schedule factor (default 0.1)"
    )
    p.add_argument(
        "--augment",
        action="store_true",
        help="random scaling, rotation, flips and intensity changes while training",
    )
    p.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="where to train (cuda needs CuPy and a GPU)",
    )
    p.add_argument(
        "--kernels",
        default=None,
        choices=["numpy", "numba", "cupy"],
        help="kernel flavour (default: numba on cpu, cupy on cuda)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for initialisation, splits, shuffling and augmentation (default 0)",
    )
    p.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16", "fp16"],
        help="mixed precision of the training steps: conv and dense products on bf16/fp16 "
        "operands with fp32 accumulation, fp32 master weights; fp16 adds dynamic loss scaling "
        "(default fp32)",
    )
    p.add_argument(
        "--graph",
        action="store_true",
        help="capture the training step as a CUDA graph and replay it per batch (cupy flavour "
        "with its own GEMM kernels; elsewhere the step runs eagerly, with a warning saying why)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    _on_error_option(p, "raise", "in the printed account and the report")


def _settings(args: argparse.Namespace, **extra):
    from engine.workflow import TrainSettings

    return TrainSettings(
        model=args.model,
        optimizer=args.optimizer,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        epochs=args.epochs,
        batch_size=args.batch_size,
        schedule=args.schedule,
        step_size=args.step_size,
        gamma=args.gamma,
        augment=args.augment,
        input_size=args.input_size,
        n_phantoms=args.n_phantoms,
        seed=args.seed,
        device=args.device,
        kernels=args.kernels,
        on_error=args.on_error,
        classes=args.classes,
        precision=args.precision,
        graph=args.graph,
        **extra,
    )


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model with a patient-level hold-out; writes a run directory",
        description="Train a model, validate on held-out patients after every epoch, then write "
        "model.npz, checkpoint.npz, metrics.json, plots, Grad-CAM overlays and report.md to the "
        "run directory. --resume continues an interrupted run exactly.",
    )
    _train_options(p)
    p.add_argument(
        "--val-split",
        type=FRACTION,
        default=0.2,
        help="fraction of patients held out for validation (default 0.2)",
    )
    p.add_argument(
        "--patience",
        type=POSITIVE_INT,
        default=None,
        help="early stopping: stop after N epochs without a lower validation loss",
    )
    p.add_argument(
        "--out",
        "--run-dir",
        dest="out",
        default="runs/train",
        help="run directory (default runs/train)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its checkpoint.npz (same settings; "
        "--epochs must be raised above the epochs already run)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --out (without it, or --resume, an existing run is "
        "never overwritten)",
    )
    p.add_argument(
        "--distributed",
        action="store_true",
        help="data-parallel over the ranks of `mpiexec -n N medgrad train ...` (MPI on cpu, "
        "NCCL on cuda); --batch-size stays the global batch; rank 0 writes the run",
    )
    _segmentation_options(p)
    # None: "not given", so that --task segmentation can tell its own defaults apart
    p.set_defaults(func=_cmd_train, model=None, epochs=None, batch_size=None, schedule=None)


def _int_list(text: str) -> tuple[int, ...]:
    """An argparse type: "8,16,32" -> (8, 16, 32), positive ints."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of ints"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text}: every value must be >= 1")
    return values


def _float_list(n: int, *, positive: bool = False, none: bool = False):
    """An argparse type: n comma-separated numbers ("-300,1400"), or "none" when allowed."""

    def parse(text: str):
        if none and text.lower() == "none":
            return None
        try:
            values = tuple(float(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {n} comma-separated numbers"
            ) from None
        if len(values) != n or (positive and min(values) <= 0):
            kind = "positive numbers" if positive else "numbers"
            raise argparse.ArgumentTypeError(f"{text}: expected {n} comma-separated {kind}")
        return values

    parse.__name__ = "list"
    return parse


def _segmentation_options(p: argparse.ArgumentParser) -> None:
    """`train --task segmentation`: a 3-D U-Net on volumes (engine/segmentation.py)."""
    g = p.add_argument_group(
        "segmentation (--task segmentation)",
        "a 3-D U-Net trained on random crops of the volumes of --data (a dataset.json or "
        "images/ + labels/ folder); defaults there: --model unet3d, --batch-size 2, --lr 0.003, "
        "--schedule cosine, 400 iterations",
    )
    g.add_argument(
        "--task",
        choices=("classification", "segmentation"),
        default="classification",
        help="classification (default): one label per image; segmentation: a label per voxel",
    )
    g.add_argument(
        "--features",
        type=_int_list,
        default=(8, 16, 32),
        help="channels per U-Net level, comma-separated (default 8,16,32)",
    )
    g.add_argument(
        "--patch",
        type=_int_list,
        default=(32, 48, 48),
        help="training crop and sliding window D,H,W in voxels; each must divide by 2 ** (levels "
        "- 1) (default 32,48,48)",
    )
    g.add_argument(
        "--iterations",
        type=POSITIVE_INT,
        default=None,
        help="optimizer steps (default 400; --epochs E instead: E passes over the training "
        "volumes, one crop each)",
    )
    g.add_argument(
        "--pos-neg",
        type=_float_list(2),
        default=(1.0, 1.0),
        help="odds of crops centred on foreground vs background, POS,NEG (default 1,1)",
    )
    g.add_argument(
        "--window",
        type=_float_list(2, none=True),
        default=(-300.0, 1400.0),
        help="CT window CENTER,WIDTH in HU mapped to [0, 1] (default -300,1400: -1000..400 HU); "
        "'none' with --normalize zscore for MRI",
    )
    g.add_argument(
        "--normalize",
        choices=("zscore",),
        default=None,
        help="z-score each volume instead of a window (MRI); needs --window none",
    )
    g.add_argument(
        "--target-spacing",
        type=_float_list(3, positive=True),
        default=None,
        help="resample every volume to D,H,W mm first (default: keep each volume's spacing)",
    )
    g.add_argument(
        "--num-classes",
        type=_number(int, 2, inclusive=True),
        default=None,
        help="classes of an images/ + labels/ folder, background included (default 2; a "
        "dataset.json lists its own): a label at or above it is an error naming the file",
    )
    g.add_argument(
        "--overlap",
        type=_number(float, 0, inclusive=True, high=1),
        default=0.25,
        help="sliding-window overlap when evaluating (default 0.25)",
    )
    g.add_argument(
        "--no-augment",
        action="store_true",
        help="segmentation crops are augmented by default (flips, quarter turns, small affine, "
        "intensity); this turns it off",
    )


def _cmd_train(args: argparse.Namespace) -> int:
    from engine import workflow

    if args.task == "segmentation":
        return _train_segmentation(args)
    for name, default in (("model", "seed_cnn"), ("epochs", 8), ("batch_size", 64)):
        if getattr(args, name) is None:
            setattr(args, name, default)
    args.schedule = args.schedule or "constant"
    settings = _settings(args, val_split=args.val_split, patience=args.patience)
    comm, together = None, contextlib.nullcontext()
    if args.distributed:
        from engine import distributed

        comm = distributed.init(args.device)
        together = distributed.fail_together(comm)  # one failing rank stops them all
    try:
        with together:
            workflow.train(
                args.data,
                args.out,
                settings,
                resume=args.resume,
                overwrite=args.overwrite,
                progress=not args.quiet,
                comm=comm,
            )
    except KeyboardInterrupt:
        print(
            f"medgrad: interrupted; every epoch printed is saved in {args.out}: continue with "
            "--resume",
            file=sys.stderr,
        )
        return 130
    return 0


def _train_segmentation(args: argparse.Namespace) -> int:
    """`train --task segmentation`: check the options that do not apply, then
    engine.segmentation.train_segmentation."""
    from engine.errors import ArgumentError
    from engine.segmentation import SegmentationSettings, train_segmentation

    if args.data == "phantoms":
        raise ArgumentError(
            "--task segmentation needs --data DIR: a dataset.json or an images/ + labels/ folder "
            "(medgrad make-demo-data --task segmentation DIR writes one)"
        )
    unsupported = [
        flag
        for flag, given in (
            ("--resume", args.resume),
            ("--distributed", args.distributed),
            ("--patience", args.patience is not None),
            ("--classes", args.classes is not None),
            ("--on-error skip", args.on_error == "skip"),
            ("--precision " + args.precision, args.precision != "fp32"),
            ("--graph", args.graph),
        )
        if given
    ]
    if unsupported:
        raise ArgumentError(f"--task segmentation does not support {', '.join(unsupported)}")
    settings = SegmentationSettings(
        model=args.model or "unet3d",
        features=tuple(args.features),
        patch_size=tuple(args.patch),
        iterations=args.iterations or 400,
        epochs=args.epochs if args.iterations is None else None,
        batch_size=args.batch_size or 2,
        optimizer=args.optimizer,
        lr=args.lr if args.lr is not None else 3e-3,
        weight_decay=args.weight_decay,
        schedule=args.schedule or "cosine",
        pos=args.pos_neg[0],
        neg=args.pos_neg[1],
        augment=not args.no_augment,
        val_split=args.val_split,
        window=None if args.normalize else args.window,
        normalize=args.normalize,
        target_spacing=args.target_spacing,
        num_classes=args.num_classes,
        overlap=args.overlap,
        seed=args.seed,
        device=args.device,
        kernels=args.kernels,
    )
    train_segmentation(
        args.data, args.out, settings, overwrite=args.overwrite, progress=not args.quiet
    )
    return 0


def _segmentation_model(path: str) -> bool:
    """Whether `path` (a model file or a run directory) holds a segmentation model; a file that
    does not load raises its one-line SerializationError."""
    from engine.segmentation import is_segmentation_model

    return is_segmentation_model(path)


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="metrics of a saved model on a labelled dataset",
        description="Accuracy, balanced accuracy, precision, recall, specificity, "
        "F1 and ROC-AUC of a model file on a dataset.",
    )
    p.add_argument(
        "model",
        help="model file (model.npz from a run directory; for segmentation the run "
        "directory itself will do)",
    )
    p.add_argument(
        "data",
        help="dataset: 'phantoms' or a path engine.data.datasets reads; for a segmentation "
        "model a dataset.json or images/ + labels/ folder of volumes",
    )
    p.add_argument(
        "--out",
        default=None,
        help="also write the metrics to this JSON file; for a segmentation model a folder for "
        "metrics.json, per_case.csv, report.md and figures",
    )
    _on_error_option(p, "raise", "in the output and the JSON")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from engine import workflow

    if _segmentation_model(args.model):  # found from the model file: no flag needed
        from engine.segmentation import evaluate_segmentation

        evaluate_segmentation(args.model, args.data, args.out)
        return 0
    workflow.evaluate(args.model, args.data, out=args.out, on_error=args.on_error)
    return 0


def _add_predict(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="class probabilities for image files or folders -> CSV",
        description="Run a model file on images (DICOM files, or folders of them) "
        "prepared as at training time; write one CSV row per image.",
    )
    p.add_argument("model", help="model file (model.npz from a run directory)")
    p.add_argument(
        "inputs",
        nargs="+",
        help="image files and/or folders; for a segmentation model NIfTI volumes and/or DICOM "
        "series folders",
    )
    p.add_argument(
        "--out",
        default=None,
        help="CSV to write (default predictions.csv); for a segmentation model the folder for "
        "one CASE_mask.nii.gz per input, in the input's own voxel grid and affine, and "
        "predictions.csv (default predictions)",
    )
    _on_error_option(p, "skip", "in the CSV with its reason")
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(args: argparse.Namespace) -> int:
    from engine import workflow

    if _segmentation_model(args.model):
        from engine.segmentation import predict_segmentation

        predict_segmentation(args.model, args.inputs, args.out or "predictions")
        return 0
    workflow.predict(args.model, args.inputs, args.out or "predictions.csv", on_error=args.on_error)
    return 0


def _add_cv(sub) -> None:
    p = sub.add_parser(
        "cv",
        help="k-fold cross-validation by patient: per-fold and mean ± std",
        description="Train a fresh model per fold on k-1 folds and test it on the "
        "remaining one; no patient is in two folds' test sets.",
    )
    _train_options(p)
    p.add_argument(
        "--folds",
        type=_number(int, 2, inclusive=True),
        default=5,
        help="number of folds k (default 5)",
    )
    p.add_argument("--out", default=None, help="also write per-fold and summary metrics to JSON")
    p.set_defaults(func=_cmd_cv)


def _cmd_cv(args: argparse.Namespace) -> int:
    import json

    from engine import workflow

    result = workflow.cross_validate(args.data, args.folds, _settings(args), progress=False)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


def _add_explain(sub) -> None:
    p = sub.add_parser(
        "explain",
        help="saliency and Grad-CAM overlays (PNG) for chosen images, or a 3-D model's volume",
        description="For each chosen image of a dataset, save a PNG with the "
        "image, its gradient saliency map and its Grad-CAM heat map. For a 3-D (segmentation) "
        "model, DATA is one volume (NIfTI file or DICOM series folder): per method a slice-view "
        "PNG and the heat map as NIfTI on the volume's grid.",
    )
    p.add_argument("model", help="model file (model.npz from a run directory)")
    p.add_argument(
        "data",
        help="dataset: 'phantoms' or a path engine.data.datasets reads; for a 3-D model a "
        "volume: a NIfTI file (.nii, .nii.gz) or a DICOM series folder",
    )
    p.add_argument(
        "--index",
        type=int,
        nargs="+",
        default=[0, 1, 2, 3],
        help="which images of the dataset (default 0 1 2 3; not used for volumes)",
    )
    p.add_argument(
        "--layer",
        type=_layer_ref,
        default=None,
        help="the conv layer for Grad-CAM: its index in a Sequential model or its dotted module "
        "name, e.g. layer4, layer2.0.conv1 or, in a U-Net, skip.down (default: the last one; in "
        "a U-Net the last decoder block, upcat)",
    )
    p.add_argument(
        "--target",
        type=int,
        default=None,
        help="class to explain (default: the predicted class; for a segmentation model the "
        "foreground class predicted on most voxels, explained over those voxels)",
    )
    p.add_argument(
        "--method",
        choices=["gradcam", "saliency"],
        default=None,
        help="3-D models: which map to make (default both); 2-D models always get both",
    )
    p.add_argument("--out", default="explain", help="output folder (default explain)")
    p.set_defaults(func=_cmd_explain)


def _cmd_explain(args: argparse.Namespace) -> int:
    from engine import workflow
    from engine.checkpoint import load_model
    from engine.data.volumes import is_nifti
    from engine.errors import ArgumentError
    from engine.explain import spatial_dims

    model, ckpt = load_model(args.model)
    if spatial_dims(model) == 3:
        _explain_volume(args, model, ckpt)
        return 0
    if args.method is not None:
        raise ArgumentError(f"--method {args.method}: 2-D models always get both maps")
    if is_nifti(args.data):
        raise ArgumentError(f"{args.data}: a volume, but {args.model} is not a 3-D model")
    workflow.explain(
        args.model, args.data, args.index, args.out, layer=args.layer, target=args.target
    )
    return 0


def _explain_volume(args: argparse.Namespace, model, ckpt) -> None:
    """`medgrad explain` for a 3-D model: one volume, read and prepared as the model file says
    (its preprocessing, as training did: engine.segmentation.prepare_volume)."""
    from pathlib import Path

    from engine.data.volumes import case_name, read_volume
    from engine.errors import ArgumentError
    from engine.explain import explain_volume, grad_cam_layer
    from engine.workflow import check_out_folder

    methods = (args.method,) if args.method else ("gradcam", "saliency")
    if "gradcam" in methods:
        try:
            grad_cam_layer(model, args.layer)
        except ArgumentError as exc:
            raise ArgumentError(f"--layer {args.layer}: {exc}") from None
    volume, meta = read_volume(args.data)
    check_out_folder(Path(args.out))
    paths = explain_volume(
        model,
        volume,
        meta,
        args.out,
        preprocessing=ckpt.preprocessing,
        methods=methods,
        target=args.target,
        layer=args.layer,
        classes=ckpt.classes,
        name=case_name(args.data),
    )
    print(f"{len(paths)} files -> {args.out}")


def _add_bench(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="run the benchmark suite (pytest benchmarks --benchmark-only)",
        description="Run the kernel and layer benchmarks with pytest-benchmark; "
        "extra arguments go to pytest.",
    )
    p.add_argument(
        "pytest_args",
        nargs=argparse.REMAINDER,
        help="passed on to pytest after a -- (e.g. medgrad bench -- -k conv)",
    )
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    import subprocess
    from pathlib import Path

    if not Path("benchmarks").is_dir():
        raise MedgradError("no benchmarks/ folder here: run medgrad bench from the repository root")
    extra = args.pytest_args[1:] if args.pytest_args[:1] == ["--"] else args.pytest_args
    cmd = [sys.executable, "-m", "pytest", "benchmarks", "--benchmark-only", *extra]
    return subprocess.call(cmd)


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole story: seed CNN with SGD and Adam, then DICOM "
        "data -> train -> evaluate -> explain -> report, then a 3-D U-Net on CT volumes",
        description="What `make demo` runs; see engine/demo.py.",
    )
    p.add_argument(
        "--data-dir",
        default="demo-data",
        help="where the synthetic DICOM data and CT volumes are generated (default demo-data)",
    )
    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    p.add_argument("--seed", type=int, default=0, help="seed for data and training (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from engine import demo

    demo.run(seed=args.seed, progress=not args.quiet, data_dir=args.data_dir, run_dir=args.out)
    return 0


def _add_anonymize(sub) -> None:
    p = sub.add_parser(
        "anonymize",
        help="de-identify DICOM files (PS3.15 Basic Profile)",
        description="Copy every DICOM file under IN to the new folder OUT, "
        "de-identified by the Basic Application Level Confidentiality Profile "
        "(DICOM PS3.15 Table E.1-1). Never writes into IN.",
    )
    p.add_argument("input", metavar="IN", help="a DICOM file or a folder of them")
    p.add_argument("output", metavar="OUT", help="a new or empty folder, outside IN")
    p.add_argument(
        "--key",
        default=None,
        help="secret for the keyed UID/ID/date mapping: the same key gives the same "
        "output (default: a random key, not saved)",
    )
    dates = p.add_mutually_exclusive_group()
    dates.add_argument(
        "--shift-dates",
        action="store_true",
        help="shift dates by a secret per-patient offset (keeps intervals)",
    )
    dates.add_argument(
        "--replace-dates",
        action="store_true",
        help="empty, remove or replace dates as the Basic Profile says (default)",
    )
    p.add_argument(
        "--allow-burned-in",
        action="store_true",
        help="also copy files whose pixels may carry burned-in identity "
        "(BurnedInAnnotation YES, or absent for US, XA, RF, endoscopy, secondary "
        "capture); their pixels are NOT cleaned (--clean-pixels is not supported)",
    )
    p.add_argument(
        "--class-folders",
        action="store_true",
        help="IN has one sub-folder per class and no labels.csv: keep the class folder names "
        "(OUT/<class>/...); without it folder names are dropped. IN/labels.csv is always "
        "carried to OUT/labels.csv (new paths, pseudonymized patient ids)",
    )
    p.add_argument(
        "--report",
        default=None,
        metavar="FILE",
        help="also write refused files by reason to this JSON file (keyed file tokens, no "
        "paths or values; not inside IN)",
    )
    p.set_defaults(func=_cmd_anonymize)


def _cmd_anonymize(args: argparse.Namespace) -> int:
    from pathlib import Path

    from engine.data.deidentify import anonymize

    report = anonymize(
        args.input,
        args.output,
        key=args.key,
        shift_dates=args.shift_dates,
        allow_burned_in=args.allow_burned_in,
        class_folders=args.class_folders,
        report_path=args.report,
    )
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(report.skipped.items())) or "none"
    print(
        f"wrote {len(report.written)} de-identified files to {args.output} "
        f"(skipped: {skipped}); log: {report.log_path}"
    )
    labels = report.labels
    if labels is None and Path(args.input).is_dir():
        print(
            "no labels.csv in IN: no labels carried (use --class-folders if IN's folders are classes)"
        )
    elif labels is not None and labels.problems:
        print(f"labels NOT carried ({labels.kind}):", file=sys.stderr)
        for problem in labels.problems:
            print(f"  {problem}", file=sys.stderr)
    elif labels is not None:
        dropped = sum(labels.dropped_rows.values())
        print(
            f"labels: {labels.rows_out} rows ({labels.kind}) -> "
            f"{labels.path or args.output}; patient ids pseudonymized"
            + (f"; {dropped} rows dropped with their files" if dropped else "")
            + (
                f"; dropped columns: {', '.join(labels.dropped_columns)}"
                if labels.dropped_columns
                else ""
            )
        )
    for refusal in report.refused:
        print(f"refused {refusal.path} [{refusal.token}]: {refusal.reason}", file=sys.stderr)
    if report.refused:
        total = len(report.written) + len(report.refused)
        by_code = ", ".join(f"{n} {code}" for code, n in sorted(report.refused_by_code().items()))
        print(f"refused {len(report.refused)} of {total} files: {by_code}", file=sys.stderr)
    if report.report_path is not None:
        print(f"report: {report.report_path}")
    return 1 if report.refused or (labels is not None and labels.problems) else 0


def _add_verify(sub) -> None:
    p = sub.add_parser(
        "verify",
        help="check a dataset folder against its SHA-256 manifest",
        description="Report files changed, missing or added since the manifest "
        "was built; exit status 1 if any.",
    )
    p.add_argument("data", metavar="DATA", help="the dataset folder")
    p.add_argument("--manifest", required=True, metavar="FILE", help="the manifest JSON file")
    p.add_argument(
        "--write",
        action="store_true",
        help="build a new manifest of DATA and write it to FILE instead of checking",
    )
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


def _add_make_demo_data(sub) -> None:
    p = sub.add_parser(
        "make-demo-data",
        help="write the synthetic chest-CT DICOM study set",
        description="Write deterministic CT Image Storage files (fake patients, "
        "lung nodules as labels) and DIR/labels.csv; see "
        "engine/data/synthetic_dicom.py.",
    )
    p.add_argument("out_dir", metavar="DIR", help="folder to write (created if missing)")
    p.add_argument(
        "--patients", type=POSITIVE_INT, default=40, help="number of patients (default 40)"
    )
    p.add_argument(
        "--slices",
        type=_number(int, 5, inclusive=True),
        default=48,
        help="slices per patient, at least 5 (default 48)",
    )
    p.add_argument(
        "--size",
        type=_number(int, 32, inclusive=True),
        default=128,
        help="image rows and columns, at least 32 (default 128)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed: same seed, same files (default 0)")
    p.add_argument(
        "--task",
        choices=("classification", "segmentation"),
        default="classification",
        help="segmentation: --patients CT volumes (--size in-plane) with nodule masks as NIfTI, "
        "dataset.json and DICOM series; see engine/data/synthetic_volumes.py",
    )
    p.set_defaults(func=_cmd_make_demo_data)


def _cmd_make_demo_data(args: argparse.Namespace) -> int:
    from engine.data.synthetic_dicom import make_demo_data

    if args.task == "segmentation":
        from engine.data.synthetic_volumes import make_segmentation_demo_data

        out = make_segmentation_demo_data(args.out_dir, args.patients, args.size, args.seed)
        print(f"wrote {args.patients} volumes with masks and {out / 'dataset.json'}")
        return 0
    out = make_demo_data(
        args.out_dir,
        n_patients=args.patients,
        slices_per_patient=args.slices,
        size=args.size,
        seed=args.seed,
    )
    print(f"wrote {args.patients * args.slices} DICOM files and {out / 'labels.csv'}")
    return 0


def _add_federated(sub) -> None:
    p = sub.add_parser(
        "federated",
        help="federated training with Flower: a server and one client per site",
        description="Federated training (engine/federated.py): each site trains on its own "
        "DICOM folder and sends back only model parameters and its image count; the server "
        "aggregates them (FedAvg, or FedProx) and writes OUT/model.npz after every round.",
    )
    roles = p.add_subparsers(dest="role", required=True, metavar="ROLE")
    s = roles.add_parser("server", help="aggregate the sites' updates; writes OUT/model.npz")
    s.add_argument("--rounds", type=POSITIVE_INT, required=True, help="federated rounds")
    s.add_argument("--min-clients", type=POSITIVE_INT, required=True, help="sites per round")
    s.add_argument("--address", default="127.0.0.1:8080", help="HOST:PORT to listen on")
    s.add_argument("--out", default="runs/federated", help="folder for model.npz")
    s.add_argument("--model", default="seed_cnn", help="architecture (default seed_cnn)")
    s.add_argument("--input-size", type=POSITIVE_INT, default=28, help="image size (default 28)")
    s.add_argument("--in-channels", type=POSITIVE_INT, default=1, help="channels (default 1)")
    s.add_argument(
        "--classes",
        type=_class_list,
        default=["0", "1"],
        help="class names in index order, as in the sites' labels.csv (default 0,1)",
    )
    s.add_argument("--local-epochs", type=POSITIVE_INT, default=1, help="epochs per round")
    s.add_argument("--batch-size", type=POSITIVE_INT, default=32, help="local batch size")
    s.add_argument("--optimizer", default="adam", choices=["gd", "sgd", "adam"])
    s.add_argument("--lr", type=_number(float, 0, inclusive=False), default=2e-3)
    s.add_argument("--seed", type=int, default=0, help="initial model and local shuffling")
    s.add_argument("--strategy", default="fedavg", choices=["fedavg", "fedprox"])
    s.add_argument(
        "--proximal-mu",
        type=_number(float, 0, inclusive=True),
        default=0.0,
        help="FedProx proximal term mu (with --strategy fedprox)",
    )
    s.add_argument(
        "--dp-clip",
        type=_number(float, 0, inclusive=True),
        default=0.0,
        help="differential privacy: clip each site's update to this L2 norm",
    )
    s.add_argument(
        "--dp-noise",
        type=_number(float, 0, inclusive=True),
        default=0.0,
        help="differential privacy: Gaussian noise std as a multiple of --dp-clip",
    )
    s.add_argument(
        "--round-timeout",
        type=_number(float, 0, inclusive=False),
        default=600.0,
        help="seconds a round may take (default 600)",
    )
    c = roles.add_parser("client", help="train on this site's data for the server")
    c.add_argument("--data", required=True, help="this site's DICOM folder with labels.csv")
    c.add_argument("--server", required=True, help="the server's HOST:PORT")
    c.add_argument(
        "--timeout",
        type=_number(float, 0, inclusive=False),
        default=600.0,
        help="give up reaching the server after this many seconds (default 600)",
    )
    p.set_defaults(func=_cmd_federated)


def _cmd_federated(args: argparse.Namespace) -> int:
    from engine import federated

    if args.role == "client":
        federated.run_client(args.data, args.server, timeout=args.timeout)
        print(f"federated client: done ({args.data} never left this machine)")
        return 0
    plan = federated.Plan(
        model=args.model,
        input_size=args.input_size,
        in_channels=args.in_channels,
        classes=tuple(args.classes),
        epochs=args.local_epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        seed=args.seed,
        proximal_mu=args.proximal_mu,
        dp_clip=args.dp_clip,
        dp_noise=args.dp_noise,
    )
    if (args.dp_clip > 0) != (args.dp_noise > 0):
        raise federated.ArgumentError("--dp-clip and --dp-noise go together (both > 0)")
    path = federated.serve(
        args.address,
        args.out,
        plan,
        rounds=args.rounds,
        min_clients=args.min_clients,
        strategy=args.strategy,
        round_timeout=args.round_timeout,
    )
    print(f"global model: {path}")
    return 0


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a model file as ONNX (needs the onnx package: the export extra)",
        description="Export MODEL.npz to OUT.onnx with engine.export.to_onnx: every layer, "
        "preprocessing and class names as metadata, checked with onnx.checker.",
    )
    p.add_argument("model", metavar="MODEL.npz", help="a medgrad model file")
    p.add_argument("out", metavar="OUT.onnx", help="the ONNX file to write")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 13..21 (default 17)")
    p.add_argument(
        "--dynamic-batch", action="store_true", help="a symbolic batch axis (default: batch 1)"
    )
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from engine.export import to_onnx

    path = to_onnx(args.model, args.out, opset=args.opset, dynamic_batch=args.dynamic_batch)
    print(f"wrote {path} (opset {args.opset})")
    return 0


def _add_quantize(sub) -> None:
    p = sub.add_parser(
        "quantize",
        help="post-training int8 quantization of a model file",
        description="Calibrate activation scales on a sample of DATA (a folder the model was "
        "trained on) and write an int8 model file that engine.deploy runs.",
    )
    p.add_argument("model", metavar="MODEL.npz", help="a medgrad model file (float32)")
    p.add_argument("--calibration", required=True, metavar="DATA", help="images to calibrate on")
    p.add_argument("--out", required=True, metavar="OUT.npz", help="the int8 model file to write")
    p.add_argument(
        "--samples", type=POSITIVE_INT, default=256, help="calibration images (default 256)"
    )
    p.add_argument(
        "--percentile",
        type=_number(float, 50.0, inclusive=True),
        default=100.0,
        help="activation range: this percentile of |activation| (default 100: the max)",
    )
    p.set_defaults(func=_cmd_quantize)


def _cmd_quantize(args: argparse.Namespace) -> int:
    from engine.quantize import quantize_file

    report = quantize_file(
        args.model, args.calibration, args.out, samples=args.samples, percentile=args.percentile
    )
    print(report)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medgrad", description="Framework-free deep learning for medical images."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_train(sub)
    _add_evaluate(sub)
    _add_predict(sub)
    _add_cv(sub)
    _add_explain(sub)
    _add_bench(sub)
    _add_demo(sub)
    _add_anonymize(sub)
    _add_verify(sub)
    _add_make_demo_data(sub)
    _add_federated(sub)
    _add_export(sub)
    _add_quantize(sub)
    return parser


# the subcommands that train or infer: the ones the process settings below are for
_COMPUTE = (
    "_cmd_train",
    "_cmd_evaluate",
    "_cmd_predict",
    "_cmd_cv",
    "_cmd_explain",
    "_cmd_bench",
    "_cmd_demo",
    "_cmd_federated",
)


@contextlib.contextmanager
def _program_settings(args):
    """What the `medgrad` program sets for its own process, which the library never does behind an
    embedding program's back (kernels/numba_cpu/tasks.py): glibc malloc keeps freed blocks
    (ENGINE_MALLOC_TUNING=1 unless the user set it: each step's fresh arrays page-fault less), and,
    when the CPU runs the numba flavour, NumPy's BLAS on one thread for the whole command (the
    flavour runs its own threads; the dense layers' small GEMMs on two BLAS threads cost 3-4x more
    on 2 cores, benchmarks/README.md)."""
    if args.func.__name__ not in _COMPUTE:
        yield
        return
    os.environ.setdefault("ENGINE_MALLOC_TUNING", "1")
    from engine import backend

    flavour = getattr(args, "kernels", None)
    with backend.use_kernels(flavour) if flavour else contextlib.nullcontext():
        numba_cpu = backend.backend_for("cpu").flavour == "numba"
    if not numba_cpu:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with _program_settings(args):
            return args.func(args)
    except MedgradError as exc:
        print(f"medgrad: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the file system said no (disk full, permissions): one line too
        print(f"medgrad: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medgrad: interrupted", file=sys.stderr)
        return 130
