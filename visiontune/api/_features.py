"""Frozen-backbone features of named sample lists, through the on-disk cache."""

from __future__ import annotations

import torch

from ..data.augment import (
    describe_view,
)
from ..evaluation.metrics import classification_metrics
from ..features.cache import FeatureCache, view_descriptor
from ..features.extract import FeatureSet, extract_features


def _features(backbone, parts: dict, config, cfg, skips, workers) -> dict:
    """Eval-view features of each named split, read from the on-disk cache where present."""
    cache = FeatureCache.for_backbone(config.cache_dir, backbone) if config.cache else None
    return {
        name: extract_features(
            backbone,
            samples,
            cfg=cfg,
            batch_size=64,
            workers=workers,
            skips=skips,
            desc=f"features ({name})",
            cache=cache,
        )
        for name, samples in parts.items()
        if samples
    }


def _augmented_views(backbone, samples, config, cfg, skips, workers, pca=None) -> list[FeatureSet]:
    """``--cache-views K``: K augmented views per training image, each cached under its seed."""
    views = []
    view = describe_view(config.augment, pca)
    for seed in range(config.cache_views):
        cache = (
            FeatureCache.for_backbone(config.cache_dir, backbone, view=view_descriptor(view, seed))
            if config.cache
            else None
        )
        views.append(
            extract_features(
                backbone,
                samples,
                cfg=cfg,
                batch_size=64,
                workers=workers,
                skips=skips,
                desc=f"augmented view {seed + 1}/{config.cache_views}",
                cache=cache,
                view_seed=seed,
                augment=config.augment,
                pca=pca,
            )
        )
    return views


def _concat(sets: list[FeatureSet]) -> FeatureSet:
    return FeatureSet(
        torch.cat([s.features for s in sets]),
        torch.cat([s.labels for s in sets]),
        [x for s in sets for x in s.samples],
    )


def _empty(features: dict) -> FeatureSet:
    dim = features["train"].features.shape[1]
    return FeatureSet(torch.empty(0, dim), torch.empty(0, dtype=torch.long), [])


def _metrics_from_logits(logits: torch.Tensor, labels: torch.Tensor, names) -> dict:
    probs = torch.softmax(logits, 1).numpy() if len(labels) else None
    preds = logits.argmax(1).numpy() if len(labels) else []
    return classification_metrics(labels.numpy(), preds, names, probs)
