"""Frozen-backbone features of named sample lists (train, val, test, a gallery...) at once."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..data.folder import Sample
from ..data.loader import SkipLog
from ..engine.loop import Runtime
from .cache import FeatureCache
from .extract import FeatureSet, extract_features

__all__ = ["concat_feature_sets", "empty_feature_set", "extract_parts"]


def extract_parts(
    backbone,
    parts: dict[str, Sequence[Sample]],
    *,
    runtime: Runtime,
    cache: FeatureCache | None,
    workers: int,
    skips: SkipLog,
    batch_size: int = 64,
) -> dict[str, FeatureSet]:
    """Eval-view features of each non-empty named part, through ``cache`` where given."""
    return {
        name: extract_features(
            backbone,
            samples,
            runtime=runtime,
            batch_size=batch_size,
            workers=workers,
            skips=skips,
            desc=f"features ({name})",
            cache=cache,
        )
        for name, samples in parts.items()
        if samples
    }


def concat_feature_sets(sets: list[FeatureSet]) -> FeatureSet:
    """One set holding the rows of ``sets`` in order."""
    return FeatureSet(
        torch.cat([s.features for s in sets]),
        torch.cat([s.labels for s in sets]),
        [x for s in sets for x in s.samples],
    )


def empty_feature_set(dim: int) -> FeatureSet:
    """No rows, ``dim`` columns: a missing validation split, say."""
    return FeatureSet(torch.empty(0, dim), torch.empty(0, dtype=torch.long), [])
