"""Labels that follow their images into the anonymized folder: IN/labels.csv translated to the new
relative paths (and remapped SOP Instance UIDs), patient ids replaced by the keyed pseudonym the
files get, unknown columns dropped, and a check that no input value survives in the result."""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from engine.data.deid.pseudonyms import pseudonym, remap_uid
from engine.errors import DataError

LABELS_NAME = "labels.csv"
# Columns the dataset reader understands (engine.data.datasets); any other column may hold
# anything (names, notes, dates), so it is dropped and named in the log.
PATH_COLUMN, UID_COLUMNS = "path", ("sop_instance_uid", "sopinstanceuid")
KNOWN_COLUMNS = frozenset({PATH_COLUMN, *UID_COLUMNS, "label", "patient_id"})
# What a cell built by the anonymizer looks like: output paths are made of remapped UIDs (or the
# keyed fallbacks of folder.py), pseudonyms of 12 hex digits, UIDs of the 2.25 root.
_UID = r"2\.25\.[0-9]+"
_PATH_RE = re.compile(
    rf"^(?:[^/]+/)?(?:{_UID}|no-study)/(?:{_UID}|no-series)/(?:{_UID}|instance-[0-9a-f]{{32}})"
    r"(?:_[0-9]+)?\.dcm$"
)
_PSEUDONYM_RE = re.compile(r"^ANON-[0-9A-F]{12}$")
_UID_RE = re.compile(rf"^{_UID}$")
MIN_EQUAL, MIN_CONTAINED = 3, 6  # shortest input values checked by equality / as substrings


@dataclass(frozen=True)
class LabelRow:
    """One row of IN/labels.csv: `ref` is the relative path or the SOP Instance UID as written,
    `target` the input file a path row names (resolved)."""

    ref: str
    target: Path | None
    label: str
    patient_id: str | None


@dataclass
class LabelTable:
    """IN/labels.csv parsed: key is 'path' or 'sop_instance_uid'; dropped_columns are the
    columns the reader does not know, in file order."""

    source: Path
    key: str
    rows: list[LabelRow]
    has_patient_id: bool
    dropped_columns: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class WrittenFile:
    """One written file as the label translation sees it. The original values are held in memory
    only, to find them if they survive: they are never written anywhere."""

    source: Path  # the input file, resolved
    output: str  # posix path relative to OUT
    patient_id: str
    patient_name: str
    sop_instance_uid: str


@dataclass
class LabelsResult:
    """What happened to the labels: kind 'labels.csv' or 'class folders'; rows in and out; rows
    dropped by reason; dropped columns; problems (line and column, never a value) that stopped
    labels.csv from being written; path of the written labels.csv."""

    kind: str
    rows_in: int = 0
    rows_out: int = 0
    dropped_rows: Counter = field(default_factory=Counter)
    dropped_columns: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    path: Path | None = None

    def as_log(self) -> dict:
        """JSON-able summary for the log and the report (counts and column names only)."""
        return {
            "kind": self.kind,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "dropped_rows": dict(self.dropped_rows),
            "dropped_columns": self.dropped_columns,
            "written": self.path is not None,
            "problems": self.problems,
        }


def read_label_table(src: Path) -> LabelTable | None:
    """Parse src/labels.csv (None when there is none) before any file is written, so a table the
    dataset reader would refuse stops the run with OUT still empty. Raises DataError naming the
    line: no label or key column, an empty cell, a path outside src, two rows for one file."""
    path = src / LABELS_NAME
    if not src.is_dir() or not path.is_file():
        return None
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, [])
            lines = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: unreadable ({type(exc).__name__})") from exc
    names = [h.strip().lower() for h in header]
    if len(set(names)) != len(names):
        raise DataError(f"{path}: a column name appears twice in the header")
    key = next((c for c in (PATH_COLUMN, *UID_COLUMNS) if c in names), None)
    if "label" not in names or key is None:
        raise DataError(f"{path}: needs a 'label' column and a 'path' or 'sop_instance_uid' column")
    col = {name: i for i, name in enumerate(names)}
    rows, seen = [], {}
    for line, cells in enumerate(lines, start=2):
        if not any(c.strip() for c in cells):
            continue  # a blank line
        cells = cells + [""] * (len(names) - len(cells))
        ref, label = cells[col[key]].strip(), cells[col["label"]].strip()
        if not ref or not label:
            raise DataError(f"{path}: line {line} has an empty {key} or label")
        target = None
        if key == PATH_COLUMN:
            target = (src / ref).resolve()
            if not target.is_relative_to(src.resolve()):
                raise DataError(f"{path}: line {line}: the path points outside the folder")
        ident = target if target is not None else ref
        if ident in seen:
            raise DataError(f"{path}: lines {seen[ident]} and {line} name the same file")
        seen[ident] = line
        pid = cells[col["patient_id"]].strip() if "patient_id" in col else ""
        rows.append(LabelRow(ref, target, label, pid or None))
    if not rows:
        raise DataError(f"{path}: no rows")
    dropped = [header[i].strip() for i, n in enumerate(names) if n not in KNOWN_COLUMNS]
    key = "sop_instance_uid" if key in UID_COLUMNS else key
    return LabelTable(path, key, rows, "patient_id" in col, dropped)


def translate_rows(
    table: LabelTable, written: list[WrittenFile], fates: dict[Path, str], key: bytes
) -> tuple[list[dict], Counter]:
    """-> (output rows, dropped rows by reason). Path rows keep the input's row order; SOP UID
    rows follow the input files' sorted order (what the dataset reader does), one row per written
    file, with the path added so the reader never has to guess which files are images. Label
    strings are kept as they are; patient ids become pseudonym(id, key), the same as the files'
    PatientID when the column holds the DICOM Patient ID."""
    by_source = {w.source: w for w in written}
    out, dropped = [], Counter()

    def row(w: WrittenFile, r: LabelRow) -> dict:
        cells = {"path": w.output, "label": r.label}
        if table.has_patient_id:
            cells["patient_id"] = pseudonym(r.patient_id, key) if r.patient_id else ""
        if table.key != PATH_COLUMN:
            cells["sop_instance_uid"] = remap_uid(w.sop_instance_uid, key)
        return cells

    if table.key == PATH_COLUMN:
        for r in table.rows:
            w = by_source.get(r.target)
            if w is not None:
                out.append(row(w, r))
            else:
                dropped[fates.get(r.target, "file missing")] += 1
    else:
        by_uid = {r.ref: r for r in table.rows}
        used = set()
        for w in written:
            r = by_uid.get(w.sop_instance_uid.strip("\0 "))
            if r is not None:
                out.append(row(w, r))
                used.add(r.ref)
        dropped["no written file has its SOP Instance UID"] += len(by_uid) - len(used)
    return out, +dropped


def identity_values(table: LabelTable | None, written: list[WrittenFile]) -> set[str]:
    """Every input value that must not reach OUT's label file: patient ids and names (and the
    parts of names), SOP Instance UIDs, label-file references and the parts of input paths
    (except parts that are themselves label values, e.g. class-named folders)."""
    labels = {r.label for r in table.rows} if table else set()
    values: set[str] = set()
    for w in written:
        values |= {w.patient_id, w.patient_name, w.sop_instance_uid}
        values |= set(re.split(r"[\^ ]+", w.patient_name))
    for r in table.rows if table else []:
        values |= {r.ref, r.patient_id or ""}
        if r.target is not None:
            values |= {p for p in PurePosixPath(r.ref).parts if p not in labels}
            values.add(PurePosixPath(r.ref).stem)
    return {v.strip("\0 ") for v in values if v and v.strip("\0 ")}


def find_residual_values(rows: list[dict], secrets: set[str]) -> list[str]:
    """Problems in translated rows, as 'line N, column C: ...' (never the value); [] is clean.

    Cells the anonymizer built must have its shape (paths of remapped UIDs, ANON- pseudonyms,
    2.25 UIDs) and equal no input value; label cells, copied from the input, must neither equal
    an input value (case-insensitive, >= 3 characters) nor contain one (>= 6 characters)."""
    check = text_check(secrets)
    shapes = {"path": _PATH_RE, "patient_id": _PSEUDONYM_RE, "sop_instance_uid": _UID_RE}
    label_verdict: dict[str, str] = {}  # a label value is checked once, however many rows
    problems = []
    for line, cells in enumerate(rows, start=2):
        for column, cell in cells.items():
            if column == "label":
                if cell not in label_verdict:
                    label_verdict[cell] = check(cell)
                problem = label_verdict[cell]
            elif column == "patient_id" and cell == "":
                problem = ""
            elif not shapes[column].match(cell):
                problem = "is not a value the anonymizer builds"
            else:
                problem = check(cell, contained=False)
            if problem:
                problems.append(f"line {line}, column {column}: {problem}")
    return problems


def text_check(secrets: set[str]):
    """-> check(text, contained=True): '' when text neither equals an input value
    (case-insensitive, >= MIN_EQUAL characters) nor, with contained, holds one (>= MIN_CONTAINED
    characters); else what is wrong, without the value."""
    equal = {s.casefold() for s in secrets if len(s) >= MIN_EQUAL}
    long = [s.casefold() for s in secrets if len(s) >= MIN_CONTAINED]

    def check(text: str, contained: bool = True) -> str:
        folded = text.strip().casefold()
        if folded in equal:
            return "equals an input patient id, name, UID or path"
        if contained and any(s in folded for s in long):
            return "contains an input patient id, name, UID or path"
        return ""

    return check


def write_rows(rows: list[dict], path: Path) -> Path:
    """Write rows as CSV (header from the first row) via a temporary file, then rename."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    return path


def carry_labels(
    table: LabelTable,
    written: list[WrittenFile],
    fates: dict[Path, str],
    key: bytes,
    dst: Path,
) -> LabelsResult:
    """Translate table into dst/labels.csv and check it; when the check finds a problem nothing
    is written and the problems are returned (by line and column only)."""
    rows, dropped = translate_rows(table, written, fates, key)
    result = LabelsResult(
        "labels.csv",
        rows_in=len(table.rows),
        dropped_rows=dropped,
    )
    if not rows:
        result.problems.append("no row names a written file")
        return result
    secrets = identity_values(table, written)
    check = text_check(secrets)
    # a column name is structure, not data, but a header-less file would make a data row the
    # header: a name that is an input value is logged by position only
    result.dropped_columns = [
        "(name withheld)" if check(name) else name for name in table.dropped_columns
    ]
    result.problems = find_residual_values(rows, secrets)
    if not result.problems:
        result.path = write_rows(rows, dst / LABELS_NAME)
        result.rows_out = len(rows)
    return result
