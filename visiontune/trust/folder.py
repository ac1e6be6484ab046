"""``audit_folder``: scan DATA, read every split's features (through the cache), audit them."""

from __future__ import annotations

import time
from pathlib import Path

from ..backbones import Backbone
from ..data.dataset import scan_data
from ..data.folder import DatasetSplits
from ..data.loader import SkipLog
from ..data.manifest import ManifestColumns
from ..engine.loop import Runtime
from ..errors import DataError
from ..features.cache import FeatureCache
from ..features.splits import concat_feature_sets, extract_parts
from .audit import (
    DEFAULT_FOLDS,
    EXCLUDED_KINDS,
    AuditResult,
    accuracy_without_flagged,
    audit_features,
    fit_probe,
)

__all__ = ["PARTS", "audit_folder", "audit_splits"]

PARTS = ("train", "val", "test")


def audit_splits(
    splits: DatasetSplits,
    backbone: Backbone,
    *,
    parts=PARTS,
    cache: FeatureCache | None,
    workers: int,
    runtime: Runtime,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    probe: bool = False,
) -> AuditResult:
    """Audit the ``parts`` of ``splits`` pooled (out-of-fold, so a TEST image is scored by a
    probe that never saw it); with a test split among them, the TEST accuracy of a probe fitted
    on train + val, with and without the flagged TEST images. ``probe``: also fit one probe on
    every image (``AuditResult.probe``, what a report's overlays explain)."""
    started = time.perf_counter()
    named = {name: getattr(splits, name) for name in parts}
    features = extract_parts(
        backbone,
        named,
        runtime=runtime,
        cache=cache,
        workers=workers,
        skips=SkipLog(),
    )
    features = {name: part for name, part in features.items() if len(part)}
    if not features:
        raise DataError(f"{splits.root}: no decodable images to audit")
    extracted = time.perf_counter()
    pooled = concat_feature_sets(list(features.values()))
    row_splits = [name for name, fs in features.items() for _ in fs.samples]
    names = list(splits.labels.names)
    findings, probs, C = audit_features(pooled, row_splits, names, folds=folds, seed=seed)
    test = None
    if "test" in features and ("train" in features or "val" in features):
        flagged = {f.path for f in findings if f.split == "test" and f.kind in EXCLUDED_KINDS}
        fit_on = concat_feature_sets([features[n] for n in ("train", "val") if n in features])
        test = accuracy_without_flagged(
            fit_on, features["test"], flagged, C=C, num_classes=len(names)
        )
    return AuditResult(
        findings=findings,
        class_names=names,
        counts={name: len(fs) for name, fs in features.items()},
        C=C,
        folds=folds,
        test=test,
        paths=[str(s.path) for s in pooled.samples],
        splits=row_splits,
        labels=pooled.labels.numpy(),
        probabilities=probs,
        seconds={
            "features": round(extracted - started, 3),
            "audit": round(time.perf_counter() - extracted, 3),
        },
        probe=fit_probe(pooled, C=C, num_classes=len(names)) if probe else None,
    )


def audit_folder(
    data: str | Path,
    backbone: Backbone,
    *,
    cache: FeatureCache | None,
    workers: int,
    runtime: Runtime,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    probe: bool = False,
    columns: ManifestColumns | None = None,
) -> AuditResult:
    """Every image of ``data`` (class folders, train/val/test splits of them, or a manifest
    read by ``columns``) audited; data without splits is audited whole (nothing is held out as
    validation). ``probe``: as ``audit_splits``."""
    splits = scan_data(data, columns, val_fraction=0.0, seed=seed)
    if splits.multi_label:
        raise DataError(
            "audit finds label issues of single-label data (one class per image); confident "
            "learning's multi-label variant is not built in"
        )
    return audit_splits(
        splits,
        backbone,
        cache=cache,
        workers=workers,
        runtime=runtime,
        folds=folds,
        seed=seed,
        probe=probe,
    )
