"""Source readers: a DICOM folder (labels.csv or class sub-folders), MNIST IDX files and MedMNIST
.npz archives, each turned into a description (for the cache key), class names and a stream of
preprocessed chunks (read, window, resize)."""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from engine import safeio
from engine.data.labels import read_labels_csv, resolve_classes
from engine.errors import DataError, DicomReadError

CHUNK = 512  # at most this many images per chunk streamed from a source to the builder
CHUNK_BYTES = 1 << 20  # and at most about this many bytes: the streaming memory bound

# A source is (description for the cache key, classes, iterator of chunks). A chunk is
# (images float32 (k, c, h, w), labels int64 (k,), groups list[str], paths list[str]).


def to_nchw(image: np.ndarray, channels: int) -> np.ndarray:
    """read_image output (f, h, w) or (f, h, w, 3) -> (f, channels, h, w)."""
    if image.ndim == 4:  # RGB, channels last
        image = np.moveaxis(image, -1, 1)
        if channels == 1:  # ITU-R BT.601 luma
            image = np.tensordot(
                np.array([0.299, 0.587, 0.114], np.float32), image, axes=([0], [1])
            )
            image = image[:, None]
    else:
        image = np.repeat(image[:, None], channels, axis=1)
    return image.astype(np.float32, copy=False)


def _inside(folder: Path, rel: str) -> Path:
    """folder / rel, refusing absolute paths and '..' that would leave folder."""
    path = (folder / rel).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise DataError(f"{folder / 'labels.csv'}: path {rel!r} points outside the folder")
    return path


def _file_stamp(paths: list[Path], root: Path) -> list:
    """(relative path, size, mtime_ns) per file: the cache key's view of the source files."""
    out = []
    for p in paths:
        st = os.stat(p)
        out.append([os.path.relpath(p, root), st.st_size, st.st_mtime_ns])
    return out


def dicom_source(
    folder: Path,
    *,
    window,
    channels,
    input_size,
    method,
    on_error,
    max_pixels,
    skipped: list,
    classes: list[str] | None = None,
    patients=None,
) -> tuple[dict, list[str], Iterator]:
    """A DICOM folder with labels.csv (path or SOPInstanceUID) or with one sub-folder per class.

    classes: the class names in index order, if stated (every label must be one of them); else
    found and checked by engine.data.labels.resolve_classes. A labels.csv row naming a missing
    file is a DataError naming the line, or with on_error="skip" a `skipped` entry.
    patients: if given (a set of patient ids), only those patients' files are decoded; a file's
    patient is labels.csv's patient_id, else its header's PatientID (read without the pixels).
    """
    from engine.data.dicom import read_image

    items, classes, stamp_files = _dicom_items(folder, classes, on_error, skipped)
    if patients is not None:
        items = _patients_items(folder, items, patients, on_error, max_pixels, skipped)
    index = {c: i for i, c in enumerate(classes)}
    desc = {
        "kind": "dicom",
        "root": str(folder.resolve()),
        "files": _file_stamp(stamp_files, folder),
        "window": window,
        "channels": channels,
        "max_pixels": max_pixels,
    }

    def chunks():
        from engine.data.transforms import resize

        buf = []
        for path, label, pid, by_uid in items:
            try:
                image, meta = read_image(path, window=window, max_pixels=max_pixels)
            except DicomReadError as exc:
                if on_error == "raise":
                    raise
                skipped.append((str(path), str(exc)))
                continue
            if by_uid is not None:
                row = by_uid.get(meta["sop_instance_uid"])
                if row is None:
                    skipped.append((str(path), "SOPInstanceUID not in labels.csv"))
                    continue
                label, pid = row["label"], row["patient_id"]
            group = pid or meta["patient_id"] or f"file:{os.path.relpath(path, folder)}"
            x = resize(to_nchw(image, channels), input_size, method)
            refs = [str(path)] if len(x) == 1 else [f"{path}#{i}" for i in range(len(x))]
            buf.append((x, [index[label]] * len(x), [group] * len(x), refs))
            if sum(b[0].nbytes for b in buf) >= CHUNK_BYTES or sum(len(b[0]) for b in buf) >= CHUNK:
                yield _join(buf)
                buf = []
        if buf:
            yield _join(buf)

    return desc, classes, chunks()


def _dicom_items(folder: Path, classes, on_error: str, skipped: list) -> tuple:
    """The files of a DICOM folder -> (items, classes, files for the cache stamp); an item is
    (path, label or None, patient id or None, labels.csv rows by SOPInstanceUID or None)."""
    from engine.data.dicom import list_files

    csv_path = folder / "labels.csv"
    if csv_path.is_file():
        rows = read_labels_csv(folder)
        found: dict[str, list[str]] = {}
        for r in rows:
            found.setdefault(r["label"], []).append(f"line {r['line']}")
        classes = resolve_classes(found, classes, str(csv_path))
        if rows[0]["key"] == "path":
            items = []
            for r in rows:
                path = _inside(folder, r["ref"])
                if path.is_file():
                    items.append((path, r["label"], r["patient_id"], None))
                elif on_error == "raise":
                    raise DataError(f"{csv_path}: line {r['line']}: {r['ref']}: no such file")
                else:
                    skipped.append((str(path), f"no such file (labels.csv line {r['line']})"))
        else:  # match by SOPInstanceUID: every file in the folder is a candidate
            by_uid = {r["ref"]: r for r in rows}
            items = [(p, None, None, by_uid) for p in list_files(folder)]
        stamp_files = [p for p, *_ in items] + [csv_path]
    else:
        class_dirs = sorted(
            d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")
        )
        if not class_dirs:
            raise DataError(f"{folder}: no labels.csv and no class sub-folders")
        items = [(p, d.name, None, None) for d in class_dirs for p in list_files(d)]
        if not items:
            raise DataError(f"{folder}: no files")
        found = {d.name: [] for d in class_dirs}
        for p, label, *_ in items:
            found[label].append(p.name)
        classes = resolve_classes(found, classes, str(folder))
        stamp_files = [p for p, *_ in items]
    if not items:
        raise DataError(f"{folder}: no files")
    return items, classes, stamp_files


def _header(path: Path, max_pixels: int) -> dict:
    """PatientID, SOPInstanceUID and NumberOfFrames ("frames") of a DICOM file, read with
    stop_before_pixels: its pixel data is never read. Raises DicomReadError."""
    from engine.data.dicom import read_header

    return read_header(path, max_file_bytes=8 * max_pixels + (64 << 20))


def _resolve(folder: Path, item: tuple, meta: dict | None) -> tuple | None:
    """(path, label, patient group) of an item, from labels.csv and, if read, its header meta;
    None when matched by SOPInstanceUID and not in labels.csv."""
    path, label, pid, by_uid = item
    if by_uid is not None:
        row = by_uid.get(meta["sop_instance_uid"])
        if row is None:
            return None
        label, pid = row["label"], row["patient_id"]
    group = pid or (meta or {}).get("patient_id") or f"file:{os.path.relpath(path, folder)}"
    return path, label, group


def _resolved(folder: Path, items, on_error, max_pixels, skipped, *, headers: bool) -> Iterator:
    """(path, label, patient group, header meta or None) per item, pixels never read; a header is
    read when `headers` or where labels.csv gives no patient_id (or matches by SOPInstanceUID).
    Unreadable headers and UIDs not in labels.csv go to `skipped` (or raise, on_error)."""
    for item in items:
        meta = None
        if headers or item[2] is None:
            try:
                meta = _header(item[0], max_pixels)
            except DicomReadError as exc:
                if on_error == "raise":
                    raise
                skipped.append((str(item[0]), str(exc)))
                continue
        found = _resolve(folder, item, meta)
        if found is None:
            skipped.append((str(item[0]), "SOPInstanceUID not in labels.csv"))
        else:
            yield (*found, meta)


def _patients_items(folder: Path, items, patients, on_error, max_pixels, skipped) -> list:
    """The items whose patient is in `patients`, resolved (label and patient known)."""
    patients = {str(p) for p in patients}
    found = _resolved(folder, items, on_error, max_pixels, skipped, headers=False)
    return [(path, label, group, None) for path, label, group, _ in found if group in patients]


def dicom_index(folder: Path, *, classes, on_error: str, max_pixels: int, skipped: list) -> tuple:
    """What dicom_source would yield, without any pixel: -> (classes, labels int64 (n,),
    groups (n,) str, paths (n,) refs), one entry per image (frame), in the same order, from
    labels.csv and the file headers. Used to split and shard before each rank decodes its part."""
    items, classes, _ = _dicom_items(folder, classes, on_error, skipped)
    index = {c: i for i, c in enumerate(classes)}
    labels, groups, paths = [], [], []
    for path, label, group, meta in _resolved(
        folder, items, on_error, max_pixels, skipped, headers=True
    ):
        k = meta["frames"]
        labels += [index[label]] * k
        groups += [group] * k
        paths += [str(path)] if k == 1 else [f"{path}#{i}" for i in range(k)]
    return classes, np.asarray(labels, np.int64), np.asarray(groups, dtype=str), paths


def _join(buf) -> tuple:
    return (
        np.concatenate([b[0] for b in buf]),
        np.concatenate([b[1] for b in buf]).astype(np.int64),
        [g for b in buf for g in b[2]],
        [p for b in buf for p in b[3]],
    )


_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _open_idx(path: Path, max_bytes: int):
    """-> (open binary file, shape, dtype) of an IDX file (optionally .gz), header validated."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        f = opener(path, "rb")
        head = f.read(4)
        if (
            len(head) < 4
            or head[0] != 0
            or head[1] != 0
            or head[2] not in _IDX_DTYPES
            or not 1 <= head[3] <= 4
        ):
            f.close()
            raise DataError(f"{path}: not an IDX file (magic {head.hex()})")
        dims = f.read(4 * head[3])
        if len(dims) < 4 * head[3]:
            f.close()
            raise DataError(f"{path}: truncated IDX header")
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: unreadable IDX ({type(exc).__name__}: {exc})") from exc
    shape = tuple(int(d) for d in np.frombuffer(dims, ">u4"))
    dtype = np.dtype(_IDX_DTYPES[head[2]])
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if nbytes > max_bytes:
        f.close()
        raise DataError(f"{path}: IDX header claims {shape} ({nbytes} bytes), over {max_bytes}")
    return f, shape, dtype


def _read_exact(f, nbytes: int, path: Path) -> bytes:
    try:
        data = f.read(nbytes)
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: unreadable IDX data ({type(exc).__name__}: {exc})") from exc
    if len(data) < nbytes:
        raise DataError(f"{path}: truncated: expected {nbytes} more bytes, got {len(data)}")
    return data


def _find_idx(source: Path, split: str) -> tuple[Path, Path]:
    """(images file, labels file) from a folder (by split) or from the images file itself."""
    if source.is_dir():
        prefixes = {"train": ["train"], "test": ["t10k", "test"]}.get(split)
        if prefixes is None:
            raise DataError(f"MNIST has splits 'train' and 'test', got {split!r}")
        found = [p for pre in prefixes for p in sorted(source.glob(f"{pre}-images*idx3*"))]
        if not found:
            raise DataError(f"{source}: no {prefixes[0]}-images-idx3-ubyte[.gz] file")
        images = found[0]
    else:
        images = source
    labels = images.with_name(images.name.replace("images", "labels").replace("idx3", "idx1"))
    if labels == images or not labels.is_file():
        raise DataError(f"{images}: no matching labels file {labels.name}")
    return images, labels


def mnist_source(source: Path, *, split, input_size, method, max_bytes) -> tuple:
    """MNIST-format IDX images (n, h, w) uint8 and labels (n,), streamed in chunks."""
    images_path, labels_path = _find_idx(source, split)
    lf, lshape, ldtype = _open_idx(labels_path, max_bytes)
    with lf:
        labels = np.frombuffer(
            _read_exact(lf, int(np.prod(lshape)) * ldtype.itemsize, labels_path), ldtype
        ).astype(np.int64)
    f, shape, dtype = _open_idx(images_path, max_bytes)
    if len(shape) != 3 or shape[0] != len(labels):
        f.close()
        raise DataError(f"{images_path}: images {shape} do not match {len(labels)} labels")
    if labels.min() < 0:
        f.close()
        raise DataError(f"{labels_path}: negative labels")
    classes = [str(i) for i in range(int(labels.max()) + 1)]
    scale = 255.0 if dtype.kind == "u" and dtype.itemsize == 1 else 1.0
    desc = {
        "kind": "idx",
        "root": str(images_path.parent.resolve()),
        "files": _file_stamp([images_path, labels_path], images_path.parent),
    }

    def chunks():
        from engine.data.transforms import resize

        with f:
            per = int(np.prod(shape[1:])) * dtype.itemsize
            for start in range(0, shape[0], CHUNK):
                k = min(CHUNK, shape[0] - start)
                raw = np.frombuffer(_read_exact(f, k * per, images_path), dtype).reshape(
                    (k, *shape[1:])
                )
                x = resize(raw.astype(np.float32)[:, None] / np.float32(scale), input_size, method)
                refs = [f"{images_path}:{i}" for i in range(start, start + k)]
                yield x, labels[start : start + k], refs, refs

    return desc, classes, chunks()


def medmnist_source(path: Path, *, split, input_size, method, channels, max_bytes) -> tuple:
    """A MedMNIST .npz: {split}_images uint8 (n, h, w[, 3]) and {split}_labels (n, 1)."""
    arrays = safeio.load_npz(path, max_bytes=max_bytes, error=DataError)
    xk, yk = f"{split}_images", f"{split}_labels"
    if xk not in arrays or yk not in arrays:
        raise DataError(f"{path}: no {xk}/{yk}; has {sorted(arrays)}")
    images, labels = arrays[xk], arrays[yk]
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(
            f"{path}: {yk} has shape {labels.shape}: multi-label sets are not supported"
        )
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
        raise DataError(
            f"{path}: {xk} has shape {images.shape}; expected (n, h, w) or (n, h, w, 3)"
        )
    if len(images) != len(labels) or len(labels) == 0 or labels.min() < 0:
        raise DataError(
            f"{path}: {len(images)} images, {len(labels)} labels (need equal, >0, labels >= 0)"
        )
    labels = labels.astype(np.int64)
    ch = channels or (3 if images.ndim == 4 else 1)
    desc = {
        "kind": "medmnist",
        "root": str(path.parent.resolve()),
        "files": _file_stamp([path], path.parent),
        "split": split,
    }
    classes = [str(i) for i in range(int(labels.max()) + 1)]

    def chunks():
        from engine.data.transforms import resize

        for start in range(0, len(images), CHUNK):
            x = images[start : start + CHUNK].astype(np.float32) / np.float32(255.0)
            x = resize(to_nchw(x, ch) if x.ndim == 4 else to_nchw(x, ch), input_size, method)
            refs = [f"{path}:{split}:{i}" for i in range(start, start + len(x))]
            yield x, labels[start : start + len(x)], refs, refs

    return desc, classes, chunks()
