"""Fine-tuning on cached activations: the frozen stages run once per image view, not per epoch.

``partial`` (and ``gradual`` with ``--unfreeze``) never train the stages below a boundary, and
those stages keep their BatchNorm in eval mode, so their output for a given augmented image is
the same in every epoch. It is computed once and cached (``features.activations``); each epoch
then runs only the trainable stages and the head, forwards and backwards.

What changes, and what does not:
- **Augmentation.** ``--activation-views K`` views of each training image are drawn once, each
  from its own seed (``derive_seed(--seed, view)``), with the run's ``--augment`` preset; epoch
  ``e`` trains on view ``e mod K``. Images recomputed every epoch would see ``epochs`` different
  crops; here they see K, each reused. Mixup and cutmix mix whole images, so they keep the
  image path. Validation uses the eval view, computed once.
- **BatchNorm.** Frozen stages are in eval mode in both paths (their statistics never move);
  the trainable stages' BatchNorm trains on the same batches as it would from images. So an
  epoch on view ``v`` computes exactly what the image path computes for that view.
- **When it is rebuilt.** The cache key holds the backbone's weights (file hash or tensor
  digest), preprocessing, the boundary stage and the view (augmentation preset, PCA statistics
  and seed): a change of any of them reads nothing stale, it computes the activations again.
  ``--no-cache`` keeps them in memory for the run only.
- **When it is not used** (the image path runs, and ``metrics.json`` says why): K = 0, every
  stage trains (``full``, ``gradual`` without ``--unfreeze``), mixup/cutmix, torchrun, a backbone
  family ``backbones.split`` cannot cut, or activations larger than half the free memory.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, replace

from torch import nn

from .._seeding import derive_seed
from ..backbones import Backbone
from ..backbones.split import BackboneSplit, split_backbone
from ..config import TrainConfig
from ..data.augment import describe_view
from ..data.balance import balancing
from ..data.loader import SkipLog, make_loader
from ..features.activations import (
    ActivationViews,
    Flattened,
    activation_pooling,
)
from ..features.cache import view_descriptor
from ..features.extract import FeatureSet, extract_features
from ..strategies import Strategy
from .plan import Plan, feature_cache
from .prepare import PreparedData

__all__ = [
    "ActivationTraining",
    "activation_rows",
    "activation_split",
    "activation_training",
    "with_views",
]

MEMORY_SHARE = 0.5  # of the free physical memory the cached activations may take


@dataclass(frozen=True)
class ActivationTraining:
    """What ``finetune`` trains on instead of images: ``forward`` maps activations to logits."""

    forward: nn.Module
    train: object  # DataLoader over ActivationViews
    val: object
    views: ActivationViews


def _free_memory() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not on this platform
        return None


def _why_not(config: TrainConfig) -> str | None:
    """Why the image path must run, whatever the strategy; None if nothing."""
    if config.activation_views == 0:
        return "--activation-views 0"
    if config.augment_spec.batch_ops:
        return f"--augment {', '.join(config.augment_spec.batch_ops)} mixes whole images"
    return None


def activation_split(
    config: TrainConfig, strategy: Strategy, backbone: Backbone
) -> tuple[BackboneSplit | None, str | None]:
    """Where ``strategy`` lets ``config``'s run cut ``backbone`` for cached activations (the
    trainable ``upper`` part is what each epoch runs), or None and why the image path runs.
    ``auto`` prices a fine-tune's epochs by it before training one."""
    reason = _why_not(config)
    if reason is not None:
        return None, reason
    first = strategy.lowest_trained_stage(len(backbone.stages()))
    if first == 0:
        return None, "every stage trains"
    if first == len(backbone.stages()):
        return None, "no backbone stage trains (--unfreeze 0)"
    split = split_backbone(backbone, first)
    if split is None:
        return None, f"{backbone.name} cannot be cut at stage {first} (backbones.split)"
    return split, None


def _view_seeds(plan: Plan) -> list[int]:
    return [derive_seed(plan.config.seed, view) for view in range(plan.config.activation_views)]


def activation_rows(config: TrainConfig, splits) -> int:
    """Images the frozen stages pass before the first epoch: each training image once per view,
    and validation once. What the cache holds, and what ``auto`` prices before a fine-tune."""
    return config.activation_views * len(splits.train) + len(splits.val)


def _too_large(plan: Plan, data: PreparedData, shape: tuple[int, ...]) -> str | None:
    size = activation_rows(plan.config, data.splits) * math.prod(shape) * 4  # float32
    free = _free_memory()
    if free is not None and size > MEMORY_SHARE * free:
        return f"the activations would take {size / 2**30:.1f} GiB of {free / 2**30:.1f} free"
    return None


def _extract(plan, data, skips, split, seed: int | None, *, desc: str) -> FeatureSet:
    config, backbone = plan.config, plan.model.backbone
    # The frozen stages' forward is part of a training step, so it runs in the training
    # precision: the cached path then computes what the image path computes.
    precision = plan.runtime.precision
    runtime = replace(plan.runtime, precision=replace(precision, inference=precision.training))
    view = None
    if seed is not None:
        view = view_descriptor(describe_view(config.augment_spec, data.pca), seed)
    return extract_features(
        backbone,
        data.splits.train if seed is not None else data.splits.val,
        runtime=runtime,
        batch_size=config.batch_size * 2,
        workers=plan.workers,
        skips=skips,
        desc=desc,
        cache=feature_cache(
            config,
            backbone,
            runtime=runtime,
            view=view,
            pooling=activation_pooling(split),
        ),
        view_seed=seed,
        augment=config.augment_spec,
        pca=data.pca,
        network=Flattened(split.lower),
    )


def _loaders(plan: Plan, views: ActivationViews, val: ActivationViews):
    config = plan.config
    labels = views.views[0].labels.tolist()
    _, draw_weights = balancing(config.balance, labels, plan.model.head.num_classes)
    train = make_loader(
        views,
        batch_size=config.batch_size,
        shuffle=True,
        workers=0,  # rows already in memory: a worker would only copy them
        seed=config.seed,
        seeded_epochs=True,
        drop_last=len(views) > config.batch_size,
        sample_weights=draw_weights,
    )
    val_loader = make_loader(val, batch_size=config.batch_size * 2, shuffle=False, workers=0)
    return train, val_loader


def activation_training(
    plan: Plan, data: PreparedData, skips: SkipLog
) -> tuple[ActivationTraining | None, dict]:
    """The cached-activation set-up for this run, or None and the reason (in the record)."""
    split, reason = None, None
    if plan.runtime.distributed is not None:
        reason = "under torchrun each rank recomputes its own share"
    else:
        split, reason = activation_split(plan.config, plan.strategy, plan.model.backbone)
    if split is not None:
        reason = _too_large(plan, data, split.shape)
    if reason is not None:
        return None, {"used": False, "reason": reason}
    started = time.perf_counter()
    count = plan.config.activation_views
    train_views = [
        _extract(plan, data, skips, split, seed, desc=f"activations, view {v + 1}/{count}")
        for v, seed in enumerate(_view_seeds(plan))
    ]
    val = _extract(plan, data, skips, split, None, desc="activations, validation")
    views = ActivationViews(train_views, split.shape)
    record = {
        "used": True,
        "boundary": split.boundary,
        "views": count,
        "shape": list(split.shape),
        "computed": sum(v.computed for v in train_views) + val.computed,
        "from_cache": sum(v.from_cache for v in train_views) + val.from_cache,
        "seconds": round(time.perf_counter() - started, 2),
    }
    train, val_loader = _loaders(plan, views, ActivationViews([val], split.shape))
    forward = nn.Sequential(split.upper, plan.model.head)
    return ActivationTraining(forward, train, val_loader, views), record


def with_views(on_epoch_start, views: ActivationViews):
    """``on_epoch_start`` that first points ``views`` at the epoch's view."""

    def start(epoch: int, model, optimizer) -> None:
        views.set_epoch(epoch)
        on_epoch_start(epoch, model, optimizer)

    return start
