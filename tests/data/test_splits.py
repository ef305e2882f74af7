"""engine.data.splits: grouped hold-out and stratified k-fold never put a patient on both sides."""

from __future__ import annotations

import numpy as np
import pytest

from engine.data.splits import holdout_split, stratified_group_kfold
from engine.errors import DataError


def _cohort(seed=0, n_patients=40):
    """Patients with 3-30 images each and a patient-dependent lesion rate."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(3, 31, n_patients)
    groups = np.repeat([f"P{i:03d}" for i in range(n_patients)], sizes)
    rate = np.repeat(rng.uniform(0.1, 0.9, n_patients), sizes)
    labels = (rng.random(len(groups)) < rate).astype(np.int64)
    return labels, groups


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_holdout_split_no_leak_and_stratified(seed):
    labels, groups = _cohort(seed)
    train, val = holdout_split(labels, groups, val_fraction=0.25, seed=seed)
    assert set(groups[train]).isdisjoint(groups[val])
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(len(labels)))
    assert 0.2 < len(val) / len(labels) < 0.3
    assert abs(labels[val].mean() - labels.mean()) < 0.05
    again = holdout_split(labels, groups, val_fraction=0.25, seed=seed)
    assert np.array_equal(again[1], val)  # a pure function of the seed


def test_kfold_no_leak_every_sample_tested_once():
    labels, groups = _cohort(3)
    folds = stratified_group_kfold(labels, groups, k=5, seed=0)
    assert len(folds) == 5
    tested = np.concatenate([test for _, test in folds])
    assert np.array_equal(np.sort(tested), np.arange(len(labels)))
    for train, test in folds:
        assert set(groups[train]).isdisjoint(groups[test])
        assert len(train) + len(test) == len(labels)
        assert abs(labels[test].mean() - labels.mean()) < 0.08
        assert 0.12 < len(test) / len(labels) < 0.28


def test_splits_on_the_demo_dataset(demo_dir):
    from engine.data.datasets import load_dataset

    ds = load_dataset(demo_dir, input_size=16)
    train, val = holdout_split(ds.labels, ds.groups, 0.34, seed=0)
    assert set(ds.groups[train]).isdisjoint(ds.groups[val]) and len(val) > 0
    for train, test in stratified_group_kfold(ds.labels, ds.groups, k=3):
        assert set(ds.groups[train]).isdisjoint(ds.groups[test])


def test_split_errors():
    labels, groups = np.array([0, 1, 0, 1]), np.array(["a", "a", "b", "b"])
    with pytest.raises(DataError, match="at least 3 patients"):
        stratified_group_kfold(labels, groups, k=3)
    with pytest.raises(DataError, match="at least 2 patients"):
        holdout_split(labels, np.array(["a"] * 4))
    with pytest.raises(DataError, match="val_fraction"):
        holdout_split(labels, groups, val_fraction=1.0)
    with pytest.raises(DataError, match="same length"):
        holdout_split(labels, groups[:3])
    with pytest.raises(DataError, match="k >= 2"):
        stratified_group_kfold(labels, groups, k=1)
