"""Run a frozen backbone over images once; train heads on the resulting feature tensors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from ..backbones import Backbone
from ..data.folder import Sample
from ..data.loader import ImageDataset, SkipLog, make_loader
from ..data.transforms import decode_size, eval_transform
from ..engine.loop import LoopConfig, run_inference

__all__ = ["FeatureSet", "FeatureDataset", "extract_features"]


@dataclass
class FeatureSet:
    """Pooled backbone features for the decodable ``samples`` (rows align with ``samples``)."""

    features: torch.Tensor  # (N, D) float32
    labels: torch.Tensor  # (N,) long
    samples: list[Sample]

    def __len__(self) -> int:
        return len(self.samples)


class FeatureDataset(Dataset):
    """Cached features in the same ``(input, label, index, note)`` form as ``ImageDataset``."""

    def __init__(self, features: FeatureSet):
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int):
        return self.features.features[index], int(self.features.labels[index]), index, None


def extract_features(
    backbone: Backbone,
    samples: Sequence[Sample],
    *,
    cfg: LoopConfig,
    batch_size: int = 64,
    workers: int = 0,
    skips: SkipLog | None = None,
    desc: str = "extract features",
) -> FeatureSet:
    """Features with the backbone's deterministic eval preprocessing; undecodable files skipped."""
    samples = list(samples)
    dataset = ImageDataset(samples, eval_transform(backbone.preprocess),
                           decode_size=decode_size(backbone.preprocess))
    loader = make_loader(dataset, batch_size=batch_size, shuffle=False, workers=workers)
    record = (lambda batch: skips.record(batch, samples)) if skips is not None else None
    backbone = backbone.to(cfg.device)
    if cfg.channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
    features, labels, indices = run_inference(backbone, loader, cfg=cfg, on_batch=record, desc=desc)
    kept = [samples[i] for i in indices.tolist()]
    return FeatureSet(features, labels, kept)
