"""Wrong labels, outliers and ambiguous images, from out-of-fold class probabilities.

Every image of every split is pooled and given class probabilities by a linear probe (L-BFGS
logistic regression on frozen backbone features, ``features.probe``) fitted on the *other*
folds of a stratified k-fold split, so no image is scored by a probe that saw its label. On
those probabilities, confident learning (Northcutt, Jiang & Chuang, JAIR 2021; the ``cleanlab``
implementation) names the images whose label disagrees with where the probe confidently puts
them: it estimates per-class thresholds (the mean self-confidence of each class) and the joint
distribution of given and true labels, then prunes as many images of each off-diagonal cell as
that joint says there are (``FILTER_BY``). Pure numbers in, findings out: no images are read here
beyond the feature rows (``audit_folder`` extracts them).

Each image gets at most one finding, in this order of precedence:

* ``outlier`` - far from every image of every class in feature space (the mean cosine distance
  to its ``KNN`` nearest neighbours beyond Tukey's far-out fence, Q3 + 3 IQR, of the logarithm
  of that distance over the whole set; ``score``: the distance over that limit). A relabel
  would not help such an image, so this kind wins over the others; ``suggested`` is the most
  probable class, for what it is worth.
* ``label-issue`` - confident learning says another class; ``suggested`` is the most probable
  class other than the given one; ``score`` its out-of-fold probability.
* ``ambiguous`` - the two most probable classes (the given one among them) are within
  ``AMBIGUOUS_MARGIN`` of each other; ``suggested`` is the other one; ``score`` 1 - the margin.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold

from ..errors import DataError, TrainingDiverged
from ..features.extract import FeatureSet
from ..features.probe import DEFAULT_C_GRID, fit_logistic

__all__ = [
    "AMBIGUOUS_MARGIN",
    "DEFAULT_FOLDS",
    "FILTER_BY",
    "KINDS",
    "KNN",
    "OUTLIER_FENCE",
    "AuditResult",
    "Finding",
    "audit_features",
    "find_label_issues",
    "fit_probe",
    "knn_distances",
    "one_thread",
    "out_of_fold_probabilities",
    "accuracy_without_flagged",
    "outlier_mask",
]

KINDS = ("label-issue", "outlier", "ambiguous")
DEFAULT_FOLDS = 5
KNN = 10  # neighbours for the outlier distance: a few, so a small class is not "far"
OUTLIER_FENCE = 3.0  # Tukey's "far out": Q3 + 3 IQR (of the log distances)
# cleanlab's "both" (the paper's C+NR): flagged only where pruning by noise rate (the least
# self-confident of each off-diagonal cell) and pruning by class (the least self-confident of
# each given class) agree. A person reviews every finding, so precision is worth a little
# recall: on yoga with 5 % of TRAIN moved (BENCHMARKS.md), "both" holds ~4 points fewer of the
# moved images than "prune_by_noise_rate", cleanlab's default, at ~10 points more precision.
FILTER_BY = "both"
MAX_ITER = 500  # L-BFGS iterations per probe, as the head's probe
AMBIGUOUS_MARGIN = 0.1  # top-2 probabilities closer than this: between two classes
# The flagged kinds that leave TEST for "accuracy without flagged": wrong or foreign images.
# Ambiguous ones are hard, not wrong; leaving them out would only flatter the model.
EXCLUDED_KINDS = ("label-issue", "outlier")


@dataclass(frozen=True)
class Finding:
    path: str
    split: str
    given: str
    suggested: str
    score: float
    kind: str  # one of KINDS

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "split": self.split,
            "given": self.given,
            "suggested": self.suggested,
            "score": round(self.score, 6),
            "kind": self.kind,
        }


@dataclass(frozen=True)
class AuditResult:
    """What ``audit`` found. ``probabilities`` are the out-of-fold ones, rows as ``paths``."""

    findings: list[Finding]
    class_names: list[str]
    counts: dict[str, int]  # images audited per split
    C: float  # the probe's L2 strength, chosen by out-of-fold log-loss
    folds: int
    test: dict | None  # TEST accuracy with and without the flagged TEST images
    paths: list[str]
    splits: list[str]
    labels: np.ndarray
    probabilities: np.ndarray
    seconds: dict  # extraction / audit
    # (weight, bias) of one probe fitted on every image at ``C``: what the report's Grad-CAM
    # overlays explain (the backbone + this head); None unless asked for (``probe=True``)
    probe: tuple | None = None

    def of_kind(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]

    def to_dict(self) -> dict:
        """The JSON of ``visiontune audit --json`` (``tests/test_audit.py`` holds its schema)."""
        return {
            "class_names": list(self.class_names),
            "counts": dict(self.counts),
            "probe": {"C": self.C, "folds": self.folds},
            "summary": {kind: len(self.of_kind(kind)) for kind in KINDS},
            "test": self.test,
            "findings": [f.to_dict() for f in self.findings],
            "seconds": dict(self.seconds),
        }


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread for the probes, then as it was. Their matrices are small (images x
    features x classes, a few classes): a thread pool costs more in synchronisation than it
    saves, and much more on busy cores - the yoga audit's 30 L-BFGS fits took 9 s on one
    thread and 61 s on two, on this project's 2-core machine shared with other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _stratified_folds(labels: np.ndarray, folds: int, seed: int) -> list[tuple]:
    """``(fit rows, held-out rows)`` of a stratified ``folds``-fold split (fewer folds where the
    smallest class has fewer images)."""
    k = min(folds, int(np.bincount(labels).min())) if len(labels) else 0
    if k < 2:
        raise DataError("every class needs at least two images to audit its labels")
    splitter = StratifiedKFold(k, shuffle=True, random_state=seed % 2**32)
    return [(torch.as_tensor(a), torch.as_tensor(b)) for a, b in splitter.split(labels, labels)]


def _choose_C(x, y, fit_rows, held, grid, num_classes: int) -> tuple[float, tuple]:
    """The C of ``grid`` with the lowest log-loss on ``held`` (one fold's held-out rows), each C
    started from the previous solution; and its solution."""
    params = (torch.zeros(num_classes, x.shape[1]), torch.zeros(num_classes))
    best = (np.inf, None, None)
    for C in sorted(grid):
        params = fit_logistic(x[fit_rows], y[fit_rows], C, params, MAX_ITER)
        logits = x[held] @ params[0].T + params[1]
        loss = float(torch.nn.functional.cross_entropy(logits, y[held]))
        if np.isfinite(loss) and loss < best[0]:
            best = (loss, C, params)
    if best[1] is None:
        raise TrainingDiverged("the audit's linear probe found no finite solution for any C")
    return best[1], best[2]


def out_of_fold_probabilities(
    features: FeatureSet, *, num_classes: int, folds: int, seed: int, grid=DEFAULT_C_GRID
) -> tuple[np.ndarray, float, tuple]:
    """``(probabilities, C, solution)``: each row's class probabilities from a probe fitted on
    the other folds; C, the L2 strength, chosen on the first fold's held-out log-loss.

    Choosing C on one fold (a fifth of the images) instead of on all of them costs one fit per
    C instead of ``folds``: the grid's Cs are a decade apart, which one fold tells apart as
    well as five do, and each later fold starts from the first fold's solution, a few L-BFGS
    steps from its own. The audit takes seconds, not tens of seconds, on 2 cores. ``solution``
    is the first fold's ``(weight, bias)``, a start for other fits at ``C``.
    """
    x, y = features.features.float(), features.labels.long()
    splits = _stratified_folds(y.numpy(), folds, seed)
    C, first = _choose_C(x, y, *splits[0], grid, num_classes)
    logits = torch.zeros(len(x), num_classes)
    for n, (fit_rows, held) in enumerate(splits):
        weight, bias = (
            first if n == 0 else fit_logistic(x[fit_rows], y[fit_rows], C, first, MAX_ITER)
        )
        logits[held] = x[held] @ weight.T + bias
    return torch.softmax(logits, dim=1).numpy().astype(np.float64), float(C), first


def find_label_issues(
    labels: np.ndarray, probabilities: np.ndarray, *, filter_by: str = FILTER_BY
) -> np.ndarray:
    """A boolean mask of the rows confident learning says are mislabelled (cleanlab's
    ``find_label_issues`` with ``filter_by``)."""
    from cleanlab.filter import find_label_issues as cleanlab_issues  # pandas: only when asked

    return cleanlab_issues(labels, probabilities, filter_by=filter_by, n_jobs=1, verbose=False)


def knn_distances(features: torch.Tensor, k: int = KNN, chunk: int = 1024) -> np.ndarray:
    """Each row's mean cosine distance to its ``k`` nearest other rows (in chunks of rows, so
    memory stays ``chunk x N``)."""
    x = torch.nn.functional.normalize(features.float(), dim=1)
    k = min(k, len(x) - 1)
    if k < 1:
        return np.zeros(len(x))
    out = []
    for start in range(0, len(x), chunk):
        sims = x[start : start + chunk] @ x.T
        rows = torch.arange(len(sims))
        sims[rows, rows + start] = -2.0  # never its own neighbour
        out.append(1.0 - sims.topk(k, dim=1).values.mean(1))
    return torch.cat(out).numpy().astype(np.float64)


def outlier_mask(distances: np.ndarray, fence: float = OUTLIER_FENCE) -> tuple[np.ndarray, float]:
    """Rows beyond Tukey's fence Q3 + ``fence`` x IQR of ``log(distances)``, and that limit (as
    a distance). The log, because nearest-neighbour distances are right-skewed (they scale with
    the local density to the power -1/dimension): on the raw distances a plain Gaussian cloud
    of few dimensions has a tenth of its points beyond the fence, on their logs a few in a
    hundred; in a backbone's hundreds of dimensions both rules agree."""
    logs = np.log(np.maximum(distances, 1e-12))
    q1, q3 = np.percentile(logs, [25, 75])
    limit = q3 + fence * (q3 - q1)
    return logs > limit, float(np.exp(limit))


def _finding(i: int, kind: str, suggested: int, score: float, meta) -> Finding:
    paths, splits, labels, names = meta
    return Finding(
        paths[i], splits[i], names[int(labels[i])], names[int(suggested)], float(score), kind
    )


def _classify(labels, probs, issues, outliers, limit: float, distances) -> list[tuple]:
    """``(row, kind, suggested, score)`` for each flagged row (see the module docstring)."""
    flagged = []
    others = probs.copy()
    others[np.arange(len(labels)), labels] = -1.0
    best_other = others.argmax(1)
    top2 = np.sort(probs, axis=1)[:, -2:]
    for i in range(len(labels)):
        if outliers[i]:
            flagged.append((i, "outlier", probs[i].argmax(), distances[i] / max(limit, 1e-12)))
        elif issues[i]:
            flagged.append((i, "label-issue", best_other[i], probs[i, best_other[i]]))
        elif top2[i, 1] - top2[i, 0] < AMBIGUOUS_MARGIN and probs[i, labels[i]] >= top2[i, 0]:
            flagged.append((i, "ambiguous", best_other[i], 1.0 - (top2[i, 1] - top2[i, 0])))
    return flagged


def audit_features(
    features: FeatureSet,
    splits: list[str],
    class_names: list[str],
    *,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
) -> tuple[list[Finding], np.ndarray, float]:
    """``(findings, out-of-fold probabilities, C)`` for the pooled ``features`` (rows of
    several splits, ``splits`` naming each row's). Findings are ordered by kind (``KINDS``),
    then by score, highest first."""
    labels = features.labels.numpy().astype(np.int64)
    with one_thread():
        probs, C, _ = out_of_fold_probabilities(
            features, num_classes=len(class_names), folds=folds, seed=seed
        )
    issues = find_label_issues(labels, probs)
    distances = knn_distances(features.features)
    outliers, limit = outlier_mask(distances)
    meta = ([str(s.path) for s in features.samples], splits, labels, class_names)
    rows = _classify(labels, probs, issues, outliers, limit, distances)
    findings = [_finding(i, kind, s, score, meta) for i, kind, s, score in rows]
    findings.sort(key=lambda f: (KINDS.index(f.kind), -f.score, f.path))
    return findings, probs, C


def fit_probe(features: FeatureSet, *, C: float, num_classes: int) -> tuple:
    """``(weight, bias)`` of one probe at ``C`` fitted on every row of ``features``."""
    x, y = features.features.float(), features.labels.long()
    init = (torch.zeros(num_classes, x.shape[1]), torch.zeros(num_classes))
    with one_thread():
        return fit_logistic(x, y, C, init, MAX_ITER)


def accuracy_without_flagged(
    fit_on: FeatureSet, test: FeatureSet, flagged: set[str], *, C: float, num_classes: int
) -> dict:
    """TEST accuracy of a probe fitted on ``fit_on`` (train + val) at ``C``, on every TEST image
    and on those whose path is not in ``flagged``: how much the flagged labels move the score."""
    weight, bias = fit_probe(fit_on, C=C, num_classes=num_classes)
    correct = ((test.features.float() @ weight.T + bias).argmax(1) == test.labels).numpy()
    keep = np.array([str(s.path) not in flagged for s in test.samples], dtype=bool)
    return {
        "num_images": len(test),
        "accuracy": float(correct.mean()) if len(correct) else None,
        "flagged": int((~keep).sum()),
        "accuracy_without_flagged": float(correct[keep].mean()) if keep.any() else None,
    }
