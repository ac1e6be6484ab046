"""Augmentation: each op's contract, presets and parsing, PCA lighting, workers, preview, wiring."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY, make_class_folder, make_split_folder, solid_image
from PIL import Image
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

import visiontune
from visiontune.cli import main
from visiontune.config import TrainConfig
from visiontune.data import augment_ops
from visiontune.data.augment import (
    OPS,
    PRESETS,
    AugmentSpec,
    PCAStats,
    augment_help,
    build_batch_transform,
    build_train_transform,
    compute_pca_stats,
    describe_view,
    parse_augment,
)
from visiontune.data.augment_ops import ColorShift, PCALighting
from visiontune.data.folder import Sample
from visiontune.data.loader import Batch, ImageDataset, make_loader
from visiontune.data.transforms import decode_size, eval_transform, train_transform
from visiontune.engine.loop import LoopConfig, Runtime, train_one_epoch
from visiontune.errors import VisiontuneError
from visiontune.specs import PreprocessSpec

SPEC = PreprocessSpec(size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), crop_pct=0.8)
# Principal components of a typical photo collection (brightness first), for op-level tests.
PCA = PCAStats((0.2, 0.02, 0.005), ((0.58, 0.58, 0.57), (-0.71, 0.0, 0.71), (0.41, -0.82, 0.41)))
IMAGE_OPS = [name for name, op in OPS.items() if not op.batch]
BATCH_OPS = [name for name, op in OPS.items() if op.batch]


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return solid_image((150, 90, 200), (60, 44), seed=1, noise=60)


def _draw(transform, inpt, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return transform(inpt)


# ------------------------------------------------------------------------------ every op


@pytest.mark.parametrize("op", IMAGE_OPS)
def test_each_op_gives_float_images_of_the_input_size_deterministically(op, image):
    transform = build_train_transform(SPEC, op, pca=PCA)
    for inpt in (image, F.pil_to_tensor(image)):  # PIL images and uint8 tensors alike
        a, b = _draw(transform, inpt, 3), _draw(transform, inpt, 3)
        assert a.shape == (3, 32, 32) and a.dtype == torch.float32
        assert torch.equal(a, b), f"{op} is not reproducible under a seed"
    draws = {_draw(transform, image, seed).numpy().tobytes() for seed in range(8)}
    assert len(draws) > 1, f"{op} never varies"


@pytest.mark.parametrize("op", IMAGE_OPS)
def test_each_op_at_its_range_ends_builds_and_runs(op, image):
    info = OPS[op]
    strengths = [info.high] if info.low_open else [info.low, info.high]
    for strength in strengths:
        out = _draw(build_train_transform(SPEC, f"{op}={strength:g}", pca=PCA), image, 0)
        assert out.shape == (3, 32, 32) and torch.isfinite(out).all()


@pytest.mark.parametrize("ops", [*BATCH_OPS, ",".join(BATCH_OPS)])
def test_batch_ops_mix_images_and_labels(ops):
    mix = build_batch_transform(ops, num_classes=3)
    images, labels = torch.rand(6, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2])
    torch.manual_seed(0)
    a, targets = mix(images, labels)
    torch.manual_seed(0)
    b, again = mix(images, labels)
    assert a.shape == images.shape and a.dtype == torch.float32 and targets.shape == (6, 3)
    assert torch.equal(a, b) and torch.equal(targets, again)
    assert torch.allclose(targets.sum(1), torch.ones(6))
    assert not torch.equal(a, images)
    # Batch ops leave the per-image transform alone: here it is the eval view.
    img = solid_image((10, 200, 30), (50, 40))
    assert torch.equal(build_train_transform(SPEC, ops)(img), eval_transform(SPEC)(img))
    assert build_batch_transform("strong", num_classes=3) is None


def test_standard_is_exactly_the_previous_default_and_none_is_the_eval_view(image):
    previous = v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(
                32, scale=(0.35, 1.0), interpolation=InterpolationMode.BICUBIC, antialias=True
            ),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(SPEC.mean), std=list(SPEC.std)),
        ]
    )
    for seed in range(5):
        assert torch.equal(_draw(train_transform(SPEC), image, seed), _draw(previous, image, seed))
    for augment in ("none", "mixup"):
        assert torch.equal(
            train_transform(SPEC, augment=augment)(image), eval_transform(SPEC)(image)
        )
    assert describe_view("standard") == "standard"  # feature caches keyed before this stay valid


def test_ops_run_in_pipeline_order_whatever_order_they_are_listed(image):
    a = build_train_transform(SPEC, "pca-color,jitter,rotate,flip,crop", pca=PCA)
    b = build_train_transform(SPEC, "crop,flip,rotate,jitter,pca-color", pca=PCA)
    assert (
        [type(t) for t in a.transforms]
        == [type(t) for t in b.transforms]
        == [
            v2.ToImage,
            v2.RandomResizedCrop,
            v2.RandomHorizontalFlip,
            v2.RandomAffine,
            v2.ColorJitter,
            v2.ToDtype,
            PCALighting,
            v2.Normalize,
        ]
    )
    assert torch.equal(_draw(a, image, 1), _draw(b, image, 1))


def test_every_op_in_the_registry_adds_a_step():
    base = {type(t) for t in build_train_transform(SPEC, "none").transforms}
    for name in IMAGE_OPS:
        assert {type(t) for t in build_train_transform(SPEC, name, pca=PCA).transforms} - base, name
    assert set(BATCH_OPS) == {"mixup", "cutmix"}


# ------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets_round_trip_to_text_and_json(preset):
    spec = parse_augment(preset)
    assert str(spec) == preset
    assert parse_augment(spec.text) == spec == parse_augment(str(spec))
    assert AugmentSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_op_lists_parse_with_defaults_and_canonical_order():
    spec = parse_augment("flip,crop,rotate=15,pca-color=0.1")
    assert spec.ops == (("crop", 0.35), ("flip", 0.5), ("rotate", 15.0), ("pca-color", 0.1))
    assert spec.text == str(spec) == "crop=0.35,flip=0.5,rotate=15,pca-color=0.1"
    assert parse_augment(" FLIP , Crop ") == parse_augment("standard")
    assert str(parse_augment("crop=0.5,flip")) == "light"
    assert parse_augment("standard,rotate=15") == parse_augment("flip,crop,rotate")
    assert parse_augment("strong,pca-color=0.2").strength("pca-color") == 0.2
    assert parse_augment("none").ops == () and parse_augment("none").text == "none"
    assert parse_augment(spec) is spec
    mixed = parse_augment("cutmix,flip,mixup=0.4")
    assert mixed.batch_ops == ("mixup", "cutmix") and mixed.image_ops == parse_augment("flip")
    assert AugmentSpec.from_dict(json.loads(json.dumps(mixed.to_dict()))) == mixed
    for name in list(PRESETS) + list(OPS):
        assert name in augment_help()


@pytest.mark.parametrize(
    "text", ["bogus", "flip,bogus", "", "  ", "flip,standard", "standard=1", "flip,,crop"]
)
def test_unknown_names_fail_naming_every_preset_and_op(text):
    with pytest.raises(ValueError) as info:
        parse_augment(text)
    message = str(info.value)
    if "preset (" not in message:
        for name in list(PRESETS) + list(OPS):
            assert name in message
    else:
        assert all(name in message for name in PRESETS)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("rotate=200", "[0, 180]"),
        ("rotate=abc", "[0, 180]"),
        ("rotate=", "[0, 180]"),
        ("crop=0", "(0, 1]"),
        ("flip=-0.1", "[0, 1]"),
        ("randaugment=2.5", "integer"),
        ("pca-color=nan", "[0, 1]"),
        ("mixup=0", "(0, 10]"),
        ("flip,flip", "twice"),
    ],
)
def test_bad_strengths_fail_naming_the_valid_range(text, expected):
    with pytest.raises(ValueError, match=expected.replace("[", r"\[").replace("(", r"\(")):
        parse_augment(text)


def test_direct_construction_validates_too():
    with pytest.raises(ValueError, match="unknown augmentation"):
        AugmentSpec((("spin", 1.0),))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        AugmentSpec((("flip", 2.0),))
    assert AugmentSpec((("flip", 0.5), ("crop", 0.35))) == parse_augment("standard")


def test_train_config_checks_augment_with_a_message():
    assert TrainConfig(data="x", augment="strong").augment == "strong"
    with pytest.raises(
        VisiontuneError, match="--augment: unknown augmentation 'spin'.*presets: none"
    ):
        TrainConfig(data="x", augment="spin")
    with pytest.raises(VisiontuneError, match="needs --strategy partial or full"):
        TrainConfig(data="x", augment="flip,mixup", strategy="head")


# ---------------------------------------------------------------------------- PCA colour


def _pca_images(tmp_path, count=6, size=(48, 40)):
    """Images whose R, G and B move together (a brightness direction) plus per-channel noise."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        h, w = size[1], size[0]
        base = rng.uniform(40, 215, size=(h, w, 1))
        pixels = (
            base * np.array([1.0, 0.8, 0.6]) + rng.normal(0, [20, 8, 4], size=(h, w, 3)) + 20 * i
        )
        path = tmp_path / f"img{i}.png"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB").save(path)
        paths.append(path)
    return paths


def test_pca_eigenvectors_match_numpy(tmp_path):
    paths = _pca_images(tmp_path)
    stats = compute_pca_stats(paths, size=40, max_images=10)
    pixels = np.concatenate(
        [np.asarray(Image.open(p), dtype=np.float64).reshape(-1, 3) / 255 for p in paths]
    )
    values, vectors = np.linalg.eigh(np.cov(pixels.T))
    values, vectors = values[::-1], vectors[:, ::-1].T
    assert np.allclose(stats.eigvals, values, rtol=1e-6, atol=1e-12)
    assert np.all(np.diff(stats.eigvals) < 0)
    for ours, theirs in zip(stats.eigvecs, vectors, strict=True):
        assert abs(np.dot(ours, theirs)) == pytest.approx(1.0, abs=1e-6)  # equal up to sign
        assert max(ours, key=abs) > 0  # sign convention: largest component positive
    assert np.allclose(stats.mean, pixels.mean(0))
    assert (stats.images, stats.pixels) == (6, len(pixels))
    assert PCAStats.from_dict(json.loads(json.dumps(stats.to_dict()))) == stats


def test_pca_subsamples_with_a_seed_and_downscales(tmp_path):
    paths = _pca_images(tmp_path, count=5, size=(128, 96))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    a = compute_pca_stats([*paths, tmp_path / "bad.png"], max_images=6, size=32)
    assert a.images == 5 and a.pixels == 5 * 43 * 32  # short side 96 -> 32; the bad file skipped
    b, c = (
        compute_pca_stats([Sample(p, 0) for p in paths], max_images=3, size=32, seed=s)
        for s in (0, 0)
    )
    assert b == c and b.images == 3
    with pytest.raises(ValueError):
        compute_pca_stats([])


def test_pca_lighting_adds_alexnet_offset_along_the_components():
    stats, std = PCA, 0.5
    img = torch.full((3, 8, 8), 0.5)
    out = _draw(PCALighting(stats, std), img, 7)
    torch.manual_seed(7)
    alpha = torch.randn(3, dtype=torch.float64) * std
    expected = torch.tensor(stats.eigvecs, dtype=torch.float64).T @ (
        alpha * torch.tensor(stats.eigvals, dtype=torch.float64)
    )
    assert torch.allclose(out - img, expected.float().view(3, 1, 1).expand(3, 8, 8), atol=1e-6)
    assert torch.equal(PCALighting(stats, 0.0)(img), img)
    with pytest.raises(TypeError, match="float"):
        PCALighting(stats, std)(torch.zeros(3, 4, 4, dtype=torch.uint8))


def test_color_shift_moves_each_channel_by_its_own_bounded_amount():
    img = torch.full((3, 8, 8), 0.5)
    offsets = set()
    for seed in range(10):
        diff = _draw(ColorShift(0.1), img, seed) - img
        per_channel = diff.flatten(1)
        assert torch.allclose(
            per_channel, per_channel[:, :1].expand_as(per_channel)
        )  # constant per channel
        assert per_channel.abs().max() <= 0.1 + 1e-6
        offsets.add(tuple(per_channel[:, 0].tolist()))
        assert len(set(per_channel[:, 0].tolist())) == 3  # R, G, B differ
    assert len(offsets) == 10


def test_pca_color_needs_the_training_statistics(image):
    with pytest.raises(ValueError, match="compute_pca_stats"):
        build_train_transform(SPEC, "pca-color")
    assert (
        describe_view("strong", PCA)
        == f"strong;pca={PCA.digest()}"
        != describe_view("strong", None)
    )


# ------------------------------------------------------------------------------- workers


def test_two_loaders_with_the_same_seed_and_two_workers_yield_identical_augmented_batches(tmp_path):
    samples = []
    for i in range(8):
        solid_image((30 * i, 120, 220 - 20 * i), (50, 40), seed=i, noise=40).save(
            tmp_path / f"{i}.png"
        )
        samples.append(Sample(tmp_path / f"{i}.png", i % 2))
    dataset = ImageDataset(
        samples, train_transform(SPEC, augment="strong", pca=PCA), decode_size=decode_size(SPEC)
    )

    def epochs(seed: int) -> list[list[Batch]]:
        loader = make_loader(dataset, batch_size=4, shuffle=True, workers=2, seed=seed)
        assert loader.persistent_workers and loader.num_workers == 2
        return [list(loader) for _ in range(2)]

    def same(x: list[Batch], y: list[Batch]) -> bool:
        return all(
            torch.equal(a.images, b.images) and torch.equal(a.indices, b.indices)
            for a, b in zip(x, y, strict=True)
        )

    first, again, other = epochs(0), epochs(0), epochs(1)
    assert same(first[0], again[0]) and same(first[1], again[1])
    assert not same(first[0], other[0])
    assert not same(first[0], first[1])  # a new epoch draws new views


# ------------------------------------------------------------------------- training loop


def test_train_one_epoch_takes_soft_targets_from_a_batch_transform():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 3),
    )
    batches = [
        Batch(torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 1]), torch.arange(4))
        for _ in range(3)
    ]
    seen = []

    def mix(images, labels):
        out = build_batch_transform("mixup", num_classes=3)(images, labels)
        seen.append(out[1])
        return out

    cfg = LoopConfig(epochs=1, batch_transform=mix)
    optimizer = torch.optim.SGD([{"params": list(model.parameters()), "lr": 0.1, "base_lr": 0.1}])
    stats, step = train_one_epoch(
        model,
        batches,
        optimizer,
        cfg=cfg,
        runtime=Runtime(progress=False),
        step=0,
        total_steps=3,
        warmup_steps=0,
        set_train_mode=lambda m: m.train(),
    )
    assert step == 3 and len(seen) == 3 and all(t.shape == (4, 3) for t in seen)
    assert np.isfinite(stats["train_loss"]) and 0 <= stats["train_acc"] <= 1


# ------------------------------------------------------------------ fit, eval, predict


def test_fit_records_the_pipeline_and_evaluation_never_augments(
    trained_data, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    result = visiontune.fit(
        trained_data,
        **TINY,
        strategy="full",
        epochs=1,
        batch_size=8,
        workers=0,
        out=str(out),
        progress=False,
        cache=False,
        augment="strong,mixup",
    )
    config = json.loads((out / "config.json").read_text())
    record = config["augment"]
    assert config["training"]["augment"] == "strong,mixup"
    assert (
        record["ops"] == parse_augment("strong,mixup").text
        and record["used_for"] == "training images"
    )
    assert any(step.startswith("PCALighting(std=0.1") for step in record["pipeline"])
    assert record["batch"].startswith("MixUp(alpha=0.2")
    pca = PCAStats.from_dict(record["pca"])
    assert pca.images == 15 and pca.eigvals[0] > pca.eigvals[1] > 0

    def refuse(*args, **kwargs):
        raise AssertionError("evaluation or prediction built an augmentation")

    monkeypatch.setattr(augment_ops, "build_image_pipeline", refuse)
    monkeypatch.setattr(augment_ops, "build_batch_pipeline", refuse)
    model = visiontune.load(out, precision="fp32")  # compared with fp32 forward passes below
    test_dir = trained_data / "test"
    rows = model.predict([test_dir], top_k=3, workers=0)
    metrics = visiontune.evaluate(out, test_dir, workers=0)
    assert metrics["num_images"] == len(rows) == 9
    # The probabilities are exactly those of the eval transform.
    spec = model.preprocess
    for row in rows[:3]:
        x = eval_transform(spec)(Image.open(row["path"]).convert("RGB")).unsqueeze(0)
        with torch.no_grad():
            probs = torch.softmax(model.model(x), 1)[0]
        top = row["top"][0]
        assert probs[list(model.labels.names).index(top["class"])].item() == pytest.approx(
            top["probability"], abs=1e-5
        )
    assert result.metrics["test"]["num_images"] == 9


# ---------------------------------------------------------------------------------- CLI


def test_augment_preview_writes_a_png_grid(tmp_path, capsys):
    data = make_class_folder(tmp_path / "data", {"cat": 3, "dog": 3}, size=(60, 44))
    png = tmp_path / "grid.png"
    args = [
        "augment-preview",
        str(data),
        "--augment",
        "strong,cutmix",
        "--out",
        str(png),
        "--rows",
        "3",
        "--cols",
        "4",
        "--size",
        "32",
        "--tile",
        "40",
    ]
    assert main(args) == 0
    assert "3 images x 4 draws" in capsys.readouterr().out
    first = png.read_bytes()
    assert first.startswith(b"\x89PNG")
    with Image.open(png) as grid:
        width, height = grid.size
        assert grid.mode == "RGB" and width > 5 * 40 and height > 3 * 40
    assert main(args) == 0 and png.read_bytes() == first  # seeded: the same picture again


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--augment", "spin"], "presets: none, light, standard, strong"),
        (["--augment", "rotate=500"], "[0, 180]"),
        (["--rows", "0"], "--rows"),
    ],
)
def test_augment_preview_errors_are_one_line_and_write_nothing(tmp_path, capsys, extra, message):
    data = make_class_folder(tmp_path / "data", {"cat": 2, "dog": 2})
    assert main(["augment-preview", str(data), "--out", str(tmp_path / "g.png"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "g.png").exists()
    assert main(["augment-preview", str(data), "--out", str(tmp_path / "g.jpg")]) == 2


def test_train_refuses_a_bad_augment_before_writing(tmp_path, capsys):
    data = make_split_folder(tmp_path / "data", {"train": {"cat": 3, "dog": 3}})
    code = main(["train", str(data), "--augment", "flip,spin", "--out", str(tmp_path / "run")])
    assert code == 2 and "unknown augmentation 'spin'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
