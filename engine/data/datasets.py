"""Datasets: DICOM folders, MNIST IDX files and MedMNIST .npz archives as float32 NCHW arrays.

Every source becomes a stream of preprocessed chunks (read, window, resize); one builder either
keeps them in memory or writes them to an on-disk cache (`.npy` files keyed by a hash of the
source files and the settings) that is memory-mapped back, so a collection larger than memory
is read once and then streamed with bounded memory. No pickle anywhere.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine import safeio
from engine.errors import DataError, DicomReadError

CACHE_VERSION = 1  # bump when the preprocessing code changes what a cached image holds
CHUNK = 512  # at most this many images per chunk streamed from a source to the builder
CHUNK_BYTES = 1 << 20  # and at most about this many bytes: the streaming memory bound


@dataclass
class Dataset:
    """Images and labels of one source.

    images: float32 (n, c, h, w), possibly a read-only np.memmap; labels: int64 (n,) indices into
    `classes`; groups: (n,) str patient ids (no patient may be on both sides of a split); paths:
    n source references (file path, "file#frame", or "file:index"); skipped: (path, reason) for
    files left out with on_error="skip"; info: source, settings, cache key, pixel mean and std;
    preprocessing: what `load_images` needs to prepare new images the same way (JSON-able).
    """

    images: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    paths: list[str]
    classes: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    preprocessing: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return (
            f"Dataset(n={len(self)}, shape={tuple(self.images.shape[1:])}, classes={self.classes}, "
            f"patients={len(np.unique(self.groups))}, skipped={len(self.skipped)})"
        )

    @classmethod
    def from_arrays(cls, images, labels, groups=None, classes=None) -> Dataset:
        """Wrap in-memory arrays; groups default to one group per image."""
        images = np.asarray(images, dtype=np.float32)
        labels = np.asarray(labels, dtype=np.int64)
        if images.ndim != 4 or len(images) != len(labels):
            raise DataError(
                f"need images (n, c, h, w) and labels (n,), got {images.shape}, {labels.shape}"
            )
        n = len(labels)
        groups = np.asarray([str(i) for i in range(n)] if groups is None else groups).astype(str)
        classes = classes or [str(i) for i in range(int(labels.max()) + 1 if n else 0)]
        return cls(images, labels, groups, [str(i) for i in range(n)], list(classes))


# ----------------------------------------------------------------------------- sources -> chunks
# A source is (description for the cache key, classes, iterator of chunks). A chunk is
# (images float32 (k, c, h, w), labels int64 (k,), groups list[str], paths list[str]).


def _to_nchw(image: np.ndarray, channels: int) -> np.ndarray:
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


def _numeric_sort(values) -> list[str]:
    """Class names sorted numerically when all are integers, else as text."""
    values = sorted(set(values))
    try:
        return [str(v) for v in sorted(values, key=int)]
    except ValueError:
        return values


def _inside(folder: Path, rel: str) -> Path:
    """folder / rel, refusing absolute paths and '..' that would leave folder."""
    path = (folder / rel).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise DataError(f"{folder / 'labels.csv'}: path {rel!r} points outside the folder")
    return path


def _read_labels_csv(folder: Path) -> list[dict]:
    """Rows of folder/labels.csv with 'label' and 'path' or 'sop_instance_uid' columns."""
    path = folder / "labels.csv"
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = {k.strip().lower(): k for k in reader.fieldnames or []}
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from exc
    key = (
        "path"
        if "path" in fields
        else (
            "sop_instance_uid"
            if "sop_instance_uid" in fields
            else "sopinstanceuid"
            if "sopinstanceuid" in fields
            else None
        )
    )
    if "label" not in fields or key is None:
        raise DataError(
            f"{path}: needs a 'label' column and a 'path' or 'sop_instance_uid' column, "
            f"found {list(fields.values())}"
        )
    out = []
    for i, row in enumerate(rows, start=2):
        ref, label = (row.get(fields[key]) or "").strip(), (row.get(fields["label"]) or "").strip()
        if not ref or not label:
            raise DataError(f"{path}: line {i} has an empty {key} or label")
        pid = (row.get(fields.get("patient_id", ""), "") or "").strip() or None
        out.append({"key": key, "ref": ref, "label": label, "patient_id": pid})
    if not out:
        raise DataError(f"{path}: no rows")
    return out


def _file_stamp(paths: list[Path], root: Path) -> list:
    """(relative path, size, mtime_ns) per file: the cache key's view of the source files."""
    out = []
    for p in paths:
        st = os.stat(p)
        out.append([os.path.relpath(p, root), st.st_size, st.st_mtime_ns])
    return out


def _dicom_source(
    folder: Path, *, window, channels, input_size, method, on_error, max_pixels, skipped: list
) -> tuple[dict, list[str], Iterator]:
    """A DICOM folder with labels.csv (path or SOPInstanceUID) or with one sub-folder per class."""
    from engine.data.dicom import list_files, read_image

    if (folder / "labels.csv").is_file():
        rows = _read_labels_csv(folder)
        classes = _numeric_sort(r["label"] for r in rows)
        if rows[0]["key"] == "path":
            items = [(_inside(folder, r["ref"]), r["label"], r["patient_id"], None) for r in rows]
        else:  # match by SOPInstanceUID: every file in the folder is a candidate
            by_uid = {r["ref"]: r for r in rows}
            items = [(p, None, None, by_uid) for p in list_files(folder)]
        stamp_files = [p for p, *_ in items] + [folder / "labels.csv"]
    else:
        class_dirs = sorted(
            d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")
        )
        if not class_dirs:
            raise DataError(f"{folder}: no labels.csv and no class sub-folders")
        classes = [d.name for d in class_dirs]
        items = [(p, d.name, None, None) for d in class_dirs for p in list_files(d)]
        stamp_files = [p for p, *_ in items]
    if not items:
        raise DataError(f"{folder}: no files")
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
            x = resize(_to_nchw(image, channels), input_size, method)
            refs = [str(path)] if len(x) == 1 else [f"{path}#{i}" for i in range(len(x))]
            buf.append((x, [index[label]] * len(x), [group] * len(x), refs))
            if sum(b[0].nbytes for b in buf) >= CHUNK_BYTES or sum(len(b[0]) for b in buf) >= CHUNK:
                yield _join(buf)
                buf = []
        if buf:
            yield _join(buf)

    return desc, classes, chunks()


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


def _mnist_source(source: Path, *, split, input_size, method, max_bytes) -> tuple:
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


def _medmnist_source(path: Path, *, split, input_size, method, channels, max_bytes) -> tuple:
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
            x = resize(_to_nchw(x, ch) if x.ndim == 4 else _to_nchw(x, ch), input_size, method)
            refs = [f"{path}:{split}:{i}" for i in range(start, start + len(x))]
            yield x, labels[start : start + len(x)], refs, refs

    return desc, classes, chunks()


# ----------------------------------------------------------------------------- chunks -> Dataset


class _NpyWriter:
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


def _cache_key(desc: dict, settings: dict) -> str:
    blob = json.dumps(
        {"version": CACHE_VERSION, "source": desc, "settings": settings},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _load_cached(entry: Path) -> Dataset | None:
    """The Dataset in a finished cache entry, or None if it is missing or inconsistent."""
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
    return Dataset(
        images,
        labels.astype(np.int64),
        groups.astype(str),
        [str(p) for p in paths],
        meta["classes"],
        [tuple(s) for s in meta["skipped"]],
        meta["info"],
    )


def _build(
    chunks: Iterator, classes: list[str], *, normalize, writer: _NpyWriter | None, skipped: list
) -> tuple:
    """Consume chunks -> (images or None, labels, groups, paths, mean, std)."""
    kept, labels, groups, paths = [], [], [], []
    total = total_sq = count = 0.0
    for x, y, g, p in chunks:
        if isinstance(normalize, tuple):
            x = (x - np.float32(normalize[0])) / np.float32(normalize[1])
        flat = x.reshape(-1)
        total += float(flat.sum(dtype=np.float64))
        total_sq += float(np.dot(flat.astype(np.float64), flat))
        count += x.size
        if writer is not None:
            writer.append(x)
        else:
            kept.append(x)
        labels.append(y)
        groups.extend(g)
        paths.extend(p)
    if not labels:
        reasons = "; ".join(r for _, r in skipped[:3])
        raise DataError(f"no readable images ({len(skipped)} files skipped: {reasons})")
    mean = total / count
    std = float(np.sqrt(max(total_sq / count - mean**2, 0.0)))
    images = None if writer is not None else np.concatenate(kept)
    return (
        images,
        np.concatenate(labels).astype(np.int64),
        np.asarray(groups, dtype=str),
        paths,
        mean,
        std,
    )


def _standardise_in_place(images: np.ndarray, mean: float, std: float) -> None:
    scale = np.float32(1.0 / std if std > 0 else 1.0)
    for start in range(0, len(images), CHUNK):  # chunk-wise, so a memmap is never loaded whole
        images[start : start + CHUNK] = (images[start : start + CHUNK] - np.float32(mean)) * scale


def load_dataset(
    source: str | os.PathLike,
    *,
    input_size: int = 28,
    window="file",
    split: str = "train",
    resize_method: str = "area",
    channels: int | None = None,
    normalize=None,
    cache_dir: str | os.PathLike | None = None,
    on_error: str = "raise",
    max_pixels: int | None = None,
    max_bytes: int = 4 << 30,
) -> Dataset:
    """Load images from `source` -> Dataset with images float32 (n, c, input_size, input_size).

    source: a DICOM folder with labels.csv (columns label and path or sop_instance_uid, optional
    patient_id), or with one sub-folder per class; an MNIST IDX images file or a folder holding
    train-/t10k-images-idx3-ubyte[.gz] (split "train"/"test"); a MedMNIST .npz (split
    "train"/"val"/"test"). Pixels: DICOM through read_image(window=window) (default "file": the
    file's own window, so values in [0, 1]); 8-bit sources divided by 255. Then resized
    (resize_method, default "area") and optionally normalised: None keeps [0, 1]; "dataset"
    standardises with this dataset's mean/std; (mean, std) applies given statistics (e.g. the
    training set's, stored in info["mean"], info["std"]). channels: 1 or 3 (default: 1 for DICOM,
    the file's for MedMNIST); colour is converted to grey by BT.601 luma, grey repeated to 3.
    cache_dir: preprocessed images are written once to cache_dir/<sha256 key>/ and memory-mapped;
    the key covers file names, sizes, mtimes and every setting above. on_error: "raise" or "skip"
    unreadable DICOM files (listed in Dataset.skipped).
    """
    from engine.data.dicom import DEFAULT_MAX_PIXELS
    from engine.data.transforms import RESIZE_METHODS

    source = Path(source)
    if not source.exists():
        raise DataError(f"{source}: no such file or folder")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if resize_method not in RESIZE_METHODS:
        raise ValueError(f"resize_method must be one of {RESIZE_METHODS}, got {resize_method!r}")
    if not (
        normalize is None
        or normalize == "dataset"
        or (isinstance(normalize, tuple) and len(normalize) == 2)
    ):
        raise ValueError(f"normalize must be None, 'dataset' or (mean, std), got {normalize!r}")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be None, 1 or 3, got {channels!r}")
    if int(input_size) < 4:
        raise ValueError(f"input_size must be >= 4, got {input_size}")
    skipped: list[tuple[str, str]] = []
    kw = {"input_size": int(input_size), "method": resize_method}
    if (
        source.is_dir()
        and not (source / "labels.csv").exists()
        and any(source.glob("*-images*idx3*"))
    ):
        desc, classes, chunks = _mnist_source(source, split=split, max_bytes=max_bytes, **kw)
    elif source.is_dir():
        desc, classes, chunks = _dicom_source(
            source,
            window=window,
            channels=channels or 1,
            on_error=on_error,
            max_pixels=max_pixels or DEFAULT_MAX_PIXELS,
            skipped=skipped,
            **kw,
        )
    elif source.name == "labels.csv":
        return load_dataset(
            source.parent,
            input_size=input_size,
            window=window,
            split=split,
            resize_method=resize_method,
            channels=channels,
            normalize=normalize,
            cache_dir=cache_dir,
            on_error=on_error,
            max_pixels=max_pixels,
            max_bytes=max_bytes,
        )
    elif source.suffix == ".npz":
        desc, classes, chunks = _medmnist_source(
            source, split=split, channels=channels, max_bytes=max_bytes, **kw
        )
    elif "idx" in source.name or source.suffix in (".idx", ".gz"):
        desc, classes, chunks = _mnist_source(source, split=split, max_bytes=max_bytes, **kw)
    else:
        raise DataError(f"{source}: not a DICOM folder, IDX file or MedMNIST .npz")
    settings = {**kw, "normalize": normalize, "on_error": on_error}
    info = {"source": str(source), **settings, "window": window, "split": split}
    if cache_dir is None:
        images, labels, groups, paths, mean, std = _build(
            chunks, classes, normalize=normalize, writer=None, skipped=skipped
        )
        if normalize == "dataset":
            _standardise_in_place(images, mean, std)
        info.update(mean=mean, std=std)
        ds = Dataset(images, labels, groups, paths, classes, skipped, info)
    else:
        key = _cache_key(desc, settings)
        ds = _cached(Path(cache_dir), key, chunks, classes, normalize, skipped, info)
    ds.preprocessing = _preprocessing(ds, desc["kind"], window, resize_method, normalize)
    return ds


def _preprocessing(ds: Dataset, kind: str, window, method: str, normalize) -> dict:
    """The recipe for new images: window, resize, channels and the (mean, std) actually applied."""
    if normalize == "dataset":
        stats = [ds.info["mean"], ds.info["std"]]
    else:
        stats = list(normalize) if isinstance(normalize, tuple) else None
    return {
        "source_kind": kind,
        "input_size": int(ds.images.shape[-1]),
        "in_channels": int(ds.images.shape[1]),
        "window": window,
        "resize_method": method,
        "normalize": stats,
    }


def load_images(
    inputs,
    *,
    input_size: int = 28,
    preprocessing: dict | None = None,
    max_pixels: int | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Unlabelled DICOM files or folders -> (images float32 (n, c, s, s), paths), prepared by the
    recipe a Dataset recorded in `.preprocessing` (window, resize, channels, normalisation).

    Folders are searched recursively; a multi-frame file gives one image per frame
    ("file#frame" in paths). An unreadable file raises DicomReadError naming it.
    """
    from engine.data.dicom import DEFAULT_MAX_PIXELS, list_files, read_image
    from engine.data.transforms import resize

    recipe = preprocessing or {}
    window = recipe.get("window", "file")
    window = tuple(window) if isinstance(window, list) else window
    method = recipe.get("resize_method", "area")
    channels = int(recipe.get("in_channels", recipe.get("channels", 1)))
    size = int(recipe.get("input_size", input_size))
    files: list[Path] = []
    for item in [inputs] if isinstance(inputs, str | os.PathLike) else inputs:
        item = Path(item)
        files.extend(list_files(item) if item.is_dir() else [item])
    if not files:
        raise DataError(f"no image files in {inputs}")
    images, paths = [], []
    for path in files:
        image, _ = read_image(path, window=window, max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
        x = resize(_to_nchw(image, channels), size, method)
        images.append(x)
        paths.extend([str(path)] if len(x) == 1 else [f"{path}#{i}" for i in range(len(x))])
    out = np.concatenate(images)
    stats = recipe.get("normalize")
    if stats:
        out = (out - np.float32(stats[0])) / np.float32(stats[1] if stats[1] > 0 else 1.0)
    return out.astype(np.float32), paths


def _cached(cache_dir: Path, key: str, chunks, classes, normalize, skipped, info) -> Dataset:
    """Load the cache entry `key`, building it first (in a temporary folder, then renamed into
    place, so a reader never sees a half-written entry) when it does not exist."""
    entry = cache_dir / key
    found = _load_cached(entry)
    if found is not None:
        chunks.close()
        return found
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:12]}-", dir=cache_dir))
    try:
        writer = _NpyWriter(tmp / "images.npy")
        try:
            _, labels, groups, paths, mean, std = _build(
                chunks, classes, normalize=normalize, writer=writer, skipped=skipped
            )
        finally:
            writer.close()
        if normalize == "dataset":
            images = np.load(tmp / "images.npy", mmap_mode="r+", allow_pickle=False)
            _standardise_in_place(images, mean, std)
            images.flush()
            del images
        np.save(tmp / "labels.npy", labels, allow_pickle=False)
        np.save(tmp / "groups.npy", groups, allow_pickle=False)
        np.save(tmp / "paths.npy", np.asarray(paths, dtype=str), allow_pickle=False)
        info = {**info, "mean": mean, "std": std, "cache_key": key}
        meta = {"n": len(labels), "classes": classes, "skipped": skipped, "info": info}
        (tmp / "meta.json").write_text(json.dumps(meta, default=str))  # written last: the marker
        try:
            os.replace(tmp, entry)
        except OSError:  # another process finished the same entry first: use theirs
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    found = _load_cached(entry)
    if found is None:
        raise DataError(f"{entry}: cache entry could not be written")
    return found
