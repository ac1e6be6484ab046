"""The model bundle: identical predictions after a round trip, its config, damaged bundles."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import visiontune
from visiontune.backbones import Classifier, Head, create_backbone
from visiontune.cli import main
from visiontune.data.folder import list_images
from visiontune.errors import BundleError
from visiontune.formats.bundle import (
    FORMAT_VERSION,
    load_bundle,
    read_bundle_config,
    save_bundle,
    state_digest,
)
from visiontune.specs import LabelMap


def _probabilities(trained, paths) -> np.ndarray:
    results = trained.predict(paths, top_k=len(trained.labels), workers=0)
    names = trained.labels.names
    return np.array(
        [
            [dict((t["class"], t["probability"]) for t in r["top"])[n] for n in names]
            for r in results
        ]
    )


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A copy of the shared run that a test may damage."""
    return shutil.copytree(trained_run.run_dir, tmp_path / "run")


def test_round_trip_gives_identical_predictions(trained_run, trained_data):
    paths = list_images(trained_data)
    loaded = visiontune.load(trained_run.run_dir)
    assert loaded.labels == trained_run.model.labels
    before = _probabilities(trained_run.model, paths)
    after = _probabilities(loaded, paths)
    assert before.shape == (len(paths), 3)
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-6)
    np.testing.assert_allclose(before.sum(1), 1.0, atol=1e-5)
    for key, value in trained_run.model.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key


def test_round_trip_logits_match_the_eager_model(trained_run):
    loaded = visiontune.load(trained_run.run_dir)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), trained_run.model.model.eval()(x))
    assert not loaded.model.training


def test_config_json(trained_run):
    config = json.loads((trained_run.run_dir / "config.json").read_text())
    assert config["format_version"] == FORMAT_VERSION
    assert config["classes"] == ["bird", "cat", "dog"]
    assert config["backbone"]["name"] == "test_efficientnet"
    spec = trained_run.model.preprocess
    assert config["preprocess"]["size"] == spec.size == 160
    assert tuple(config["preprocess"]["mean"]) == spec.mean
    assert config["preprocess"]["crop_pct"] == spec.crop_pct
    assert config["strategy"]["name"] == "full"
    assert {"torch", "timm", "visiontune"} <= set(config["versions"])
    assert config["training"]["epochs"] == 1


def test_weights_are_plain_safetensors(trained_run):
    state = load_file(str(trained_run.run_dir / "model.safetensors"))
    assert "head.fc.weight" in state and state["head.fc.weight"].shape[0] == 3
    assert not list(trained_run.run_dir.glob("*.tmp")) and not list(trained_run.run_dir.glob(".*"))


def test_newer_format_version_is_refused(run_copy):
    config = json.loads((run_copy / "config.json").read_text())
    config["format_version"] = FORMAT_VERSION + 1
    (run_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError) as info:
        visiontune.load(run_copy)
    message = str(info.value)
    assert f"format {FORMAT_VERSION + 1}" in message and f"up to {FORMAT_VERSION}" in message
    assert "Upgrade visiontune" in message


def test_truncated_weights_are_refused(run_copy):
    weights = run_copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="model.safetensors"):
        visiontune.load(run_copy)


class TopLevel(list):
    """What an edit returns to replace the whole of config.json (instead of editing in place)."""


def _edit_config(run, edit) -> None:
    config = json.loads((run / "config.json").read_text())
    replaced = edit(config)
    (run / "config.json").write_text(
        json.dumps(replaced if isinstance(replaced, TopLevel) else config)
    )


def test_weights_of_another_shape_keep_the_useful_line(run_copy):
    """A bundle from before the seal (no ``integrity``) whose config lists 4 classes for a
    3-class head: the error says so, with torch's reason, not just its header line."""

    def four_classes(config):
        del config["integrity"]
        config["classes"] = ["a", "b", "c", "d"]

    _edit_config(run_copy, four_classes)
    with pytest.raises(BundleError) as info:
        visiontune.load(run_copy)
    message = str(info.value)
    assert message.startswith(f"cannot load {run_copy / 'model.safetensors'}")
    assert "lists 4 classes" in message and "head for 3" in message
    assert "size mismatch for head.fc.weight" in message and "\n" not in message
    assert "Error(s) in loading state_dict" not in message


def test_unsealed_bundles_from_before_integrity_still_load(run_copy, trained_run):
    _edit_config(run_copy, lambda config: config.pop("integrity"))
    assert visiontune.load(run_copy).labels == trained_run.model.labels


def test_config_is_sealed_to_the_weights(trained_run):
    config = json.loads((trained_run.run_dir / "config.json").read_text())
    state = load_file(str(trained_run.run_dir / "model.safetensors"))
    assert config["integrity"]["weights_sha256"] == state_digest(state)
    assert len(config["integrity"]["config_sha256"]) == 64


@pytest.mark.parametrize(
    "edit",
    [
        lambda c: c.update(classes=["cat", "bird", "dog"]),  # would silently relabel predictions
        lambda c: c.update(classes=["bird", "cat", "wolf"]),
        lambda c: c["preprocess"].update(crop_pct=1.0),
        lambda c: c["preprocess"].update(mean=[0.5, 0.5, 0.5]),
        lambda c: c["head"].update(dropout=0.5),
        lambda c: c["integrity"].update(config_sha256="0" * 64),
    ],
    ids=["reordered", "renamed", "crop", "mean", "dropout", "seal"],
)
def test_edited_meaning_of_the_outputs_is_refused(run_copy, edit):
    _edit_config(run_copy, edit)
    with pytest.raises(
        BundleError, match="classes, preprocess, head or trust entry differ"
    ) as info:
        visiontune.load(run_copy)
    assert str(run_copy / "config.json") in str(info.value) and "\n" not in str(info.value)


def test_weights_changed_or_swapped_are_refused(run_copy, tmp_path):
    weights = run_copy / "model.safetensors"
    state = load_file(str(weights))
    state["head.fc.bias"] = state["head.fc.bias"] + 1.0  # still a valid file of the same shape
    save_file(state, str(weights))
    with pytest.raises(BundleError, match="does not match the weights checksum") as info:
        load_bundle(run_copy)
    assert str(weights) in str(info.value)


def test_unchecked_fields_may_still_be_edited(run_copy):
    """Only what gives outputs their meaning is sealed: training notes and paths are not."""
    _edit_config(run_copy, lambda c: c["training"].update(data="/moved/elsewhere"))
    assert load_bundle(run_copy)[2]["training"]["data"] == "/moved/elsewhere"


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda run: (run / "config.json").unlink(), "needs config.json"),
        (lambda run: (run / "model.safetensors").unlink(), "model.safetensors"),
        (lambda run: (run / "config.json").write_text("{not json"), "not valid JSON"),
        (
            lambda run: (run / "config.json").write_text('{"classes": ["a", "b"]}'),
            "no format_version",
        ),
        (
            lambda run: _edit_config(run, lambda c: c.update(format_version="1")),
            "format_version '1' is invalid",
        ),
    ],
)
def test_damaged_bundles(run_copy, damage, match):
    damage(run_copy)
    with pytest.raises(BundleError, match=match):
        read_bundle_config(run_copy)


def test_missing_run_folder(tmp_path):
    with pytest.raises(BundleError, match="no such run folder"):
        visiontune.load(tmp_path / "nowhere")


def test_save_and_load_a_fresh_classifier(tmp_path):
    torch.manual_seed(0)
    backbone = create_backbone("test_efficientnet", weights="none")
    model = Classifier(backbone, Head(backbone.num_features, 2, dropout=0.4)).eval()
    save_bundle(tmp_path / "b", model, labels=LabelMap(("no", "yes")), extra={"note": "hi"})
    loaded, labels, config = load_bundle(tmp_path / "b")
    assert labels.names == ("no", "yes") and config["note"] == "hi"
    assert loaded.head.dropout_p == 0.4
    # The loaded backbone says what its weights are, without anyone patching it afterwards.
    weights = loaded.backbone.weights
    assert weights.fine_tuned and weights.identity is None
    assert weights.preprocess == backbone.preprocess and weights.source == backbone.source
    x = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    save_bundle(tmp_path / "b", model, labels=LabelMap(("no", "yes")))  # overwrites in place
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]


def test_bundle_files_get_ordinary_permissions(tmp_path):
    """Atomic writes go through a private temporary file; the result must not stay owner-only."""
    import os
    import stat

    from visiontune._io import atomic_write_text

    target = tmp_path / "x.json"
    atomic_write_text(target, "{}")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask


# ---- damaged config.json fields: one line and exit 2 from the CLI, never a traceback -----------


DAMAGES = {
    "top-level list": (lambda c: TopLevel([1, 2, 3]), "the whole file must be a JSON object"),
    "no classes": (lambda c: c.pop("classes"), "classes must be a non-empty list"),
    "empty classes": (lambda c: c.update(classes=[]), "classes must be a non-empty list"),
    "class not a string": (lambda c: c.update(classes=["a", 3, "c"]), "non-empty string"),
    "duplicate classes": (lambda c: c.update(classes=["cat", "Cat", "dog"]), "must be unique"),
    "no backbone": (lambda c: c.pop("backbone"), "backbone must be a JSON object"),
    "backbone without name": (lambda c: c["backbone"].pop("name"), "backbone.name"),
    "no preprocess": (lambda c: c.pop("preprocess"), "preprocess must be a JSON object"),
    "size -5": (lambda c: c["preprocess"].update(size=-5), "preprocess.size"),
    "size 100000": (lambda c: c["preprocess"].update(size=100000), "preprocess.size"),
    "size a string": (lambda c: c["preprocess"].update(size="160"), "preprocess.size"),
    "size 160.5": (lambda c: c["preprocess"].update(size=160.5), "preprocess.size"),
    "crop_pct 0": (lambda c: c["preprocess"].update(crop_pct=0), "preprocess.crop_pct"),
    "crop_pct 1e-9": (lambda c: c["preprocess"].update(crop_pct=1e-9), "preprocess.crop_pct"),
    "crop_pct 2": (lambda c: c["preprocess"].update(crop_pct=2), "preprocess.crop_pct"),
    "interpolation bogus": (
        lambda c: c["preprocess"].update(interpolation="bogus"),
        "preprocess.interpolation",
    ),
    "mean of length 1": (lambda c: c["preprocess"].update(mean=[0.5]), "preprocess.mean"),
    "mean a string": (lambda c: c["preprocess"].update(mean="0.5"), "preprocess.mean"),
    "std of zeros": (lambda c: c["preprocess"].update(std=[0, 0, 0]), "preprocess.std"),
    "std with NaN": (
        lambda c: c["preprocess"].update(std=[0.2, float("nan"), 0.2]),
        "preprocess.std",
    ),
    "head a list": (lambda c: c.update(head=[]), "head must be a JSON object"),
    "head.dropout x": (lambda c: c["head"].update(dropout="x"), "head.dropout"),
    "head.dropout 1": (lambda c: c["head"].update(dropout=1), "head.dropout"),
    "head.type mlp": (lambda c: c["head"].update(type="mlp"), "head.type"),
    "training a list": (lambda c: c.update(training=[]), "training must be a JSON object"),
    "training.data a number": (lambda c: c["training"].update(data=3), "training.data"),
    "format_version string": (lambda c: c.update(format_version="1"), "format_version"),
    "format_version true": (lambda c: c.update(format_version=True), "format_version"),
}


@pytest.mark.parametrize("damage, match", DAMAGES.values(), ids=DAMAGES.keys())
def test_damaged_config_fields_are_one_line_errors(run_copy, trained_data, capsys, damage, match):
    _edit_config(run_copy, damage)
    image = str(list_images(trained_data / "test")[0])
    assert main(["predict", str(run_copy), image]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err
    assert match in captured.err and str(run_copy / "config.json") in captured.err
    assert captured.out == ""


def test_predict_on_a_torchscript_file_says_what_it_is(tmp_path, trained_data, capsys):
    from visiontune.exporting.torchscript import METADATA_FILE

    image = str(list_images(trained_data / "test")[0])
    cases = {
        "model.pt": ({METADATA_FILE: "{}"}, "is a TorchScript export"),
        "other.pt": ({}, "is a TorchScript file"),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated
        traced = torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2))
        for name, (extra, _) in cases.items():
            torch.jit.save(traced, str(tmp_path / name), _extra_files=extra)
    for name, (_, match) in cases.items():
        assert main(["predict", str(tmp_path / name), image]) == 2
        err = capsys.readouterr().err
        assert match in err and "run folder or an .onnx" in err, err
        assert "no such run folder" not in err and err.count("\n") == 1
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(BundleError, match="is a file, not a run folder"):
        visiontune.load(tmp_path / "notes.txt")


@pytest.mark.parametrize("command", ["evaluate", "export"])
def test_evaluate_and_export_validate_the_config_too(run_copy, trained_data, capsys, command):
    _edit_config(run_copy, lambda c: c["preprocess"].update(size=100000))  # was a 52 GB alloc
    argv = [command, str(run_copy)] + (
        [str(trained_data / "test")] if command == "evaluate" else []
    )
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "preprocess.size" in err and err.count("\n") == 1
    assert not (run_copy / "model.onnx").exists()
