"""The training objective of either task: one class per image (softmax cross-entropy) or any
number of them (multi-label: one sigmoid per class, binary cross-entropy).

A multi-label target is a multi-hot row of integers (``Sample.multi_hot``), which is how it is
told apart from mixup's soft targets (floating point rows of one distribution each).

>>> logits = torch.tensor([[2.0, -1.0], [-3.0, 0.5]])
>>> multi_hot = torch.tensor([[1, 0], [0, 0]])
>>> correct_count(logits, torch.tensor([0, 1])), correct_count(logits, multi_hot)
(2, 1)
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = ["correct_count", "is_multi_hot", "task_loss", "task_probabilities"]


def is_multi_hot(targets: torch.Tensor) -> bool:
    """A batch of multi-label targets: ``(batch, classes)`` integers."""
    return targets.ndim == 2 and not targets.is_floating_point()


def task_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy for class indices (or soft targets); for multi-hot targets, binary
    cross-entropy per class, its mean over classes per image, smoothed as timm's
    ``BinaryCrossEntropy`` (off value ``smoothing / classes``). ``weight``: per class, single-label
    only (``--balance`` is refused for multi-label data)."""
    if not is_multi_hot(targets):
        return F.cross_entropy(
            logits, targets, weight=weight, label_smoothing=label_smoothing, reduction=reduction
        )
    off = label_smoothing / targets.shape[1]
    soft = targets.float() * (1.0 - label_smoothing) + off
    loss = F.binary_cross_entropy_with_logits(logits, soft, reduction="none").mean(dim=1)
    return loss.mean() if reduction == "mean" else loss


def task_probabilities(logits: torch.Tensor, *, multi_label: bool, temperature: float = 1.0):
    """``softmax(logits / T)`` over the classes, or each class's ``sigmoid(logit / T)``."""
    scaled = logits.float() / temperature
    return torch.sigmoid(scaled) if multi_label else torch.softmax(scaled, dim=1)


def correct_count(logits: torch.Tensor, targets: torch.Tensor) -> int:
    """Images whose prediction is right: the top class (the largest share of a soft target), or
    for multi-hot targets every class on the right side of probability 0.5 (subset accuracy)."""
    if is_multi_hot(targets):
        return int(((logits > 0).long() == targets).all(dim=1).sum())
    labels = targets.argmax(1) if targets.ndim == 2 else targets
    return int((logits.argmax(1) == labels).sum())
