"""``--balance``: class weights, the balanced sampler, the weighted loss and probe, and training
with each mode on an imbalanced folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY, make_class_folder
from sklearn.linear_model import LogisticRegression
from torch import nn
from torch.nn import functional as F

import visiontune
from visiontune.backbones import Head
from visiontune.config import TrainConfig
from visiontune.data.balance import balancing, class_weights, sample_weights
from visiontune.data.loader import Batch, make_loader
from visiontune.engine.loop import LoopConfig, Runtime, train_one_epoch
from visiontune.engine.optim import build_optimizer
from visiontune.errors import VisiontuneError
from visiontune.features.extract import FeatureDataset, FeatureSet
from visiontune.features.probe import fit_linear_probe

LABELS = [0] * 90 + [1] * 10  # 9:1


def test_class_weights_are_sklearns_balanced():
    # n / (classes * count): 100 / (2 * 90) and 100 / (2 * 10)
    assert class_weights(LABELS, 2).tolist() == pytest.approx([100 / 180, 100 / 20])
    # a class with no sample gets 0, the others are computed over the classes present
    assert class_weights([0, 0, 2], 3).tolist() == pytest.approx([3 / 4, 0.0, 3 / 2])


def test_balancing_modes():
    assert balancing("none", LABELS, 2) == (None, None)
    loss, draw = balancing("weights", LABELS, 2)
    assert draw is None and torch.equal(loss, class_weights(LABELS, 2))
    loss, draw = balancing("sampler", LABELS, 2)
    assert loss is None and torch.equal(draw, sample_weights(LABELS, 2))
    assert draw[0].item() == pytest.approx(1 / 90) and draw[-1].item() == pytest.approx(1 / 10)


def _feature_dataset(labels) -> FeatureDataset:
    x = torch.arange(len(labels), dtype=torch.float32)[:, None]
    return FeatureDataset(FeatureSet(x, torch.tensor(labels), [None] * len(labels)))


@pytest.mark.parametrize("seeded_epochs", [False, True])
def test_sampler_draws_classes_about_equally(seeded_epochs):
    seeded = (
        {"seeded_epochs": True} if seeded_epochs else {}
    )  # EpochSampler, or torch's own sampler
    loader = make_loader(
        _feature_dataset(LABELS),
        batch_size=50,
        shuffle=True,
        workers=0,
        seed=3,
        sample_weights=sample_weights(LABELS, 2),
        **seeded,
    )
    drawn = torch.cat([batch.labels for _ in range(40) for batch in loader])
    assert len(drawn) == 40 * len(LABELS)  # an epoch is still len(dataset) draws
    assert drawn.float().mean().item() == pytest.approx(
        0.5, abs=0.04
    )  # 10 % of the data, half the draws


def test_sampler_is_seeded():
    def draws(seed):
        loader = make_loader(
            _feature_dataset(LABELS),
            batch_size=100,
            shuffle=True,
            workers=0,
            seed=seed,
            seeded_epochs=True,
            sample_weights=sample_weights(LABELS, 2),
        )
        return [b.indices.tolist() for b in loader]

    assert draws(1) == draws(1) and draws(1) != draws(2)


def test_weighted_training_loss_equals_the_hand_computed_one():
    torch.manual_seed(0)
    model = nn.Linear(3, 3)
    x, y = torch.randn(8, 3), torch.tensor([0, 0, 0, 0, 0, 1, 1, 2])
    weights = class_weights(y.tolist(), 3)
    with torch.no_grad():
        nll = -F.log_softmax(model(x), 1)[torch.arange(8), y]
    expected = float((weights[y] * nll).sum() / weights[y].sum())
    optimizer = build_optimizer(
        [{"params": list(model.parameters()), "lr": 0.1, "base_lr": 0.1}], weight_decay=0.0
    )
    cfg = LoopConfig(
        epochs=1,
        warmup_epochs=0.0,
        label_smoothing=0.0,
        class_weights=weights,
    )
    stats, _ = train_one_epoch(
        model,
        [Batch(x, y, torch.arange(8))],
        optimizer,
        cfg=cfg,
        runtime=Runtime(channels_last=False, progress=False),
        step=0,
        total_steps=1,
        warmup_steps=0,
        set_train_mode=lambda m: m.train(),
    )
    assert stats["train_loss"] == pytest.approx(expected, rel=1e-5)
    assert expected != pytest.approx(float(nll.mean()), rel=1e-3)  # the weights do change it


def test_weighted_probe_matches_sklearn_class_weight_balanced():
    rng = np.random.default_rng(0)
    counts = [60, 15, 5]
    x = np.concatenate([rng.normal(c, 1.5, size=(n, 4)) for c, n in enumerate(counts)]).astype(
        np.float32
    )
    y = np.repeat(np.arange(3), counts)
    train = FeatureSet(torch.from_numpy(x), torch.from_numpy(y), [None] * len(y))
    empty = FeatureSet(torch.empty(0, 4), torch.empty(0, dtype=torch.long), [])
    head = Head(4, 3, dropout=0.0)
    fit_linear_probe(head, train, empty, c_grid=(1.0,), class_weight=class_weights(y.tolist(), 3))
    reference = LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000, tol=1e-10).fit(
        x, y
    )
    ours = head.fc.weight.detach().numpy()
    # Softmax is unchanged by adding a vector to every class's weights; compare centred rows.
    assert ours - ours.mean(0) == pytest.approx(reference.coef_ - reference.coef_.mean(0), abs=2e-3)
    unweighted = Head(4, 3, dropout=0.0)
    fit_linear_probe(unweighted, train, empty, c_grid=(1.0,))
    recall = [
        ((torch.from_numpy(x) @ h.fc.weight.T + h.fc.bias).argmax(1).numpy()[y == 2] == 2).mean()
        for h in (head, unweighted)
    ]
    assert recall[0] >= recall[1]  # the weighted probe favours the rare class


def test_balance_option_is_validated():
    with pytest.raises(VisiontuneError, match="--balance must be one of none, weights, sampler"):
        TrainConfig(data="x", balance="oversample")


@pytest.mark.parametrize(
    "strategy, balance", [("full", "sampler"), ("full", "weights"), ("head", "weights")]
)
def test_training_runs_with_each_balance_mode(tmp_path, strategy, balance):
    data = make_class_folder(tmp_path / "data", {"cat": 12, "dog": 3})
    result = visiontune.fit(
        data,
        **TINY,
        strategy=strategy,
        balance=balance,
        epochs=1,
        batch_size=4,
        workers=0,
        out=str(tmp_path / "run"),
        progress=False,
        cache=False,
    )
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["training"]["balance"] == balance
    assert result.history and 0.0 <= result.metrics["val"]["accuracy"] <= 1.0
