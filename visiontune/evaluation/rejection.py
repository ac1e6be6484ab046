"""Unknown-image scores from the backbone's pooled features: is this image like the training data?

The softmax cannot say "none of these": it spreads a fixed total over the known classes, so a
photo of something else still gets 0.95 for one of them. The features before the head carry
more: the score here is the **Mahalanobis distance** (Lee et al., 2018) of an image's pooled
features, L2-normalised, to the nearest training class mean under the classes' shared covariance,

    score(x) = min_c (u - mu_c)^T S^-1 (u - mu_c),   u = x / ||x||

``S`` is a Ledoit-Wolf shrinkage estimate (scikit-learn): a 1280-wide covariance from a thousand
images is singular without shrinkage. On yoga features (BENCHMARKS.md) it separated four foreign
datasets from yoga TEST with AUROC 1.00, where the max softmax probability reached 0.85-0.99;
the unnormalised distance did as well but for faces (0.996), and the relative Mahalanobis
distance of Ren et al. (2021) ranked them backwards.

The threshold is the ``1 - rate`` quantile of the scores of the validation images, which are
known to belong (default rate 5 %): about 1 in 20 genuine images is flagged, and the rate is
stated, not guessed. Scores are reported on the validation images' own scale,
``(score - median) / (threshold - median)``: 0 is a typical validation image and 1 the automatic
threshold, for every model (an ensemble's score is the mean of its members').

>>> rng = np.random.default_rng(0)
>>> def around(axis, n):   # features pointing along one axis, as a class's do
...     return rng.normal(0, 1, (n, 8)) + 10 * np.eye(8)[axis]
>>> stats = fit_feature_gaussians(np.r_[around(0, 200), around(1, 200)], np.repeat([0, 1], 200))
>>> scale = rejection_scale(unknown_scores(stats, np.r_[around(0, 500), around(1, 500)]))
>>> known, foreign = around(0, 1000), around(2, 100)
>>> bool(unknown_scores(stats, foreign, scale).min() > unknown_scores(stats, known, scale).max())
True
>>> float(np.mean(unknown_scores(stats, known, scale) > 1))   # about 5 % flagged
0.04
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import linalg
from sklearn.covariance import shrunk_covariance
from sklearn.metrics import roc_auc_score

from ..errors import VisiontuneError

__all__ = [
    "DEFAULT_REJECT_RATE",
    "FeatureGaussians",
    "auroc",
    "check_rate",
    "fit_feature_gaussians",
    "mahalanobis",
    "normalise_rows",
    "RejectionScale",
    "UnknownDetector",
    "raw_scores",
    "rejection_scale",
    "unknown_scores",
]

DEFAULT_REJECT_RATE = 0.05
# Rows per step of the fit (its float64 scratch) and elements of the scores' (rows, C, D) step.
FIT_CHUNK_ROWS = 4096
SCORE_ELEMENTS = 2**24


@dataclass(frozen=True)
class FeatureGaussians:
    """Class means ``(C, D)`` of the L2-normalised features and their shared within-class
    precision ``(D, D)``; float32 tensors (what the bundle stores and an exported graph
    multiplies with)."""

    class_means: torch.Tensor
    precision: torch.Tensor

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"class_means": self.class_means, "precision": self.precision}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> FeatureGaussians:
        return cls(**{k: tensors[k].to(torch.float32) for k in cls.__dataclass_fields__})


def fit_feature_gaussians(features, labels, *, chunk: int = FIT_CHUNK_ROWS) -> FeatureGaussians:
    """Class means and the shrunk shared covariance of training ``features`` ``(N, D)``
    (array or tensor), read ``chunk`` rows at a time: beyond the features it holds a few
    ``(D, D)`` matrices, not float64 copies of every row."""
    y = np.asarray(labels, dtype=int)
    means = _class_means(features, y, chunk)
    moments = _DeviationMoments(means.shape[1])
    for start in range(0, len(y), chunk):
        rows = slice(start, start + chunk)
        moments.add(_unit_rows(features[rows]) - means[y[rows]])
    precision = linalg.pinvh(moments.ledoit_wolf_covariance(), check_finite=False)

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    return FeatureGaussians(t(means), t(precision))


def _unit_rows(rows) -> np.ndarray:
    return normalise_rows(np.asarray(rows, dtype=np.float64))


def _class_means(features, y: np.ndarray, chunk: int) -> np.ndarray:
    """Each class's mean normalised feature (the overall mean for a class with no rows)."""
    classes = int(y.max()) + 1
    sums, counts = np.zeros((classes, features.shape[1])), np.bincount(y, minlength=classes)
    for start in range(0, len(y), chunk):
        np.add.at(sums, y[start : start + chunk], _unit_rows(features[start : start + chunk]))
    overall = sums.sum(0) / max(len(y), 1)
    return np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], overall)


class _DeviationMoments:
    """Ledoit-Wolf (2004) covariance of centred rows from sums gathered a chunk at a time.

    scikit-learn's ``LedoitWolf(assume_centered=True)`` computes the same estimate but needs
    every row in memory, and a squared copy of them: 1.8 GB of float64 for 100k images of
    1280 features. Its shrinkage uses only ``X.T @ X``, the rows' squared norms and their
    fourth powers (``sum(X2.T @ X2)`` is ``sum_k |x_k|^4``), so those are summed here and the
    estimate finished with its own ``shrunk_covariance``; a test holds the two equal.
    """

    def __init__(self, width: int):
        self.gram, self.n, self.norm4 = np.zeros((width, width)), 0, 0.0

    def add(self, rows: np.ndarray) -> None:
        self.gram += rows.T @ rows
        self.n += len(rows)
        self.norm4 += float(np.sum(np.einsum("ij,ij->i", rows, rows) ** 2))

    def ledoit_wolf_covariance(self) -> np.ndarray:
        n, p = self.n, len(self.gram)
        emp_cov = self.gram / n
        if p == 1:  # one feature: the shrinkage changes nothing
            return emp_cov
        mu = np.trace(emp_cov) / p
        delta_ = float(np.sum(emp_cov**2))
        beta = (self.norm4 / n - delta_) / (p * n)
        delta = (delta_ - 2.0 * mu * np.trace(emp_cov) + p * mu**2) / p
        beta = min(beta, delta)
        shrinkage = 0.0 if beta == 0 else beta / delta
        # beta can round to a hair below 0 (-1e-17 seen on a tiny run); the estimate allows [0, 1]
        return shrunk_covariance(emp_cov, float(np.clip(shrinkage, 0.0, 1.0)))


def normalise_rows(x):
    """Each row divided by its L2 norm (numpy array or torch tensor)."""
    if isinstance(x, torch.Tensor):
        return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def mahalanobis(x: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """``(x - mean)^T P (x - mean)`` for each row of ``x`` and each row of ``mean``:
    ``(N, M)`` for ``mean`` ``(M, D)``. Computed on the differences, not expanded into
    ``xPx - 2xPm + mPm``: with a precision of shrunk normalised features (entries ~1e4) the
    expanded terms cancel and float32 loses three digits."""
    diff = x[:, None, :] - mean[None, :, :]
    return ((diff @ precision) * diff).sum(-1)


def raw_scores(stats: FeatureGaussians, features: torch.Tensor) -> torch.Tensor:
    """The distance of each row of ``features`` to its nearest class (higher: more foreign)."""
    u = normalise_rows(features.to(torch.float32))
    return mahalanobis(u, stats.class_means, stats.precision).min(1).values


@dataclass(frozen=True)
class RejectionScale:
    """Where validation images score: their median (``center``) and the ``1 - rate`` quantile
    (``threshold``); a normalised score is ``(raw - center) / (threshold - center)``."""

    center: float
    threshold: float
    rate: float
    # the validation scores' quantiles at 0, 1, ..., 100 %: thresholds for other rates
    quantiles: tuple[float, ...] = ()

    def normalise(self, raw: np.ndarray) -> np.ndarray:
        return (np.asarray(raw, dtype=np.float64) - self.center) / (self.threshold - self.center)

    def threshold_for(self, rate: float) -> float:
        """The normalised threshold that flags a share ``rate`` of the validation images
        (1 for the rate the scale was made with)."""
        check_rate(rate)
        if rate == self.rate or len(self.quantiles) < 2:
            return 1.0
        levels = np.linspace(0, 1, len(self.quantiles))
        return float(self.normalise(np.interp(1 - rate, levels, self.quantiles)))


def check_rate(rate: float) -> float:
    if not 0 < rate < 1:
        raise VisiontuneError(f"a reject rate is a share between 0 and 1 (0.05: 5 %), got {rate}")
    return rate


def unknown_scores(
    stats: FeatureGaussians, features, scale: RejectionScale | None = None
) -> np.ndarray:
    """``raw_scores`` of ``features`` (array or tensor) as float64, normalised by ``scale``."""
    x = torch.as_tensor(np.asarray(features), dtype=torch.float32)
    # raw_scores holds (rows, C, D) differences: a step of rows keeps that to SCORE_ELEMENTS.
    step = max(1, SCORE_ELEMENTS // stats.class_means.numel())
    parts = [raw_scores(stats, x[i : i + step]) for i in range(0, len(x), step)]
    raw = (torch.cat(parts) if parts else raw_scores(stats, x)).double().numpy()
    return raw if scale is None else scale.normalise(raw)


def rejection_scale(scores: np.ndarray, rate: float = DEFAULT_REJECT_RATE) -> RejectionScale:
    """The scale of ``scores`` of known-good images: a share ``rate`` of them lies above its
    threshold."""
    check_rate(rate)
    scores = np.asarray(scores, dtype=np.float64)
    center, threshold = float(np.median(scores)), float(np.quantile(scores, 1 - rate))
    if threshold - center <= 1e-12:  # degenerate (identical scores): one spread unit instead
        threshold = center + max(float(scores.std()), 1e-6)
    quantiles = tuple(float(q) for q in np.quantile(scores, np.linspace(0, 1, 101)))
    return RejectionScale(center, threshold, rate, quantiles)


def auroc(known: np.ndarray, foreign: np.ndarray) -> float:
    """Area under the ROC curve of a score (higher: more foreign) separating ``foreign`` from
    ``known``: 1 perfect, 0.5 chance."""
    y = np.r_[np.zeros(len(known)), np.ones(len(foreign))]
    return float(roc_auc_score(y, np.r_[known, foreign]))


@dataclass(frozen=True)
class UnknownDetector:
    """A model's rejection statistics and their scale: normalised scores of pooled features
    (0 a typical validation image, 1 the automatic threshold)."""

    gaussians: FeatureGaussians
    scale: RejectionScale

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        raw = raw_scores(self.gaussians, features)
        return (raw - self.scale.center) / (self.scale.threshold - self.scale.center)
