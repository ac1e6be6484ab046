"""The end-to-end path: images through the whole ``Classifier``, checkpointed every epoch."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..data.augment import build_batch_transform
from ..data.balance import balancing
from ..data.loader import ImageDataset, SkipLog, make_loader
from ..data.transforms import decode_size, eval_transform, train_transform
from ..engine import distributed
from ..engine.loop import evaluate_epoch
from ..engine.loop import fit as fit_loop
from ..engine.optim import build_optimizer
from ..evaluation.metrics import metrics_from_logits
from ..formats.checkpoint import TrainingState
from .activations import activation_training, with_views
from .checkpoints import RunCheckpoints, restore, splits_fingerprint
from .frozen import warm_start_head
from .plan import Plan
from .prepare import PreparedData

__all__ = ["FinetuneOutcome", "finetune"]


@dataclass(frozen=True)
class FinetuneOutcome:
    history: list[dict]
    test: dict | None  # TEST metrics, when DATA has a test split
    warm_start: dict | None  # the linear probe the head started from, if any
    activations: dict | None = None  # the cached-activation path: used, or why not


def _loaders(plan: Plan, data: PreparedData):
    """The training loader (augmented, seeded per epoch, sharded under torchrun) and the
    validation loader; and the loss's class weights for ``--balance``."""
    config, dist = plan.config, plan.runtime.distributed
    spec = plan.model.backbone.preprocess
    size = decode_size(spec)
    transform = train_transform(spec, augment=config.augment_spec, pca=data.pca)
    train_ds = ImageDataset(data.splits.train, transform, decode_size=size)
    labels = [s.label for s in data.splits.train]
    loss_weights, draw_weights = balancing(config.balance, labels, len(data.splits.labels))
    pin = plan.runtime.device.type == "cuda"
    # Each rank loads its share of every global batch (--batch-size), drawn as one process would.
    shards = {"rank": dist.rank, "world_size": dist.world_size} if dist else {}
    per_rank = config.batch_size // (dist.world_size if dist else 1)
    train = make_loader(
        train_ds,
        batch_size=per_rank,
        shuffle=True,
        workers=plan.workers,
        seed=config.seed,
        seeded_epochs=True,
        pin_memory=pin,
        drop_last=len(train_ds) > config.batch_size,
        sample_weights=draw_weights,
        **shards,
    )
    val_ds = ImageDataset(data.splits.val, eval_transform(spec), decode_size=size)
    val = make_loader(
        val_ds,
        batch_size=config.batch_size * 2,
        shuffle=False,
        workers=plan.workers,
        pin_memory=pin,
    )
    return train, val, loss_weights


def _warm_start(plan: Plan, data: PreparedData, skips: SkipLog) -> dict | None:
    """The head fitted as a probe first, when the strategy or ``--warm-start-head`` asks; on
    rank 0 alone, its weights then shared. A resumed run has it in the checkpoint's weights."""
    if plan.resume is not None:
        return plan.resume.extra.get("warm_start")
    if not (plan.config.warm_start_head or plan.strategy.warm_starts_head):
        return None
    dist = plan.runtime.distributed
    return distributed.on_main_rank(
        dist, lambda: warm_start_head(plan, data, skips), plan.model.head
    )


def _test_metrics(plan: Plan, data: PreparedData, skips: SkipLog) -> dict | None:
    if not data.splits.test:
        return None
    spec = plan.model.backbone.preprocess
    test_ds = ImageDataset(data.splits.test, eval_transform(spec), decode_size=decode_size(spec))
    loader = make_loader(
        test_ds, batch_size=plan.config.batch_size * 2, shuffle=False, workers=plan.workers
    )
    out = evaluate_epoch(
        plan.model, loader, runtime=plan.runtime, on_batch=skips.record, desc="test"
    )
    return metrics_from_logits(out.logits, out.labels, data.splits.labels.names)


def checkpoint_record(plan: Plan, data: PreparedData, warm_start: dict | None) -> dict:
    """What every checkpoint of the run holds besides weights and progress."""
    saved = replace(plan.config, data=str(Path(plan.config.data).resolve()), out=None)
    return {
        "training": saved.to_dict(),
        "advice": plan.advice,
        "data_fingerprint": splits_fingerprint(data.splits),
        "warm_start": warm_start,
    }


def finetune(plan: Plan, data: PreparedData, skips: SkipLog) -> FinetuneOutcome:
    """Train ``plan.model`` on images with its strategy; a checkpoint after set-up and after
    every epoch, so ``resume`` continues from the last one."""
    model, strategy, runtime = plan.model, plan.strategy, plan.runtime
    train, val, loss_weights = _loaders(plan, data)
    mixer = build_batch_transform(plan.config.augment_spec, num_classes=len(data.splits.labels))
    cfg = replace(plan.loop, batch_transform=mixer, class_weights=loss_weights)
    warm_start = _warm_start(plan, data, skips)
    model.to(runtime.device)
    cached, activations = activation_training(plan, data, skips)
    on_epoch_start, forward = strategy.on_epoch_start, None
    if cached is not None:
        train, val, forward = cached.train, cached.val, cached.forward
        on_epoch_start = with_views(strategy.on_epoch_start, cached.views)
    optimizer = build_optimizer(plan.param_groups, weight_decay=plan.config.weight_decay)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    checkpoints = RunCheckpoints(
        plan.run_dir, writes=plan.writes, record=checkpoint_record(plan, data, warm_start)
    )
    if plan.resume is not None:
        state = restore(plan.resume, model, optimizer, strategy)
    else:  # the set-up is saved too, so a run can be resumed from its first epoch
        state = None
        checkpoints.save(model, optimizer, TrainingState(), strategy, skips)
    history = fit_loop(
        model,
        train,
        val,
        optimizer,
        cfg=cfg,
        runtime=runtime,
        set_train_mode=strategy.set_train_mode,
        on_epoch_start=on_epoch_start,
        on_batch=skips.record,
        state=state,
        on_checkpoint=lambda progress: checkpoints.save(
            model, optimizer, progress, strategy, skips
        ),
        forward=forward,
    )
    if runtime.distributed:
        runtime.distributed.check_in_sync(model)
    return FinetuneOutcome(history, _test_metrics(plan, data, skips), warm_start, activations)
