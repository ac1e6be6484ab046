"""Calibrated probabilities and unknown-image rejection: the pure fits on controlled numbers
(hypothesis where a property must hold for any input), then a real tiny run end to end: what
the bundle stores, what ``predict`` and ``evaluate`` return, that edits are refused, and that the
ONNX export carries the same temperature and scores."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest
import torch
from conftest import TINY, make_split_folder
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.covariance import LedoitWolf

import visiontune
from visiontune.cli import main
from visiontune.data.transforms import eval_transform
from visiontune.errors import BundleError, VisiontuneError, VisiontuneWarning
from visiontune.evaluation import rejection
from visiontune.evaluation.calibration import fit_temperature, scaled_probabilities
from visiontune.evaluation.metrics import calibrated_ece, expected_calibration_error
from visiontune.evaluation.rejection import (
    fit_feature_gaussians,
    normalise_rows,
    rejection_scale,
    unknown_scores,
)
from visiontune.evaluation.shift import ALPHA, compare_splits

QUIET = dict(workers=0, progress=False)

# What every row of `predict --format json` is, with rejection on.
ROW_SCHEMA = {
    "type": "object",
    "required": ["path", "top", "unknown", "unknown_score"],
    "additionalProperties": False,
    "properties": {
        "path": {"type": "string"},
        "top": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["class", "probability"],
                "additionalProperties": False,
                "properties": {
                    "class": {"type": "string"},
                    "probability": {"type": "number", "minimum": 0, "maximum": 1},
                },
            },
        },
        "unknown": {"type": "boolean"},
        "unknown_score": {"type": "number"},
    },
}

# ---------------------------------------------------------------- temperature, controlled logits


def _overconfident(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits saying 'class 0, surely' (margin 6) where the label is 0 only 70 % of the time."""
    rng = np.random.default_rng(seed)
    logits = np.zeros((n, 3))
    logits[:, 0] = 6.0
    labels = np.where(rng.uniform(size=n) < 0.7, 0, rng.integers(1, 3, n))
    return logits, labels


def test_an_overconfident_model_is_softened_and_its_ece_falls():
    logits, labels = _overconfident(200)
    fit = fit_temperature(logits, labels)
    assert fit.fitted and fit.temperature > 2
    assert fit.ece_after < 0.05 < 0.2 < fit.ece_before
    confidence = scaled_probabilities(logits, fit.temperature).max(1)
    accuracy = np.mean(labels == 0)
    assert confidence.mean() == pytest.approx(accuracy, abs=0.01)  # matches its accuracy now


def test_an_underconfident_model_is_sharpened():
    logits, labels = _overconfident(200)
    fit = fit_temperature(logits / 20, labels)  # the same ranking, confidence ~0.37 for 70 %
    assert fit.fitted and fit.temperature < 1


def test_too_few_validation_images_keep_temperature_one():
    logits, labels = _overconfident(10)
    fit = fit_temperature(logits, labels)
    assert (fit.temperature, fit.fitted) == (1.0, False) and "10 validation images" in fit.reason


@settings(max_examples=60, deadline=None)
@given(
    # logits on a 0.1 grid: ties are exact ties, not gaps below float resolution
    arrays(np.float64, (30, 3), elements=st.integers(-80, 80).map(lambda v: v / 10)),
    arrays(np.int64, 30, elements=st.integers(0, 2)),
)
def test_calibration_never_makes_validation_ece_worse(logits, labels):
    fit = fit_temperature(logits, labels)
    before = expected_calibration_error(labels, scaled_probabilities(logits, 1.0))
    after = expected_calibration_error(labels, scaled_probabilities(logits, fit.temperature))
    assert after <= before + 1e-12 and fit.temperature > 0
    # and it cannot change a prediction
    assert (scaled_probabilities(logits, fit.temperature).argmax(1) == logits.argmax(1)).all()


# ------------------------------------------------------------ rejection, controlled features


def _around(axis: int, n: int, rng) -> np.ndarray:
    return rng.normal(0, 1, (n, 16)) + 10 * np.eye(16)[axis]


def test_foreign_features_score_above_known_ones():
    rng = np.random.default_rng(0)
    train = np.r_[_around(0, 300, rng), _around(1, 300, rng)]
    stats = fit_feature_gaussians(train, np.repeat([0, 1], 300))
    scale = rejection_scale(
        unknown_scores(stats, np.r_[_around(0, 100, rng), _around(1, 100, rng)])
    )
    known = unknown_scores(stats, _around(1, 500, rng), scale)
    foreign = unknown_scores(stats, _around(5, 200, rng), scale)
    assert (foreign > 1).all()
    assert 0.02 < np.mean(known > 1) < 0.10  # the 5 % rate, on new known images


@pytest.mark.parametrize("chunk", [1, 37, 4096])
def test_the_chunked_fit_is_scikit_learns_ledoit_wolf(chunk):
    """The statistics are gathered a chunk of rows at a time (memory); however the rows are cut,
    they are scikit-learn's LedoitWolf on all of them at once, and so are the chunked scores."""
    rng = np.random.default_rng(1)
    features = (rng.normal(0, 1, (600, 24)) @ rng.normal(0, 1, (24, 24)) + 3).astype(np.float32)
    labels = rng.integers(0, 4, 600)
    labels[labels == 3] = 2  # a class with no rows: its mean is the overall mean
    stats = fit_feature_gaussians(features, labels, chunk=chunk)
    unit = normalise_rows(features.astype(np.float64))
    means = np.stack([unit[labels == c].mean(0) for c in range(3)])
    expected = LedoitWolf(assume_centered=True).fit(unit - means[labels]).precision_
    assert stats.class_means.shape == (3, 24)
    np.testing.assert_allclose(stats.class_means.numpy(), means, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.precision.numpy(), expected, rtol=1e-4, atol=1e-3)
    with pytest.MonkeyPatch.context() as patch:  # scores in steps of a few rows: the same
        patch.setattr(rejection, "SCORE_ELEMENTS", 5 * stats.class_means.numel())
        stepped = unknown_scores(stats, features)
    np.testing.assert_allclose(stepped, unknown_scores(stats, features), rtol=1e-6)


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, 80, elements=st.floats(-50, 50)), st.floats(0.01, 0.5))
def test_the_scale_flags_at_most_the_rate_of_its_own_images(scores, rate):
    scale = rejection_scale(scores, rate)
    normalised = scale.normalise(scores)
    assert np.mean(normalised > 1) <= rate + 1 / len(scores)  # one image's worth of granularity
    assert scale.threshold_for(rate) == 1.0
    # a lower rate is a higher threshold
    assert scale.threshold_for(min(0.99, rate * 2)) <= scale.threshold_for(rate / 2) + 1e-9


# ---------------------------------------------------------------------------- a real tiny run


def test_the_calibrated_ece_floor_falls_with_more_images_and_is_zero_for_certain_models():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), size=4000)
    small, large = calibrated_ece(probs[:100]), calibrated_ece(probs)
    assert large["mean"] < small["mean"] / 3  # about 1 / sqrt(N): 6.3x fewer images
    assert small["mean"] < small["p95"] and calibrated_ece(probs[:100]) == small  # seeded
    assert calibrated_ece(np.eye(3)[[0, 1, 2, 2]])["p95"] == 0.0  # sure and always right
    assert calibrated_ece(np.zeros((0, 3))) is None


def test_an_overconfident_model_scores_above_its_calibrated_floor():
    logits, labels = _overconfident(400)  # says 99.5 %, is right 70 % of the time
    probs = scaled_probabilities(logits, 1.0)
    assert expected_calibration_error(labels, probs) > 10 * calibrated_ece(probs)["p95"]


# ------------------------------------------------------------- validation against TEST


@given(st.lists(st.booleans(), min_size=1, max_size=300))
def test_a_split_compared_with_itself_never_differs(correct):
    shift = compare_splits(correct, correct, correct, correct)
    assert not shift.differ and shift.warning() is None
    assert shift.accuracy_p == pytest.approx(1.0) and shift.flagged_p == pytest.approx(1.0)


def test_accuracies_apart_beyond_noise_differ_and_warn():
    val = np.r_[np.ones(146), np.zeros(16)]  # 90.1 % of 162, as yoga's validation
    test = np.r_[np.ones(453), np.zeros(14)]  # 97.0 % of 467, as yoga's TEST
    shift = compare_splits(val, test)
    assert shift.differ and shift.accuracy_p < ALPHA and shift.flagged_p is None
    assert "90.1 % on validation and 97.0 % on TEST" in shift.warning()


def test_a_few_points_on_a_small_split_are_noise():
    val = np.r_[np.ones(18), np.zeros(2)]  # 90 % of 20
    test = np.r_[np.ones(97), np.zeros(3)]  # 97 % of 100
    assert not compare_splits(val, test).differ


def test_reject_rates_apart_differ_even_at_equal_accuracy():
    right = np.ones(200, dtype=bool)
    flagged_val, flagged_test = np.arange(200) < 10, np.arange(400) < 1  # 5 % against 0.25 %
    shift = compare_splits(right, np.ones(400, dtype=bool), flagged_val, flagged_test)
    assert shift.differ and shift.accuracy_p == pytest.approx(1.0)
    assert "5.0 % and 0.2 % flagged unknown" in shift.warning()


def test_a_test_split_unlike_validation_is_recorded_and_warned(tmp_path):
    # TEST's class folders rotated: every TEST image is filed under another class's colour, so
    # the model that is right on validation is wrong on TEST.
    data = make_split_folder(
        tmp_path / "data",
        {"train": {"bird": 5, "cat": 5, "dog": 5}, "val": {"bird": 3, "cat": 3, "dog": 3}},
    )
    make_split_folder(tmp_path / "t", {"test": {"bird": 4, "cat": 4, "dog": 4}})
    (data / "test").mkdir()
    for src, dst in (("bird", "cat"), ("cat", "dog"), ("dog", "bird")):
        (tmp_path / "t" / "test" / src).rename(data / "test" / dst)
    with pytest.warns(VisiontuneWarning, match="validation and TEST differ"):
        result = visiontune.fit(
            data, **TINY, strategy="head", out=str(tmp_path / "run"), cache=False, **QUIET
        )
    shift = result.metrics["validation_vs_test"]
    assert shift["differ"] and shift["val_images"] == 9 and shift["test_images"] == 12
    assert shift["val_accuracy"] > shift["test_accuracy"]
    assert shift["test_accuracy"] == pytest.approx(result.metrics["test"]["accuracy"])


def test_validation_copies_of_training_images_are_left_out_of_the_fits(tmp_path):
    import shutil

    data = make_split_folder(
        tmp_path / "data",
        {"train": {"bird": 5, "cat": 5}, "val": {"bird": 11, "cat": 11}},
    )
    for i, image in enumerate(sorted((data / "train" / "cat").iterdir())[:2]):
        shutil.copyfile(image, data / "val" / "cat" / f"copy{i}.png")  # 24 val, 2 copies
    result = visiontune.fit(
        data, **TINY, strategy="head", out=str(tmp_path / "run"), cache=False, **QUIET
    )
    calibration, rejection = result.metrics["calibration"], result.metrics["rejection"]
    assert result.metrics["data_checks"]["leakage"]["val"] == 2
    assert calibration["val_copies_left_out"] == 2 and calibration["images"] == 22
    assert rejection["val_copies_left_out"] == 2


@pytest.fixture(scope="module")
def head_run(trained_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("trust") / "run"
    return visiontune.fit(
        trained_data, **TINY, strategy="head", out=str(out), cache=False, **QUIET
    ).run_dir


def test_the_bundle_stores_temperature_and_rejection(head_run):
    config = json.loads((head_run / "config.json").read_text())
    trust = config["trust"]
    assert trust["temperature"] > 0 and trust["calibration"]["images"] == 6
    rejection = trust["rejection"]
    assert rejection["score"] == "mahalanobis-l2" and rejection["rate"] == 0.05
    assert rejection["threshold"] > rejection["center"] and len(rejection["quantiles"]) == 101
    assert (head_run / "trust.safetensors").is_file()
    metrics = json.loads((head_run / "metrics.json").read_text())
    assert set(metrics["calibration"]) >= {"temperature", "ece_before", "ece_after", "test"}
    assert metrics["rejection"]["threshold_from"] == "validation"
    assert metrics["calibration"]["val_copies_left_out"] == 0
    assert set(metrics["calibration"]["test"]["ece_if_calibrated"]) == {"mean", "p95", "draws"}
    shift = metrics["validation_vs_test"]  # 6 val and 9 TEST images of the same kind
    assert (shift["val_images"], shift["test_images"]) == (6, 9) and not shift["differ"]


def test_predicted_probabilities_are_the_tempered_softmax(head_run, trained_data):
    model = visiontune.load(head_run, precision="fp32")  # compared with an fp32 forward
    model.temperature = 2.5  # any value: the probabilities must follow it
    image = next((trained_data / "test" / "cat").iterdir())
    from PIL import Image

    decoded = Image.open(image).convert("RGB")
    logits = model.model(torch.stack([eval_transform(model.preprocess)(decoded)]))
    expected = torch.softmax(logits / 2.5, dim=1)[0].detach().numpy()
    row = model.predict([image], top_k=3, workers=0)[0]
    got = {t["class"]: t["probability"] for t in row["top"]}
    np.testing.assert_allclose([got[c] for c in model.labels.names], expected, atol=1e-5)


def test_predict_rows_say_unknown_and_follow_the_threshold(head_run, trained_data):
    paths = [trained_data / "test"]
    rows = visiontune.predict(head_run, paths, **QUIET)
    for row in rows:
        jsonschema.validate(row, ROW_SCHEMA)
    assert [r["unknown"] for r in rows] == [r["unknown_score"] > 1 for r in rows]
    assert not any(r["unknown"] for r in visiontune.predict(head_run, paths, reject=1e9, **QUIET))
    assert all(r["unknown"] for r in visiontune.predict(head_run, paths, reject=-1e9, **QUIET))
    assert "unknown" not in visiontune.predict(head_run, paths, reject="none", **QUIET)[0]
    many = visiontune.predict(head_run, paths, reject_rate=0.9, **QUIET)
    few = visiontune.predict(head_run, paths, reject_rate=0.01, **QUIET)
    assert sum(r["unknown"] for r in many) >= sum(r["unknown"] for r in few)
    with pytest.raises(VisiontuneError, match="reject must be auto, none or a number"):
        visiontune.predict(head_run, paths, reject="maybe", **QUIET)
    with pytest.raises(VisiontuneError, match="reject rate"):
        visiontune.predict(head_run, paths, reject_rate=1.5, **QUIET)


def test_a_foreign_image_is_flagged(head_run, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8), "RGB")
    noise.save(tmp_path / "noise.png")
    row = visiontune.predict(head_run, [tmp_path / "noise.png"], **QUIET)[0]
    assert row["unknown"] is True and row["unknown_score"] > 1


def test_cli_predict_json_and_table(head_run, trained_data, capsys):
    assert main(["predict", str(head_run), str(trained_data / "test"), "--format", "json"]) == 0
    for row in json.loads(capsys.readouterr().out):
        jsonschema.validate(row, ROW_SCHEMA)
    assert main(["predict", str(head_run), str(trained_data / "test"), "--reject=-1e9"]) == 0
    assert all("UNKNOWN" in line for line in capsys.readouterr().out.splitlines())


def test_evaluate_reports_ece_and_the_calibration_record(head_run, trained_data):
    metrics = visiontune.evaluate(head_run, trained_data / "test", **QUIET)
    assert 0 <= metrics["expected_calibration_error"] <= 1
    calibration = metrics["calibration"]
    config = json.loads((head_run / "config.json").read_text())
    assert calibration["temperature"] == config["trust"]["temperature"]
    assert calibration["validation"]["images"] == 6
    floor = metrics["ece_if_calibrated"]  # a calibrated model's ECE on these 9 images
    assert 0 <= floor["mean"] <= floor["p95"] <= 1 and floor["draws"] == 200


def test_cli_evaluate_prints_the_ece_beside_a_calibrated_models(head_run, trained_data, capsys):
    assert main(["evaluate", str(head_run), str(trained_data / "test"), "--workers", "0"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("calibration"))
    assert "a perfectly calibrated model would show" in line


@pytest.mark.parametrize(
    "edit",
    [
        lambda c: c["trust"].update(temperature=c["trust"]["temperature"] * 2),
        lambda c: c["trust"]["rejection"].update(
            threshold=c["trust"]["rejection"]["threshold"] + 1
        ),
    ],
    ids=["temperature", "threshold"],
)
def test_an_edited_trust_entry_is_refused(head_run, tmp_path, edit):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(head_run, copy)
    config = json.loads((copy / "config.json").read_text())
    edit(config)
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match="trust entry differ"):
        visiontune.load(copy)


def test_swapped_rejection_statistics_are_refused(head_run, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    copy = tmp_path / "run"
    shutil.copytree(head_run, copy)
    tensors = load_file(str(copy / "trust.safetensors"))
    tensors["class_means"] = tensors["class_means"] + 0.01
    save_file(tensors, str(copy / "trust.safetensors"))
    with pytest.raises(BundleError, match="trust.safetensors does not match"):
        visiontune.load(copy)


def test_a_bundle_without_the_trust_entry_loads_uncalibrated(head_run, tmp_path, trained_data):
    import shutil

    copy = tmp_path / "old"
    shutil.copytree(head_run, copy)
    config = json.loads((copy / "config.json").read_text())
    for key in ("trust", "integrity"):  # as saved before either existed
        config.pop(key)
    (copy / "config.json").write_text(json.dumps(config))
    (copy / "trust.safetensors").unlink()
    model = visiontune.load(copy)
    assert model.temperature == 1.0 and model.detector is None
    assert set(model.predict([trained_data / "test"], workers=0)[0]) == {"path", "top"}
    with pytest.raises(VisiontuneError, match="no rejection statistics"):
        model.predict([trained_data / "test"], workers=0, reject="auto")


def test_the_onnx_export_carries_temperature_and_scores(head_run, trained_data):
    report = visiontune.export(head_run, format="onnx")
    assert report.max_unknown_diff is not None and report.max_unknown_diff < 1e-3
    exported = visiontune.load(report.path)
    run = visiontune.load(head_run, precision="fp32")  # the export is an fp32 graph
    assert exported.metadata.temperature == pytest.approx(run.temperature)
    assert exported.metadata.unknown["output"] == "unknown_score"
    a = exported.predict([trained_data / "test"], top_k=3, workers=0)
    b = run.predict([trained_data / "test"], top_k=3, workers=0)
    np.testing.assert_allclose(
        [r["unknown_score"] for r in a], [r["unknown_score"] for r in b], rtol=1e-3, atol=1e-3
    )
    prob = [[t["probability"] for t in r["top"]] for r in a]
    np.testing.assert_allclose(prob, [[t["probability"] for t in r["top"]] for r in b], atol=1e-4)
    assert exported.threshold_for_rate(0.5) == pytest.approx(run.threshold_for_rate(0.5), abs=1e-4)


def test_the_onnx_model_runs_its_graph_once_per_batch_for_both_outputs(head_run, trained_data):
    report = visiontune.export(head_run, format="onnx", out=head_run / "once.onnx")
    exported = visiontune.load(report.path)
    real, calls = exported.session, []

    class Counting:  # the session, counting the passes and the outputs asked for
        def run(self, outputs, feed):
            calls.append(list(outputs))
            return real.run(outputs, feed)

    exported.session = Counting()
    rows = exported.predict([trained_data / "test"], batch_size=4, workers=0, reject="auto")
    assert len(rows) == 9 and all("unknown_score" in r for r in rows)
    assert calls == [["probabilities", "unknown_score"]] * 3  # 9 images, batches of 4
