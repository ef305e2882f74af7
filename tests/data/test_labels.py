"""engine.data.labels and load_dataset's label checks: integer-looking labels, typos, tiny
classes, duplicated rows and missing files are caught, each naming its labels.csv line."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest

from engine.data.datasets import load_dataset
from engine.data.labels import label_text, parse_classes, resolve_classes
from engine.errors import DataError


def test_label_text_makes_integer_looking_labels_integers():
    assert [label_text(v) for v in ("1.0", " 01 ", "0.00", "-2.0", "1e1")] == [
        "1",
        "1",
        "0",
        "-2",
        "10",
    ]
    assert [label_text(v) for v in ("1.5", "maybe", "nan", "inf", "benign")] == [
        "1.5",
        "maybe",
        "nan",
        "inf",
        "benign",
    ]


def test_parse_classes():
    assert parse_classes("0, 1.0,maybe") == ["0", "1", "maybe"]
    with pytest.raises(DataError, match="distinct"):
        parse_classes("0,0.0")


def test_resolve_classes_rules():
    many = [f"line {i}" for i in range(10)]
    assert resolve_classes({"1": many, "0": many}, None, "x.csv") == ["0", "1"]
    assert resolve_classes({"b": many, "a": many}, None, "x.csv") == ["a", "b"]
    with pytest.raises(DataError, match=r"x.csv: line 7: label 'maybe' is not an integer"):
        resolve_classes({"0": many, "maybe": ["line 7"], "1": many}, None, "x.csv")
    with pytest.raises(DataError, match=r"class '2' has only 2 file\(s\) \(line 3, line 9\)"):
        resolve_classes({"0": many, "1": many, "2": ["line 3", "line 9"]}, None, "x.csv")
    # stated classes: their order, tiny classes accepted, unknown labels refused
    assert resolve_classes({"1": many, "2": ["line 3"]}, ["2", "1", "0"], "x.csv") == [
        "2",
        "1",
        "0",
    ]
    with pytest.raises(DataError, match=r"line 4: label '3' is not one of the classes"):
        resolve_classes({"1": many, "3": ["line 4"]}, ["0", "1"], "x.csv")


def _rewrite(folder, edit):
    with open(folder / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rows = edit(rows)
    with open(folder / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return rows


@pytest.fixture
def folder(demo_dir, tmp_path):
    return shutil.copytree(demo_dir, tmp_path / "data")


def test_spreadsheet_float_labels_read_as_integers(demo_dir, folder):
    plain = load_dataset(demo_dir, input_size=8)
    _rewrite(folder, lambda rows: [{**r, "label": f"{int(r['label']):.1f}"} for r in rows])
    floats = load_dataset(folder, input_size=8)
    assert floats.classes == plain.classes == ["0", "1"]
    np.testing.assert_array_equal(floats.labels, plain.labels)


def test_typo_single_file_class_and_duplicate_rows_name_the_line(folder):
    original = _rewrite(folder, lambda rows: rows)
    _rewrite(folder, lambda rows: [*rows[:4], {**rows[4], "label": "maybe"}, *rows[5:]])
    with pytest.raises(DataError, match=r"labels.csv: line 6: label 'maybe'"):
        load_dataset(folder, input_size=8)
    ds = load_dataset(folder, input_size=8, classes=["0", "1", "maybe"])  # stated: accepted
    assert ds.classes == ["0", "1", "maybe"] and (ds.labels == 2).sum() == 1
    _rewrite(folder, lambda rows: [*original[:4], {**original[4], "label": "2"}, *original[5:]])
    with pytest.raises(DataError, match=r"class '2' has only 1 file\(s\) \(line 6\)"):
        load_dataset(folder, input_size=8)
    _rewrite(folder, lambda rows: [*original, original[3]])
    with pytest.raises(DataError, match=rf"line {len(original) + 2} repeats .* from line 5"):
        load_dataset(folder, input_size=8)


def test_missing_file_raises_naming_the_line_or_is_skipped(folder):
    rows = _rewrite(folder, lambda rows: [*rows[:2], {**rows[0], "path": "nope.dcm"}, *rows[2:]])
    with pytest.raises(DataError, match=r"labels.csv: line 4: nope.dcm: no such file"):
        load_dataset(folder, input_size=8)
    ds = load_dataset(folder, input_size=8, on_error="skip")
    assert len(ds) == len(rows) - 1
    assert [(p.split("/")[-1], r) for p, r in ds.skipped] == [
        ("nope.dcm", "no such file (labels.csv line 4)")
    ]


def test_stated_classes_set_the_label_indices(demo_dir):
    plain = load_dataset(demo_dir, input_size=8)
    swapped = load_dataset(demo_dir, input_size=8, classes=["1", "0"])
    assert swapped.classes == ["1", "0"]
    np.testing.assert_array_equal(swapped.labels, 1 - plain.labels)
    with pytest.raises(DataError, match=r"label '1' is not one of the classes \['0'\]"):
        load_dataset(demo_dir, input_size=8, classes=["0"])


def test_class_folder_with_one_file_is_refused(demo_dir, tmp_path):
    for i, path in enumerate(sorted(demo_dir.glob("patient_*/*"))):
        target = tmp_path / "classes" / ("odd" if i == 0 else "even") / f"{i}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    with pytest.raises(DataError, match=r"class 'odd' has only 1 file\(s\) \(0.dcm\)"):
        load_dataset(tmp_path / "classes", input_size=8)


def test_no_files_at_all_is_said_so(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(DataError, match="no files"):
        load_dataset(tmp_path)  # class folders, all empty
    (tmp_path / "labels.csv").write_text("path,label\nx.dcm,0\ny.dcm,0\n")
    with pytest.raises(DataError, match="no files"):
        load_dataset(tmp_path, on_error="skip")  # every row names a missing file
