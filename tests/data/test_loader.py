"""engine.data.loader.DataLoader: coverage, determinism, prefetch thread hygiene, errors."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from engine.data.datasets import Dataset
from engine.data.loader import DataLoader
from engine.data.transforms import Augment


def _dataset(n=50, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.random((n, 1, 8, 8)).astype(np.float32)
    images[:, 0, 0, 0] = np.arange(n)  # pixel (0, 0) carries the sample index
    return Dataset.from_arrays(images, np.arange(n) % 3)


def _collect(loader):
    return [(x.copy(), y.copy()) for x, y in loader]


@pytest.mark.parametrize("prefetch", [0, 2])
def test_epoch_covers_every_index_once(prefetch):
    ds = _dataset()
    loader = DataLoader(ds, 16, seed=1, prefetch=prefetch)
    batches = _collect(loader)
    assert len(batches) == len(loader) == 4 and [len(y) for _, y in batches] == [16, 16, 16, 2]
    seen = np.concatenate([x[:, 0, 0, 0] for x, _ in batches]).astype(int)
    assert sorted(seen) == list(range(50))
    for x, y in batches:
        assert x.dtype == np.float32 and y.dtype == np.int64 and x.shape[1:] == (1, 8, 8)
        np.testing.assert_array_equal(y, x[:, 0, 0, 0].astype(int) % 3)  # labels stay with images


def test_order_is_a_function_of_seed_and_epoch():
    ds = _dataset()
    a, b = DataLoader(ds, 10, seed=3), DataLoader(ds, 10, seed=3, prefetch=0)
    first_a, first_b = _collect(a), _collect(b)
    for (xa, ya), (xb, yb) in zip(first_a, first_b, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    second = _collect(a)  # epoch 2 is shuffled differently
    assert not np.array_equal(first_a[0][0], second[0][0])
    a.set_epoch(0)
    np.testing.assert_array_equal(_collect(a)[0][0], first_a[0][0])
    unshuffled = _collect(DataLoader(ds, 10, shuffle=False))
    np.testing.assert_array_equal(unshuffled[0][0][:, 0, 0, 0], np.arange(10))


def test_augmentation_is_deterministic_whatever_the_thread_timing():
    ds = _dataset()
    aug = Augment(scale=(0.8, 1.2), rotate=30, flip=True, intensity=0.2)

    def slow_aug(batch, rng):  # uneven delays shuffle the thread interleaving
        time.sleep(0.002 * (int(batch[0, 0, 0, 0]) % 3))
        return aug(batch, rng)

    runs = [_collect(DataLoader(ds, 8, seed=5, augment=slow_aug, prefetch=p)) for p in (0, 1, 4)]
    for other in runs[1:]:
        for (x0, _), (x1, _) in zip(runs[0], other, strict=True):
            np.testing.assert_array_equal(x0, x1)
    plain = _collect(DataLoader(ds, 8, seed=5))
    assert not np.allclose(runs[0][0][0], plain[0][0])


def test_indices_and_drop_last():
    ds = _dataset()
    idx = np.arange(0, 50, 2)
    loader = DataLoader(ds, 10, indices=idx, drop_last=True)
    batches = _collect(loader)
    assert len(batches) == len(loader) == 2
    seen = np.concatenate([x[:, 0, 0, 0] for x, _ in batches]).astype(int)
    assert set(seen) <= set(idx) and len(seen) == 20


def test_producer_exception_reaches_the_consumer():
    def broken(batch, rng):
        if batch[0, 0, 0, 0] >= 0:
            raise RuntimeError("augmentation failed")
        return batch

    loader = DataLoader(_dataset(), 8, augment=broken, prefetch=2)
    before = threading.active_count()
    with pytest.raises(RuntimeError, match="augmentation failed"):
        _collect(loader)
    time.sleep(0.2)
    assert threading.active_count() == before


def test_early_stop_leaves_no_thread_behind():
    before = threading.active_count()
    loader = DataLoader(_dataset(200), 4, prefetch=2)
    for _ in range(3):
        iterator = iter(loader)
        next(iterator)
        iterator.close()  # what a `break` does once the generator is dropped
    time.sleep(0.2)
    assert threading.active_count() == before
    assert loader.epoch == 0  # an unfinished epoch does not count


def test_loader_over_a_memory_mapped_cache(demo_dir, tmp_path):
    from engine.data.datasets import load_dataset

    ds = load_dataset(demo_dir, input_size=16, cache_dir=tmp_path)
    assert isinstance(ds.images, np.memmap)
    xs = [x for x, _ in DataLoader(ds, 7, seed=0)]
    assert sum(len(x) for x in xs) == len(ds) and not isinstance(xs[0], np.memmap)
    total = sorted(float(x.sum()) for x in np.concatenate(xs))
    assert np.allclose(total, sorted(float(x.sum()) for x in np.asarray(ds.images)), rtol=1e-5)


def test_loader_argument_errors():
    from engine.errors import DataError

    ds = _dataset()
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(ds, 0)
    with pytest.raises(DataError, match="indices"):
        DataLoader(ds, 4, indices=[0, 50])
    with pytest.raises(DataError, match="images"):
        DataLoader((np.zeros((3, 8, 8)), np.zeros(3)), 2)
