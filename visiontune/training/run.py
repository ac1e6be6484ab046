"""One training run, top to bottom: ``make_plan -> prepare_data -> train -> write_run``.

Each phase takes values and returns values; nothing is written before ``train`` (which makes the
run folder and its checkpoints) and ``write_run`` (the bundle, history and metrics).
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .. import _runtime
from .._io import atomic_write_text
from ..config import TrainConfig
from ..data.loader import SkipLog
from ..engine import distributed
from ..errors import TrainingDiverged, VisiontuneWarning
from ..formats.bundle import save_bundle
from ..formats.checkpoint import CHECKPOINT_FILE, Checkpoint
from ..prediction.predictor import TrainedModel
from .checkpoints import check_same_data, skipped_before, splits_fingerprint
from .finetune import finetune
from .frozen import train_head_on_features
from .outdir import missing_folders, remove_empty, remove_old_run
from .plan import Plan, make_plan, print_plan
from .prepare import PreparedData, prepare_data
from .trust import TrustFit, fit_trust

__all__ = [
    "FitResult",
    "Outcome",
    "finite_or_null",
    "json_text",
    "no_validation_warning",
    "run_training",
    "train",
    "write_run",
]


@dataclass
class FitResult:
    run_dir: Path
    model: TrainedModel
    history: list[dict]
    metrics: dict  # "val", "test" (if DATA has a test split), "skipped", "timing"
    # Per validation image path: whether the model's top class is right (single-label runs with
    # validation images; None otherwise). ``--strategy auto`` compares candidates on it.
    val_correct: dict[str, bool] | None = None


@dataclass(frozen=True)
class Outcome:
    """What training produced, besides the weights left in ``plan.model``."""

    history: list[dict]
    test: dict | None
    skips: dict  # ``SkipLog.to_dict()``: every file skipped or noted, on every rank
    warm_start: dict | None = None
    extraction: dict | None = None  # the frozen path: features computed vs from the cache
    activations: dict | None = None  # partial/gradual: the cached-activation path, or why not
    trust: TrustFit | None = None  # calibration and rejection statistics (rank 0 only)


def train(plan: Plan, data: PreparedData) -> Outcome:
    """Train ``plan.model`` on ``data``: the head on cached features for a frozen backbone
    (rank 0 alone, seconds; never checkpointed, the cache makes a rerun cheap), else end to end."""
    dist = plan.runtime.distributed
    skips = SkipLog()
    skips.update({"skipped": data.screening.skipped, "notes": data.screening.notes})
    if plan.resume is not None:
        check_same_data(plan.resume, splits_fingerprint(data.splits), plan.run_dir)
        skips.update(skipped_before(plan.resume))
    if plan.writes:
        plan.run_dir.mkdir(parents=True, exist_ok=True)
    if plan.strategy.uses_frozen_backbone:
        head = distributed.on_main_rank(dist, lambda: _head(plan, data, skips), plan.model.head)
        history, test, warm_start, extraction = head.history, head.test, None, head.extraction
        activations, features = None, head.features
    else:
        tuned = finetune(plan, data, skips)
        history, test, warm_start, extraction = tuned.history, tuned.test, tuned.warm_start, None
        activations, features = tuned.activations, None
    trust = fit_trust(plan, data, skips, features) if plan.writes else None
    if dist:  # each rank decoded its own share of the images
        for found in dist.gather(skips.to_dict()):
            skips.update(found)
    return Outcome(history, test, skips.to_dict(), warm_start, extraction, activations, trust)


def _head(plan: Plan, data: PreparedData, skips: SkipLog):
    """The head trained on features; under torchrun without the features, which every rank
    would otherwise be sent (the trust pass reads them from the cache on rank 0 instead)."""
    head = train_head_on_features(plan, data, skips)
    return replace(head, features=None) if plan.runtime.distributed else head


def finite_or_null(value):
    """``value`` with every inf or NaN float (at any depth) replaced by None, for JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_null(v) for v in value]
    return value


def json_text(value) -> str:
    """Strict JSON (``null`` where a number is inf or NaN, never a bare ``NaN``), indented."""
    return json.dumps(finite_or_null(value), indent=2, allow_nan=False) + "\n"


def _history_csv(history: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(finite_or_null(history))  # an empty cell where JSON has null
    return buffer.getvalue()


def _best_row(history: list[dict]) -> dict:
    return next((r for r in history if r.get("best")), history[-1])


def _chosen(best: dict) -> dict:
    """What was chosen: the probe's C (and its cross-validated scores), or the epoch."""
    if "C" not in best:
        return {"best_epoch": best["epoch"]}
    if "cv_loss" not in best:
        return {"C": best["C"]}
    return {
        "C": best["C"],
        "cross_validation": {"accuracy": best["cv_acc"], "loss": best["cv_loss"]},
    }


def no_validation_warning(history: list[dict]) -> str | None:
    """The warning for a run without validation images (how it chose its result), or None."""
    best = _best_row(history)
    accuracy = best.get("val_acc")
    if accuracy is not None and math.isfinite(accuracy):
        return None
    if "cv_loss" in best:
        how = f"the L2 strength C={best['C']:g} was chosen by cross-validation on train"
    elif "C" in best:
        how = f"C={best['C']:g} was used (a class has too few images to cross-validate)"
    else:
        how = "the last epoch was kept (no early stopping)"
    return (
        f"no validation images (no val split, or --val-fraction 0): validation accuracy is "
        f"n/a; {how}"
    )


def _test_at_thresholds(outcome: Outcome) -> dict | None:
    """TEST's metrics; a multi-label run's at its validation-chosen thresholds (training
    scored TEST at 0.5, before the thresholds were chosen)."""
    fit = outcome.trust.thresholds if outcome.trust else None
    if outcome.test is None or fit is None or "test" not in fit.scores:
        return outcome.test
    return fit.scores["test"]


def run_metrics(plan: Plan, data: PreparedData, outcome: Outcome, seconds: float) -> dict:
    """``metrics.json``: the chosen epoch's (or probe's) validation scores, TEST, the data; a
    score that does not exist (no validation images) is None."""
    best = _best_row(outcome.history)
    chosen = _chosen(best)
    dist = plan.runtime.distributed
    return finite_or_null(
        {
            "strategy": plan.config.strategy,
            "val": {"accuracy": best["val_acc"], "loss": best["val_loss"], **chosen},
            "val_images": len(data.splits.val),
            "test": _test_at_thresholds(outcome),
            "head_warm_start": outcome.warm_start,
            "feature_extraction": outcome.extraction,
            "activation_cache": outcome.activations,
            "data_checks": data.screening.record,
            **(outcome.trust.metrics() if outcome.trust else {}),
            **({"excluded_suspects": data.suspects} if data.suspects is not None else {}),
            **({"advice": plan.advice} if plan.advice else {}),
            **outcome.skips,
            "timing": {
                "total_s": seconds,
                **({"trust_s": outcome.trust.seconds} if outcome.trust else {}),
                "device": str(plan.runtime.device),
                "precision": plan.runtime.precision.to_dict(),
                **({"processes": dist.world_size} if dist else {}),
            },
        }
    )


def _check_weights(model: torch.nn.Module) -> None:
    """The last guard before the bundle: never save inf or NaN weights."""
    bad = [
        name
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        raise TrainingDiverged(
            f"training diverged: {len(bad)} weight tensor(s) hold inf or NaN (the first: "
            f"{bad[0]}); the model was not saved - try a lower --lr"
        )


def write_run(plan: Plan, data: PreparedData, outcome: Outcome, metrics: dict) -> None:
    """The bundle, history and metrics into the run folder; then the checkpoint has served."""
    extra = {
        "strategy": plan.strategy.state_dict(),
        "training": plan.config.to_dict(),
        "augment": data.augment_record,
        "data": data.splits.summary(),
        "precision": plan.runtime.precision.to_dict(),
        **({"advice": plan.advice} if plan.advice else {}),
    }
    run_dir = plan.run_dir
    _check_weights(plan.model)
    remove_old_run(run_dir)  # --overwrite: no model.onnx of the old run beside the new model
    trust = outcome.trust
    save_bundle(
        run_dir,
        plan.model,
        labels=data.splits.labels,
        extra=extra,
        trust=trust.bundle_entry() if trust else None,
        trust_tensors=trust.gaussians.tensors() if trust and trust.gaussians else None,
    )
    atomic_write_text(run_dir / "history.json", json_text(outcome.history))
    atomic_write_text(run_dir / "history.csv", _history_csv(outcome.history))
    atomic_write_text(run_dir / "metrics.json", json_text(metrics))
    (run_dir / CHECKPOINT_FILE).unlink(missing_ok=True)


def run_training(
    config: TrainConfig,
    *,
    explicit: frozenset[str] = frozenset(),
    resume: Checkpoint | None = None,
    deadline: float | None = None,
    step_seconds: float | None = None,
    give_up=None,
) -> FitResult:
    """Plan, prepare, train and save one run, in one process or as a rank under torchrun.

    ``deadline`` (``time.monotonic()``): when the run must be written by; default
    ``--time-budget`` from the process's start, or none. ``step_seconds``: seconds per image
    of a training step of this model, when the caller has measured it (else it is timed).
    ``give_up``: a rule that stops fine-tuning early (``LoopConfig.give_up``)."""
    started = time.perf_counter()
    if deadline is None and config.time_budget_s:
        deadline = _runtime.process_started() + config.time_budget_s
    _runtime.tune_allocator()
    with distributed.session(config.device) as dist:
        if dist is None:  # under torchrun the cores are shared between the node's processes
            _runtime.configure_threads()
        device = None if dist else _runtime.resolve_device(config.device)
        plan = make_plan(
            config,
            dist=dist,
            device=device,
            explicit=explicit,
            resume=resume,
            deadline=deadline,
            step_seconds=step_seconds,
            give_up=give_up,
        )
        if plan.runtime.progress:
            print_plan(plan)
        data = prepare_data(plan)
        created = missing_folders(plan.run_dir) if plan.writes else []
        try:
            outcome = train(plan, data)
            model = plan.model.to("cpu").to(memory_format=torch.contiguous_format).eval()
            metrics = run_metrics(plan, data, outcome, time.perf_counter() - started)
            if plan.writes:
                write_run(plan, data, outcome, metrics)
        except BaseException:  # a failed or interrupted run leaves no empty folder behind
            remove_empty(created)
            raise
        shift = outcome.trust.shift if outcome.trust else None
        for warning in (no_validation_warning(outcome.history), shift and shift.warning()):
            if warning and plan.writes:
                warnings.warn(warning, VisiontuneWarning, stacklevel=2)
    trained = TrainedModel(
        model,
        data.splits.labels,
        config=None,
        run_dir=plan.run_dir,
        precision=plan.runtime.precision,
    )
    val_correct = outcome.trust.val_correct if outcome.trust else None
    return FitResult(plan.run_dir, trained, outcome.history, metrics, val_correct)
