"""Multi-label metrics and per-class thresholds (pure functions of 0/1 targets and sigmoid
probabilities; scikit-learn's metrics underneath).

A class is predicted when its probability reaches its threshold. ``choose_thresholds`` picks,
per class, the threshold that maximises that class's F1 on validation: the probabilities of a
rare class rarely reach 0.5, so one fixed cut-off loses it (BENCHMARKS.md, multi-label, measures
both).

>>> y = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
>>> p = np.array([[0.9, 0.2], [0.7, 0.4], [0.2, 0.35], [0.1, 0.1]])
>>> choose_thresholds(y, p).round(2).tolist()
[0.7, 0.35]
>>> m = multilabel_metrics(y, p, choose_thresholds(y, p), ["a", "b"])
>>> m["macro_f1"], m["subset_accuracy"], round(m["mAP"], 3)
(1.0, 1.0, 1.0)
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, f1_score, precision_recall_fscore_support

__all__ = ["DEFAULT_THRESHOLD", "choose_thresholds", "multilabel_metrics", "predicted_sets"]

DEFAULT_THRESHOLD = 0.5  # a class without positive validation images keeps it


def _best_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The probability cut-off with the highest F1 for one class; ties: the highest cut-off (the
    fewest false positives). Candidates are the probabilities of the positives themselves."""
    if y.sum() == 0:
        return DEFAULT_THRESHOLD
    best, best_f1 = DEFAULT_THRESHOLD, -1.0
    for t in np.unique(p[y == 1]):
        predicted = p >= t
        tp = float((predicted & (y == 1)).sum())
        f1 = 2 * tp / (predicted.sum() + y.sum())
        if f1 >= best_f1:
            best, best_f1 = float(t), f1
    return best


def choose_thresholds(y_true, probs) -> np.ndarray:
    """Per-class thresholds maximising each class's F1 on ``(y_true, probs)`` (validation)."""
    y, p = np.asarray(y_true, dtype=int), np.asarray(probs, dtype=np.float64)
    if not len(y):
        return np.full(p.shape[1], DEFAULT_THRESHOLD)
    return np.array([_best_threshold(y[:, c], p[:, c]) for c in range(p.shape[1])])


def predicted_sets(probs, thresholds) -> np.ndarray:
    """0/1 predictions: each class at or above its threshold."""
    return (np.asarray(probs) >= np.asarray(thresholds)[None, :]).astype(int)


def _average_precision(y: np.ndarray, p: np.ndarray) -> float | None:
    return float(average_precision_score(y, p)) if y.sum() else None  # undefined without one


def multilabel_metrics(y_true, probs, thresholds, class_names) -> dict:
    """Per-class precision/recall/F1/average precision/support, micro and macro F1, mAP (over
    classes with a positive image), subset accuracy and Hamming loss, at ``thresholds``; and
    ``at_0.5``: the same summary with every threshold 0.5."""
    y = np.asarray(y_true, dtype=int).reshape(-1, len(class_names))
    p = np.asarray(probs, dtype=np.float64).reshape(-1, len(class_names))
    found = _summary(y, p, np.asarray(thresholds, dtype=np.float64))
    fixed = _summary(y, p, np.full(len(class_names), DEFAULT_THRESHOLD))
    pred = predicted_sets(p, thresholds)
    precision, recall, f1, support = precision_recall_fscore_support(
        y, pred, average=None, zero_division=0, labels=list(range(len(class_names)))
    )
    per_class = {
        name: {
            "precision": float(precision[c]),
            "recall": float(recall[c]),
            "f1": float(f1[c]),
            "average_precision": _average_precision(y[:, c], p[:, c]),
            "threshold": float(thresholds[c]),
            "support": int(support[c]),
        }
        for c, name in enumerate(class_names)
    }
    return {
        "task": "multi-label",
        "num_images": int(len(y)),
        # What single-label readers call accuracy: every class right (subset accuracy).
        "accuracy": found["subset_accuracy"],
        **found,
        "per_class": per_class,
        "at_0.5": {k: fixed[k] for k in ("micro_f1", "macro_f1", "subset_accuracy")},
    }


def _summary(y: np.ndarray, p: np.ndarray, thresholds: np.ndarray) -> dict:
    if not len(y):
        nan = float("nan")
        return dict.fromkeys(
            ("mAP", "micro_f1", "macro_f1", "subset_accuracy", "hamming_loss"), nan
        )
    pred = predicted_sets(p, thresholds)
    aps = [
        ap for c in range(y.shape[1]) if (ap := _average_precision(y[:, c], p[:, c])) is not None
    ]
    return {
        "mAP": float(np.mean(aps)) if aps else float("nan"),
        "micro_f1": float(f1_score(y, pred, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
        "subset_accuracy": float((pred == y).all(axis=1).mean()),
        "hamming_loss": float((pred != y).mean()),
    }
