"""Segmentation datasets of volumes: a folder of images/ + labels/ or a Medical Segmentation
Decathlon dataset.json; cases read lazily or from a memory-mapped .npy cache, patient ids kept
for engine.data.splits.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine import safeio
from engine.data import cache, splits
from engine.data.volume_transforms import hu_window, resample_to_spacing, zscore
from engine.data.volumes import DEFAULT_MAX_BYTES, case_name, is_nifti, read_pair
from engine.errors import DataError


@dataclass(frozen=True)
class Case:
    """One training pair: image (NIfTI file or DICOM series folder), label (NIfTI or DICOM
    series), and the patient it belongs to (no patient may be on both sides of a split)."""

    image: Path
    label: Path
    patient_id: str


def _volume_entries(folder: Path) -> dict[str, Path]:
    """case name -> path, for the NIfTI files and sub-folders (DICOM series) of `folder`."""
    out = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir() or is_nifti(p):
            out[case_name(p)] = p
    return out


def _from_folder(root: Path, patient_regex: str | None) -> list[Case]:
    images, labels = _volume_entries(root / "images"), _volume_entries(root / "labels")
    if not images:
        raise DataError(f"{root / 'images'}: no NIfTI files or DICOM series folders")
    cases = []
    for name, image in images.items():
        if name not in labels:
            raise DataError(f"{image}: image without a mask (no {root / 'labels' / name}[.nii.gz])")
        patient = name
        if patient_regex is not None:
            m = re.match(patient_regex, name)
            if m is None or not m.groups():
                raise DataError(f"{image}: name does not match patient_regex {patient_regex!r}")
            patient = m.group(1)
        cases.append(Case(image, labels[name], patient))
    extra = sorted(set(labels) - set(images))
    if extra:
        raise DataError(f"{root / 'labels'}: masks without an image: {extra[:5]}")
    return cases


def _from_json(path: Path) -> tuple[list[Case], list[str]]:
    """Cases and class names from an MSD dataset.json (training: [{image, label}], labels)."""
    try:
        desc = json.loads(path.read_text())
        labels = {int(k): str(v) for k, v in desc["labels"].items()}
        training = desc["training"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(
            f"{path}: not an MSD dataset.json with 'labels' and 'training' ({exc})"
        ) from exc
    if sorted(labels) != list(range(len(labels))) or len(labels) < 2:
        raise DataError(f"{path}: labels must be numbered 0..K-1 with K >= 2, got {sorted(labels)}")
    cases = []
    for i, item in enumerate(training):
        if not isinstance(item, dict) or "image" not in item:
            raise DataError(f"{path}: training[{i}] has no 'image'")
        image = (path.parent / item["image"]).resolve()
        if "label" not in item or item["label"] is None:
            raise DataError(f"{image}: image without a mask (training[{i}] of {path})")
        label = (path.parent / item["label"]).resolve()
        for p in (image, label):
            if not p.exists():
                raise DataError(f"{p}: listed in {path} (training[{i}]) but missing")
        cases.append(Case(image, label, str(item.get("patient_id", case_name(image)))))
    if not cases:
        raise DataError(f"{path}: no training cases")
    return cases, [labels[k] for k in range(len(labels))]


class VolumeDataset:
    """Image/mask pairs of a segmentation dataset, one case at a time.

    source: a dataset.json (MSD layout), a folder holding one, or a folder with images/ and
    labels/ (same names; NIfTI files or DICOM series folders). ds[i] -> (image float32
    (C, D, H, W), mask int64 (D, H, W)), canonical orientation, after the preprocessing:
    target_spacing (mm, (d, h, w); images trilinear, masks nearest), then window=(center, width)
    (HU to [0, 1]) or normalize="zscore" (per case). Image/mask misalignment or a label >=
    num_classes raises DataError naming the files. cache_dir: each preprocessed case is written
    once as .npy under cache_dir/<sha256 key>/ and memory-mapped back, so the dataset never holds
    every volume in RAM; without it a case is read from its files on each access.
    groups: (n,) str patient ids, from dataset.json's "patient_id", else the case name (or the
    first group of patient_regex matched on it).
    """

    def __init__(
        self,
        source: str | os.PathLike,
        *,
        num_classes: int | None = None,
        target_spacing=None,
        window: tuple[float, float] | None = None,
        normalize: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        patient_regex: str | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ):
        source = Path(source)
        if source.is_dir() and (source / "dataset.json").is_file():
            source = source / "dataset.json"
        if source.is_file() and source.name.endswith(".json"):
            self.cases, self.classes = _from_json(source)
            if num_classes is not None and num_classes != len(self.classes):
                raise DataError(f"{source}: {len(self.classes)} labels, num_classes={num_classes}")
        elif source.is_dir() and (source / "images").is_dir() and (source / "labels").is_dir():
            self.cases = _from_folder(source, patient_regex)
            k = num_classes or 2
            self.classes = ["background", "foreground"] if k == 2 else [str(i) for i in range(k)]
        else:
            raise DataError(
                f"{source}: neither a dataset.json nor a folder with images/ and labels/"
            )
        if normalize not in (None, "zscore") or (window is not None and normalize is not None):
            raise DataError(
                f"normalize must be None or 'zscore' (and not with window), got {normalize!r}"
            )
        self.source = source
        self.groups = np.asarray([c.patient_id for c in self.cases], dtype=str)
        self.preprocessing = {
            "target_spacing": None
            if target_spacing is None
            else [float(s) for s in target_spacing],
            "window": None if window is None else [float(w) for w in window],
            "normalize": normalize,
        }
        self.max_bytes = max_bytes
        self._entry = None if cache_dir is None else self._build_cache(Path(cache_dir))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.cases)

    def __repr__(self) -> str:
        return (
            f"VolumeDataset(n={len(self)}, classes={self.classes}, "
            f"patients={len(np.unique(self.groups))}, cached={self._entry is not None})"
        )

    def load_case(self, i: int) -> tuple[np.ndarray, np.ndarray, dict]:
        """Read and preprocess case i from its files -> (image (C,D,H,W), mask (D,H,W), meta);
        meta["affine"] and meta["spacing"] describe the preprocessed arrays."""
        c = self.cases[i]
        image, mask, meta = read_pair(
            c.image, c.label, num_classes=self.num_classes, max_bytes=self.max_bytes
        )
        image = image[None] if image.ndim == 3 else image
        p = self.preprocessing
        if p["target_spacing"] is not None:
            affine = meta["affine"]
            image, meta["affine"] = resample_to_spacing(
                image, affine, meta["spacing"], p["target_spacing"]
            )
            mask, _ = resample_to_spacing(
                mask, affine, meta["spacing"], p["target_spacing"], order=0
            )
            meta["spacing"] = tuple(
                float(s) for s in np.linalg.norm(meta["affine"][:3, :3], axis=0)
            )
        if p["window"] is not None:
            image = hu_window(image, *p["window"])
        elif p["normalize"] == "zscore":
            image = zscore(image)
        return image.astype(np.float32, copy=False), mask, {**meta, "patient_id": c.patient_id}

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if self._entry is None:
            image, mask, _ = self.load_case(i)
            return image, mask
        folder, _ = self._entry
        image = safeio.load_npy(
            folder / f"{i:05d}_image.npy", mmap=True, error=DataError, max_bytes=1 << 40
        )
        mask = safeio.load_npy(
            folder / f"{i:05d}_mask.npy", mmap=True, error=DataError, max_bytes=1 << 40
        )
        return image, np.asarray(mask, dtype=np.int64)

    def meta(self, i: int) -> dict:
        """Spacing, affine (of the preprocessed arrays), paths and patient id of case i."""
        if self._entry is None:
            return self.load_case(i)[2]
        m = dict(self._entry[1][i])
        m["affine"] = np.asarray(m["affine"])
        m["spacing"] = tuple(m["spacing"])
        return m

    # ------------------------------------------------------------------------- splits

    def holdout_split(
        self, val_fraction: float = 0.2, seed: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """-> (train_idx, val_idx) by patient, via engine.data.splits.holdout_split."""
        return splits.holdout_split(
            np.zeros(len(self), dtype=np.int64), self.groups, val_fraction, seed
        )

    def kfold(self, k: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
        """-> k (train_idx, test_idx) folds by patient, via splits.stratified_group_kfold."""
        return splits.stratified_group_kfold(
            np.zeros(len(self), dtype=np.int64), self.groups, k, seed
        )

    # ------------------------------------------------------------------------- cache

    def _describe(self) -> dict:
        """File names, sizes and mtimes of every input (DICOM folders: every file): the cache key."""
        files = []
        for c in self.cases:
            for p in (c.image, c.label):
                for f in sorted(p.iterdir()) if p.is_dir() else [p]:
                    st = f.stat()
                    files.append([str(f), st.st_size, st.st_mtime_ns])
        return {"kind": "volumes", "files": files, "patients": self.groups.tolist()}

    def _build_cache(self, cache_dir: Path):
        settings = {**self.preprocessing, "classes": self.classes}
        key = cache.cache_key(self._describe(), settings)
        entry = cache_dir / key
        found = self._load_entry(entry)
        if found is not None:
            return found

        def build(tmp: Path) -> None:
            metas = []
            for i in range(len(self)):  # one case in memory at a time
                image, mask, meta = self.load_case(i)
                np.save(tmp / f"{i:05d}_image.npy", image, allow_pickle=False)
                small = np.uint8 if mask.max(initial=0) <= 255 else np.int16
                np.save(tmp / f"{i:05d}_mask.npy", mask.astype(small), allow_pickle=False)
                metas.append({**meta, "affine": meta["affine"].tolist()})
            (tmp / "meta.json").write_text(json.dumps({"n": len(self), "cases": metas}))  # last

        cache.publish_entry(cache_dir, key, build)
        found = self._load_entry(entry)
        if found is None:
            raise DataError(f"{entry}: cache entry could not be written")
        return found

    def _load_entry(self, entry: Path):
        meta_path = entry / "meta.json"
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            missing = [i for i in range(meta["n"]) if not (entry / f"{i:05d}_mask.npy").is_file()]
            if meta["n"] != len(self) or missing:
                raise DataError(f"{entry}: {len(missing)} cases missing")
        except (DataError, ValueError, KeyError, OSError) as exc:
            warnings.warn(f"cache entry {entry} is unreadable ({exc}); rebuilding it", stacklevel=3)
            shutil.rmtree(entry, ignore_errors=True)
            return None
        return entry, meta["cases"]
