"""Segmentation datasets: images/ + labels/ folders, MSD dataset.json, the memory-mapped cache,
patient-grouped splits, the synthetic CT data and `medgrad make-demo-data --task segmentation`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from engine.data import read_mask, write_mask, write_volume
from engine.data.synthetic_volumes import affine_for, make_segmentation_demo_data
from engine.data.volume_dataset import VolumeDataset
from engine.errors import DataError

pytest.importorskip("nibabel")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    pytest.importorskip("pydicom")
    return make_segmentation_demo_data(tmp_path_factory.mktemp("seg") / "demo", 4, 16, seed=1)


def _folder(root, rng, names, shape=(4, 6, 6)):
    affine = affine_for(shape, (3.0, 1.5, 1.5))
    for name in names:
        write_volume(root / "images" / f"{name}.nii.gz", rng.standard_normal(shape), affine)
        write_mask(root / "labels" / f"{name}.nii.gz", rng.integers(0, 2, shape), affine)
    return root


def test_synthetic_data_is_deterministic_and_labelled(demo, tmp_path):
    again = make_segmentation_demo_data(tmp_path / "again", 4, 16, seed=1)
    for name in ("imagesTr/case_002.nii.gz", "labelsTr/case_002.nii.gz"):
        assert (again / name).read_bytes() == (demo / name).read_bytes()
    other = make_segmentation_demo_data(tmp_path / "other", 1, 16, seed=2, dicom=False)
    assert (other / "imagesTr/case_000.nii.gz").read_bytes() != (
        demo / "imagesTr/case_000.nii.gz"
    ).read_bytes()
    assert not (other / "dicom").exists()
    desc = json.loads((demo / "dataset.json").read_text())
    assert desc["labels"] == {"0": "background", "1": "nodule"} and desc["numTraining"] == 4
    for i in range(4):
        mask, meta = read_mask(demo / f"labelsTr/case_{i:03d}.nii.gz", num_classes=2)
        assert 0 < mask.sum() < mask.size // 20  # a few nodules, mostly background
        assert meta["spacing"] == pytest.approx((40.0, 20.0, 20.0))
    lungs = make_segmentation_demo_data(
        tmp_path / "lungs", 1, 16, seed=1, lungs_class=True, dicom=False
    )
    mask, _ = read_mask(lungs / "labelsTr/case_000.nii.gz")
    assert set(np.unique(mask)) == {0, 1, 2}


def test_dataset_json(demo):
    ds = VolumeDataset(demo)  # the folder holding dataset.json
    assert len(ds) == 4 and ds.classes == ["background", "nodule"] and ds.num_classes == 2
    assert list(ds.groups) == [f"case_{i:03d}" for i in range(4)]
    image, mask = ds[1]
    assert image.shape == (1, 8, 16, 16) and image.dtype == np.float32
    assert mask.shape == (8, 16, 16) and mask.dtype == np.int64
    expected, _ = read_mask(demo / "labelsTr/case_001.nii.gz")
    assert np.array_equal(mask, expected)
    assert ds.meta(1)["patient_id"] == "case_001"


def test_dataset_preprocessing(demo):
    ds = VolumeDataset(
        demo / "dataset.json", target_spacing=(20.0, 40.0, 40.0), window=(-400, 1000)
    )
    image, mask = ds[0]
    assert image.shape == (1, 16, 8, 8) and mask.shape == (16, 8, 8)
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert ds.meta(0)["spacing"] == pytest.approx((20.0, 40.0, 40.0))
    assert set(np.unique(mask)) <= {0, 1}
    z, _ = VolumeDataset(demo, normalize="zscore")[0]
    assert abs(float(z.mean())) < 1e-4


def test_dataset_cache_is_memory_mapped(demo, tmp_path):
    plain = VolumeDataset(demo, window=(-400, 1000))
    cached = VolumeDataset(demo, window=(-400, 1000), cache_dir=tmp_path / "cache")
    for i in range(len(plain)):
        a, b = plain[i], cached[i]
        assert isinstance(b[0], np.memmap) and not b[0].flags.writeable
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    np.testing.assert_allclose(cached.meta(2)["affine"], plain.meta(2)["affine"])
    entries = list((tmp_path / "cache").iterdir())
    assert len(entries) == 1
    stamp = (entries[0] / "meta.json").stat().st_mtime_ns
    VolumeDataset(demo, window=(-400, 1000), cache_dir=tmp_path / "cache")  # reused, not rebuilt
    assert (entries[0] / "meta.json").stat().st_mtime_ns == stamp
    VolumeDataset(demo, cache_dir=tmp_path / "cache")  # other settings: a second entry
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_folder_layout_and_dicom_series(demo, tmp_path, rng):
    root = _folder(tmp_path / "ds", rng, ["b_scan", "a_scan"])
    shutil.copytree(demo / "dicom/case_000", root / "images" / "c_dicom")
    shutil.copy(demo / "labelsTr/case_000.nii.gz", root / "labels" / "c_dicom.nii.gz")
    ds = VolumeDataset(root)
    assert [c.image.name for c in ds.cases] == ["a_scan.nii.gz", "b_scan.nii.gz", "c_dicom"]
    assert ds.classes == ["background", "foreground"]
    image, mask = ds[2]  # a DICOM series paired with its NIfTI mask: they line up
    assert image.shape == (1, 8, 16, 16) and mask.sum() > 0


def test_grouped_splits_reuse_splits(tmp_path, rng):
    names = [f"p{p}_s{s}" for p in range(5) for s in range(2)]
    ds = VolumeDataset(_folder(tmp_path / "ds", rng, names, (3, 4, 4)), patient_regex=r"(p\d+)_")
    assert sorted(set(ds.groups)) == [f"p{p}" for p in range(5)]
    train, val = ds.holdout_split(0.4, seed=0)
    assert len(train) + len(val) == 10 and not set(ds.groups[train]) & set(ds.groups[val])
    folds = ds.kfold(5, seed=0)
    assert sorted(np.concatenate([t for _, t in folds]).tolist()) == list(range(10))
    for tr, te in folds:
        assert not set(ds.groups[tr]) & set(ds.groups[te])
    # dataset.json patient ids group cases too
    desc = {
        "labels": {"0": "background", "1": "x"},
        "training": [
            {"image": f"images/{n}.nii.gz", "label": f"labels/{n}.nii.gz", "patient_id": n[:2]}
            for n in names
        ],
    }
    (tmp_path / "ds" / "dataset.json").write_text(json.dumps(desc))
    assert list(VolumeDataset(tmp_path / "ds").groups) == [n[:2] for n in names]


def test_dataset_bad_input(tmp_path, rng):
    root = _folder(tmp_path / "ds", rng, ["a", "b"], (3, 4, 4))
    (root / "labels" / "b.nii.gz").unlink()
    with pytest.raises(DataError, match=r"b\.nii\.gz: image without a mask"):
        VolumeDataset(root)
    root = _folder(tmp_path / "ds2", rng, ["a"], (3, 4, 4))
    write_mask(
        root / "labels" / "a.nii.gz", np.full((3, 4, 4), 2), affine_for((3, 4, 4), (3.0, 1.5, 1.5))
    )
    with pytest.raises(DataError, match=r"a\.nii\.gz: label values \[2\] outside"):
        VolumeDataset(root)[0]
    with pytest.raises(DataError, match="label values"):  # a cache is never built from bad data
        VolumeDataset(root, cache_dir=tmp_path / "cache")
    assert not any(p.name == "meta.json" for p in (tmp_path / "cache").rglob("*"))
    write_mask(root / "labels" / "a.nii.gz", np.zeros((3, 4, 4), int), np.eye(4))
    with pytest.raises(DataError, match=r"images/a\.nii\.gz and mask .*labels/a\.nii\.gz"):
        VolumeDataset(root)[0]
    (tmp_path / "bad.json").write_text(
        '{"labels": {"0": "bg", "1": "x"}, "training": [{"image": "a.nii.gz"}]}'
    )
    with pytest.raises(DataError, match="image without a mask"):
        VolumeDataset(tmp_path / "bad.json")
    with pytest.raises(DataError, match="neither a dataset.json"):
        VolumeDataset(tmp_path / "nowhere")


def test_cli_make_demo_data_segmentation(tmp_path, capsys):
    pytest.importorskip("pydicom")
    from engine.cli import main

    rc = main(
        [
            "make-demo-data",
            "--task",
            "segmentation",
            "--patients",
            "2",
            "--size",
            "32",
            str(tmp_path / "d"),
        ]
    )
    assert rc == 0 and "dataset.json" in capsys.readouterr().out
    ds = VolumeDataset(tmp_path / "d")
    assert len(ds) == 2 and ds[0][0].shape == (1, 16, 32, 32)
    assert len(list((tmp_path / "d" / "dicom" / "case_001").iterdir())) == 16
