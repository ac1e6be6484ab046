"""The linear probe (``features.probe``): C chosen on validation, by cross-validation on train
when there is no validation split, and never a non-finite head."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from visiontune.backbones import Head
from visiontune.data.folder import Sample
from visiontune.errors import TrainingDiverged
from visiontune.features.extract import FeatureSet
from visiontune.features.probe import (
    DEFAULT_C_GRID,
    cross_validated_logits,
    fit_linear_probe,
    fit_logistic,
)


def _features(n_per_class: int, *, seed: int = 0, spread: float = 1.0) -> FeatureSet:
    """Two overlapping Gaussian classes in 6 dimensions, one sample (path) per row."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(2).repeat_interleave(n_per_class)
    x = torch.randn(len(y), 6, generator=g) * spread + y[:, None].float()
    samples = [Sample(Path(f"img{i}.png"), int(label)) for i, label in enumerate(y)]
    return FeatureSet(x, y, samples)


def _empty() -> FeatureSet:
    return FeatureSet(torch.empty(0, 6), torch.empty(0, dtype=torch.long), [])


def test_with_a_validation_split_c_is_chosen_on_it_as_before():
    """Bit-identical to the original procedure: one warm-started path, the lowest val loss."""
    train, val = _features(20), _features(10, seed=1)
    head = Head(6, 2, dropout=0.0)
    result = fit_linear_probe(head, train, val)
    params = (torch.zeros(2, 6), torch.zeros(2))
    best = None
    for C in DEFAULT_C_GRID:
        params = fit_logistic(train.features, train.labels, C, params, 500)
        logits = val.features @ params[0].T + params[1]
        loss = float(torch.nn.functional.cross_entropy(logits, val.labels))
        if best is None or loss < best[0]:
            best = (loss, C, params)
    assert result.chosen_by == "validation" and result.C == best[1]
    assert torch.equal(head.fc.weight, best[2][0]) and torch.equal(head.fc.bias, best[2][1])
    assert all("cv_loss" not in row for row in result.history)


def test_without_validation_c_is_chosen_by_cross_validation_on_train():
    # Before: the "validation loss" was -train_acc, so C was a tie of training accuracies,
    # decided by the grid's order.
    train = _features(15, spread=1.5)
    result = fit_linear_probe(Head(6, 2, dropout=0.0), train, _empty(), seed=3)
    assert result.chosen_by == "cross-validation"
    rows = result.history
    assert all(math.isnan(r["val_acc"]) and math.isnan(r["val_loss"]) for r in rows)
    chosen = min(rows, key=lambda r: r["cv_loss"])
    assert chosen["best"] and result.C == chosen["C"]
    oof = cross_validated_logits(train, DEFAULT_C_GRID, num_classes=2, seed=3)
    expected = [float(torch.nn.functional.cross_entropy(o, train.labels)) for o in oof]
    assert [r["cv_loss"] for r in rows] == pytest.approx(expected)
    assert len({round(r["cv_loss"], 6) for r in rows}) > 1  # the grid is really compared


def test_cross_validation_keeps_every_row_of_one_image_in_one_fold():
    # --cache-views: several rows per image. Held-out logits of a row must come from a fit
    # that never saw that image, so a duplicate row cannot be predicted from its twin.
    base = _features(6)
    twice = FeatureSet(
        torch.cat([base.features, base.features]),
        torch.cat([base.labels, base.labels]),
        base.samples + base.samples,
    )
    (oof,) = cross_validated_logits(twice, [1.0], num_classes=2)
    n = len(base)
    assert torch.equal(oof[:n], oof[n:])  # each image's two rows were held out together


def test_a_class_too_small_to_cross_validate_gets_the_default_c():
    train = FeatureSet(
        torch.tensor([[0.0] * 6, [1.0] * 6, [1.1] * 6]),
        torch.tensor([0, 1, 1]),
        [Sample(Path(f"{i}.png"), 0) for i in range(3)],
    )
    result = fit_linear_probe(Head(6, 2, dropout=0.0), train, _empty())
    assert result.chosen_by == "default" and result.C == 1.0


def test_non_finite_features_raise_training_diverged():
    train = _features(5)
    train.features[3, 2] = float("inf")
    with pytest.raises(TrainingDiverged, match="features of 1 training image"):
        fit_linear_probe(Head(6, 2, dropout=0.0), train, _features(3, seed=1))
