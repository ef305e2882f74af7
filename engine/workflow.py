"""The clinician-researcher's workflow behind the `medgrad` subcommands: train, evaluate, predict,
cross-validate, explain. Each function takes plain settings, prints a short account, writes its
files and returns a JSON-ready dict, so the command line stays a thin parser.

Data sources: "phantoms" (the built-in synthetic lesion phantoms, each image its own patient) or a
path that engine.data.datasets.load_dataset reads (a DICOM folder with labels.csv, MedMNIST .npz,
...). Splits are by patient (engine.data.splits), so no patient is in both training and test data.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np

from engine import backend, metrics
from engine.checkpoint import atomic_write, load_model
from engine.errors import ArgumentError, DataError, MedgradError

if TYPE_CHECKING:
    from engine.distributed import Communicator

PHANTOM_CLASSES = ["no lesion", "lesion"]
# what `train` writes into a run directory: a folder holding any of these holds a run
RUN_FILES = (
    "model.npz",
    "checkpoint.npz",
    "metrics.json",
    "report.md",
    "manifest.json",
    "curves.png",
    "confusion_matrix.png",
    "roc.png",
)
DEFAULT_LR = {"gd": 0.1, "sgd": 0.05, "adam": 2e-3}


@dataclass
class TrainSettings:
    """Everything `medgrad train` / `medgrad cv` can set; stored in the run's metrics.json."""

    model: str = "seed_cnn"
    optimizer: str = "adam"
    lr: float | None = None  # None: DEFAULT_LR[optimizer]
    momentum: float = 0.9
    weight_decay: float = 0.0
    epochs: int = 8
    batch_size: int = 64
    schedule: str = "constant"
    step_size: int = 5
    gamma: float = 0.1
    patience: int | None = None
    augment: bool = False
    val_split: float = 0.2
    input_size: int = 28
    n_phantoms: int = 2000
    seed: int = 0
    device: str = "cpu"
    kernels: str | None = None
    on_error: str = "raise"  # "skip": leave unreadable files out, listed in the report
    classes: list[str] | None = None  # the class names in index order, if stated (--classes)
    precision: str = "fp32"  # "fp32" | "bf16" | "fp16": engine.amp's policy for the train steps
    graph: bool = False  # train through a captured step (engine.graph; eager where not possible)
    extra: dict = field(default_factory=dict)


# ---- data ----


def load_data(
    source: str | os.PathLike,
    *,
    input_size: int = 28,
    n_phantoms: int = 2000,
    seed: int = 0,
    on_error: str = "raise",
    classes: list[str] | None = None,
):
    """A dataset with .images float32 (n, c, h, w), .labels int64 (n,), .groups (n,) patient ids,
    .paths, .classes, .skipped [(path, reason)] and .preprocessing (how the images were prepared).

    on_error: "raise" or "skip" unreadable files; classes: the class names in index order, if
    known (a model's, or --classes): labels are mapped onto them by name, others are an error.
    """
    if str(source) == "phantoms":
        from engine.data.phantoms import make_phantoms

        if classes is not None and list(classes) != PHANTOM_CLASSES:
            raise DataError(
                f"phantoms: the phantom classes {PHANTOM_CLASSES} are not the classes "
                f"{list(classes)}"
            )
        x, y = make_phantoms(n_phantoms, size=input_size, seed=seed)
        return SimpleNamespace(
            images=x,
            labels=y,
            groups=np.arange(len(y)),
            paths=None,
            classes=PHANTOM_CLASSES,
            skipped=[],
            preprocessing={"source": "phantoms", "input_size": input_size, "in_channels": 1},
        )
    if not Path(source).exists():
        raise DataError(f"{source}: no such file or folder (or use --data phantoms)")
    try:
        from engine.data.datasets import load_dataset
    except ImportError as exc:
        raise DataError(f"{source}: reading datasets needs engine.data.datasets ({exc})") from exc
    ds = load_dataset(source, input_size=input_size, on_error=on_error, classes=classes)
    info = getattr(ds, "info", {}) or {}
    # what inference needs to prepare new images the same way (predict, engine.deploy users)
    ds.preprocessing = {
        "input_size": input_size,
        "in_channels": int(ds.images.shape[1]),
        **{k: info[k] for k in ("window", "method", "normalize") if k in info},
    }
    return ds


class _RankImages:
    """The images of a data-parallel rank, indexed by global sample index like the whole
    dataset's (n, c, h, w) array, but holding (and having decoded) only this rank's rows."""

    def __init__(self, local: np.ndarray, rows: np.ndarray, n: int):
        self.local, self.shape, self.dtype = local, (n, *local.shape[1:]), local.dtype
        self.position = np.full(n, -1, dtype=np.int64)
        self.position[rows] = np.arange(len(rows))

    def __getitem__(self, idx) -> np.ndarray:
        pos = self.position[idx]
        assert (pos >= 0).all(), "a rank asked for images of another rank's patients"
        return self.local[pos]


def _is_dicom_folder(source) -> bool:
    source = Path(source)
    return source.is_dir() and not (
        not (source / "labels.csv").exists() and any(source.glob("*-images*idx3*"))
    )


def _load(source, settings: TrainSettings, comm: Communicator | None = None):
    """load_data with the settings; a data-parallel rank on a DICOM folder decodes only its
    patients' files (load_rank_data). Phantoms, IDX and .npz are generated or stored as one
    array: every rank holds them whole."""
    if comm is not None and str(source) != "phantoms" and _is_dicom_folder(source):
        return load_rank_data(source, settings, comm)
    return load_data(
        source,
        input_size=settings.input_size,
        n_phantoms=settings.n_phantoms,
        seed=settings.seed,
        on_error=settings.on_error,
        classes=settings.classes,
    )


def load_rank_data(source, settings: TrainSettings, comm: Communicator):
    """load_data for one rank of a data-parallel run on a DICOM folder: the whole folder's labels,
    patients and paths (labels.csv and headers, no pixels), so every rank draws the same split
    and shards, and the pixels of this rank's patients only (load_dataset(patients=)).

    .images is indexed by global sample index and holds this rank's rows. A file whose header
    reads but whose pixels do not is a DataError here, even with on_error="skip", since the
    ranks would no longer agree on the sample numbering.
    """
    from engine.data.datasets import load_dataset
    from engine.data.dicom import DEFAULT_MAX_PIXELS
    from engine.data.sources import dicom_index

    skipped: list = []
    classes, labels, groups, paths = dicom_index(
        Path(source),
        classes=settings.classes,
        on_error=settings.on_error,
        max_pixels=DEFAULT_MAX_PIXELS,
        skipped=skipped,
    )
    if not len(labels):
        raise DataError(f"{source}: no readable images ({len(skipped)} files skipped)")
    ds = SimpleNamespace(labels=labels, groups=groups, paths=paths, classes=classes)
    ds.skipped = skipped
    train_idx, val_idx = holdout(ds, settings.val_split, settings.seed)
    mine, vmine = _rank_rows(ds, train_idx, val_idx, comm)
    patients = set(groups[train_idx[mine]]) | set(groups[val_idx[vmine]])
    local = load_dataset(
        source,
        input_size=settings.input_size,
        on_error=settings.on_error,
        classes=classes,
        patients=patients,
    )
    rows = np.flatnonzero(np.isin(groups, list(patients)))
    if list(local.paths) != [paths[r] for r in rows]:
        odd = sorted(set(local.paths) ^ {paths[r] for r in rows})[:3] or local.skipped[:3]
        raise DataError(
            f"{source}: rank {comm.rank}: its patients' files decode differently from what their "
            f"headers say ({odd}); with --distributed every listed file must read: fix or "
            "remove it"
        )
    ds.images = _RankImages(local.images, rows, len(labels))
    ds.preprocessing = {
        "input_size": settings.input_size,
        "in_channels": int(local.images.shape[1]),
        **{k: local.info[k] for k in ("window", "method", "normalize") if k in local.info},
    }
    return ds


def _two_classes(ds, source) -> None:
    """Training on one class learns nothing: a DataError naming the source and the class."""
    present = np.unique(ds.labels)
    if len(present) < 2:
        only = _classes(ds)[int(present[0])] if len(present) else "none"
        raise DataError(f"{source}: every image has the label {only!r}; training needs 2 classes")


def _classes(ds) -> list[str]:
    classes = getattr(ds, "classes", None)
    k = int(ds.labels.max()) + 1
    return [str(c) for c in classes] if classes else [str(i) for i in range(k)]


def holdout(ds, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx) by patient, stratified by label (engine.data.splits)."""
    from engine.data.splits import holdout_split

    if not 0 < val_fraction < 1:
        raise DataError(f"--val-split must lie in (0, 1), got {val_fraction}")
    n_patients = len(np.unique(ds.groups))
    if n_patients < 2:  # holdout_split says so in its own words
        return holdout_split(ds.labels, ds.groups, val_fraction, seed)
    try:
        return holdout_split(ds.labels, ds.groups, val_fraction, seed)
    except DataError as exc:  # one side empty: say it with the option's name
        raise DataError(
            f"--val-split {val_fraction} with {n_patients} patients leaves the training or the "
            "validation side empty; change --val-split or add patients"
        ) from exc


# ---- checks made before any data is loaded ----


def check_model(settings: TrainSettings) -> None:
    """ArgumentError unless settings.model exists and accepts settings.input_size (built once,
    tiny, on the CPU), so a bad option fails before a large dataset has loaded."""
    import models

    if settings.model in models.REGISTRY and settings.model not in models.names("classification"):
        raise ArgumentError(
            f"--model {settings.model}: a segmentation model; medgrad train fits classification "
            f"models ({', '.join(models.names('classification'))})"
        )
    try:
        models.get(
            settings.model,
            in_channels=1,
            input_size=settings.input_size,
            num_classes=2,
            rng=np.random.default_rng(0),
        )
    except ArgumentError:
        raise
    except ValueError as exc:
        raise ArgumentError(f"--input-size {settings.input_size}: {exc}") from exc


def check_out_folder(folder: Path, option: str = "--out") -> None:
    """Create `folder` (and parents) or raise ArgumentError naming option: a file, not creatable,
    or not writable."""
    if folder.exists() and not folder.is_dir():
        raise ArgumentError(f"{option} {folder}: is a file; expected a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArgumentError(
            f"{option} {folder}: cannot create the folder ({exc.strerror})"
        ) from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ArgumentError(f"{option} {folder}: the folder is not writable")


def check_run_dir(
    run_dir: Path, settings: TrainSettings, *, resume: bool, overwrite: bool
) -> list[str]:
    """Refuse to replace an earlier run unless asked: --resume continues it (only to more
    epochs than it ran), --overwrite replaces it. Then make sure run_dir is a writable folder.
    Returns the earlier run's files, for remove_run once the new data has loaded."""
    if resume and overwrite:
        raise ArgumentError("--resume and --overwrite exclude each other")
    earlier = [n for n in RUN_FILES if (run_dir / n).exists()] if run_dir.is_dir() else []
    if earlier and not (resume or overwrite):
        raise ArgumentError(
            f"--out {run_dir} holds an earlier run ({', '.join(earlier)}); add --resume to "
            "continue it or --overwrite to replace it, or choose another --out"
        )
    if resume:
        _check_resume(run_dir, settings.epochs)
    check_out_folder(run_dir)
    return earlier


def remove_run(run_dir: Path, names: list[str]) -> None:
    """Delete an earlier run's files (--overwrite), so nothing of it mixes with the new one."""
    import shutil

    for name in names:
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "explain", ignore_errors=True)


def _check_resume(run_dir: Path, epochs: int) -> None:
    """--resume needs a checkpoint that has epochs left to run."""
    from engine.checkpoint import load_checkpoint

    state = load_checkpoint(run_dir / "checkpoint.npz").train_state or {}
    done = int(state.get("epoch", 0))
    if state.get("best", {}).get("bad_epochs") == -1:
        raise ArgumentError(
            f"--resume: the run in {run_dir} stopped early after epoch {done} (--patience): "
            "there is nothing to continue"
        )
    if epochs <= done:
        raise ArgumentError(
            f"--epochs {epochs}: the run in {run_dir} has already run {done} epochs; give "
            f"--epochs above {done} to train more"
        )


# ---- training ----


@contextlib.contextmanager
def _compute(device: str, kernels: str | None):
    """Check the device once (DeviceError with one line if it is missing) and pick the kernels."""
    backend.backend_for(device)
    with backend.use_kernels(kernels) if kernels else contextlib.nullcontext():
        yield


def _augment(enabled: bool):
    if not enabled:
        return None
    from engine.data.transforms import Augment

    return Augment(scale=0.1, rotate=10.0, flip=True, intensity=0.1)


def _build(settings: TrainSettings, ds, num_classes: int):
    import models
    from engine import optim

    rng = np.random.default_rng(settings.seed)
    model = models.get(
        settings.model,
        in_channels=int(ds.images.shape[1]),
        input_size=int(ds.images.shape[-1]),
        num_classes=num_classes,
        rng=rng,
    )
    model.to(settings.device)
    if settings.optimizer not in optim.OPTIMIZERS:
        raise MedgradError(f"unknown optimizer {settings.optimizer!r}")
    lr = settings.lr if settings.lr is not None else DEFAULT_LR[settings.optimizer]
    kwargs = {
        "sgd": {"momentum": settings.momentum, "weight_decay": settings.weight_decay},
        "adam": {"weight_decay": settings.weight_decay},
    }.get(settings.optimizer, {})
    return model, optim.OPTIMIZERS[settings.optimizer](model.parameters(), lr=lr, **kwargs)


def _rank_rows(ds, train_idx, val_idx, comm) -> tuple[np.ndarray, np.ndarray]:
    """(positions in train_idx, positions in val_idx) of this rank's patients, each side
    sharded on its own (engine.distributed.shard_of)."""
    from engine import distributed

    return (
        distributed.shard_of(ds.groups[train_idx], comm.rank, comm.size),
        distributed.shard_of(ds.groups[val_idx], comm.rank, comm.size),
    )


def _fit(settings, model, opt, ds, train_idx, val_idx, run_dir, resume, progress, comm=None):
    from engine.train import Schedule, fit

    schedule = Schedule(settings.schedule, step_size=settings.step_size, gamma=settings.gamma)
    shard = None
    n_val = len(val_idx)
    if comm is not None:  # this rank's patients of each side
        from engine import distributed

        mine, vmine = _rank_rows(ds, train_idx, val_idx, comm)
        shard = distributed.Shard(mine, len(train_idx), comm.rank, comm.size)
        train_idx, val_idx = train_idx[mine], val_idx[vmine]
    val = (ds.images[val_idx], ds.labels[val_idx]) if n_val else None
    return fit(
        model,
        opt,
        (ds.images[train_idx], ds.labels[train_idx]),
        val,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        seed=settings.seed,
        progress=progress,
        schedule=schedule,
        patience=settings.patience,
        augment=_augment(settings.augment),
        run_dir=run_dir,
        resume=resume,
        preprocessing=ds.preprocessing,
        classes=_classes(ds),
        comm=comm,
        shard=shard,
        precision=settings.precision,
        capture=settings.graph,
    )


def _gathered_validation(settings, run_dir, ds, train_idx, val_idx, comm):
    """(best model on the CPU, probs (n_val, k), labels (n_val,)) of a data-parallel run, every
    rank: rank 0's model.npz is broadcast, each rank predicts its patients of the validation set
    (only those it decoded) and the probabilities are gathered in val_idx order."""
    from engine import distributed
    from engine.train import predict_proba

    if comm.rank == 0:
        model, _ = load_model(run_dir / "model.npz")
    else:  # the same architecture on the CPU, to receive rank 0's best weights
        model, _ = _build(replace(settings, device="cpu"), ds, len(_classes(ds)))
    distributed.broadcast_model(model, comm)
    _, vmine = _rank_rows(ds, train_idx, val_idx, comm)
    mine = val_idx[vmine]
    probs = predict_proba(model, ds.images[mine]) if len(mine) else np.zeros((0, 0))
    where = np.concatenate(comm.allgather_array(mine.astype(np.int64)))
    probs = np.concatenate([p for p in comm.allgather_array(probs) if p.size])
    order = np.argsort(where)  # where holds val_idx's members: sorted, as val_idx is
    assert np.array_equal(where[order], np.sort(val_idx))
    probs = probs[order][np.argsort(np.argsort(val_idx))]
    return model, probs, ds.labels[val_idx]


def _gathered_images(ds, pick: np.ndarray, comm) -> np.ndarray:
    """The images of global indices `pick` (a few, to explain), from the ranks that hold them."""
    held = ds.images.position[pick] >= 0 if isinstance(ds.images, _RankImages) else None
    if held is None:  # every rank holds the whole array
        return ds.images[pick]
    mine = ds.images[pick[held]] if held.any() else np.zeros((0, 0, 0, 0), np.float32)
    where = np.concatenate(comm.allgather_array(pick[held].astype(np.int64)))
    images = np.concatenate([a for a in comm.allgather_array(mine) if a.size])
    return images[[int(np.flatnonzero(where == i)[0]) for i in pick]]


def _write_manifest(source, run_dir: Path) -> str | None:
    """Record the SHA-256 of every data file in the run directory (engine.data.manifest), so
    `medgrad verify` can later tell whether the data changed since this model was trained."""
    if str(source) == "phantoms":
        return None  # generated in memory from the seed: nothing on disk to fingerprint
    from engine.data import manifest

    source = Path(source)
    found = manifest.build_manifest(source if source.is_dir() else [source])
    manifest.write_manifest(found, run_dir / "manifest.json")
    return "manifest.json"


def train(
    source,
    run_dir: str | os.PathLike,
    settings: TrainSettings,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    explain_n: int = 4,
    comm: Communicator | None = None,
) -> dict:
    """Train on `source` with a patient-level hold-out, then evaluate, explain and report.

    run_dir receives model.npz (best validation loss), checkpoint.npz (resume), metrics.json
    (settings, history, held-out metrics, skipped files), curves/confusion/ROC PNGs,
    explain/*.png, report.md. A run_dir that holds a run is refused unless resume (continue it
    to settings.epochs) or overwrite (replace it); the options are checked before data loads.

    comm (engine.distributed.Communicator): data-parallel training, each rank on its shard of
    the patients; rank 0 alone checks and writes run_dir, evaluates, explains and reports; the
    other ranks return {"rank": r} after training.
    """
    from engine import explain, report
    from engine.train import predict_proba

    run_dir = Path(run_dir)
    check_model(settings)
    root = comm is None or comm.rank == 0
    earlier = check_run_dir(run_dir, settings, resume=resume, overwrite=overwrite) if root else []
    with _compute(settings.device, settings.kernels):
        ds = _load(source, settings, comm)
        _two_classes(ds, source)
        classes = _classes(ds)
        train_idx, val_idx = holdout(ds, settings.val_split, settings.seed)
        if root:
            ranks = f" on {comm.size} ranks" if comm is not None else ""
            print(
                f"data: {len(ds.labels)} images of {len(np.unique(ds.groups))} patients, classes "
                f"{classes}; training on {len(train_idx)}, held out {len(val_idx)} (by patient)"
                + ranks
            )
            _print_skipped(ds)
        model, opt = _build(settings, ds, len(classes))
        if overwrite and root:  # only now that the new data has loaded: a failure keeps the old run
            remove_run(run_dir, earlier)
        manifest_name = _write_manifest(source, run_dir) if root else None
        start = time.perf_counter()
        history = _fit(
            settings, model, opt, ds, train_idx, val_idx, run_dir, resume, progress and root, comm
        )
        seconds = time.perf_counter() - start
        if comm is None:
            model, _ = load_model(run_dir / "model.npz")  # the best epoch, on the CPU
            xv, yv = ds.images[val_idx], ds.labels[val_idx]
            probs = predict_proba(model, xv)
        else:  # each rank predicts its part of the validation set; rank 0 gathers
            model, probs, yv = _gathered_validation(settings, run_dir, ds, train_idx, val_idx, comm)
        pick = val_idx[np.argsort(-probs[:, -1])[:explain_n]]
        images = ds.images[pick] if comm is None else _gathered_images(ds, pick, comm)
        if not root:
            return {"rank": comm.rank}
        evaluation = metrics.summary(yv, probs)
        # explain the held-out images the model is most sure contain the last class ("lesion")
        names = [_name(ds, i) for i in pick]
        shown = explain.explain_images(
            model, images, run_dir / "explain", names=names, classes=classes
        )
    result = {
        "settings": asdict(settings),
        "source": str(source),
        "classes": classes,
        "n_train": int(len(train_idx)),
        "n_val": int(len(val_idx)),
        "train_seconds": seconds,
        "history": history.epochs,
        "held_out": evaluation,
        "manifest": manifest_name,
        "skipped": [list(s) for s in _skipped(ds)],
    }
    if comm is not None:
        result["ranks"] = comm.size
    metrics_path = run_dir / "metrics.json"
    previous = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    text = json.dumps({**previous, **result}, indent=1)
    atomic_write(metrics_path, lambda f: f.write(text.encode()))
    shown_settings = {
        "data": source,
        "model": settings.model,
        "optimizer": settings.optimizer,
        "lr": opt_lr(settings),
        "epochs": settings.epochs,
        "batch size": settings.batch_size,
        "schedule": settings.schedule,
        "augmentation": settings.augment,
        "held-out fraction": settings.val_split,
        "seed": settings.seed,
        "training images": len(train_idx),
        "held-out images": len(val_idx),
        "training time (s)": f"{seconds:.1f}",
    }
    report.write_report(
        run_dir,
        title=f"medgrad run: {settings.model} on {source}",
        settings=shown_settings,
        history=history.epochs,
        evaluation=evaluation,
        y_true=yv,
        probs=probs,
        classes=classes,
        explanations=shown,
        skipped=_skipped(ds),
    )
    print_metrics("held-out", evaluation)
    print(f"run directory: {run_dir} (model.npz, metrics.json, report.md)")
    return result


def _skipped(ds) -> list[tuple[str, str]]:
    return list(getattr(ds, "skipped", None) or [])


def _print_skipped(ds, limit: int = 5) -> None:
    """One line per skipped file (the first `limit`), so a skip is never silent."""
    skipped = _skipped(ds)
    if skipped:
        print(f"skipped {len(skipped)} unreadable files (--on-error skip):")
        for path, reason in skipped[:limit]:
            print(f"  {path}: {reason}")
        if len(skipped) > limit:
            print(f"  ... and {len(skipped) - limit} more (all listed in the report)")


def opt_lr(settings: TrainSettings) -> float:
    return settings.lr if settings.lr is not None else DEFAULT_LR[settings.optimizer]


def _name(ds, i: int) -> str:
    paths = getattr(ds, "paths", None)
    if paths is None:
        return f"image{i:05d}"
    path = Path(str(paths[i]))  # folder + file: slice file names repeat across patients
    return f"{path.parent.name}_{path.stem}" if path.parent.name else path.stem


def print_metrics(label: str, m: dict) -> None:
    auc = "n/a" if m["auc"] is None else f"{m['auc']:.4f}"
    print(
        f"{label}: accuracy {m['accuracy']:.4f}  recall {m['recall']:.4f}  "
        f"precision {m['precision']:.4f}  specificity {m['specificity']:.4f}  "
        f"F1 {m['f1']:.4f}  AUC {auc}  (n = {m['n']})"
    )


# ---- evaluate / predict / explain a saved model ----


def evaluate(
    model_path, source, *, out: str | os.PathLike | None = None, on_error: str = "raise"
) -> dict:
    """Metrics of a saved model on a labelled dataset, prepared as at training time.

    The dataset's labels are mapped by name onto the model's classes; a label the model does not
    know is a DataError naming it. on_error="skip" leaves unreadable files out (listed in the
    result's "skipped" and printed).
    """
    from engine.train import predict_proba

    model, ckpt = load_model(model_path)
    ds = load_data(
        source,
        input_size=int(ckpt.preprocessing.get("input_size", 28)),
        on_error=on_error,
        classes=ckpt.classes,
    )
    _print_skipped(ds)
    probs = predict_proba(model, ds.images)
    if int(ds.labels.max()) >= probs.shape[1]:  # only a model file without class names gets here
        raise DataError(
            f"{source}: labels go up to {int(ds.labels.max())}, but {model_path} has "
            f"{probs.shape[1]} classes"
        )
    result = metrics.summary(ds.labels, probs)
    print_metrics(f"{Path(model_path).name} on {source}", result)
    result["skipped"] = [list(s) for s in _skipped(ds)]
    if out is not None:
        text = json.dumps(result, indent=1)
        atomic_write(Path(out), lambda f: f.write(text.encode()))
    return result


def _unlabelled(
    inputs: list[str], preprocessing: dict, on_error: str = "skip"
) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
    """Images (n, c, h, w), their paths and the skipped (path, reason) from DICOM files or
    folders, prepared like the training data (window, resize method and size from the model
    file's preprocessing settings). on_error: "skip" or "raise" unreadable files."""
    from engine.data.dicom import list_files, read_image
    from engine.data.transforms import resize
    from engine.errors import DicomReadError

    if preprocessing.get("normalize") not in (None, "none"):
        raise MedgradError("predict: models trained on normalised images are not supported yet")
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise DataError(f"{path}: no such file or folder")
        files += list_files(path) if path.is_dir() else [path]
    if not files:
        raise DataError(f"no image files in {', '.join(inputs)}")
    size = int(preprocessing.get("input_size", 28))
    channels = int(preprocessing.get("in_channels", 1))
    window = preprocessing.get("window", "file")
    window = tuple(window) if isinstance(window, list) else window
    images, names, skipped = [], [], []
    for path in files:
        try:
            pixels, _ = read_image(path, window=window)  # (frames, h, w) grey in [0, 1]
        except DicomReadError as exc:
            if on_error == "raise":
                raise
            skipped.append((str(path), str(exc)))
            continue
        if pixels.ndim == 4:  # colour (frames, h, w, 3): the grey luma, as datasets does
            pixels = pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        x = np.repeat(pixels[:, None], channels, axis=1).astype(np.float32)
        images.append(resize(x, size, preprocessing.get("method", "area")))
        names += [str(path)] if len(x) == 1 else [f"{path}#{i}" for i in range(len(x))]
    if not images:
        reasons = "; ".join(f"{p}: {r}" for p, r in skipped[:3])
        raise DataError(f"no readable images among {len(skipped)} files ({reasons})")
    return np.concatenate(images), names, skipped


def predict(
    model_path, inputs: list[str], out: str | os.PathLike, *, on_error: str = "skip"
) -> Path:
    """Write a CSV with one row per image: path, predicted class, one probability per class, and
    an error column: empty, or why the file was skipped (then the other columns are empty).

    on_error: "skip" (default) lists unreadable files in the CSV; "raise" stops at the first.
    """
    from engine.train import predict_proba

    model, ckpt = load_model(model_path)
    images, paths, skipped = _unlabelled(inputs, ckpt.preprocessing, on_error)
    probs = predict_proba(model, images)
    classes = ckpt.classes or [str(i) for i in range(probs.shape[1])]
    rows = [["path", "predicted", *[f"p_{c}" for c in classes], "error"]]
    rows += [
        [str(p), classes[int(np.argmax(q))], *[f"{v:.6f}" for v in q], ""]
        for p, q in zip(paths, probs, strict=True)
    ]
    rows += [[p, "", *[""] * len(classes), reason] for p, reason in skipped]
    out = Path(out)

    def write(f):
        import io

        text = io.StringIO()
        csv.writer(text).writerows(rows)
        f.write(text.getvalue().encode())

    atomic_write(out, write)
    print(f"{len(paths)} predictions -> {out}")
    if skipped:
        print(f"skipped {len(skipped)} unreadable files (listed in {out} with the reason)")
    return out


def explain(
    model_path,
    source,
    indices: list[int],
    out_dir,
    *,
    layer: int | str | None = None,
    target: int | None = None,
) -> list[Path]:
    """Saliency + Grad-CAM PNGs for images `indices` of dataset `source`."""
    from engine import explain as ex

    model, ckpt = load_model(model_path)
    check_out_folder(Path(out_dir))
    ds = load_data(source, input_size=int(ckpt.preprocessing.get("input_size", 28)))
    bad = [i for i in indices if not 0 <= i < len(ds.labels)]
    if bad:
        raise DataError(f"image indices {bad} out of range 0..{len(ds.labels) - 1}")
    idx = np.asarray(indices, dtype=np.int64)
    paths = ex.explain_images(
        model,
        ds.images[idx],
        out_dir,
        names=[_name(ds, i) for i in idx],
        classes=ckpt.classes,
        target=target,
        layer=layer,
    )
    print(f"{len(paths)} explanations -> {out_dir}")
    return paths


# ---- cross-validation ----


def cross_validate(source, folds: int, settings: TrainSettings, *, progress: bool = False) -> dict:
    """k-fold cross-validation by patient: train a fresh model per fold, test on the held-out fold.

    Returns per-fold metrics and their mean and standard deviation (ddof=1). Raises if any patient
    appears in two folds' test sets (the splitter's promise, checked here too).
    """
    from engine.data.splits import stratified_group_kfold
    from engine.train import predict_proba

    names = ("accuracy", "balanced_accuracy", "precision", "recall", "specificity", "f1", "auc")
    check_model(settings)
    with _compute(settings.device, settings.kernels):
        ds = _load(source, settings)
        _print_skipped(ds)
        _two_classes(ds, source)
        classes = _classes(ds)
        splits = stratified_group_kfold(ds.labels, ds.groups, folds, settings.seed)
        seen: dict = {}
        for f, (_, test_idx) in enumerate(splits):
            for g in np.unique(ds.groups[test_idx]):
                if g in seen:
                    raise DataError(f"patient {g} is in the test sets of folds {seen[g]} and {f}")
                seen[g] = f
        rows = []
        for f, (train_idx, test_idx) in enumerate(splits):
            model, opt = _build(settings, ds, len(classes))
            _fit(settings, model, opt, ds, train_idx, np.array([], np.int64), None, False, progress)
            m = metrics.summary(ds.labels[test_idx], predict_proba(model, ds.images[test_idx]))
            m["test_patients"] = sorted(str(g) for g in np.unique(ds.groups[test_idx]))
            m["patients"] = len(m["test_patients"])
            rows.append(m)
            print(
                f"fold {f + 1}/{folds}: "
                + "  ".join(_cell(m[k], k) for k in names)
                + f"  ({len(test_idx)} images, {m['patients']} patients)"
            )
    summary = {}
    for k in names:
        values = np.array([r[k] for r in rows if r[k] is not None], dtype=np.float64)
        std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        summary[k] = {"mean": float(values.mean()) if len(values) else None, "std": std}
    print(
        "mean ± std: "
        + "  ".join(
            f"{k} {summary[k]['mean']:.4f} ± {summary[k]['std']:.4f}"
            for k in names
            if summary[k]["mean"] is not None
        )
    )
    return {"folds": rows, "summary": summary, "test_patients_disjoint": True}


def _cell(value, name: str) -> str:
    return f"{name} {'n/a' if value is None else f'{value:.4f}'}"
