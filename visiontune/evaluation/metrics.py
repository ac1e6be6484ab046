"""Classification metrics as pure functions of labels, predictions and probabilities.

>>> m = classification_metrics([0, 0, 1, 1], [0, 1, 1, 1], ["cat", "dog"])
>>> m["accuracy"], m["per_class"]["cat"]["recall"], m["confusion_matrix"]
(0.75, 0.5, [[1, 1], [0, 2]])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, top_k_accuracy_score

__all__ = [
    "metrics_from_logits",
    "calibration_bins",
    "calibrated_ece",
    "classification_metrics",
    "expected_calibration_error",
    "most_confused_pairs",
    "precision_recall_f1",
    "top_k_accuracy",
]


def top_k_accuracy(y_true: Sequence[int], probs: np.ndarray, *, k: int) -> float | None:
    """Share of images whose true class is among the ``k`` most probable; None for no images.

    ``probs`` has one column per class, so classes absent from ``y_true`` still count as
    candidates. ``k`` at or above the number of classes is trivially 1.0.
    """
    y_true, probs = np.asarray(y_true, dtype=int), np.asarray(probs, dtype=np.float64)
    if len(y_true) == 0:
        return None
    num_classes = probs.shape[1]
    if k >= num_classes:
        return 1.0
    # scikit-learn takes the positive class's score alone in the two-class case
    scores = probs[:, 1] if num_classes == 2 else probs
    return float(top_k_accuracy_score(y_true, scores, k=k, labels=list(range(num_classes))))


def precision_recall_f1(
    y_true: Sequence[int], y_pred: Sequence[int], class_names: Sequence[str]
) -> dict:
    """Per-class precision/recall/F1/support and their macro and support-weighted averages.

    A class never predicted has precision 0 (not an error), one absent from the data recall 0.
    Averages are over the classes present in ``y_true`` or ``y_pred`` (scikit-learn's default),
    so a folder holding some of the model's classes is not marked down for the others; those
    absent from ``y_true`` are listed under ``absent_classes``.

    >>> m = precision_recall_f1([0, 0], [0, 0], ["cat", "dog", "bird"])
    >>> m["macro_avg"]["f1"], m["absent_classes"]
    (1.0, ['dog', 'bird'])
    """
    labels = list(range(len(class_names)))
    in_data = {int(y) for y in y_true}
    present = sorted(in_data | {int(y) for y in y_pred}) or labels
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    result: dict = {
        "per_class": {
            name: {
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f[i]),
                "support": int(s[i]),
            }
            for i, name in enumerate(class_names)
        },
        "absent_classes": [name for i, name in enumerate(class_names) if i not in in_data],
    }
    for average in ("macro", "weighted"):
        ap, ar, af, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=present, average=average, zero_division=0
        )
        result[f"{average}_avg"] = {"precision": float(ap), "recall": float(ar), "f1": float(af)}
    return result


def classification_metrics(
    y_true: Sequence[int],
    y_pred: Sequence[int],
    class_names: Sequence[str],
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
    result.update(precision_recall_f1(y_true, y_pred, class_names))
    if probs is not None and len(class_names) > 2:
        result["top_2_accuracy"] = top_k_accuracy(y_true, probs, k=2)
    result["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=labels).tolist()
    result["class_names"] = list(class_names)
    return result


def calibration_bins(y_true: Sequence[int], probs: np.ndarray, *, bins: int = 15) -> list[dict]:
    """Reliability table: images grouped by confidence (the top probability) into ``bins``
    equal-width bins ``(lower, upper]`` over (0, 1]; for each non-empty bin its image count, mean
    confidence and accuracy (share whose top class is the true one)."""
    y_true, probs = np.asarray(y_true, dtype=int), np.asarray(probs, dtype=np.float64)
    if len(y_true) == 0:
        return []
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    # right=True puts a confidence equal to an edge in the bin that edge closes: (lower, upper]
    which = np.clip(np.digitize(confidence, edges, right=True) - 1, 0, bins - 1)
    table = []
    for b in range(bins):
        members = which == b
        if members.any():
            table.append(
                {
                    "lower": float(edges[b]),
                    "upper": float(edges[b + 1]),
                    "count": int(members.sum()),
                    "confidence": float(confidence[members].mean()),
                    "accuracy": float(correct[members].mean()),
                }
            )
    return table


def expected_calibration_error(
    y_true: Sequence[int], probs: np.ndarray, *, bins: int = 15
) -> float | None:
    """Expected calibration error (Guo et al., 2017): ``sum_b n_b / N * |accuracy_b -
    confidence_b|`` over ``bins`` equal-width confidence bins (see ``calibration_bins``).

    0 means that among images predicted with 90% confidence, 90% are right (and so on for every
    bin); it is in the units of accuracy. None for no images. Written by hand because
    scikit-learn's ``calibration_curve`` is for one binary class, not the top-class confidence.
    """
    table = calibration_bins(y_true, probs, bins=bins)
    if not table:
        return None
    total = sum(row["count"] for row in table)
    return float(
        sum(row["count"] / total * abs(row["accuracy"] - row["confidence"]) for row in table)
    )


def calibrated_ece(
    probs: np.ndarray, *, bins: int = 15, draws: int = 200, seed: int = 0
) -> dict | None:
    """The ECE a perfectly calibrated model with these probabilities would still show on this
    many images: labels drawn from its own probabilities, ``draws`` times (consistency
    resampling, Bröcker & Smith 2007). Binned ECE is biased upwards on few images (by
    several points on a hundred images of a model 86 % sure), so a measured ECE is only evidence of
    miscalibration above this: ``mean`` and ``p95`` (the 95th percentile) of the draws.

    >>> rng = np.random.default_rng(1)
    >>> probs = rng.dirichlet(np.ones(3) * 0.3, size=2000)   # sure of most images
    >>> labels = np.array([rng.choice(3, p=p) for p in probs])  # and calibrated by construction
    >>> floor = calibrated_ece(probs)
    >>> floor["mean"] < 0.03 and expected_calibration_error(labels, probs) < floor["p95"]
    True
    """
    probs = np.asarray(probs, dtype=np.float64)
    if len(probs) == 0:
        return None
    rng = np.random.default_rng(seed)
    cumulative = probs.cumsum(1)
    eces = []
    for _ in range(draws):
        drawn = (rng.uniform(size=(len(probs), 1)) > cumulative).sum(1)
        eces.append(
            expected_calibration_error(np.minimum(drawn, probs.shape[1] - 1), probs, bins=bins)
        )
    return {"mean": float(np.mean(eces)), "p95": float(np.quantile(eces, 0.95)), "draws": draws}


def most_confused_pairs(
    confusion: Sequence[Sequence[int]], class_names: Sequence[str], *, top: int = 10
) -> list[dict]:
    """The off-diagonal cells of a confusion matrix (rows true, columns predicted) with the most
    images, largest first: ``true``, ``predicted``, ``count`` and ``rate`` (share of the true
    class's images that went to ``predicted``). Empty cells are left out."""
    matrix = np.asarray(confusion, dtype=int)
    if matrix.size == 0:
        return []
    row_totals = matrix.sum(axis=1)
    cells = [
        (int(matrix[i, j]), i, j)
        for i in range(len(matrix))
        for j in range(len(matrix))
        if i != j and matrix[i, j] > 0
    ]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))  # ties: class order, so the result is stable
    return [
        {
            "true": class_names[i],
            "predicted": class_names[j],
            "count": count,
            "rate": count / int(row_totals[i]),
        }
        for count, i, j in cells[:top]
    ]


def metrics_from_logits(logits, labels, names: Sequence[str]) -> dict:
    """``classification_metrics`` of a model's raw outputs (torch tensors) against ``labels``;
    for multi-hot ``labels``, ``multilabel_metrics`` at probability 0.5 (the thresholds are
    chosen on validation after training)."""
    if labels.ndim == 2:
        from .multilabel import DEFAULT_THRESHOLD, multilabel_metrics

        thresholds = [DEFAULT_THRESHOLD] * len(names)
        return multilabel_metrics(labels.numpy(), logits.sigmoid().numpy(), thresholds, names)
    probs = logits.softmax(1).numpy() if len(labels) else None
    preds = logits.argmax(1).numpy() if len(labels) else []
    return classification_metrics(labels.numpy(), preds, names, probs)
