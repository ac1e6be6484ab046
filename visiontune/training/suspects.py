"""``--exclude-suspects``: audit the training split before training and leave out the images
whose label looks wrong (``label-issue``) or that look like no class at all (``outlier``).

Only train is audited (its out-of-fold probabilities come from probes on train alone), so
validation and TEST stay untouched and the evaluation stays honest; ambiguous images are hard,
not wrong, and stay in. The features are the run's own backbone's before training, read through
the feature cache, so a rerun costs seconds.
"""

from __future__ import annotations

from dataclasses import replace

from ..data.folder import DatasetSplits
from ..trust import audit_splits
from ..trust.audit import EXCLUDED_KINDS
from .plan import Plan, feature_cache

__all__ = ["exclude_suspects"]


def exclude_suspects(plan: Plan, splits: DatasetSplits) -> tuple[DatasetSplits, dict]:
    """``splits`` without the flagged training images, and the record for ``metrics.json``:
    how many, and each one's finding."""
    backbone = plan.model.backbone
    result = audit_splits(
        splits,
        backbone,
        parts=("train",),
        cache=feature_cache(plan.config, backbone, runtime=plan.runtime),
        workers=plan.workers,
        runtime=replace(plan.runtime, distributed=None),
        seed=plan.config.seed,
    )
    flagged = [f for f in result.findings if f.kind in EXCLUDED_KINDS]
    paths = {f.path for f in flagged}
    train = [s for s in splits.train if str(s.path) not in paths]
    record = {"count": len(flagged), "audited": len(splits.train)}
    record["files"] = [f.to_dict() for f in flagged]
    return replace(splits, train=train), record
