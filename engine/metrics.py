"""Classification metrics on NumPy arrays: confusion matrix, accuracy, precision, recall, F1, ROC-AUC;
segmentation metrics of masks: Dice, IoU, HD95, average surface distance, surface Dice (at the end).

Conventions (those of scikit-learn, so numbers can be compared):
- y_true, y_pred: integer class labels (n,); scores: (n,) for the positive class or (n, k) per class.
- A ratio whose denominator is 0 (precision of a class never predicted, recall of a class never
  present) counts as 0.0, the `zero_division=0` rule.
- "macro" averages over the classes that occur in y_true or y_pred; `num_classes` only sizes the
  confusion matrix. `average=None` returns one value per class 0..k-1.
- ROC-AUC is the area under the ROC curve by the trapezoid rule, which with tied scores equals the
  Mann-Whitney rank statistic with mid-ranks: a tied (positive, negative) pair counts 1/2.
"""

from __future__ import annotations

import numpy as np

AVERAGES = ("binary", "macro", None)


def _labels(y) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or (y.size and (y.dtype.kind not in "iub" or y.min() < 0)):
        raise ValueError(
            f"labels must be non-negative integers of shape (n,), got {y.dtype} {y.shape}"
        )
    return y.astype(np.int64)


def _pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = _labels(y_true), _labels(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in length")
    return y_true, y_pred


def confusion_matrix(y_true, y_pred, num_classes: int | None = None) -> np.ndarray:
    """int64 (k, k), rows = true class, columns = predicted class; k = num_classes or max label + 1."""
    y_true, y_pred = _pair(y_true, y_pred)
    top = int(max(y_true.max(initial=-1), y_pred.max(initial=-1))) + 1
    k = top if num_classes is None else num_classes
    if k < top:
        raise ValueError(f"num_classes={num_classes} but labels go up to {top - 1}")
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def accuracy(y_true, y_pred) -> float:
    """Fraction of exact matches (0.0 for empty input)."""
    y_true, y_pred = _pair(y_true, y_pred)
    return float((y_true == y_pred).mean()) if y_true.size else 0.0


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise with x / 0 = 0 (zero_division=0)."""
    num, den = num.astype(np.float64), den.astype(np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _per_class(y_true, y_pred, num_classes):
    """(true positives, false positives, false negatives, true negatives, present) per class."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    tp = np.diag(cm)
    fp, fn = cm.sum(axis=0) - tp, cm.sum(axis=1) - tp
    tn = cm.sum() - tp - fp - fn
    present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0  # occurs in y_true or y_pred
    return tp, fp, fn, tn, present


def _average(values: np.ndarray, present: np.ndarray, average, pos_label: int):
    if average == "binary":
        if len(values) > 2:
            raise ValueError(
                f"average='binary' needs 2 classes, got {len(values)}: use 'macro' or None"
            )
        return float(values[pos_label]) if pos_label < len(values) else 0.0
    if average == "macro":
        return float(values[present].mean()) if present.any() else 0.0
    if average is None:
        return values
    raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")


def precision(y_true, y_pred, average="binary", pos_label: int = 1, num_classes=None):
    """TP / (TP + FP): of the cases called class c, the fraction that are c."""
    tp, fp, _, _, present = _per_class(y_true, y_pred, num_classes)
    return _average(_ratio(tp, tp + fp), present, average, pos_label)


def recall(y_true, y_pred, average="binary", pos_label: int = 1, num_classes=None):
    """TP / (TP + FN), the sensitivity: of the cases that are class c, the fraction found."""
    tp, _, fn, _, present = _per_class(y_true, y_pred, num_classes)
    return _average(_ratio(tp, tp + fn), present, average, pos_label)


sensitivity = recall


def specificity(y_true, y_pred, average="binary", pos_label: int = 1, num_classes=None):
    """TN / (TN + FP): of the cases that are not class c, the fraction not called c."""
    _, fp, _, tn, present = _per_class(y_true, y_pred, num_classes)
    return _average(_ratio(tn, tn + fp), present, average, pos_label)


def f1(y_true, y_pred, average="binary", pos_label: int = 1, num_classes=None):
    """2 TP / (2 TP + FP + FN), the harmonic mean of precision and recall (0 when both are 0)."""
    tp, fp, fn, _, present = _per_class(y_true, y_pred, num_classes)
    return _average(_ratio(2 * tp, 2 * tp + fp + fn), present, average, pos_label)


def balanced_accuracy(y_true, y_pred) -> float:
    """Mean recall over the classes present in y_true (chance level is 1/k whatever the balance)."""
    y_true, y_pred = _pair(y_true, y_pred)
    tp, _, fn, _, _ = _per_class(y_true, y_pred, None)
    present = (tp + fn) > 0
    return float(_ratio(tp, tp + fn)[present].mean()) if present.any() else 0.0


def roc_curve(y_true, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Binary ROC: y_true in {0, 1}, scores (n,) higher = more positive.

    Returns fpr, tpr (float64, from (0, 0) to (1, 1)) and the thresholds (score >= t is called
    positive; the first threshold is +inf). Tied scores form one step, so the curve is a diagonal
    segment across them.
    """
    y, s = _labels(y_true), np.asarray(scores, dtype=np.float64)
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and y_true {y.shape} differ in shape")
    if y.size and y.max() > 1:
        raise ValueError("roc_curve is binary: y_true must hold 0 and 1 only")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), y.size - 1] if y.size else np.array([], int)
    tps = np.cumsum(y)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"ROC needs both classes in y_true, got {n_pos} positives and {n_neg} negatives"
        )
    fpr = np.r_[0.0, fps / n_neg]
    tpr = np.r_[0.0, tps / n_pos]
    return fpr, tpr, np.r_[np.inf, s[last_of_tie]]


def _binary_auc(y, s) -> float:
    fpr, tpr, _ = roc_curve(y, s)
    return float((np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2).sum())  # trapezoid rule


def roc_auc(y_true, scores, average: str = "macro"):
    """Area under the ROC curve.

    scores (n,): binary, the positive class's score. scores (n, 2): binary, column 1 is used.
    scores (n, k>2): one-vs-rest, class c against all others for every class with both positives
    and negatives in y_true; average="macro" gives their mean, None a dict class -> AUC.
    Raises ValueError when y_true holds a single class (the AUC is undefined).
    """
    y, s = _labels(y_true), np.asarray(scores, dtype=np.float64)
    if s.ndim == 2 and s.shape[1] == 2:
        s = s[:, 1]
    if s.ndim == 1:
        return _binary_auc(y, s)
    if s.ndim != 2 or len(s) != len(y):
        raise ValueError(f"scores must be (n,) or (n, k) with n = {len(y)}, got {s.shape}")
    per_class = {
        c: _binary_auc((y == c).astype(np.int64), s[:, c])
        for c in range(s.shape[1])
        if 0 < (y == c).sum() < len(y)
    }
    if not per_class:
        raise ValueError("one-vs-rest ROC-AUC needs at least two classes present in y_true")
    if average is None:
        return per_class
    if average != "macro":
        raise ValueError(f"average must be 'macro' or None, got {average!r}")
    return float(np.mean(list(per_class.values())))


def summary(y_true, probs: np.ndarray) -> dict:
    """Every metric for class probabilities probs (n, k): a JSON-ready dict.

    Binary tasks (k = 2) report precision/recall/specificity/F1 of class 1 (e.g. "lesion present");
    k > 2 reports their macro averages. "auc" is None when y_true holds a single class.
    """
    y, probs = _labels(y_true), np.asarray(probs)
    k = probs.shape[1]
    y_pred = probs.argmax(axis=1)
    avg = "binary" if k == 2 else "macro"
    try:
        auc = roc_auc(y, probs)
    except ValueError:
        auc = None
    return {
        "n": int(len(y)),
        "accuracy": accuracy(y, y_pred),
        "balanced_accuracy": balanced_accuracy(y, y_pred),
        "precision": precision(y, y_pred, avg, num_classes=k),
        "recall": recall(y, y_pred, avg, num_classes=k),
        "specificity": specificity(y, y_pred, avg, num_classes=k),
        "f1": f1(y, y_pred, avg, num_classes=k),
        "auc": auc,
        "per_class": {
            "precision": precision(y, y_pred, None, num_classes=k).tolist(),
            "recall": recall(y, y_pred, None, num_classes=k).tolist(),
            "f1": f1(y, y_pred, None, num_classes=k).tolist(),
        },
        "confusion_matrix": confusion_matrix(y, y_pred, k).tolist(),
    }


# ---- segmentation: overlap and surface-distance metrics of masks (NumPy, scipy.ndimage) ----
#
# pred, ref: binary masks (bool or 0/1, any number of axes) of one shape, or with num_classes = k
# integer label maps, scored per class c in 0..k-1 on (pred == c, ref == c) -> float64 (k,).
# spacing: voxel size in mm per axis (default 1): distances are in mm. A surface is the mask's
# boundary voxels: foreground with a face neighbour in the background or outside the array
# (MONAI's get_mask_edges). Empty masks (chosen here, tested):
#   both empty        Dice = IoU = surface Dice = 1, HD95 = ASD = 0 (nothing to find, nothing found)
#   one of them empty Dice = IoU = surface Dice = 0, HD95 = ASD = inf
# MONAI returns nan for both empty (DiceMetric(ignore_empty=True), the distance metrics) and
# Metrics Reloaded advises reporting such cases apart: a caller aggregating over cases may drop
# them with `both_empty(pred, ref)`.


def _segmentation_pairs(pred, ref, num_classes: int | None, name: str) -> list:
    """[(pred_c, ref_c)] boolean masks: one pair for binary masks, k for label maps."""
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"{name}: pred {pred.shape} and ref {ref.shape} differ in shape")
    for label, a in (("pred", pred), ("ref", ref)):
        if a.dtype.kind not in "biu":
            raise ValueError(f"{name}: {label} must be a bool or integer mask, got {a.dtype}")
        if num_classes is None and a.size and (a.min() < 0 or a.max() > 1):
            raise ValueError(
                f"{name}: {label} holds labels {int(a.min())}..{int(a.max())}: give num_classes "
                "for label maps (binary masks hold 0 and 1 only)"
            )
        if num_classes is not None and a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"{name}: {label} holds labels outside 0..{num_classes - 1}")
    if num_classes is None:
        return [(pred.astype(bool), ref.astype(bool))]
    return [(pred == c, ref == c) for c in range(num_classes)]


def _per_mask(values: list[float], num_classes: int | None):
    return values[0] if num_classes is None else np.array(values, np.float64)


def both_empty(pred, ref, num_classes: int | None = None):
    """True where pred and ref are both empty (per class with num_classes): the cases whose
    scores are conventions rather than measurements (see the section comment)."""
    pairs = _segmentation_pairs(pred, ref, num_classes, "both_empty")
    return _per_mask([bool(not p.any() and not r.any()) for p, r in pairs], num_classes)


def dice(pred, ref, num_classes: int | None = None):
    """Dice 2 |P & R| / (|P| + |R|): a float for binary masks, float64 (k,) per class with
    num_classes; 1.0 when both are empty."""
    pairs = _segmentation_pairs(pred, ref, num_classes, "dice")
    out = []
    for p, r in pairs:
        total = int(p.sum()) + int(r.sum())
        out.append(1.0 if total == 0 else 2.0 * int((p & r).sum()) / total)
    return _per_mask(out, num_classes)


def iou(pred, ref, num_classes: int | None = None):
    """Intersection over union |P & R| / |P | R| (Jaccard), as dice(); 1.0 when both are empty."""
    pairs = _segmentation_pairs(pred, ref, num_classes, "iou")
    out = []
    for p, r in pairs:
        union = int((p | r).sum())
        out.append(1.0 if union == 0 else int((p & r).sum()) / union)
    return _per_mask(out, num_classes)


def _spacing(spacing, ndim: int, name: str) -> tuple[float, ...]:
    s = (1.0,) * ndim if spacing is None else tuple(float(v) for v in np.atleast_1d(spacing))
    if len(s) == 1 and ndim > 1:
        s = s * ndim
    if len(s) != ndim or min(s) <= 0:
        raise ValueError(f"{name}: spacing {spacing} must give {ndim} positive sizes in mm")
    return s


def surface(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels of a boolean mask: foreground voxels with a face neighbour (6 in 3-D, 4
    in 2-D) in the background or outside the array."""
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure, border_value=0)


def surface_distances(pred, ref, spacing=None) -> tuple[np.ndarray, np.ndarray]:
    """(d_pred, d_ref) float64: for each surface voxel of the binary mask pred its distance in mm
    to the nearest surface voxel of ref, and the other way round (exact Euclidean distance
    transforms, scipy.ndimage.distance_transform_edt with `sampling=spacing`). A direction whose
    target surface is empty gives inf for every voxel."""
    from scipy import ndimage

    pairs = _segmentation_pairs(pred, ref, None, "surface_distances")
    p, r = surface(pairs[0][0]), surface(pairs[0][1])
    sampling = _spacing(spacing, p.ndim, "surface_distances")

    def to(source: np.ndarray, target: np.ndarray) -> np.ndarray:
        if not target.any():
            return np.full(int(source.sum()), np.inf)
        return ndimage.distance_transform_edt(~target, sampling=sampling)[source]

    return to(p, r), to(r, p)


def _distance_metric(pred, ref, spacing, num_classes, name: str, score) -> float | np.ndarray:
    """score(d_pred, d_ref) per mask pair; 0 when both are empty, inf when one is."""
    out = []
    for p, r in _segmentation_pairs(pred, ref, num_classes, name):
        if not p.any() and not r.any():
            out.append(0.0)
        elif not p.any() or not r.any():
            out.append(np.inf)
        else:
            out.append(float(score(*surface_distances(p, r, spacing))))
    return _per_mask(out, num_classes)


def hausdorff95(pred, ref, spacing=None, num_classes: int | None = None, percentile: float = 95):
    """95th-percentile Hausdorff distance in mm, MONAI's (directed=False): the larger of the two
    directed 95th percentiles of the surface distances (pred -> ref, ref -> pred); percentile 100
    is the Hausdorff distance. A float, or float64 (k,) with num_classes; empty cases as above."""

    def score(d_pred, d_ref):
        return max(np.percentile(d_pred, percentile), np.percentile(d_ref, percentile))

    return _distance_metric(pred, ref, spacing, num_classes, "hausdorff95", score)


def average_surface_distance(pred, ref, spacing=None, num_classes: int | None = None):
    """Average symmetric surface distance in mm, MONAI's (symmetric=True): the mean over both
    directions' surface distances together. A float, or float64 (k,) with num_classes."""

    def score(d_pred, d_ref):
        return np.concatenate([d_pred, d_ref]).mean()

    return _distance_metric(pred, ref, spacing, num_classes, "average_surface_distance", score)


def surface_dice(pred, ref, spacing=None, tolerance: float = 1.0, num_classes=None):
    """Normalised surface Dice at `tolerance` mm (Nikolov et al. 2021; MONAI's voxel form): the
    share of both surfaces' voxels within tolerance of the other surface,
    (#{d_pred <= tol} + #{d_ref <= tol}) / (|S_pred| + |S_ref|). 1 when both are empty, 0 when
    one is. A float, or float64 (k,) with num_classes."""
    if not tolerance >= 0:
        raise ValueError(f"surface_dice: tolerance must be >= 0 mm, got {tolerance}")
    out = []
    for p, r in _segmentation_pairs(pred, ref, num_classes, "surface_dice"):
        if not p.any() or not r.any():
            out.append(float(not p.any() and not r.any()))
            continue
        d_pred, d_ref = surface_distances(p, r, spacing)
        near = int((d_pred <= tolerance).sum()) + int((d_ref <= tolerance).sum())
        out.append(near / (len(d_pred) + len(d_ref)))
    return _per_mask(out, num_classes)


def segmentation_summary(pred, ref, num_classes: int, spacing=None, tolerance: float = 1.0):
    """Every segmentation metric of one case, per class 1..k-1 (background left out): a
    JSON-ready dict {"dice": [...], "iou": [...], "hausdorff95": [...],
    "average_surface_distance": [...], "surface_dice": [...]} (inf stays float('inf'))."""
    scores = {
        "dice": dice(pred, ref, num_classes),
        "iou": iou(pred, ref, num_classes),
        "hausdorff95": hausdorff95(pred, ref, spacing, num_classes),
        "average_surface_distance": average_surface_distance(pred, ref, spacing, num_classes),
        "surface_dice": surface_dice(pred, ref, spacing, tolerance, num_classes),
    }
    return {name: [float(v) for v in values[1:]] for name, values in scores.items()}
