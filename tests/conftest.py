"""Shared fixtures: tiny generated image folders, and one small trained run reused by many tests.

Everything is generated in temporary folders with Pillow; nothing touches the network, the
user's cache folder or the working directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

# The real Yoga Poses copy in ../shared (beside the checkout), used by the slow integration tests.
YOGA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "yoga-poses"


def in_ci() -> bool:
    """``$CI`` is set (to anything but empty, ``0`` or ``false``), as CI services set it."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def require_or_skip(reason: str) -> None:
    """Skip the test for a missing resource (a dataset, a browser) -- but fail it under ``$CI``,
    where everything must be present and a skip would hide a test that never ran."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set: this must be present, so it fails, not skips)")
    pytest.skip(reason)


@pytest.fixture
def yoga() -> Path:
    """The shared Yoga Poses folder; skips where it is absent (fails under ``$CI``)."""
    if not YOGA.is_dir():
        require_or_skip(f"shared yoga dataset not present at {YOGA}")
    return YOGA


# The tiny random timm model used for fast loops (~100k parameters, 160 px input).
TINY = {"backbone": "test_efficientnet", "weights": "none"}

# Distinct colours, so even a tiny random backbone has something to separate.
COLOURS = {
    "cat": (210, 60, 40),
    "dog": (40, 70, 200),
    "bird": (60, 190, 60),
    "fish": (230, 210, 50),
}


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """The feature cache (``$VISIONTUNE_CACHE``) lives in a temporary folder for the session."""
    previous = os.environ.get("VISIONTUNE_CACHE")
    os.environ["VISIONTUNE_CACHE"] = str(tmp_path_factory.mktemp("visiontune-cache"))
    yield
    if previous is None:
        os.environ.pop("VISIONTUNE_CACHE", None)
    else:
        os.environ["VISIONTUNE_CACHE"] = previous


def solid_image(colour, size=(40, 32), *, seed: int = 0, noise: float = 12.0) -> Image.Image:
    """An RGB image of ``colour`` plus a little seeded noise (so no two files are identical)."""
    rng = np.random.default_rng(seed)
    w, h = size
    pixels = np.asarray(colour, dtype=np.float64) + rng.normal(0, noise, size=(h, w, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def shape_image(kind: str, size: int = 64, *, seed: int = 0) -> Image.Image:
    """Strongly different, learnable classes: a red disc on white or a blue square on black."""
    rng = np.random.default_rng(seed)
    background = (255, 255, 255) if kind == "disc" else (0, 0, 0)
    img = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(img)
    r = int(rng.integers(size // 5, size // 3))
    cx, cy = (int(v) for v in rng.integers(r, size - r, size=2))
    if kind == "disc":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(220, 20, 20))
    else:
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=(20, 40, 230))
    pixels = np.asarray(img, dtype=np.float64) + rng.normal(0, 8, size=(size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def make_class_folder(
    root: Path, counts: dict[str, int], *, size=(40, 32), seed: int = 0, ext: str = ".png"
) -> Path:
    """``root/<class>/<class>_<i><ext>``, ``counts[class]`` images per class; returns ``root``."""
    root = Path(root)
    for c, (name, count) in enumerate(counts.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        colour = COLOURS.get(name.lower(), (40 * c % 256, 255 - 50 * c % 256, 90))
        for i in range(count):
            solid_image(colour, size, seed=seed * 1000 + c * 100 + i).save(
                folder / f"{name}_{i}{ext}"
            )
    return root


def make_split_folder(root: Path, splits: dict[str, dict[str, int]], **kwargs) -> Path:
    """``root/<split>/<class>/...`` with per-split class counts; returns ``root``."""
    for s, (split, counts) in enumerate(splits.items()):
        make_class_folder(Path(root) / split, counts, seed=s + 1, **kwargs)
    return Path(root)


def make_shape_folder(
    root: Path, per_class: dict[str, int], *, size: int = 64, seed: int = 0
) -> Path:
    """``root/<split>/{disc,square}/`` from ``per_class = {split: images per class}``."""
    for s, (split, count) in enumerate(per_class.items()):
        for kind in ("disc", "square"):
            folder = Path(root) / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                shape_image(
                    kind, size, seed=seed * 10_000 + s * 1000 + i * 2 + (kind == "square")
                ).save(folder / f"{kind}_{i}.png")
    return Path(root)


def files_under(folder: Path) -> set[str]:
    """Every file and folder under ``folder`` (relative), to check that a command wrote nothing."""
    folder = Path(folder)
    if not folder.exists():
        return set()
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture
def class_folder(tmp_path) -> Path:
    """Flat layout: ``data/{cat,dog}/`` with 8 small images each."""
    return make_class_folder(tmp_path / "data", {"cat": 8, "dog": 8})


@pytest.fixture
def split_folder(tmp_path) -> Path:
    """Split layout: ``data/{train,val,test}/{cat,dog}/``."""
    return make_split_folder(
        tmp_path / "data",
        {"train": {"cat": 6, "dog": 6}, "val": {"cat": 2, "dog": 2}, "test": {"cat": 3, "dog": 3}},
    )


@pytest.fixture(scope="session")
def trained_data(tmp_path_factory) -> Path:
    """The data of ``trained_run``: train/val/test splits of three colour classes."""
    root = tmp_path_factory.mktemp("trained") / "data"
    return make_split_folder(
        root,
        {
            "train": {"bird": 5, "cat": 5, "dog": 5},
            "val": {"bird": 2, "cat": 2, "dog": 2},
            "test": {"bird": 3, "cat": 3, "dog": 3},
        },
    )


@pytest.fixture(scope="session")
def trained_run(trained_data, tmp_path_factory):
    """One tiny end-to-end run (test_efficientnet, strategy full, 1 epoch); a ``FitResult``."""
    import visiontune

    out = tmp_path_factory.mktemp("runs") / "tiny-run"
    return visiontune.fit(
        trained_data,
        **TINY,
        strategy="full",
        epochs=1,
        batch_size=8,
        workers=0,
        out=str(out),
        progress=False,
        cache=False,
    )
