"""Test-time augmentation: view counts and geometry on generated images, mirror invariance."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from visiontune.backbones import Classifier, Head, create_backbone
from visiontune.cli import main
from visiontune.data.transforms import eval_transform
from visiontune.errors import VisiontuneError
from visiontune.prediction.predictor import TrainedModel
from visiontune.prediction.tta import TTA_MODES, TTAViews, view_count
from visiontune.specs import LabelMap, PreprocessSpec

# 64 px crops from an 80 px square (crop_pct 0.8); identity normalisation, so views are
# pixels / 255.
SPEC = PreprocessSpec(size=64, crop_pct=0.8, mean=(0, 0, 0), std=(1, 1, 1))
RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)


def quadrants(side: int = 160) -> Image.Image:
    """Top-left red, top-right green, bottom-left blue, bottom-right yellow."""
    img = Image.new("RGB", (side, side))
    half = side // 2
    for colour, (x, y) in zip(
        (RED, GREEN, BLUE, YELLOW), ((0, 0), (half, 0), (0, half), (half, half)), strict=True
    ):
        img.paste(colour, (x, y, x + half, y + half))
    return img


def colour_at(view: torch.Tensor, row: int, col: int) -> tuple[int, ...]:
    return tuple(int(round(float(v) * 255)) for v in view[:, row, col])


@pytest.mark.parametrize("mode", TTA_MODES)
def test_each_mode_gives_its_number_of_model_sized_views(mode):
    views = TTAViews(SPEC, mode)(quadrants())
    assert views.shape == (view_count(mode), 3, 64, 64)
    assert views.dtype == torch.float32
    assert view_count(mode) == {"none": 1, "flip": 2, "5crop": 5, "10crop": 10}[mode]


def test_none_is_exactly_the_eval_view():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 130, 3), dtype=np.uint8))
    torch.testing.assert_close(
        TTAViews(SPEC, "none")(img)[0], eval_transform(SPEC)(img), rtol=0, atol=0
    )


def test_crops_sit_in_the_corners_of_the_central_square():
    # The 160 px quadrant image becomes 80 px; 64 px crops from its corners keep one colour in
    # their outer corner: the crop order is top-left, top-right, bottom-left, bottom-right, centre.
    views = TTAViews(SPEC, "5crop")(quadrants())
    tl, tr, bl, br, centre = views
    assert colour_at(tl, 0, 0) == RED and colour_at(tl, 40, 40) != RED  # reaches past the middle
    assert colour_at(tr, 0, 63) == GREEN
    assert colour_at(bl, 63, 0) == BLUE
    assert colour_at(br, 63, 63) == YELLOW
    assert [colour_at(centre, r, c) for r, c in ((0, 0), (0, 63), (63, 0), (63, 63))] == [
        RED,
        GREEN,
        BLUE,
        YELLOW,
    ]
    torch.testing.assert_close(centre, TTAViews(SPEC, "none")(quadrants())[0])


def test_crops_are_exact_slices_of_the_resized_image():
    # An 80 x 120 image needs no resize (short side 80 already); the central square is columns
    # 20..100, and each crop must be the matching slice of it, pixel for pixel.
    pixels = np.random.default_rng(1).integers(0, 256, (80, 120, 3), dtype=np.uint8)
    square = torch.from_numpy(pixels).permute(2, 0, 1)[:, :, 20:100].float() / 255
    offsets = [(0, 0), (0, 16), (16, 0), (16, 16), (8, 8)]
    views = TTAViews(SPEC, "10crop")(Image.fromarray(pixels))
    for view, (r, c) in zip(views[:5], offsets, strict=True):
        torch.testing.assert_close(view, square[:, r : r + 64, c : c + 64], rtol=0, atol=1e-6)
    # The last five are the same crops of the mirrored square: its top-left is the original's
    # top-right, mirrored, and so on.
    for mirrored, original in zip(views[5:], views[[1, 0, 3, 2, 4]], strict=True):
        torch.testing.assert_close(mirrored, original.flip(-1), rtol=0, atol=0)


def test_flip_adds_the_mirror_image():
    none, mirrored = TTAViews(SPEC, "flip")(quadrants())
    assert colour_at(none, 0, 0) == RED and colour_at(mirrored, 0, 0) == GREEN
    torch.testing.assert_close(mirrored, none.flip(-1), rtol=0, atol=0)


def test_unknown_mode_is_refused():
    with pytest.raises(VisiontuneError, match="tta must be one of none, flip, 5crop, 10crop"):
        TTAViews(SPEC, "3crop")


@pytest.fixture(scope="module")
def random_model() -> TrainedModel:
    torch.manual_seed(0)
    backbone = create_backbone("test_efficientnet", weights="none")
    head = Head(backbone.num_features, 3, dropout=0.0)
    torch.nn.init.normal_(head.fc.weight, std=5.0)  # spread the random outputs apart
    return TrainedModel(Classifier(backbone, head), LabelMap(("a", "b", "c")))


def probs(model: TrainedModel, path, tta: str) -> np.ndarray:
    top = model.predict([path], top_k=3, workers=0, tta=tta)[0]["top"]
    return np.array([next(t["probability"] for t in top if t["class"] == c) for c in "abc"])


def test_flip_and_10crop_make_predictions_mirror_invariant(random_model, tmp_path):
    # A lopsided picture and its mirror image: one view differs, the mirrored views agree.
    rng = np.random.default_rng(3)
    img = Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8))
    img.save(tmp_path / "x.png")
    ImageOps.mirror(img).save(tmp_path / "mirror.png")
    assert not np.allclose(
        probs(random_model, tmp_path / "x.png", "none"),
        probs(random_model, tmp_path / "mirror.png", "none"),
        atol=1e-4,
    )
    for tta in ("flip", "10crop"):
        np.testing.assert_allclose(
            probs(random_model, tmp_path / "x.png", tta),
            probs(random_model, tmp_path / "mirror.png", tta),
            atol=1e-5,
        )


def test_flip_of_a_symmetric_image_equals_no_tta(random_model, tmp_path):
    half = np.random.default_rng(4).integers(0, 256, (96, 48, 3), dtype=np.uint8)
    Image.fromarray(np.concatenate([half, half[:, ::-1]], axis=1)).save(tmp_path / "sym.png")
    np.testing.assert_allclose(
        probs(random_model, tmp_path / "sym.png", "flip"),
        probs(random_model, tmp_path / "sym.png", "none"),
        atol=1e-5,
    )


def test_cli_tta_on_a_run(trained_run, trained_data, capsys):
    assert (
        main(
            [
                "evaluate",
                str(trained_run.run_dir),
                str(trained_data / "test"),
                "--tta",
                "10crop",
                "--json",
                "--workers",
                "0",
            ]
        )
        == 0
    )
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["tta"] == "10crop" and metrics["forward_passes_per_image"] == 10
    assert metrics["num_images"] == 9
    assert (
        main(
            [
                "predict",
                str(trained_run.run_dir),
                str(trained_data / "test"),
                "--tta",
                "flip",
                "--format",
                "json",
                "--top-k",
                "3",
                "--workers",
                "0",
            ]
        )
        == 0
    )
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 9
    for r in results:
        assert sum(t["probability"] for t in r["top"]) == pytest.approx(1.0, abs=1e-5)


def test_cli_refuses_an_unknown_tta(trained_run, trained_data, capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", str(trained_run.run_dir), str(trained_data / "test"), "--tta", "3crop"])
    assert "invalid choice" in capsys.readouterr().err
