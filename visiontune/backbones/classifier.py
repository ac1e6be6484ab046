"""One model anatomy: ``Classifier(backbone, head)``.

The backbone is a timm model with its ImageNet classifier removed (it returns pooled features);
the head is built for the user's classes. Heads are replaced by building a new one, never by
editing a backbone's ``fc`` in place.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ..specs import PreprocessSpec

__all__ = ["Backbone", "Classifier", "Head"]


class Backbone(nn.Module):
    """A pretrained feature extractor plus what it needs to be fed correctly.

    ``forward`` returns pooled features of width ``num_features``. ``stages()`` lists the
    network's coarse layer groups from input to output (stem, blocks..., final conv), taken from
    timm's ``group_matcher`` so ``partial`` fine-tuning works the same on every architecture.
    """

    def __init__(
        self,
        body: nn.Module,
        *,
        name: str,
        preprocess: PreprocessSpec,
        source: str,
        weights_sha256: str | None = None,
    ):
        super().__init__()
        self.body = body
        self.name = name
        self.preprocess = preprocess
        self.source = source
        self.weights_sha256 = weights_sha256
        # The pooled output's width: timm's ``head_hidden_size`` where a head conv stays after
        # ``reset_classifier(0)`` (MobileNetV3: 960 -> 1280), else ``num_features``.
        self.num_features = int(getattr(body, "head_hidden_size", None) or body.num_features)

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
        return f"Backbone(name={self.name!r}, num_features={self.num_features}, source={self.source!r})"


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
