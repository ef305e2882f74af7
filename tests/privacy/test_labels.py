"""The privacy workflow end to end (issue 17): `medgrad anonymize` carries labels.csv and class
folders into OUT with pseudonymized patient ids and no input value, training on OUT gives the
same numbers as on IN, and every refused file has a reason a user can act on."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from engine.cli import main
from engine.data.datasets import load_dataset
from engine.data.deid.gate import REFUSALS
from engine.data.deid.labels import find_residual_values
from engine.data.deidentify import LOG_NAME, anonymize, pseudonym, remap_uid
from engine.data.splits import holdout_split, stratified_group_kfold
from engine.data.synthetic_dicom import make_demo_data
from engine.errors import DataError
from tests.privacy.phi import phi_max_dataset, study_set

KEY = "label-test-key"
DEMO = {"n_patients": 6, "slices_per_patient": 8, "size": 32, "seed": 0}
N_DEMO = DEMO["n_patients"] * DEMO["slices_per_patient"]
TRAIN = [
    *["--input-size", "16", "--epochs", "2", "--batch-size", "8", "--val-split", "0.34"],
    *["--kernels", "numpy", "--seed", "3", "--quiet"],
]


def _rows(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _secrets(folder) -> set[str]:
    """Identity in the demo input: names, ids, accession numbers, institutions, UIDs, paths."""
    out = set()
    for path in sorted(folder.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        out |= {str(ds.PatientName), ds.PatientID, ds.AccessionNumber, ds.InstitutionName}
        out |= {ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID}
        rel = path.relative_to(folder)
        out |= {rel.as_posix(), rel.parent.name, rel.stem}
    return out


def _leaks(secrets: set[str], folder, *extra: str) -> list[str]:
    haystack = b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())
    names = " ".join(p.relative_to(folder).as_posix() for p in folder.rglob("*"))
    text = names + " ".join(extra)
    return sorted(s for s in secrets if s.encode() in haystack or s in text)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Demo data (6 patients x 6 slices, 32 px) and its anonymized copy made by the command."""
    root = tmp_path_factory.mktemp("demo")
    src = make_demo_data(root / "in", **DEMO)
    out, report = root / "out", root / "report.json"
    code = main(["anonymize", str(src), str(out), "--key", KEY, "--report", str(report)])
    return src, out, report, code


# ------------------------------------------------------------------------------- labels.csv


def test_labels_follow_their_files_with_pseudonyms(demo):
    src, out, _, code = demo
    assert code == 0
    rows_in, rows_out = _rows(src / "labels.csv"), _rows(out / "labels.csv")
    assert len(rows_out) == len(rows_in) == len(list(out.rglob("*.dcm"))) == N_DEMO
    assert list(rows_out[0]) == ["path", "label", "patient_id"]
    for before, after in zip(rows_in, rows_out, strict=True):
        assert after["label"] == before["label"]  # the same strings, the same order
        original = pydicom.dcmread(src / before["path"])
        written = pydicom.dcmread(out / after["path"])
        assert written.SOPInstanceUID == remap_uid(original.SOPInstanceUID, KEY.encode())
        # the label file's pseudonym is the one the file got: grouping by either agrees
        assert (
            after["patient_id"]
            == written.PatientID
            == pseudonym(before["patient_id"], KEY.encode())
        )
        assert written.PixelData == original.PixelData
    assert len({r["patient_id"] for r in rows_out}) == DEMO["n_patients"]


def test_no_input_value_in_any_output_log_or_report(demo, capsys):
    src, out, report, _ = demo
    secrets = _secrets(src)
    assert len(secrets) > 6 * DEMO["slices_per_patient"]  # the check has something to find
    assert _leaks(secrets, out, report.read_text()) == []
    log = json.loads((out / LOG_NAME).read_text())
    assert log["labels"] == {
        "kind": "labels.csv",
        "rows_in": N_DEMO,
        "rows_out": N_DEMO,
        "dropped_rows": {},
        "dropped_columns": [],
        "written": True,
        "problems": [],
    }
    # The checker is not blind: the input label file is full of input values.
    assert len(find_residual_values(_rows(src / "labels.csv")[:3], secrets)) == 6


def test_train_on_anonymized_copy_gives_the_same_numbers(demo, tmp_path, capsys):
    """`medgrad train` on IN and on OUT with one seed: the same patient-grouped split and equal
    losses and held-out metrics, compared as numbers."""
    src, out, _, _ = demo
    a, b = load_dataset(src, input_size=16), load_dataset(out, input_size=16)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert [pseudonym(g, KEY.encode()) for g in a.groups] == list(b.groups)
    assert holdout_split(a.labels, a.groups, 0.34, 3)[1].tolist() == (
        holdout_split(b.labels, b.groups, 0.34, 3)[1].tolist()
    )
    runs = {}
    for name, data in (("in", src), ("out", out)):
        assert main(["train", "--data", str(data), *TRAIN, "--out", str(tmp_path / name)]) == 0
        runs[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    first, second = runs["in"], runs["out"]
    assert (first["n_train"], first["n_val"]) == (second["n_train"], second["n_val"])
    assert first["n_train"] + first["n_val"] == N_DEMO and first["n_val"] > 0
    losses = first["history"]["loss"] + first["history"]["val_loss"]
    assert len(losses) == 4 and all(math.isfinite(v) and v > 0 for v in losses)
    assert first["history"] == second["history"]
    assert first["held_out"] == second["held_out"]
    assert 0.0 <= first["held_out"]["accuracy"] <= 1.0


def test_splits_do_not_depend_on_group_names():
    """Renaming every patient (a bijection) leaves hold-out and k-fold splits unchanged."""
    rng = np.random.default_rng(0)
    groups = rng.choice([f"MRN{i:07d}" for i in range(12)], 80)
    labels = rng.integers(0, 2, 80)
    renamed = np.array([pseudonym(g, b"k") for g in groups])
    for seed in range(4):
        a, b = holdout_split(labels, groups, 0.25, seed), holdout_split(labels, renamed, 0.25, seed)
        assert all((x == y).all() for x, y in zip(a, b, strict=True))
        folds_a = stratified_group_kfold(labels, groups, 3, seed)
        folds_b = stratified_group_kfold(labels, renamed, 3, seed)
        assert all((x[1] == y[1]).all() for x, y in zip(folds_a, folds_b, strict=True))


def test_sop_uid_keyed_labels_and_unknown_columns(tmp_path):
    """Rows keyed by SOP Instance UID get the remapped UID and a path; a 'notes' column (names)
    is dropped and named in the log; the dataset reads back in the input's order."""
    src = make_demo_data(tmp_path / "in", n_patients=2, slices_per_patient=5, size=32)
    rows = _rows(src / "labels.csv")
    with open(src / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["SOP_Instance_UID", "label", "patient_id", "notes"])
        for r in rows:
            ds = pydicom.dcmread(src / r["path"])
            writer.writerow([ds.SOPInstanceUID, r["label"], r["patient_id"], str(ds.PatientName)])
    report = anonymize(src, tmp_path / "out", key=KEY)
    out_rows = _rows(tmp_path / "out" / "labels.csv")
    assert list(out_rows[0]) == ["path", "label", "patient_id", "sop_instance_uid"]
    assert len(out_rows) == 10
    for r in out_rows:
        ds = pydicom.dcmread(tmp_path / "out" / r["path"])
        assert r["sop_instance_uid"] == ds.SOPInstanceUID and r["patient_id"] == ds.PatientID
    assert report.labels.dropped_columns == ["notes"]
    assert json.loads(report.log_path.read_text())["labels"]["dropped_columns"] == ["notes"]
    assert _leaks(_secrets(src), tmp_path / "out") == []
    a, b = load_dataset(src, input_size=8), load_dataset(tmp_path / "out", input_size=8)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_rows_of_refused_files_are_dropped_and_counted(tmp_path):
    src = make_demo_data(tmp_path / "in", n_patients=2, slices_per_patient=5, size=32)
    victim = src / _rows(src / "labels.csv")[0]["path"]
    ds = pydicom.dcmread(victim)
    ds.BurnedInAnnotation = "YES"
    ds.save_as(victim)
    report = anonymize(src, tmp_path / "out", key=KEY)
    assert [r.code for r in report.refused] == ["burned-in-risk"]
    assert report.labels.rows_out == 9
    assert report.labels.dropped_rows == {"file refused (burned-in-risk)": 1}
    assert len(_rows(tmp_path / "out" / "labels.csv")) == 9


def test_a_label_that_is_an_identity_stops_the_label_file(tmp_path, capsys):
    """A label column that holds patient ids: labels.csv is not written, the problems name lines
    and columns only, and the command exits 1."""
    src = make_demo_data(tmp_path / "in", n_patients=2, slices_per_patient=5, size=32)
    rows = _rows(src / "labels.csv")
    with open(src / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows([r["path"], r["patient_id"]] for r in rows)
    assert main(["anonymize", str(src), str(tmp_path / "out"), "--key", KEY]) == 1
    err = capsys.readouterr().err
    assert "labels NOT carried" in err and "line 2, column label: equals an input" in err
    assert not (tmp_path / "out" / "labels.csv").exists()
    assert _leaks({r["patient_id"] for r in rows}, tmp_path / "out", err) == []


@pytest.mark.parametrize(
    "header,lines,match",
    [
        (["path", "label"], [["patient_00/IM00000.dcm", "1"]] * 2, "name the same file"),
        (["path", "label"], [["../elsewhere.dcm", "1"]], "outside the folder"),
        (["path", "class"], [["patient_00/IM00000.dcm", "1"]], "needs a 'label' column"),
        (["path", "label"], [["patient_00/IM00000.dcm", ""]], "line 2 has an empty"),
    ],
    ids=["duplicate", "outside", "no-label-column", "empty-label"],
)
def test_a_bad_label_file_stops_before_anything_is_written(tmp_path, header, lines, match):
    src = make_demo_data(tmp_path / "in", n_patients=1, slices_per_patient=5, size=32)
    with open(src / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *lines])
    with pytest.raises(DataError, match=match):
        anonymize(src, tmp_path / "out", key=KEY)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------- class folders


def _class_layout(tmp_path):
    """IN/<class>/<patient name>/...: folder names below the class name identify patients."""
    demo = make_demo_data(tmp_path / "demo", n_patients=2, slices_per_patient=8, size=32)
    src = tmp_path / "in"
    for r in _rows(demo / "labels.csv"):
        name = str(pydicom.dcmread(demo / r["path"]).PatientName)
        target = src / ("nodule" if r["label"] == "1" else "clear") / name / r["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(demo / r["path"], target)
    return src


def test_class_folders_keep_class_names_only(tmp_path, capsys):
    src = _class_layout(tmp_path)
    assert main(["anonymize", str(src), str(tmp_path / "plain"), "--key", KEY]) == 0
    assert "use --class-folders" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "plain").iterdir() if p.is_dir())[0].startswith(
        "2.25."
    )
    out = tmp_path / "out"
    assert main(["anonymize", str(src), str(out), "--key", KEY, "--class-folders"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["clear", "nodule"]
    assert _leaks(_secrets(tmp_path / "demo") | _secrets(src), out) == []
    a, b = load_dataset(src, input_size=8), load_dataset(out, input_size=8)
    assert a.classes == b.classes == ["clear", "nodule"]
    assert np.bincount(a.labels).tolist() == np.bincount(b.labels).tolist()
    assert sorted(map(str, b.groups)) == sorted(pseudonym(str(g), KEY.encode()) for g in a.groups)


def test_class_folder_refusals(tmp_path):
    src = _class_layout(tmp_path)
    loose = next(src.rglob("*.dcm"))
    shutil.copy(loose, src / "loose.dcm")
    named = src / pydicom.dcmread(loose).PatientID
    named.mkdir()
    shutil.copy(loose, named / "x.dcm")
    report = anonymize(src, tmp_path / "out", key=KEY, class_folders=True)
    codes = sorted(r.code for r in report.refused)
    assert codes == ["class-name-identifies", "no-class-folder"]
    assert not (tmp_path / "out" / named.name).exists()
    with pytest.raises(DataError, match="--class-folders"):
        anonymize(
            make_demo_data(tmp_path / "d", n_patients=1, slices_per_patient=5, size=32),
            tmp_path / "out2",
            key=KEY,
            class_folders=True,
        )


# ------------------------------------------------------------------------------- refusals


def _without_sop_uids(path):
    """A bare data set in a file, as in pydicom's empty_charset_LEI.dcm: no SOP UIDs at all."""
    ds, _ = phi_max_dataset(seed=7)
    del ds.SOPClassUID, ds.SOPInstanceUID
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=False)


def _malformed_sequence(path, folder):
    """A sequence whose length field cuts its item short: pydicom fails when it parses it."""
    originals = study_set(folder, series=1, instances=2)
    source = next(p for p, d in originals.items() if "ReferencedImageSequence" in d)
    data = source.read_bytes()
    at = data.index(b"\x08\x00\x40\x11SQ")  # (0008,1140) Referenced Image Sequence
    path.write_bytes(data[: at + 8] + (5).to_bytes(4, "little") + data[at + 12 :])
    shutil.rmtree(folder)


def _deep(path):
    ds, _ = phi_max_dataset(seed=5)
    item = ds
    for _ in range(80):
        item.ReferencedSeriesSequence = [Dataset()]
        item = item.ReferencedSeriesSequence[0]
    ds.save_as(path, enforce_file_format=True)


def _burned_in(path):
    ds, _ = phi_max_dataset(seed=8)
    del ds.BurnedInAnnotation
    ds.Modality = "US"
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize(
    "code,make,detail",
    [
        ("missing-sop-uid", _without_sop_uids, "no SOP Class UID and no SOP Instance UID"),
        ("burned-in-risk", _burned_in, "BurnedInAnnotation absent for modality US"),
        ("invalid-structure", _deep, "sequences nested deeper than 64 levels"),
        ("unreadable", None, "malformed element, OSError"),
    ],
)
def test_each_refusal_names_its_reason_and_remedy(tmp_path, capsys, code, make, detail):
    src = tmp_path / "in"
    src.mkdir()
    study_set(src / "good", series=1, instances=1)
    bad = src / "SMITH^JOHN.dcm"  # a path that names a patient: never in OUT or the report
    if make is None:
        _malformed_sequence(bad, tmp_path / "tmp")
    else:
        make(bad)
    report_file = tmp_path / "report.json"
    argv = [
        "anonymize",
        str(src),
        str(tmp_path / "out"),
        "--key",
        KEY,
        "--report",
        str(report_file),
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err
    what, advice = REFUSALS[code]
    assert f"{what} ({detail}" in err and advice in err
    assert "refused 1 of 2 files: 1 " + code in err
    log = json.loads((tmp_path / "out" / LOG_NAME).read_text())
    assert log["files"]["refused"] == {code: 1} and log["files"]["written"] == 1
    assert log["refusal_reasons"][code]["what to do"] == advice
    report = json.loads(report_file.read_text())
    entry = report["refused"][code]
    assert entry["count"] == 1 and entry["files"][0]["detail"].startswith(detail.split(" (")[0])
    assert entry["files"][0]["file"] in err  # the token the terminal printed beside the path
    for text in (report_file.read_text(), (tmp_path / "out" / LOG_NAME).read_text()):
        assert "SMITH" not in text and str(src) not in text


def test_unwritable_output_is_refused_with_its_reason(tmp_path, monkeypatch):
    """A write that fails (here: the disk is full) refuses the file, says so, leaves no file."""

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    study_set(tmp_path / "in", series=1, instances=2)
    monkeypatch.setattr(pydicom.dataset.Dataset, "save_as", disk_full)
    report = anonymize(tmp_path / "in", tmp_path / "out", key=KEY)
    assert [(r.code, r.detail) for r in report.refused] == [("unwritable", "OSError")] * 2
    assert "check free space and permissions" in report.refused[0].reason
    assert list((tmp_path / "out").rglob("*.dcm")) == []


def test_report_path_inside_the_input_is_refused(tmp_path):
    study_set(tmp_path / "in", series=1, instances=1)
    with pytest.raises(DataError, match="inside the input folder"):
        anonymize(
            tmp_path / "in", tmp_path / "out", key=KEY, report_path=tmp_path / "in" / "r.json"
        )


def test_anonymize_command_documents_every_option():
    from engine.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices["anonymize"]
    assert "Never writes into IN" in sub.description
    for action in sub._actions:
        assert action.help, f"anonymize {action.option_strings or action.dest} has no help"
    assert {"--class-folders", "--report", "--allow-burned-in"} <= set(sub._option_string_actions)
