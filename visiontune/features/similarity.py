"""How close a dataset is to a backbone's pretraining data, measured on the data itself.

Two measurements, both cheap (``measure`` feeds them to ``visiontune.strategies.advisor``):

* ``probe_accuracy``: cross-validated balanced accuracy of a logistic regression on the frozen,
  pooled features (read from the feature cache, so ``train --strategy head`` later reuses them).
  If the pretrained features already separate the classes, the backbone's notion of "what
  matters in an image" fits this task.
* ``batchnorm_shift``: every BatchNorm layer stores the mean and variance of its inputs over the
  pretraining data (``running_mean``/``running_var``), a per-layer record of that domain. Measure
  the same per-channel statistics on the images (hooked into the feature extraction's forward
  pass, so it costs no pass of its own), and compare:
  a symmetric KL divergence between the two Gaussians per channel, the median over channels, the
  mean over layers. 0 means "activations look like ImageNet's"; it grows as the images' textures,
  colours and layouts depart from it. It does not need labels, and catches what separability
  cannot: a task the features happen to solve on images they were never made for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold
from torch import nn

from ..backbones import Backbone
from ..data.folder import DatasetSplits, Sample
from ..data.loader import ImageDataset, SkipLog
from ..data.transforms import decode_size, eval_transform
from ..engine.loop import Runtime
from ..strategies.advisor import Measurements
from .cache import FeatureCache
from .extract import FeatureSet, extract_features, run_backbone
from .probe import fit_logistic

__all__ = [
    "BN_IMAGES",
    "MEASURE_PER_CLASS",
    "PROBE_C",
    "PROBE_FOLDS",
    "PROBE_IMAGES",
    "BatchNormRecorder",
    "SampleRecord",
    "batchnorm_shift",
    "measure",
    "probe_accuracy",
    "record_sample",
]

PROBE_FOLDS = 5  # stratified folds (fewer when the smallest class has fewer images)
PROBE_IMAGES = 2000  # a stratified, seeded subset above this keeps the probe to seconds
# Images per class the measurements look at (a seeded sample above it). Enough for a 5-fold probe;
# a fixed budget keeps the extraction pass, which `partial` and `full` do not reuse, to a fraction
# of an epoch, and keeps separability from growing with the dataset's size, the other axis.
MEASURE_PER_CLASS = 50
PROBE_C = 0.1  # L2 strength on standardised features; fixed, so the measurement has no tuning loop
BN_IMAGES = 200  # batchnorm_shift's default cap (measure passes its sample's size instead)


@dataclass(frozen=True)
class SampleRecord:
    """The measurement sample's features, and the BatchNorm statistics recorded while the
    backbone computed them (``record_sample``). Taken on a cold cache before anything else reads
    these images (``train --strategy auto`` does, before its head), it leaves the features cached
    for the head and ``measure`` then needs no pass of its own."""

    features: FeatureSet
    shift: float | None  # None: nothing recorded (all served by the cache, or no BatchNorm)
    bn_images: int  # images the recorder saw: those the backbone ran on


def record_sample(
    splits: DatasetSplits,
    backbone: Backbone,
    *,
    runtime: Runtime,
    cache: FeatureCache | None = None,
    workers: int = 0,
    skips: SkipLog | None = None,
    seed: int = 0,
    per_class: int = MEASURE_PER_CLASS,
) -> SampleRecord:
    """Features of a seeded sample of up to ``per_class`` train + val images of each class,
    with the BatchNorm statistics of the images the backbone ran on (not those the cache gave)."""
    pool = list(splits.train) + list(splits.val)
    sample = _per_class_sample(pool, per_class, seed)
    with BatchNormRecorder(backbone) as recorder:
        features = extract_features(
            backbone,
            sample,
            runtime=runtime,
            batch_size=64,
            workers=workers,
            skips=skips,
            desc="features (advise)",
            cache=cache,
        )
    return SampleRecord(features, recorder.shift(), recorder.images)


def measure(
    splits: DatasetSplits,
    backbone: Backbone,
    *,
    runtime: Runtime,
    cache: FeatureCache | None = None,
    workers: int = 0,
    skips: SkipLog | None = None,
    seed: int = 0,
    per_class: int = MEASURE_PER_CLASS,
    sample: SampleRecord | None = None,
) -> Measurements:
    """Size, class balance, probe accuracy and BatchNorm shift of ``splits`` (train + val; the
    test split is never looked at, so the choice cannot be fitted to it). Sizes count every image;
    the probe and the statistics look at up to ``per_class`` images of each class (seeded).

    The BatchNorm statistics are gathered during the feature extraction's own forward pass
    (``record_sample``; ``sample``: one taken earlier, with the same ``seed`` and ``per_class``),
    so on a cold cache measuring costs no extra pass; only when the cache served some of them
    does a separate pass run, over the same sample: a warm cache measures what a cold one does
    (a different set of images would move the similarity, and with it, near a threshold, the
    advice), at the cost of the cold sample's extraction, which the warm cache saved.
    """
    if sample is None:
        sample = record_sample(
            splits,
            backbone,
            runtime=runtime,
            cache=cache,
            workers=workers,
            skips=skips,
            seed=seed,
            per_class=per_class,
        )
    pool = list(splits.train) + list(splits.val)
    counts = np.bincount([s.label for s in pool], minlength=len(splits.labels))
    features = sample.features
    if sample.shift is not None and sample.bn_images >= len(features.samples):
        shift, seen = sample.shift, sample.bn_images
    else:
        shift, seen = batchnorm_shift(
            backbone,
            features.samples,
            runtime=runtime,
            workers=workers,
            skips=skips,
            max_images=len(features.samples),
        )
    labels = features.labels.numpy()
    if labels.ndim == 2:  # multi-label: how well the features tell each image's first class
        labels = np.array([s.label for s in features.samples])
    accuracy = probe_accuracy(features.features.numpy(), labels, seed=seed)
    return Measurements(
        num_images=len(pool),
        num_classes=len(splits.labels),
        min_per_class=int(counts.min()),
        max_per_class=int(counts.max()),
        probe_accuracy=accuracy,
        probe_images=len(features.labels),
        bn_shift=shift,
        bn_images=seen,
        backbone=backbone.name,
        num_stages=len(backbone.stages()),
    )


def _per_class_indices(y: np.ndarray, take, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random ``take(c)`` of each class ``c``'s rows of ``y``."""
    rng = np.random.default_rng(seed)
    return np.sort(
        np.concatenate([rng.permutation(np.flatnonzero(y == c))[: take(c)] for c in np.unique(y)])
    )


def _per_class_sample(samples: list[Sample], per_class: int, seed: int) -> list[Sample]:
    """At most ``per_class`` samples of each class, seeded, in their original order."""
    labels = np.array([s.label for s in samples])
    return [samples[i] for i in _per_class_indices(labels, lambda c: per_class, seed).tolist()]


def probe_accuracy(
    x: np.ndarray,
    y: np.ndarray,
    *,
    folds: int = PROBE_FOLDS,
    seed: int = 0,
    max_images: int = PROBE_IMAGES,
) -> float | None:
    """Cross-validated balanced accuracy of a linear probe; None with under 2 images in a class.

    Balanced accuracy (mean per-class recall), so chance is ``1 / classes`` however unbalanced
    the classes are. Each fold standardises the features on its training part and fits
    scikit-learn's ``LogisticRegression(C=PROBE_C)`` objective with torch's L-BFGS
    (``features.probe.fit_logistic``: the same solution, several times faster).
    """
    y = np.asarray(y)
    if len(y) > max_images:
        keep = _per_class_indices(y, lambda c: max(2, round(max_images * np.mean(y == c))), seed)
        x, y = x[keep], y[keep]
    classes, counts = np.unique(y, return_counts=True)
    k = min(folds, int(counts.min())) if len(classes) > 1 else 0
    if k < 2:
        return None
    index = {c: i for i, c in enumerate(classes)}
    targets = torch.tensor([index[c] for c in y], dtype=torch.long)
    features = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    predicted = np.empty(len(y), dtype=np.int64)
    for train, held_out in StratifiedKFold(k, shuffle=True, random_state=seed % 2**32).split(
        features, y
    ):
        mean = features[train].mean(0)
        std = features[train].std(0, unbiased=False).clamp_min(1e-12)  # as StandardScaler
        init = (torch.zeros(len(classes), features.shape[1]), torch.zeros(len(classes)))
        weight, bias = fit_logistic(
            (features[train] - mean) / std, targets[train], PROBE_C, init, max_iter=500
        )
        predicted[held_out] = (
            (((features[held_out] - mean) / std) @ weight.T + bias).argmax(1).numpy()
        )
    return float(balanced_accuracy_score(targets.numpy(), predicted))


def _batchnorms(backbone: Backbone) -> list[nn.modules.batchnorm._BatchNorm]:
    return [
        m
        for m in backbone.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None
    ]


def _untrained(layers) -> bool:
    """Freshly initialised statistics (mean 0, variance 1) record no pretraining data."""
    return all(bool((m.running_mean == 0).all() and (m.running_var == 1).all()) for m in layers)


def _channel_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(variance, mean)`` of ``x`` ``(N, C, ...)``, as ``torch.var_mean`` over every
    other dimension. ``var_mean`` reduces a channels-last activation with strided loops, at up to
    4x the cost of the convolution that made it; two matrix products with a row of ``1/M`` (the
    mean, then the centred squares) run in BLAS instead, 2-6x faster on a 2-core CPU.

    bf16 activations (bf16 inference) stay bf16: the products accumulate in fp32 inside oneDNN,
    and a copy to fp32 would cost more than the forward pass itself (measured: recording the
    statistics of a batch of 32 took 1.7x the bf16 forward with the copy, 0.4x without; the
    shift moved by 0.05 %). fp16 is widened: its range cannot hold the squares of large
    activations."""
    rows = x.movedim(1, -1).reshape(-1, x.shape[1])  # a view when channels-last
    if rows.dtype not in (torch.float32, torch.bfloat16):
        rows = rows.float()
    weights = torch.full((1, rows.shape[0]), 1.0 / rows.shape[0], dtype=rows.dtype)
    mean = weights @ rows
    var = weights @ (rows - mean).square_()
    return var.squeeze(0).float(), mean.squeeze(0).float()


class BatchNormRecorder:
    """Per-channel statistics of the inputs of every pretrained BatchNorm layer, gathered by
    forward pre-hooks while the backbone runs: ``with BatchNormRecorder(backbone) as r: ...``,
    then ``r.shift()``. Each batch costs two small matrix products per layer (``_channel_moments``).
    """

    def __init__(self, backbone: nn.Module):
        layers = _batchnorms(backbone)
        # Freshly initialised statistics (random weights) record no pretraining data.
        self.layers = [] if not layers or _untrained(layers) else layers
        self.images = 0
        self._moments: dict[int, list] = {}
        self._hooks: list = []

    def __enter__(self) -> BatchNormRecorder:
        self._hooks = [m.register_forward_pre_hook(self._record) for m in self.layers]
        return self

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def _record(self, module: nn.Module, args) -> None:
        x = args[0].detach()
        var, mean = _channel_moments(x)
        n = x.numel() // x.shape[1]
        mean = mean.double()
        moments = self._moments.setdefault(id(module), [0.0, 0.0, 0])
        moments[0] = moments[0] + n * mean  # sums of x and x^2 per channel, in float64
        moments[1] = moments[1] + n * (var.double() + mean * mean)
        moments[2] += n
        if module is self.layers[0]:
            self.images += x.shape[0]

    def shift(self) -> float | None:
        """Mean over layers of the median over channels of the symmetric KL divergence between
        N(data mean, data var) and N(running mean, running var); None with nothing recorded."""
        per_layer = []
        for m in self.layers:
            total, squares, n = self._moments.get(id(m), (0.0, 0.0, 0))
            if not n:
                continue
            mean = total / n
            var_data = (squares / n - mean * mean).clamp_min(0) + m.eps
            var_run = m.running_var.double() + m.eps
            delta2 = (mean - m.running_mean.double()) ** 2
            sym_kl = 0.5 * ((var_data + delta2) / var_run + (var_run + delta2) / var_data) - 1
            per_layer.append(float(sym_kl.median()))
        return float(np.mean(per_layer)) if per_layer else None


def batchnorm_shift(
    backbone: Backbone,
    samples: Sequence[Sample],
    *,
    runtime: Runtime,
    workers: int = 0,
    skips: SkipLog | None = None,
    seed: int = 0,
    max_images: int = BN_IMAGES,
) -> tuple[float | None, int]:
    """``(shift, images used)``: how far the images' per-channel activation statistics sit from
    the BatchNorm running statistics (see the module docstring), on a seeded sample of at most
    ``max_images``. ``None`` when the backbone has no BatchNorm layer or only untrained
    statistics (random weights)."""
    recorder = BatchNormRecorder(backbone)
    if not recorder.layers:
        return None, 0
    samples = list(samples)
    if len(samples) > max_images:
        order = np.random.default_rng(seed).permutation(len(samples))[:max_images]
        samples = [samples[i] for i in sorted(order)]
    spec = backbone.preprocess
    dataset = ImageDataset(samples, eval_transform(spec), decode_size=decode_size(spec))
    with recorder:
        _, labels, _ = run_backbone(
            backbone,
            dataset,
            runtime=runtime,
            batch_size=32,
            workers=workers,
            skips=skips,
            desc="BatchNorm statistics",
        )
    shift = recorder.shift()
    return (shift, int(len(labels))) if shift is not None else (None, 0)
