"""Strategies: which stages train, frozen BatchNorm statistics stay put, backbone LR multiplier."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from visiontune.backbones import Classifier, Head, create_backbone
from visiontune.engine.optim import build_optimizer
from visiontune.errors import VisiontuneError
from visiontune.strategies import (
    STRATEGIES,
    FullStrategy,
    GradualStrategy,
    HeadStrategy,
    PartialStrategy,
    make_strategy,
)

LR, MULT, WD = 1e-2, 0.1, 0.05


def _model(num_classes: int = 3) -> Classifier:
    torch.manual_seed(0)
    backbone = create_backbone("test_efficientnet", weights="none")
    return Classifier(backbone, Head(backbone.num_features, num_classes, dropout=0.2))


@pytest.fixture
def model() -> Classifier:
    return _model()


def _setup(strategy, model):
    return strategy.setup(model, lr=LR, backbone_lr_mult=MULT, weight_decay=WD)


def _trainable_names(model) -> set[str]:
    return {n for n, p in model.backbone.named_parameters() if p.requires_grad}


def _stage_params(model, indices) -> set[str]:
    stages = model.backbone.stages()
    return {n for i in indices for n in stages[i][1]}


def _bn_modules(model, stage_indices) -> dict[str, nn.Module]:
    names = _stage_params(model, stage_indices)
    return {
        n: m
        for n, m in model.backbone.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and f"{n}.weight" in names
    }


def _bn_stats(modules: dict[str, nn.Module]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in modules.items()}


def _train_step(strategy, model, groups, steps: int = 2) -> None:
    optimizer = build_optimizer(groups, weight_decay=WD)
    strategy.set_train_mode(model)
    torch.manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(4, 3, 64, 64) * 2 + 0.5, torch.tensor([0, 1, 2, 0])
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


# ---------------------------------------------------------------- trainable and frozen parts


@pytest.mark.parametrize("name", ["head", "partial", "full", "gradual"])
def test_trainable_parameters_follow_the_stages(model, name):
    strategy = make_strategy(name)
    groups = _setup(strategy, model)
    n = len(model.backbone.stages())
    expected_stages = {
        "head": set(),
        "partial": set(range(n - math.ceil(n / 3), n)),
        "full": set(range(n)),
        "gradual": set(),
    }[name]  # gradual: before epoch 1
    assert strategy.trainable_stages(n) == expected_stages
    assert _trainable_names(model) == _stage_params(model, expected_stages)
    assert all(p.requires_grad for p in model.head.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    stage_sizes = [
        sum(model.backbone.get_parameter(p).numel() for p in params)
        for _, params in model.backbone.stages()
    ]
    head_size = sum(p.numel() for p in model.head.parameters())
    assert trainable == head_size + sum(stage_sizes[i] for i in expected_stages)
    assert frozen == sum(stage_sizes) - sum(stage_sizes[i] for i in expected_stages)
    # The optimizer gets exactly the trainable parameters, each once.
    in_groups = [p for g in groups for p in g["params"]]
    assert len(in_groups) == len({id(p) for p in in_groups})
    assert {id(p) for p in in_groups} == {id(p) for p in model.parameters() if p.requires_grad}


@pytest.mark.parametrize("unfreeze", range(0, 7))
def test_partial_trains_exactly_the_last_n_stages(model, unfreeze):
    stages = model.backbone.stages()
    n = len(stages)
    if unfreeze > n:
        pytest.skip("backbone has fewer stages")
    strategy = PartialStrategy(unfreeze=unfreeze)
    _setup(strategy, model)
    assert _trainable_names(model) == _stage_params(model, range(n - unfreeze, n))
    rows = strategy.describe(model, lr=LR, backbone_lr_mult=MULT)
    assert [r.trainable for r in rows[:-1]] == [i >= n - unfreeze for i in range(n)]
    assert rows[-1].stage == "head (new)" and rows[-1].trainable


def test_partial_unfreeze_beyond_the_stage_count_is_refused(model):
    n = len(model.backbone.stages())
    with pytest.raises(VisiontuneError, match="--unfreeze"):  # a user error: exit code 2
        _setup(PartialStrategy(unfreeze=n + 1), model)


def test_setup_again_with_another_strategy_unfreezes(model):
    _setup(HeadStrategy(), model)
    assert not _trainable_names(model)
    _setup(FullStrategy(), model)
    assert all(p.requires_grad for p in model.parameters())


def test_unknown_strategy():
    with pytest.raises(ValueError, match="unknown strategy"):
        make_strategy("everything")
    assert set(STRATEGIES) == {"head", "partial", "full", "gradual"}


# ------------------------------------------------------------------------- learning rates


@pytest.mark.parametrize("name", ["partial", "full"])
def test_backbone_trains_at_lr_times_multiplier(model, name):
    groups = _setup(make_strategy(name), model)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"backbone", "backbone/no_decay", "head", "head/no_decay"}
    for g in groups:
        expected = LR * MULT if g["name"].startswith("backbone") else LR
        assert g["lr"] == pytest.approx(expected) and g["base_lr"] == pytest.approx(expected)
        assert g["weight_decay"] == (0.0 if g["name"].endswith("no_decay") else WD)
    # biases and norm scales are not decayed; conv and linear weights are
    assert all(p.ndim <= 1 for g in groups if g["name"].endswith("no_decay") for p in g["params"])
    assert all(
        p.ndim > 1 for g in groups if not g["name"].endswith("no_decay") for p in g["params"]
    )
    optimizer = build_optimizer(groups, weight_decay=WD)
    assert [g["lr"] for g in optimizer.param_groups] == [g["lr"] for g in groups]


def test_head_strategy_has_only_head_groups(model):
    groups = _setup(HeadStrategy(), model)
    assert {g["name"] for g in groups} == {"head", "head/no_decay"}
    assert all(g["lr"] == LR for g in groups)


def test_describe_reports_lrs_and_batchnorm(model):
    strategy = PartialStrategy(unfreeze=1)
    _setup(strategy, model)
    rows = strategy.describe(model, lr=LR, backbone_lr_mult=MULT)
    assert (
        rows[-2].trainable
        and rows[-2].lr == pytest.approx(LR * MULT)
        and rows[-2].batchnorm == "train"
    )
    assert not rows[0].trainable and rows[0].lr == 0 and rows[0].batchnorm == "frozen"
    assert sum(r.num_params for r in rows) == sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------- BatchNorm policy


@pytest.mark.parametrize(
    "name, unfreeze", [("head", None), ("partial", 2), ("partial", 4), ("full", None)]
)
def test_frozen_batchnorm_statistics_do_not_move(model, name, unfreeze):
    strategy = make_strategy(name, unfreeze=unfreeze)
    groups = _setup(strategy, model)
    n = len(model.backbone.stages())
    trainable = strategy.trainable_stages(n)
    frozen_bn = _bn_modules(model, set(range(n)) - trainable)
    trainable_bn = _bn_modules(model, trainable)
    assert len(frozen_bn) + len(trainable_bn) == sum(
        isinstance(m, nn.BatchNorm2d) for m in model.backbone.modules()
    )
    frozen_params = {
        n: p.detach().clone() for n, p in model.backbone.named_parameters() if not p.requires_grad
    }
    before_frozen, before_trainable = _bn_stats(frozen_bn), _bn_stats(trainable_bn)
    head_before = model.head.fc.weight.detach().clone()

    _train_step(strategy, model, groups)

    for bn_name, (mean, var) in _bn_stats(frozen_bn).items():
        assert torch.equal(mean, before_frozen[bn_name][0]), bn_name
        assert torch.equal(var, before_frozen[bn_name][1]), bn_name
        assert not frozen_bn[bn_name].training
    for pname, p in model.backbone.named_parameters():
        if pname in frozen_params:
            assert torch.equal(p, frozen_params[pname]), pname
    for bn_name, (mean, var) in _bn_stats(
        trainable_bn
    ).items():  # trainable stages: statistics update
        assert not torch.equal(mean, before_trainable[bn_name][0]), bn_name
        assert not torch.equal(var, before_trainable[bn_name][1]), bn_name
        assert trainable_bn[bn_name].training
    assert not torch.equal(model.head.fc.weight, head_before)  # the head always trains
    if name == "full":
        assert frozen_bn == {} and len(trainable_bn) > 0


def test_head_strategy_keeps_backbone_in_eval_but_head_in_train(model):
    strategy = HeadStrategy()
    _setup(strategy, model)
    strategy.set_train_mode(model)
    assert not any(m.training for m in model.backbone.modules())
    assert model.head.training and model.head.dropout.training


def test_state_dict_names_the_strategy():
    assert PartialStrategy(unfreeze=2).state_dict() == {"name": "partial", "unfreeze": 2}
    assert "unfreeze=2" in repr(PartialStrategy(unfreeze=2))


# ------------------------------------------------------------------------- gradual unfreezing


def _trainable_count(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_gradual_unfreezes_one_stage_per_epoch_from_the_top(model):
    strategy = GradualStrategy(unfreeze=3)
    groups = _setup(strategy, model)
    optimizer = build_optimizer(groups, weight_decay=WD)
    stages = model.backbone.stages()
    n = len(stages)
    counts = [_trainable_count(model)]
    for epoch in range(5):
        strategy.on_epoch_start(epoch, model, optimizer)
        expected = set(range(n - min(epoch, 3), n))  # epoch 0: the head alone
        assert strategy.trainable_stages(n) == expected
        assert _trainable_names(model) == _stage_params(model, expected)
        # the optimizer holds exactly the trainable parameters, each once
        in_optimizer = [p for g in optimizer.param_groups for p in g["params"]]
        assert len(in_optimizer) == len({id(p) for p in in_optimizer})
        assert {id(p) for p in in_optimizer} == {
            id(p) for p in model.parameters() if p.requires_grad
        }
        counts.append(_trainable_count(model))
    assert counts[0] == sum(p.numel() for p in model.head.parameters())
    assert (
        counts[0] == counts[1] < counts[2] < counts[3] < counts[4] == counts[5]
    )  # capped at 3 stages
    assert strategy.state_dict() == {
        "name": "gradual",
        "unfreeze": 3,
        "lr_decay": 0.5,
        "unfrozen": 3,
    }
    _setup(strategy, model)  # set up again: back to the head alone
    assert strategy.unfrozen == 0 and not _trainable_names(model)


def test_gradual_learning_rates_decay_with_depth(model):
    strategy = GradualStrategy(lr_decay=0.5)
    optimizer = build_optimizer(_setup(strategy, model), weight_decay=WD)
    n = len(model.backbone.stages())
    for epoch in range(n + 1):
        strategy.on_epoch_start(epoch, model, optimizer)
    stage_names = [name for name, _ in model.backbone.stages()]
    by_name = {g["name"]: g for g in optimizer.param_groups}
    for depth, stage in enumerate(reversed(stage_names)):
        group = by_name[f"backbone.{stage}/no_decay"]
        assert group["lr"] == group["base_lr"] == pytest.approx(LR * MULT * 0.5**depth), stage
        assert group["weight_decay"] == 0.0
    assert by_name["head"]["lr"] == pytest.approx(LR)
    # describe shows the plan before training: when each stage starts, at which LR
    rows = strategy.describe(model, lr=LR, backbone_lr_mult=MULT, epochs=3)
    assert [r.trainable for r in rows[:-1]] == [i >= n - 2 for i in range(n)]  # head, then 2 stages
    assert [r.starts for r in rows[:-1]] == list(range(n, 0, -1))
    assert all(r.batchnorm in ("frozen", "-") for r in rows)  # statistics kept throughout
    assert rows[-2].lr == pytest.approx(LR * MULT) and rows[-3].lr == pytest.approx(LR * MULT / 2)
    assert rows[-1].stage == "head (new)" and rows[-1].starts is None


def test_gradual_keeps_every_batchnorm_statistic_but_trains_unfrozen_scales(model):
    """Frozen stages stay frozen; unfrozen ones train their BatchNorm scale and shift, but their
    running statistics stay the pretrained ones the warm-started head was fitted with."""
    strategy = GradualStrategy()
    groups = _setup(strategy, model)
    optimizer = build_optimizer(groups, weight_decay=WD)
    n = len(model.backbone.stages())
    strategy.on_epoch_start(0, model, optimizer)  # the head alone
    strategy.on_epoch_start(1, model, optimizer)  # and the top stage
    frozen_bn, top_bn = _bn_modules(model, range(n - 1)), _bn_modules(model, [n - 1])
    before = _bn_stats({**frozen_bn, **top_bn})
    top_scales = {k: m.weight.detach().clone() for k, m in top_bn.items()}
    strategy.set_train_mode(model)
    assert model.head.training
    torch.manual_seed(1)
    for _ in range(2):
        x, y = torch.randn(4, 3, 64, 64) * 2 + 0.5, torch.tensor([0, 1, 2, 0])
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for name, (mean, var) in _bn_stats({**frozen_bn, **top_bn}).items():
        assert torch.equal(mean, before[name][0]) and torch.equal(var, before[name][1]), name
    assert top_bn and not any(m.training for m in top_bn.values())
    assert all(not torch.equal(m.weight, top_scales[k]) for k, m in top_bn.items())  # scales train
    assert all(not m.weight.requires_grad for m in frozen_bn.values())


def test_gradual_refuses_bad_settings(model):
    n = len(model.backbone.stages())
    with pytest.raises(VisiontuneError, match="--unfreeze"):
        _setup(GradualStrategy(unfreeze=n + 1), model)
    with pytest.raises(VisiontuneError, match="lr_decay"):
        GradualStrategy(lr_decay=0)
    with pytest.raises(RuntimeError, match="setup"):
        GradualStrategy().on_epoch_start(0, model, None)
    assert repr(GradualStrategy(unfreeze=2)) == "GradualStrategy(unfreeze=2, lr_decay=0.5)"


def test_gradual_end_to_end_warm_starts_the_head_then_unfreezes(tmp_path):
    import json

    from conftest import TINY, make_class_folder

    import visiontune

    data = make_class_folder(tmp_path / "data", {"cat": 6, "dog": 6})
    result = visiontune.fit(
        data,
        **TINY,
        strategy="gradual",
        unfreeze=2,
        epochs=3,
        batch_size=4,
        workers=0,
        out=str(tmp_path / "run"),
        progress=False,
    )
    assert (
        result.metrics["head_warm_start"] is not None
    )  # the head was fitted on cached features first
    saved = json.loads((result.run_dir / "config.json").read_text())
    assert saved["strategy"] == {"name": "gradual", "unfreeze": 2, "lr_decay": 0.5, "unfrozen": 2}
    assert len(result.history) == 3


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_state_dict_round_trip_restores_the_plan_without_replaying_epochs(name):
    """A plan restored from ``state_dict`` has the same trainable parameters and optimizer
    groups (names, LRs, sizes) as the one that reached that state epoch by epoch."""
    trained, restored = _model(), _model()
    strategy = make_strategy(name, unfreeze=2 if name in ("partial", "gradual") else None)
    optimizer = build_optimizer(_setup(strategy, trained), weight_decay=WD)
    for epoch in range(3):
        strategy.on_epoch_start(epoch, trained, optimizer)
    again = make_strategy(name, unfreeze=strategy.unfreeze)
    optimizer_again = build_optimizer(_setup(again, restored), weight_decay=WD)
    again.load_state_dict(strategy.state_dict(), model=restored, optimizer=optimizer_again)
    assert again.state_dict() == strategy.state_dict()
    grads = [p.requires_grad for p in trained.parameters()]
    assert [p.requires_grad for p in restored.parameters()] == grads

    def shape(opt):
        return [(g["name"], g["lr"], sum(p.numel() for p in g["params"])) for g in opt.param_groups]

    assert shape(optimizer_again) == shape(optimizer)
    optimizer_again.load_state_dict(optimizer.state_dict())  # the saved state fits the groups


def test_load_state_dict_refuses_another_plan(model):
    strategy = make_strategy("partial", unfreeze=1)
    optimizer = build_optimizer(_setup(strategy, model), weight_decay=WD)
    with pytest.raises(VisiontuneError, match="does not describe"):
        strategy.load_state_dict(
            {"name": "partial", "unfreeze": 2}, model=model, optimizer=optimizer
        )
    gradual = GradualStrategy(unfreeze=2)
    optimizer = build_optimizer(_setup(gradual, _model()), weight_decay=WD)
    with pytest.raises(VisiontuneError, match="does not describe"):
        gradual.load_state_dict(
            {"name": "gradual", "unfreeze": 3, "lr_decay": 0.5, "unfrozen": 1},
            model=model,
            optimizer=optimizer,
        )
