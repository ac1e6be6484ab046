"""``fit``: scan, build, train with the chosen strategy, save the run."""

from __future__ import annotations

import csv
import io
import json
import random
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from .. import _runtime
from .._console import console, stage_table
from .._io import atomic_write_text
from ..backbones import Classifier, Head, create_backbone
from ..config import TrainConfig
from ..data.augment import (
    build_batch_transform,
)
from ..data.balance import balancing
from ..data.folder import DatasetSplits, scan_folder
from ..data.loader import ImageDataset, SkipLog, default_workers, make_loader
from ..data.transforms import decode_size, eval_transform, train_transform
from ..engine import distributed
from ..engine.loop import LoopConfig, evaluate_epoch
from ..engine.loop import fit as fit_loop
from ..engine.optim import build_optimizer
from ..errors import VisiontuneError
from ..formats.bundle import save_bundle
from ..formats.checkpoint import Checkpoint, TrainingState
from ..prediction.predictor import TrainedModel
from ..strategies import make_strategy
from ._advice import _advise, _apply_advice
from ._augment import _augmentation
from ._check import _screen_data
from ._checkpoints import RunCheckpoints, refuse_interrupted, splits_fingerprint
from ._features import _metrics_from_logits
from ._head import _train_head_on_features, _warm_start_head


@dataclass
class FitResult:
    run_dir: Path
    model: TrainedModel
    history: list[dict]
    metrics: dict  # "val", "test" (if DATA has a test split), "skipped", "timing"


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _new_run_dir(config: TrainConfig) -> Path:
    if config.out:
        return Path(config.out).expanduser()
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{stamp}-{config.backbone}-{config.strategy}"
    run_dir, n = base, 1
    while run_dir.exists():
        n += 1
        run_dir = base.with_name(f"{base.name}-{n}")
    return run_dir


def _history_csv(history: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()


def _train_end_to_end(
    model,
    strategy,
    splits,
    config,
    cfg,
    skips,
    workers,
    groups,
    pca=None,
    checkpoints: RunCheckpoints | None = None,
) -> tuple[list, dict]:
    spec = model.backbone.preprocess
    dist = cfg.distributed
    size = decode_size(spec)
    train_ds = ImageDataset(
        splits.train, train_transform(spec, augment=config.augment, pca=pca), decode_size=size
    )
    loss_weights, draw_weights = balancing(
        config.balance, [s.label for s in splits.train], len(splits.labels)
    )
    cfg = replace(
        cfg,
        batch_transform=build_batch_transform(config.augment, num_classes=len(splits.labels)),
        class_weights=loss_weights,
    )
    val_ds = ImageDataset(splits.val, eval_transform(spec), decode_size=size)
    pin = cfg.device.type == "cuda"
    # Each rank loads its share of every global batch (--batch-size), drawn as one process would.
    shards = {"rank": dist.rank, "world_size": dist.world_size} if dist else {}
    train_loader = make_loader(
        train_ds,
        batch_size=config.batch_size // (dist.world_size if dist else 1),
        shuffle=True,
        workers=workers,
        seed=config.seed,
        seeded_epochs=True,
        drop_last=len(train_ds) > config.batch_size,
        pin_memory=pin,
        **shards,
        sample_weights=draw_weights,
    )
    val_loader = make_loader(
        val_ds, batch_size=config.batch_size * 2, shuffle=False, workers=workers, pin_memory=pin
    )
    resumed = checkpoints is not None and checkpoints.resumed is not None
    if resumed:  # the fitted head is in the checkpoint's weights
        warm_start = checkpoints.resumed.extra.get("warm_start")
    elif config.warm_start_head or strategy.warm_starts_head:
        alone = replace(cfg, distributed=None, seed=None)  # rank 0 fits it; DDP shares the weights
        warm_start = distributed.on_main_rank(
            dist, lambda: _warm_start_head(model, splits, config, alone, skips, workers), model.head
        )
    else:
        warm_start = None
    optimizer = build_optimizer(groups, weight_decay=config.weight_decay)
    model.to(cfg.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    state, on_checkpoint = None, None
    if checkpoints is not None:
        checkpoints.extra["warm_start"] = warm_start
        state = checkpoints.restore(model, optimizer, strategy)
        if state is None:  # the set-up is saved too, so a run can be resumed from its first epoch
            checkpoints.save(model, optimizer, TrainingState(), strategy)

        def on_checkpoint(progress: TrainingState) -> None:
            checkpoints.save(model, optimizer, progress, strategy)

    history = fit_loop(
        model,
        _Recorded(train_loader, train_ds, skips),
        _Recorded(val_loader, val_ds, skips),
        optimizer,
        cfg=cfg,
        set_train_mode=strategy.set_train_mode,
        on_epoch_start=strategy.on_epoch_start,
        state=state,
        on_checkpoint=on_checkpoint,
    )
    if dist:
        dist.check_in_sync(model)
    test = None
    if splits.test:
        test_ds = ImageDataset(splits.test, eval_transform(spec), decode_size=size)
        test_loader = make_loader(
            test_ds, batch_size=config.batch_size * 2, shuffle=False, workers=workers
        )
        out = evaluate_epoch(model, _Recorded(test_loader, test_ds, skips), cfg=cfg, desc="test")
        test = _metrics_from_logits(out.logits, out.labels, splits.labels.names)
    return history, test, warm_start


class _Recorded:
    """A loader whose batches report their skipped files to a ``SkipLog`` as they pass."""

    def __init__(self, loader, dataset: ImageDataset, skips: SkipLog):
        self.loader, self.dataset, self.skips = loader, dataset, skips

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def sampler(self):  # the loop tells it the epoch (``EpochSampler.set_epoch``)
        return self.loader.sampler

    def __iter__(self):
        for batch in self.loader:
            self.skips.record(batch, self.dataset.samples)
            yield batch


def _print_plan(
    splits: DatasetSplits, model: Classifier, strategy, config: TrainConfig, device
) -> None:
    s = splits.summary()
    console.print(
        f"[bold]data[/] {s['root']} ({s['layout']} layout): {len(splits.labels)} classes, "
        f"train {s['train']}, val {s['val']} ({s['val_source']}), test {s['test']}"
    )
    console.print(
        f"[bold]backbone[/] {model.backbone.name} from {model.backbone.source}; "
        f"[bold]strategy[/] {strategy.name}; [bold]device[/] {device}"
    )
    rows = strategy.describe(
        model,
        lr=config.resolved("lr"),
        backbone_lr_mult=config.backbone_lr_mult,
        epochs=config.resolved("epochs"),
    )
    console.print(stage_table(rows, title="parameter groups"))


def fit(data: str | Path, *, config: TrainConfig | None = None, **options) -> FitResult:
    """Fine-tune a pretrained backbone on ``data`` (a folder of class folders, optionally inside
    train/val/test split folders) and save the run. Options are ``TrainConfig``'s fields.

    Started by ``torchrun``, each process trains its share with DistributedDataParallel
    (``visiontune.engine.distributed``) and only rank 0 writes the run."""
    config = config or TrainConfig(data=str(data), **options)
    with distributed.session(config.device) as dist:
        return _fit(config, dist)


def _run_folder(config: TrainConfig, dist, *, resuming: bool) -> Path:
    """Rank 0 names the run folder (refusing an interrupted run's) and makes it; the others
    learn its name, or the error, so every rank stops alike."""
    run_dir, problem = None, None
    if dist is None or dist.is_main:
        run_dir = _new_run_dir(config)
        try:
            if not resuming:
                refuse_interrupted(run_dir)
        except VisiontuneError as exc:
            problem = str(exc)
    if dist:
        run_dir, problem = dist.broadcast((run_dir, problem))
    if problem:
        raise VisiontuneError(problem)
    if dist is None or dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _fit(config: TrainConfig, dist, resume: Checkpoint | None = None) -> FitResult:
    """``fit`` within a (possibly absent) torchrun group; ``resume`` continues a checkpoint."""
    started = time.perf_counter()
    _runtime.tune_allocator()
    if dist is None:  # under torchrun the cores are shared between the node's processes
        _runtime.configure_threads()
    _seed_everything(config.seed)
    device = dist.device if dist else _runtime.resolve_device(config.device)
    if dist and not dist.is_main:
        config = replace(config, progress=False)
    if dist and config.batch_size % dist.world_size:
        raise VisiontuneError(
            f"--batch-size {config.batch_size} is the global batch and must divide "
            f"evenly between the {dist.world_size} processes"
        )
    # Everything that can fail on the user's input happens before anything is written.
    splits = scan_folder(config.data, val_fraction=config.val_fraction, seed=config.seed)
    backbone = create_backbone(config.backbone, weights=config.weights or "default")
    advice = resume.extra.get("advice") if resume else None
    if config.strategy == "auto":  # measure the data, then train what the advisor chose
        advice = distributed.on_main_rank(dist, lambda: _advise(splits, backbone, config, device))
        config = _apply_advice(config, advice)
    model = Classifier(
        backbone, Head(backbone.num_features, len(splits.labels), dropout=config.dropout)
    )
    strategy = make_strategy(config.strategy, unfreeze=config.unfreeze)
    groups = strategy.setup(
        model,
        lr=config.resolved("lr"),
        backbone_lr_mult=config.backbone_lr_mult,
        weight_decay=config.weight_decay,
    )
    if config.progress:
        _print_plan(splits, model, strategy, config, device)
    run_dir = _run_folder(config, dist, resuming=resume is not None)
    cfg = LoopConfig(
        epochs=config.resolved("epochs"),
        warmup_epochs=config.warmup_epochs,
        label_smoothing=config.label_smoothing,
        patience=config.resolved("patience"),
        device=device,
        channels_last=device.type == "cpu",
        progress=config.progress,
        seed=config.seed,
        distributed=dist,
    )
    workers = default_workers() if config.workers is None else config.workers
    skips = SkipLog()
    data_checks = _screen_data(
        splits,
        skips,
        exclude_duplicates=config.exclude_duplicates,
        warn=dist is None or dist.is_main,
    )
    pca, augment_record = _augmentation(config, splits, strategy, model.backbone.preprocess)
    if strategy.uses_frozen_backbone:
        # Seconds on cached features: rank 0 trains the head, the others receive it. Not
        # checkpointed: a rerun reads the features back from the cache.
        alone = replace(cfg, distributed=None, seed=None)
        history, test, extraction = distributed.on_main_rank(
            dist,
            lambda: _train_head_on_features(
                model, splits, config, alone, skips, workers, groups, pca
            ),
            model.head,
        )
        warm_start, checkpoints = None, None
    else:
        saved = replace(config, data=str(Path(config.data).resolve()), out=None)
        checkpoints = RunCheckpoints(
            run_dir,
            dist=dist,
            resumed=resume,
            skips=skips,
            extra={
                "training": saved.to_dict(),
                "advice": advice,
                "data_fingerprint": splits_fingerprint(splits),
            },
        )
        history, test, warm_start = _train_end_to_end(
            model, strategy, splits, config, cfg, skips, workers, groups, pca, checkpoints
        )
        extraction = None
    if dist:  # each rank decoded its own share of the images
        for found in dist.gather(skips.to_dict()):
            skips.skipped.update(found["skipped"])
            skips.notes.update(found["notes"])
    model = model.to("cpu").to(memory_format=torch.contiguous_format).eval()
    best = next((r for r in history if r.get("best")), history[-1])
    chosen = {"C": best["C"]} if "C" in best else {"best_epoch": best["epoch"]}
    metrics = {
        "val": {"accuracy": best["val_acc"], "loss": best["val_loss"], **chosen},
        "test": test,
        "head_warm_start": warm_start,
        "feature_extraction": extraction,
        "data_checks": data_checks,
        **({"advice": advice} if advice else {}),
        **skips.to_dict(),
        "timing": {
            "total_s": time.perf_counter() - started,
            "device": str(device),
            **({"processes": dist.world_size} if dist else {}),
        },
    }
    if dist is None or dist.is_main:
        save_bundle(
            run_dir,
            model,
            labels=splits.labels,
            extra={
                "strategy": strategy.state_dict(),
                "training": config.to_dict(),
                "augment": augment_record,
                "data": splits.summary(),
                **({"advice": advice} if advice else {}),
            },
        )
        atomic_write_text(run_dir / "history.json", json.dumps(history, indent=2) + "\n")
        atomic_write_text(run_dir / "history.csv", _history_csv(history))
        atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        if checkpoints is not None:
            checkpoints.finish()
    trained = TrainedModel(model, splits.labels, config=None, run_dir=run_dir)
    return FitResult(run_dir, trained, history, metrics)
