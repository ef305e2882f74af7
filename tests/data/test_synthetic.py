"""engine.data.synthetic_dicom: valid CT headers, fake identities, labels that round-trip."""

from __future__ import annotations

import csv
import hashlib

import numpy as np
import pytest

from engine.data.dicom import read_image
from engine.data.synthetic_dicom import make_demo_data

pydicom = pytest.importorskip("pydicom")


def _rows(folder):
    with open(folder / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_demo_data_headers_and_identities(demo_dir):
    rows = _rows(demo_dir)
    assert len(rows) == 36 and set(rows[0]) == {"path", "label", "patient_id"}
    ds = pydicom.dcmread(demo_dir / rows[0]["path"])
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.Modality == "CT" and ds.RescaleType == "HU" and ds.Rows == 32
    for keyword in [
        "PatientName",
        "PatientBirthDate",
        "InstitutionName",
        "AccessionNumber",
        "ReferringPhysicianName",
        "StudyDate",
    ]:
        assert str(ds.get(keyword, "")), keyword  # fake identity present, for de-identification
    assert ds.PatientID == rows[0]["patient_id"]
    photometric = {
        pydicom.dcmread(demo_dir / r["path"], stop_before_pixels=True).PhotometricInterpretation
        for r in rows[::6]
    }
    assert photometric == {"MONOCHROME1", "MONOCHROME2"}
    assert len({r["patient_id"] for r in rows}) == 6


def test_demo_data_labels_round_trip(demo_dir):
    """Read back through the DICOM path: a labelled slice holds a nodule brighter than lung
    tissue could be, inside the lungs; the HU range and air value are physical."""
    from engine.data.synthetic_dicom import FOV_MM

    rows = _rows(demo_dir)
    labels = np.array([int(r["label"]) for r in rows])
    assert 0.2 < labels.mean() < 0.9  # few, thin-sliced patients: nodules cover many slices
    for r in rows:
        hu, meta = read_image(demo_dir / r["path"])
        assert meta["pixel_spacing"] == pytest.approx([FOV_MM / 32] * 2)
        assert -1100 < np.median(hu[0, :3, :3]) < -900  # air in the corner, either polarity
    # every series reads back as MONOCHROME2-equivalent HU (MONOCHROME1 stored as the mirror)
    for r in rows:
        lung, _ = read_image(demo_dir / r["path"], window="lung")
        assert lung.min() >= 0 and lung.max() <= 1


def test_demo_round_trip_pixels_and_labels(tmp_path, monkeypatch):
    """Record each slice the generator renders (HU and lesion flag), then read every file back
    through the DICOM path: HU equal to the rendered values up to the storage quantum (1 HU, or
    0.5 HU with slope 0.5) for all three encodings and MONOCHROME1, and labels.csv's label is the
    rendered slice's lesion flag."""
    from engine.data import synthetic_dicom

    rendered = []
    original = synthetic_dicom._slice_hu

    def recording(*args, **kwargs):
        hu, lesion = original(*args, **kwargs)
        rendered.append((hu.copy(), lesion))
        return hu, lesion

    monkeypatch.setattr(synthetic_dicom, "_slice_hu", recording)
    folder = make_demo_data(tmp_path / "rt", n_patients=4, slices_per_patient=5, size=48, seed=2)
    rows = _rows(folder)
    assert len(rows) == len(rendered) == 20
    for r, (hu, lesion) in zip(rows, rendered, strict=True):  # labels.csv is in render order
        read, meta = read_image(folder / r["path"])
        # unsigned encodings (intercept -1024) cannot store values below -1024 HU
        intercept = meta["rescale"]["intercept"]
        expected = np.maximum(hu, intercept) if intercept == -1024 else hu
        np.testing.assert_allclose(read[0], expected, atol=0.5 + 1e-6, err_msg=r["path"])
        assert int(r["label"]) == int(lesion)
    assert any(lesion for _, lesion in rendered) and not all(lesion for _, lesion in rendered)


def test_demo_data_is_deterministic(tmp_path):
    def digest(folder):
        h = hashlib.sha256()
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                h.update(p.relative_to(folder).as_posix().encode() + p.read_bytes())
        return h.hexdigest()

    a = make_demo_data(tmp_path / "a", n_patients=2, slices_per_patient=5, size=32, seed=7)
    b = make_demo_data(tmp_path / "b", n_patients=2, slices_per_patient=5, size=32, seed=7)
    c = make_demo_data(tmp_path / "c", n_patients=2, slices_per_patient=5, size=32, seed=8)
    assert digest(a) == digest(b) != digest(c)


def test_make_demo_data_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="size"):
        make_demo_data(tmp_path, size=8)


def test_cli_make_demo_data(tmp_path, capsys):
    from engine.cli import main

    assert (
        main(
            [
                "make-demo-data",
                str(tmp_path / "d"),
                "--patients",
                "1",
                "--slices",
                "5",
                "--size",
                "32",
            ]
        )
        == 0
    )
    assert len(_rows(tmp_path / "d")) == 5 and "wrote 5 DICOM files" in capsys.readouterr().out
