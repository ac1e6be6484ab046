"""``--augment`` for a run: the PCA statistics it needs and the exact pipeline, recorded."""

from __future__ import annotations

from ..data.augment import AugmentSpec, PCAStats, build_batch_transform, compute_pca_stats
from ..data.folder import DatasetSplits
from ..data.transforms import train_transform
from ..specs import PreprocessSpec

__all__ = ["plan_augmentation"]


def plan_augmentation(
    augment: AugmentSpec,
    *,
    splits: DatasetSplits,
    frozen_backbone: bool,
    cache_views: int,
    preprocess: PreprocessSpec,
    seed: int,
) -> tuple[PCAStats | None, dict]:
    """The training pixels' principal components when ``pca-color`` is used (computed once,
    before training), and the record of the pipeline for ``config.json``."""
    if not frozen_backbone:
        used_for = "training images"
    elif cache_views:
        used_for = f"{cache_views} cached view(s) of each training image"
    else:  # a frozen backbone without cached views sees only the eval view
        return None, {"text": str(augment), "ops": augment.text, "used_for": None, "pca": None}
    pca = compute_pca_stats(splits.train, seed=seed) if augment.uses_pca else None
    pipeline = train_transform(preprocess, augment=augment, pca=pca).transforms
    mixer = build_batch_transform(augment, num_classes=len(splits.labels))
    return pca, {
        "text": str(augment),
        "ops": augment.text,
        "used_for": used_for,
        "pipeline": [repr(t) for t in pipeline],
        "batch": repr(mixer) if mixer else None,
        "pca": pca.to_dict() if pca else None,
    }
