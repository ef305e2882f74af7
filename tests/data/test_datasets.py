"""engine.data.datasets: every source format, labels, bad files, and the on-disk cache."""

from __future__ import annotations

import csv
import gzip
import os
import shutil
import struct
import tracemalloc

import numpy as np
import pytest

from engine.data.datasets import Dataset, load_dataset, load_images
from engine.errors import DataError, DicomReadError

from .conftest import write_ct


def _csv_labels(folder):
    with open(folder / "labels.csv", newline="") as f:
        return {r["path"]: int(r["label"]) for r in csv.DictReader(f)}


def test_dicom_folder_with_labels_csv(demo_dir):
    ds = load_dataset(demo_dir, input_size=20)
    assert isinstance(ds, Dataset) and len(ds) == 36
    assert ds.images.shape == (36, 1, 20, 20) and ds.images.dtype == np.float32
    assert ds.labels.dtype == np.int64 and ds.classes == ["0", "1"]
    assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0  # the file's lung window
    expected = _csv_labels(demo_dir)
    for path, label in zip(ds.paths, ds.labels, strict=True):
        assert expected[os.path.relpath(path, demo_dir)] == label
    assert len(set(ds.groups)) == 6
    assert ds.preprocessing["window"] == "file" and ds.preprocessing["input_size"] == 20


def test_labels_by_sop_instance_uid_and_class_folders(demo_dir, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    by_path = load_dataset(demo_dir, input_size=16)
    uid_dir = tmp_path / "uid"
    shutil.copytree(demo_dir, uid_dir)
    with open(uid_dir / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sop_instance_uid", "label"])
        for path, label in _csv_labels(demo_dir).items():
            ds = pydicom.dcmread(demo_dir / path, stop_before_pixels=True)
            w.writerow([ds.SOPInstanceUID, ["normal", "nodule"][label]])
    by_uid = load_dataset(uid_dir, input_size=16)
    assert by_uid.classes == ["nodule", "normal"]
    where = {os.path.relpath(p, uid_dir): i for i, p in enumerate(by_uid.paths)}
    order = [where[os.path.relpath(p, demo_dir)] for p in by_path.paths]
    np.testing.assert_array_equal(by_uid.images[order], by_path.images)  # same files, same pixels
    assert [by_uid.classes[i] for i in by_uid.labels[order]] == [
        ["normal", "nodule"][i] for i in by_path.labels
    ]
    assert set(by_uid.groups) == set(by_path.groups)  # PatientID from the headers

    classes_dir = tmp_path / "classes"
    for path, label in _csv_labels(demo_dir).items():
        target = classes_dir / ["healthy", "lesion"][label] / path.replace("/", "_")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(demo_dir / path, target)
    by_folder = load_dataset(classes_dir, input_size=16)
    assert by_folder.classes == ["healthy", "lesion"] and len(by_folder) == 36
    assert by_folder.labels.sum() == by_path.labels.sum()


def test_bad_files_raise_or_are_skipped(demo_dir, tmp_path):
    folder = tmp_path / "bad"
    shutil.copytree(demo_dir, folder)
    victim = sorted(_csv_labels(demo_dir))[3]
    data = (folder / victim).read_bytes()
    (folder / victim).write_bytes(data[: len(data) // 2])
    with pytest.raises(DicomReadError, match=victim.split("/")[-1]):
        load_dataset(folder)
    ds = load_dataset(folder, on_error="skip")
    assert len(ds) == 35 and len(ds.skipped) == 1 and victim in ds.skipped[0][0]
    (folder / "labels.csv").write_text("path,label\n../../etc/passwd,1\n")
    with pytest.raises(DataError, match="outside"):
        load_dataset(folder)
    (folder / "labels.csv").write_text("file,diagnosis\na,1\n")
    with pytest.raises(DataError, match="'label' column"):
        load_dataset(folder)
    with pytest.raises(DataError, match="no such"):
        load_dataset(tmp_path / "nowhere")


def _write_idx(path, array, gz=False):
    codes = {np.uint8: 0x08, np.int32: 0x0C}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    body = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    (gzip.open if gz else open)(path, "wb").write(body) if False else None
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(body)
    else:
        path.write_bytes(body)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx(tmp_path, rng, gz):
    images = rng.integers(0, 256, (70, 28, 28)).astype(np.uint8)
    labels = rng.integers(0, 10, 70).astype(np.uint8)
    suffix = ".gz" if gz else ""
    _write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images, gz)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels, gz)
    ds = load_dataset(tmp_path)  # the folder, split "train"
    np.testing.assert_allclose(ds.images[:, 0], images / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.labels, labels)
    direct = load_dataset(tmp_path / f"train-images-idx3-ubyte{suffix}", input_size=14)
    assert direct.images.shape == (70, 1, 14, 14)
    with pytest.raises(DataError, match="t10k"):
        load_dataset(tmp_path, split="test")


def test_mnist_idx_rejects_malformed(tmp_path, rng):
    images = rng.integers(0, 256, (10, 28, 28)).astype(np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte", images)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(10, np.uint8))
    data = (tmp_path / "train-images-idx3-ubyte").read_bytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(data[:-100])
    with pytest.raises(DataError, match="truncated"):
        load_dataset(tmp_path)
    hostile = bytearray(data[:16])
    hostile[4:8] = struct.pack(">I", 2**31)  # 2**31 images of 28 x 28 claimed in a 16-byte file
    (tmp_path / "train-images-idx3-ubyte").write_bytes(bytes(hostile))
    with pytest.raises(DataError, match="over"):
        load_dataset(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"not an idx file at all")
    with pytest.raises(DataError, match="not an IDX"):
        load_dataset(tmp_path)


def test_medmnist_npz(tmp_path, rng):
    arrays = {
        f"{s}_images": rng.integers(0, 256, (n, 28, 28, 3)).astype(np.uint8)
        for s, n in [("train", 30), ("val", 10), ("test", 12)]
    }
    arrays.update(
        {
            f"{s}_labels": rng.integers(0, 4, (len(arrays[f"{s}_images"]), 1))
            for s in ["train", "val", "test"]
        }
    )
    np.savez(tmp_path / "bloodmnist.npz", **arrays)
    ds = load_dataset(tmp_path / "bloodmnist.npz", split="val")
    assert ds.images.shape == (10, 3, 28, 28)
    np.testing.assert_allclose(
        ds.images, np.moveaxis(arrays["val_images"], -1, 1) / 255.0, rtol=1e-6
    )
    np.testing.assert_array_equal(ds.labels, arrays["val_labels"][:, 0])
    grey = load_dataset(tmp_path / "bloodmnist.npz", split="test", channels=1, input_size=32)
    assert grey.images.shape == (12, 1, 32, 32)
    np.savez(
        tmp_path / "chest.npz", train_images=arrays["train_images"], train_labels=np.zeros((30, 14))
    )
    with pytest.raises(DataError, match="multi-label"):
        load_dataset(tmp_path / "chest.npz")
    np.savez(
        tmp_path / "obj.npz",
        train_images=np.array([None, 1], dtype=object),
        train_labels=np.zeros(2),
    )
    with pytest.raises(DataError, match="pickle"):
        load_dataset(tmp_path / "obj.npz")


def test_normalize_options(demo_dir):
    ds = load_dataset(demo_dir, input_size=16, normalize="dataset")
    assert abs(float(ds.images.mean())) < 1e-4 and abs(float(ds.images.std()) - 1) < 1e-3
    given = load_dataset(demo_dir, input_size=16, normalize=(0.5, 0.25))
    raw = load_dataset(demo_dir, input_size=16)
    np.testing.assert_allclose(given.images, (raw.images - 0.5) / 0.25, atol=1e-5)
    images, paths = load_images([demo_dir / "patient_00"], preprocessing=ds.preprocessing)
    assert images.shape == (6, 1, 16, 16) and len(paths) == 6
    index = {p: i for i, p in enumerate(ds.paths)}
    np.testing.assert_allclose(images, ds.images[[index[p] for p in paths]], atol=1e-5)


# ----------------------------------------------------------------------------- cache, streaming


def test_cache_is_reused_and_keyed_by_settings_and_files(demo_dir, tmp_path):
    cache = tmp_path / "cache"
    first = load_dataset(demo_dir, input_size=16, cache_dir=cache)
    assert isinstance(first.images, np.memmap) and not first.images.flags.writeable
    entries = [p.name for p in cache.iterdir()]
    assert len(entries) == 1 and len(entries[0]) == 64
    again = load_dataset(demo_dir, input_size=16, cache_dir=cache)
    np.testing.assert_array_equal(again.images, first.images)
    assert again.info["cache_key"] == entries[0] == first.info["cache_key"]
    np.testing.assert_array_equal(again.images, load_dataset(demo_dir, input_size=16).images)
    load_dataset(demo_dir, input_size=12, cache_dir=cache)  # another setting, another entry
    load_dataset(demo_dir, input_size=16, window="lung", cache_dir=cache)
    assert len(list(cache.iterdir())) == 3
    copy = tmp_path / "copy"
    shutil.copytree(demo_dir, copy)
    load_dataset(copy, input_size=16, cache_dir=cache)
    touched = next(copy.rglob("*.dcm"))
    os.utime(touched, ns=(1, 1))  # a changed file (mtime) must not reuse the old entry
    load_dataset(copy, input_size=16, cache_dir=cache)
    assert len(list(cache.iterdir())) == 5
    assert not any(p.name.startswith(".tmp") for p in cache.iterdir())


def test_corrupt_cache_entry_is_rebuilt(demo_dir, tmp_path):
    ds = load_dataset(demo_dir, input_size=16, cache_dir=tmp_path)
    entry = tmp_path / ds.info["cache_key"]
    expected = np.array(ds.images)
    del ds
    (entry / "images.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.warns(UserWarning, match="rebuilding"):
        rebuilt = load_dataset(demo_dir, input_size=16, cache_dir=tmp_path)
    np.testing.assert_array_equal(rebuilt.images, expected)


def _peak_building_cache(folder, cache):
    tracemalloc.start()
    try:
        ds = load_dataset(folder, input_size=64, cache_dir=cache)
        for start in range(0, len(ds), 32):  # one pass over the memory-mapped images
            np.asarray(ds.images[start : start + 32]).sum()
        return tracemalloc.get_traced_memory()[1], len(ds)
    finally:
        tracemalloc.stop()


def _folder_of_copies(folder, n, template):
    folder.mkdir()
    with open(folder / "labels.csv", "w") as f:
        f.write("path,label,patient_id\n")
        for i in range(n):
            shutil.copy(template, folder / f"{i:04d}.dcm")
            f.write(f"{i:04d}.dcm,{i % 2},P{i // 10}\n")
    return folder


def test_cache_build_memory_does_not_grow_with_file_count(tmp_path):
    """Python-heap peak while building the cache and reading it back once, for 100 and 300
    files of 64 x 64 output: held in memory, the images alone would take 3.1 MiB more for the
    larger set; streamed, the peak grows only by per-file bookkeeping (paths, labels, groups)."""
    template = write_ct(tmp_path / "t.dcm", np.random.default_rng(0).integers(0, 4096, (64, 64)))
    peak_small, n_small = _peak_building_cache(
        _folder_of_copies(tmp_path / "s", 100, template), tmp_path / "c1"
    )
    peak_large, n_large = _peak_building_cache(
        _folder_of_copies(tmp_path / "l", 300, template), tmp_path / "c2"
    )
    assert (n_small, n_large) == (100, 300)
    growth = peak_large - peak_small
    assert growth < 1 << 20, f"peak grew by {growth / 2**20:.2f} MiB for 200 more files"


def _count_decodes(monkeypatch) -> list[str]:
    """Record the path of every file whose pixel data engine.data.dicom decodes."""
    from engine.data import dicom

    decoded, real = [], dicom._pixels

    def counting(path, *args, **kwargs):
        decoded.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(dicom, "_pixels", counting)
    return decoded


def test_patients_filter_decodes_only_their_files(demo_dir, tmp_path, monkeypatch):
    whole = load_dataset(demo_dir, input_size=16)
    mine = sorted(set(whole.groups))[:2]
    copy = tmp_path / "copy"
    shutil.copytree(demo_dir, copy)
    for path in whole.paths:  # the other patients' files in the copy become unreadable junk
        if whole.groups[whole.paths.index(path)] not in mine:
            (copy / os.path.relpath(path, demo_dir)).write_bytes(b"not dicom" * 40)
    decoded = _count_decodes(monkeypatch)
    part = load_dataset(copy, input_size=16, patients=mine)  # labels.csv has patient_id
    keep = np.isin(whole.groups, mine)
    assert len(decoded) == keep.sum() == len(part) and not part.skipped
    np.testing.assert_array_equal(part.images, whole.images[keep])
    np.testing.assert_array_equal(part.labels, whole.labels[keep])
    assert [os.path.relpath(p, copy) for p in part.paths] == [
        os.path.relpath(p, demo_dir) for p, k in zip(whole.paths, keep, strict=True) if k
    ]


def test_patients_filter_reads_headers_without_patient_id_column(demo_dir, tmp_path, monkeypatch):
    folder = tmp_path / "by_class"  # class sub-folders: the patient is in the header alone
    labels = _csv_labels(demo_dir)
    for rel, label in labels.items():
        target = folder / str(label) / rel.replace(os.sep, "_")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(demo_dir / rel, target)
    whole = load_dataset(folder, input_size=12)
    mine = sorted(set(whole.groups))[-3:]
    decoded = _count_decodes(monkeypatch)
    part = load_dataset(folder, input_size=12, patients=mine)
    keep = np.isin(whole.groups, mine)
    assert sorted(decoded) == sorted(np.asarray(whole.paths)[keep]) and set(part.groups) == set(
        mine
    )
    np.testing.assert_array_equal(part.images, whole.images[keep])


def test_patients_filter_is_part_of_the_cache_key(demo_dir, tmp_path):
    cache = tmp_path / "cache"
    whole = load_dataset(demo_dir, input_size=16, cache_dir=cache)
    groups = sorted(set(whole.groups))
    first = load_dataset(demo_dir, input_size=16, cache_dir=cache, patients=groups[:3])
    second = load_dataset(demo_dir, input_size=16, cache_dir=cache, patients=groups[3:])
    assert len(list(cache.iterdir())) == 3
    assert set(first.groups) == set(groups[:3]) and set(second.groups) == set(groups[3:])
    again = load_dataset(demo_dir, input_size=16, cache_dir=cache, patients=groups[2::-1])
    assert again.info["cache_key"] == first.info["cache_key"]  # a set: the order does not matter
    np.testing.assert_array_equal(again.images, whole.images[np.isin(whole.groups, groups[:3])])
