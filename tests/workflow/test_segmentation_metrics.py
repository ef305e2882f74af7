"""Segmentation metrics (engine.metrics): Dice, IoU, HD95, average surface distance and surface
Dice against hand-computed cases, spacing in mm, label maps per class, the empty-mask rules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine import metrics


def _cube(shape, corner, side) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[tuple(slice(c, c + side) for c in corner)] = True
    return mask


def test_dice_and_iou_of_known_overlaps():
    a = np.zeros((4, 5), np.uint8)
    b = np.zeros((4, 5), np.uint8)
    a[:2] = 1  # 10 voxels
    b[1:3] = 1  # 10 voxels, 5 shared
    assert metrics.dice(a, b) == pytest.approx(2 * 5 / 20)
    assert metrics.iou(a, b) == pytest.approx(5 / 15)
    assert metrics.dice(a, a) == 1.0 and metrics.dice(a, 1 - a) == 0.0


def test_label_maps_are_scored_per_class():
    ref = np.array([[0, 0, 1, 1], [2, 2, 2, 0]])
    pred = np.array([[0, 1, 1, 1], [2, 2, 0, 0]])
    # class 0: pred {00,12,13} vs ref {00,01,13}: 2 shared; class 1: 3 vs 2, 2 shared; class 2: 2 vs 3
    np.testing.assert_allclose(metrics.dice(pred, ref, 3), [4 / 6, 4 / 5, 4 / 5])
    np.testing.assert_allclose(metrics.iou(pred, ref, 3), [2 / 4, 2 / 3, 2 / 3])
    summary = metrics.segmentation_summary(pred, ref, 3)
    assert summary["dice"] == pytest.approx([4 / 5, 4 / 5])  # background left out
    with pytest.raises(ValueError, match="give num_classes"):
        metrics.dice(pred, ref)
    with pytest.raises(ValueError, match="outside 0..1"):
        metrics.dice(pred, ref, 2)
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.dice(pred, ref[:, :3], 3)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3])
def test_a_cube_shifted_by_k_voxels_has_hd95_k_times_the_spacing(axis, k):
    spacing = (2.5, 0.7, 1.2)
    ref = _cube((20, 20, 20), (5, 5, 5), 8)
    corner = [5, 5, 5]
    corner[axis] += k
    pred = _cube((20, 20, 20), corner, 8)
    assert metrics.hausdorff95(pred, ref, spacing) == pytest.approx(k * spacing[axis])
    assert metrics.hausdorff95(pred, ref, spacing, percentile=100) == pytest.approx(
        k * spacing[axis]
    )


def test_single_voxels_give_their_euclidean_distance_in_mm():
    pred, ref = np.zeros((6, 6, 9), bool), np.zeros((6, 6, 9), bool)
    pred[2, 3, 4] = ref[5, 3, 8] = True
    spacing = (2.0, 1.0, 0.5)
    expected = math.hypot(3 * 2.0, 4 * 0.5)
    assert metrics.hausdorff95(pred, ref, spacing) == pytest.approx(expected)
    assert metrics.average_surface_distance(pred, ref, spacing) == pytest.approx(expected)


def test_average_surface_distance_of_a_shifted_line():
    """2-D: a 1-voxel-thick bar shifted by one row: every surface voxel is 1 row away (3 mm)."""
    ref, pred = np.zeros((5, 8), bool), np.zeros((5, 8), bool)
    ref[2, 1:7] = pred[3, 1:7] = True
    assert metrics.average_surface_distance(pred, ref, (3.0, 1.0)) == pytest.approx(3.0)
    assert metrics.average_surface_distance(ref, ref, (3.0, 1.0)) == 0.0


def test_surface_dice_at_a_tolerance():
    """A square shifted by one row (2 mm): the shared side columns (2 (L - 1) voxels of each
    4 (L - 1)-voxel boundary) are at distance 0, every other boundary voxel within 2 mm."""
    ref = _cube((12, 12), (2, 2), 6)
    pred = _cube((12, 12), (3, 2), 6)
    spacing = (2.0, 1.0)
    assert metrics.surface_dice(pred, ref, spacing, tolerance=0.5) == pytest.approx(0.5)
    assert metrics.surface_dice(pred, ref, spacing, tolerance=2.0) == 1.0
    assert metrics.surface(ref).sum() == 4 * (6 - 1)


def test_empty_masks_follow_the_documented_convention():
    empty, full = np.zeros((4, 4, 4), bool), _cube((4, 4, 4), (1, 1, 1), 2)
    assert metrics.dice(empty, empty) == 1.0 and metrics.iou(empty, empty) == 1.0
    assert metrics.hausdorff95(empty, empty) == 0.0
    assert metrics.average_surface_distance(empty, empty) == 0.0
    assert metrics.surface_dice(empty, empty, tolerance=1.0) == 1.0
    assert metrics.both_empty(empty, empty) and not metrics.both_empty(empty, full)
    for pred, ref in ((empty, full), (full, empty)):
        assert metrics.dice(pred, ref) == 0.0 and metrics.iou(pred, ref) == 0.0
        assert metrics.hausdorff95(pred, ref) == np.inf
        assert metrics.average_surface_distance(pred, ref) == np.inf
        assert metrics.surface_dice(pred, ref, tolerance=5.0) == 0.0
    labels = np.zeros((4, 4), int)
    labels[1, 1] = 2  # class 1 absent from both
    np.testing.assert_array_equal(metrics.both_empty(labels, labels, 3), [False, True, False])
    np.testing.assert_array_equal(metrics.hausdorff95(labels, labels, num_classes=3), [0, 0, 0])
