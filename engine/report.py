"""The run report: PNG plots (learning curves, confusion matrix, ROC) and a short report.md showing them.

matplotlib is imported lazily, with the non-interactive Agg backend, so reports render on servers.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from engine import metrics


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(history: dict[str, list], path: str | os.PathLike) -> Path:
    """Loss and accuracy per epoch, training and validation, as two panels in one PNG."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, name in zip(axes, ("loss", "accuracy"), strict=True):
        for key, label in ((name, "train"), (f"val_{name}", "validation")):
            values = history.get(key)
            if values:
                ax.plot(range(1, len(values) + 1), values, marker="o", label=label)
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_confusion(cm: np.ndarray, classes: list[str], path: str | os.PathLike) -> Path:
    """The confusion matrix (rows true, columns predicted) with the count in every cell."""
    plt = _pyplot()
    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(3.2 + 0.5 * len(cm), 2.8 + 0.5 * len(cm)))
    ax.imshow(cm, cmap="Blues")
    for i in range(len(cm)):
        for j in range(len(cm)):
            dark = cm[i, j] > cm.max() / 2
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="w" if dark else "k")
    ax.set_xticks(range(len(cm)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(cm)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_roc(
    y_true: np.ndarray, probs: np.ndarray, classes: list[str], path: str | os.PathLike
) -> Path | None:
    """ROC curve of the positive class (binary) or one-vs-rest curves (k > 2); None when y_true
    holds a single class (no curve exists)."""
    y = np.asarray(y_true)
    k = probs.shape[1]
    curves = []
    for c in [1] if k == 2 else range(k):
        yc = (y == c).astype(np.int64)
        if 0 < yc.sum() < len(yc):
            fpr, tpr, _ = metrics.roc_curve(yc, probs[:, c])
            auc = metrics.roc_auc(yc, probs[:, c])
            curves.append((fpr, tpr, f"{classes[c]} (AUC {auc:.3f})"))
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4, 4))
    for fpr, tpr, label in curves:
        ax.plot(fpr, tpr, label=label)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def write_report(
    run_dir: str | os.PathLike,
    *,
    title: str,
    settings: dict,
    history: dict,
    evaluation: dict,
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    explanations: list[Path] = (),
    skipped: list[tuple[str, str]] = (),
) -> Path:
    """Write curves.png, confusion_matrix.png, roc.png and report.md into run_dir; returns report.md.

    evaluation: engine.metrics.summary of the held-out set; settings: what was run (shown as a
    table so the run can be repeated); explanations: PNGs from engine.explain to link;
    skipped: (path, reason) of the files left out with --on-error skip, listed in full.
    """
    run_dir = Path(run_dir)
    plots = {"Learning curves": plot_history(history, run_dir / "curves.png")}
    plots["Confusion matrix (held-out)"] = plot_confusion(
        evaluation["confusion_matrix"], classes, run_dir / "confusion_matrix.png"
    )
    roc = plot_roc(y_true, probs, classes, run_dir / "roc.png")
    if roc is not None:
        plots["ROC curve (held-out)"] = roc
    lines = [f"# {title}", "", "## Settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in settings.items()]
    lines += [
        "",
        f"## Held-out results ({evaluation['n']} images)",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for name in (
        "accuracy",
        "balanced_accuracy",
        "precision",
        "recall",
        "specificity",
        "f1",
        "auc",
    ):
        lines.append(f"| {name.replace('_', ' ')} | {_fmt(evaluation.get(name))} |")
    lines += [
        "",
        "Precision, recall (sensitivity), specificity and F1 are those of class "
        f"'{classes[1] if len(classes) == 2 else 'macro average'}'.",
        "",
    ]
    for caption, path in plots.items():
        lines += [f"## {caption}", "", f"![{caption}]({path.name})", ""]
    if explanations:
        lines += ["## Explanations (saliency and Grad-CAM)", ""]
        lines += [f"![{p.stem}]({p.relative_to(run_dir).as_posix()})" for p in explanations]
        lines.append("")
    if skipped:
        lines += [f"## Skipped files ({len(skipped)}, --on-error skip)", ""]
        lines += ["| file | reason |", "|---|---|"]
        lines += [f"| {p} | {_cell(reason)} |" for p, reason in skipped]
        lines.append("")
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")
