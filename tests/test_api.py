"""The Python API end to end: fit, the run folder, skipped files, early stopping, load/predict."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from itertools import pairwise

import numpy as np
import pytest
import torch
from conftest import TINY, make_class_folder, make_shape_folder, make_split_folder, solid_image
from PIL import Image

import visiontune
from visiontune.errors import DataError, VisiontuneError

QUIET = dict(workers=0, progress=False)


def test_run_folder_contents(trained_run):
    run = trained_run.run_dir
    assert {p.name for p in run.iterdir()} == {
        "model.safetensors",
        "config.json",
        "trust.safetensors",
        "history.json",
        "history.csv",
        "metrics.json",
    }
    history = json.loads((run / "history.json").read_text())
    assert len(history) == 1 and history[0]["best"] is True
    rows = list(csv.DictReader(io.StringIO((run / "history.csv").read_text())))
    assert len(rows) == 1 and float(rows[0]["val_loss"]) == pytest.approx(history[0]["val_loss"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val"]["best_epoch"] == 1
    assert metrics["val"]["accuracy"] == pytest.approx(history[0]["val_acc"])
    assert metrics["test"]["num_images"] == 9  # the data's test split was evaluated
    assert set(metrics["test"]["per_class"]) == {"bird", "cat", "dog"}
    assert metrics["skipped"] == {} and metrics["notes"] == {}
    assert metrics["timing"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")


def test_evaluate_agrees_with_the_runs_test_metrics(trained_run, trained_data):
    metrics = visiontune.evaluate(trained_run.run_dir, trained_data / "test", workers=0)
    test = trained_run.metrics["test"]
    assert metrics["num_images"] == 9
    assert metrics["accuracy"] == pytest.approx(test["accuracy"])
    assert metrics["confusion_matrix"] == test["confusion_matrix"]
    assert metrics["skipped"] == {}


def test_evaluate_on_a_dataset_root_scores_its_test_split(trained_run, trained_data, tmp_path):
    """As a manifest gives its test rows; before, the split folders were read as unknown
    classes ("class folder(s) ... test, train, val")."""
    root = visiontune.evaluate(trained_run.run_dir, trained_data, workers=0)
    test = visiontune.evaluate(trained_run.run_dir, trained_data / "test", workers=0)
    assert root["num_images"] == test["num_images"] == 9
    assert root["confusion_matrix"] == test["confusion_matrix"]
    untested = tmp_path / "untested"
    shutil.copytree(trained_data / "train", untested / "train")
    with pytest.raises(VisiontuneError, match="holds split folders .train. but no test folder"):
        visiontune.evaluate(trained_run.run_dir, untested, workers=0)


def test_predict_top_k_and_unreadable_files(trained_run, trained_data, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(np.random.default_rng(0).bytes(300))
    good = sorted((trained_data / "test" / "cat").iterdir())[0]
    results = visiontune.predict(
        trained_run.run_dir, [good, bad, trained_data / "val"], top_k=2, workers=0
    )
    assert [r["path"] for r in results[:2]] == [str(good), str(bad)]
    assert len(results) == 2 + 6  # the val folder was expanded to its images
    top = results[0]["top"]
    assert len(top) == 2 and top[0]["probability"] >= top[1]["probability"]
    assert {t["class"] for t in top} <= {"bird", "cat", "dog"}
    assert "error" in results[1] and "bad.jpg" in results[1]["error"]
    with pytest.raises(DataError, match="no such file"):
        visiontune.predict(trained_run.run_dir, [tmp_path / "missing.png"])


@pytest.mark.parametrize("strategy", ["head", "partial"])
def test_undecodable_files_are_skipped_and_listed(tmp_path, strategy):
    data = make_class_folder(tmp_path / "data", {"cat": 6, "dog": 6})
    noise = data / "cat" / "noise.jpg"
    noise.write_bytes(np.random.default_rng(1).bytes(1500))
    empty = data / "dog" / "empty.png"
    empty.write_bytes(b"")
    cut = data / "dog" / "cut.jpg"
    solid_image((40, 70, 200), (64, 48), noise=40).save(cut, quality=95)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    png_as_jpg = data / "cat" / "really_png.jpg"
    Image.new("RGB", (64, 48), (210, 60, 40)).save(png_as_jpg, format="PNG")

    result = visiontune.fit(
        data,
        **TINY,
        strategy=strategy,
        epochs=1,
        batch_size=32,
        unfreeze=1,
        out=str(tmp_path / "run"),
        **QUIET,
    )
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert set(metrics["skipped"]) == {str(noise), str(empty)}
    assert all(reason for reason in metrics["skipped"].values())
    assert "truncated" in metrics["notes"][str(cut)]
    assert str(png_as_jpg) not in metrics["skipped"]
    assert (result.run_dir / "model.safetensors").is_file()  # training completed and saved
    assert metrics["val"]["accuracy"] is not None


def test_a_class_without_a_decodable_image_is_a_user_error(tmp_path):
    data = make_class_folder(tmp_path / "data", {"cat": 4})
    (data / "dog").mkdir()
    for i in range(3):
        (data / "dog" / f"broken{i}.jpg").write_bytes(np.random.default_rng(i).bytes(400))
    with pytest.raises(DataError, match="no decodable training image"):
        visiontune.fit(data, **TINY, strategy="head", out=str(tmp_path / "run"), **QUIET)


def test_fit_validates_before_writing_anything(tmp_path):
    data = make_class_folder(tmp_path / "data", {"only": 3})
    out = tmp_path / "run"
    with pytest.raises(DataError, match="single class"):
        visiontune.fit(data, **TINY, out=str(out), **QUIET)
    assert not out.exists()
    data = make_class_folder(tmp_path / "data2", {"a": 3, "b": 3})
    with pytest.raises(VisiontuneError, match="unknown backbone"):
        visiontune.fit(data, backbone="not_a_net", out=str(out), **QUIET)
    with pytest.raises(VisiontuneError, match="--epochs"):
        visiontune.fit(data, **TINY, epochs=0, out=str(out), **QUIET)
    assert not out.exists()


def test_head_fit_is_deterministic_under_a_seed(tmp_path):
    data = make_class_folder(tmp_path / "data", {"cat": 6, "dog": 6, "bird": 6})
    runs = [
        visiontune.fit(
            data, **TINY, strategy="head", seed=seed, out=str(tmp_path / f"r{i}"), **QUIET
        )
        for i, seed in enumerate((5, 5, 6))
    ]
    heads = [r.model.model.head.fc.weight for r in runs]
    assert torch.equal(heads[0], heads[1])
    splits = [json.loads((r.run_dir / "config.json").read_text())["data"] for r in runs]
    assert splits[0] == splits[1]
    extraction = runs[1].metrics["feature_extraction"]  # the second run read the feature cache
    assert extraction["train"]["from_cache"] == splits[1]["train"]
    # another seed draws another random backbone, so other features and another head
    assert not torch.equal(heads[0], heads[2])


def test_early_stopping_with_patience(tmp_path):
    """Validation folders with swapped labels: learning the training data only makes validation
    worse, so epoch 1 stays best and training stops ``patience`` epochs later."""
    root = make_split_folder(tmp_path / "data", {"train": {"cat": 8, "dog": 8}})
    make_split_folder(tmp_path / "x", {"val": {"cat": 4, "dog": 4}})
    (root / "val").mkdir()
    (tmp_path / "x" / "val" / "dog").rename(root / "val" / "cat")
    (tmp_path / "x" / "val" / "cat").rename(root / "val" / "dog")
    result = visiontune.fit(
        root,
        **TINY,
        strategy="head",
        head_solver="adamw",
        epochs=30,
        patience=3,
        lr=0.05,
        warmup_epochs=0,
        out=str(tmp_path / "run"),
        **QUIET,
    )
    losses = [r["val_loss"] for r in result.history]
    assert len(result.history) == 4
    assert all(a < b for a, b in pairwise(losses))
    assert result.metrics["val"]["best_epoch"] == 1


def test_load_repr_and_preprocess(trained_run):
    model = visiontune.load(trained_run.run_dir)
    assert "test_efficientnet" in repr(model) and "bird" in repr(model)
    assert model.preprocess == trained_run.model.preprocess
    assert model.config["classes"] == ["bird", "cat", "dog"]


def test_real_lite0_head_learns_a_simple_task(tmp_path):
    """The embedded EfficientNet-Lite0, frozen, separates red discs on white from blue squares
    on black after a linear probe on 40 training images."""
    data = make_shape_folder(tmp_path / "shapes", {"train": 20, "test": 10})
    result = visiontune.fit(data, strategy="head", out=str(tmp_path / "run"), **QUIET)
    assert "embedded" in result.model.model.backbone.source
    assert result.metrics["test"]["num_images"] == 20
    assert result.metrics["test"]["accuracy"] >= 0.9
    loaded = visiontune.load(result.run_dir)
    predictions = loaded.predict([data / "test"], workers=0)
    correct = [r["top"][0]["class"] == r["path"].split("/")[-2] for r in predictions]
    assert np.mean(correct) >= 0.9


def test_public_functions_survive_importing_their_namesake_subpackages():
    """``visiontune.evaluate``/``predict`` are functions even after
    ``visiontune.evaluation.metrics`` or ``visiontune.prediction.predictor`` were imported (which
    binds those names to modules)."""
    code = (
        "import visiontune\n"
        "visiontune.fit\n"
        "import visiontune.evaluation.metrics\n"
        "from visiontune.prediction.predictor import TrainedModel\n"
        "import visiontune.api as api\n"
        "assert visiontune.evaluate is api.evaluate, visiontune.evaluate\n"
        "assert visiontune.predict is api.predict, visiontune.predict\n"
        "from visiontune import evaluate, predict\n"
        "assert evaluate is api.evaluate and predict is api.predict\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_full_fit_is_deterministic_under_a_seed(tmp_path):
    data = make_class_folder(tmp_path / "data", {"cat": 5, "dog": 5})
    runs = [
        visiontune.fit(
            data,
            **TINY,
            strategy="full",
            epochs=2,
            batch_size=4,
            seed=seed,
            out=str(tmp_path / f"r{i}"),
            **QUIET,
        )
        for i, seed in enumerate((3, 3, 4))
    ]
    states = [r.model.model.state_dict() for r in runs]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert [r["train_loss"] for r in runs[0].history] == [r["train_loss"] for r in runs[1].history]
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


def test_non_image_files_are_reported_even_when_an_epoch_would_drop_them(tmp_path):
    """Small batches with drop_last could leave a bad file undecoded; the header screen before
    training reports every one."""
    data = make_class_folder(tmp_path / "data", {"cat": 9, "dog": 9})
    bad = [data / "cat" / "zero.png", data / "dog" / "noise.jpg"]
    bad[0].write_bytes(b"")
    bad[1].write_bytes(np.random.default_rng(0).bytes(500))
    result = visiontune.fit(
        data,
        strategy="full",
        epochs=1,
        batch_size=4,
        out=str(tmp_path / "run"),
        progress=False,
        workers=0,
        **TINY,
    )
    skipped = json.loads((result.run_dir / "metrics.json").read_text())["skipped"]
    assert sorted(skipped) == sorted(str(p) for p in bad)
