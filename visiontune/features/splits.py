"""Frozen-backbone features of named sample lists (train, val, test, a gallery...) at once."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from ..data.folder import Sample
from ..data.loader import SkipLog
from ..engine.loop import Runtime
from .cache import FeatureCache
from .extract import (
    FeatureSet,
    concat_feature_sets,
    empty_feature_set,
    iter_features,
)

__all__ = ["concat_feature_sets", "empty_feature_set", "extract_parts", "iter_parts"]


def extract_parts(backbone, parts: dict[str, Sequence[Sample]], **options) -> dict[str, FeatureSet]:
    """Eval-view features of each non-empty named part, through ``cache`` where given; the
    keywords are ``iter_parts``'."""
    chunks: dict[str, list[FeatureSet]] = {name: [] for name, samples in parts.items() if samples}
    for name, chunk in iter_parts(backbone, parts, **options):
        chunks[name].append(chunk)
    return {
        name: concat_feature_sets(sets) if sets else empty_feature_set(backbone.num_features)
        for name, sets in chunks.items()
    }


def iter_parts(
    backbone,
    parts: dict[str, Sequence[Sample]],
    *,
    runtime: Runtime,
    cache: FeatureCache | None,
    workers: int,
    skips: SkipLog,
    batch_size: int = 64,
) -> Iterator[tuple[str, FeatureSet]]:
    """``(name, chunk)``: ``extract_parts``' rows a chunk at a time (``iter_features``), for a
    caller that writes them out rather than keeping them."""
    for name, samples in parts.items():
        if not samples:
            continue
        for chunk in iter_features(
            backbone,
            samples,
            runtime=runtime,
            batch_size=batch_size,
            workers=workers,
            skips=skips,
            desc=f"features ({name})",
            cache=cache,
        ):
            yield name, chunk
