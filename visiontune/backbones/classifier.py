"""One model anatomy: ``Classifier(backbone, head)``.

The backbone is a timm model with its ImageNet classifier removed (it returns pooled features);
the head is built for the user's classes. Heads are replaced by building a new one, never by
editing a backbone's ``fc`` in place.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ..specs import PreprocessSpec, WeightsSpec

__all__ = ["Backbone", "Classifier", "Head"]


class Backbone(nn.Module):
    """A pretrained feature extractor plus what it needs to be fed correctly.

    ``weights`` (a frozen ``WeightsSpec``: preprocessing, source, file hash) is set here and
    never patched: ``preprocess``, ``source`` and ``weights_sha256`` read it and cannot be
    assigned; ``with_weights`` gives a backbone over the same network with another spec.

    ``forward`` returns pooled features of width ``num_features``. ``stages()`` lists the
    network's coarse layer groups from input to output (stem, blocks..., final conv), taken from
    timm's ``group_matcher`` so ``partial`` fine-tuning works the same on every architecture.
    """

    def __init__(self, body: nn.Module, *, name: str, weights: WeightsSpec):
        super().__init__()
        self.body = body
        self.name = name
        self._weights = weights
        # The pooled output's width: timm's ``head_hidden_size`` where a head conv stays after
        # ``reset_classifier(0)`` (MobileNetV3: 960 -> 1280), else ``num_features``.
        self.num_features = int(getattr(body, "head_hidden_size", None) or body.num_features)

    @property
    def weights(self) -> WeightsSpec:
        return self._weights

    @property
    def preprocess(self) -> PreprocessSpec:
        return self._weights.preprocess

    @property
    def source(self) -> str:
        return self._weights.source

    @property
    def weights_sha256(self) -> str | None:
        """The hash of the weights file these were loaded from (kept when fine-tuned)."""
        return self._weights.sha256

    def with_weights(self, weights: WeightsSpec) -> Backbone:
        """A new ``Backbone`` sharing this one's network (the same parameters, not a copy) and
        its train/eval mode, described by ``weights``."""
        other = Backbone(self.body, name=self.name, weights=weights)
        other.training = self.training
        return other

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def stages(self) -> list[tuple[str, list[str]]]:
        """``[(stage name, [parameter names relative to self]), ...]`` from input to output."""
        from timm.models import group_parameters

        groups = group_parameters(self.body, self.body.group_matcher(coarse=True))
        ordered = []
        for i, group_id in enumerate(sorted(groups)):
            names = [f"body.{n}" for n in groups[group_id]]
            ordered.append((_stage_label(i, len(groups), names), names))
        return ordered

    def __repr__(self) -> str:  # the full module tree is hundreds of lines
        return (
            f"Backbone(name={self.name!r}, num_features={self.num_features}, "
            f"source={self.source!r})"
        )


def _stage_label(i: int, count: int, names: list[str]) -> str:
    if i == 0:
        return "stem"
    match = re.match(r"body\.([a-z_]+)\.(\d+)", names[0])
    if match:
        return f"{match.group(1)}.{match.group(2)}"
    return "final" if i == count - 1 else f"group{i}"


class Head(nn.Module):
    """Dropout then a linear layer: the new classifier for the user's classes."""

    def __init__(self, in_features: int, num_classes: int, *, dropout: float = 0.2):
        super().__init__()
        self.in_features = in_features
        self.num_classes = num_classes
        self.dropout_p = dropout
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(features))


class Classifier(nn.Module):
    """``head(backbone(x))``; logits over the user's classes."""

    def __init__(self, backbone: Backbone, head: Head):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))
