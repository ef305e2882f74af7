"""The segmentation report: slice montages (image, reference, prediction), per-class metric box
plots, report.md with the per-case table, and the slice view of a 3-D explanation heat map.

matplotlib is imported lazily with the Agg backend (engine.report's _pyplot). Volumes are
canonical (D, H, W) arrays (engine.data.volumes): axial slices are (H, W) planes, shown with
anterior up and the patient's right on the left; `spacing` (d, h, w) mm sets each panel's aspect.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from engine.errors import ArgumentError
from engine.report import _cell, _pyplot

METRICS = ("dice", "iou", "hausdorff95", "average_surface_distance", "surface_dice")
LABELS = {
    "dice": "Dice",
    "iou": "IoU",
    "hausdorff95": "HD95 (mm)",
    "average_surface_distance": "ASD (mm)",
    "surface_dice": "surface Dice",
}
PANEL_INCHES = 2.0  # width of one slice panel
DPI = 100


# ---- slices and colours ----


def choose_slices(reference: np.ndarray, prediction: np.ndarray | None = None, n_slices: int = 5):
    """Axial indices (ascending) of the min(n_slices, D) slices of a (D, H, W) label volume with
    the most reference foreground (label > 0) voxels; ties, slices without any reference among
    them, go to the most prediction foreground, then to the slice nearest the volume's middle,
    then to the lower index. An empty reference thus shows where the prediction is."""
    reference = np.asarray(reference)
    if reference.ndim != 3:
        raise ArgumentError(f"reference must be a (D, H, W) volume, got shape {reference.shape}")
    d = reference.shape[0]
    ref = (reference > 0).reshape(d, -1).sum(axis=1)
    pred = np.zeros(d, np.int64)
    if prediction is not None:
        pred = (np.asarray(prediction) > 0).reshape(d, -1).sum(axis=1)
    middle = np.abs(np.arange(d) - (d - 1) / 2)
    order = np.lexsort((np.arange(d), middle, -pred, -ref))  # last key sorts first
    return sorted(int(i) for i in order[: max(min(n_slices, d), 0)])


def class_colours(k: int) -> np.ndarray:
    """RGBA float (k, 4): class 0 (background) transparent, classes 1.. distinct tab10 colours."""
    import matplotlib

    palette = matplotlib.colormaps["tab10"].colors
    colours = np.zeros((max(k, 1), 4))
    for c in range(1, k):
        colours[c, :3] = palette[(c - 1) % len(palette)]
        colours[c, 3] = 1.0
    return colours


def _aspect(spacing, rows: int, cols: int) -> float:
    """imshow's aspect for a plane whose rows and columns run along volume axes rows, cols."""
    if spacing is None:
        return 1.0
    s = tuple(float(v) for v in spacing)
    if len(s) != 3 or min(s) <= 0:
        raise ArgumentError(f"spacing must be 3 positive sizes in mm (d, h, w), got {spacing}")
    return s[rows] / s[cols]


def _display_range(image: np.ndarray) -> tuple[float, float]:
    """Grey levels from the 1st to the 99th percentile of the whole volume (one scale for all
    slices); a constant volume shows black."""
    lo, hi = (float(v) for v in np.percentile(image, [1, 99]))
    return lo, hi if hi > lo else lo + 1.0


def _overlay(ax, mask: np.ndarray, colours: np.ndarray, aspect: float, fill: float) -> None:
    """Label plane (h, w) drawn over the current image: each class filled at alpha `fill` and
    outlined in its colour."""
    rgba = colours[mask].copy()
    rgba[..., 3] *= fill
    ax.imshow(rgba, aspect=aspect, interpolation="nearest")
    for c in np.unique(mask):
        region = mask == c
        if c > 0 and region.any() and not region.all():
            ax.contour(region, levels=[0.5], colors=[colours[c][:3]], linewidths=0.8)


def _bare(ax) -> None:
    """No ticks and no frame, only the image (a row label may still be set)."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _check_volume(name: str, a: np.ndarray, shape=None) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 3 or (shape is not None and a.shape != shape):
        want = "(D, H, W)" if shape is None else str(shape)
        raise ArgumentError(f"{name} must be a {want} volume, got shape {a.shape}")
    return a


# ---- figures ----


def plot_montage(
    image: np.ndarray,
    reference: np.ndarray,
    prediction: np.ndarray,
    path: str | os.PathLike,
    *,
    spacing=None,
    title: str = "",
    n_slices: int = 5,
) -> Path:
    """A PNG of n_slices axial slices (columns; choose_slices: where the reference, else the
    prediction, has most foreground) in three rows: the image, the image with the reference and
    the image with the prediction (each class filled and outlined in its own colour, one colour
    per class in both rows). image: (D, H, W) float; reference, prediction: (D, H, W) integer
    labels; spacing (d, h, w) mm sets each panel's aspect, so anisotropic voxels keep their
    true proportions. Returns path."""
    if n_slices < 1:
        raise ArgumentError(f"n_slices must be >= 1, got {n_slices}")
    image = _check_volume("image", image)
    reference = _check_volume("reference", reference, image.shape)
    prediction = _check_volume("prediction", prediction, image.shape)
    slices = choose_slices(reference, prediction, n_slices)
    aspect = _aspect(spacing, 1, 2)
    k = int(max(reference.max(), prediction.max(), 0)) + 1
    colours = class_colours(k)
    lo, hi = _display_range(image)
    h, w = image.shape[1:]
    panel_h = PANEL_INCHES * h * aspect / w
    plt = _pyplot()
    fig, axes = plt.subplots(
        3,
        len(slices),
        figsize=(PANEL_INCHES * len(slices) + 0.4, 3 * panel_h + 0.9 + 0.3 * (k > 1)),
        squeeze=False,
    )
    for col, z in enumerate(slices):
        for row, mask in enumerate((None, reference[z], prediction[z])):
            ax = axes[row, col]
            ax.imshow(image[z], cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="none")
            if mask is not None:
                _overlay(ax, mask, colours, aspect, fill=0.25 if row == 1 else 0.45)
            _bare(ax)
        axes[0, col].set_title(f"slice {z}", fontsize=9)
    for row, label in enumerate(("image", "reference", "prediction")):
        axes[row, 0].set_ylabel(label, fontsize=9)
    if k > 1:
        from matplotlib.patches import Patch

        handles = [Patch(color=colours[c][:3], label=f"class {c}") for c in range(1, k)]
        fig.legend(handles=handles, loc="lower center", ncol=min(k - 1, 6), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06 if k > 1 else 0, 1, 1))
    path = Path(path)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _case_matrix(per_case: list[dict], metric: str) -> np.ndarray:
    """float64 (cases, classes) of one metric; ArgumentError naming the case when one lacks it
    or has another number of classes."""
    rows = []
    for i, case in enumerate(per_case):
        if metric not in case:
            raise ArgumentError(f"per_case[{i}] ({case.get('case')!r}) has no {metric!r}")
        rows.append(np.atleast_1d(np.asarray(case[metric], dtype=np.float64)))
        if rows[-1].ndim != 1 or len(rows[-1]) != len(rows[0]):
            raise ArgumentError(
                f"per_case[{i}] ({case.get('case')!r}): {metric} has {rows[-1].shape} values, "
                f"the first case {len(rows[0])}"
            )
    return np.stack(rows) if rows else np.zeros((0, 0))


def _foreground_names(class_names, m: int) -> list[str]:
    """Names of the m foreground classes: class_names lists them, or all k = m + 1 classes
    with the background first; default "class 1", "class 2", ..."""
    if class_names is None:
        return [f"class {c}" for c in range(1, m + 1)]
    names = [str(c) for c in class_names]
    if len(names) == m + 1:
        return names[1:]
    if len(names) != m:
        raise ArgumentError(
            f"class_names {names} must name the {m} foreground classes (or all {m + 1} classes, "
            "background first)"
        )
    return names


def plot_metric_boxplots(
    per_case: list[dict], path: str | os.PathLike, *, class_names=None
) -> Path:
    """One panel per metric (METRICS), one box per foreground class over the cases, every case
    a point on it. per_case: dicts {"case": str, "dice": [...], ...} with one value per
    foreground class (engine.metrics.segmentation_summary). Boxes are drawn over the finite
    values; an inf case (one of prediction and reference empty) is a red triangle at the top
    of its panel, and each panel's title counts the inf and nan values. Returns path."""
    if not per_case:
        raise ArgumentError("plot_metric_boxplots needs at least one case")
    matrices = {metric: _case_matrix(per_case, metric) for metric in METRICS}
    names = _foreground_names(class_names, matrices["dice"].shape[1])
    positions = np.arange(1, len(names) + 1)
    jitter = np.random.default_rng(0).uniform(-0.12, 0.12, len(per_case))  # fixed: same figure
    plt = _pyplot()
    fig, axes = plt.subplots(
        1, len(METRICS), figsize=(len(METRICS) * (1.6 + 0.5 * len(names)), 3.6)
    )
    for ax, metric in zip(axes, METRICS, strict=True):
        values = matrices[metric]
        finite = np.isfinite(values)
        data = [(p, values[finite[:, c], c]) for c, p in enumerate(positions) if finite[:, c].any()]
        if data:
            ax.boxplot(
                [v for _, v in data],
                positions=[p for p, _ in data],
                widths=0.5,
                showfliers=False,  # every case is drawn as a point below
            )
        for c, p in enumerate(positions):
            ok = finite[:, c]
            ax.plot(p + jitter[ok], values[ok, c], "o", ms=3.5, alpha=0.7, color="tab:blue")
        if metric in ("dice", "iou", "surface_dice"):
            ax.set_ylim(-0.05, 1.05)
        elif not finite.any():
            ax.set_ylim(0, 1)
        top = ax.get_ylim()[1]
        for c, p in enumerate(positions):
            n_inf = int(np.isinf(values[:, c]).sum())
            if n_inf:
                ax.plot(
                    p + jitter[np.isinf(values[:, c])],
                    [top] * n_inf,
                    "^",
                    color="tab:red",
                    clip_on=False,
                )
        ax.set_ylim(top=top)
        ax.set_xticks(positions, names, rotation=30 if len(names) > 3 else 0)
        ax.set_xlim(0.4, len(names) + 0.6)
        n_inf, n_nan = int(np.isinf(values).sum()), int(np.isnan(values).sum())
        notes = [f"{n} {what}" for n, what in ((n_inf, "inf (▲)"), (n_nan, "nan")) if n]
        ax.set_title(LABELS[metric] + (f"\n{', '.join(notes)}" if notes else ""), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{len(per_case)} cases", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _strongest_slices(heatmap: np.ndarray, n_slices: int) -> list[int]:
    """Axial indices (ascending) of the n_slices consecutive slices around the heat map's
    maximum (shifted to stay inside the volume)."""
    d = heatmap.shape[0]
    n = min(n_slices, d)
    z = int(np.unravel_index(np.argmax(heatmap), heatmap.shape)[0])
    start = min(max(z - n // 2, 0), d - n)
    return list(range(start, start + n))


def save_volume_explanation(
    volume: np.ndarray,
    heatmap: np.ndarray,
    path: str | os.PathLike,
    *,
    spacing=None,
    n_slices: int = 5,
    title: str = "",
) -> Path:
    """A PNG of a 3-D heat map (D, H, W) in [0, 1] over its volume (D, H, W): n_slices
    consecutive axial slices around the heat map's maximum (top row), and the sagittal and
    coronal planes through that maximum (bottom row; superior up). spacing (d, h, w) mm sets the
    aspects. Returns path."""
    volume = _check_volume("volume", volume)
    heatmap = _check_volume("heatmap", heatmap, volume.shape)
    _, h, w = volume.shape
    zc, yc, xc = (int(i) for i in np.unravel_index(np.argmax(heatmap), heatmap.shape))
    slices = _strongest_slices(heatmap, n_slices)
    lo, hi = _display_range(volume)
    axial = _aspect(spacing, 1, 2)
    cols = max(len(slices), 3)
    plt = _pyplot()
    fig, axes = plt.subplots(
        2, cols, figsize=(PANEL_INCHES * cols, 2 * PANEL_INCHES * max(h * axial / w, 0.6) + 1.0)
    )

    def panel(ax, plane, heat, aspect, label, origin="upper"):
        ax.imshow(plane, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, origin=origin)
        shown = ax.imshow(
            heat, cmap="jet", alpha=0.45, vmin=0, vmax=1, aspect=aspect, origin=origin
        )
        ax.set_title(label, fontsize=9)
        _bare(ax)
        return shown

    for ax in axes.ravel():
        ax.axis("off")
    for i, z in enumerate(slices):
        axes[0, i].axis("on")
        panel(axes[0, i], volume[z], heatmap[z], axial, f"axial {z}" + " (max)" * (z == zc))
    # sagittal: the (d, h) plane at column xc; coronal: the (d, w) plane at row yc; D runs
    # towards superior and is drawn upwards (origin lower)
    planes = (
        (volume[:, :, xc], heatmap[:, :, xc], _aspect(spacing, 0, 1), f"sagittal {xc}"),
        (volume[:, yc], heatmap[:, yc], _aspect(spacing, 0, 2), f"coronal {yc}"),
    )
    for ax, (plane, heat, aspect, label) in zip(axes[1, :2], planes, strict=True):
        ax.axis("on")
        shown = panel(ax, plane, heat, aspect, label, origin="lower")
    axes[1, 2].axis("on")
    _bare(axes[1, 2])
    fig.colorbar(shown, cax=axes[1, 2].inset_axes((0.1, 0.1, 0.1, 0.8)), label="heat (0..1)")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


# ---- the report ----


def summarize_cases(per_case: list[dict]) -> dict:
    """Per metric and foreground class, over the cases: {metric: {"mean": [...], "median": [...],
    "finite_mean": [...], "n": [...], "n_inf": [...], "n_nan": [...]}} (lists over classes).

    How inf and nan enter (engine.metrics: a class empty in exactly one of prediction and
    reference scores Dice 0 and HD95 = ASD = inf; empty in both, Dice 1 and distances 0):
    inf is a measurement (a structure missed or invented) and stays in: the mean of a metric
    with an inf case is inf, the median is inf only when at least half the cases are;
    "finite_mean" is the mean over the finite cases, shown beside it. nan means no value and is
    left out: n counts the cases that are not nan. A class with no value gives nan."""
    out = {}
    for metric in METRICS:
        values = _case_matrix(per_case, metric)
        stats = {key: [] for key in ("mean", "median", "finite_mean", "n", "n_inf", "n_nan")}
        for v in values.T:
            known = v[~np.isnan(v)]
            finite = v[np.isfinite(v)]
            stats["mean"].append(float(known.mean()) if len(known) else math.nan)
            stats["median"].append(float(np.median(known)) if len(known) else math.nan)
            stats["finite_mean"].append(float(finite.mean()) if len(finite) else math.nan)
            stats["n"].append(int(len(known)))
            stats["n_inf"].append(int(np.isinf(v).sum()))
            stats["n_nan"].append(int(np.isnan(v).sum()))
        out[metric] = stats
    return out


def _num(value) -> str:
    """A table number: 4 decimals, or inf / nan spelled out; other values as text."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        return _cell(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return "nan" if math.isnan(value) else ("inf" if math.isinf(value) else f"{value:.4f}")


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    rows = []
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += _flatten(value, f"{name}.")
        elif isinstance(value, (list, tuple, np.ndarray)):
            rows.append((name, ", ".join(_num(v) for v in np.asarray(value, dtype=object).ravel())))
        else:
            rows.append((name, _num(value)))
    return rows


def write_segmentation_report(
    out_dir: str | os.PathLike,
    *,
    per_case: list[dict],
    summary: dict,
    settings: dict,
    figures: list[Path],
    class_names: list[str],
) -> Path:
    """Write out_dir/report.md atomically (engine.checkpoint.atomic_write) -> its path.

    Sections: the settings; `summary` (the caller's overall figures, any dict, nested keys
    joined with "."); the per-class mean / median / finite mean / counts of every metric over
    the cases (summarize_cases, which states how inf and nan enter); one row per case with every
    metric per class, in per_case's order (4 decimals, inf and nan written out); the figures,
    linked by their path relative to out_dir. class_names: the foreground classes' names (or
    all classes', background first).
    """
    from engine.checkpoint import atomic_write

    if not per_case:
        raise ArgumentError("write_segmentation_report needs at least one case in per_case")
    out_dir = Path(out_dir)
    names = _foreground_names(class_names, _case_matrix(per_case, "dice").shape[1])
    stats = summarize_cases(per_case)
    lines = ["# Segmentation report", "", "## Settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| {_cell(k)} | {v} |" for k, v in _flatten(settings)]
    lines += ["", "## Summary", "", "| quantity | value |", "|---|---|"]
    lines += [f"| {_cell(k)} | {v} |" for k, v in _flatten(summary or {})]
    lines += [
        "",
        f"## Per class over {len(per_case)} cases",
        "",
        "Mean and median keep inf (a class empty in exactly one of prediction and reference: "
        "Dice 0, distances inf); 'finite mean' leaves those cases out; nan values (no "
        "measurement) are left out of all three and counted apart.",
        "",
        "| metric | class | mean | median | finite mean | cases | inf | nan |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for metric in METRICS:
        s = stats[metric]
        for c, name in enumerate(names):
            cells = [s[key][c] for key in ("mean", "median", "finite_mean", "n", "n_inf", "n_nan")]
            lines.append(
                f"| {LABELS[metric]} | {_cell(name)} | " + " | ".join(map(_num, cells)) + " |"
            )
    header = [f"{LABELS[m]} {name}" for name in names for m in METRICS]
    lines += ["", "## Per case", "", "| case | " + " | ".join(map(_cell, header)) + " |"]
    lines.append("|---" * (len(header) + 1) + "|")
    for case in per_case:
        cells = [_num(float(case[m][c])) for c in range(len(names)) for m in METRICS]
        lines.append(f"| {_cell(case.get('case', ''))} | " + " | ".join(cells) + " |")
    if figures:
        lines += ["", "## Figures", ""]
        for fig in figures:
            rel = Path(os.path.relpath(Path(fig), out_dir)).as_posix()
            lines += [f"![{Path(fig).stem}]({rel})", ""]
    text = "\n".join(lines) + "\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    return atomic_write(out_dir / "report.md", lambda f: f.write(text.encode("utf-8")))
