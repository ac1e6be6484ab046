"""Linear probe: full-batch L2-regularised logistic regression on frozen features.

The standard protocol for evaluating and using frozen features (as in the CLIP and SimCLR
papers): L-BFGS multinomial logistic regression, the regularisation strength ``C`` swept on a
log grid and chosen by validation log-loss (smoother than accuracy on a small validation set) or,
without a validation split, by the out-of-fold log-loss of cross-validation on train.
It needs no learning rate, epochs or early stopping, and converges to the same answer every time.

The objective is scikit-learn's ``LogisticRegression(C=C)`` divided by ``C * n``: mean
cross-entropy + ``||W||^2 / (2 C n)``, bias unpenalised. It is solved with torch's L-BFGS
(strong-Wolfe line search), each C starting from the previous solution (the grid ascends, so the
optimum moves a little at a time): the same choices as scikit-learn's solver on the yoga
features, several times faster, which matters when the features come from the cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.model_selection import StratifiedGroupKFold

from ..backbones import Head
from ..engine.objective import correct_count, is_multi_hot, task_loss
from ..errors import DataError, TrainingDiverged
from .extract import FeatureSet

__all__ = [
    "CV_FOLDS",
    "DEFAULT_C_GRID",
    "ProbeResult",
    "cross_validated_logits",
    "fit_linear_probe",
    "fit_logistic",
]

DEFAULT_C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)
CV_FOLDS = 5  # without a validation split, C is chosen by this many folds of train (at most)


@dataclass
class ProbeResult:
    C: float
    history: list[dict]  # one row per C tried
    # How C was chosen: "validation", "cross-validation" (no validation rows) or "default" (no
    # validation rows and a class too small to cross-validate).
    chosen_by: str = "validation"


def fit_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    C: float,
    init: tuple[torch.Tensor, torch.Tensor],
    max_iter: int,
    sample_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight, bias)`` minimising scikit-learn's ``LogisticRegression(C=C)`` objective / (C n),
    by L-BFGS from ``init``."""
    weight, bias = (t.detach().clone().requires_grad_(True) for t in init)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1,
        max_iter=max_iter,
        tolerance_grad=1e-5,
        tolerance_change=1e-10,
        history_size=10,
        line_search_fn="strong_wolfe",
    )
    penalty = 1.0 / (2.0 * C * len(x))

    def closure():
        optimizer.zero_grad()
        if sample_weight is None:
            data_loss = task_loss(x @ weight.T + bias, y)
        else:  # sklearn's sample_weight: each row's loss counts that many times, still over n
            data_loss = (
                task_loss(x @ weight.T + bias, y, reduction="none") * sample_weight
            ).sum() / len(x)
        loss = data_loss + penalty * (weight * weight).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def _scores(
    weight, bias, x: torch.Tensor, y: torch.Tensor, class_weight: torch.Tensor | None = None
) -> tuple[float, float]:
    logits = x @ weight.T + bias
    return _logit_scores(logits, y, class_weight)


def _logit_scores(
    logits: torch.Tensor, y: torch.Tensor, class_weight: torch.Tensor | None = None
) -> tuple[float, float]:
    return correct_count(logits, y) / max(len(y), 1), float(
        task_loss(logits, y, weight=class_weight)
    )


def _finite(*tensors: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def _path(x, y, grid, max_iter: int, sample_weight, num_classes: int) -> list[tuple]:
    """The solutions for each C of ``grid`` in turn, each started from the previous one."""
    params = (torch.zeros(num_classes, x.shape[1]), torch.zeros(num_classes))
    solutions = []
    for C in grid:
        params = fit_logistic(x, y, C, params, max_iter, sample_weight)
        solutions.append(params)
    return solutions


def _folds(train: FeatureSet, seed: int) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """Stratified folds of ``train``, an image's rows (its augmented views) kept in one fold;
    None when a class has fewer than two images."""
    groups = [str(i) if s is None else str(s.path) for i, s in enumerate(train.samples)]
    labels = train.labels.numpy()
    if labels.ndim == 2:  # multi-label: stratified by each image's first class
        labels = labels.argmax(1)
    per_class = {}
    for group, label in zip(groups, labels.tolist(), strict=True):
        per_class.setdefault(label, set()).add(group)
    k = min(CV_FOLDS, min(len(g) for g in per_class.values()))
    if k < 2:
        return None
    splitter = StratifiedGroupKFold(k, shuffle=True, random_state=seed % 2**32)
    return list(splitter.split(np.zeros(len(labels)), labels, groups))


def cross_validated_logits(
    train: FeatureSet,
    grid,
    *,
    num_classes: int,
    max_iter: int = 500,
    sample_weight: torch.Tensor | None = None,
    seed: int = 0,
) -> list[torch.Tensor] | None:
    """Out-of-fold logits of ``train`` for each C of ``grid`` (``CV_FOLDS``-fold, stratified),
    or None when a class has too few images to hold any out."""
    folds = _folds(train, seed)
    if folds is None:
        return None
    x, y = train.features.float(), train.labels.long()
    logits = [torch.zeros(len(x), num_classes) for _ in grid]
    for fit_rows, held in folds:
        fit_rows, held = torch.as_tensor(fit_rows), torch.as_tensor(held)
        weight = None if sample_weight is None else sample_weight[fit_rows]
        path = _path(x[fit_rows], y[fit_rows], grid, max_iter, weight, num_classes)
        for out, (w, b) in zip(logits, path, strict=True):
            out[held] = x[held] @ w.T + b
    return logits


def _check_features(x: torch.Tensor) -> None:
    if not _finite(x):
        rows = int((~torch.isfinite(x)).any(1).sum())
        raise TrainingDiverged(
            f"the frozen backbone's features of {rows} training image(s) hold inf or NaN, so "
            "no head can be fitted on them; check --weights"
        )


def _choose(history: list[dict], solutions: list[tuple], key: str | None) -> int:
    """The row with the lowest ``key`` among finite solutions (the first of ties); without a
    key, the C nearest scikit-learn's default 1.0."""
    finite = [i for i, params in enumerate(solutions) if _finite(*params)]
    if not finite:
        raise TrainingDiverged(
            "the linear probe found no finite solution for any L2 strength C; the head was "
            "not fitted"
        )
    if key is None:
        return min(finite, key=lambda i: abs(math.log(history[i]["C"])))
    best = finite[0]
    for i in finite[1:]:
        if history[i][key] < history[best][key]:
            best = i
    return best


def _score_by_cross_validation(
    history: list[dict], train: FeatureSet, class_weight, max_iter: int, seed: int
) -> tuple[str, str | None]:
    """No validation rows: add each C's out-of-fold ``cv_acc``/``cv_loss`` to ``history``; how
    C is then chosen and by which key."""
    for row in history:
        row["val_acc"], row["val_loss"] = float("nan"), float("nan")
    if len(history) < 2:  # one C: nothing to choose
        return "default", None
    y = train.labels.long()
    oof = cross_validated_logits(
        train,
        [row["C"] for row in history],
        num_classes=y.shape[1] if is_multi_hot(y) else int(y.max()) + 1,
        max_iter=max_iter,
        sample_weight=None if class_weight is None else class_weight.float()[y],
        seed=seed,
    )
    if oof is None:
        return "default", None
    for row, logits in zip(history, oof, strict=True):
        row["cv_acc"], row["cv_loss"] = _logit_scores(logits, y, class_weight)
    return "cross-validation", "cv_loss"


def fit_linear_probe(
    head: Head,
    train: FeatureSet,
    val: FeatureSet,
    *,
    c_grid=DEFAULT_C_GRID,
    max_iter: int = 500,
    class_weight: torch.Tensor | None = None,
    seed: int = 0,
) -> ProbeResult:
    """Fit ``head.fc`` as a logistic regression on ``train``; choose C on ``val``.

    ``class_weight`` (one per class, e.g. ``data.balance.class_weights``): each training row's
    loss is weighted by its class's weight, as sklearn's ``class_weight``, and C is chosen by
    the equally weighted validation log-loss. Without validation rows C is chosen by
    cross-validation on ``train`` (folds drawn with ``seed``; rows ``cv_acc`` and ``cv_loss``,
    ``chosen_by`` "cross-validation"), or, with a class of one image, is the C nearest 1.0
    (``chosen_by`` "default"). Non-finite features or solutions raise ``TrainingDiverged``.
    """
    x, y = train.features.float(), train.labels.long()
    num_classes = head.num_classes
    present = y.sum(0).nonzero().flatten() if is_multi_hot(y) else y
    missing = set(range(num_classes)) - set(present.tolist())
    if missing:  # a class with no decodable training image cannot be learnt
        raise DataError(
            f"class(es) {sorted(int(c) for c in missing)} have no decodable training image"
        )
    _check_features(x)
    grid = sorted(c_grid)
    sample_weight = None if class_weight is None else class_weight.float()[y]
    solutions = _path(x, y, grid, max_iter, sample_weight, num_classes)
    history = [
        {"C": C, "train_acc": _scores(*p, x, y)[0]} for C, p in zip(grid, solutions, strict=True)
    ]
    if len(val):
        vx, vy = val.features.float(), val.labels.long()
        for row, params in zip(history, solutions, strict=True):
            row["val_acc"], row["val_loss"] = _scores(*params, vx, vy, class_weight)
        chosen, key = "validation", "val_loss"
    else:
        chosen, key = _score_by_cross_validation(history, train, class_weight, max_iter, seed)
    best = _choose(history, solutions, key)
    weight, bias = solutions[best]
    with torch.no_grad():
        head.fc.weight.copy_(weight)
        head.fc.bias.copy_(bias)
    for i, r in enumerate(history):
        r["best"] = i == best
    return ProbeResult(C=history[best]["C"], history=history, chosen_by=chosen)
