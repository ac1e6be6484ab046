"""The training layer's phases, the options declared once, and the public surface."""

from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from conftest import TINY, files_under, make_split_folder

import visiontune
from visiontune.cli import build_parser
from visiontune.cli.options import add_config_options, given_options
from visiontune.config import STRATEGY_DEFAULTS, TrainConfig
from visiontune.errors import TrainingDiverged, VisiontuneError
from visiontune.training import make_plan, prepare_data, run_training, train, write_run
from visiontune.training.advice import apply_advice
from visiontune.training.run import json_text

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


@pytest.fixture
def data(tmp_path) -> Path:
    return make_split_folder(
        tmp_path / "data",
        {"train": {"cat": 6, "dog": 6}, "val": {"cat": 2, "dog": 2}, "test": {"cat": 2, "dog": 2}},
    )


def _config(data, tmp_path, **options) -> TrainConfig:
    base = dict(TINY, workers=0, progress=False, cache=False, out=str(tmp_path / "run"))
    return TrainConfig(data=str(data), **{**base, **options})


def test_make_plan_decides_everything_and_writes_nothing(data, tmp_path):
    before = files_under(tmp_path)
    plan = make_plan(_config(data, tmp_path, strategy="partial"), device=torch.device("cpu"))
    assert files_under(tmp_path) == before
    assert plan.config.epochs == STRATEGY_DEFAULTS["partial"]["epochs"]  # resolved once
    assert plan.config.lr == STRATEGY_DEFAULTS["partial"]["lr"]
    assert plan.run_dir == tmp_path / "run" and plan.loop.epochs == plan.config.epochs
    trainable = {id(p) for p in plan.model.parameters() if p.requires_grad}
    in_groups = {id(p) for g in plan.param_groups for p in g["params"]}
    assert trainable == in_groups and 0 < len(trainable) < len(list(plan.model.parameters()))


def test_phases_return_values_and_leave_their_inputs_alone(data, tmp_path):
    broken = data / "train" / "cat" / "broken.png"
    broken.write_bytes(b"not an image")
    plan = make_plan(_config(data, tmp_path, strategy="head"), device=torch.device("cpu"))
    scanned = [s.path for s in plan.splits.train]
    prepared = prepare_data(plan)
    assert [s.path for s in plan.splits.train] == scanned  # the plan's splits are not mutated
    assert broken not in [s.path for s in prepared.splits.train]
    assert str(broken) in prepared.screening.skipped
    assert not plan.run_dir.exists()
    outcome = train(plan, prepared)
    assert outcome.history and outcome.test["num_images"] == 4
    assert str(broken) in outcome.skips["skipped"]
    write_run(plan, prepared, outcome, {"val": {}})
    assert {"model.safetensors", "config.json", "history.json", "metrics.json"} <= set(
        p.name for p in plan.run_dir.iterdir()
    )


def test_a_class_left_empty_by_screening_stops_before_anything_is_written(data, tmp_path):
    for image in (data / "train" / "dog").iterdir():
        image.write_bytes(b"broken")
    with pytest.raises(VisiontuneError, match="dog have no decodable training image"):
        run_training(_config(data, tmp_path, strategy="full", epochs=1))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("seed", [2**32, 2**40 + 7])
def test_seeds_of_2_to_the_32_or_more_train(data, tmp_path, seed):
    result = visiontune.fit(data, **_options(tmp_path), strategy="head", seed=seed)
    assert result.metrics["test"]["num_images"] == 4


@pytest.mark.parametrize("seed", [-1, 2**63, 1.5])
def test_seeds_outside_the_range_are_refused_at_construction(data, seed):
    with pytest.raises(VisiontuneError, match="--seed"):
        TrainConfig(data=str(data), seed=seed)


@pytest.mark.parametrize(
    "option, value, match",
    [
        ("lr", math.inf, "--lr must be a positive finite number, got inf"),
        ("lr", -math.inf, "--lr must be a positive finite number, got -inf"),
        ("lr", math.nan, "--lr must be a positive finite number, got nan"),
        ("patience", -1, "--patience must be at least 1, got -1"),
        ("patience", 0, "--patience must be at least 1, got 0"),
    ],
)
def test_non_finite_lr_and_patience_below_one_are_refused_at_construction(
    data, option, value, match
):
    with pytest.raises(VisiontuneError, match=re.escape(match)):
        TrainConfig(data=str(data), **{option: value})


def test_write_run_never_saves_non_finite_weights(data, tmp_path):
    plan = make_plan(_config(data, tmp_path, strategy="head"), device=torch.device("cpu"))
    prepared = prepare_data(plan)
    outcome = train(plan, prepared)
    with torch.no_grad():
        plan.model.head.fc.bias[0] = float("nan")
    with pytest.raises(TrainingDiverged, match="hold inf or NaN.*not saved"):
        write_run(plan, prepared, outcome, {"val": {}})
    assert not (plan.run_dir / "model.safetensors").exists()


def test_json_text_writes_null_for_non_finite_numbers():
    value = {"a": math.nan, "b": [1.5, math.inf, {"c": -math.inf}], "d": "nan", "e": 2}
    assert json.loads(json_text(value)) == {
        "a": None,
        "b": [1.5, None, {"c": None}],
        "d": "nan",
        "e": 2,
    }
    assert "NaN" not in json_text(value) and "Infinity" not in json_text(value)


def _options(tmp_path) -> dict:
    return dict(TINY, workers=0, progress=False, cache=False, out=str(tmp_path / "run"))


def test_fit_puts_keyword_options_on_top_of_a_config(data, tmp_path):
    config = TrainConfig(data="elsewhere", strategy="full", epochs=3, **_options(tmp_path))
    result = visiontune.fit(data, config=config, strategy="head")
    saved = result.model.model is not None and (result.run_dir / "config.json").read_text()
    assert '"strategy": "head"' in saved and str(data) in saved
    with pytest.raises(VisiontuneError, match="unknown training option.*epoch_count"):
        visiontune.fit(data, epoch_count=3)


def test_auto_keeps_every_option_given_even_at_its_default():
    config = TrainConfig(data="d", strategy="auto", backbone_lr_mult=0.1)
    advice = {"strategy": "partial", "settings": {"epochs": 6, "backbone_lr_mult": 0.5}}
    chosen, record = apply_advice(config, advice, explicit={"backbone_lr_mult"})
    assert chosen.strategy == "partial" and chosen.epochs == 6 and chosen.backbone_lr_mult == 0.1
    assert record["applied"] == {"epochs": 6} and "applied" not in advice


def test_every_train_option_is_generated_from_its_config_field():
    parser = argparse.ArgumentParser()
    add_config_options(parser, TrainConfig)
    dests = {a.dest for a in parser._actions if a.dest != "help"}
    assert dests == {f.name for f in fields(TrainConfig)} - {"data"}
    train_help = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for f in fields(TrainConfig):
        if f.name != "data":
            flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
            assert flag in train_help
    assert "{head,partial,full,gradual,auto}" in train_help


def test_given_options_are_exactly_those_on_the_command_line():
    args = build_parser().parse_args(["train", "photos", "--epochs", "3", "--no-cache"])
    assert given_options(args, TrainConfig) == {"epochs": 3, "cache": False}
    args = build_parser().parse_args(["train", "photos", "--backbone-lr-mult", "0.1"])
    assert given_options(args, TrainConfig) == {"backbone_lr_mult": 0.1}  # the default, given


def test_the_package_exports_exactly_the_readme_python_api():
    section = README[README.index("## Python API") : README.index("## Backbones and weights")]
    documented = set(re.findall(r"`visiontune\.(\w+)", section)) - {"__all__"}
    assert set(visiontune.__all__) - {"__version__"} == documented
    for name in visiontune.__all__:
        assert getattr(visiontune, name) is not None


def test_loader_workers_do_not_change_what_an_epoch_draws(data, tmp_path):
    """The progress bar must not start an extra pass over a persistent-worker loader (tqdm.auto's
    asyncio bar did), which moved the seeded sampler one epoch on with workers but not without."""
    histories = []
    for workers in (0, 1):
        options = {**_options(tmp_path / str(workers)), "workers": workers}
        result = visiontune.fit(data, **options, strategy="full", epochs=2, batch_size=4)
        histories.append([(row["train_loss"], row["val_loss"]) for row in result.history])
    assert histories[0] == histories[1]
