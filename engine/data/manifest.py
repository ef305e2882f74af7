"""Dataset integrity: a manifest of SHA-256, size and relative path per file, and its check.

`train` records the manifest of its data in the run directory; `medgrad verify DATA --manifest FILE`
reports changed, missing and added files before anything trains on them. Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from engine.errors import DataError

FORMAT = "medgrad-manifest"
VERSION = 1
MAX_MANIFEST_BYTES = 256 << 20  # a manifest line is ~120 bytes: 256 MiB is ~2 million files
_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _walk(root: Path) -> list[Path]:
    """Regular files under root, sorted; symlinks are neither followed nor listed (a link could
    point outside the dataset, or loop)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in filenames:
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                out.append(p)
    return sorted(out)


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError as exc:
        raise DataError(f"{path}: not inside the dataset root {root}") from exc


def build_manifest(
    root_or_paths: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    root: str | os.PathLike | None = None,
    exclude: Iterable[str | os.PathLike] = (),
) -> dict:
    """Manifest of a dataset folder (every regular file under it) or of a list of files.

    -> {"format": "medgrad-manifest", "version": 1, "algorithm": "sha256", "count": n,
        "total_bytes": b, "files": {relative posix path: {"sha256": hex, "size": bytes}}}.
    Paths are relative to the folder (or to `root`, default the files' common folder, for a
    list), so a manifest holds no absolute path and moves with its data. `exclude` names files
    to leave out (e.g. the manifest itself when it is written inside the folder).
    """
    if isinstance(root_or_paths, str | os.PathLike):
        base = Path(root_or_paths).resolve()
        if not base.is_dir():
            raise DataError(f"{base}: not a folder")
        paths = _walk(base)
        if root is not None:
            base = Path(root).resolve()
    else:
        paths = [Path(p) for p in root_or_paths]
        for p in paths:
            if not p.is_file():
                raise DataError(f"{p}: not a regular file")
        if root is None:
            if not paths:
                raise DataError("build_manifest: no files given and no root")
            base = Path(os.path.commonpath([p.resolve().parent for p in paths]))
        else:
            base = Path(root).resolve()
    skip = {Path(p).resolve() for p in exclude}
    files = {}
    for p in paths:
        if p.resolve() in skip:
            continue
        files[_relative(p, base)] = {"sha256": sha256_file(p), "size": p.stat().st_size}
    return {
        "format": FORMAT,
        "version": VERSION,
        "algorithm": "sha256",
        "count": len(files),
        "total_bytes": sum(f["size"] for f in files.values()),
        "files": dict(sorted(files.items())),
    }


def write_manifest(manifest: dict, path: str | os.PathLike) -> Path:
    """Write a manifest as JSON (sorted keys, one file per line group); returns the path."""
    path = Path(path)
    _validate(manifest, str(path))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def _safe_relpath(rel: str, where: str) -> str:
    """A manifest path must be relative, posix, without '..': it is joined to the root, and a
    value read from a file must never name a path outside it."""
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or ".." in p.parts or "\\" in rel or "\0" in rel or ":" in rel:
        raise DataError(f"{where}: unsafe path {rel!r} in manifest (must be relative, no '..')")
    return rel


def _validate(manifest, where: str) -> dict:
    """Check a manifest's structure; raise DataError naming the first problem."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{where}: not a medgrad manifest (no 'format': '{FORMAT}')")
    if manifest.get("version") != VERSION or manifest.get("algorithm") != "sha256":
        raise DataError(f"{where}: unsupported manifest version/algorithm")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise DataError(f"{where}: 'files' must be an object")
    for rel, entry in files.items():
        _safe_relpath(rel, where)
        ok = isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
        ok = (
            ok
            and len(entry["sha256"]) == 64
            and all(c in "0123456789abcdef" for c in entry["sha256"])
        )
        ok = ok and isinstance(entry.get("size"), int) and entry["size"] >= 0
        if not ok:
            raise DataError(f"{where}: entry for {rel!r} needs a 64-hex 'sha256' and an int 'size'")
    return manifest


def read_manifest(path: str | os.PathLike) -> dict:
    """Load and validate a manifest file (size-capped before reading)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise DataError(f"{path}: {size} bytes, over the manifest limit {MAX_MANIFEST_BYTES}")
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such manifest") from exc
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DataError(f"{path}: not a readable JSON manifest ({type(exc).__name__})") from exc
    return _validate(manifest, str(path))


@dataclass
class VerifyReport:
    """Result of verify_manifest: relative paths that changed (content or size), are missing or
    were added since the manifest was built. `ok` is True only when all three are empty."""

    checked: int = 0
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.changed or self.missing or self.added)

    def summary(self) -> str:
        head = f"{self.checked} files checked: "
        if self.ok:
            return head + "all match the manifest"
        parts = [
            f"{len(v)} {k}"
            for k, v in (
                ("changed", self.changed),
                ("missing", self.missing),
                ("added", self.added),
            )
            if v
        ]
        return head + ", ".join(parts)


def verify_manifest(
    root: str | os.PathLike,
    manifest_or_path: dict | str | os.PathLike,
    *,
    exclude: Iterable[str | os.PathLike] = (),
) -> VerifyReport:
    """Check the files under root against a manifest (dict or file). Sizes are compared first,
    so a changed size costs no hashing. The manifest file itself, if inside root, is not 'added'."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    skip = {Path(p).resolve() for p in exclude}
    if isinstance(manifest_or_path, dict):
        manifest = _validate(manifest_or_path, "manifest")
    else:
        manifest = read_manifest(manifest_or_path)
        skip.add(Path(manifest_or_path).resolve())
    expected = manifest["files"]
    present = {_relative(p, root): p for p in _walk(root) if p.resolve() not in skip}
    report = VerifyReport()
    for rel, entry in expected.items():
        p = present.get(rel)
        if p is None:
            report.missing.append(rel)
            continue
        report.checked += 1
        if p.stat().st_size != entry["size"] or sha256_file(p) != entry["sha256"]:
            report.changed.append(rel)
    report.added = sorted(set(present) - set(expected))
    return report
