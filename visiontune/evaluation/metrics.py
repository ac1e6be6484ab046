"""Classification metrics as pure functions of labels, predictions and probabilities."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

__all__ = ["classification_metrics"]


def _top_k_accuracy(y_true: np.ndarray, probs: np.ndarray, k: int) -> float:
    top = np.argsort(-probs, axis=1)[:, :k]
    return float(np.mean([t in row for t, row in zip(y_true, top, strict=False)]))


def classification_metrics(
    y_true: Sequence[int], y_pred: Sequence[int], class_names: Sequence[str],
    probs: np.ndarray | None = None,
) -> dict:
    """Accuracy, per-class precision/recall/F1/support, macro and weighted averages, confusion.

    ``confusion_matrix[i][j]`` counts images of true class ``i`` predicted as ``j``.
    """
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    labels = list(range(len(class_names)))
    result: dict = {"num_images": len(y_true)}
    if len(y_true) == 0:
        return {**result, "accuracy": None, "per_class": {}, "confusion_matrix": []}
    result["accuracy"] = float(np.mean(y_true == y_pred))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    result["per_class"] = {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, name in enumerate(class_names)
    }
    for average in ("macro", "weighted"):
        ap, ar, af, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=average, zero_division=0
        )
        result[f"{average}_avg"] = {"precision": float(ap), "recall": float(ar), "f1": float(af)}
    if probs is not None and len(class_names) > 2:
        result["top_2_accuracy"] = _top_k_accuracy(y_true, np.asarray(probs), 2)
    result["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=labels).tolist()
    result["class_names"] = list(class_names)
    return result
