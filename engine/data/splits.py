"""Patient-level splits: hold-out and stratified k-fold, grouped so no patient is on both sides.

Groups (patients) are assigned whole to a bin (train/val, or a fold), greedily, largest first,
each to the bin where it moves the per-class counts closest to their targets. NumPy only.
"""

from __future__ import annotations

import numpy as np

from engine.errors import DataError


def _check(labels, groups) -> tuple[np.ndarray, np.ndarray]:
    labels, groups = np.asarray(labels), np.asarray(groups)
    if labels.ndim != 1 or groups.shape != labels.shape:
        raise DataError(
            f"labels and groups must be 1-D and the same length, got {labels.shape} and {groups.shape}"
        )
    if len(labels) == 0:
        raise DataError("cannot split an empty dataset")
    return labels, groups


def _assign(
    labels: np.ndarray, groups: np.ndarray, fractions: list[float], seed: int
) -> np.ndarray:
    """-> bin index (int64 (n,)) per sample; every sample of a group shares one bin.

    Targets: bin b should hold fractions[b] of each class. Groups, numbered by first appearance,
    are visited in a seeded random order, stably re-sorted by size (largest first, as in bin
    packing), and each goes to the bin with the smallest increase in squared distance to its
    per-class target (ties: the emptier bin relative to its share, then the lower index).
    """
    # Groups are numbered in order of first appearance, not by name: the split must not depend
    # on what patients are called, so a copy with pseudonymized ids splits the same way.
    group_ids, first, group_of = np.unique(groups, return_index=True, return_inverse=True)
    rank = np.empty(len(group_ids), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(group_ids))
    group_of = rank[group_of.reshape(-1)]
    classes, class_of = np.unique(labels, return_inverse=True)
    counts = np.zeros((len(group_ids), len(classes)))  # counts[g, c]: samples of class c in g
    np.add.at(counts, (group_of, class_of), 1)
    frac = np.asarray(fractions, dtype=np.float64)
    target = frac[:, None] * counts.sum(axis=0)[None, :]  # (bins, classes)
    filled = np.zeros_like(target)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(group_ids))
    order = order[np.argsort(-counts[order].sum(axis=1), kind="stable")]
    bin_of_group = np.empty(len(group_ids), dtype=np.int64)
    for g in order:
        after = filled + counts[g]
        cost = ((after - target) ** 2).sum(axis=1) - ((filled - target) ** 2).sum(axis=1)
        fill_ratio = filled.sum(axis=1) / np.maximum(frac * counts.sum(), 1e-12)
        b = min(range(len(frac)), key=lambda k: (round(cost[k], 9), fill_ratio[k], k))
        bin_of_group[g] = b
        filled[b] += counts[g]
    return bin_of_group[group_of]


def holdout_split(
    labels, groups, val_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """-> (train_idx, val_idx) int64 sorted index arrays; no group on both sides.

    labels: (n,) class ids; groups: (n,) patient ids (any hashable dtype). The validation side
    gets about val_fraction of each class, as closely as whole patients allow. Needs >= 2 groups.
    """
    labels, groups = _check(labels, groups)
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise DataError(f"a grouped hold-out split needs at least 2 patients, got {n_groups}")
    bins = _assign(labels, groups, [1.0 - val_fraction, val_fraction], seed)
    train, val = np.flatnonzero(bins == 0), np.flatnonzero(bins == 1)
    if len(val) == 0 or len(train) == 0:
        raise DataError(
            f"val_fraction={val_fraction} with {n_groups} patients leaves one side empty; "
            "change val_fraction or add patients"
        )
    return train, val


def stratified_group_kfold(
    labels, groups, k: int = 5, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """-> k pairs (train_idx, test_idx), int64 sorted; each sample is in exactly one test fold.

    Folds are built from whole patients and stratified by class as well as the patients allow.
    Raises DataError when there are fewer patients than folds or k < 2.
    """
    labels, groups = _check(labels, groups)
    if int(k) != k or k < 2:
        raise DataError(f"k-fold needs an integer k >= 2, got {k}")
    n_groups = len(np.unique(groups))
    if n_groups < k:
        raise DataError(f"{k}-fold cross-validation needs at least {k} patients, got {n_groups}")
    bins = _assign(labels, groups, [1.0 / k] * k, seed)
    folds = []
    for f in range(k):
        test = np.flatnonzero(bins == f)
        if len(test) == 0:  # cannot happen with >= k groups (an empty bin always costs least)
            raise DataError(f"fold {f} came out empty; use fewer folds")
        folds.append((np.flatnonzero(bins != f), test))
    return folds


def shard_by_group(groups, size: int) -> np.ndarray:
    """-> rank (int64 (n,)) per sample for data-parallel training on `size` ranks, by patient.

    Whole patients go to one rank each: numbered by first appearance, visited largest first
    (stable), each to the rank holding the fewest samples so far (ties: the lower rank). The
    result depends only on the group sizes and order, never on the patient names.
    """
    groups = np.asarray(groups)
    if int(size) != size or size < 1:
        raise DataError(f"the number of ranks must be an integer >= 1, got {size}")
    _, first, group_of = np.unique(groups, return_index=True, return_inverse=True)
    order_of = np.empty(len(first), dtype=np.int64)
    order_of[np.argsort(first)] = np.arange(len(first))
    group_of = order_of[group_of.reshape(-1)]
    sizes = np.bincount(group_of, minlength=len(first))
    load = np.zeros(size, dtype=np.int64)
    rank_of_group = np.empty(len(first), dtype=np.int64)
    for g in np.argsort(-sizes, kind="stable"):
        r = int(np.argmin(load))  # argmin returns the lowest index among ties
        rank_of_group[g] = r
        load[r] += sizes[g]
    return rank_of_group[group_of]
