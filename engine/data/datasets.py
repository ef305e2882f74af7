"""Datasets: DICOM folders, MNIST IDX files and MedMNIST .npz archives as float32 NCHW arrays.
Each source (engine.data.sources) streams preprocessed chunks; one builder keeps them in memory or
writes them to the on-disk cache (engine.data.cache), memory-mapped back with bounded memory."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.data import cache
from engine.data.sources import CHUNK, dicom_source, medmnist_source, mnist_source, to_nchw
from engine.errors import DataError


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


# ----------------------------------------------------------------------------- chunks -> Dataset


def _build(
    chunks: Iterator,
    classes: list[str],
    *,
    normalize,
    writer: cache.NpyWriter | None,
    skipped: list,
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
    classes: list[str] | None = None,
    patients=None,
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
    unreadable DICOM files (listed in Dataset.skipped; with "skip" a labels.csv row naming a
    missing file is skipped too). classes: the class names in index order (e.g. a model's), if
    known: every label must be one of them; otherwise labels.csv labels are checked by
    engine.data.labels.resolve_classes (all integers or all text, enough files per class).
    patients: if given, keep only these patients' images (a data-parallel rank's shard): in a
    DICOM folder the other patients' files are never decoded (their patient comes from
    labels.csv's patient_id, else from the header alone); IDX and .npz, single arrays, are read
    whole and filtered. The cache key includes the set.
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
        desc, classes, chunks = mnist_source(source, split=split, max_bytes=max_bytes, **kw)
    elif source.is_dir():
        desc, classes, chunks = dicom_source(
            source,
            window=window,
            channels=channels or 1,
            on_error=on_error,
            max_pixels=max_pixels or DEFAULT_MAX_PIXELS,
            skipped=skipped,
            classes=classes,
            patients=patients,
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
            classes=classes,
            patients=patients,
        )
    elif source.suffix == ".npz":
        desc, classes, chunks = medmnist_source(
            source, split=split, channels=channels, max_bytes=max_bytes, **kw
        )
    elif "idx" in source.name or source.suffix in (".idx", ".gz"):
        desc, classes, chunks = mnist_source(source, split=split, max_bytes=max_bytes, **kw)
    else:
        raise DataError(f"{source}: not a DICOM folder, IDX file or MedMNIST .npz")
    if classes is not None and desc["kind"] != "dicom":
        classes, chunks = _relabel(source, classes, chunks)
    if patients is not None:
        patients = sorted({str(p) for p in patients})
        if desc["kind"] != "dicom":
            chunks = _only(chunks, set(patients))
    settings = {**kw, "normalize": normalize, "on_error": on_error}
    if classes is not None:
        settings["classes"] = list(classes)  # they decide the label indices: part of the key
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
        # the patient filter changes the entry's content: part of the key (not of info)
        key = cache.cache_key(
            desc, settings if patients is None else {**settings, "patients": patients}
        )
        ds = _cached(Path(cache_dir), key, chunks, classes, normalize, skipped, info)
    ds.preprocessing = _preprocessing(ds, desc["kind"], window, resize_method, normalize)
    return ds


def _only(chunks, patients: set[str]) -> Iterator:
    """The rows of each chunk whose group is in `patients` (empty chunks dropped)."""
    for x, y, g, p in chunks:
        keep = [i for i, group in enumerate(g) if str(group) in patients]
        if keep:
            yield x[keep], y[keep], [g[i] for i in keep], [p[i] for i in keep]


def _relabel(source: Path, stated: list[str], chunks) -> tuple[list[str], Iterator]:
    """Map an integer-labelled source (IDX, .npz: class i is named str(i)) onto stated classes."""
    from engine.data.labels import label_text

    stated = [label_text(c) for c in stated]

    def mapped():
        for x, y, g, p in chunks:
            names = [str(int(v)) for v in y]
            bad = next((n for n in names if n not in stated), None)
            if bad is not None:
                raise DataError(f"{source}: label {bad!r} is not one of the classes {stated}")
            yield x, np.array([stated.index(n) for n in names], dtype=np.int64), g, p

    return stated, mapped()


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
        x = resize(to_nchw(image, channels), size, method)
        images.append(x)
        paths.extend([str(path)] if len(x) == 1 else [f"{path}#{i}" for i in range(len(x))])
    out = np.concatenate(images)
    stats = recipe.get("normalize")
    if stats:
        out = (out - np.float32(stats[0])) / np.float32(stats[1] if stats[1] > 0 else 1.0)
    return out.astype(np.float32), paths


def _cached(cache_dir: Path, key: str, chunks, classes, normalize, skipped, info) -> Dataset:
    """Load the cache entry `key`, building it first (engine.data.cache) when it does not exist."""
    found = cache.load_entry(cache_dir / key)
    if found is not None:
        chunks.close()
        return _from_entry(found)
    stats = {}

    def fill(writer: cache.NpyWriter) -> cache.Entry:
        _, labels, groups, paths, mean, std = _build(
            chunks, classes, normalize=normalize, writer=writer, skipped=skipped
        )
        stats.update(mean=mean, std=std)
        return cache.Entry(None, labels, groups, paths, classes, skipped, {**info, **stats})

    def standardise(images: np.ndarray, entry: cache.Entry) -> None:
        _standardise_in_place(images, stats["mean"], stats["std"])

    finish = standardise if normalize == "dataset" else None
    return _from_entry(cache.store_entry(cache_dir, key, fill, finish))


def _from_entry(entry: cache.Entry) -> Dataset:
    return Dataset(
        entry.images,
        entry.labels,
        entry.groups,
        entry.paths,
        entry.classes,
        entry.skipped,
        entry.info,
    )
