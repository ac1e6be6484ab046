"""``make_plan``: everything a run will do, decided before anything is written.

The data is scanned and split, the backbone loaded, ``auto`` replaced by the advisor's choice,
the strategy's defaults filled in, the model built and the parameter groups made. Every error
a user's input can cause is raised here, while the disk is untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import torch

from .. import _runtime
from .._console import console, stage_table
from .._paths import check_writable_dir, default_cache_dir
from .._seeding import seed_all
from ..backbones import Classifier, Head, create_backbone
from ..config import TrainConfig
from ..data.dataset import describe_data, scan_data
from ..data.folder import DatasetSplits
from ..data.loader import default_workers
from ..engine import distributed
from ..engine.distributed import Distributed
from ..engine.loop import LoopConfig, Runtime
from ..engine.precision import resolve_precision
from ..engine.speed import train_step_seconds
from ..errors import VisiontuneError
from ..features.cache import FeatureCache
from ..formats.checkpoint import Checkpoint
from ..strategies import Strategy, make_strategy
from ..strategies.evidence import after_training_seconds
from .advice import apply_advice, measure_and_decide
from .outdir import check_out

__all__ = ["Plan", "check_multi_label", "feature_cache", "make_plan", "print_plan", "run_runtime"]


@dataclass(frozen=True)
class Plan:
    """One run, decided: what trains on what, how, where, and into which folder."""

    config: TrainConfig  # resolved: a concrete strategy, every default filled in
    splits: DatasetSplits  # as scanned; ``prepare_data`` screens them
    model: Classifier
    strategy: Strategy  # set up on ``model``: frozen parts frozen
    param_groups: list[dict]
    loop: LoopConfig
    runtime: Runtime
    run_dir: Path
    workers: int
    advice: dict | None = None  # ``auto``: what the advisor measured, chose and applied
    resume: Checkpoint | None = None  # set when continuing an interrupted run

    @property
    def writes(self) -> bool:
        """Only one process writes the run folder: rank 0 under torchrun."""
        return self.runtime.distributed is None or self.runtime.distributed.is_main


def feature_cache(
    config: TrainConfig,
    backbone,
    *,
    runtime: Runtime,
    view: str | None = None,
    pooling: str | None = None,
):
    """The on-disk feature cache of ``backbone`` (``view``, ``pooling``) as ``runtime``
    computes it (its inference precision is in the key), unless ``--no-cache``."""
    if not config.cache:
        return None
    return FeatureCache.for_backbone(
        config.cache_dir,
        backbone,
        view=view,
        pooling=pooling,
        precision=runtime.precision.inference,
    )


def run_runtime(
    config: TrainConfig, device: torch.device, *, progress: bool, distributed_ctx=None
) -> Runtime:
    """The runtime of a training run: ``device`` with ``--precision`` resolved for it (a
    one-time speed check on this machine for ``auto``, ``engine.precision``, kept in the
    cache folder unless ``--no-cache``). Under torchrun rank 0 decides for every rank."""
    folder = (config.cache_dir or default_cache_dir()) if config.cache else None
    precision = distributed.on_main_rank(
        distributed_ctx,
        lambda: resolve_precision(config.precision, device, cache_dir=folder, keep=config.cache),
    )
    return Runtime.on(device, progress=progress, distributed=distributed_ctx, precision=precision)


def default_run_dir(config: TrainConfig) -> Path:
    """``--out``, or a new ``runs/<time>-<backbone>-<strategy>`` folder name."""
    if config.out:
        return Path(config.out).expanduser()
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{stamp}-{config.backbone}-{config.strategy}"
    run_dir, n = base, 1
    while run_dir.exists():
        n += 1
        run_dir = base.with_name(f"{base.name}-{n}")
    return run_dir


def _on_rank_0(dist: Distributed | None, check) -> None:
    """``check()`` on rank 0; its error, if any, raised on every rank, so all stop alike."""
    problem = None
    if dist is None or dist.is_main:
        try:
            check()
        except VisiontuneError as exc:
            problem = str(exc)
    if dist:
        problem = dist.broadcast(problem)
    if problem:
        raise VisiontuneError(problem)


def _check_out(config: TrainConfig, dist: Distributed | None, *, resuming: bool) -> None:
    """Before any work: ``--out`` (or ``runs/``) writable, not a file, not an interrupted run,
    not a finished one unless ``--overwrite``. Nothing is created."""
    if config.out:
        target = Path(config.out).expanduser()
        _on_rank_0(dist, lambda: check_out(target, overwrite=config.overwrite, resuming=resuming))
    else:  # runs/<time>-...: a new name, so only runs/ (or the working directory) must be writable
        _on_rank_0(dist, lambda: check_writable_dir(Path("runs"), "run folder"))


def _name_run_dir(config: TrainConfig, dist: Distributed | None, *, resuming: bool) -> Path:
    """Rank 0 names the run folder; the others learn its name, or the error, so every rank stops
    alike. ``--out`` was checked by ``_check_out`` before any work; a generated
    ``runs/<time>-...`` name (known once ``auto`` chose) is checked here; nothing is created."""
    run_dir = default_run_dir(config) if dist is None or dist.is_main else None
    if not config.out:
        _on_rank_0(dist, lambda: check_out(run_dir, overwrite=config.overwrite, resuming=resuming))
    return dist.broadcast(run_dir) if dist else run_dir


def _advise(config, splits, backbone, runtime, workers, explicit) -> tuple[TrainConfig, dict]:
    """``--strategy auto``: measure train + val, decide, print why; the config it chose."""
    advice = measure_and_decide(
        splits,
        backbone,
        runtime=runtime,
        workers=workers,
        cache=feature_cache(config, backbone, runtime=runtime),
        seed=config.seed,
    )
    if runtime.progress:
        console.print(
            f"[bold]advice[/] {advice.quadrant} -> strategy {advice.strategy}: {advice.reason}"
        )
    return apply_advice(config, advice.to_dict(), explicit=explicit)


def _loop_deadline(
    deadline, model, strategy, splits, config, runtime, per_image=None
) -> float | None:
    """When fine-tuning must stop for the run to be written by ``deadline``: the TEST pass, the
    trust pass (``training.trust``: one forward pass over train, val and TEST) and the writing
    come after it (``after_training_seconds``, timed by a measured training step: ``per_image``
    or here). A frozen backbone's head trains in seconds: not timed."""
    if deadline is None or strategy.uses_frozen_backbone:
        return None
    if per_image is None:
        size, batch = model.backbone.preprocess.size, config.batch_size
        per_image = train_step_seconds(model, size=size, batch_size=batch, runtime=runtime)
    counts = {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)}
    return deadline - after_training_seconds(per_image, **counts)


def check_multi_label(config: TrainConfig, splits: DatasetSplits) -> None:
    """Refuse the options that assume one class per image, for multi-label data."""
    if not splits.multi_label:
        return
    refused = [
        (config.balance != "none", f"--balance {config.balance}"),
        (
            bool(config.augment_spec.batch_ops),
            "--augment " + ",".join(config.augment_spec.batch_ops),
        ),
        (config.exclude_suspects, "--exclude-suspects"),
    ]
    for given, flag in refused:
        if given:
            raise VisiontuneError(
                f"{flag} assumes one class per image; {describe_data(config.data)} is "
                "multi-label (a label cell holds several classes, or --multi-label)"
            )


def make_plan(
    config: TrainConfig,
    *,
    dist: Distributed | None = None,
    device=None,
    explicit: frozenset[str] = frozenset(),
    resume: Checkpoint | None = None,
    deadline: float | None = None,
    step_seconds: float | None = None,
    give_up=None,
) -> Plan:
    """Decide the run ``config`` describes. ``device``: default ``config.device`` resolved (under
    torchrun, the rank's own); ``explicit``: the options the user gave (``auto`` keeps them);
    ``resume``: the checkpoint of the interrupted run it continues; ``deadline``
    (``time.monotonic()``): when the run must be written by; ``step_seconds``: a training
    step's measured seconds per image, if the caller timed one; ``give_up``: the loop's rule
    for stopping a fine-tune early (``LoopConfig.give_up``)."""
    if dist and config.batch_size % dist.world_size:
        raise VisiontuneError(
            f"--batch-size {config.batch_size} is the global batch and must divide evenly "
            f"between the {dist.world_size} processes"
        )
    _check_out(config, dist, resuming=resume is not None)
    seed_all(config.seed)
    progress = config.progress and (dist is None or dist.is_main)
    if dist:
        device = dist.device
    elif device is None:
        device = _runtime.resolve_device(config.device)
    workers = default_workers() if config.workers is None else config.workers
    splits = scan_data(
        config.data, config.manifest_columns, val_fraction=config.val_fraction, seed=config.seed
    )
    check_multi_label(config, splits)
    backbone = create_backbone(config.backbone, weights=config.weights or "default")
    advice, runtime = resume.extra.get("advice") if resume else None, None
    if config.strategy == "auto":  # rank 0 measures; every rank trains what it chose
        runtime = run_runtime(config, device, progress=progress, distributed_ctx=dist)
        solo = replace(runtime, distributed=None)
        config, advice = distributed.on_main_rank(
            dist, lambda: _advise(config, splits, backbone, solo, workers, explicit)
        )
    config = config.resolve()
    head = Head(backbone.num_features, len(splits.labels), dropout=config.dropout)
    model = Classifier(backbone, head)
    strategy = make_strategy(config.strategy, unfreeze=config.unfreeze)
    groups = strategy.setup(
        model,
        lr=config.lr,
        backbone_lr_mult=config.backbone_lr_mult,
        weight_decay=config.weight_decay,
    )
    # Once data, backbone and strategy are known good: a run refused for them writes nothing
    # (``auto``'s speed check may go into the cache folder).
    runtime = runtime or run_runtime(config, device, progress=progress, distributed_ctx=dist)
    loop = LoopConfig(
        epochs=config.epochs,
        warmup_epochs=config.warmup_epochs,
        label_smoothing=config.label_smoothing,
        patience=config.patience,
        seed=config.seed,
        deadline=_loop_deadline(deadline, model, strategy, splits, config, runtime, step_seconds),
        give_up=give_up,
    )
    run_dir = _name_run_dir(config, dist, resuming=resume is not None)
    return Plan(
        config, splits, model, strategy, groups, loop, runtime, run_dir, workers, advice, resume
    )


def print_plan(plan: Plan) -> None:
    """The data, backbone, strategy and device, and the table of what trains at which LR."""
    s, model, config = plan.splits.summary(), plan.model, plan.config
    console.print(
        f"[bold]data[/] {s['root']} ({s['layout']} layout): {len(plan.splits.labels)} classes, "
        f"train {s['train']}, val {s['val']} ({s['val_source']}), test {s['test']}"
    )
    console.print(
        f"[bold]backbone[/] {model.backbone.name} from {model.backbone.source}; "
        f"[bold]strategy[/] {plan.strategy.name}; [bold]device[/] {plan.runtime.device}"
    )
    rows = plan.strategy.describe(
        model, lr=config.lr, backbone_lr_mult=config.backbone_lr_mult, epochs=config.epochs
    )
    console.print(stage_table(rows, title="parameter groups"))
