"""Fine-tuning on cached activations: the cut backbone, the cache's keys, and the training path.

The frozen stages' output is computed once per view (``training.activations``); these tests
check that the cut reproduces the backbone, that a run on cached activations trains what the
image path trains when the views are the same, and that the cache is read again only for the
same boundary, views and weights.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY, make_split_folder
from safetensors.torch import save_file

import visiontune
from visiontune._seeding import seed_all
from visiontune.backbones import create_backbone
from visiontune.backbones.sources import load_timm_model
from visiontune.backbones.split import split_backbone
from visiontune.features.activations import ActivationViews
from visiontune.features.extract import FeatureSet


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_split_folder(
        tmp_path_factory.mktemp("act") / "data",
        {
            "train": {"cat": 10, "dog": 10, "bird": 10},
            "val": {"cat": 3, "dog": 3, "bird": 3},
            "test": {"cat": 2, "dog": 2, "bird": 2},
        },
    )


def _fit(data, out, **options):
    settings = {
        **TINY,
        "strategy": "partial",
        "epochs": 2,
        "batch_size": 8,
        "workers": 0,
        "progress": False,
        "precision": "fp32",
        "overwrite": True,
        "out": str(out),
        **options,
    }
    return visiontune.fit(data, **settings)


def _cache_record(run) -> dict:
    return json.loads((run.run_dir / "metrics.json").read_text())["activation_cache"]


@pytest.mark.parametrize("name", ["test_efficientnet", "resnet18"])
def test_the_cut_reproduces_the_backbone_at_every_inner_boundary(name):
    torch.manual_seed(0)
    backbone = create_backbone(name, weights="none").eval()
    stages = backbone.stages()
    x = torch.rand(3, 3, 96, 96)
    for first in range(1, len(stages)):
        split = split_backbone(backbone, first)
        assert split is not None and split.boundary == stages[first][0]
        with torch.no_grad():
            torch.testing.assert_close(split.upper(split.lower(x)), backbone(x))
        # the parts are the backbone's own modules: training the upper part trains it
        upper_params = {id(p) for p in split.upper.parameters()}
        names = dict(backbone.named_parameters())
        assert {id(names[n]) for n in stages[first][1]} <= upper_params
    assert split_backbone(backbone, 0) is None  # nothing frozen: nothing to cache
    assert split_backbone(backbone, len(stages)) is None


def test_a_family_it_cannot_cut_gets_none():
    backbone = create_backbone("test_convnext", weights="none")
    assert split_backbone(backbone, 2) is None


def test_views_cycle_with_the_epoch_and_keep_common_images():
    from visiontune.data.folder import Sample

    samples = [Sample(f"/x/{i}.png", i % 2) for i in range(3)]
    views = [
        FeatureSet(torch.full((3, 4), float(v)), torch.tensor([0, 1, 0]), samples) for v in range(2)
    ]
    # a file that failed to decode in the second view is left out of both
    views[1] = FeatureSet(views[1].features[[0, 2]], torch.tensor([0, 0]), [samples[0], samples[2]])
    dataset = ActivationViews(views, (1, 2, 2))
    assert len(dataset) == 2 and [s.path for s in dataset.samples] == ["/x/0.png", "/x/2.png"]
    seen = []
    for epoch in range(4):
        dataset.set_epoch(epoch)
        x, label, index, _, _ = dataset[1]
        seen.append(float(x[0, 0, 0]))
        assert x.shape == (1, 2, 2) and label == 0 and index == 1
    assert seen == [0.0, 1.0, 0.0, 1.0]


def test_cached_activations_train_what_the_image_path_trains(data, tmp_path):
    # With no augmentation every view is the same image, so one cached view stands for every
    # epoch's: the two paths must compute the same steps on the same batches.
    images = _fit(data, tmp_path / "images", augment="none", activation_views=0)
    cached = _fit(data, tmp_path / "cached", augment="none", activation_views=1)
    assert _cache_record(images) == {"used": False, "reason": "--activation-views 0"}
    record = _cache_record(cached)
    assert record["used"] and record["views"] == 1 and record["boundary"] == "blocks.3"
    for a, b in zip(images.history, cached.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4, abs=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4, abs=1e-5)
    ours, theirs = cached.model.model.state_dict(), images.model.model.state_dict()
    for name, tensor in ours.items():
        if tensor.is_floating_point():
            torch.testing.assert_close(tensor, theirs[name], atol=1e-4, rtol=1e-3)


def test_partial_on_cached_activations_is_reproducible_under_a_seed(data, tmp_path):
    """Augmented views drawn in worker processes, the default precision: two runs with one
    seed give the same weights (a comparison of runs on one machine reads nothing else)."""
    runs = [
        _fit(
            data,
            tmp_path / f"r{i}",
            workers=2,
            precision="auto",
            seed=5,
            cache_dir=str(tmp_path / f"c{i}"),
        )
        for i in range(2)
    ]
    assert all(_cache_record(r)["used"] for r in runs)
    first, second = (r.model.model.state_dict() for r in runs)
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert [r["train_loss"] for r in runs[0].history] == [r["train_loss"] for r in runs[1].history]


def test_the_cache_is_read_again_only_for_the_same_boundary_views_and_weights(data, tmp_path):
    cache = tmp_path / "cache"
    first = _cache_record(_fit(data, tmp_path / "a", cache_dir=str(cache), activation_views=2))
    assert first["computed"] == 30 * 2 + 9 and first["from_cache"] == 0
    again = _cache_record(_fit(data, tmp_path / "b", cache_dir=str(cache), activation_views=2))
    assert again["computed"] == 0 and again["from_cache"] == 69

    # another boundary: --unfreeze 3 cuts one stage lower, so nothing stored applies
    lower = _fit(data, tmp_path / "c", cache_dir=str(cache), activation_views=2, unfreeze=3)
    assert _cache_record(lower)["boundary"] != first["boundary"]
    assert _cache_record(lower)["from_cache"] == 0

    # other views (another augmentation): the training views are new, validation is not
    other = _fit(data, tmp_path / "d", cache_dir=str(cache), activation_views=2, augment="light")
    assert _cache_record(other)["computed"] == 60 and _cache_record(other)["from_cache"] == 9
    more = _cache_record(_fit(data, tmp_path / "e", cache_dir=str(cache), activation_views=3))
    assert more["computed"] == 30 and more["from_cache"] == 69  # views 1 and 2 are the same

    # other weights (a weights file with different tensors): every activation is new
    torch.manual_seed(7)
    state = load_timm_model("test_efficientnet", weights="none").model.state_dict()
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    options = {"cache_dir": str(cache), "activation_views": 2, "weights": str(weights)}
    new = _cache_record(_fit(data, tmp_path / "f", **options))
    assert new["computed"] == 69 and new["from_cache"] == 0


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"strategy": "full"}, "every stage trains"),
        ({"strategy": "gradual"}, "every stage trains"),
        ({"augment": "standard,mixup"}, "mixes whole images"),
        ({"backbone": "test_convnext"}, "cannot be cut"),
    ],
)
def test_the_image_path_runs_where_activations_cannot_stand_in(data, tmp_path, options, reason):
    run = _fit(data, tmp_path / "run", epochs=1, **options)
    record = _cache_record(run)
    assert record["used"] is False and reason in record["reason"]


def test_gradual_with_a_limit_trains_above_a_cached_boundary(data, tmp_path):
    run = _fit(data, tmp_path / "run", strategy="gradual", unfreeze=2, epochs=3)
    record = _cache_record(run)
    assert record["used"] and record["boundary"] == "blocks.3"
    assert len(run.history) == 3
    # the stages below the cut kept their initial weights, the two above it trained
    seed_all(0)
    initial = create_backbone(TINY["backbone"], weights=TINY["weights"]).state_dict()
    trained = run.model.model.backbone.state_dict()
    for name, tensor in initial.items():
        if not tensor.is_floating_point() or "running" in name:
            continue
        moved = not torch.equal(tensor, trained[name])
        assert moved == name.startswith(
            ("body.blocks.3", "body.blocks.4", "body.conv_head", "body.bn2")
        ), name
