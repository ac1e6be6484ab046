"""Grad-CAM explanations (``visiontune.prediction.explain``): the maps mean something (their peak
falls on the patch that decides the class), the model's forward is unchanged, overlays are named
after their images, ``predict --explain`` and the evaluation report carry them, ONNX is refused."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _chromium import check_page, find_chromium
from conftest import require_or_skip
from PIL import Image

import visiontune
from visiontune.backbones import Classifier, Head, create_backbone
from visiontune.cli import main
from visiontune.data.transforms import normalize
from visiontune.errors import VisiontuneError
from visiontune.prediction.ensemble import Ensemble
from visiontune.prediction.explain import (
    centre_crop,
    check_explainable,
    explain_images,
    gradcam,
    overlay_names,
    upsample,
)

# The patch dataset: 256 px images (Lite0 resizes the short side to 256 and crops the central
# 224, so a crop pixel is an image pixel shifted by OFFSET). The class is the colour of one
# PATCH-px square (about 1/6 of the crop's side) at a random place in the crop, on grey noise.
SIDE, CROP, PATCH = 256, 224, 40
OFFSET = (SIDE - CROP) // 2
COLOURS = {"blue": (30, 60, 220), "red": (220, 30, 30)}
# A peak within one cell of Lite0's 7x7 last feature map (224 / 7 = 32 px) of the patch counts:
# the map cannot place anything more finely than its cells.
MARGIN = CROP // 7


def _patch_image(cls: str, seed: int) -> tuple[Image.Image, tuple[int, int]]:
    """An image of class ``cls`` and its patch's top-left corner in crop coordinates."""
    rng = np.random.default_rng(seed)
    pixels = 128 + rng.normal(0, 25, size=(SIDE, SIDE, 3))
    x, y = rng.integers(OFFSET, OFFSET + CROP - PATCH, size=2)
    pixels[y : y + PATCH, x : x + PATCH] = COLOURS[cls] + rng.normal(0, 10, size=(PATCH, PATCH, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    return image, (int(x) - OFFSET, int(y) - OFFSET)


def _write_patch_split(root: Path, count: int, seed: int, *, swap: bool = False) -> dict:
    """``root/<class>/<class>_<i>.png``; with ``swap`` each image is filed under the other
    class (every one misclassified by a model that learned the patches). Returns patch corners."""
    corners = {}
    names = list(COLOURS)
    for c, cls in enumerate(names):
        folder = root / (names[1 - c] if swap else cls)
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, corner = _patch_image(cls, seed + 1000 * c + i)
            path = folder / f"{cls}_{i}.png"
            image.save(path)
            corners[str(path)] = corner
    return corners


@pytest.fixture(scope="module")
def patch_run(tmp_path_factory):
    """A ``head`` run of the embedded EfficientNet-Lite0 on 24 patch images per class, and the
    patch corners of the 20-per-class TEST split."""
    root = tmp_path_factory.mktemp("patches")
    _write_patch_split(root / "data" / "train", 24, seed=0)
    _write_patch_split(root / "data" / "val", 4, seed=50_000)
    corners = _write_patch_split(root / "data" / "test", 20, seed=90_000)
    result = visiontune.fit(
        root / "data", strategy="head", seed=0, workers=0, progress=False, out=str(root / "run")
    )
    assert result.metrics["test"]["accuracy"] >= 0.95  # the patches are learnt
    return {"run": result.run_dir, "corners": corners, "root": root}


def _on_patch(peak: tuple[int, int], corner: tuple[int, int]) -> bool:
    (y, x), (cx, cy) = peak, corner
    return cx - MARGIN <= x < cx + PATCH + MARGIN and cy - MARGIN <= y < cy + PATCH + MARGIN


def _patch_box(corner: tuple[int, int]) -> tuple[slice, slice]:
    return slice(corner[1], corner[1] + PATCH), slice(corner[0], corner[0] + PATCH)


def test_grad_cam_peak_falls_on_the_patch_that_decides_the_class(patch_run):
    model = visiontune.load(patch_run["run"])
    paths = sorted(patch_run["corners"])
    batch = torch.stack([centre_crop(p, model.preprocess) for p in paths])
    for step in normalize(model.preprocess):
        batch = step(batch)
    maps, logits = gradcam(model.model, batch)
    heat = [upsample(m, CROP) for m in maps]
    peaks = [np.unravel_index(h.argmax(), h.shape) for h in heat]
    corners = [patch_run["corners"][p] for p in paths]
    hits = np.mean([_on_patch(p, c) for p, c in zip(peaks, corners, strict=True)])
    # The same peaks judged against another image's patch: what a map unrelated to the patch
    # scores (about the box's share of the crop, ~20 %).
    shifted = corners[1:] + corners[:1]
    chance = np.mean([_on_patch(p, c) for p, c in zip(peaks, shifted, strict=True)])
    print(f"peak on the patch: {hits:.0%} of {len(paths)} images; unrelated patch: {chance:.0%}")
    assert hits >= 0.8, (hits, chance)
    assert chance <= 0.4, chance
    # Class-discriminative, not a saliency map of "the thing in the picture": the map of the
    # class not predicted is weaker on the patch than the predicted class's, on every image.
    others, _ = gradcam(model.model, batch, 1 - logits.argmax(1))
    for h, other, corner in zip(heat, others, corners, strict=True):
        box = _patch_box(corner)
        assert upsample(other, CROP)[box].mean() < h[box].mean()


@pytest.mark.parametrize(
    ("backbone", "weights", "grid"),
    [
        ("efficientnet_lite0", "default", 7),
        ("test_efficientnet", "none", 5),
        ("test_vit", "none", 10),
    ],
)
def test_the_explained_forward_is_the_models_forward(backbone, weights, grid):
    """``head(forward_head(forward_features(x)))`` -- or the ViT route with its hook -- gives the
    model's own logits, so the map explains the prediction that was made."""
    torch.manual_seed(0)
    body = create_backbone(backbone, weights=weights)
    model = Classifier(body, Head(body.num_features, 3)).eval()
    x = torch.randn(2, 3, body.preprocess.size, body.preprocess.size)
    maps, logits = gradcam(model, x)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    assert maps.shape == (2, grid, grid)
    assert float(maps.min()) >= 0 and torch.allclose(maps.amax(dim=(1, 2)), torch.ones(2))
    chosen = torch.tensor([2, 1])  # another class gives another map
    other, _ = gradcam(model, x, chosen)
    assert not torch.allclose(other, maps)


def test_a_backbone_without_a_spatial_map_is_refused():
    body = create_backbone("test_efficientnet", weights="none")
    features = body.body.forward_features
    body.body.forward_features = lambda x: features(x).mean(dim=(2, 3))  # a pooled vector
    body.body.forward_head = lambda f: f
    model = Classifier(body, Head(body.num_features, 2)).eval()
    with pytest.raises(VisiontuneError, match="not a spatial map"):
        gradcam(model, torch.randn(1, 3, 160, 160))


def test_overlay_names_follow_the_inputs_and_never_collide():
    names = overlay_names(["a/cat.jpg", "b/cat.jpg", "c/Cat.png", "cat-2.png", "dog.jpeg"])
    assert names == ["cat.png", "cat-2.png", "Cat-3.png", "cat-2-2.png", "dog.png"]
    assert len({n.lower() for n in names}) == len(names)


def test_predict_explain_writes_one_overlay_per_image(patch_run, tmp_path):
    test = patch_run["root"] / "data" / "test"
    twin = tmp_path / "other" / "red_0.png"  # the same name as test/red/red_0.png
    twin.parent.mkdir()
    shutil.copy(test / "blue" / "blue_3.png", twin)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    inputs = [
        test / "red" / "red_0.png",
        twin,
        test / "blue" / "blue_1.png",
        tmp_path / "broken.png",
    ]
    rows = visiontune.predict(patch_run["run"], inputs, explain=tmp_path / "why")
    assert [r.get("explanation") for r in rows] == [
        str(tmp_path / "why" / n) for n in ("red_0.png", "red_0-2.png", "blue_1.png")
    ] + [None]
    assert "error" in rows[-1]
    for row in rows[:3]:
        with Image.open(row["explanation"]) as image:
            assert image.format == "PNG" and image.size == (CROP, CROP)
    assert sorted(p.name for p in (tmp_path / "why").iterdir()) == [
        "blue_1.png",
        "red_0-2.png",
        "red_0.png",
    ]
    # An ensemble averages its members' maps: two copies of one model draw the same map.
    model = visiontune.load(patch_run["run"])
    twice = explain_images(Ensemble([model, model]), inputs[:1], tmp_path / "ens")
    single = np.asarray(Image.open(rows[0]["explanation"]), dtype=int)
    assert np.abs(np.asarray(Image.open(twice[str(inputs[0])]), dtype=int) - single).max() <= 1


def test_cli_predict_explain_adds_a_column(patch_run, tmp_path, capsys):
    image = patch_run["root"] / "data" / "test" / "blue" / "blue_2.png"
    out = tmp_path / "why"
    argv = ["predict", patch_run["run"], image, "--explain", out, "--format", "csv"]
    assert main([str(a) for a in argv]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows[0]["explanation"] == str(out / "blue_2.png") and (out / "blue_2.png").is_file()


def test_explain_refuses_onnx_clearly(tmp_path, capsys, patch_run):
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"")  # refused before it is read
    image = patch_run["root"] / "data" / "test" / "red" / "red_1.png"
    argv = ["predict", onnx, image, "--explain", tmp_path / "why"]
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not an .onnx export" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "why").exists()
    with pytest.raises(VisiontuneError, match="onnx"):
        check_explainable(object())


@pytest.fixture(scope="module")
def mislabelled_report(patch_run, tmp_path_factory):
    """The report of ``patch_run`` on 3 + 3 images each filed under the other class."""
    root = tmp_path_factory.mktemp("mislabelled")
    _write_patch_split(root / "data", 3, seed=7000, swap=True)  # red patches filed as blue...
    metrics = visiontune.evaluate(
        patch_run["run"], root / "data", report=root / "report", workers=0
    )
    return metrics, root / "report"


def test_the_report_shows_an_overlay_beside_each_misclassified_image(mislabelled_report):
    metrics, report = mislabelled_report
    assert len(metrics["misclassified"]) == 6
    page = (report / "index.html").read_text()
    for item in metrics["misclassified"]:
        assert item["explanation"].startswith("explain/")
        assert (report / item["explanation"]).is_file()
        assert f'src="{item["explanation"]}"' in page
    saved = json.loads((report / "metrics.json").read_text())
    assert [m["explanation"] for m in saved["misclassified"]] == [
        m["explanation"] for m in metrics["misclassified"]
    ]
    assert "Grad-CAM" in saved["context"]["explanations"]


def test_the_report_with_overlays_loads_cleanly_in_chromium(mislabelled_report):
    chromium, reason = find_chromium()
    if chromium is None:
        require_or_skip(f"headless Chromium unavailable: {reason}")
    metrics, report = mislabelled_report
    check = check_page(chromium, report / "index.html")
    assert check.errors == [] and check.broken_images == []
    overlays = [img for img in check.images if img["src"].startswith("explain/")]
    assert len(overlays) == len(metrics["misclassified"])
    assert all(img["width"] > 0 for img in overlays)
