"""De-identification by DICOM PS3.15 Table E.1-1 (RELIABILITY P1-P6): zero residual findings,
no sentinel anywhere in the output, consistent keyed UIDs, markers, burned-in gate, dates."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage

from engine.data import deidentify as deid
from engine.data.deid import profile as deid_profile
from engine.data.deid.gate import missing_sop_uids
from engine.data.deidentify import (
    SHIFT_DATES,
    anonymize,
    deidentify_dataset,
    find_residual_phi,
    is_valid_uid,
    load_profile,
    parse_profile,
    remap_uid,
)
from engine.errors import DataError, MedgradError
from tests.privacy.phi import (
    UID_ROOT,
    corpus_files,
    phi_max_dataset,
    read_quietly,
    study_set,
    table_rows,
)

KEY = "test-key"


def _outputs(report) -> list[Path]:
    return sorted(report.written)


def _write_phi_max(folder: Path):
    ds, sentinels = phi_max_dataset()
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(folder / "phi.dcm", enforce_file_format=True)
    return pydicom.dcmread(folder / "phi.dcm"), sentinels


# ------------------------------------------------------------------------------- the table


def test_profile_is_the_whole_table():
    """621 rows with RELIABILITY's action counts; wildcard rows become patterns, not omissions."""
    profile = load_profile()
    rules = [*profile.exact.values(), *(r for _, _, r in profile.patterns), profile.private]
    assert len(rules) == len(table_rows()) == 621
    counts = Counter(r.action for r in rules)
    assert counts == {
        "X": 384,
        "D": 92,
        "U": 54,
        "Z": 42,
        "X/D": 22,
        "X/Z": 11,
        "X/Z/D": 8,
        "Z/D": 6,
        "X/Z/U*": 2,
    }
    assert profile.rule_for(0x00100010).action == "Z"  # Patient's Name
    assert profile.rule_for(0x0020000D).action == "U"  # Study Instance UID
    assert profile.rule_for(0x00080080).action == "X/Z/D"  # Institution Name
    assert profile.rule_for(0x00081140).action == "X/Z/U*"  # Referenced Image Sequence
    assert profile.rule_for(0x60023000).action == "X"  # Overlay Data, group 6002
    assert profile.rule_for(0x501E0010).action == "X"  # Curve data, any element
    assert profile.rule_for(0x00091001) is profile.private
    assert profile.rule_for(0x00280010) is None  # Rows: kept


def test_profile_rejects_a_row_it_cannot_read():
    rows = table_rows()
    bad = [*rows[:5], {**rows[5], "basicProfile": "Q"}]
    with pytest.raises(DataError, match="unknown action"):
        parse_profile(bad)
    with pytest.raises(DataError, match="cannot parse tag"):
        parse_profile([*rows[:5], {**rows[5], "tag": "(00I0,0010)"}])


def test_shipped_table_hash_is_checked(monkeypatch):
    monkeypatch.setattr(deid_profile, "TABLE_SHA256", "0" * 64)
    deid_profile.load_profile.cache_clear()
    try:
        with pytest.raises(DataError, match="SHA-256"):
            deid_profile.load_profile()
    finally:
        monkeypatch.undo()
        deid_profile.load_profile.cache_clear()


# ------------------------------------------------------------------------------- P1, P2


@pytest.mark.parametrize("shift_dates", [False, True], ids=["replace-dates", "shift-dates"])
def test_phi_max_has_zero_findings_and_no_sentinel(tmp_path, shift_dates):
    """Every concrete table tag filled (3 nesting levels, private, overlay, curve, padding, file
    meta, preamble): after anonymize the checker finds nothing and no sentinel is in any output
    byte, file name or the log."""
    original, sentinels = _write_phi_max(tmp_path / "in")
    # The checker is not blind: the untouched file is full of findings.
    assert len(find_residual_phi(original, original)) > 600
    report = anonymize(tmp_path / "in", tmp_path / "out", key=KEY, shift_dates=shift_dates)
    assert len(report.written) == 1 and not report.refused
    out = pydicom.dcmread(report.written[0])
    options = [SHIFT_DATES] if shift_dates else []
    assert find_residual_phi(out, original, options=options) == []
    # Shifted dates may land on another sentinel date and times of day are kept by the option.
    texts = sentinels.texts - sentinels.temporal if shift_dates else sentinels.texts
    haystack = b"".join(p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file())
    names = " ".join(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*"))
    leaked = [t for t in texts if t.encode() in haystack or t in names]
    assert leaked == []
    assert UID_ROOT.encode() not in haystack


def test_checker_catches_each_kind_of_residue(tmp_path):
    """Every rule of the checker can fail: put one piece of PHI back at a time."""
    original, _ = _write_phi_max(tmp_path / "in")
    report = anonymize(tmp_path / "in", tmp_path / "out", key=KEY)
    clean = pydicom.dcmread(report.written[0])
    assert find_residual_phi(clean, original) == []

    def problems(edit):
        ds = copy.deepcopy(clean)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an invalid UID is the point of one edit
            edit(ds)
        return {(f.path, f.problem) for f in find_residual_phi(ds, original)}

    assert ("(0010,1000)", "present") in problems(lambda d: setattr(d, "OtherPatientIDs", "x"))
    assert ("(0008,0050)", "unchanged") in problems(
        lambda d: setattr(d, "AccessionNumber", original.AccessionNumber)
    )
    assert ("(0020,000D)", "original UID kept") in problems(
        lambda d: setattr(d, "StudyInstanceUID", original.StudyInstanceUID)
    )
    assert ("(0020,000E)", "not a valid UID") in problems(
        lambda d: setattr(d, "SeriesInstanceUID", "1.02.3")
    )
    nested = "(0008,1115)[0](0008,1115)[0](0010,1040)"
    assert (nested, "present") in problems(
        lambda d: (
            d.ReferencedSeriesSequence[0]
            .ReferencedSeriesSequence[0]
            .add_new(0x00101040, "LO", "street")
        )
    )
    assert ("(0009,0010)", "present") in problems(
        lambda d: d.private_block(0x0009, "X", create=True).add_new(1, "LO", "y")
    )
    assert ("(6000,3000)", "present") in problems(lambda d: d.add_new(0x60003000, "OW", b"\0\0"))
    assert ("(0012,0062)", "not YES") in problems(lambda d: delattr(d, "PatientIdentityRemoved"))


def test_pydicom_corpus_has_zero_findings():
    """Every readable file of pydicom's test data and pydicom-data (when installed): de-identified
    in memory, written and read back, the checker finds nothing against the original."""
    from io import BytesIO

    readable, failures = 0, []
    for path in corpus_files():
        try:
            original = read_quietly(path)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue  # not a readable DICOM file (text, JSON, no-meta, ...)
        readable += 1
        ds = copy.deepcopy(original)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the corpus holds deliberately invalid values
            deidentify_dataset(ds, key=KEY.encode())
            buffer = BytesIO()
            ds.save_as(buffer, enforce_file_format=False)
            back = pydicom.dcmread(BytesIO(buffer.getvalue()), force=True)
            found = find_residual_phi(back, original)
        if found:
            failures.append((path.name, found[:3]))
    assert readable >= 70, f"only {readable} readable corpus files: is pydicom's test data there?"
    assert failures == []


def test_pydicom_data_package_is_covered():
    """The pydicom-data corpus (dev extra) is part of the check above when it is installed."""
    pytest.importorskip("data_store")
    names = {p.name for p in corpus_files()}
    assert {"emri_small.dcm", "US1_UNCR.dcm", "bad_sequence.dcm"} <= names


def test_corpus_folder_run_writes_only_clean_files(tmp_path):
    """anonymize() over pydicom's whole test folder: each written file passes the structural
    checker, nothing is written for refused files, and the counts add up."""
    src = Path(pydicom.__file__).parent / "data" / "test_files"
    report = anonymize(src, tmp_path / "out", key=KEY, allow_burned_in=True)
    assert len(report.written) >= 100
    for path in report.written:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
            assert find_residual_phi(ds) == [], path.name
    written = [p for p in (tmp_path / "out").rglob("*.dcm")]
    assert len(written) == len(report.written)
    # The only refusals are files without SOP UIDs, each told so (not a bare exception name).
    refused = {r.path.name: r for r in report.refused}
    assert {"empty_charset_LEI.dcm", "meta_missing_tsyntax.dcm", "nested_priv_SQ.dcm"} <= set(
        refused
    )
    for r in report.refused:
        assert r.code == "missing-sop-uid" and "SOP Instance UID (0008,0018)" in r.reason
        assert missing_sop_uids(read_quietly(r.path))
    assert not list((tmp_path / "out").rglob("*.tmp"))


# ------------------------------------------------------------------------------- P3, pixels


def test_uids_consistent_across_study(tmp_path):
    originals = study_set(tmp_path / "in", series=2, instances=3)
    report = anonymize(tmp_path / "in", tmp_path / "out", key=KEY)
    outs = [pydicom.dcmread(p) for p in _outputs(report)]
    assert len(outs) == 6
    assert len({d.StudyInstanceUID for d in outs}) == 1
    by_series = Counter(d.SeriesInstanceUID for d in outs)
    assert sorted(by_series.values()) == [3, 3]
    assert len({d.SOPInstanceUID for d in outs}) == 6
    sop_uids = {d.SOPInstanceUID for d in outs}
    old_uids = {
        u
        for d in originals.values()
        for u in (d.StudyInstanceUID, d.SeriesInstanceUID, d.SOPInstanceUID, d.FrameOfReferenceUID)
    }
    for d in outs:
        assert d.file_meta.MediaStorageSOPInstanceUID == d.SOPInstanceUID
        assert d.SOPClassUID == CTImageStorage == d.file_meta.MediaStorageSOPClassUID
        for uid in (
            d.StudyInstanceUID,
            d.SeriesInstanceUID,
            d.SOPInstanceUID,
            d.FrameOfReferenceUID,
        ):
            assert is_valid_uid(uid) and uid.startswith("2.25.") and uid not in old_uids
        if "ReferencedImageSequence" in d:
            ref = d.ReferencedImageSequence[0]
            assert ref.ReferencedSOPInstanceUID in sop_uids  # points at the remapped target
            assert ref.ReferencedSOPClassUID == CTImageStorage
    frames = {d.SeriesInstanceUID: d.FrameOfReferenceUID for d in outs}
    assert all(d.FrameOfReferenceUID == frames[d.SeriesInstanceUID] for d in outs)


def test_pixel_data_unchanged(tmp_path):
    originals = study_set(tmp_path / "in", series=1, instances=3)
    report = anonymize(tmp_path / "in", tmp_path / "out", key=KEY)
    by_uid = {remap_uid(d.SOPInstanceUID, KEY.encode()): d for d in originals.values()}
    for path in report.written:
        out = pydicom.dcmread(path)
        assert out.PixelData == by_uid[out.SOPInstanceUID].PixelData
        assert (
            out.file_meta.TransferSyntaxUID
            == by_uid[out.SOPInstanceUID].file_meta.TransferSyntaxUID
        )


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_same_key_same_output_in_another_process(tmp_path):
    study_set(tmp_path / "in", patients=2, series=1, instances=2)
    anonymize(tmp_path / "in", tmp_path / "a", key=KEY, shift_dates=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "anonymize",
            str(tmp_path / "in"),
            str(tmp_path / "b"),
            "--key",
            KEY,
            "--shift-dates",
        ],
        check=True,
        capture_output=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")
    anonymize(tmp_path / "in", tmp_path / "c", key="another key", shift_dates=True)
    uids_a = {p.stem for p in (tmp_path / "a").rglob("*.dcm")}
    uids_c = {p.stem for p in (tmp_path / "c").rglob("*.dcm")}
    assert len(uids_a) == 4 and not uids_a & uids_c


def test_never_calls_random_generate_uid(tmp_path, monkeypatch):
    """pydicom.generate_uid(prefix=None) is random: the keyed path must never reach it."""

    def refuse(*args, **kwargs):
        raise AssertionError("generate_uid called")

    monkeypatch.setattr(pydicom.uid, "generate_uid", refuse)
    study_set(tmp_path / "in", series=1, instances=1)
    assert len(anonymize(tmp_path / "in", tmp_path / "out", key=KEY).written) == 1


# ------------------------------------------------------------------------------- P4, P5, P6


@pytest.mark.parametrize("shift_dates", [False, True])
def test_markers(tmp_path, shift_dates):
    study_set(tmp_path / "in", series=1, instances=1)
    report = anonymize(tmp_path / "in", tmp_path / "out", key=KEY, shift_dates=shift_dates)
    ds = pydicom.dcmread(report.written[0])
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.DeidentificationMethod
    codes = [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]
    assert codes == (["113100", "113107"] if shift_dates else ["113100"])
    assert all(
        item.CodingSchemeDesignator == "DCM" for item in ds.DeidentificationMethodCodeSequence
    )
    assert ds.LongitudinalTemporalInformationModified == ("MODIFIED" if shift_dates else "REMOVED")


def _single(folder: Path, edit) -> None:
    ds, _ = phi_max_dataset(seed=3)
    edit(ds)
    folder.mkdir()
    ds.save_as(folder / "one.dcm", enforce_file_format=True)


@pytest.mark.parametrize(
    "edit,refused",
    [
        (lambda d: setattr(d, "BurnedInAnnotation", "YES"), True),
        (lambda d: setattr(d, "BurnedInAnnotation", "NO"), False),
        (lambda d: delattr(d, "BurnedInAnnotation"), False),  # CT: absent means no
        (lambda d: (delattr(d, "BurnedInAnnotation"), setattr(d, "Modality", "US")), True),
        (
            lambda d: (
                delattr(d, "BurnedInAnnotation"),
                setattr(d, "SOPClassUID", "1.2.840.10008.5.1.4.1.1.7"),
            ),
            True,
        ),
    ],
    ids=["yes", "no", "absent-ct", "absent-us", "absent-secondary-capture"],
)
def test_burned_in_gate(tmp_path, edit, refused):
    _single(tmp_path / "in", edit)
    report = anonymize(tmp_path / "in", tmp_path / "out", key=KEY)
    assert (len(report.refused), len(report.written)) == ((1, 0) if refused else (0, 1))
    log = json.loads(report.log_path.read_text())
    assert log["files"]["written"] == len(report.written)
    if refused:
        assert "burned-in" in report.refused[0][1]
        assert list((tmp_path / "out").rglob("*.dcm")) == []
        opted = anonymize(tmp_path / "in", tmp_path / "out2", key=KEY, allow_burned_in=True)
        assert len(opted.written) == 1


def test_dates_shift_per_patient_keeps_intervals(tmp_path):
    originals = study_set(tmp_path / "in", patients=2, series=1, instances=3)
    report = anonymize(tmp_path / "in", tmp_path / "out", key=KEY, shift_dates=True)
    import datetime as dt

    def day(text):
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))

    by_uid = {remap_uid(d.SOPInstanceUID, KEY.encode()): d for d in originals.values()}
    offsets = {}
    for path in report.written:
        out = pydicom.dcmread(path)
        orig = by_uid[out.SOPInstanceUID]
        shift = (day(out.ContentDate) - day(orig.ContentDate)).days
        assert shift != 0 and out.ContentDate != orig.ContentDate
        assert (day(out.StudyDate) - day(orig.StudyDate)).days == shift  # intervals kept
        assert (day(out.AcquisitionDateTime) - day(orig.AcquisitionDateTime)).days == shift
        assert out.AcquisitionDateTime[8:] == orig.AcquisitionDateTime[8:]
        assert out.PatientBirthDate == ""  # Z in the Basic Profile, not retained by the option
        offsets.setdefault(out.PatientID, set()).add(shift)
    assert len(offsets) == 2 and all(len(s) == 1 for s in offsets.values())
    assert len({next(iter(s)) for s in offsets.values()}) == 2  # differs between patients


def test_dates_replaced_by_default(tmp_path):
    study_set(tmp_path / "in", series=1, instances=1)
    ds = pydicom.dcmread(anonymize(tmp_path / "in", tmp_path / "out", key=KEY).written[0])
    assert ds.StudyDate == "" and ds.StudyTime == ""  # Z
    assert ds.ContentDate == "19000101"  # Z/D -> D: a dummy keeps a Type 1 date valid
    assert ds.PatientID.startswith("ANON-") and ds.PatientName == ds.PatientID


# ------------------------------------------------------------------------------- folders, log


def test_refuses_to_write_into_the_input(tmp_path):
    study_set(tmp_path / "in", series=1, instances=1)
    for out in (tmp_path / "in", tmp_path / "in" / "out", tmp_path):
        with pytest.raises(DataError, match="output folder must not"):
            anonymize(tmp_path / "in", out, key=KEY)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(DataError, match="new or empty"):
        anonymize(tmp_path / "in", tmp_path / "full", key=KEY)
    single = next((tmp_path / "in").rglob("*.dcm"))
    with pytest.raises(DataError):
        anonymize(single, single.parent / "out", key=KEY)
    assert sorted(p.name for p in (tmp_path / "in").rglob("*")) == sorted(
        p.name for p in (tmp_path / "in").rglob("*") if p.suffix == ".dcm" or p.is_dir()
    )


def test_log_counts_actions_without_values(tmp_path):
    original, sentinels = _write_phi_max(tmp_path / "in")
    (tmp_path / "in" / "notes.txt").write_text("not dicom")
    report = anonymize(tmp_path / "in", tmp_path / "out", key=KEY)
    log = json.loads(report.log_path.read_text())
    assert log["files"] == {"written": 1, "refused": {}, "skipped": {"not DICOM": 1}}
    actions = {(a["tag"], a["action"]): a["count"] for a in log["actions"]}
    assert actions[("(0010,0010)", "Z (pseudonym)")] == 1
    assert actions[("(0008,0080)", "D")] >= 1
    assert actions[("(0020,000D)", "U")] == 1
    assert actions[("(GGGG,EEEE) odd GGGG", "X")] >= 3
    text = report.log_path.read_text()
    assert [t for t in sentinels.texts if t in text] == []
    assert str(tmp_path / "in") not in text


def _deep(levels: int):
    ds, _ = phi_max_dataset(seed=5)
    item = ds
    for _ in range(levels):
        child = Dataset()
        item.ReferencedSeriesSequence = Sequence([child])
        item = child
    return ds


def test_nesting_depth_is_bounded(tmp_path):
    deidentify_dataset(_deep(deid.MAX_DEPTH - 2), key=b"k")
    with pytest.raises(DataError, match="nested deeper"):
        deidentify_dataset(_deep(deid.MAX_DEPTH + 5), key=b"k")
    ds = _deep(deid.MAX_DEPTH + 5)
    folder = tmp_path / "in"
    folder.mkdir()
    ds.save_as(folder / "deep.dcm", enforce_file_format=True)
    report = anonymize(folder, tmp_path / "out", key=KEY)
    assert report.written == [] and "nested deeper" in report.refused[0][1]


def test_remap_uid_is_a_valid_keyed_uid():
    a = remap_uid("1.2.3.4", b"k1")
    assert a == remap_uid("1.2.3.4\0", b"k1")  # padding does not change identity
    assert a != remap_uid("1.2.3.4", b"k2") and a != remap_uid("1.2.3.5", b"k1")
    assert is_valid_uid(a) and a.startswith("2.25.") and len(a) <= 64
    assert not is_valid_uid("1.02.3") and not is_valid_uid("1..2") and not is_valid_uid("")


def test_missing_input_is_a_project_error(tmp_path):
    with pytest.raises(MedgradError, match="no such"):
        anonymize(tmp_path / "nope", tmp_path / "out", key=KEY)


def test_synthetic_study_set_has_zero_findings(tmp_path):
    """The project's own demo data (fake names, MRNs, institutions, a private block)."""
    synthetic = pytest.importorskip("engine.data.synthetic_dicom")
    src = synthetic.make_demo_data(tmp_path / "in", n_patients=3, slices_per_patient=5, size=32)
    originals = {}
    for path in sorted(src.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        originals[remap_uid(ds.SOPInstanceUID, KEY.encode())] = ds
    report = anonymize(src, tmp_path / "out", key=KEY)
    assert len(report.written) == len(originals) == 15 and not report.refused
    assert report.skipped == {}  # labels.csv is carried (tests/privacy/test_labels.py)
    assert report.labels.rows_out == 15
    secrets = (
        {str(d.PatientName) for d in originals.values()}
        | {str(d.PatientID) for d in originals.values()}
        | {str(d.InstitutionName) for d in originals.values()}
    )
    haystack = b"".join(p.read_bytes() for p in report.written)
    assert [s for s in secrets if s.encode() in haystack] == []
    for path in report.written:
        out = pydicom.dcmread(path)
        original = originals[out.SOPInstanceUID]
        assert find_residual_phi(out, original) == []
        assert out.PixelData == original.PixelData
    assert len({pydicom.dcmread(p).PatientID for p in report.written}) == 3  # splits still work
