"""The segmentation report: slice choice, montages whose panels keep the voxels' true proportions,
box plots that count inf and nan, the per-class summary's inf/nan rules, and report.md whose
per-case table holds exactly the cases given."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from matplotlib.image import imread

from engine import seg_report as sr
from engine.errors import ArgumentError


def _naive_top_slices(reference, prediction, n):
    """Loop oracle: rank slices by reference count, then prediction count, then distance to the
    middle, then index; keep n, ascending."""
    d = reference.shape[0]
    keyed = []
    for z in range(d):
        ref = sum(1 for v in reference[z].ravel() if v > 0)
        pred = sum(1 for v in prediction[z].ravel() if v > 0)
        keyed.append((-ref, -pred, abs(z - (d - 1) / 2), z))
    return sorted(k[3] for k in sorted(keyed)[:n])


def test_choose_slices_takes_the_most_reference_foreground(rng):
    reference = np.zeros((9, 4, 4), np.int64)
    sizes = [0, 3, 0, 7, 1, 9, 0, 2, 5]  # foreground voxels per slice
    for z, size in enumerate(sizes):
        reference[z].flat[:size] = 1 + z % 2  # any label > 0 counts
    prediction = np.zeros_like(reference)
    assert sr.choose_slices(reference, prediction, 3) == [3, 5, 8]
    assert sr.choose_slices(reference, None, 1) == [5]
    assert sr.choose_slices(reference, prediction, 20) == list(range(9))  # all, no more
    # an empty reference: the prediction decides
    prediction[6].flat[:4] = 1
    prediction[0].flat[:2] = 1
    assert sr.choose_slices(np.zeros_like(reference), prediction, 2) == [0, 6]
    # random volumes (ties included) against the loop oracle
    for _ in range(20):
        ref = (rng.random((7, 3, 3)) > rng.uniform(0.6, 1.0, (7, 1, 1))).astype(np.int64)
        pred = (rng.random((7, 3, 3)) > 0.7).astype(np.int64)
        n = int(rng.integers(1, 8))
        assert sr.choose_slices(ref, pred, n) == _naive_top_slices(ref, pred, n)


def _black_boxes(png: np.ndarray, min_area: int = 400) -> list[tuple[int, int]]:
    """(height, width) in pixels of every large black region of a decoded PNG."""
    from scipy import ndimage

    black = (png[..., :3] < 0.05).all(axis=-1)
    labels, n = ndimage.label(black)
    boxes = []
    for sl in ndimage.find_objects(labels):
        h, w = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
        if h * w >= min_area:
            boxes.append((h, w))
    return boxes


@pytest.mark.parametrize("spacing", [(2.0, 1.0, 1.0), (3.0, 2.0, 0.5), None])
def test_montage_panels_keep_the_physical_proportions(tmp_path, spacing):
    """A constant image shows as black panels: 3 rows x n_slices of them, each as tall / wide as
    H * dh / (W * dw) (12 x 16 voxels here), whatever the spacing."""
    image = np.full((6, 12, 16), -1000.0, np.float32)
    empty = np.zeros((6, 12, 16), np.int64)
    path = sr.plot_montage(image, empty, empty, tmp_path / "m.png", spacing=spacing, n_slices=4)
    png = imread(path)
    boxes = _black_boxes(png)
    assert len(boxes) == 3 * 4, boxes
    dh, dw = (1.0, 1.0) if spacing is None else spacing[1:]
    for h, w in boxes:
        assert abs(h / w - 12 * dh / (16 * dw)) < 0.04 * 12 * dh / (16 * dw) + 2 / w, (h, w)


def test_montage_draws_each_class_in_its_own_colour(tmp_path):
    image = np.zeros((4, 20, 20), np.float32)
    reference = np.zeros((4, 20, 20), np.int64)
    reference[2, 2:9, 2:9] = 1
    prediction = reference.copy()
    prediction[2, 11:18, 11:18] = 2
    png = imread(sr.plot_montage(image, reference, prediction, tmp_path / "m.png", n_slices=2))
    assert png.shape[0] > 300 and png.shape[1] > 300
    colours = sr.class_colours(3)
    assert colours[0, 3] == 0 and not np.allclose(colours[1], colours[2])
    rgb = png[..., :3].reshape(-1, 3)
    for c in (1, 2):  # each class colour (45% over black in the prediction row) is drawn
        drawn = np.abs(rgb - 0.45 * colours[c, :3]).max(axis=1) < 0.03
        assert drawn.sum() > 50, c
    with pytest.raises(ArgumentError, match="prediction must be"):
        sr.plot_montage(image, reference, prediction[:3], tmp_path / "x.png")
    with pytest.raises(ArgumentError, match="n_slices"):
        sr.plot_montage(image, reference, prediction, tmp_path / "x.png", n_slices=0)


def _cases():
    return [
        {
            "case": "p|1",
            "dice": [0.9, 0.0],
            "iou": [0.8, 0.0],
            "hausdorff95": [2.0, math.inf],
            "average_surface_distance": [0.5, math.inf],
            "surface_dice": [0.95, 0.0],
        },
        {
            "case": "p2",
            "dice": [0.7, 1.0],
            "iou": [0.55, 1.0],
            "hausdorff95": [4.0, 0.0],
            "average_surface_distance": [1.5, 0.0],
            "surface_dice": [0.8, 1.0],
        },
        {
            "case": "p3",
            "dice": [0.5, 0.6],
            "iou": [0.3333, 0.4286],
            "hausdorff95": [math.nan, 3.0],
            "average_surface_distance": [2.5, math.inf],
            "surface_dice": [0.6, 0.7],
        },
    ]


def test_boxplots_count_inf_and_nan_in_the_titles(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig: (figures.append(fig), close(fig)))
    path = sr.plot_metric_boxplots(_cases(), tmp_path / "b.png", class_names=["bg", "a", "b"])
    png = imread(path)
    assert png.shape[1] > 2 * png.shape[0]  # five panels side by side
    titles = {ax.get_title().split("\n")[0]: ax.get_title() for ax in figures[0].axes}
    assert titles["HD95 (mm)"].endswith("1 inf (▲), 1 nan")
    assert titles["ASD (mm)"].endswith("2 inf (▲)")
    assert titles["Dice"] == "Dice"
    labels = [t.get_text() for t in figures[0].axes[0].get_xticklabels()]
    assert labels == ["a", "b"]
    # every finite value is a point; the inf ones are triangles at the top
    hd = figures[0].axes[2]
    points = [ln for ln in hd.lines if ln.get_marker() == "o"]
    assert sum(len(ln.get_ydata()) for ln in points) == 4
    tri = [ln for ln in hd.lines if ln.get_marker() == "^"]
    assert sum(len(ln.get_ydata()) for ln in tri) == 1
    bad = _cases()
    bad[1]["dice"] = [0.5]
    with pytest.raises(ArgumentError, match="per_case\\[1\\]"):
        sr.plot_metric_boxplots(bad, tmp_path / "x.png")


def test_summary_keeps_inf_and_leaves_out_nan():
    s = sr.summarize_cases(_cases())
    hd = s["hausdorff95"]
    # class a: 2, 4, nan -> nan left out; class b: inf, 0, 3 -> inf kept in mean, median 3
    assert hd["mean"] == [3.0, math.inf] and hd["median"] == [3.0, 3.0]
    assert hd["finite_mean"] == [3.0, 1.5]
    assert hd["n"] == [2, 3] and hd["n_inf"] == [0, 1] and hd["n_nan"] == [1, 0]
    asd = s["average_surface_distance"]
    assert asd["median"][1] == math.inf  # two of three cases are inf
    assert asd["finite_mean"][1] == 0.0
    np.testing.assert_allclose(s["dice"]["mean"], [0.7, 1.6 / 3])
    one_nan = [{**_cases()[0], "hausdorff95": [math.nan, math.nan]}]
    out = sr.summarize_cases(one_nan)["hausdorff95"]
    assert all(math.isnan(v) for v in out["mean"] + out["median"]) and out["n"] == [0, 0]


def _table(text: str, heading: str) -> list[list[str]]:
    """The cells of the Markdown table under `## heading`, header row first."""
    section = text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("|") and not ln.startswith("|---")]
    return [[c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]


def test_report_per_case_rows_equal_the_inputs(tmp_path):
    cases = _cases()
    (tmp_path / "figs").mkdir()
    fig = sr.plot_metric_boxplots(cases, tmp_path / "figs" / "metrics.png")
    path = sr.write_segmentation_report(
        tmp_path,
        per_case=cases,
        summary={"cases": 3, "dice": {"mean": [0.7, 0.5333]}},
        settings={"model": "unet3d", "features": [8, 16]},
        figures=[fig],
        class_names=["background", "nodule", "lung"],
    )
    assert path == tmp_path / "report.md" and not list(tmp_path.glob(".*.tmp"))
    text = path.read_text()
    header, *rows = _table(text, "Per case")
    assert header[:3] == ["case", "Dice nodule", "IoU nodule"] and len(header) == 11
    assert len(rows) == len(cases)
    for row, case in zip(rows, cases, strict=True):
        assert row[0] == case["case"].replace("|", "\\|")
        values = [case[m][c] for c in range(2) for m in sr.METRICS]
        assert len(row) == 1 + len(values)
        for cell, v in zip(row[1:], values, strict=True):
            if math.isnan(v):
                assert cell == "nan"
            elif math.isinf(v):
                assert cell == "inf"
            else:
                assert abs(float(cell) - v) <= 5e-5, (cell, v)
    summary = {(r[0], r[1]): r[2:] for r in _table(text, "Per class over 3 cases")[1:]}
    assert summary["HD95 (mm)", "lung"] == ["inf", "3.0000", "1.5000", "3", "1", "0"]
    assert summary["HD95 (mm)", "nodule"] == ["3.0000", "3.0000", "3.0000", "2", "0", "1"]
    assert ["features", "8, 16"] in _table(text, "Settings")
    assert ["dice.mean", "0.7000, 0.5333"] in _table(text, "Summary")
    assert "![metrics](figs/metrics.png)" in text
    with pytest.raises(ArgumentError, match="at least one case"):
        sr.write_segmentation_report(
            tmp_path, per_case=[], summary={}, settings={}, figures=[], class_names=["x"]
        )
    with pytest.raises(ArgumentError, match="class_names"):
        sr.write_segmentation_report(
            tmp_path, per_case=cases, summary={}, settings={}, figures=[], class_names=["x"]
        )


def test_volume_explanation_view_is_written(tmp_path, rng):
    volume = rng.standard_normal((10, 12, 16)).astype(np.float32)
    heat = np.zeros_like(volume)
    heat[7, 3, 12] = 1.0
    assert sr._strongest_slices(heat, 5) == [5, 6, 7, 8, 9]  # around the maximum, inside
    path = sr.save_volume_explanation(volume, heat, tmp_path / "v.png", spacing=(2.5, 1, 1))
    png = imread(path)
    assert png.ndim == 3 and png.shape[0] > 200 and path.stat().st_size > 5000
