"""Class imbalance: per-class loss weights and per-sample draw weights from the training labels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight

__all__ = ["balancing", "class_weights", "sample_weights"]


def class_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """scikit-learn's "balanced" weights, ``n / (classes present * count)``: every class then
    carries the same total weight. A class with no training sample gets 0 (it has nothing to weigh).

    >>> class_weights([0, 0, 0, 1], 3)
    tensor([0.6667, 2.0000, 0.0000])
    """
    labels = np.asarray(labels, dtype=np.int64)
    present = np.unique(labels)
    weights = np.zeros(num_classes)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    return torch.tensor(weights, dtype=torch.float32)


def sample_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """``1 / count of its class`` per sample: drawn with these, every class comes up equally
    often."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=num_classes)
    return torch.tensor(1.0 / counts[labels], dtype=torch.float64)


def balancing(
    mode: str, labels: Sequence[int], num_classes: int
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(loss class weights, sampler sample weights)`` for ``--balance mode``; None where
    unused."""
    if mode == "weights":
        return class_weights(labels, num_classes), None
    if mode == "sampler":
        return None, sample_weights(labels, num_classes)
    return None, None
