"""The segmentation workflow behind `medgrad train --task segmentation`, and behind `medgrad
evaluate` / `medgrad predict` given a segmentation model file: patch training of a 3-D U-Net with a
patient-level hold-out, sliding-window evaluation with per-case metrics, and NIfTI masks written in
each input's own voxel grid. As engine.workflow: plain settings in, a short printed account, files
written whole (a staging folder renamed into place), a JSON-ready dict out.

Data: a folder engine.data.volume_dataset.VolumeDataset reads (an MSD dataset.json, or images/ +
labels/ of NIfTI files or DICOM series folders). The intensity preprocessing (CT window or z-score,
optional target spacing) is stored in the model file, so evaluate and predict redo exactly it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from engine import backend, metrics
from engine.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from engine.errors import ArgumentError, DataError

TASK = "segmentation"
# what a segmentation run directory holds (train); evaluate writes the last three
RUN_FILES = ("model.npz", "metrics.json", "per_case.csv", "report.md")
FIGURES = "figures"
METRICS = ("dice", "iou", "hausdorff95", "average_surface_distance", "surface_dice")
LUNG_WINDOW = (-300.0, 1400.0)  # (center, width) HU: -1000..400, air to bone, nodules mid-range


@dataclass
class SegmentationSettings:
    """Everything `medgrad train --task segmentation` sets; stored in the run's metrics.json.

    patch_size (d, h, w) voxels: training crops and the sliding window; each must divide by
    2 ** (len(features) - 1). iterations: optimizer steps, each on batch_size crops, a share
    pos / (pos + neg) of them centred on foreground. window (center, width) HU maps CT to [0, 1];
    normalize="zscore" (per case, for MRI) replaces it; target_spacing (mm, (d, h, w)) resamples
    first. schedule: "constant" or "cosine" over the iterations.
    """

    model: str = "unet3d"
    features: tuple[int, ...] = (8, 16, 32)
    norm: str = "instance"
    patch_size: tuple[int, int, int] = (32, 48, 48)
    iterations: int = 400
    epochs: int | None = None  # if set: epochs x ceil(training volumes / batch_size) iterations
    batch_size: int = 2
    optimizer: str = "adam"
    lr: float = 3e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"
    pos: float = 1.0
    neg: float = 1.0
    augment: bool = True
    batch_dice: bool = True  # Dice over the whole batch (nnU-Net's), not per crop (MONAI's)
    val_split: float = 0.2
    window: tuple[float, float] | None = LUNG_WINDOW
    normalize: str | None = None
    target_spacing: tuple[float, float, float] | None = None
    num_classes: int | None = None  # images/ + labels/ folders: default 2 (dataset.json says)
    overlap: float = 0.25  # sliding-window overlap at evaluation and prediction
    seed: int = 0
    device: str = "cpu"
    kernels: str | None = None
    log_every: int = 0  # print the mean loss every N iterations; 0: ten lines in all


# ---- checks made before any data is read ----


def check_settings(s: SegmentationSettings) -> None:
    """ArgumentError naming the option for settings that cannot work, before data loads."""
    import models

    if s.model not in models.names(TASK):
        raise ArgumentError(
            f"--model {s.model}: not a segmentation model ({', '.join(models.names(TASK))})"
        )
    if s.model != "unet3d":
        raise ArgumentError(f"--model {s.model}: medgrad train --task segmentation fits unet3d")
    if len(s.features) < 2 or min(s.features) < 1:
        raise ArgumentError(f"--features {s.features}: at least 2 positive channel counts")
    if len(s.patch_size) != 3 or min(s.patch_size) < 1:
        raise ArgumentError(f"--patch {s.patch_size}: three positive sizes (d, h, w) expected")
    step = 2 ** (len(s.features) - 1)
    if any(p % step for p in s.patch_size):
        raise ArgumentError(
            f"--patch {','.join(map(str, s.patch_size))}: every size must divide by {step} "
            f"(2 ** (levels - 1) for --features {','.join(map(str, s.features))})"
        )
    if s.window is not None and s.normalize is not None:
        raise ArgumentError("--window and --normalize exclude each other (--window none)")
    if s.normalize not in (None, "zscore"):
        raise ArgumentError(f"--normalize {s.normalize}: expected zscore")
    if s.optimizer not in ("adam", "sgd"):
        raise ArgumentError(f"--optimizer {s.optimizer}: segmentation trains with adam or sgd")
    if s.schedule not in ("constant", "cosine"):
        raise ArgumentError(f"--schedule {s.schedule}: segmentation supports constant, cosine")
    if not 0 < s.val_split < 1:
        raise ArgumentError(f"--val-split must lie in (0, 1), got {s.val_split}")
    if not 0 <= s.overlap < 1:
        raise ArgumentError(f"--overlap must lie in [0, 1), got {s.overlap}")
    if s.pos < 0 or s.neg < 0 or s.pos + s.neg <= 0:
        raise ArgumentError(f"--pos-neg {s.pos},{s.neg}: two numbers >= 0, not both 0")


def preprocessing_of(s: SegmentationSettings, in_channels: int, classes: list[str]) -> dict:
    """What goes into the model file: everything evaluate and predict need to prepare a volume
    and run the sliding window exactly as training did."""
    return {
        "task": TASK,
        "spatial_dims": 3,
        "in_channels": int(in_channels),
        "num_classes": len(classes),
        "window": None if s.window is None else [float(v) for v in s.window],
        "normalize": s.normalize,
        "target_spacing": None
        if s.target_spacing is None
        else [float(v) for v in s.target_spacing],
        "patch_size": [int(p) for p in s.patch_size],
        "overlap": float(s.overlap),
    }


def is_segmentation_checkpoint(ckpt) -> bool:
    """True for a model file written by train_segmentation (or any segmentation model)."""
    import models

    name = (ckpt.model_config or {}).get("name")
    return ckpt.preprocessing.get("task") == TASK or models.TASKS.get(name) == TASK


def is_segmentation_model(path: str | os.PathLike) -> bool:
    """Whether the model file (or run directory) at `path` holds a segmentation model; a file
    that does not load raises its SerializationError, naming it."""
    return is_segmentation_checkpoint(load_checkpoint(_model_file(path)))


def _model_file(model_or_run: str | os.PathLike) -> Path:
    path = Path(model_or_run)
    return path / "model.npz" if path.is_dir() else path


# ---- staging: a run's files appear all at once, or not at all ----


@contextlib.contextmanager
def staged(out: Path, replaces: list[str] = ()):
    """Yield an empty hidden folder inside `out`; when the block ends without error, every file
    and folder in it is renamed into `out` (os.replace: each one whole), after the earlier
    files `replaces` are removed; on error the folder is deleted and `out` keeps what it had."""
    tmp = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for name in replaces:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    for item in sorted(tmp.iterdir()):
        if (out / item.name).is_dir():
            shutil.rmtree(out / item.name)
        os.replace(item, out / item.name)
    tmp.rmdir()


def _check_out(out: Path, *, overwrite: bool, option: str = "--out") -> list[str]:
    """Create `out` (ArgumentError if it cannot be) and refuse to replace an earlier run in it
    unless overwrite; returns the earlier run's names, removed only once the new run is done."""
    from engine.workflow import RUN_FILES as CLASSIFICATION_FILES
    from engine.workflow import check_out_folder

    names = sorted({*RUN_FILES, *CLASSIFICATION_FILES, FIGURES, "explain"})
    earlier = [n for n in names if (out / n).exists()] if out.is_dir() else []
    if earlier and not overwrite:
        raise ArgumentError(
            f"{option} {out} holds an earlier run ({', '.join(earlier)}); add --overwrite to "
            f"replace it, or choose another {option}"
        )
    check_out_folder(out, option)
    return earlier


# ---- data ----


def _dataset(data, prep: dict, num_classes: int | None):
    from engine.data.volume_dataset import VolumeDataset

    if not Path(data).exists():
        raise DataError(f"{data}: no such file or folder")
    window = prep.get("window")
    spacing = prep.get("target_spacing")
    return VolumeDataset(
        data,
        num_classes=num_classes,
        window=None if window is None else tuple(window),
        normalize=prep.get("normalize"),
        target_spacing=None if spacing is None else tuple(spacing),
    )


def _case_name(ds, i: int) -> str:
    from engine.data.volumes import case_name

    return case_name(ds.cases[i].image)


def _load_cases(ds, indices) -> list[tuple[np.ndarray, np.ndarray, dict]]:
    """(image (C, D, H, W), mask (D, H, W), meta) of each case, read and checked now, so a bad
    file stops the run before any training (the error names the file)."""
    return [ds.load_case(int(i)) for i in indices]


# ---- training ----


def _augmentation(patch_size) -> object:
    from engine.data.patches import Augmentation

    # flips of every axis, quarter turns in the axial plane (only when it is square, so every
    # crop keeps the patch shape), a small in-plane rotation and scale, intensity +-10 %
    square = patch_size[-1] == patch_size[-2]
    return Augmentation(rot90_prob=0.5 if square else 0.0, affine_prob=0.2)


def _lr(s: SegmentationSettings, iteration: int) -> float:
    if s.schedule == "cosine":
        return s.lr * (1 + math.cos(math.pi * iteration / s.iterations)) / 2
    return s.lr


def _build(s: SegmentationSettings, in_channels: int, num_classes: int):
    import models
    from engine import optim

    model = models.get(
        s.model,
        in_channels=in_channels,
        num_classes=num_classes,
        features=tuple(int(f) for f in s.features),
        norm=s.norm,
        rng=np.random.default_rng(s.seed),
    )
    _neutral_head(model)
    model.to(s.device)
    if s.optimizer == "sgd":
        opt = optim.SGD(model.parameters(), lr=s.lr, momentum=0.9, weight_decay=s.weight_decay)
    else:
        opt = optim.Adam(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    return model, opt


def _neutral_head(model) -> None:
    """Zero the U-Net's 1x1x1 head, so the untrained network's logits favour no class.

    A random head can make it call most voxels foreground: with a foreground of under 1 % of
    the voxels, the first steps then learn "background everywhere", which the Dice term leaves
    slowly or not at all (the demo's seed 2 ended at held-out Dice 0.00 after 150 steps with a
    random head, 0.91 with a zero one; a background prior in the bias gave 0.89). The gradient
    reaches the layers below from the second step on, once the head's weights have moved.
    """
    head = model.layers[-1]  # final_conv: the 1x1x1 conv to class logits
    head.weight.data[...] = 0
    head.bias.data[...] = 0


def fit_patches(model, opt, cases, s: SegmentationSettings, *, progress: bool = True) -> dict:
    """Train `model` for s.iterations steps of F.dice_ce_loss on random crops of `cases`
    [(image (C, D, H, W), mask (D, H, W), meta)] -> history {"iteration", "loss", "lr",
    "seconds"}, one entry per logging interval (the mean loss over it).

    Each step takes s.batch_size crops of s.patch_size (rand_crop_by_pos_neg, pos:neg), from
    cases drawn in shuffled passes so every case is used equally, each augmented (image and
    mask alike) when s.augment. All randomness comes from one Generator seeded s.seed + 1.
    """
    import engine.functional as F
    from engine.data.patches import rand_crop_by_pos_neg
    from engine.tensor import Tensor
    from engine.train import DivergedError

    rng = np.random.default_rng(s.seed + 1)
    augment = _augmentation(s.patch_size) if s.augment else None
    every = s.log_every or max(s.iterations // 10, 1)
    history: dict[str, list] = {"iteration": [], "loss": [], "lr": [], "seconds": []}
    order: list[int] = []
    losses: list[float] = []
    device = model.parameters()[0].device
    start = time.perf_counter()
    model.train()
    for it in range(s.iterations):
        opt.lr = _lr(s, it)
        xs, ts = [], []
        for _ in range(s.batch_size):
            if not order:  # a new shuffled pass over the training cases
                order = list(rng.permutation(len(cases)))
            image, mask, _ = cases[order.pop()]
            ((x, t),) = rand_crop_by_pos_neg(image, mask, s.patch_size, rng, 1, s.pos, s.neg)
            if augment is not None:
                x, t = augment(x, t, rng)
            xs.append(x)
            ts.append(t)
        x = backend.to_device(np.stack(xs).astype(np.float32), device)
        t = backend.to_device(np.stack(ts).astype(np.int64), device)
        loss = F.dice_ce_loss(model(Tensor(x)), t, batch=s.batch_dice)
        value = loss.item()
        if not math.isfinite(value):
            raise DivergedError(f"iteration {it + 1}: the training loss became {value}; lower --lr")
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(value)
        if (it + 1) % every == 0 or it + 1 == s.iterations:
            seconds = time.perf_counter() - start
            history["iteration"].append(it + 1)
            history["loss"].append(float(np.mean(losses)))
            history["lr"].append(float(opt.lr))
            history["seconds"].append(seconds)
            if progress:
                print(
                    f"iteration {it + 1}/{s.iterations}: loss {np.mean(losses):.4f} "
                    f"(lr {opt.lr:.2e}, {seconds:.0f} s)",
                    flush=True,
                )
            losses = []
    model.eval()
    return history


# ---- evaluation ----


def predict_volume(model, image: np.ndarray, prep: dict, batch_size: int = 1) -> np.ndarray:
    """Labels int64 (D, H, W) of a preprocessed image (C, D, H, W): sliding-window inference
    with the training patch as window (Gaussian blending, prep's overlap), argmax over classes."""
    from engine.inference import sliding_window_inference

    probs = sliding_window_inference(
        model,
        image,
        tuple(prep["patch_size"]),
        overlap=float(prep.get("overlap", 0.25)),
        batch_size=batch_size,
        num_classes=int(prep["num_classes"]),
    )
    return probs.argmax(axis=0).astype(np.int64)


def case_row(name: str, pred, ref, num_classes: int, spacing) -> dict:
    """{"case": name, **engine.metrics.segmentation_summary(...)}: lists per foreground class."""
    return {"case": name, **metrics.segmentation_summary(pred, ref, num_classes, spacing)}


def summarize(rows: list[dict], classes: list[str]) -> dict:
    """Mean of each metric per foreground class over the cases -> {"mean_dice" (over cases and
    classes), "n_cases", "per_class": {class: {metric: mean}}}. Distances are averaged over the
    cases where they are finite (one mask empty gives inf), their count kept as "n_finite"."""
    per_class = {}
    for c, name in enumerate(classes[1:]):
        entry = {}
        for m in METRICS:
            values = np.array([r[m][c] for r in rows], dtype=np.float64)
            finite = values[np.isfinite(values)]
            entry[m] = float(finite.mean()) if len(finite) else None
            if m in ("hausdorff95", "average_surface_distance"):
                entry[f"{m}_n_finite"] = int(len(finite))
        per_class[name] = entry
    dice = [v for r in rows for v in r["dice"]]
    return {
        "mean_dice": float(np.mean(dice)) if dice else None,
        "n_cases": len(rows),
        "per_class": per_class,
    }


def _evaluate(model, ds, indices, prep, classes, loaded=None, progress=True):
    """Per-case rows and what the report shows of each case [(name, image, mask, pred, spacing)]."""
    rows, shown = [], []
    for j, i in enumerate(indices):
        image, mask, meta = loaded[j] if loaded is not None else ds.load_case(int(i))
        pred = predict_volume(model, image, prep)
        name = _case_name(ds, int(i))
        row = case_row(name, pred, mask, len(classes), meta["spacing"])
        rows.append(row)
        shown.append((name, image[0], mask, pred, tuple(meta["spacing"])))
        if progress:
            print(f"  {name}: Dice " + ", ".join(f"{d:.3f}" for d in row["dice"]), flush=True)
    return rows, shown


# ---- writing ----


def _jsonable(value):
    """inf / nan -> None (strict JSON), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _write_json(path: Path, obj: dict) -> None:
    text = json.dumps(_jsonable(obj), indent=1, allow_nan=False)
    atomic_write(path, lambda f: f.write(text.encode()))


def _write_per_case(path: Path, rows: list[dict], classes: list[str]) -> None:
    """One row per case: case, then metric_class columns (inf written as inf)."""
    header = ["case", *(f"{m}_{c}" for m in METRICS for c in classes[1:])]
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(header)
    for r in rows:
        writer.writerow([r["case"], *(f"{v:.6g}" for m in METRICS for v in r[m])])
    atomic_write(path, lambda f: f.write(text.getvalue().encode()))


def _figures(folder: Path, rows, shown, classes, n_montages: int = 4) -> list[Path]:
    """A slice montage of (up to) n_montages cases and the metric box plots, through
    engine.seg_report; [] when that module is not there."""
    try:
        from engine import seg_report
    except ImportError:
        return []
    folder.mkdir(exist_ok=True)
    figures = []
    for name, image, mask, pred, spacing in shown[:n_montages]:
        figures.append(
            seg_report.plot_montage(
                image, mask, pred, folder / f"montage_{name}.png", spacing=spacing, title=name
            )
        )
    figures.append(
        seg_report.plot_metric_boxplots(rows, folder / "boxplots.png", class_names=classes[1:])
    )
    return [Path(f) for f in figures]


def _write_report(folder: Path, title, rows, summary, shown_settings, figures, classes) -> Path:
    """report.md: engine.seg_report's when present, else a plain one with the per-case table."""
    try:
        from engine import seg_report
    except ImportError:
        seg_report = None
    if seg_report is not None:
        return Path(
            seg_report.write_segmentation_report(
                folder,
                per_case=rows,
                summary=summary,
                settings=shown_settings,
                figures=figures,
                class_names=classes[1:],
            )
        )
    lines = [f"# {title}", "", "## Settings", ""]
    lines += [f"- {k}: {v}" for k, v in shown_settings.items()]
    mean = summary["mean_dice"]
    mean = "n/a" if mean is None else f"{mean:.4f}"
    lines += ["", "## Cases", "", f"Mean Dice {mean} over {summary['n_cases']} cases.", ""]
    head = ["case", *(f"{m} ({c})" for m in METRICS for c in classes[1:])]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append(
            "| " + " | ".join([r["case"], *(f"{v:.4g}" for m in METRICS for v in r[m])]) + " |"
        )
    text = "\n".join(lines) + "\n"
    return atomic_write(folder / "report.md", lambda f: f.write(text.encode()))


def _print_summary(label: str, summary: dict) -> None:
    for name, m in summary["per_class"].items():
        hd = "n/a" if m["hausdorff95"] is None else f"{m['hausdorff95']:.2f} mm"
        print(
            f"{label}: {name} Dice {m['dice']:.4f}  IoU {m['iou']:.4f}  HD95 {hd}  "
            f"surface Dice {m['surface_dice']:.4f}  (n = {summary['n_cases']} cases)"
        )


# ---- the three commands ----


def train_segmentation(
    data, out, settings: SegmentationSettings, *, overwrite: bool = False, progress: bool = True
) -> dict:
    """Train a 3-D U-Net on the volumes of `data` with a patient-level hold-out, evaluate it on
    the held-out cases and write the run to `out`: model.npz (engine.checkpoint, the layer spec,
    the preprocessing), metrics.json (settings, history, per-case metrics, mean Dice),
    per_case.csv, report.md and figures/. The files appear only when all are done; a folder
    holding an earlier run is refused unless overwrite. Returns what metrics.json holds.
    """
    from engine.workflow import _compute

    out = Path(out)
    check_settings(settings)
    earlier = _check_out(out, overwrite=overwrite)
    with _compute(settings.device, settings.kernels):
        probe = preprocessing_of(settings, 1, ["background", "foreground"])
        ds = _dataset(data, probe, settings.num_classes)
        classes = list(ds.classes)
        train_idx, val_idx = ds.holdout_split(settings.val_split, settings.seed)
        print(
            f"data: {len(ds)} volumes of {len(np.unique(ds.groups))} patients, classes "
            f"{classes}; training on {len(train_idx)}, held out {len(val_idx)} (by patient)"
        )
        start = time.perf_counter()
        train_cases = _load_cases(ds, train_idx)
        val_cases = _load_cases(ds, val_idx)
        in_channels = int(train_cases[0][0].shape[0])
        bad = [c[2]["path"] for c in train_cases + val_cases if c[0].shape[0] != in_channels]
        if bad:
            raise DataError(f"{bad[0]}: channels differ from the other volumes' {in_channels}")
        prep = preprocessing_of(settings, in_channels, classes)
        print(f"read and prepared {len(ds)} volumes ({time.perf_counter() - start:.1f} s)")
        if settings.epochs is not None:  # one crop per training volume per epoch
            per_epoch = math.ceil(len(train_idx) / settings.batch_size)
            settings = replace(settings, iterations=settings.epochs * per_epoch, epochs=None)
        model, opt = _build(settings, in_channels, len(classes))
        start = time.perf_counter()
        history = fit_patches(model, opt, train_cases, settings, progress=progress)
        seconds = time.perf_counter() - start
        print(f"held-out cases ({len(val_idx)}):")
        start = time.perf_counter()
        rows, shown = _evaluate(model, ds, val_idx, prep, classes, val_cases, progress)
        eval_seconds = time.perf_counter() - start
    summary = summarize(rows, classes)
    result = {
        "task": TASK,
        "settings": asdict(settings),
        "source": str(data),
        "classes": classes,
        "preprocessing": prep,
        "train_cases": [_case_name(ds, int(i)) for i in train_idx],
        "held_out_cases": [_case_name(ds, int(i)) for i in val_idx],
        "train_seconds": seconds,
        "eval_seconds": eval_seconds,
        "history": history,
        "held_out": summary,
        "per_case": rows,
    }
    shown_settings = {
        "data": str(data),
        "model": f"{settings.model}, features {tuple(settings.features)}, {settings.norm} norm",
        "patch (d, h, w)": tuple(settings.patch_size),
        "iterations x batch": f"{settings.iterations} x {settings.batch_size}",
        "optimizer": f"{settings.optimizer}, lr {settings.lr:g} ({settings.schedule})",
        "foreground:background crops": f"{settings.pos:g}:{settings.neg:g}",
        "augmentation": settings.augment,
        "intensity": f"window {prep['window']}"
        if prep["window"] is not None
        else f"normalize {prep['normalize']}",
        "target spacing (mm)": prep["target_spacing"],
        "training / held-out cases": f"{len(train_idx)} / {len(val_idx)} (by patient)",
        "training time (s)": f"{seconds:.1f}",
        "seed": settings.seed,
    }
    with staged(out, replaces=earlier) as tmp:
        save_checkpoint(
            tmp / "model.npz",
            model,
            preprocessing=prep,
            classes=classes,
            train_state={"iterations": settings.iterations, "history": history},
        )
        _write_json(tmp / "metrics.json", result)
        _write_per_case(tmp / "per_case.csv", rows, classes)
        figures = _figures(tmp / FIGURES, rows, shown, classes)
        _write_report(
            tmp,
            f"medgrad segmentation run: {settings.model} on {data}",
            rows,
            summary,
            shown_settings,
            figures,  # linked relative to the report: the same once renamed
            classes,
        )
    _print_summary("held-out", summary)
    print(f"run directory: {out} (model.npz, metrics.json, per_case.csv, report.md)")
    return _jsonable(result)


def evaluate_segmentation(
    model_or_run, data, out: str | os.PathLike | None = None, *, progress: bool = True
) -> dict:
    """Per-case metrics of a segmentation model (a model file or a run directory) on every case
    of `data`, prepared as at training time: sliding-window inference, argmax,
    segmentation_summary with the case's spacing. With `out` (a folder, not a run's), writes
    per_case.csv, metrics.json, report.md and figures/ there, all at once."""
    from engine.checkpoint import load_model

    path = _model_file(model_or_run)
    model, ckpt = load_model(path)
    if not is_segmentation_checkpoint(ckpt):
        raise ArgumentError(f"{path}: a classification model; use medgrad evaluate without it")
    prep = _preprocessing(ckpt)
    earlier = []
    if out is not None:
        out = Path(out)
        if (out / "model.npz").exists():
            raise ArgumentError(f"--out {out} holds a training run; choose another folder")
        earlier = _check_out(out, overwrite=True)
    classes = list(ckpt.classes or [str(i) for i in range(prep["num_classes"])])
    ds = _dataset(data, prep, len(classes))
    print(f"{path.name} on {data}: {len(ds)} volumes")
    start = time.perf_counter()
    rows, shown = _evaluate(model, ds, range(len(ds)), prep, classes, progress=progress)
    summary = summarize(rows, classes)
    result = {
        "task": TASK,
        "model": str(path),
        "source": str(data),
        "classes": classes,
        "seconds": time.perf_counter() - start,
        "summary": summary,
        "per_case": rows,
    }
    _print_summary(f"{path.name} on {data}", summary)
    if out is not None:
        with staged(out, replaces=earlier) as tmp:
            _write_json(tmp / "metrics.json", result)
            _write_per_case(tmp / "per_case.csv", rows, classes)
            figures = _figures(tmp / FIGURES, rows, shown, classes)
            shown_settings = {"model": str(path), "data": str(data), "cases": len(ds)}
            _write_report(
                tmp,
                f"medgrad evaluation: {path} on {data}",
                rows,
                summary,
                shown_settings,
                figures,  # linked relative to the report: the same once renamed
                classes,
            )
        print(f"wrote {out}/metrics.json, per_case.csv, report.md")
    return _jsonable(result)


def _preprocessing(ckpt) -> dict:
    """The model file's preprocessing, with the defaults a bare segmentation model needs."""
    prep = dict(ckpt.preprocessing)
    config = ckpt.model_config or {}
    prep.setdefault("in_channels", int(config.get("in_channels", 1)))
    prep.setdefault("num_classes", len(ckpt.classes or []) or int(config.get("num_classes", 2)))
    if "patch_size" not in prep:
        raise DataError(f"{ckpt.path}: no patch_size in its preprocessing: not a medgrad run's")
    return prep


def prepare_volume(volume: np.ndarray, meta: dict, prep: dict):
    """A volume as read_volume returns it -> (image (C, D, H, W) float32, affine, spacing) after
    the model file's preprocessing (target spacing, then window or z-score), as VolumeDataset
    does at training time."""
    from engine.data.volume_transforms import hu_window, resample_to_spacing, zscore

    if prep.get("normalize") not in (None, "zscore"):
        raise ArgumentError(
            f"preprocessing 'normalize' is {prep['normalize']!r}: expected 'zscore' or null"
        )
    volume = np.asarray(volume, dtype=np.float32)
    image = volume[None] if volume.ndim == 3 else volume
    affine, spacing = np.asarray(meta["affine"], np.float64), tuple(meta["spacing"])
    if prep.get("target_spacing") is not None:
        image, affine = resample_to_spacing(image, affine, spacing, prep["target_spacing"])
        spacing = tuple(float(v) for v in prep["target_spacing"])
    if prep.get("window") is not None:
        if len(prep["window"]) != 2:
            raise ArgumentError(
                f"preprocessing 'window' must be (center, width), got {prep['window']!r}"
            )
        image = hu_window(image, *prep["window"])
    elif prep.get("normalize") == "zscore":
        image = zscore(image)
    return image.astype(np.float32, copy=False), affine, spacing


def _inputs(inputs) -> list[Path]:
    """NIfTI files and DICOM series folders, each checked to exist; duplicate case names refused
    (their masks would overwrite each other)."""
    from engine.data.volumes import case_name, is_nifti

    paths, seen = [], {}
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise DataError(f"{path}: no such file or folder")
        if not (path.is_dir() or is_nifti(path)):
            raise DataError(f"{path}: not a NIfTI file (.nii, .nii.gz) or a DICOM series folder")
        name = case_name(path)
        if name in seen:
            raise ArgumentError(f"{seen[name]} and {path} would both write {name}_mask.nii.gz")
        seen[name] = path
        paths.append(path)
    if not paths:
        raise ArgumentError("predict: no inputs given")
    return paths


def predict_segmentation(model_or_run, inputs, out_dir, *, progress: bool = True) -> list[Path]:
    """Write OUT_DIR/<case>_mask.nii.gz for each input (a NIfTI file or a DICOM series folder),
    prepared as at training time; each mask is in its input's own voxel grid with the input's
    affine (volumes.write_mask_like; predictions made at a target spacing are resampled back
    first), plus predictions.csv (input, mask, voxels and mL per class). Every mask is
    written before any appears in out_dir. Returns the mask paths."""
    from engine.checkpoint import load_model
    from engine.data.volume_transforms import resample_to_spacing
    from engine.data.volumes import case_name, read_volume, write_mask_like
    from engine.inference import sliding_window_inference

    path = _model_file(model_or_run)
    model, ckpt = load_model(path)
    if not is_segmentation_checkpoint(ckpt):
        raise ArgumentError(f"{path}: a classification model; use medgrad predict without it")
    prep = _preprocessing(ckpt)
    paths = _inputs(inputs)
    out_dir = Path(out_dir)
    from engine.workflow import check_out_folder

    check_out_folder(out_dir, "--out")
    classes = list(ckpt.classes or [str(i) for i in range(prep["num_classes"])])
    rows = [["input", "mask", "shape", *(f"voxels_{c}" for c in classes[1:])]]
    rows[0] += [f"ml_{c}" for c in classes[1:]]
    written = []
    with staged(out_dir) as tmp:
        for source in paths:
            volume, meta = read_volume(source)
            image, affine, _ = prepare_volume(volume, meta, prep)
            if image.shape[0] != prep["in_channels"]:
                raise DataError(
                    f"{source}: {image.shape[0]} channels, the model takes {prep['in_channels']}"
                )
            probs = sliding_window_inference(
                model,
                image,
                tuple(prep["patch_size"]),
                overlap=float(prep.get("overlap", 0.25)),
                num_classes=int(prep["num_classes"]),
            )
            if prep.get("target_spacing") is not None:  # back onto the input's own grid
                probs, _ = resample_to_spacing(
                    probs,
                    affine,
                    prep["target_spacing"],
                    meta["spacing"],
                    output_shape=volume.shape[-3:],
                )
            mask = probs.argmax(axis=0).astype(np.int64)
            name = f"{case_name(source)}_mask.nii.gz"
            if (out_dir / name).resolve() in {p.resolve() for p in paths}:
                raise ArgumentError(f"{out_dir / name}: an input; choose another --out")
            write_mask_like(tmp / name, mask, source)
            written.append(out_dir / name)
            voxel_ml = float(np.prod(meta["spacing"])) / 1000.0
            counts = [int((mask == k).sum()) for k in range(1, len(classes))]
            rows.append(
                [str(source), name, "x".join(map(str, mask.shape)), *counts]
                + [f"{n * voxel_ml:.3f}" for n in counts]
            )
            if progress:
                found = ", ".join(
                    f"{c} {n} voxels" for c, n in zip(classes[1:], counts, strict=True)
                )
                print(f"  {source} -> {name} ({found})", flush=True)
        text = io.StringIO()
        csv.writer(text).writerows(rows)
        atomic_write(tmp / "predictions.csv", lambda f: f.write(text.getvalue().encode()))
    print(f"{len(written)} masks -> {out_dir} (and predictions.csv)")
    return written
