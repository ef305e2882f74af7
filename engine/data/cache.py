"""The on-disk cache of preprocessed images: one folder per key (a hash of the source files and
the settings) holding images.npy (memory-mapped back), labels, groups, paths and meta.json.
Entries are built in a temporary folder and renamed into place. No pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine import safeio
from engine.errors import DataError

CACHE_VERSION = 1  # bump when the preprocessing code changes what a cached image holds


@dataclass
class Entry:
    """The arrays of one cache entry: images float32 (n, c, h, w) (a read-only memmap once
    stored; None while the builder streams them to images.npy), labels int64 (n,), groups str
    (n,), paths, classes, skipped (path, reason) and info (settings, mean, std, cache key)."""

    images: np.ndarray | None
    labels: np.ndarray
    groups: np.ndarray
    paths: list[str]
    classes: list[str]
    skipped: list = field(default_factory=list)
    info: dict = field(default_factory=dict)


class NpyWriter:
    """Append float32 (k, c, h, w) chunks to a .npy file whose length is known only at the end.

    The header is written with room to spare and rewritten on close with the final count, so the
    data are written once, sequentially, never held in memory.
    """

    HEADER = 128  # bytes, a multiple of 64 as the format asks

    def __init__(self, path: Path):
        self.path, self.n, self.item = path, 0, None
        self.f = open(path, "wb")
        self.f.write(b"\0" * self.HEADER)

    def append(self, x: np.ndarray) -> None:
        self.item = self.item or x.shape[1:]
        self.f.write(np.ascontiguousarray(x, dtype="<f4").tobytes())
        self.n += len(x)

    def close(self) -> None:
        shape = (self.n, *(self.item or (1, 1, 1)))
        text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}"
        body = text.ljust(self.HEADER - 10 - 1) + "\n"
        header = b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body.encode("latin1")
        assert len(header) == self.HEADER
        self.f.seek(0)
        self.f.write(header)
        self.f.close()


def cache_key(desc: dict, settings: dict) -> str:
    """SHA-256 hex of the source description (files, sizes, mtimes) and the settings."""
    blob = json.dumps(
        {"version": CACHE_VERSION, "source": desc, "settings": settings},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def load_entry(entry: Path) -> Entry | None:
    """The arrays of a finished cache entry, or None if it is missing or inconsistent (an
    inconsistent one is removed with a warning, so the caller rebuilds it)."""
    meta_path = entry / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        images = safeio.load_npy(
            entry / "images.npy", mmap=True, error=DataError, max_bytes=1 << 40
        )
        labels = safeio.load_npy(entry / "labels.npy", error=DataError)
        groups = safeio.load_npy(entry / "groups.npy", error=DataError)
        paths = safeio.load_npy(entry / "paths.npy", error=DataError)
        n = meta["n"]
        if not (len(images) == len(labels) == len(groups) == len(paths) == n):
            raise DataError(f"{entry}: arrays disagree on the number of images")
    except (DataError, ValueError, KeyError, OSError) as exc:
        warnings.warn(f"cache entry {entry} is unreadable ({exc}); rebuilding it", stacklevel=3)
        shutil.rmtree(entry, ignore_errors=True)
        return None
    return Entry(
        images,
        labels.astype(np.int64),
        groups.astype(str),
        [str(p) for p in paths],
        meta["classes"],
        [tuple(s) for s in meta["skipped"]],
        meta["info"],
    )


def publish_entry(cache_dir: Path, key: str, fill: Callable[[Path], None]) -> Path:
    """Build cache_dir/key atomically -> its path: fill(tmp) writes the files into a temporary
    folder (meta.json last, as the marker), which is then renamed into place, so a reader never
    sees a half-written entry; if another process finished the same entry first, theirs is kept.
    """
    entry = cache_dir / key
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:12]}-", dir=cache_dir))
    try:
        fill(tmp)
        try:
            os.replace(tmp, entry)
        except OSError:  # another process finished the same entry first: use theirs
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry


def store_entry(
    cache_dir: Path,
    key: str,
    fill: Callable[[NpyWriter], Entry],
    finish: Callable[[np.ndarray, Entry], None] | None = None,
) -> Entry:
    """Build the cache entry `key` and load it back (memory-mapped).

    fill(writer) streams the images into the writer and returns the rest of the Entry (images
    None); finish(images, entry), if given, then edits the written images in place (a writable
    memmap). Built by publish_entry (temporary folder, then renamed into place).
    """

    def build(tmp: Path) -> None:
        writer = NpyWriter(tmp / "images.npy")
        try:
            built = fill(writer)
        finally:
            writer.close()
        if finish is not None:
            images = np.load(tmp / "images.npy", mmap_mode="r+", allow_pickle=False)
            finish(images, built)
            images.flush()
            del images
        np.save(tmp / "labels.npy", built.labels, allow_pickle=False)
        np.save(tmp / "groups.npy", built.groups, allow_pickle=False)
        np.save(tmp / "paths.npy", np.asarray(built.paths, dtype=str), allow_pickle=False)
        meta = {
            "n": len(built.labels),
            "classes": built.classes,
            "skipped": built.skipped,
            "info": {**built.info, "cache_key": key},
        }
        (tmp / "meta.json").write_text(json.dumps(meta, default=str))  # written last: the marker

    entry = publish_entry(cache_dir, key, build)
    found = load_entry(entry)
    if found is None:
        raise DataError(f"{entry}: cache entry could not be written")
    return found
