"""Training the new head on cached features (``head``), or fitting it before fine-tuning."""

from __future__ import annotations

import torch

from ..data.balance import class_weights, sample_weights
from ..data.loader import make_loader
from ..engine.loop import LoopConfig
from ..engine.loop import fit as fit_loop
from ..engine.optim import build_optimizer
from ..features.extract import FeatureDataset, FeatureSet
from ..features.probe import fit_linear_probe
from ._features import _augmented_views, _concat, _empty, _features, _metrics_from_logits


def _train_head_on_features(
    model, splits, config, cfg, skips, workers, groups, pca=None
) -> tuple[list, dict, dict]:
    """Extract features once (the backbone is frozen), then train the head on them."""
    features = _features(
        model.backbone,
        {"train": splits.train, "val": splits.val, "test": splits.test},
        config,
        cfg,
        skips,
        workers,
    )
    extraction = {
        name: {"computed": fs.computed, "from_cache": fs.from_cache}
        for name, fs in features.items()
    }
    if config.cache_views:
        views = _augmented_views(model.backbone, splits.train, config, cfg, skips, workers, pca)
        extraction["train_views"] = {
            "computed": sum(v.computed for v in views),
            "from_cache": sum(v.from_cache for v in views),
        }
        features["train"] = _concat([features["train"], *views])
    if config.head_solver == "lbfgs":  # full batch: --balance sampler means weights here too
        history = fit_linear_probe(
            model.head,
            features["train"],
            features.get("val", _empty(features)),
            class_weight=_class_weight(config, features["train"], model.head),
        ).history
    else:
        history = _fit_head_minibatch(model.head, features, config, cfg, groups)
    test = None
    if "test" in features:
        logits = _head_logits(model.head, features["test"])
        test = _metrics_from_logits(logits, features["test"].labels, splits.labels.names)
    return history, test, extraction


def _class_weight(config, train: FeatureSet, head) -> torch.Tensor | None:
    """--balance weights or sampler: the L-BFGS probe's per-class weights."""
    return (
        None if config.balance == "none" else class_weights(train.labels.tolist(), head.num_classes)
    )


def _head_logits(head, features: FeatureSet) -> torch.Tensor:
    head.eval()
    with torch.no_grad():
        return head(features.features)


def _fit_head_minibatch(head, features, config, cfg, groups) -> list[dict]:
    """AdamW on mini-batches of cached features, with the same loop and early stopping as images."""
    head_groups = [g for g in groups if g["name"].startswith("head")]
    optimizer = build_optimizer(head_groups, weight_decay=config.weight_decay)
    labels, num_classes = features["train"].labels.tolist(), head.num_classes
    train = make_loader(
        FeatureDataset(features["train"]),
        batch_size=config.batch_size,
        shuffle=True,
        workers=0,
        seed=config.seed,
        sample_weights=sample_weights(labels, num_classes) if config.balance == "sampler" else None,
    )
    val = make_loader(
        FeatureDataset(features.get("val", _empty(features))),
        batch_size=256,
        shuffle=False,
        workers=0,
    )
    weights = class_weights(labels, num_classes) if config.balance == "weights" else None
    head_cfg = LoopConfig(
        **{**cfg.__dict__, "channels_last": False, "desc": "train head", "class_weights": weights}
    )
    return fit_loop(head, train, val, optimizer, cfg=head_cfg, set_train_mode=lambda m: m.train())


def _warm_start_head(model, splits, config, cfg, skips, workers) -> dict:
    """Fit the new head as a linear probe on the pretrained features before fine-tuning.

    Linear-probe-then-fine-tune (Kumar et al., ICLR 2022): starting from a random head, the first
    steps send large, meaningless gradients into the pretrained layers; starting from a fitted one
    they refine features instead of distorting them. Costs one pass over train and val.
    """
    features = _features(
        model.backbone, {"train": splits.train, "val": splits.val}, config, cfg, skips, workers
    )
    probe = fit_linear_probe(
        model.head,
        features["train"],
        features.get("val", _empty(features)),
        class_weight=_class_weight(config, features["train"], model.head),
    )
    best = next(r for r in probe.history if r["best"])
    return {"C": probe.C, "val_acc": best["val_acc"], "val_loss": best["val_loss"]}
