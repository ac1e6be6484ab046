"""Ensembles: probability averaging on fixed outputs, refusal of mismatched members, and
``train --ensemble`` / several run folders end to end through the CLI."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TINY, files_under, solid_image
from torch import nn

import visiontune
from visiontune.cli import main
from visiontune.errors import VisiontuneError
from visiontune.formats.bundle import load_bundle, save_bundle
from visiontune.prediction.ensemble import Ensemble, load_predictor
from visiontune.prediction.predictor import TrainedModel
from visiontune.specs import LabelMap, PreprocessSpec

TINY_CLI = [
    "--backbone",
    TINY["backbone"],
    "--weights",
    TINY["weights"],
    "--strategy",
    "full",
    "--epochs",
    "1",
    "--batch-size",
    "8",
    "--workers",
    "0",
    "--no-cache",
    "--no-progress",
]


class FixedLogits(nn.Module):
    """The same logits for every input; refuses inputs not of its own preprocessing's size."""

    def __init__(self, logits, *, size: int):
        super().__init__()
        self.backbone = SimpleNamespace(preprocess=PreprocessSpec(size=size), name=f"fixed{size}")
        self.register_buffer("logits", torch.tensor(logits, dtype=torch.float32))

    def forward(self, x):
        assert x.shape[-2:] == (self.backbone.preprocess.size,) * 2, "fed another member's views"
        return self.logits.expand(len(x), -1)


def member(logits, names=("cat", "dog", "fish"), *, size: int = 32) -> TrainedModel:
    return TrainedModel(FixedLogits(logits, size=size), LabelMap(names))


@pytest.fixture
def images(tmp_path):
    for i in range(3):
        solid_image((40 * i, 90, 200), (50, 40), seed=i).save(tmp_path / f"img{i}.png")
    return [tmp_path / f"img{i}.png" for i in range(3)]


def test_ensemble_averages_member_probabilities_not_logits(images):
    a, b = [4.0, 0.0, -2.0], [-1.0, 3.0, 0.0]
    # Different input sizes: each member must get its own preprocessing's views.
    ensemble = Ensemble([member(a, size=32), member(b, size=48)])
    expected = (torch.softmax(torch.tensor(a), 0) + torch.softmax(torch.tensor(b), 0)).numpy() / 2
    for tta in ("none", "flip"):
        results = ensemble.predict(images, top_k=3, workers=0, tta=tta)
        for r in results:
            got = {t["class"]: t["probability"] for t in r["top"]}
            np.testing.assert_allclose(
                [got[c] for c in ("cat", "dog", "fish")], expected, atol=1e-6
            )
    # Averaging logits would give another answer: the test tells the two apart.
    assert not np.allclose(
        expected, torch.softmax(torch.tensor(a) / 2 + torch.tensor(b) / 2, 0).numpy()
    )
    assert ensemble.passes_per_image("flip") == 4 and ensemble.passes_per_image("10crop") == 20


def test_ensemble_metrics_count_every_member(images, tmp_path):
    for name in ("cat", "dog"):
        (tmp_path / "test" / name).mkdir(parents=True)
    shutil.copy(images[0], tmp_path / "test" / "cat")
    shutil.copy(images[1], tmp_path / "test" / "dog")
    # Member one says cat for sure, member two leans dog: the average says cat for both images.
    ensemble = Ensemble([member([5.0, 0.0, 0.0]), member([0.0, 1.0, 0.0])])
    metrics = ensemble.evaluate(tmp_path / "test", workers=0, tta="5crop")
    assert metrics["accuracy"] == 0.5 and metrics["num_images"] == 2
    assert metrics["forward_passes_per_image"] == 10 and metrics["tta"] == "5crop"


def test_members_with_other_classes_are_refused():
    with pytest.raises(VisiontuneError, match=r"only in member 0: dog; only in member 1: fish"):
        Ensemble([member([0, 0], ("cat", "dog")), member([0, 0], ("cat", "fish"))])


def test_members_with_classes_in_another_order_are_refused():
    with pytest.raises(
        VisiontuneError, match=r"another order: output 0 is 'cat' in member 0 but 'dog'"
    ):
        Ensemble([member([0, 0], ("cat", "dog")), member([0, 0], ("dog", "cat"))])


@pytest.fixture(scope="module")
def ensemble_run(trained_data, tmp_path_factory):
    """``visiontune train --ensemble 2`` with the tiny backbone; its folder."""
    out = tmp_path_factory.mktemp("ensemble") / "ens"
    assert main(["train", str(trained_data), *TINY_CLI, "--ensemble", "2", "--out", str(out)]) == 0
    return out


def test_train_ensemble_writes_one_folder_that_loads_as_one_model(ensemble_run, trained_data):
    manifest = json.loads((ensemble_run / "ensemble.json").read_text())
    assert manifest["members"] == ["members/0", "members/1"] and manifest["seeds"] == [0, 1]
    assert manifest["classes"] == ["bird", "cat", "dog"]
    for i in (0, 1):
        assert (ensemble_run / "members" / str(i) / "model.safetensors").is_file()
    model = visiontune.load(ensemble_run)
    assert isinstance(model, Ensemble) and len(model) == 2
    # Different seeds, different weights: the members are not copies of each other.
    w0, w1 = (m.model.head.fc.weight for m in model.members)
    assert not torch.equal(w0, w1)
    # The ensemble's test metrics in metrics.json are the ones evaluate gives.
    saved = json.loads((ensemble_run / "metrics.json").read_text())
    again = visiontune.evaluate(ensemble_run, trained_data / "test", workers=0)
    assert saved["test"]["confusion_matrix"] == again["confusion_matrix"]
    assert saved["test"]["num_images"] == 9 and [m["seed"] for m in saved["members"]] == [0, 1]


def test_evaluate_and_predict_several_run_folders(ensemble_run, trained_data, capsys):
    members = [str(ensemble_run / "members" / str(i)) for i in (0, 1)]
    test = str(trained_data / "test")
    outputs = []
    for runs in ([str(ensemble_run)], members, [",".join(members)]):
        assert main(["evaluate", *runs, test, "--json", "--workers", "0", "--tta", "flip"]) == 0
        outputs.append(json.loads(capsys.readouterr().out))
    assert outputs[0]["forward_passes_per_image"] == 4
    assert (
        outputs[0]["confusion_matrix"]
        == outputs[1]["confusion_matrix"]
        == outputs[2]["confusion_matrix"]
    )
    predictions = []
    for run in (str(ensemble_run), ",".join(members), members[0]):
        assert (
            main(["predict", run, test, "--format", "json", "--top-k", "3", "--workers", "0"]) == 0
        )
        predictions.append(
            {
                r["path"]: {t["class"]: t["probability"] for t in r["top"]}
                for r in json.loads(capsys.readouterr().out)
            }
        )
    # The folder and the list of its members are the same model; a lone member is not.
    (ens, listed, alone) = predictions
    for path in ens:
        for cls in ens[path]:
            assert listed[path][cls] == pytest.approx(ens[path][cls], abs=1e-6)
    assert any(abs(alone[p]["bird"] - ens[p]["bird"]) > 1e-6 for p in ens)
    # By hand: the ensemble's probability is the mean of its two members'.
    one = load_predictor(members[1]).predict([test], top_k=3, workers=0)
    for r in one:
        for t in r["top"]:
            mean = (alone[r["path"]][t["class"]] + t["probability"]) / 2
            assert ens[r["path"]][t["class"]] == pytest.approx(mean, abs=1e-6)


def test_cli_refuses_runs_with_other_classes(trained_run, trained_data, tmp_path, capsys):
    other = tmp_path / "other-run"
    model, _, config = load_bundle(trained_run.run_dir)  # the same network, other class names
    extra = {k: config[k] for k in ("strategy", "training", "data")}
    save_bundle(other, model, labels=LabelMap(("bird", "cat", "wolf")), extra=extra)
    assert main(["evaluate", str(trained_run.run_dir), str(other), str(trained_data / "test")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "only in" in err and "dog" in err and "wolf" in err


def test_train_ensemble_refuses_bad_requests_before_writing(trained_data, tmp_path, capsys):
    out = tmp_path / "never"
    common = [a for a in TINY_CLI if a != TINY["backbone"] and a != "--backbone"]
    for extra in (
        ["--backbone", "test_efficientnet,test_resnet", "--ensemble", "3"],  # 2 names, 3 members
        ["--backbone", "test_efficientnet,no_such_net"],  # the 2nd cannot be built
        ["--backbone", TINY["backbone"], "--ensemble", "0"],
    ):
        assert main(["train", str(trained_data), *common, *extra, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("visiontune: error:") and err.count("\n") == 1
        assert files_under(out) == set()


def test_backbone_list_gives_one_member_per_backbone(trained_data, tmp_path):
    result = visiontune.fit_ensemble(
        trained_data,
        backbones=["test_efficientnet", "test_resnet"],
        weights="none",
        strategy="full",
        epochs=1,
        batch_size=8,
        workers=0,
        cache=False,
        progress=False,
        out=str(tmp_path / "ens"),
    )
    model = visiontune.load(result.run_dir)
    assert [m.model.backbone.name for m in model.members] == ["test_efficientnet", "test_resnet"]
    # Each member keeps the preprocessing of its own weights (resnet's is bilinear).
    assert [m.preprocess.interpolation for m in model.members] == ["bicubic", "bilinear"]
    assert json.loads((result.run_dir / "ensemble.json").read_text())["seeds"] == [0, 0]
    assert result.metrics["test"]["forward_passes_per_image"] == 2


@pytest.mark.parametrize(
    "content, match",
    [
        ("[1, 2]", "the whole file must be a JSON object"),
        ('{"format_version": "1", "members": ["a"]}', "format_version '1' is invalid"),
        ('{"format_version": 1, "members": [1]}', "members must be folder names"),
        ('{"format_version": 1, "members": []}', "lists no members"),
    ],
    ids=["list", "string version", "member not a name", "no members"],
)
def test_damaged_ensemble_file_is_one_line(tmp_path, capsys, content, match):
    (tmp_path / "ens").mkdir()
    (tmp_path / "ens" / "ensemble.json").write_text(content)
    solid_image((200, 0, 0)).save(tmp_path / "x.png")
    assert main(["predict", str(tmp_path / "ens"), str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1, err
