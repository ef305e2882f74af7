"""The folder anonymizer: every DICOM file under an input folder de-identified into a new output
folder named by remapped UIDs only, with a log of counts that holds no original value."""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from engine.data.deid.actions import complete_file_meta, deidentify_dataset
from engine.data.deid.gate import MEDIA_STORAGE_DIRECTORY, burned_in_reason
from engine.data.deid.profile import TABLE_SHA256, TABLE_SOURCE
from engine.data.deid.pseudonyms import is_valid_uid, keyed_digest
from engine.errors import DataError

LOG_NAME = "deidentification-log.json"


@dataclass
class AnonymizeReport:
    """What a run did. `refused` holds input paths and reasons for the caller only; the log file
    written beside the outputs holds counts, never input paths or original values."""

    written: list[Path] = field(default_factory=list)
    refused: list[tuple[Path, str]] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # reason -> count (not DICOM, DICOMDIR)
    counts: Counter = field(default_factory=Counter)  # (tag, name, action) -> count
    log_path: Path | None = None


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


def anonymize(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    key: str | bytes | None = None,
    shift_dates: bool = False,
    allow_burned_in: bool = False,
) -> AnonymizeReport:
    """De-identify every DICOM file under src into the new folder dst (PS3.15 Basic Profile).

    Outputs go to dst/<study UID>/<series UID>/<SOP instance UID>.dcm, all remapped UIDs, so no
    name comes from input paths or attribute text. The same key gives the same output; without a
    key a random one is used (not saved: the mapping cannot be repeated). Files whose pixels may
    hold burned-in identity are refused unless allow_burned_in. Non-DICOM files and DICOMDIRs are
    skipped. A JSON log of counts (tags, actions, files) goes to dst/deidentification-log.json.
    Raises DataError if dst is, is inside, or contains the input folder, or is not empty.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    src, dst = Path(src).resolve(), Path(dst).resolve()
    if not src.exists():
        raise DataError(f"{src}: no such file or folder")
    _check_folders(src, dst)
    given_key = key is not None
    key_bytes = os.urandom(32) if key is None else key.encode() if isinstance(key, str) else key
    if given_key and len(key_bytes) == 0:
        raise DataError("--key: the key must not be empty")
    report = AnonymizeReport()
    dst.mkdir(parents=True, exist_ok=True)
    for path in _inputs(src):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pydicom's value-validation warnings on input
                ds = pydicom.dcmread(path)
                if str(ds.get("SOPClassUID", "")) == MEDIA_STORAGE_DIRECTORY:
                    report.skipped["DICOMDIR"] += 1
                    continue
                reason = burned_in_reason(ds)
                if reason and not allow_burned_in:
                    report.refused.append((path, f"burned-in risk: {reason}"))
                    continue
                counts = deidentify_dataset(ds, key=key_bytes, shift_dates=shift_dates)
                folder = dst / _out_component(ds.get("StudyInstanceUID"), "no-study")
                folder = folder / _out_component(ds.get("SeriesInstanceUID"), "no-series")
                name = _out_component(ds.get("SOPInstanceUID"), "")
                name = name or "instance-" + keyed_digest(key_bytes, "file", str(path)).hex()[:32]
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
        except InvalidDicomError:
            report.skipped["not DICOM"] += 1
            continue
        except DataError as exc:
            report.refused.append((path, str(exc)))
            continue
        except Exception as exc:  # noqa: BLE001 - pydicom raises a dozen types on a bad file
            report.refused.append((path, f"unreadable or unwritable DICOM ({type(exc).__name__})"))
            continue
        report.written.append(out)
        report.counts.update(counts)
    report.log_path = _write_log(dst, report, given_key, shift_dates, allow_burned_in)
    return report


def _write_log(
    dst: Path, report: AnonymizeReport, given_key: bool, shift_dates: bool, allow_burned_in: bool
) -> Path:
    """The run's log: tags, actions and counts only (no input paths, no original values)."""
    reasons = Counter(reason.split(":")[0] for _, reason in report.refused)
    log = {
        "profile": TABLE_SOURCE,
        "table_sha256": TABLE_SHA256,
        "options": {"shift_dates": shift_dates, "allow_burned_in": allow_burned_in},
        "key": "given" if given_key else "random, not saved",
        "files": {
            "written": len(report.written),
            "refused": dict(reasons),
            "skipped": dict(report.skipped),
        },
        "actions": [
            {"tag": tag, "name": name, "action": action, "count": n}
            for (tag, name, action), n in sorted(report.counts.items())
        ],
        "outputs": [str(p.relative_to(dst)) for p in report.written],
    }
    path = dst / LOG_NAME
    path.write_text(json.dumps(log, indent=1) + "\n")
    return path
