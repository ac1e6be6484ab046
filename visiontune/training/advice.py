"""``advise`` and ``--strategy auto``: measure the data, choose a strategy, apply it."""

from __future__ import annotations

from dataclasses import replace

from ..backbones import Backbone
from ..config import TrainConfig
from ..data.folder import DatasetSplits
from ..engine.loop import Runtime
from ..features.cache import FeatureCache
from ..features.similarity import SampleRecord, measure
from ..strategies import Advice, decide

__all__ = ["apply_advice", "measure_and_decide"]


def measure_and_decide(
    splits: DatasetSplits,
    backbone: Backbone,
    *,
    runtime: Runtime,
    cache: FeatureCache | None,
    workers: int,
    seed: int,
    sample: SampleRecord | None = None,
) -> Advice:
    """Measure the train and val splits (never test) against ``backbone``; the advisor's choice.
    ``sample``: the measurement sample's features and statistics, recorded earlier."""
    return decide(
        measure(
            splits,
            backbone,
            runtime=runtime,
            cache=cache,
            workers=workers,
            seed=seed,
            sample=sample,
        )
    )


def apply_advice(
    config: TrainConfig, advice: dict, *, explicit: set[str]
) -> tuple[TrainConfig, dict]:
    """The chosen strategy, with the advisor's settings for every option not in ``explicit``
    (the options the user gave); and the advice record with what was ``applied``."""
    applied = {k: v for k, v in advice["settings"].items() if k not in explicit}
    config = replace(config, strategy=advice["strategy"], **applied)
    return config, {**advice, "applied": applied}
