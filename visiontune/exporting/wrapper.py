"""The module that gets exported: uint8 images in, class probabilities out.

Normalisation lives inside the exported graph so the file is self-contained: a consumer resizes
and crops (described in the metadata) and never has to know the weights' mean and std, the
classic silent-accuracy trap when a model moves to another runtime. Probabilities, not logits,
come out because that is what every consumer computes next; logits are ``log(p)`` up to a
per-image constant if needed.
"""

from __future__ import annotations

import torch
from torch import nn

from ..specs import PreprocessSpec

__all__ = ["ProbabilityModel"]


class ProbabilityModel(nn.Module):
    """``softmax(classifier(normalise(images / 255)))`` for uint8 ``(N, 3, size, size)`` input."""

    def __init__(self, classifier: nn.Module, spec: PreprocessSpec):
        super().__init__()
        self.classifier = classifier
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # The same arithmetic as torchvision's ToDtype(scale=True) + Normalize, so the exported
        # model sees bit-for-bit the input the eager model saw in training and evaluation.
        x = images.to(torch.float32) * (1.0 / 255.0)
        x = (x - self.mean) / self.std
        return torch.softmax(self.classifier(x), dim=1)
