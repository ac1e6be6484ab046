"""``prepare_data``: the plan's splits screened, and what augmentation needs, before training."""

from __future__ import annotations

from dataclasses import dataclass

from ..data.augment import PCAStats
from ..data.folder import DatasetSplits
from ..errors import DataError
from .augmentation import plan_augmentation
from .plan import Plan
from .screening import Screening, screen_splits
from .suspects import exclude_suspects

__all__ = ["PreparedData", "prepare_data"]


@dataclass(frozen=True)
class PreparedData:
    """The splits training will use, and what was found on the way there."""

    splits: DatasetSplits  # unusable files (and, with --exclude-duplicates, copies) left out
    screening: Screening  # files left out with why, caveats, the data_checks record
    pca: PCAStats | None  # the training pixels' principal components, for ``pca-color``
    augment_record: dict  # the exact pipeline, for config.json
    suspects: dict | None = None  # --exclude-suspects: the training images left out, and why


def _refuse_empty_classes(splits: DatasetSplits) -> None:
    """Every class still needs a training image once unusable files are left out."""
    counts = [0] * len(splits.labels)
    for sample in splits.train:
        for c in [i for i, h in enumerate(sample.multi_hot) if h] or [sample.label]:
            counts[c] += 1
    empty = [name for name, count in zip(splits.labels.names, counts, strict=True) if not count]
    if empty:
        raise DataError(
            f"class(es) {', '.join(empty)} have no decodable training image once unreadable "
            "files are left out; add images or remove the class folder"
        )


def prepare_data(plan: Plan) -> PreparedData:
    """Screen the plan's splits (headers and hashes, no decoding), with ``--exclude-suspects``
    leave out the training images an audit flags, and compute the statistics the augmentation
    needs. Writes nothing (but the feature cache)."""
    config = plan.config
    splits, screening = screen_splits(
        plan.splits, exclude_duplicates=config.exclude_duplicates, warn=plan.writes
    )
    suspects = None
    if config.exclude_suspects:
        splits, suspects = exclude_suspects(plan, splits)
    _refuse_empty_classes(splits)
    pca, record = plan_augmentation(
        config.augment_spec,
        splits=splits,
        frozen_backbone=plan.strategy.uses_frozen_backbone,
        cache_views=config.cache_views,
        preprocess=plan.model.backbone.preprocess,
        seed=config.seed,
    )
    return PreparedData(splits, screening, pca, record, suspects)
