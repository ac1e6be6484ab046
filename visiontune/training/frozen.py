"""The frozen-backbone path: the head trained on cached features (``head``), or fitted as a
linear probe before fine-tuning (the warm start of ``gradual`` and ``--warm-start-head``)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..data.augment import describe_view
from ..data.balance import class_weights, sample_weights
from ..data.loader import SkipLog, make_loader
from ..engine.loop import LoopConfig
from ..engine.loop import fit as fit_loop
from ..engine.optim import build_optimizer
from ..evaluation.metrics import metrics_from_logits
from ..features.cache import view_descriptor
from ..features.extract import FeatureDataset, FeatureSet, extract_features
from ..features.probe import fit_linear_probe
from ..features.splits import concat_feature_sets, empty_feature_set, extract_parts
from .plan import Plan, feature_cache
from .prepare import PreparedData

__all__ = ["HeadOutcome", "train_head_on_features", "warm_start_head"]


@dataclass(frozen=True)
class HeadOutcome:
    history: list[dict]
    test: dict | None  # TEST metrics, when DATA has a test split
    extraction: dict  # per split: features computed vs read from the cache
    features: dict[str, FeatureSet] | None = None  # eval-view features per split (trust pass)


def _split_features(plan: Plan, parts: dict, skips: SkipLog) -> dict[str, FeatureSet]:
    backbone = plan.model.backbone
    return extract_parts(
        backbone,
        parts,
        runtime=replace(plan.runtime, distributed=None),
        cache=feature_cache(plan.config, backbone, runtime=plan.runtime),
        workers=plan.workers,
        skips=skips,
    )


def _augmented_views(plan: Plan, data: PreparedData, skips: SkipLog) -> list[FeatureSet]:
    """``--cache-views K``: K augmented views per training image, each cached under its seed."""
    config, backbone = plan.config, plan.model.backbone
    view = describe_view(config.augment_spec, data.pca)
    return [
        extract_features(
            backbone,
            data.splits.train,
            runtime=replace(plan.runtime, distributed=None),
            batch_size=64,
            workers=plan.workers,
            skips=skips,
            view_seed=seed,
            desc=f"augmented view {seed + 1}/{config.cache_views}",
            cache=feature_cache(
                config, backbone, runtime=plan.runtime, view=view_descriptor(view, seed)
            ),
            augment=config.augment_spec,
            pca=data.pca,
        )
        for seed in range(config.cache_views)
    ]


def _probe_class_weight(plan: Plan, train: FeatureSet) -> torch.Tensor | None:
    """--balance weights or sampler: the full-batch L-BFGS probe weighs its loss per class."""
    if plan.config.balance == "none":
        return None
    return class_weights(train.labels.tolist(), plan.model.head.num_classes)


def _fit_head_minibatch(plan: Plan, features: dict[str, FeatureSet]) -> list[dict]:
    """AdamW on mini-batches of cached features, with the same loop and early stopping."""
    config, head = plan.config, plan.model.head
    head_groups = [g for g in plan.param_groups if g["name"].startswith("head")]
    optimizer = build_optimizer(head_groups, weight_decay=config.weight_decay)
    labels, num_classes = features["train"].labels.tolist(), head.num_classes
    draws = sample_weights(labels, num_classes) if config.balance == "sampler" else None
    train = make_loader(
        FeatureDataset(features["train"]),
        batch_size=config.batch_size,
        shuffle=True,
        workers=0,
        seed=config.seed,
        sample_weights=draws,
    )
    val_set = features.get("val", empty_feature_set(head.in_features))
    val = make_loader(FeatureDataset(val_set), batch_size=256, shuffle=False, workers=0)
    weights = class_weights(labels, num_classes) if config.balance == "weights" else None
    # Not seeded per epoch (the feature loader is not an EpochSampler) and on one process.
    cfg: LoopConfig = replace(plan.loop, desc="train head", class_weights=weights, seed=None)
    runtime = replace(plan.runtime, channels_last=False, distributed=None)
    return fit_loop(
        head, train, val, optimizer, cfg=cfg, runtime=runtime, set_train_mode=lambda m: m.train()
    )


def train_head_on_features(plan: Plan, data: PreparedData, skips: SkipLog) -> HeadOutcome:
    """Extract features once (the backbone is frozen), then train the head on them."""
    splits, head = data.splits, plan.model.head
    parts = {"train": splits.train, "val": splits.val, "test": splits.test}
    features = _split_features(plan, parts, skips)
    extraction = {
        n: {"computed": f.computed, "from_cache": f.from_cache} for n, f in features.items()
    }
    clean = dict(features)  # before --cache-views adds augmented rows to train
    if plan.config.cache_views:
        views = _augmented_views(plan, data, skips)
        extraction["train_views"] = {
            "computed": sum(v.computed for v in views),
            "from_cache": sum(v.from_cache for v in views),
        }
        features["train"] = concat_feature_sets([features["train"], *views])
    if plan.config.head_solver == "lbfgs":  # full batch: --balance sampler means weights here
        val = features.get("val", empty_feature_set(head.in_features))
        weight = _probe_class_weight(plan, features["train"])
        seed = plan.config.seed
        probe = fit_linear_probe(head, features["train"], val, class_weight=weight, seed=seed)
        history = probe.history
    else:
        history = _fit_head_minibatch(plan, features)
    test = None
    if "test" in features:
        head.eval()
        with torch.no_grad():
            logits = head(features["test"].features)
        test = metrics_from_logits(logits, features["test"].labels, splits.labels.names)
    return HeadOutcome(history, test, extraction, clean)


def warm_start_head(plan: Plan, data: PreparedData, skips: SkipLog) -> dict:
    """Fit the new head as a linear probe on the pretrained features before fine-tuning.

    Linear-probe-then-fine-tune (Kumar et al., ICLR 2022): starting from a random head, the first
    steps send large, meaningless gradients into the pretrained layers; starting from a fitted one
    they refine features instead of distorting them. Costs one pass over train and val.
    """
    parts = {"train": data.splits.train, "val": data.splits.val}
    features = _split_features(plan, parts, skips)
    head = plan.model.head
    val = features.get("val", empty_feature_set(head.in_features))
    weight = _probe_class_weight(plan, features["train"])
    seed = plan.config.seed
    probe = fit_linear_probe(head, features["train"], val, class_weight=weight, seed=seed)
    best = next(r for r in probe.history if r["best"])
    return {"C": probe.C, "val_acc": best["val_acc"], "val_loss": best["val_loss"]}
