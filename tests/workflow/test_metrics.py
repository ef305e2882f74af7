"""engine.metrics against hand-computed cases: multi-class, empty classes, zero divisions, tied scores."""

from __future__ import annotations

import numpy as np
import pytest

from engine import metrics

# 3 classes, 6 cases. Confusion matrix (rows true, columns predicted):
#   [[1, 1, 0],     tp = [1, 2, 0]   fp = [2, 1, 0]
#    [1, 2, 0],     fn = [1, 1, 1]   tn = [2, 2, 5]
#    [1, 0, 0]]     class 2 is never predicted: its precision is 0/0 -> 0
Y_TRUE = np.array([0, 0, 1, 1, 1, 2])
Y_PRED = np.array([0, 1, 1, 1, 0, 0])


def test_confusion_matrix_by_hand():
    cm = metrics.confusion_matrix(Y_TRUE, Y_PRED)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [1, 2, 0], [1, 0, 0]])
    padded = metrics.confusion_matrix(Y_TRUE, Y_PRED, num_classes=4)  # class 3: an empty class
    assert padded.shape == (4, 4) and padded[3].sum() == 0 and padded[:, 3].sum() == 0
    with pytest.raises(ValueError, match="num_classes"):
        metrics.confusion_matrix(Y_TRUE, Y_PRED, num_classes=2)


def test_per_class_metrics_by_hand():
    per = dict(average=None, num_classes=3)
    np.testing.assert_allclose(metrics.precision(Y_TRUE, Y_PRED, **per), [1 / 3, 2 / 3, 0])
    np.testing.assert_allclose(metrics.recall(Y_TRUE, Y_PRED, **per), [1 / 2, 2 / 3, 0])
    np.testing.assert_allclose(metrics.specificity(Y_TRUE, Y_PRED, **per), [2 / 4, 2 / 3, 5 / 5])
    np.testing.assert_allclose(metrics.f1(Y_TRUE, Y_PRED, **per), [2 / 5, 4 / 6, 0])
    assert metrics.sensitivity is metrics.recall


def test_macro_and_accuracy_by_hand():
    assert metrics.accuracy(Y_TRUE, Y_PRED) == pytest.approx(3 / 6)
    assert metrics.precision(Y_TRUE, Y_PRED, "macro") == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert metrics.recall(Y_TRUE, Y_PRED, "macro") == pytest.approx((1 / 2 + 2 / 3) / 3)
    assert metrics.f1(Y_TRUE, Y_PRED, "macro") == pytest.approx((2 / 5 + 4 / 6) / 3)
    assert metrics.balanced_accuracy(Y_TRUE, Y_PRED) == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    # an empty class (in neither y_true nor y_pred) does not pull the macro average down
    assert metrics.f1(Y_TRUE, Y_PRED, "macro", num_classes=5) == pytest.approx((2 / 5 + 4 / 6) / 3)
    with pytest.raises(ValueError, match="binary"):
        metrics.f1(Y_TRUE, Y_PRED)  # 3 classes: "binary" is refused, not silently class 1


def test_binary_zero_divisions_and_empty_positive_class():
    y, never = np.array([0, 0, 1, 1]), np.array([0, 0, 0, 0])
    assert metrics.precision(y, never) == 0.0  # nothing called positive: 0/0 -> 0
    assert metrics.recall(y, never) == 0.0 and metrics.f1(y, never) == 0.0
    assert metrics.specificity(y, never) == 1.0
    no_positives = np.array([0, 0, 0])
    assert metrics.recall(no_positives, np.array([0, 1, 0])) == 0.0  # recall of an absent class
    assert metrics.precision(no_positives, np.array([0, 1, 0])) == 0.0
    assert metrics.balanced_accuracy(no_positives, np.array([0, 1, 0])) == pytest.approx(2 / 3)
    assert metrics.accuracy([], []) == 0.0


def test_roc_auc_by_hand_with_and_without_ties():
    assert metrics.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # pairs (pos, neg): (.5, .5) tie = 1/2, (.5, .2) = 1, (.9, .5) = 1, (.9, .2) = 1 -> 3.5 / 4
    assert metrics.roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == pytest.approx(0.875)
    assert metrics.roc_auc([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3]) == pytest.approx(0.5)
    assert metrics.roc_auc([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1]) == 1.0
    # (n, 2) probabilities: column 1 is the positive class
    assert metrics.roc_auc([0, 1, 0, 1], [[0.5, 0.5], [0.5, 0.5], [0.8, 0.2], [0.1, 0.9]]) == 0.875
    with pytest.raises(ValueError, match="both classes"):
        metrics.roc_auc([1, 1, 1], [0.2, 0.5, 0.9])


def test_roc_curve_groups_ties():
    fpr, tpr, thr = metrics.roc_curve([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 1, 1])
    np.testing.assert_allclose(thr, [np.inf, 0.9, 0.5, 0.2])


def _mann_whitney(y, s):
    """Independent oracle: the fraction of (positive, negative) pairs ordered right, ties 1/2."""
    pos, neg = s[y == 1], s[y == 0]
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size


def test_roc_auc_equals_rank_statistic_on_heavily_tied_scores(rng):
    for _ in range(20):
        y = rng.integers(0, 2, 40)
        y[:2] = [0, 1]
        s = rng.integers(0, 5, 40) / 4  # 5 distinct values: many ties
        assert metrics.roc_auc(y, s) == pytest.approx(_mann_whitney(y, s))


def test_roc_auc_one_vs_rest_by_hand(rng):
    y = np.array([0, 0, 1, 1, 2, 2])
    s = rng.random((6, 4))  # class 3 never occurs in y_true: skipped, as it has no positives
    per = metrics.roc_auc(y, s, average=None)
    assert sorted(per) == [0, 1, 2]
    for c in range(3):
        assert per[c] == pytest.approx(_mann_whitney((y == c).astype(int), s[:, c]))
    assert metrics.roc_auc(y, s) == pytest.approx(np.mean(list(per.values())))
    perfect = np.eye(3)[y]
    assert metrics.roc_auc(y, perfect) == 1.0


def test_summary_binary_keys_and_values():
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.8, 0.2]])
    s = metrics.summary(np.array([0, 0, 1, 1]), probs)  # predicted [0, 1, 1, 0]
    assert s["accuracy"] == 0.5 and s["recall"] == 0.5 and s["precision"] == 0.5
    assert s["auc"] == pytest.approx(0.75)  # positives 0.7, 0.2 vs negatives 0.1, 0.6
    assert s["confusion_matrix"] == [[1, 1], [1, 1]]
    assert metrics.summary(np.array([1, 1]), probs[:2])["auc"] is None


def test_bad_labels_are_refused():
    with pytest.raises(ValueError, match="non-negative integers"):
        metrics.accuracy([0.5, 1.0], [0, 1])
    with pytest.raises(ValueError, match="differ in length"):
        metrics.accuracy([0, 1, 1], [0, 1])


@pytest.mark.oracle
def test_against_sklearn_when_installed(rng):
    skm = pytest.importorskip("sklearn.metrics")
    y, p = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    s = rng.integers(0, 4, 50) / 3
    for ours, theirs in (
        (metrics.f1, skm.f1_score),
        (metrics.precision, skm.precision_score),
        (metrics.recall, skm.recall_score),
    ):
        assert ours(y, p, "macro") == pytest.approx(theirs(y, p, average="macro", zero_division=0))
    assert metrics.roc_auc((y == 1).astype(int), s) == pytest.approx(
        skm.roc_auc_score((y == 1).astype(int), s)
    )
