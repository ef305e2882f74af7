"""The segmentation workflow really learns: a 3-D U-Net trained on the synthetic CT volumes reaches
mean nodule Dice >= 0.80 on held-out patients; evaluate redoes the training's preprocessing (the
same per-case numbers); predict writes masks whose affine is the input file's, in the input's own
voxel order, also for inputs stored in non-canonical orientations."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine import metrics
from engine.checkpoint import load_checkpoint
from engine.data.synthetic_volumes import make_segmentation_demo_data
from engine.segmentation import (
    SegmentationSettings,
    evaluate_segmentation,
    predict_segmentation,
    train_segmentation,
)

nib = pytest.importorskip("nibabel")

DICE_BAR = 0.80
# 150 steps of 2 crops: about 55 s of CPU time (30-35 s on 2 idle cores); the demo trains
# longer (engine.demo.SEGMENTATION_SETTINGS)
SETTINGS = dict(
    features=(8, 16, 32),
    patch_size=(16, 32, 32),
    iterations=150,
    batch_size=2,
    lr=5e-3,
    val_split=0.25,
    seed=0,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    data = make_segmentation_demo_data(root / "data", n_cases=12, size=64, seed=0, dicom=False)
    run = root / "run"
    result = train_segmentation(data, run, SegmentationSettings(**SETTINGS), progress=False)
    return data, run, result


@pytest.mark.slow
def test_unet3d_reaches_the_dice_bar_on_held_out_patients(trained):
    data, run, result = trained
    held_out = result["held_out_cases"]
    assert len(held_out) == 3 and not set(held_out) & set(result["train_cases"])
    dice = [row["dice"][0] for row in result["per_case"]]
    assert result["held_out"]["mean_dice"] == pytest.approx(np.mean(dice))
    assert result["held_out"]["mean_dice"] >= DICE_BAR, dice
    # the loss went down: the last logged mean is well below the first
    loss = result["history"]["loss"]
    assert len(loss) == 10 and loss[-1] < 0.5 * loss[0]
    # the model file carries what evaluate/predict need, and no pickle
    ckpt = load_checkpoint(run / "model.npz")
    assert ckpt.preprocessing["task"] == "segmentation"
    assert ckpt.preprocessing["window"] == [-300.0, 1400.0]
    assert ckpt.preprocessing["patch_size"] == [16, 32, 32]
    assert ckpt.classes == ["background", "nodule"] and ckpt.spec is not None
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["held_out"]["mean_dice"] == pytest.approx(result["held_out"]["mean_dice"])
    csv_rows = (run / "per_case.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in csv_rows[1:]] == held_out
    report = (run / "report.md").read_text()
    assert all(case in report for case in held_out)


@pytest.mark.slow
def test_per_case_rows_are_the_metrics_summary(trained):
    from engine.data.volumes import read_mask

    data, run, result = trained
    row = result["per_case"][0]
    assert set(row) == {
        "case",
        "dice",
        "iou",
        "hausdorff95",
        "average_surface_distance",
        "surface_dice",
    }
    assert all(len(v) == 1 for k, v in row.items() if k != "case")  # one foreground class
    # recompute the first case's metrics from a mask predict writes: the same numbers
    image = data / "imagesTr" / f"{row['case']}.nii.gz"
    out = predict_segmentation(run, [image], run.parent / "p1", progress=False)[0]
    pred, meta = read_mask(out)
    ref, _ = read_mask(data / "labelsTr" / f"{row['case']}.nii.gz")
    again = metrics.segmentation_summary(pred, ref, 2, meta["spacing"])
    for name, values in again.items():
        np.testing.assert_allclose(values, row[name], rtol=1e-9, err_msg=name)


@pytest.mark.slow
def test_evaluate_redoes_the_preprocessing(trained, tmp_path):
    data, run, result = trained
    desc = json.loads((data / "dataset.json").read_text())
    held = [c for c in desc["training"] if c["patient_id"] in result["held_out_cases"]]
    subset = {
        **desc,
        "training": [
            {k: str((data / v).resolve()) if k in ("image", "label") else v for k, v in c.items()}
            for c in held
        ],
    }
    (tmp_path / "dataset.json").write_text(json.dumps(subset))
    ev = evaluate_segmentation(run / "model.npz", tmp_path, tmp_path / "ev", progress=False)
    assert [r["case"] for r in ev["per_case"]] == result["held_out_cases"]
    for mine, theirs in zip(ev["per_case"], result["per_case"], strict=True):
        np.testing.assert_allclose(mine["dice"], theirs["dice"], rtol=1e-9)
    assert (tmp_path / "ev" / "per_case.csv").is_file()


def _reoriented(source, path, kind: str):
    """Write `source` (a NIfTI file) to `path` stored in another voxel order, same world."""
    img = nib.load(source)
    if kind == "RAS":  # nibabel's canonical, the reverse of the demo's L, P along i, j
        img = nib.as_closest_canonical(img)
    else:  # axes permuted: stored (k, i, j), affine columns permuted to match
        data = np.transpose(np.asarray(img.dataobj), (2, 0, 1))
        img = nib.Nifti1Image(data, img.affine[:, [2, 0, 1, 3]])
    nib.save(img, path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["RAS", "permuted"])
def test_predict_writes_masks_with_the_inputs_affine(trained, tmp_path, kind):
    data, run, result = trained
    case = result["held_out_cases"][0]
    image = _reoriented(data / "imagesTr" / f"{case}.nii.gz", tmp_path / "img.nii.gz", kind)
    label = _reoriented(data / "labelsTr" / f"{case}.nii.gz", tmp_path / "ref.nii.gz", kind)
    (mask_path,) = predict_segmentation(run, [image], tmp_path / "out", progress=False)
    mask, source = nib.load(mask_path), nib.load(image)
    assert mask_path.name == "img_mask.nii.gz" and mask.get_data_dtype() == np.uint8
    np.testing.assert_allclose(mask.affine, source.affine, atol=1e-6, rtol=0)
    assert mask.shape == source.shape
    # in the file's own voxel order the mask overlaps the reference stored the same way
    pred = np.asarray(mask.dataobj)
    ref = np.asarray(nib.load(label).dataobj)
    assert metrics.dice(pred, ref, 2)[1] >= DICE_BAR
    # and it is the mask predicted from the original file, only reordered
    (plain,) = predict_segmentation(
        run, [data / "imagesTr" / f"{case}.nii.gz"], tmp_path / "plain", progress=False
    )
    original = nib.load(plain)
    moved = nib.as_closest_canonical(original) if kind == "RAS" else None
    expected = (
        np.asarray(moved.dataobj)
        if moved is not None
        else np.transpose(np.asarray(original.dataobj), (2, 0, 1))
    )
    np.testing.assert_array_equal(pred, expected)
