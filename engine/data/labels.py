"""Class labels of a DICOM folder: reading labels.csv, and checking the label values and class
sizes, so a typo ("maybe", "1.0" from a spreadsheet) or a duplicated row never trains silently."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from engine.errors import DataError

MIN_CLASS_FILES = 3  # a class with fewer files than this is more likely a typo than a class


def label_text(value: str) -> str:
    """A label as written, with integer-looking numbers made integers: "1.0" and "01" -> "1"."""
    value = value.strip()
    try:
        number = float(value)
    except ValueError:
        return value
    return str(int(number)) if math.isfinite(number) and number.is_integer() else value


def numeric_sort(values) -> list[str]:
    """Class names sorted numerically when all are integers, else as text."""
    values = sorted(set(values))
    try:
        return [str(v) for v in sorted(values, key=int)]
    except ValueError:
        return values


def parse_classes(text: str) -> list[str]:
    """ "0,1" or "benign, malignant" -> class names in that order (labels normalised)."""
    names = [label_text(c) for c in text.split(",") if c.strip()]
    if not names or len(set(names)) != len(names):
        raise DataError(f"classes {text!r}: expected distinct names separated by commas")
    return names


def read_labels_csv(folder: Path) -> list[dict]:
    """Rows of folder/labels.csv with 'label' and 'path' or 'sop_instance_uid' columns.

    Each row -> {"key", "ref", "label", "patient_id", "line"} (line: the CSV line number, 2 for
    the first row). Labels pass through label_text. A path or UID given twice is an error naming
    both lines, since it would count one image twice.
    """
    path = folder / "labels.csv"
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = {k.strip().lower(): k for k in reader.fieldnames or []}
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from exc
    key = next((k for k in ("path", "sop_instance_uid", "sopinstanceuid") if k in fields), None)
    if "label" not in fields or key is None:
        raise DataError(
            f"{path}: needs a 'label' column and a 'path' or 'sop_instance_uid' column, "
            f"found {list(fields.values())}"
        )
    out, seen = [], {}
    for i, row in enumerate(rows, start=2):
        ref, label = (row.get(fields[key]) or "").strip(), (row.get(fields["label"]) or "").strip()
        if not ref or not label:
            raise DataError(f"{path}: line {i} has an empty {key} or label")
        same = Path(ref).as_posix().removeprefix("./") if key == "path" else ref
        if same in seen:
            raise DataError(f"{path}: line {i} repeats {ref!r} from line {seen[same]}")
        seen[same] = i
        pid = (row.get(fields.get("patient_id", ""), "") or "").strip() or None
        out.append(
            {"key": key, "ref": ref, "label": label_text(label), "patient_id": pid, "line": i}
        )
    if not out:
        raise DataError(f"{path}: no rows")
    return out


def resolve_classes(found: dict[str, list[str]], stated: list[str] | None, where: str) -> list[str]:
    """The class names of a source, checked.

    found: label -> the places it occurs ("line 7", a file name), in order; stated: the classes
    the user named (e.g. --classes 0,1, or a model's classes), in index order; where: the file
    or folder for messages. With stated classes every label must be one of them. Without, labels
    must be all integers or all text, and each class needs MIN_CLASS_FILES files; both are
    DataErrors naming the first offending place and how to state the classes.
    """
    if stated is not None:
        stated = [label_text(c) for c in stated]
        for label, places in found.items():
            if label not in stated:
                raise DataError(
                    f"{where}: {places[0]}: label {label!r} is not one of the classes {stated}"
                )
        return stated
    integers = [c for c in found if _is_int(c)]
    if integers and len(integers) < len(found):
        odd = next(c for c in found if not _is_int(c))
        raise DataError(
            f"{where}: {found[odd][0]}: label {odd!r} is not an integer like the others "
            f"({', '.join(numeric_sort(integers))}); fix it, or state the classes "
            f"(--classes {','.join(numeric_sort(found))})"
        )
    classes = numeric_sort(found)
    if len(classes) > 1:
        for c in classes:
            if len(found[c]) < MIN_CLASS_FILES:
                raise DataError(
                    f"{where}: class {c!r} has only {len(found[c])} file(s) "
                    f"({', '.join(found[c][:3])}), fewer than {MIN_CLASS_FILES}: a mistyped "
                    f"label? If it is a real class, state the classes "
                    f"(--classes {','.join(classes)})"
                )
    return classes


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True
