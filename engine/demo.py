"""The main job behind `make demo`, the whole story in three stages.

1. The engine (issue 2): the source article's CNN trained with SGD and with Adam on the built-in
   lesion phantoms, each reaching >= 95% test accuracy.
2. The workflow (issue 5): synthetic chest-CT DICOM studies are generated, the seed CNN is trained
   with a patient-level hold-out, evaluated on the held-out patients and on a second, independent
   cohort, explained with saliency and Grad-CAM, and a run directory with model.npz, metrics.json,
   plots, overlays and report.md is written.
3. Segmentation (issue 13): synthetic chest-CT volumes with nodule masks (NIfTI, MSD layout) are
   generated, a small 3-D U-Net is trained on random crops with a patient-level hold-out, and the
   held-out volumes are segmented by sliding window and scored (mean nodule Dice >= 0.80).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

import models
from engine import optim
from engine.data.phantoms import make_phantoms
from engine.train import evaluate, fit

# Settings that reach >= 95% test accuracy with both optimizers on a 2-core machine.
OPTIMIZER_SETTINGS = {"sgd": {"lr": 0.05, "momentum": 0.9}, "adam": {"lr": 2e-3}}
# The synthetic CT cohorts: patients x slices of size x size, resampled to INPUT_SIZE for seed_cnn
# (40 px keeps small nodules visible). 40 patients give 1,440 training slices and 480 held out:
# 0.96 held-out accuracy in about 25 s on 2 cores; 30 patients x 24 slices left it near 0.90.
DICOM_COHORT = {"n_patients": 40, "slices_per_patient": 48, "size": 128}
TEST_COHORT = {"n_patients": 10, "slices_per_patient": 48, "size": 128}
INPUT_SIZE = 40
# The 3-D stage: 12 volumes of 32 x 64 x 64 voxels (10 x 5 x 5 mm), 9 for training and 3 held
# out; a 3-level U-Net, 300 Adam steps on 2 crops of 16 x 32 x 32 each: held-out mean Dice 0.958,
# 79 s of training on 2 shared cores (README.md, Segmentation (3-D): other seeds, times).
SEGMENTATION_COHORT = {"n_cases": 12, "size": 64}
SEGMENTATION_SETTINGS = {
    "features": (8, 16, 32),
    "patch_size": (16, 32, 32),
    "iterations": 300,
    "batch_size": 2,
    "lr": 3e-3,
    "val_split": 0.25,
}


def train_phantoms(
    optimizer: str,
    *,
    n_train: int = 4000,
    n_test: int = 1000,
    epochs: int = 6,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """Train seed_cnn (2 classes) on lesion phantoms with `optimizer`; return its test metrics."""
    x, y = make_phantoms(n_train + n_test, size=28, seed=seed)
    train, test = (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])
    model = models.get("seed_cnn", num_classes=2, rng=np.random.default_rng(seed))
    opt = optim.OPTIMIZERS[optimizer](model.parameters(), **OPTIMIZER_SETTINGS[optimizer])
    fit(model, opt, train, test, epochs=epochs, batch_size=batch_size, seed=seed, progress=progress)
    return evaluate(model, *test)


def run_engine_stage(seed: int = 0, progress: bool = True) -> dict[str, dict[str, float]]:
    """Stage 1: seed_cnn with SGD and with Adam on the phantoms; prints each test accuracy."""
    results = {}
    for name in OPTIMIZER_SETTINGS:
        print(
            f"== seed_cnn on synthetic lesion phantoms, optimizer {name} {OPTIMIZER_SETTINGS[name]}"
        )
        start = time.perf_counter()
        results[name] = train_phantoms(name, seed=seed, progress=progress)
        print(
            f"   test accuracy {results[name]['accuracy']:.4f} "
            f"(loss {results[name]['loss']:.4f}, {time.perf_counter() - start:.1f} s)"
        )
    return results


def run_workflow_stage(
    data_dir: str | Path = "demo-data",
    run_dir: str | Path = "runs/demo",
    *,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Stage 2: DICOM data -> train (hold-out by patient) -> evaluate -> explain -> report."""
    from engine import workflow
    from engine.data.synthetic_dicom import make_demo_data

    data_dir = Path(data_dir)
    cohort, external = data_dir / "train", data_dir / "external"
    for folder, spec, offset in ((cohort, DICOM_COHORT, 0), (external, TEST_COHORT, 1000)):
        if not (folder / "labels.csv").exists():
            start = time.perf_counter()
            make_demo_data(folder, seed=seed + offset, **spec)
            print(
                f"== generated {spec['n_patients']} synthetic CT studies in {folder} "
                f"({time.perf_counter() - start:.1f} s)"
            )
    print(
        f"== medgrad train --data {cohort} --input-size {INPUT_SIZE} --epochs 10 --batch-size 32 "
        f"--val-split 0.25 --out {run_dir} --overwrite"
    )
    settings = workflow.TrainSettings(
        model="seed_cnn",
        optimizer="adam",
        lr=2e-3,
        epochs=10,
        batch_size=32,
        val_split=0.25,
        input_size=INPUT_SIZE,
        seed=seed,
    )
    result = workflow.train(cohort, run_dir, settings, overwrite=True, progress=progress)
    print(f"== medgrad evaluate {run_dir}/model.npz {external}  (patients never seen in training)")
    result["external"] = workflow.evaluate(Path(run_dir) / "model.npz", external)
    return result


def run_segmentation_stage(
    data_dir: str | Path = "demo-data",
    run_dir: str | Path = "runs/demo/segmentation",
    *,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Stage 3: CT volumes -> 3-D U-Net (hold-out by patient) -> sliding-window Dice -> report."""
    from engine.data.synthetic_volumes import make_segmentation_demo_data
    from engine.segmentation import SegmentationSettings, train_segmentation

    folder = Path(data_dir) / "segmentation"
    if not (folder / "dataset.json").exists():
        start = time.perf_counter()
        make_segmentation_demo_data(folder, seed=seed, dicom=False, **SEGMENTATION_COHORT)
        print(
            f"== generated {SEGMENTATION_COHORT['n_cases']} synthetic CT volumes with nodule "
            f"masks in {folder} ({time.perf_counter() - start:.1f} s)"
        )
    s = SegmentationSettings(seed=seed, **SEGMENTATION_SETTINGS)
    print(
        f"== medgrad train --task segmentation --data {folder} --features "
        f"{','.join(map(str, s.features))} --patch {','.join(map(str, s.patch_size))} "
        f"--iterations {s.iterations} --batch-size {s.batch_size} --lr {s.lr:g} --val-split "
        f"{s.val_split} --out {run_dir} --overwrite"
    )
    return train_segmentation(folder, run_dir, s, overwrite=True, progress=progress)


def run(
    seed: int = 0,
    progress: bool = True,
    data_dir: str | Path = "demo-data",
    run_dir: str | Path = "runs/demo",
) -> dict:
    """The three stages; returns {"engine": ..., "workflow": ..., "segmentation": ...}."""
    start = time.perf_counter()
    results = {"engine": run_engine_stage(seed, progress)}
    results["workflow"] = run_workflow_stage(data_dir, run_dir, seed=seed, progress=progress)
    seg_dir = Path(run_dir) / "segmentation"
    results["segmentation"] = run_segmentation_stage(
        data_dir, seg_dir, seed=seed, progress=progress
    )
    held_out = results["workflow"]["held_out"]
    auc = "n/a" if held_out["auc"] is None else f"{held_out['auc']:.4f}"
    dice = results["segmentation"]["held_out"]["mean_dice"]
    print(
        f"== summary ({time.perf_counter() - start:.0f} s): phantoms test accuracy "
        + ", ".join(f"{k} {v['accuracy']:.4f}" for k, v in results["engine"].items())
        + f"; CT held-out accuracy {held_out['accuracy']:.4f}, recall {held_out['recall']:.4f},"
        f" F1 {held_out['f1']:.4f}, AUC {auc}; report: {Path(run_dir) / 'report.md'}; "
        f"3-D nodule segmentation held-out mean Dice {dice:.4f}; report: "
        f"{seg_dir / 'report.md'}"
    )
    return results
