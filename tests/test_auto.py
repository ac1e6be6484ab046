"""``--strategy auto`` by evidence: the decisions on controlled validation scores, the
orchestration (candidates, the one kept, the record's schema), auto as the default, and
``--time-budget`` honoured (a fake clock for the loop, a real process for the whole run)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TINY, make_class_folder
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save_file

import visiontune
from visiontune.backbones.sources import load_timm_model
from visiontune.cli import main
from visiontune.config import TrainConfig, parse_duration
from visiontune.data.augment import parse_augment
from visiontune.data.loader import Batch
from visiontune.engine import loop
from visiontune.engine.loop import LoopConfig, Runtime, TimeBox
from visiontune.errors import VisiontuneError, VisiontuneWarning
from visiontune.strategies.advisor import Advice
from visiontune.strategies.evidence import (
    LOSS_MARGIN,
    WRITE_SECONDS,
    Score,
    accuracy_noise,
    after_training_seconds,
    auto_plan,
    cannot_catch_up,
    choose_augment,
    choose_best,
    fine_tune_fits,
    forward_seconds,
    keep_challenger,
)
from visiontune.training import auto, plan

TINY_ARGS = ["--backbone", "test_efficientnet", "--weights", "none", "--workers", "0"]

# ------------------------------------------------------------- decisions on controlled scores


def test_a_fine_tune_is_kept_only_beyond_noise():
    head = Score("head", 0.90, 0.30, 200)
    noise = accuracy_noise(head, Score("x", 0.90, 0.30, 200))
    inside = Score("full", 0.90 + 0.9 * noise, 0.29, 200)
    beyond = Score("full", 0.90 + 1.1 * noise, 0.29, 200)
    assert keep_challenger(head, inside)[0] is False
    assert keep_challenger(head, beyond)[0] is True
    worse = Score("full", 0.80, 0.10, 200)  # a lower loss does not rescue a clear loss of accuracy
    assert keep_challenger(head, worse)[0] is False


def test_inside_noise_the_loss_decides_by_a_margin_and_a_tie_keeps_the_cheaper():
    head = Score("head", 0.95, 0.20, 100)
    clearly_lower = Score("partial", 0.95, 0.20 * (1 - LOSS_MARGIN) - 0.01, 100)
    barely_lower = Score("partial", 0.95, 0.20 * (1 - LOSS_MARGIN) + 0.01, 100)
    wins, why = keep_challenger(head, clearly_lower)
    assert wins and "tie within noise" in why and "loss" in why
    wins, why = keep_challenger(head, barely_lower)
    assert not wins and "the cheaper, head, is kept" in why
    assert keep_challenger(head, Score("partial", 0.95, 0.20, 100))[0] is False
    # The head's loss clearly lower: the head, whatever the prior.
    assert not keep_challenger(head, Score("partial", 0.95, 0.30, 100), tie="challenger")[0]


def test_candidates_are_scored_on_their_loss_after_their_own_temperature(tmp_path, monkeypatch):
    """A fine-tune trained with label smoothing is under-confident before its temperature: its
    raw validation loss would lose every tie to the head, fitted without smoothing. A candidate
    is scored as delivered: its calibrated validation loss where a temperature was fitted."""
    raw = {"accuracy": 0.9, "loss": 0.50}

    def trained(metrics):
        def run_training(config, **kwargs):
            return auto.FitResult(Path(config.out), None, [], {"val": raw, **metrics}, None)

        return run_training

    config = TrainConfig(data=str(tmp_path))
    monkeypatch.setattr(auto, "run_training", trained({"calibration": {"nll_after": 0.31}}))
    assert auto._train("partial", config, tmp_path, frozenset()).score.loss == 0.31
    no_fit = {"calibration": {"nll_after": None}}  # too few validation images for a temperature
    monkeypatch.setattr(auto, "run_training", trained(no_fit))
    assert auto._train("partial", config, tmp_path, frozenset()).score.loss == 0.50
    # What that changes: raw losses 0.50 against the head's 0.40 keep the head on a tie;
    # calibrated, 0.31 against 0.40, the fine-tune.
    head = Score("head", 0.9, 0.40, 240)
    assert not keep_challenger(head, Score("partial", 0.9, 0.50, 240), tie="challenger")[0]
    assert keep_challenger(head, Score("partial", 0.9, 0.31, 240), tie="challenger")[0]


def test_an_inconclusive_comparison_keeps_the_prior():
    head, tuned = Score("head", 0.95, 0.20, 100), Score("partial", 0.96, 0.19, 100)
    assert keep_challenger(head, tuned)[0] is False  # between backbones: the cheaper
    wins, why = keep_challenger(head, tuned, tie="challenger")  # the advisor's fine-tune
    assert wins and "the advisor's choice, partial, is kept" in why


def test_without_validation_images_the_cheaper_is_kept():
    wins, why = keep_challenger(Score("head", None, None, 0), Score("full", None, None, 0))
    assert not wins and "no validation images" in why


def test_one_image_is_never_evidence():
    # 31 validation images: one more right is 3.2 points, inside the one-image floor.
    head = Score("head", 30 / 31, 0.1, 31)
    assert accuracy_noise(head, Score("full", 1.0, 0.1, 31)) >= 1 / 31
    assert keep_challenger(head, Score("full", 1.0, 0.1, 31))[0] is False


@given(
    st.floats(0, 1), st.floats(0, 1), st.integers(1, 5000), st.floats(0.01, 5), st.floats(0.01, 5)
)
def test_the_rule_never_keeps_both_and_never_prefers_a_worse_by_noise(a, b, n, la, lb):
    first, second = Score("a", a, la, n), Score("b", b, lb, n)
    ab, ba = keep_challenger(first, second)[0], keep_challenger(second, first)[0]
    assert not (ab and ba)  # a strict order: never "each is better than the other"
    if b < a - accuracy_noise(first, second):
        assert not ab


def _outcomes(rights) -> dict:
    return {f"{i}.png": bool(r) for i, r in enumerate(rights)}


@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=300))
def test_paired_noise_is_the_standard_error_of_the_per_image_difference(pairs):
    a, b = zip(*pairs, strict=True)
    first = Score("a", float(np.mean(a)), 0.3, len(a), correct=_outcomes(a))
    second = Score("b", float(np.mean(b)), 0.3, len(b), correct=_outcomes(b))
    difference = np.array(b, dtype=float) - np.array(a, dtype=float)
    expected = max(difference.std() / np.sqrt(len(a)), 1 / len(a))
    assert accuracy_noise(first, second) == pytest.approx(expected, abs=1e-12)
    assert accuracy_noise(first, second) == pytest.approx(accuracy_noise(second, first))


def test_a_paired_difference_counts_where_independent_accuracies_tie():
    """elpv's numbers: 90 validation images, the head right on 9 the fine-tune misses and the
    fine-tune on 5 the head misses. As independent accuracies 4 images is inside the noise
    (the advisor's fine-tune would stand); paired, it is beyond: the head is kept."""
    head_right = [True] * 66 + [True] * 9 + [False] * 5 + [False] * 10
    tuned_right = [True] * 66 + [False] * 9 + [True] * 5 + [False] * 10
    head = Score("head", 75 / 90, 0.39, 90)
    tuned = Score("partial", 71 / 90, 0.43, 90)
    assert keep_challenger(head, tuned, tie="challenger")[0] is True  # independent: a tie
    head, tuned = (
        replace(head, correct=_outcomes(head_right)),
        replace(tuned, correct=_outcomes(tuned_right)),
    )
    wins, why = keep_challenger(head, tuned, tie="challenger")
    assert wins is False and "beyond noise" in why and "paired: 5 right only by partial" in why
    # Outcomes on different images cannot be paired: the independent comparison stands.
    other = replace(tuned, correct={f"x{k}": v for k, v in tuned.correct.items()})
    assert accuracy_noise(head, other) == accuracy_noise(replace(head, correct=None), tuned)
    assert "correct" not in tuned.to_dict()  # the record keeps the counts, in the reason


def _curve(*accuracies):
    return [{"val_acc": a} for a in accuracies]


def test_a_fine_tune_is_given_up_only_from_half_its_epochs_and_only_when_it_cannot_catch_up():
    head = Score("head", 0.867, 0.35, 90)  # elpv's head: 86.7 % of 90 validation images
    flat = _curve(0.70, 0.77, 0.78)
    assert cannot_catch_up(head, flat[:2], epochs=6) is None  # before half: never
    why = cannot_catch_up(head, flat, epochs=6)
    assert why.startswith("given up after 3 of 6 epochs") and "81.0%" in why  # 78 + 3 x 1
    assert cannot_catch_up(head, _curve(0.70, 0.78, 0.84), epochs=6) is None  # still rising
    assert cannot_catch_up(head, _curve(0.80, 0.82, 0.83), epochs=6) is None  # inside noise
    assert cannot_catch_up(head, _curve(0.5, 0.5, 0.5, 0.5, 0.5, 0.5), epochs=6) is None  # done
    assert cannot_catch_up(Score("head", None, None, 0), flat, epochs=6) is None  # no val


@given(
    st.lists(st.floats(0, 1), min_size=1, max_size=12),
    st.integers(1, 12),
    st.floats(0, 1),
    st.integers(1, 2000),
)
def test_a_curve_within_one_image_of_the_head_is_never_given_up(curve, epochs, head, images):
    incumbent = Score("head", head, 0.3, images)
    why = cannot_catch_up(incumbent, _curve(*curve), epochs)
    if why is not None:  # only past half, before the end, and behind beyond noise
        assert epochs / 2 <= len(curve) < epochs
        # the projection is at least the best so far, and the noise at least one image
        assert head - max(curve) > 1 / images


def test_auto_gives_up_a_fine_tune_its_rule_stops_and_says_why(tmp_path, noisy, monkeypatch):
    monkeypatch.setattr(auto, "measure_and_decide", _forced("partial", epochs=4))

    def after_two(incumbent, history, epochs):  # a curve that cannot win, at epoch 2
        assert incumbent.name == "head" and epochs == 4
        return "given up after 2 of 4 epochs: test" if len(history) == 2 else None

    monkeypatch.setattr(auto, "cannot_catch_up", after_two)
    result = visiontune.fit(noisy, **TINY, workers=0, out=str(tmp_path / "run"), progress=False)
    tuned = json.loads((tmp_path / "run" / "candidates" / "partial" / "history.json").read_text())
    assert len(tuned) == 2
    assert result.metrics["auto"]["reasons"][-1].startswith("partial given up after 2 of 4")


def test_choose_best_walks_cheapest_first():
    scores = [Score("lite0", 0.90, 0.3, 300), Score("lite1", 0.96, 0.2, 300)]
    scores.append(Score("lite2", 0.965, 0.19, 300))  # not beyond lite1 by noise
    kept, reasons = choose_best(scores)
    assert kept == 1 and len(reasons) == 2


def test_augmentation_backs_off_when_crops_lose_the_label():
    # Every crop scores like the mildest: the strongest is kept, flips too.
    assert choose_augment(0.9, {0.35: 0.87, 0.5: 0.88, 0.75: 0.89}, 0.9, 400)[0] == (
        "crop=0.35,flip=0.5"
    )
    # The strong crop cuts the subject out; mirrored views change the class.
    chosen, why = choose_augment(0.9, {0.35: 0.6, 0.5: 0.7, 0.75: 0.88}, 0.5, 400)
    assert chosen == "crop=0.75" and "no flip" in why
    assert parse_augment(chosen)  # a valid --augment


def test_a_fine_tune_fits_a_budget_only_with_two_epochs_and_the_evaluation():
    fits, needed = fine_tune_fits(
        100, step_seconds_per_image=0.02, train_images=100, val_images=50, test_images=75
    )
    # Two epochs of 100 images; after them TEST twice (evaluation, trust), train and val once.
    after = forward_seconds(0.02, 2 * 75 + 100 + 50) + WRITE_SECONDS
    assert needed == pytest.approx(2 * 2 + after) and fits
    assert after == pytest.approx(after_training_seconds(0.02, train=100, val=50, test=75))
    assert not fine_tune_fits(5, step_seconds_per_image=0.02, train_images=100)[0]


def test_the_plan_prices_what_the_loop_reserves_and_the_cached_activations():
    """Yoga under ``--time-budget 120s``: 95 s left after the head, a measured step of 42 ms an
    image. Pricing only two epochs and one pass over validation and TEST (91 s), auto once
    started a ``partial`` that the loop, reserving 45 s for the TEST and trust passes, left a
    short stretch of training after caching two views of activations: 23.5 % on validation
    against the head's 90.1 %, the time wasted."""
    train, val, test, step = 918, 162, 467, 0.042
    fits, needed = fine_tune_fits(
        95,
        step_seconds_per_image=step,
        train_images=train,
        val_images=val,
        test_images=test,
        before_images=2 * train + val,
    )
    assert not fits and needed > 95
    # What is left for the epochs once the loop's reserve and the activation pass are taken
    # from exactly the estimate: the two epochs it priced.
    deadline = time.monotonic() + needed
    model = SimpleNamespace(backbone=SimpleNamespace(preprocess=None))
    splits = SimpleNamespace(train=[0] * train, val=[0] * val, test=[0] * test)
    strategy = SimpleNamespace(uses_frozen_backbone=False)
    stop = plan._loop_deadline(deadline, model, strategy, splits, None, None, per_image=step)
    left_for_epochs = stop - (deadline - needed) - forward_seconds(step, 2 * train + val)
    assert left_for_epochs == pytest.approx(2 * step * train)


@pytest.mark.parametrize(
    "strategy, options, cached",
    [("partial", {}, True), ("full", {}, False), ("partial", {"activation_views": 0}, False)],
)
def test_a_fine_tunes_epochs_are_priced_by_what_they_run(strategy, options, cached):
    """On cached activations an epoch runs the trainable stages alone: its step is timed on
    the activations' shape, and the activation pass is priced before the first epoch; where
    the image path runs, an epoch costs the whole network's step and nothing is cached."""
    config = TrainConfig(data="d", **TINY, **options)
    splits = SimpleNamespace(train=[0] * 40, val=[0] * 9, labels=["a", "b", "c"])
    ctx = SimpleNamespace(splits=splits, runtime=loop.Runtime())
    advice = Advice(strategy, "big+similar", {"epochs": 2, "unfreeze": 1}, "forced")
    cost = auto._fine_tune_cost(config, ctx, advice, TINY["backbone"], explicit=())
    assert cost.network > 0 and cost.epoch > 0
    assert cost.activation_images == (2 * 40 + 9 if cached else 0)
    if not cached:
        assert cost.epoch == cost.network
    # The plan adds exactly that: two epochs at the epoch's step, the rest at the network's.
    fits, needed = fine_tune_fits(
        1e9,
        step_seconds_per_image=0.03,
        epoch_step_seconds_per_image=0.01,
        train_images=40,
        val_images=9,
        test_images=5,
        before_images=cost.activation_images,
    )
    after = after_training_seconds(0.03, train=40, val=9, test=5)
    expected = 2 * 0.01 * 40 + forward_seconds(0.03, cost.activation_images) + after
    assert fits and needed == pytest.approx(expected)


def test_auto_plan_names_the_fine_tune_it_may_try():
    assert "stops there" in auto_plan("head")
    assert "`partial`" in auto_plan("partial") and "beyond noise" in auto_plan("partial")


# ------------------------------------------------------------------------ durations, options


@pytest.mark.parametrize(
    "text, seconds", [("90s", 90), ("5m", 300), ("1h30m", 5400), ("2.5m", 150), ("45", 45)]
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "0", "-5s", "5x", "m"])
def test_bad_durations_are_user_errors(text):
    with pytest.raises(VisiontuneError, match="--time-budget"):
        TrainConfig(data="d", time_budget=text)


def test_auto_is_the_default_in_python_and_the_cli():
    assert TrainConfig(data="d").strategy == "auto"
    with pytest.raises(VisiontuneError, match="--backbone auto .* needs --strategy auto"):
        TrainConfig(data="d", backbone="auto", strategy="full")


# --------------------------------------------------------------------------- the orchestration


def _forced(strategy: str, epochs: int = 1):
    """An advisor that names ``strategy`` whatever it measured."""

    def decide(*args, **kwargs):
        measured = ORIGINAL_MEASURE(*args, **kwargs)
        settings = {"epochs": epochs, "lr": 5e-3, "backbone_lr_mult": 0.1, "unfreeze": 2}
        return Advice(strategy, "big+similar", settings, "forced", measured.measurements)

    return decide


ORIGINAL_MEASURE = auto.measure_and_decide


def _scored(scores: dict[str, tuple[float, float]]):
    """``auto._train`` with the validation scores of the named candidates replaced."""
    real = auto._train

    def train(name, *args, **kwargs):
        candidate = real(name, *args, **kwargs)
        if name in scores:
            accuracy, loss = scores[name]
            # The per-image outcomes go with the real scores they replace: the controlled
            # accuracies are compared as independent binomials.
            score = replace(candidate.score, accuracy=accuracy, loss=loss, correct=None)
            candidate = replace(candidate, score=score)
        return candidate

    return train


@pytest.fixture
def noisy(tmp_path) -> Path:
    """Two classes of the same pixel noise: no backbone separates them, the head is not perfect
    on validation, so ``auto`` goes on to the fine-tune."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 20), ("test", 4)):
        for name in ("a", "b"):
            folder = tmp_path / "noisy" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return tmp_path / "noisy"


@pytest.mark.parametrize(
    "fine_tune, kept",
    [
        ((0.99, 0.05), "partial"),  # better beyond noise
        ((0.30, 0.05), "head"),  # worse beyond noise, whatever its loss
        ((0.80, 0.5), "head"),  # a tie, the head's loss clearly lower
        ((0.80, 0.41), "partial"),  # inconclusive: the advisor's choice stands
    ],
)
def test_auto_keeps_the_fine_tune_only_when_it_wins_on_validation(
    tmp_path, noisy, monkeypatch, fine_tune, kept
):
    monkeypatch.setattr(auto, "measure_and_decide", _forced("partial"))
    monkeypatch.setattr(auto, "_train", _scored({"head": (0.8, 0.4), "partial": fine_tune}))
    result = visiontune.fit(noisy, **TINY, workers=0, out=str(tmp_path / "run"), progress=False)
    record = json.loads((tmp_path / "run" / "auto.json").read_text())
    assert record == result.metrics["auto"] and record["kept"] == kept
    assert [c["name"] for c in record["candidates"]] == ["head", "partial"]
    assert [c["kept"] for c in record["candidates"]] == [kept == "head", kept == "partial"]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["training"]["strategy"] == kept  # the run folder holds the kept model
    assert result.model.run_dir == tmp_path / "run"
    assert visiontune.load(tmp_path / "run" / "candidates" / "partial").labels.names == ("a", "b")


def test_the_decision_record_schema(tmp_path, noisy, monkeypatch):
    monkeypatch.setattr(auto, "measure_and_decide", _forced("partial"))
    main(
        [
            "train",
            str(noisy),
            *TINY_ARGS,
            "--no-progress",
            "--lr",
            "0.02",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    record = json.loads((tmp_path / "run" / "auto.json").read_text())
    assert set(record) == {"rule", "kept", "reasons", "candidates", "advice", "augment", "budget"}
    for candidate in record["candidates"]:
        assert set(candidate) == {
            "name",
            "accuracy",
            "loss",
            "images",
            "seconds",
            "strategy",
            "backbone",
            "run",
            "test_accuracy",
            "kept",
        }
        assert candidate["images"] == 6 and candidate["seconds"] > 0
    assert record["advice"]["applied"] == {"epochs": 1, "backbone_lr_mult": 0.1, "unfreeze": 2}
    tuned = json.loads((tmp_path / "run" / "candidates" / "partial" / "config.json").read_text())
    assert tuned["training"]["lr"] == 0.02  # given: kept over the advisor's 5e-3
    assert record["augment"]["chosen"] is None  # 6 validation images cannot rank crops
    assert record["budget"] is None
    assert "paired:" in record["reasons"][-1]  # both scored image by image on validation


def test_a_run_returns_each_validation_image_outcome(tmp_path, noisy):
    """``FitResult.val_correct``: one entry per validation image, as many right as the
    validation accuracy says (what auto pairs its candidates on)."""
    result = visiontune.fit(
        noisy, **TINY, strategy="head", workers=0, out=str(tmp_path / "run"), progress=False
    )
    outcomes = result.val_correct
    assert len(outcomes) == result.metrics["val_images"] == 6
    assert all(Path(k).parent.parent.name == "train" for k in outcomes)  # held out of train/
    assert sum(outcomes.values()) / 6 == pytest.approx(result.metrics["val"]["accuracy"])


def test_a_head_perfect_on_validation_ends_the_search_unmeasured(tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the data was measured after a perfect head")

    monkeypatch.setattr(auto, "measure_and_decide", never)
    data = make_class_folder(tmp_path / "data", {"cat": 6, "dog": 6})
    result = visiontune.fit(data, **TINY, workers=0, out=str(tmp_path / "run"), progress=False)
    record = result.metrics["auto"]
    assert [c["name"] for c in record["candidates"]] == ["head"]
    assert record["candidates"][0]["accuracy"] == 1.0
    assert record["advice"] is None and "not measured" in record["reasons"][-1]
    assert "perfect on validation" in record["reasons"][-1]


def test_auto_records_the_measurement_sample_before_the_head_and_measures_it(
    tmp_path, noisy, monkeypatch
):
    """On a cold cache the sample is extracted first (statistics recorded on the way): the head
    reads those images from the cache, and the advisor is handed the recorded sample."""
    handed = []

    def advise(splits, backbone, **kwargs):
        handed.append(kwargs["sample"])
        return _forced("head")(splits, backbone, **kwargs)

    monkeypatch.setattr(auto, "measure_and_decide", advise)
    # A weights file: random weights differ per creation, and the cache is keyed by the weights.
    weights = tmp_path / "tiny.safetensors"
    save_file(load_timm_model(TINY["backbone"], weights="none").model.state_dict(), str(weights))
    result = visiontune.fit(
        noisy,
        backbone=TINY["backbone"],
        weights=str(weights),
        workers=0,
        out=str(tmp_path / "run"),
        cache_dir=str(tmp_path / "cache"),
        progress=False,
    )
    (sample,) = handed
    assert len(sample.features.samples) == sample.features.computed == 40  # all train + val
    extraction = result.metrics["feature_extraction"]
    assert extraction["train"] == {"computed": 0, "from_cache": 34}
    assert extraction["val"] == {"computed": 0, "from_cache": 6}
    assert extraction["test"] == {"computed": 8, "from_cache": 0}


def test_advise_measures_the_sample_auto_measures(tmp_path, monkeypatch):
    """More images than the sample takes (50 a class), so which ones it takes depends on how the
    pool is drawn: ``advise`` and ``train``'s ``auto`` (same seed, default hold-out, cold caches)
    measure the same images, and say the same. Before, ``advise`` drew from train without a
    hold-out, in another order: on ELPV it advised ``full`` where auto tried ``partial``."""
    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        for split, count in (("train", 60), ("test", 2)):
            folder = tmp_path / "data" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    # Pretraining statistics of its own: the BatchNorm shift is then measured, a fingerprint of
    # the images it was measured on (freshly initialised ones record no pretraining data).
    state = load_timm_model(TINY["backbone"], weights="none").model.state_dict()
    for key, value in state.items():
        if key.endswith("running_mean"):
            state[key] = torch.randn(value.shape)
        elif key.endswith("running_var"):
            state[key] = torch.rand(value.shape) + 0.5
    weights = tmp_path / "tiny.safetensors"
    save_file(state, str(weights))
    options = dict(backbone=TINY["backbone"], weights=str(weights), workers=0, seed=3)
    monkeypatch.setattr(auto, "measure_and_decide", _forced("head"))
    result = visiontune.fit(
        tmp_path / "data",
        **options,
        out=str(tmp_path / "run"),
        cache_dir=str(tmp_path / "train-cache"),
        progress=False,
    )
    advised = visiontune.advise(tmp_path / "data", **options, cache_dir=str(tmp_path / "cache"))
    measured = result.metrics["auto"]["advice"]["measurements"]
    assert measured["probe_images"] == advised.measurements.probe_images == 100
    assert measured["bn_images"] == advised.measurements.bn_images == 100
    assert measured["bn_shift"] == pytest.approx(advised.measurements.bn_shift, rel=1e-6)
    assert measured["bn_shift"] > 0
    assert measured["probe_accuracy"] == advised.measurements.probe_accuracy


def test_the_head_alone_when_the_advisor_says_so(tmp_path, noisy, monkeypatch):
    monkeypatch.setattr(auto, "measure_and_decide", _forced("head"))
    result = visiontune.fit(noisy, **TINY, workers=0, out=str(tmp_path / "run"), progress=False)
    record = result.metrics["auto"]
    assert record["kept"] == "head" and len(record["candidates"]) == 1
    assert record["candidates"][0]["accuracy"] < 1.0
    assert "quadrant says the head is enough" in record["reasons"][-1]
    assert record["advice"]["strategy"] == "head" and record["advice"]["applied"] == {}


# --------------------------------------------------------------------------- the time budget


class FakeClock:
    """``time.monotonic`` that advances ``step`` seconds at every reading."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 1000.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_the_loop_stops_at_its_deadline_with_the_lr_decayed(monkeypatch):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(10)]
    batches = [Batch(x, y, torch.arange(len(y))) for x, y in data]
    clock = FakeClock(1.0)
    monkeypatch.setattr(loop.time, "monotonic", clock)
    deadline = clock.now + 30  # room for about a dozen batches of the 10 x 100 asked for
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for group in optimizer.param_groups:
        group["base_lr"] = 0.1
    cfg = LoopConfig(epochs=100, warmup_epochs=0, deadline=deadline)
    history = loop.fit(
        model,
        batches,
        [],
        optimizer,
        cfg=cfg,
        runtime=Runtime(channels_last=False),
        set_train_mode=lambda m: m.train(),
    )
    assert len(history) < 10 and clock.now < deadline + 5
    assert history[-1]["lr"] < 0.01  # the cosine schedule ended at the deadline, not at 100


def test_a_timebox_counts_the_validation_pass_against_the_time():
    box = TimeBox(deadline=time.monotonic() + 10)
    assert not box.over()
    box.val_seconds = 11
    assert box.over()


@pytest.mark.skipif(sys.platform != "linux", reason="process start from /proc")
def test_the_budget_is_honoured_from_process_start(tmp_path, noisy):
    # A fine-tune asked for 10,000 epochs finishes within its budget, process start included.
    budget = 25
    started = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "visiontune",
            "train",
            str(noisy),
            "--strategy",
            "partial",
            *TINY_ARGS,
            "--epochs",
            "10000",
            "--time-budget",
            f"{budget}s",
            "--no-progress",
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=200,
    )
    wall = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert 1 <= len(history) < 10000
    assert wall <= budget * 1.2 + 2  # a batch, the last validation and the TEST pass past it


def test_backbone_auto_races_the_installed_backbones(tmp_path, noisy, monkeypatch):
    # Two tiny architectures stand in for Lite0/1/2 (their weights need no download).
    monkeypatch.setattr(auto, "embedded_backbones", lambda: ["test_efficientnet", "test_resnet"])
    monkeypatch.setattr(auto, "measure_and_decide", _forced("head"))
    monkeypatch.setattr(
        auto,
        "_train",
        _scored({"head-test_efficientnet": (0.5, 0.7), "head-test_resnet": (1.0, 0.1)}),
    )
    result = visiontune.fit(
        noisy,
        backbone="auto",
        weights="none",
        workers=0,
        out=str(tmp_path / "run"),
        progress=False,
    )
    record = result.metrics["auto"]
    names = [c["name"] for c in record["candidates"]]
    assert names == ["head-test_efficientnet", "head-test_resnet"]
    assert (
        record["kept"] == "head-test_resnet" and result.model.model.backbone.name == "test_resnet"
    )


def test_an_interrupted_auto_run_says_which_candidate_to_resume(tmp_path):
    run = tmp_path / "run"
    (run / "candidates" / "partial").mkdir(parents=True)
    (run / "candidates" / "partial" / "checkpoint.safetensors").write_bytes(b"")
    with pytest.raises(VisiontuneError, match="--resume .*candidates/partial"):
        visiontune.resume(run)


def test_without_validation_no_fine_tune_is_tried(tmp_path, noisy, monkeypatch):
    monkeypatch.setattr(auto, "measure_and_decide", _forced("partial"))
    with pytest.warns(VisiontuneWarning, match="no validation images"):
        result = visiontune.fit(
            noisy, **TINY, workers=0, val_fraction=0, out=str(tmp_path / "run"), progress=False
        )
    record = result.metrics["auto"]
    assert [c["name"] for c in record["candidates"]] == ["head"]
    assert "could not be judged" in record["reasons"][-1]
