"""Multi-label classification: metrics and thresholds, and a manifest of generated images with
one or two coloured patches each, trained with the tiny backbone, through training, prediction,
evaluation (TTA, report), ensembles and both exports."""

from __future__ import annotations

import csv
import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY
from PIL import Image
from sklearn.metrics import average_precision_score, f1_score

import visiontune
from visiontune.cli import main
from visiontune.errors import BundleError, DataError, VisiontuneError
from visiontune.evaluation.multilabel import (
    DEFAULT_THRESHOLD,
    choose_thresholds,
    multilabel_metrics,
    predicted_sets,
)
from visiontune.evaluation.multilabel_report import error_cooccurrence

COLOURS = {"red": (220, 40, 40), "blue": (40, 60, 220), "green": (40, 200, 60)}


def make_multilabel_manifest(root: Path, count: int = 60, seed: int = 0) -> Path:
    """``root/m.csv``: images with one or two coloured patches, labels their colours."""
    rng = random.Random(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    names, rows = list(COLOURS), []
    for i in range(count):
        chosen = sorted(rng.sample(names, rng.choice([1, 2, 2])))
        image = Image.new("RGB", (96, 64), (128, 128, 128))
        for j, name in enumerate(chosen):
            jitter = tuple(min(255, max(0, v + rng.randint(-20, 20))) for v in COLOURS[name])
            image.paste(Image.new("RGB", (40, 40), jitter), (4 + 48 * j, 12))
        image.save(root / "img" / f"{i}.png")
        split = "train" if i < count * 0.6 else ("val" if i < count * 0.8 else "test")
        rows.append((f"img/{i}.png", ";".join(chosen), split))
    with open(root / "m.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "labels", "split"])
        writer.writerows(rows)
    return root / "m.csv"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return make_multilabel_manifest(tmp_path_factory.mktemp("multilabel"))


@pytest.fixture(scope="module")
def head_run(manifest, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "head"
    visiontune.fit(manifest, strategy="head", out=str(out), progress=False, workers=0, **TINY)
    return out


def test_thresholds_maximise_each_class_f1():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (80, 3))
    p = np.clip(y * 0.3 + rng.uniform(0, 0.7, (80, 3)), 0, 1)
    chosen = choose_thresholds(y, p)
    for c in range(3):
        best = max(f1_score(y[:, c], p[:, c] >= t) for t in np.unique(p[:, c]))
        assert f1_score(y[:, c], p[:, c] >= chosen[c]) == pytest.approx(best)
    # A class without positive validation images keeps the default.
    y[:, 2] = 0
    assert choose_thresholds(y, p)[2] == DEFAULT_THRESHOLD


def test_metrics_match_scikit_learn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, (50, 4))
    y[0] = 1  # every class has a positive
    p = rng.uniform(0, 1, (50, 4))
    t = np.array([0.3, 0.5, 0.6, 0.4])
    m = multilabel_metrics(y, p, t, list("abcd"))
    pred = predicted_sets(p, t)
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["micro_f1"] == pytest.approx(f1_score(y, pred, average="micro"))
    assert m["mAP"] == pytest.approx(
        np.mean([average_precision_score(y[:, c], p[:, c]) for c in range(4)])
    )
    assert m["subset_accuracy"] == pytest.approx(float((pred == y).all(1).mean()))
    fixed = f1_score(y, (p >= 0.5).astype(int), average="macro")
    assert m["at_0.5"]["macro_f1"] == pytest.approx(fixed)


def test_error_cooccurrence_counts_misses_beside_wrong_classes():
    y = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 0]])
    pred = np.array([[0, 1, 0], [1, 0, 1], [0, 0, 1], [1, 1, 0]])
    counts = error_cooccurrence(y, pred)
    assert counts[0, 1] == 1  # image 0: class 0 missed, 1 predicted
    assert counts[1, 2] == 1  # image 1: class 1 missed, 2 predicted
    assert counts[3, 0] == 1  # image 3: class 0 wrongly predicted, nothing missed
    assert counts.sum() == 3 and counts[3, 3] == 0


def test_head_run_records_thresholds_and_multilabel_metrics(head_run):
    config = json.loads((head_run / "config.json").read_text())
    metrics = json.loads((head_run / "metrics.json").read_text())
    thresholds = config["trust"]["thresholds"]
    assert config["trust"]["multi_label"] is True and len(thresholds) == 3
    assert metrics["thresholds"]["values"] == pytest.approx(thresholds)
    assert metrics["thresholds"]["chosen_by"] == "validation"
    assert metrics["test"]["task"] == "multi-label" and metrics["test"]["num_images"] == 12
    assert metrics["rejection"] is None
    model = visiontune.load(head_run)
    assert model.multi_label and model.thresholds == pytest.approx(thresholds)


def test_predict_returns_every_class_above_its_threshold(head_run, manifest):
    model = visiontune.load(head_run)
    paths = sorted((manifest.parent / "img").glob("*.png"))[:10]
    rows = model.predict(paths, top_k=3)
    probs = model.decoded_outputs([Image.open(p).convert("RGB") for p in paths]).probs
    for row, p in zip(rows, probs, strict=True):
        expected = {
            n for n, v, t in zip(model.labels.names, p, model.thresholds, strict=True) if v >= t
        }
        assert {x["class"] for x in row["labels"]} == expected
        assert [x["probability"] for x in row["labels"]] == sorted(
            (x["probability"] for x in row["labels"]), reverse=True
        )
    # Sigmoids: a row's probabilities need not sum to 1.
    assert not np.allclose(probs.sum(1), 1.0)


def test_evaluate_scores_test_rows_with_thresholds_and_tta(head_run, manifest):
    model = visiontune.load(head_run)
    metrics = visiontune.evaluate(head_run, manifest)
    samples = model.labelled_samples(manifest)
    assert metrics["num_images"] == len(samples) == 12
    out = model.labelled_predictions(manifest)
    y = np.array([s.multi_hot for s in samples])
    expected = multilabel_metrics(y, out.probs, model.thresholds, list(model.labels.names))
    assert metrics["macro_f1"] == pytest.approx(expected["macro_f1"])
    assert metrics["mAP"] == pytest.approx(expected["mAP"])
    flipped = visiontune.evaluate(head_run, manifest, tta="flip")
    assert flipped["forward_passes_per_image"] == 2 and 0 <= flipped["mAP"] <= 1


def test_report_shows_cooccurrence_and_galleries(head_run, manifest, tmp_path):
    metrics = visiontune.evaluate(head_run, manifest, report=tmp_path / "rep")
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "Errors that occur together" in page and "False negatives" in page
    assert (tmp_path / "rep" / "error_cooccurrence.png").is_file()
    kinds = {e["kind"] for e in metrics["errors"]}
    assert kinds <= {"false-positive", "false-negative"}
    wrong = (
        predicted_sets(*_probs_and_thresholds(head_run, manifest)) != _truth(head_run, manifest)
    ).sum()
    assert len(metrics["errors"]) == wrong


def _probs_and_thresholds(run, manifest):
    model = visiontune.load(run)
    return model.labelled_predictions(manifest).probs, model.thresholds


def _truth(run, manifest):
    return np.array([s.multi_hot for s in visiontune.load(run).labelled_samples(manifest)])


def test_ensemble_averages_member_sigmoids(manifest, tmp_path):
    result = visiontune.fit_ensemble(
        manifest,
        members=2,
        strategy="head",
        out=str(tmp_path / "ens"),
        progress=False,
        workers=0,
        **TINY,
    )
    ensemble = visiontune.load(result.run_dir)
    image = [Image.open(manifest.parent / "img" / "0.png").convert("RGB")]
    members = [m.decoded_outputs(image).probs for m in ensemble.members]
    assert ensemble.multi_label
    assert ensemble.decoded_outputs(image).probs == pytest.approx(np.mean(members, axis=0))
    assert ensemble.thresholds == pytest.approx(
        np.mean([m.thresholds for m in ensemble.members], axis=0)
    )


def test_exports_output_sigmoids_and_carry_thresholds(head_run, manifest, tmp_path):
    model = visiontune.load(head_run)
    onnx_path = visiontune.export(head_run, format="onnx", out=tmp_path / "m.onnx").path
    exported = visiontune.load(onnx_path)
    assert exported.multi_label and exported.thresholds == pytest.approx(model.thresholds)
    paths = sorted((manifest.parent / "img").glob("*.png"))[:6]
    rows_eager, rows_onnx = model.predict(paths), exported.predict(paths)
    for a, b in zip(rows_eager, rows_onnx, strict=True):
        assert [x["class"] for x in a["labels"]] == [x["class"] for x in b["labels"]]
    ts = visiontune.export(head_run, format="torchscript", out=tmp_path / "m.pt").path
    scripted = torch.jit.load(str(ts))
    crop = torch.randint(0, 256, (2, 3, *([model.preprocess.size] * 2)), dtype=torch.uint8)
    out = scripted(crop)
    assert out.shape == (2, 3) and bool(((out > 0) & (out < 1)).all())
    with pytest.raises(VisiontuneError, match="multi-label"):
        visiontune.export(head_run, format="onnx", quantize="int8", out=tmp_path / "q.onnx")


def test_edited_threshold_is_refused(head_run, tmp_path):
    import shutil

    copy = tmp_path / "edited"
    shutil.copytree(head_run, copy)
    config = json.loads((copy / "config.json").read_text())
    config["trust"]["thresholds"][0] = 0.01
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError):
        visiontune.load(copy)


@pytest.mark.parametrize("strategy", ["full", "partial"])  # partial: on cached activations
def test_fine_tuning_trains_with_binary_cross_entropy(manifest, tmp_path, strategy):
    out = str(tmp_path / strategy)
    result = visiontune.fit(
        manifest, strategy=strategy, epochs=1, out=out, progress=False, workers=0, **TINY
    )
    history = json.loads((result.run_dir / "history.json").read_text())
    rows = history if isinstance(history, list) else history["epochs"]
    # BCE per class averages below log(2) ~ 0.69 once it learns anything; cross-entropy over
    # three classes would start near log(3) ~ 1.10.
    assert 0 < rows[0]["train_loss"] < 0.9
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["test"]["task"] == "multi-label"
    if strategy == "partial":
        assert metrics["activation_cache"]["used"] is True


@pytest.mark.parametrize(
    "options, match",
    [
        ({"balance": "weights"}, "--balance weights"),
        ({"strategy": "full", "augment": "mixup"}, "--augment mixup"),
        ({"exclude_suspects": True}, "--exclude-suspects"),
    ],
)
def test_single_label_options_are_refused(manifest, tmp_path, options, match):
    options = {"strategy": "head", **options}
    with pytest.raises(VisiontuneError, match=match):
        visiontune.fit(
            manifest, out=str(tmp_path / "x"), progress=False, workers=0, **TINY, **options
        )
    assert not (tmp_path / "x").exists()


def test_audit_refuses_multilabel_data(manifest):
    with pytest.raises(DataError, match="single-label"):
        visiontune.audit(manifest, **TINY)


def test_cli_prints_multilabel_summaries(head_run, manifest, capsys):
    assert main(["evaluate", str(head_run), str(manifest)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("mAP ") and "macro F1" in out and "threshold" in out
    image = manifest.parent / "img" / "0.png"
    assert main(["predict", str(head_run), str(image), "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("path,rank,class")
    model = visiontune.load(head_run)
    assert len(lines) - 1 == len(model.predict([image])[0]["labels"])


def test_label_sets_of_every_size_round_trip(tmp_path):
    """Any subset of classes (one to all) is read back as the same multi-hot row."""
    names = list(COLOURS)
    subsets = [c for k in (1, 2, 3) for c in itertools.combinations(names, k)] * 2
    (tmp_path / "img").mkdir()
    rows = []
    for i, subset in enumerate(subsets):
        Image.new("RGB", (16, 16), (i, i, i)).save(tmp_path / "img" / f"{i}.png")
        rows.append({"path": f"img/{i}.png", "labels": "|".join(subset)})
    import pandas as pd

    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    from visiontune.data.manifest import ManifestColumns, scan_manifest

    splits = scan_manifest(tmp_path / "m.csv", ManifestColumns(delimiter="|"), val_fraction=0.0)
    got = {
        tuple(n for n, h in zip(splits.labels.names, s.multi_hot, strict=True) if h)
        for s in splits.train
    }
    assert splits.multi_label and got == {tuple(sorted(s)) for s in subsets}
