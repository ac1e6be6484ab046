"""The training loop: LR schedule, early stopping, best-epoch restore, inference outputs."""

from __future__ import annotations

import copy
import math
from itertools import pairwise

import pytest
import torch
from torch import nn

from visiontune.data.loader import Batch
from visiontune.engine.distributed import on_main_rank
from visiontune.engine.loop import (
    EvalOutput,
    LoopConfig,
    Runtime,
    StopTraining,
    check_finite,
    evaluate_epoch,
    fit,
    non_finite,
    run_inference,
)
from visiontune.engine.optim import apply_lr, build_optimizer, lr_multiplier
from visiontune.errors import TrainingDiverged

# ------------------------------------------------------------------------------- schedule


def test_warmup_is_linear_up_to_one():
    values = [lr_multiplier(s, total_steps=100, warmup_steps=10) for s in range(10)]
    assert values == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert lr_multiplier(10, total_steps=100, warmup_steps=10) == pytest.approx(1.0)


def test_cosine_decay_after_warmup():
    total, warmup, final = 110, 10, 0.01
    values = [
        lr_multiplier(s, total_steps=total, warmup_steps=warmup, final=final)
        for s in range(warmup, total + 1)
    ]
    assert values[0] == pytest.approx(1.0)
    assert all(a >= b for a, b in pairwise(values))  # never goes up again
    assert values[50] == pytest.approx(final + (1 - final) * 0.5)  # half way: half way down
    assert values[25] == pytest.approx(final + (1 - final) * 0.5 * (1 + math.cos(math.pi / 4)))
    assert values[-1] == pytest.approx(final)
    assert lr_multiplier(
        total + 50, total_steps=total, warmup_steps=warmup, final=final
    ) == pytest.approx(final)


def test_no_warmup_starts_at_full_lr():
    assert lr_multiplier(0, total_steps=10, warmup_steps=0) == pytest.approx(1.0)
    assert lr_multiplier(10, total_steps=10, warmup_steps=0, final=0.0) == pytest.approx(0.0)


def test_apply_lr_scales_each_group_from_its_base():
    params = [nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))]
    opt = build_optimizer(
        [
            {"params": [params[0]], "lr": 1.0, "base_lr": 1.0},
            {"params": [params[1]], "lr": 0.1, "base_lr": 0.1},
        ],
        weight_decay=0.0,
    )
    apply_lr(opt, 0.5)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5, 0.05])
    apply_lr(opt, 0.5)  # from the base, not compounding
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5, 0.05])


# ------------------------------------------------------------------------------- the loop

CFG = dict(warmup_epochs=0.0, label_smoothing=0.0)
RUNTIME = Runtime(channels_last=False, progress=False)


def _batches(x: torch.Tensor, y: torch.Tensor, size: int) -> list[Batch]:
    return [
        Batch(x[i : i + size], y[i : i + size], torch.arange(i, min(i + size, len(y))))
        for i in range(0, len(y), size)
    ]


def _problem(seed: int = 0, flip_val: bool = False):
    """A separable 2-class problem; with ``flip_val`` the validation labels are the opposite, so
    every epoch of training makes validation loss worse."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 4, generator=g)
    y = (x[:, 0] > 0).long()
    train = _batches(x, y, 16)
    val_y = 1 - y if flip_val else y
    return train, _batches(x, val_y, 32)


def _linear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Linear(4, 2)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    return model


def _optimizer(model, lr=0.1):
    return build_optimizer(
        [{"params": list(model.parameters()), "lr": lr, "base_lr": lr}], weight_decay=0.0
    )


def test_fit_learns_and_keeps_the_lowest_val_loss():
    train, val = _problem()
    model = _linear()
    history = fit(
        model,
        train,
        val,
        _optimizer(model),
        cfg=LoopConfig(epochs=5, **CFG),
        runtime=RUNTIME,
        set_train_mode=lambda m: m.train(),
    )
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5]
    assert history[-1]["train_acc"] > 0.9 and history[-1]["val_acc"] > 0.9
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    assert sum(r["best"] for r in history) == 1
    best = min(history, key=lambda r: r["val_loss"])
    assert best["best"]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"} <= set(history[0])


def test_early_stopping_after_patience_epochs_and_best_weights_restored():
    train, val = _problem(flip_val=True)
    model = _linear()
    states = []
    history = fit(
        model,
        train,
        val,
        _optimizer(model),
        cfg=LoopConfig(epochs=20, patience=2, **CFG),
        runtime=RUNTIME,
        set_train_mode=lambda m: m.train(),
        on_epoch_end=lambda row: states.append(copy.deepcopy(model.state_dict())),
    )
    losses = [r["val_loss"] for r in history]
    assert all(a < b for a, b in pairwise(losses))  # it only got worse ...
    assert len(history) == 3  # ... so epoch 1 stayed best and 2 stale epochs ended it
    assert [r["best"] for r in history] == [True, False, False]
    for key, value in model.state_dict().items():  # the model holds epoch 1's weights
        assert torch.equal(value, states[0][key])
    assert not torch.equal(states[-1]["weight"], states[0]["weight"])


def test_no_patience_runs_every_epoch():
    train, val = _problem(flip_val=True)
    model = _linear()
    history = fit(
        model,
        train,
        val,
        _optimizer(model),
        cfg=LoopConfig(epochs=6, patience=None, **CFG),
        runtime=RUNTIME,
        set_train_mode=lambda m: m.train(),
    )
    assert len(history) == 6


def test_patience_counts_epochs_since_the_last_improvement():
    train, val = _problem()
    model = _linear()
    history = fit(
        model,
        train,
        val,
        _optimizer(model, lr=0.05),
        cfg=LoopConfig(epochs=8, patience=1, **CFG),
        runtime=RUNTIME,
        set_train_mode=lambda m: m.train(),
    )
    assert len(history) == 8  # improving every epoch never triggers patience 1


def test_a_give_up_rule_sees_the_curve_and_stops_training():
    train, val = _problem()
    model = _linear()
    seen = []

    def give_up(history, epochs):
        seen.append((len(history), epochs, history[-1]["val_acc"]))
        return "enough" if len(history) == 3 else None

    history = fit(
        model,
        train,
        val,
        _optimizer(model, lr=0.05),
        cfg=LoopConfig(epochs=8, give_up=give_up, **CFG),
        runtime=RUNTIME,
        set_train_mode=lambda m: m.train(),
    )
    assert len(history) == 3 and [n for n, _, _ in seen] == [1, 2, 3]
    assert all(epochs == 8 for _, epochs, _ in seen)
    assert [acc for _, _, acc in seen] == [r["val_acc"] for r in history]


def test_a_callback_can_stop_training():
    train, val = _problem()
    model = _linear()

    def stop_at_two(row):
        if row["epoch"] == 2:
            raise StopTraining

    history = fit(
        model,
        train,
        val,
        _optimizer(model),
        cfg=LoopConfig(epochs=10, **CFG),
        runtime=RUNTIME,
        set_train_mode=lambda m: m.train(),
        on_epoch_end=stop_at_two,
    )
    assert len(history) == 2


def test_schedule_is_applied_per_step():
    train, val = _problem()
    model = _linear()
    opt = _optimizer(model, lr=2.0)
    seen, step = [], opt.step

    def recording_step(*args, **kwargs):
        seen.append(opt.param_groups[0]["lr"])
        return step(*args, **kwargs)

    opt.step = recording_step
    fit(
        model,
        train,
        val,
        opt,
        cfg=LoopConfig(epochs=3, **{**CFG, "warmup_epochs": 1.0}),
        runtime=RUNTIME,
        set_train_mode=lambda m: m.train(),
    )
    steps = len(train)
    expected = [
        2.0 * lr_multiplier(s, total_steps=3 * steps, warmup_steps=steps) for s in range(3 * steps)
    ]
    assert seen == pytest.approx(expected)
    assert seen[steps - 1] == pytest.approx(2.0)  # warm-up ends at the full LR


def test_empty_batches_are_skipped():
    train, val = _problem()
    empty = Batch(
        torch.empty(0),
        torch.empty(0, dtype=torch.long),
        torch.empty(0, dtype=torch.long),
        failures=[(0, "bad")],
    )
    model = _linear()
    history = fit(
        model,
        [empty, *train, empty],
        [empty, *val],
        _optimizer(model),
        cfg=LoopConfig(epochs=2, **CFG),
        runtime=RUNTIME,
        set_train_mode=lambda m: m.train(),
    )
    assert history[-1]["train_acc"] > 0.8


def test_no_validation_data_keeps_the_last_epoch():
    train, _ = _problem()
    model = _linear()
    history = fit(
        model,
        train,
        [],
        _optimizer(model),
        cfg=LoopConfig(epochs=3, **CFG),
        runtime=RUNTIME,
        set_train_mode=lambda m: m.train(),
    )
    assert math.isnan(history[0]["val_loss"])
    assert [r["best"] for r in history] == [False, False, True]


def test_inference_outputs_can_be_trained_on():
    _, val = _problem()
    model = _linear()
    out, labels, indices = run_inference(model, val, runtime=RUNTIME)
    assert out.shape == (64, 2) and labels.shape == (64,) and indices.tolist() == list(range(64))
    assert not out.is_inference()
    head = nn.Linear(2, 2)
    nn.functional.cross_entropy(head(out), labels).backward()  # would raise on inference tensors
    assert head.weight.grad is not None


def test_evaluate_epoch_accuracy_and_loss():
    x = torch.tensor([[0.0, 0.0, 0.0, 0.0]] * 4)
    model = _linear()
    with torch.no_grad():
        model.bias.copy_(torch.tensor([1.0, 0.0]))  # always predicts class 0
    out = evaluate_epoch(model, _batches(x, torch.tensor([0, 0, 0, 1]), 2), runtime=RUNTIME)
    assert out.accuracy == pytest.approx(0.75)
    p0 = math.exp(1) / (math.exp(1) + 1)
    assert out.loss == pytest.approx(-(3 * math.log(p0) + math.log(1 - p0)) / 4, rel=1e-5)
    empty = EvalOutput(
        torch.empty(0, 2), torch.empty(0, dtype=torch.long), torch.empty(0), float("nan")
    )
    assert math.isnan(empty.accuracy)


# ------------------------------------------------------------------------- divergence


def _fit(model, train, val, epochs=3, **kwargs):
    return fit(
        model,
        train,
        val,
        _optimizer(model),
        cfg=LoopConfig(epochs=epochs, **CFG),
        runtime=RUNTIME,
        set_train_mode=lambda m: m.train(),
        **kwargs,
    )


def _poison_at(epoch: int):
    """An ``on_epoch_start`` that sets the weights to NaN before ``epoch`` (0-based) trains."""

    def poison(current, model, optimizer):
        if current == epoch:
            with torch.no_grad():
                model.weight.fill_(float("nan"))

    return poison


def test_a_nan_training_loss_stops_the_run_naming_the_epoch():
    train, val = _problem()
    with pytest.raises(TrainingDiverged, match=r"diverged in epoch 2: the training loss is nan"):
        _fit(_linear(), train, val, on_epoch_start=_poison_at(1))


def test_a_nan_validation_loss_is_divergence_not_missing_validation_data():
    # Before: a NaN validation loss counted as "no validation data: the latest is best", so the
    # epoch replaced the finite best one and the run was saved.
    train, val = _problem()
    nan_val = [Batch(b.images.clone().fill_(float("nan")), b.labels, b.indices) for b in val]
    with pytest.raises(TrainingDiverged, match=r"epoch 1: the validation loss is nan.*lower --lr"):
        _fit(_linear(), train, nan_val)


def test_non_finite_weights_are_divergence_even_when_the_losses_are_finite():
    model = nn.Sequential(nn.Linear(4, 2))
    model.register_buffer("running", torch.tensor([1.0, float("inf")]))  # never in the loss
    row = {"epoch": 1, "train_loss": 0.5, "val_loss": 0.4, "lr": 0.1}
    assert non_finite(row, model, validated=True) == (
        "1 weight tensor(s) hold inf or NaN (the first: running)"
    )
    with pytest.raises(TrainingDiverged, match="the model was not saved"):
        check_finite(row, model, validated=True)
    assert non_finite({**row, "val_loss": float("nan")}, nn.Linear(4, 2), validated=False) is None


def test_no_validation_data_is_still_not_divergence():
    train, _ = _problem()
    history = _fit(_linear(), train, [], epochs=2)
    assert [r["best"] for r in history] == [False, True]
    assert all(math.isfinite(r["train_loss"]) for r in history)


class _Rank:
    """Stands in for a torchrun group's ``Distributed``: rank 0's broadcast reaches the others."""

    sent: list = []

    def __init__(self, is_main: bool):
        self.is_main = is_main

    def broadcast(self, obj):
        if self.is_main:
            _Rank.sent[:] = [obj]
        return _Rank.sent[0]


def test_a_user_error_of_rank_0_is_raised_on_every_rank():
    # Otherwise the other ranks wait at the broadcast for a result that never comes.
    def diverge():
        raise TrainingDiverged("training diverged in epoch 2")

    for is_main in (True, False):
        with pytest.raises(TrainingDiverged, match="epoch 2"):
            on_main_rank(_Rank(is_main), diverge if is_main else None, nn.Linear(2, 2))
