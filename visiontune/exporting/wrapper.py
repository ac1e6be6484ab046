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

from ..evaluation.rejection import FeatureGaussians, UnknownDetector, raw_scores
from ..specs import PreprocessSpec

__all__ = ["ProbabilityModel"]


class ProbabilityModel(nn.Module):
    """``softmax(classifier(normalise(images / 255)) / temperature)`` (``multi_label``: each
    class's sigmoid) for uint8
    ``(N, 3, size, size)`` input; with a ``detector``, also each image's normalised unknown score
    ``(N,)`` (``evaluation.rejection``), computed from the same pooled features in the graph."""

    def __init__(
        self,
        classifier: nn.Module,
        spec: PreprocessSpec,
        *,
        temperature: float = 1.0,
        detector: UnknownDetector | None = None,
        multi_label: bool = False,
    ):
        super().__init__()
        self.classifier = classifier
        self.multi_label = multi_label  # per-class sigmoids instead of one softmax
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("inv_temperature", torch.tensor(1.0 / float(temperature)))
        self.scores_unknown = detector is not None
        if detector is not None:
            scale = detector.scale
            self.register_buffer("class_means", detector.gaussians.class_means.clone())
            self.register_buffer("precision", detector.gaussians.precision.clone())
            self.register_buffer("center", torch.tensor(scale.center, dtype=torch.float32))
            self.register_buffer(
                "spread", torch.tensor(scale.threshold - scale.center, dtype=torch.float32)
            )

    def forward(self, images: torch.Tensor):
        # The same arithmetic as torchvision's ToDtype(scale=True) + Normalize, so the exported
        # model sees bit-for-bit the input the eager model saw in training and evaluation.
        x = images.to(torch.float32) * (1.0 / 255.0)
        x = (x - self.mean) / self.std
        if self.multi_label:
            return torch.sigmoid(self.classifier(x) * self.inv_temperature)
        if not self.scores_unknown:
            return torch.softmax(self.classifier(x) * self.inv_temperature, dim=1)
        features = self.classifier.backbone(x)
        probs = torch.softmax(self.classifier.head(features) * self.inv_temperature, dim=1)
        # The eager score (evaluation.rejection) on this module's buffers, so both are one code.
        raw = raw_scores(FeatureGaussians(self.class_means, self.precision), features)
        return probs, (raw - self.center) / self.spread
