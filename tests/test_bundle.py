"""The model bundle: identical predictions after a round trip, its config, damaged bundles."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import visiontune
from visiontune.backbones import Classifier, Head, create_backbone
from visiontune.data.folder import list_images
from visiontune.errors import BundleError
from visiontune.formats.bundle import FORMAT_VERSION, load_bundle, read_bundle_config, save_bundle
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


def test_weights_of_another_shape_are_refused(run_copy):
    config = json.loads((run_copy / "config.json").read_text())
    config["classes"] = ["a", "b"]  # the saved head has three outputs
    (run_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match="cannot load"):
        visiontune.load(run_copy)


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
