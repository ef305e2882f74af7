"""Dataset manifests (SHA-256 per file): build, write, verify; changed, missing and added files
are reported; a hostile manifest cannot name paths outside the dataset."""

from __future__ import annotations

import json
import os

import pytest

from engine.cli import main
from engine.data.manifest import (
    build_manifest,
    read_manifest,
    sha256_file,
    verify_manifest,
    write_manifest,
)
from engine.errors import DataError


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    (root / "a" / "b").mkdir(parents=True)
    (root / "one.dcm").write_bytes(b"\x01" * 300)
    (root / "a" / "two.dcm").write_bytes(b"\x02" * 200)
    (root / "a" / "b" / "labels.csv").write_text("file,label\none.dcm,1\n")
    return root


def test_manifest_fields_are_relative_and_hashed(data):
    m = build_manifest(data)
    assert m["count"] == 3 and m["total_bytes"] == 300 + 200 + len("file,label\none.dcm,1\n")
    assert list(m["files"]) == ["a/b/labels.csv", "a/two.dcm", "one.dcm"]
    import hashlib

    assert m["files"]["one.dcm"] == {
        "sha256": hashlib.sha256(b"\x01" * 300).hexdigest(),
        "size": 300,
    }
    assert str(data) not in json.dumps(m)  # no absolute path: the manifest moves with its data


def test_verify_reports_changed_missing_added(data, tmp_path):
    path = write_manifest(build_manifest(data), tmp_path / "manifest.json")
    assert verify_manifest(data, path).ok
    (data / "one.dcm").write_bytes(b"\x01" * 299 + b"\x00")  # same size, one byte differs
    (data / "a" / "two.dcm").unlink()
    (data / "new.dcm").write_bytes(b"x")
    report = verify_manifest(data, path)
    assert (report.changed, report.missing, report.added) == (
        ["one.dcm"],
        ["a/two.dcm"],
        ["new.dcm"],
    )
    assert not report.ok and report.checked == 2
    assert "1 changed, 1 missing, 1 added" in report.summary()


def test_manifest_inside_its_folder_is_not_an_added_file(data):
    path = data / "manifest.json"
    write_manifest(build_manifest(data, exclude=[path]), path)
    assert read_manifest(path)["count"] == 3
    assert verify_manifest(data, path).ok


def test_list_of_paths_relative_to_common_folder(data):
    m = build_manifest([data / "a" / "two.dcm", data / "a" / "b" / "labels.csv"])
    assert list(m["files"]) == ["b/labels.csv", "two.dcm"]
    m = build_manifest([data / "one.dcm"], root=data)
    assert list(m["files"]) == ["one.dcm"]
    with pytest.raises(DataError, match="not inside"):
        build_manifest([data / "one.dcm"], root=data / "a")


def test_symlinks_are_not_followed(data, tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("outside the dataset")
    os.symlink(outside, data / "link.txt")
    os.symlink(data, data / "a" / "loop")
    assert "link.txt" not in build_manifest(data)["files"]
    assert build_manifest(data)["count"] == 3


@pytest.mark.parametrize(
    "rel", ["../outside.txt", "/etc/passwd", "a/../../x", "C:\\x", "a\\..\\x", ""]
)
def test_hostile_paths_in_a_manifest_are_refused(data, tmp_path, rel):
    m = build_manifest(data)
    m["files"][rel] = {"sha256": "0" * 64, "size": 1}
    path = tmp_path / "m.json"
    path.write_text(json.dumps(m))
    with pytest.raises(DataError, match="unsafe path"):
        verify_manifest(data, path)


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"format": "other"}',
        '{"format": "medgrad-manifest", "version": 1, '
        '"algorithm": "sha256", "files": {"x": {"sha256": "abc", "size": 1}}}',
        "[" * 100000,
    ],
    ids=["text", "list", "other-format", "short-hash", "deep-nesting"],
)
def test_malformed_manifests_are_one_project_error(data, tmp_path, text):
    path = tmp_path / "m.json"
    path.write_text(text)
    with pytest.raises(DataError, match="m.json"):
        verify_manifest(data, path)


def test_sha256_file_streams(tmp_path):
    import hashlib

    p = tmp_path / "big"
    p.write_bytes(os.urandom(3 << 20))
    assert sha256_file(p) == hashlib.sha256(p.read_bytes()).hexdigest()


def test_cli_verify(data, tmp_path, capsys):
    manifest = tmp_path / "m.json"
    assert main(["verify", str(data), "--manifest", str(manifest), "--write"]) == 0
    assert main(["verify", str(data), "--manifest", str(manifest)]) == 0
    assert "all match" in capsys.readouterr().out
    (data / "one.dcm").write_bytes(b"changed")
    assert main(["verify", str(data), "--manifest", str(manifest)]) == 1
    assert "changed: one.dcm" in capsys.readouterr().out
    assert main(["verify", str(data), "--manifest", str(tmp_path / "none.json")]) == 2
    assert "no such manifest" in capsys.readouterr().err
