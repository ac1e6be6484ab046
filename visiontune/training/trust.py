"""After training: calibrate the probabilities and learn what the training images look like.

One pass of the trained backbone over the training, validation and TEST images (eval view; for a
frozen backbone ``head`` training already has them) gives pooled features and logits. From them:

- the **temperature** is fitted on validation (``evaluation.calibration``; never on TEST);
- both fits on validation leave out the validation images that have a byte-identical copy in
  train (``data_checks`` leakage): to the model they are training images, sure and close to
  their class means, and a fit on them learns the training images' confidence and distances
  (on yoga, 50 of 162 validation images are such copies);
- the **rejection statistics** (class means and shared covariance of the training features,
  ``evaluation.rejection``) are fitted on train, and their scale on validation: the automatic
  threshold flags ``DEFAULT_REJECT_RATE`` of the validation images. Without validation images
  the training images set the scale; they sit closer to their own class means than new images
  do, so more genuine images are flagged than the rate says, and the record says so;
- TEST, when DATA has one, is scored with the calibrated probabilities: its ECE before and
  after, and the share of TEST images the automatic threshold flags;
- validation and TEST are compared (``evaluation.shift``): where their accuracy or flagged
  share differ beyond noise, both fits hold for validation's kind of image and not TEST's, and
  the run warns.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..data.loader import SkipLog
from ..evaluation.calibration import TemperatureFit, fit_temperature, scaled_probabilities
from ..evaluation.metrics import calibrated_ece, expected_calibration_error
from ..evaluation.multilabel import DEFAULT_THRESHOLD, choose_thresholds, multilabel_metrics
from ..evaluation.rejection import (
    DEFAULT_REJECT_RATE,
    FeatureGaussians,
    RejectionScale,
    fit_feature_gaussians,
    rejection_scale,
    unknown_scores,
)
from ..evaluation.shift import SplitShift, compare_splits
from ..features.extract import FeatureSet
from ..features.splits import extract_parts
from ..formats.trust import REJECTION_SCORE
from .plan import Plan, feature_cache
from .prepare import PreparedData

__all__ = ["ThresholdFit", "TrustFit", "fit_trust"]


@dataclass(frozen=True)
class TrustFit:
    calibration: TemperatureFit
    gaussians: FeatureGaussians | None
    scale: RejectionScale | None
    scale_from: str | None  # "validation" or "train"
    test: dict | None  # TEST's ECE before/after and the share flagged unknown
    seconds: float = 0.0  # the features pass and the fits
    # Multi-label: each class's probability threshold, chosen on validation, and its record.
    thresholds: ThresholdFit | None = None
    shift: SplitShift | None = None  # validation against TEST, where both have images
    copies: int = 0  # validation images left out of the fits: a byte-identical copy in train
    # Every validation image's path: whether its top class is right (auto pairs candidates on it).
    val_correct: dict[str, bool] | None = None

    def bundle_entry(self) -> dict:
        """``config.json``'s ``trust`` entry (``formats.trust``; the digest is added there)."""
        entry: dict = {
            "temperature": self.calibration.temperature,
            "calibration": self.calibration.to_dict(),  # on validation: why this T
        }
        if self.thresholds is not None:
            entry["multi_label"] = True
            entry["thresholds"] = [float(t) for t in self.thresholds.values]
        if self.scale is not None:
            entry["rejection"] = {
                "score": REJECTION_SCORE,
                "center": self.scale.center,
                "threshold": self.scale.threshold,
                "rate": self.scale.rate,
                "threshold_from": self.scale_from,
                "quantiles": list(self.scale.quantiles),
            }
        return entry

    def metrics(self) -> dict:
        """``metrics.json``'s ``calibration`` and ``rejection`` entries."""
        rejection = None
        if self.scale is not None:
            rejection = {
                "score": REJECTION_SCORE,
                "rate": self.scale.rate,
                "threshold_from": self.scale_from,
                **({"test": self.test["rejected"]} if self.test else {}),
            }
        calibration = {**self.calibration.to_dict(), "val_copies_left_out": self.copies}
        if rejection is not None:
            rejection["val_copies_left_out"] = self.copies
        if self.thresholds is not None:
            return {"calibration": calibration, "rejection": None, **self.thresholds.metrics()}
        if self.test:
            keys = ("ece_before", "ece_after", "ece_if_calibrated")
            calibration["test"] = {k: self.test[k] for k in keys}
        shift = self.shift.to_dict() if self.shift else None
        return {"calibration": calibration, "rejection": rejection, "validation_vs_test": shift}


def _features(plan: Plan, data: PreparedData, skips: SkipLog) -> dict[str, FeatureSet]:
    splits, backbone = data.splits, plan.model.backbone
    # A fine-tuned backbone's features are this run's alone: not worth a cache entry.
    cache = (
        feature_cache(plan.config, backbone, runtime=plan.runtime)
        if plan.strategy.uses_frozen_backbone
        else None
    )
    backbone.eval()
    return extract_parts(
        backbone,
        {"train": splits.train, "val": splits.val, "test": splits.test},
        runtime=replace(plan.runtime, distributed=None),
        cache=cache,
        workers=plan.workers,
        skips=skips,
    )


def _logits(plan: Plan, part: FeatureSet) -> np.ndarray:
    head = plan.model.head.eval()
    with torch.no_grad():
        return head(part.features.to(next(head.parameters()).device)).float().cpu().numpy()


@dataclass(frozen=True)
class _Judged:
    """A split through the trained head and the automatic threshold, computed once for the
    TEST record and the comparison with validation."""

    logits: np.ndarray
    labels: np.ndarray
    flagged: np.ndarray | None  # above the automatic threshold; None: no rejection statistics

    @property
    def correct(self) -> np.ndarray:
        return self.logits.argmax(1) == self.labels


def _test_record(test: _Judged, fit: TemperatureFit) -> dict:
    logits, labels = test.logits, test.labels
    return {
        "ece_before": expected_calibration_error(labels, scaled_probabilities(logits, 1.0)),
        "ece_after": expected_calibration_error(
            labels, scaled_probabilities(logits, fit.temperature)
        ),
        # what a perfectly calibrated model with these probabilities would show on TEST
        "ece_if_calibrated": calibrated_ece(scaled_probabilities(logits, fit.temperature)),
        "rejected": None if test.flagged is None else float(np.mean(test.flagged)),
    }


def _shift(val: _Judged | None, test: _Judged | None) -> SplitShift | None:
    """Validation against TEST: classified correctly, and flagged at the automatic threshold."""
    if val is None or test is None or not len(val.labels) or not len(test.labels):
        return None
    return compare_splits(val.correct, test.correct, val.flagged, test.flagged)


@dataclass(frozen=True)
class ThresholdFit:
    """Per-class thresholds of a multi-label run, chosen on validation, and how they score on
    validation (and TEST) beside a fixed 0.5."""

    values: np.ndarray
    chosen_by: str  # "validation", or "default" (no validation images: all 0.5)
    scores: dict  # split -> multilabel_metrics at the thresholds (its ``at_0.5``: at 0.5)

    def metrics(self) -> dict:
        return {
            "thresholds": {
                "chosen_by": self.chosen_by,
                "values": [float(t) for t in self.values],
                **{split: _summary(scores) for split, scores in self.scores.items()},
            }
        }


def _summary(metrics: dict) -> dict:
    keys = ("mAP", "micro_f1", "macro_f1", "subset_accuracy", "hamming_loss")
    return {**{k: metrics[k] for k in keys}, "at_0.5": metrics["at_0.5"]}


def _fit_thresholds(plan: Plan, parts: dict[str, FeatureSet], names) -> ThresholdFit:
    """Thresholds maximising each class's F1 on validation; TEST scored with them."""
    probs = {k: 1 / (1 + np.exp(-_logits(plan, v))) for k, v in parts.items() if v is not None}
    val = parts.get("val")
    if val is not None and len(val):
        values, chosen_by = choose_thresholds(val.labels.numpy(), probs["val"]), "validation"
    else:
        values, chosen_by = np.full(len(names), DEFAULT_THRESHOLD), "default"
    scores = {
        k: multilabel_metrics(parts[k].labels.numpy(), probs[k], values, names)
        for k in ("val", "test")
        if k in probs and len(parts[k])
    }
    return ThresholdFit(values, chosen_by, scores)


def _fit_multi_label(plan, data, features, started: float) -> TrustFit:
    """Multi-label runs: thresholds only. The temperature and the rejection statistics are
    single-label tools (a softmax's scale; class means of images with one class each)."""
    parts = {k: features.get(k) for k in ("val", "test")}
    names = list(data.splits.labels.names)
    empty = fit_temperature(np.zeros((0, len(names))), np.zeros(0, dtype=int))
    calibration = replace(empty, reason="multi-label: sigmoid outputs, per-class thresholds")
    thresholds = _fit_thresholds(plan, parts, names)
    return TrustFit(calibration, None, None, None, None, time.perf_counter() - started, thresholds)


def fit_trust(
    plan: Plan,
    data: PreparedData,
    skips: SkipLog,
    features: dict[str, FeatureSet] | None = None,
) -> TrustFit:
    """The temperature, the rejection statistics and their TEST record (module docstring).
    ``features``: the eval-view features per split where training already has them (``head``)."""
    started = time.perf_counter()
    if features is None:
        features = _features(plan, data, skips)
    if data.splits.multi_label:
        return _fit_multi_label(plan, data, features, started)
    train, val, test = (features.get(k) for k in ("train", "val", "test"))
    copies, val_correct = 0, None
    val_logits = np.zeros((0, len(data.splits.labels)))
    val_labels = np.zeros(0, dtype=int)
    if val is not None:
        # Every validation image's outcome (auto pairs candidates on it); the fits below see
        # only the new images, their rows of the same logits.
        val_logits, val_labels = _logits(plan, val), val.labels.numpy()
        right = _Judged(val_logits, val_labels, None).correct
        val_correct = {str(s.path): bool(r) for s, r in zip(val.samples, right, strict=True)}
        val, rows = _new_images(val, set(data.screening.record["leakage"]["files"]))
        copies = len(val_labels) - len(rows)
        val_logits, val_labels = val_logits[rows], val_labels[rows]
    fit = fit_temperature(val_logits, val_labels)
    gaussians, scale, scale_from, val_flagged = _fit_rejection(train, val)
    judged_test = None
    if test is not None:
        flagged = None if scale is None else unknown_scores(gaussians, test.features, scale) > 1
        judged_test = _Judged(_logits(plan, test), test.labels.numpy(), flagged)
    judged_val = _Judged(val_logits, val_labels, val_flagged) if val is not None else None
    record = _test_record(judged_test, fit) if judged_test is not None else None
    shift = _shift(judged_val, judged_test)
    seconds = time.perf_counter() - started
    return TrustFit(
        fit,
        gaussians,
        scale,
        scale_from,
        record,
        seconds,
        shift=shift,
        copies=copies,
        val_correct=val_correct,
    )


def _fit_rejection(train: FeatureSet | None, val: FeatureSet | None) -> tuple:
    """``(gaussians, scale, scale_from, val_flagged)``: the statistics fitted on train, their
    scale on validation (on train without two validation images), and which validation images
    the automatic threshold flags; all None without two training images."""
    if train is None or len(train) < 2:
        return None, None, None, None
    gaussians = fit_feature_gaussians(train.features.numpy(), train.labels.numpy())
    scale_from = "validation" if val is not None and len(val) >= 2 else "train"
    raw = unknown_scores(gaussians, (val if scale_from == "validation" else train).features)
    scale = rejection_scale(raw, DEFAULT_REJECT_RATE)
    val_flagged = None
    if scale_from == "validation":  # its scores are ``raw``: not computed twice
        val_flagged = scale.normalise(raw) > 1
    elif val is not None:
        val_flagged = unknown_scores(gaussians, val.features, scale) > 1
    return gaussians, scale, scale_from, val_flagged


def _new_images(part: FeatureSet, copies: set[str]) -> tuple[FeatureSet, np.ndarray]:
    """``part`` without the images in ``copies`` (those with a byte-identical copy in train),
    and the rows of ``part`` it kept."""
    keep = np.array([i for i, s in enumerate(part.samples) if str(s.path) not in copies], int)
    if len(keep) == len(part):
        return part, keep
    rows = torch.from_numpy(keep)
    kept = FeatureSet(part.features[rows], part.labels[rows], [part.samples[i] for i in keep])
    return kept, keep
