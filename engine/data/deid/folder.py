"""The folder anonymizer: every DICOM file under an input folder de-identified into a new output
folder named by remapped UIDs only, its labels carried along, every refusal given a reason a user
can act on, and a log (and optional report) of counts that holds no original value."""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from engine.data.deid.actions import complete_file_meta, deidentify_dataset
from engine.data.deid.gate import (
    MEDIA_STORAGE_DIRECTORY,
    REFUSALS,
    check_dataset,
    refusal_message,
)
from engine.data.deid.labels import (
    LabelsResult,
    WrittenFile,
    carry_labels,
    identity_values,
    read_label_table,
    text_check,
)
from engine.data.deid.profile import TABLE_SHA256, TABLE_SOURCE
from engine.data.deid.pseudonyms import is_valid_uid, keyed_digest
from engine.errors import DataError

LOG_NAME = "deidentification-log.json"
REPORT_FORMAT = "medgrad-anonymize-report"


class Refusal(NamedTuple):
    """A refused input file. `path` is for the caller only (never written to OUT or a report);
    `reason` says what is wrong and what to do; `code` is a key of gate.REFUSALS; `token` names
    the file in reports without its path (keyed); `detail` is drawn from a fixed vocabulary."""

    path: Path
    reason: str
    code: str
    token: str
    detail: str


@dataclass
class AnonymizeReport:
    """What a run did. `refused` holds input paths and reasons for the caller only; the log file
    written beside the outputs, and the optional report, hold counts, reasons and keyed file
    tokens, never input paths or original values. `labels` says what happened to the labels
    (None when IN had none)."""

    written: list[Path] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # reason -> count (not DICOM, DICOMDIR)
    counts: Counter = field(default_factory=Counter)  # (tag, name, action) -> count
    log_path: Path | None = None
    labels: LabelsResult | None = None
    report_path: Path | None = None

    def refused_by_code(self) -> Counter:
        return Counter(r.code for r in self.refused)


class _Skip(Exception):
    """Not an image to de-identify (not DICOM, a DICOMDIR): counted, not refused."""


class _Refuse(Exception):
    def __init__(self, code: str, detail: str = ""):
        super().__init__(code)
        self.code, self.detail = code, detail


def file_token(relative: str, key: bytes) -> str:
    """A file's name in reports: 'file-' + 16 hex digits of HMAC(key, relative posix path).
    Without the key it says nothing about the path; the command line prints path and token."""
    return "file-" + keyed_digest(key, "report", relative).hex()[:16]


def _check_folders(src: Path, dst: Path) -> None:
    """Refuse any OUT that could write into (or over) the input folder."""
    in_dir = src if src.is_dir() else src.parent
    if dst == in_dir or dst.is_relative_to(in_dir):
        raise DataError(f"{dst}: the output folder must not be the input folder or inside it")
    if in_dir.is_relative_to(dst):
        raise DataError(f"{dst}: the output folder must not contain the input folder")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise DataError(f"{dst}: the output must be a new or empty folder")


def _inputs(src: Path) -> list[Path]:
    """Regular files under src (or src itself), sorted; symlinks are not followed."""
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise DataError(f"{src}: no such file or folder")
    return sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink())


def _out_component(value, fallback: str) -> str:
    """A path component from a remapped UID (digits and dots only), never from original text."""
    text = str(value or "")
    return text if is_valid_uid(text) and text.startswith("2.25.") else fallback


def _check_report_path(report_path: Path, src: Path) -> None:
    in_dir = src if src.is_dir() else src.parent
    if report_path.is_relative_to(in_dir):
        raise DataError(f"{report_path}: the report must not be written inside the input folder")
    if report_path.is_dir():
        raise DataError(f"{report_path}: the report path is a folder")


def _read(path: Path):
    """dcmread, its value warnings silenced (input files hold odd values); -> Dataset."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
    except InvalidDicomError:
        raise _Skip("not DICOM") from None
    except Exception as exc:  # noqa: BLE001 - pydicom raises a dozen types on a bad file
        raise _Refuse("unreadable", type(exc).__name__) from None
    if str(ds.get("SOPClassUID", "")) == MEDIA_STORAGE_DIRECTORY:
        raise _Skip("DICOMDIR")
    return ds


def _identity(ds) -> tuple[str, str, str]:
    """(PatientID, PatientName, SOPInstanceUID) as text, read before de-identification."""

    def text(keyword: str) -> str:
        return str(ds.get(keyword, "") or "").strip("\0 ")

    return text("PatientID"), text("PatientName"), text("SOPInstanceUID")


def _class_of(path: Path, src: Path, ds) -> str:
    """The class folder of path (its first folder under src), refused when there is none or when
    its name is the patient's ID or name (it would be copied to OUT)."""
    parts = path.relative_to(src).parts
    if len(parts) < 2:
        raise _Refuse("no-class-folder")
    patient_id, patient_name, _ = _identity(ds)
    names = {patient_id, patient_name, *patient_name.replace("^", " ").split()}
    if text_check({n for n in names if n})(parts[0], contained=False):
        raise _Refuse("class-name-identifies")
    return parts[0]


def _write(ds, folder: Path, fallback_name: str) -> Path:
    """Save ds as folder/<SOP Instance UID>.dcm (a suffix _n for a repeated instance) through a
    temporary file; -> the path written."""
    name = _out_component(ds.get("SOPInstanceUID"), "") or fallback_name
    out, n = folder / f"{name}.dcm", 1
    while out.exists():  # the same instance twice (e.g. two transfer syntaxes)
        out, n = folder / f"{name}_{n}.dcm", n + 1
    folder.mkdir(parents=True, exist_ok=True)
    complete_file_meta(ds)
    tmp = out.with_suffix(".tmp")
    try:
        ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _anonymize_file(path: Path, root: Path, key: bytes, options: dict) -> tuple:
    """One input file -> (output path, action counts, its original (PatientID, PatientName,
    SOPInstanceUID), kept in memory for the label check); raises _Skip or _Refuse."""
    ds = _read(path)
    refusal = check_dataset(ds, allow_burned_in=options["allow_burned_in"])
    if refusal:
        raise _Refuse(*refusal)
    if options["class_folders"] is not None:
        root = root / _class_of(path, options["class_folders"], ds)
    patient_id, patient_name, sop_uid = _identity(ds)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            counts = deidentify_dataset(ds, key=key, shift_dates=options["shift_dates"])
    except DataError as exc:  # a structure the profile refuses (nesting depth): no values
        raise _Refuse("invalid-structure", str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - a malformed value met while converting it
        raise _Refuse("unreadable", f"malformed element, {type(exc).__name__}") from None
    folder = root / _out_component(ds.get("StudyInstanceUID"), "no-study")
    folder = folder / _out_component(ds.get("SeriesInstanceUID"), "no-series")
    fallback = "instance-" + keyed_digest(key, "file", str(path)).hex()[:32]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = _write(ds, folder, fallback)
    except Exception as exc:  # noqa: BLE001 - disk full, permissions, an unencodable value
        raise _Refuse("unwritable", type(exc).__name__) from None
    return out, counts, (patient_id, patient_name, sop_uid)


def anonymize(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    key: str | bytes | None = None,
    shift_dates: bool = False,
    allow_burned_in: bool = False,
    class_folders: bool = False,
    report_path: str | os.PathLike | None = None,
) -> AnonymizeReport:
    """De-identify every DICOM file under src into the new folder dst (PS3.15 Basic Profile),
    with its labels.

    Outputs go to dst/<study UID>/<series UID>/<SOP instance UID>.dcm, all remapped UIDs, so no
    name comes from input paths or attribute text (with class_folders, under dst/<class>/, the
    class being the file's first folder under src). src/labels.csv is carried to dst/labels.csv:
    new paths, the same labels, patient ids as keyed pseudonyms, unknown columns dropped, and the
    result checked so no input value survives (see deid/labels.py). The same key gives the same
    output; without a key a random one is used (not saved). Files are refused, each with a reason
    to act on (gate.REFUSALS), when they lack SOP UIDs, may hold burned-in identity (unless
    allow_burned_in), or cannot be read or written. Non-DICOM files and DICOMDIRs are skipped. A
    JSON log of counts goes to dst/deidentification-log.json; report_path gets refused files by
    reason (keyed tokens, no paths). Raises DataError if dst is, is inside, or contains the
    input folder, or is not empty, or labels.csv is one the dataset reader would refuse.
    """
    src, dst = Path(src).resolve(), Path(dst).resolve()
    if not src.exists():
        raise DataError(f"{src}: no such file or folder")
    _check_folders(src, dst)
    report_path = Path(report_path).resolve() if report_path is not None else None
    if report_path is not None:
        _check_report_path(report_path, src)
    given_key = key is not None
    key_bytes = os.urandom(32) if key is None else key.encode() if isinstance(key, str) else key
    if given_key and len(key_bytes) == 0:
        raise DataError("--key: the key must not be empty")
    table = read_label_table(src)
    if table is not None and class_folders:
        raise DataError(
            f"{table.source}: IN has labels.csv, which is carried; --class-folders is "
            "for folders without one"
        )
    if class_folders and not src.is_dir():
        raise DataError(f"{src}: --class-folders needs a folder")
    options = {
        "allow_burned_in": allow_burned_in,
        "shift_dates": shift_dates,
        "class_folders": src if class_folders else None,
    }
    report, files, fates = AnonymizeReport(), [], {}
    dst.mkdir(parents=True, exist_ok=True)
    for path in _inputs(src):
        if table is not None and path == table.source:
            continue
        relative = path.relative_to(src).as_posix() if src.is_dir() else path.name
        try:
            out, counts, identity = _anonymize_file(path, dst, key_bytes, options)
        except _Skip as skip:
            report.skipped[str(skip)] += 1
            fates[path] = f"file skipped ({skip})"
            continue
        except _Refuse as no:
            reason = refusal_message(no.code, no.detail)
            token = file_token(relative, key_bytes)
            report.refused.append(Refusal(path, reason, no.code, token, no.detail))
            fates[path] = f"file refused ({no.code})"
            continue
        report.written.append(out)
        report.counts.update(counts)
        files.append(WrittenFile(path, out.relative_to(dst).as_posix(), *identity))
    if table is not None:
        report.labels = carry_labels(table, files, fates, key_bytes, dst)
    elif class_folders:
        report.labels = _class_folder_result(report, files)
    report.log_path = _write_json(dst / LOG_NAME, _log(dst, report, given_key, options))
    if report_path is not None:
        report.report_path = _write_json(report_path, _report(report))
    return report


def _class_folder_result(report: AnonymizeReport, files: list) -> LabelsResult:
    """Class folders as labels: every class name is checked against every patient's ID and name
    (the per-file check saw only its own patient)."""
    result = LabelsResult("class folders", rows_in=len(files) + len(report.refused))
    result.rows_out = len(files)
    check = text_check(identity_values(None, files))
    classes = sorted({o.split("/")[0] for o in (f.output for f in files)})
    result.problems = [
        f"class folder {i + 1}: {p}" for i, c in enumerate(classes) if (p := check(c))
    ]
    return result


def _refusal_summary(report: AnonymizeReport) -> dict:
    return {
        code: {"what": REFUSALS[code][0], "what to do": REFUSALS[code][1], "count": n}
        for code, n in sorted(report.refused_by_code().items())
    }


def _log(dst: Path, report: AnonymizeReport, given_key: bool, options: dict) -> dict:
    """The run's log: tags, actions, counts and reasons only (no input paths, no original values)."""
    return {
        "profile": TABLE_SOURCE,
        "table_sha256": TABLE_SHA256,
        "options": {
            "shift_dates": options["shift_dates"],
            "allow_burned_in": options["allow_burned_in"],
            "class_folders": options["class_folders"] is not None,
        },
        "key": "given" if given_key else "random, not saved",
        "files": {
            "written": len(report.written),
            "refused": dict(sorted(report.refused_by_code().items())),
            "skipped": dict(report.skipped),
        },
        "refusal_reasons": _refusal_summary(report),
        "labels": report.labels.as_log() if report.labels is not None else None,
        "actions": [
            {"tag": tag, "name": name, "action": action, "count": n}
            for (tag, name, action), n in sorted(report.counts.items())
        ],
        "outputs": [p.relative_to(dst).as_posix() for p in report.written],
    }


def _report(report: AnonymizeReport) -> dict:
    """The --report JSON: refused files by reason, each as its keyed token and a detail from a
    fixed vocabulary; counts; what happened to the labels. No path and no original value."""
    refused = _refusal_summary(report)
    for code, entry in refused.items():
        entry["files"] = [
            {"file": r.token, "detail": r.detail} for r in report.refused if r.code == code
        ]
    return {
        "format": REPORT_FORMAT,
        "version": 1,
        "files": {
            "written": len(report.written),
            "refused": len(report.refused),
            "skipped": dict(report.skipped),
        },
        "refused": refused,
        "labels": report.labels.as_log() if report.labels is not None else None,
    }


def _write_json(path: Path, data: dict) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)
    return path
