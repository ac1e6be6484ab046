"""How close a dataset is to a backbone's pretraining data, measured on the data itself.

Two measurements, both cheap (``measure`` feeds them to ``visiontune.strategies.advisor``):

* ``probe_accuracy``: cross-validated balanced accuracy of a logistic regression on the frozen,
  pooled features (read from the feature cache, so ``train --strategy head`` later reuses them).
  If the pretrained features already separate the classes, the backbone's notion of "what
  matters in an image" fits this task.
* ``batchnorm_shift``: every BatchNorm layer stores the mean and variance of its inputs over the
  pretraining data (``running_mean``/``running_var``), a per-layer record of that domain. Run a
  sample of the images through the network, measure the same per-channel statistics, and compare:
  a symmetric KL divergence between the two Gaussians per channel, the median over channels, the
  mean over layers. 0 means "activations look like ImageNet's"; it grows as the images' textures,
  colours and layouts depart from it. It does not need labels, and catches what separability
  cannot: a task the features happen to solve on images they were never made for.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from ..backbones import Backbone
from ..data.folder import DatasetSplits, Sample
from ..data.loader import ImageDataset, SkipLog
from ..data.transforms import decode_size, eval_transform
from ..engine.loop import LoopConfig
from ..strategies.advisor import Measurements
from .cache import FeatureCache
from .extract import _run_backbone, extract_features

__all__ = ["BN_IMAGES", "PROBE_C", "PROBE_FOLDS", "PROBE_IMAGES", "batchnorm_shift", "measure",
           "probe_accuracy"]

PROBE_FOLDS = 5  # stratified folds (fewer when the smallest class has fewer images)
PROBE_IMAGES = 2000  # a stratified, seeded subset above this keeps the probe to seconds
PROBE_C = 0.1  # L2 strength on standardised features; fixed, so the measurement has no tuning loop
BN_IMAGES = 200  # images the BatchNorm statistics are measured on


def measure(splits: DatasetSplits, backbone: Backbone, *, cfg: LoopConfig, cache: FeatureCache | None = None,
            workers: int = 0, skips: SkipLog | None = None, seed: int = 0,
            bn_images: int = BN_IMAGES) -> Measurements:
    """Size, class balance, probe accuracy and BatchNorm shift of ``splits`` (train + val; the
    test split is never looked at, so the choice cannot be fitted to it)."""
    pool = list(splits.train) + list(splits.val)
    counts = np.bincount([s.label for s in pool], minlength=len(splits.labels))
    features = extract_features(backbone, pool, cfg=cfg, batch_size=64, workers=workers, skips=skips,
                                desc="features (advise)", cache=cache)
    accuracy = probe_accuracy(features.features.numpy(), features.labels.numpy(), seed=seed)
    shift, seen = batchnorm_shift(backbone, pool, cfg=cfg, workers=workers, skips=skips, seed=seed,
                                  max_images=bn_images)
    return Measurements(num_images=len(pool), num_classes=len(splits.labels),
                        min_per_class=int(counts.min()), max_per_class=int(counts.max()),
                        probe_accuracy=accuracy, bn_shift=shift, bn_images=seen,
                        backbone=backbone.name, num_stages=len(backbone.stages()))


def probe_accuracy(x: np.ndarray, y: np.ndarray, *, folds: int = PROBE_FOLDS, seed: int = 0,
                   max_images: int = PROBE_IMAGES) -> float | None:
    """Cross-validated balanced accuracy of a linear probe; None with under 2 images in a class.

    Balanced accuracy (mean per-class recall), so chance is ``1 / classes`` however unbalanced
    the classes are.
    """
    y = np.asarray(y)
    if len(y) > max_images:
        rng = np.random.default_rng(seed)
        keep = np.sort(np.concatenate([
            rng.permutation(np.flatnonzero(y == c))[: max(2, round(max_images * np.mean(y == c)))]
            for c in np.unique(y)]))
        x, y = x[keep], y[keep]
    classes, counts = np.unique(y, return_counts=True)
    k = min(folds, int(counts.min())) if len(classes) > 1 else 0
    if k < 2:
        return None
    model = make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, max_iter=500))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        predicted = cross_val_predict(model, x, y, cv=StratifiedKFold(k, shuffle=True, random_state=seed))
    return float(balanced_accuracy_score(y, predicted))


def _batchnorms(backbone: Backbone) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in backbone.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None]


def _untrained(layers) -> bool:
    """Freshly initialised statistics (mean 0, variance 1) record no pretraining data."""
    return all(bool((m.running_mean == 0).all() and (m.running_var == 1).all()) for m in layers)


def batchnorm_shift(backbone: Backbone, samples: Sequence[Sample], *, cfg: LoopConfig, workers: int = 0,
                    skips: SkipLog | None = None, seed: int = 0,
                    max_images: int = BN_IMAGES) -> tuple[float | None, int]:
    """``(shift, images used)``: how far the images' per-channel activation statistics sit from
    the BatchNorm running statistics (see the module docstring). ``None`` when the backbone has
    no BatchNorm layer or only untrained statistics (random weights)."""
    layers = _batchnorms(backbone)
    if not layers or _untrained(layers):
        return None, 0
    samples = list(samples)
    if len(samples) > max_images:
        order = np.random.default_rng(seed).permutation(len(samples))[:max_images]
        samples = [samples[i] for i in sorted(order)]
    sums = {id(m): [0.0, 0.0, 0] for m in layers}

    def record(module, args):
        x = args[0].detach().double()
        dims = [d for d in range(x.ndim) if d != 1]
        acc = sums[id(module)]
        acc[0] = acc[0] + x.sum(dims)
        acc[1] = acc[1] + (x * x).sum(dims)
        acc[2] += x.numel() // x.shape[1]

    spec = backbone.preprocess
    dataset = ImageDataset(samples, eval_transform(spec), decode_size=decode_size(spec))
    hooks = [m.register_forward_pre_hook(record) for m in layers]
    try:
        _, labels, _ = _run_backbone(backbone, dataset, samples, cfg=cfg, batch_size=32, workers=workers,
                                     skips=skips, desc="BatchNorm statistics")
    finally:
        for hook in hooks:
            hook.remove()
    if len(labels) == 0:
        return None, 0
    per_layer = []
    for m in layers:
        total, squares, n = sums[id(m)]
        if not n:
            continue
        mean = total / n
        var_data = (squares / n - mean * mean).clamp_min(0) + m.eps
        var_run = m.running_var.double() + m.eps
        delta2 = (mean - m.running_mean.double()) ** 2
        sym_kl = 0.5 * ((var_data + delta2) / var_run + (var_run + delta2) / var_data) - 1
        per_layer.append(float(sym_kl.median()))
    return (float(np.mean(per_layer)) if per_layer else None), int(len(labels))
