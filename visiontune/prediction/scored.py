"""``ScoredViews``: a classifier's calibrated probabilities and unknown score, averaged over the
test-time views of each image (``prediction.tta``)."""

from __future__ import annotations

import torch
from torch import nn

from ..backbones import Classifier
from ..engine.objective import task_probabilities
from ..evaluation.rejection import UnknownDetector

__all__ = ["ScoredViews"]


class ScoredViews(nn.Module):
    """``(batch, views, 3, H, W)`` -> ``(batch, classes)`` mean probabilities of
    ``softmax(logits / temperature)`` (``multi_label``: per-class sigmoids), or
    ``(batch, classes + 1)`` with the mean unknown score (``detector``) as the last column.

    Probabilities are averaged, not logits: each view votes with a distribution, so one
    overconfident view cannot outweigh the others by its logit scale. The temperature comes
    before the average because it was fitted on single eval views.
    """

    def __init__(
        self,
        model: Classifier,
        *,
        temperature: float = 1.0,
        detector: UnknownDetector | None = None,
        channels_last: bool = True,
        multi_label: bool = False,
    ):
        super().__init__()
        self.multi_label = multi_label  # each class's sigmoid, not one softmax
        self.model = model
        self.temperature = float(temperature)
        self.detector = detector
        self.channels_last = channels_last

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        batch, count = views.shape[:2]
        flat = views.flatten(0, 1)
        if self.channels_last:
            flat = flat.contiguous(memory_format=torch.channels_last)
        if self.detector is None:
            return self._average(self.model(flat), batch, count)
        features = self.model.backbone(flat)
        probs = self._average(self.model.head(features), batch, count)
        scores = self.detector.scores(features.float()).view(batch, count).mean(dim=1)
        return torch.cat([probs, scores[:, None]], dim=1)

    def _average(self, logits: torch.Tensor, batch: int, count: int) -> torch.Tensor:
        probs = task_probabilities(
            logits, multi_label=self.multi_label, temperature=self.temperature
        )
        return probs.view(batch, count, -1).mean(dim=1)
