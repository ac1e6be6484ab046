"""Linear probe: full-batch L2-regularised logistic regression on frozen features.

The standard protocol for evaluating and using frozen features (as in the CLIP and SimCLR
papers): L-BFGS multinomial logistic regression, the regularisation strength ``C`` swept on a
log grid and chosen by validation log-loss (smoother than accuracy on a small validation set).
It needs no learning rate, epochs or early stopping, and converges to the same answer every time.

The objective is scikit-learn's ``LogisticRegression(C=C)`` divided by ``C * n``: mean
cross-entropy + ``||W||^2 / (2 C n)``, bias unpenalised. It is solved with torch's L-BFGS
(strong-Wolfe line search), each C starting from the previous solution (the grid ascends, so the
optimum moves a little at a time): the same choices as scikit-learn's solver on the yoga
features, several times faster, which matters when the features come from the cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ..backbones import Head
from ..errors import DataError
from .extract import FeatureSet

__all__ = ["DEFAULT_C_GRID", "ProbeResult", "fit_linear_probe", "fit_logistic"]

DEFAULT_C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)


@dataclass
class ProbeResult:
    C: float
    history: list[dict]  # one row per C tried


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
            data_loss = F.cross_entropy(x @ weight.T + bias, y)
        else:  # sklearn's sample_weight: each row's loss counts that many times, still over n
            data_loss = (
                F.cross_entropy(x @ weight.T + bias, y, reduction="none") * sample_weight
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
    return float((logits.argmax(1) == y).float().mean()), float(
        F.cross_entropy(logits, y, weight=class_weight)
    )


def fit_linear_probe(
    head: Head,
    train: FeatureSet,
    val: FeatureSet,
    *,
    c_grid=DEFAULT_C_GRID,
    max_iter: int = 500,
    class_weight: torch.Tensor | None = None,
) -> ProbeResult:
    """Fit ``head.fc`` as a logistic regression on ``train``; choose C on ``val``.

    ``class_weight`` (one per class, e.g. ``data.balance.class_weights``): each training row's
    loss is weighted by its class's weight, as sklearn's ``class_weight``, and C is chosen by
    the equally weighted validation log-loss.
    """
    x, y = train.features.float(), train.labels.long()
    num_classes = head.num_classes
    missing = set(range(num_classes)) - set(y.tolist())
    if missing:  # a class with no decodable training image cannot be learnt
        raise DataError(
            f"class(es) {sorted(int(c) for c in missing)} have no decodable training image"
        )
    params = (torch.zeros(num_classes, x.shape[1]), torch.zeros(num_classes))
    sample_weight = None if class_weight is None else class_weight.float()[y]
    history, best = [], None
    for C in sorted(c_grid):
        params = fit_logistic(x, y, C, params, max_iter, sample_weight)
        row = {"C": C, "train_acc": _scores(*params, x, y)[0]}
        if len(val):
            row["val_acc"], row["val_loss"] = _scores(
                *params, val.features.float(), val.labels.long(), class_weight
            )
        else:
            row["val_acc"], row["val_loss"] = float("nan"), -row["train_acc"]
        history.append(row)
        if best is None or row["val_loss"] < best[0]["val_loss"]:
            best = (row, params)
    row, (weight, bias) = best
    with torch.no_grad():
        head.fc.weight.copy_(weight)
        head.fc.bias.copy_(bias)
    for r in history:
        r["best"] = r is row
    return ProbeResult(C=row["C"], history=history)
