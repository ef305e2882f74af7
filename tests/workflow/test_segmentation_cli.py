"""`medgrad train --task segmentation`, `evaluate` and `predict` on a segmentation model, through
the command line: a tiny run end to end (the model file found to be a segmentation model without
a flag), and every kind of bad input as one line naming the file, exit status 2, nothing written."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import sys

import numpy as np
import pytest

from engine.cli import main
from engine.data.synthetic_volumes import make_segmentation_demo_data
from engine.data.volumes import write_mask

nib = pytest.importorskip("nibabel")

# a 2-level U-Net on 8 x 16 x 16 volumes: seconds, not a model that learns (test_segmentation.py)
TINY = ["--features", "4,8", "--patch", "8,16,16", "--iterations", "2", "--quiet"]


@pytest.fixture(scope="module")
def msd(tmp_path_factory):
    """Four synthetic CT volumes (8 x 16 x 16) in the MSD layout, with DICOM series."""
    return make_segmentation_demo_data(tmp_path_factory.mktemp("msd") / "d", n_cases=4, size=16)


def _folder(tmp_path, msd):
    """The MSD cases as an images/ + labels/ folder (a copy the test may spoil)."""
    root = tmp_path / "data"
    shutil.copytree(msd / "imagesTr", root / "images")
    shutil.copytree(msd / "labelsTr", root / "labels")
    return root


def _fails(capsys, argv, *fragments) -> str:
    """Run medgrad; it must exit 2 with one line on stderr holding every fragment."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("medgrad: error:") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


def test_train_evaluate_predict_through_the_cli(tmp_path, capsys, msd):
    run = tmp_path / "run"
    argv = ["train", "--task", "segmentation", "--data", str(msd), "--out", str(run), *TINY]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "training on 3, held out 1 (by patient)" in out and "held-out: nodule Dice" in out
    for name in ("model.npz", "metrics.json", "per_case.csv", "report.md"):
        assert (run / name).is_file(), name
    assert not list(run.glob(".staging-*"))
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["settings"]["iterations"] == 2 and saved["settings"]["features"] == [4, 8]
    assert saved["preprocessing"]["window"] == [-300.0, 1400.0]
    assert saved["preprocessing"]["patch_size"] == [8, 16, 16]
    assert [r["case"] for r in saved["per_case"]] == saved["held_out_cases"]

    report = (run / "report.md").read_text()
    for link in re.findall(r"\]\(([^)]+\.png)\)", report):  # figures, if engine.seg_report is there
        assert (run / link).is_file(), link
    assert all(case in report for case in saved["held_out_cases"])

    # an earlier run is never replaced without --overwrite
    _fails(capsys, argv, str(run), "--overwrite")

    # evaluate: a segmentation model, found from the file; --out is a folder
    ev = tmp_path / "ev"
    assert main(["evaluate", str(run / "model.npz"), str(msd), "--out", str(ev)]) == 0
    assert "nodule Dice" in capsys.readouterr().out
    rows = json.loads((ev / "metrics.json").read_text())["per_case"]
    assert [r["case"] for r in rows] == [f"case_{i:03d}" for i in range(4)]
    header = (ev / "per_case.csv").read_text().splitlines()[0]
    assert header.startswith("case,dice_nodule,iou_nodule,hausdorff95_nodule")
    assert (ev / "report.md").is_file()
    # the run directory itself names the model too, and its files are never overwritten
    _fails(capsys, ["evaluate", str(run), str(msd), "--out", str(run)], "holds a training run")

    # predict: one mask per input (a NIfTI file and a DICOM series), with its input's affine
    masks = tmp_path / "masks"
    inputs = [str(msd / "imagesTr" / "case_001.nii.gz"), str(msd / "dicom" / "case_002")]
    assert main(["predict", str(run), *inputs, "--out", str(masks)]) == 0
    first = nib.load(masks / "case_001_mask.nii.gz")
    np.testing.assert_allclose(first.affine, nib.load(inputs[0]).affine, atol=1e-6, rtol=0)
    assert first.shape == nib.load(inputs[0]).shape
    assert (masks / "case_002_mask.nii.gz").is_file()
    lines = (masks / "predictions.csv").read_text().splitlines()
    assert lines[0].startswith("input,mask,shape,voxels_nodule") and len(lines) == 3


def test_cli_options_that_do_not_apply(tmp_path, capsys, msd):
    base = ["train", "--task", "segmentation", "--out", str(tmp_path / "r"), *TINY]
    _fails(capsys, base, "--task segmentation needs --data DIR")
    _fails(capsys, [*base, "--data", str(msd), "--resume"], "does not support --resume")
    _fails(capsys, [*base, "--data", str(msd), "--patch", "8,15,16"], "--patch 8,15,16", "by 2")
    _fails(capsys, [*base, "--data", str(msd), "--model", "seed_cnn"], "--model seed_cnn")
    assert not (tmp_path / "r" / "model.npz").exists()


def _nifti_header(shape=(4, 4, 4)) -> bytes:
    return nib.Nifti1Image(np.zeros(shape, np.uint8), np.eye(4)).to_bytes()


def _spoil(root, kind: str):
    """Spoil an images/ + labels/ folder one way -> (the file the error must name, its words)."""
    image, label = root / "images" / "case_001.nii.gz", root / "labels" / "case_001.nii.gz"
    if kind == "label outside the classes":
        mask = np.asarray(nib.load(label).dataobj).astype(np.int64)
        mask[0, 0, 0] = 3
        label.unlink()
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), nib.load(image).affine), label)
        return label, "label values [3] outside the classes 0..1"
    if kind == "image without a mask":
        label.unlink()
        return image, "image without a mask"
    if kind == "2-D file":
        flat = root / "images" / "case_009.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros((16, 16), np.float32), np.eye(4)), flat)
        write_mask(root / "labels" / "case_009.nii.gz", np.zeros((4, 4, 4), np.uint8), np.eye(4))
        return flat, "not a volume"
    if kind == "broken header":
        blob = bytearray(_nifti_header())
        blob[0:4] = (999).to_bytes(4, "little")
        image.write_bytes(gzip.compress(bytes(blob)))
        return image, "broken NIfTI header"
    assert kind == "gzip bomb"  # a 4x4x4 header, then 8 MiB of zeros: a few KiB on disk
    image.write_bytes(gzip.compress(_nifti_header() + b"\0" * (8 << 20)))
    return image, "gzip bomb"


BAD = [
    "label outside the classes",
    "image without a mask",
    "2-D file",
    "broken header",
    "gzip bomb",
]


@pytest.mark.parametrize("kind", BAD)
def test_bad_training_data_is_one_line_naming_the_file(tmp_path, capsys, msd, kind):
    root = _folder(tmp_path, msd)
    path, words = _spoil(root, kind)
    run = tmp_path / "run"
    argv = ["train", "--task", "segmentation", "--data", str(root), "--out", str(run), *TINY]
    _fails(capsys, argv, str(path), words)
    assert not run.exists() or not any(run.iterdir())  # nothing written, not even half


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, msd):
    run = tmp_path_factory.mktemp("tiny") / "run"
    argv = ["train", "--task", "segmentation", "--data", str(msd), "--out", str(run), *TINY]
    assert main(argv) == 0
    return run


@pytest.mark.parametrize("kind", ["2-D file", "broken header", "gzip bomb"])
def test_bad_input_to_predict_is_one_line_naming_the_file(tmp_path, capsys, msd, tiny_run, kind):
    run = tiny_run
    root = _folder(tmp_path, msd)
    path, words = _spoil(root, kind)
    good = root / "images" / "case_000.nii.gz"
    out = tmp_path / "masks"
    _fails(capsys, ["predict", str(run), str(good), str(path), "--out", str(out)], str(path), words)
    assert not list(out.rglob("*"))  # the good input's mask is not left behind either


def test_a_label_outside_the_classes_of_a_dataset_json(tmp_path, capsys, msd):
    root = tmp_path / "d"
    shutil.copytree(msd, root)
    label = root / "labelsTr" / "case_002.nii.gz"
    mask, affine = np.asarray(nib.load(label).dataobj), nib.load(label).affine
    label.unlink()
    mask = mask.astype(np.int64)
    mask[1, 1, 1] = 2  # dataset.json lists background and nodule only
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), label)
    run = tmp_path / "run"
    argv = ["train", "--task", "segmentation", "--data", str(root), "--out", str(run), *TINY]
    _fails(capsys, argv, "case_002.nii.gz", "outside the classes 0..1")


def test_report_without_engine_seg_report(tmp_path, capsys, msd, monkeypatch):
    """Without engine.seg_report (its figures), report.md still holds the per-case table."""
    import engine

    monkeypatch.setitem(sys.modules, "engine.seg_report", None)  # its import raises ImportError
    monkeypatch.delattr(engine, "seg_report", raising=False)  # set once it was imported
    run = tmp_path / "run"
    argv = ["train", "--task", "segmentation", "--data", str(msd), "--out", str(run), *TINY]
    assert main(argv) == 0
    saved = json.loads((run / "metrics.json").read_text())
    report = (run / "report.md").read_text()
    assert "| case | dice (nodule) | iou (nodule)" in report
    (case,) = saved["held_out_cases"]
    dice = saved["per_case"][0]["dice"][0]
    assert f"| {case} | {dice:.4g} |" in report
    assert not (run / "figures").exists()
