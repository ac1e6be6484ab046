"""A picture of what training sees: sample images down the rows, augmented draws across."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .._io import atomic_write
from ..errors import VisiontuneError
from ..specs import PreprocessSpec
from .augment import (
    AugmentSpec,
    PCAStats,
    build_batch_transform,
    build_train_transform,
    compute_pca_stats,
    parse_augment,
)
from .dataset import scan_data
from .folder import Sample
from .images import ImageDecodeError, decode_image
from .transforms import decode_size, eval_transform

__all__ = ["pick_preview_samples", "render_preview", "write_augment_preview"]

_MARGIN, _HEADER, _GAP = 8, 22, 4


def pick_preview_samples(samples: Sequence[Sample], rows: int, *, seed: int = 0) -> list[Sample]:
    """``rows`` samples taking each class in turn (seeded within a class), so classes vary."""
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(s.label, []).append(s)
    queues = [
        [group[i] for i in rng.permutation(len(group))] for _, group in sorted(by_class.items())
    ]
    picked: list[Sample] = []
    while len(picked) < rows and any(queues):
        for queue in queues:
            if queue and len(picked) < rows:
                picked.append(queue.pop(0))
    return picked


def _to_uint8(batch: torch.Tensor, spec: PreprocessSpec) -> np.ndarray:
    """Undo ``Normalize``: (N, 3, H, W) normalised floats -> (N, H, W, 3) uint8."""
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    pixels = (batch * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).numpy()


def _font(px: int):
    try:
        return ImageFont.load_default(size=px)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def render_preview(
    samples: Sequence[Sample],
    class_names: Sequence[str],
    spec: PreprocessSpec,
    augment: str | AugmentSpec,
    *,
    pca: PCAStats | None = None,
    rows: int = 4,
    cols: int = 6,
    seed: int = 0,
    tile: int | None = None,
) -> tuple[Image.Image, list[Sample]]:
    """The grid image and the samples shown. Column 0 is each image's eval view; columns 1..cols
    are training draws (seeded). Batch ops (mixup/cutmix) mix the images of one column, as they
    would mix a batch. ``tile``: displayed pixels per image (default: the input size)."""
    augment = parse_augment(augment)
    train, evaluate = build_train_transform(spec, augment, pca=pca), eval_transform(spec)
    images, shown = [], []
    for sample in pick_preview_samples(samples, len(samples), seed=seed):
        if len(shown) == rows:
            break
        try:
            images.append(decode_image(sample.path, min_short_side=decode_size(spec)).image)
        except ImageDecodeError:
            continue
        shown.append(sample)
    if not shown:
        raise ValueError("no decodable images to preview")
    mixer = build_batch_transform(augment, num_classes=len(shown))
    columns = [torch.stack([evaluate(im) for im in images])]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(cols):
            batch = torch.stack([train(im) for im in images])
            if mixer is not None and len(shown) > 1:
                batch, _ = mixer(batch, torch.arange(len(shown)))
            columns.append(batch)
    tiles = [_to_uint8(c, spec) for c in columns]  # per column: (rows, H, W, 3)
    return _compose(tiles, [class_names[s.label] for s in shown], tile or spec.size), shown


def _compose(columns: list[np.ndarray], row_names: list[str], tile: int) -> Image.Image:
    font = _font(max(10, tile // 10))
    draw_probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(int(draw_probe.textlength(n, font=font)) for n in row_names) + _MARGIN
    rows = len(row_names)
    width = _MARGIN + label_w + len(columns) * (tile + _GAP) - _GAP + _MARGIN
    height = _HEADER + rows * (tile + _GAP) - _GAP + _MARGIN
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for c, column in enumerate(columns):
        x = _MARGIN + label_w + c * (tile + _GAP)
        draw.text(
            (x + tile // 2, _HEADER // 2),
            "eval view" if c == 0 else f"draw {c}",
            fill="black",
            font=font,
            anchor="mm",
        )
        for r in range(rows):
            img = Image.fromarray(column[r])
            if img.size != (tile, tile):
                img = img.resize((tile, tile), Image.Resampling.LANCZOS)
            canvas.paste(img, (x, _HEADER + r * (tile + _GAP)))
    for r, name in enumerate(row_names):
        y = _HEADER + r * (tile + _GAP) + tile // 2
        draw.text((_MARGIN, y), name, fill="black", font=font, anchor="lm")
    return canvas


def write_augment_preview(
    data: str | Path,
    out: str | Path,
    *,
    augment: str = "standard",
    rows: int = 4,
    cols: int = 6,
    seed: int = 0,
    size: int = 224,
    tile: int | None = None,
) -> dict:
    """Write a PNG grid of what training sees: ``rows`` training images of ``data`` (classes in
    turn), each as its eval view and then ``cols`` seeded augmented draws at ``size`` pixels."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise VisiontuneError(f"--out must end in .png, got {out.name}")
    for name, value, low in (
        ("--rows", rows, 1),
        ("--cols", cols, 1),
        ("--size", size, 8),
        ("--tile", tile, 8),
    ):
        if value is not None and value < low:
            raise VisiontuneError(f"{name} must be at least {low}, got {value}")
    try:
        spec = parse_augment(augment)
    except ValueError as exc:
        raise VisiontuneError(f"--augment: {exc}") from None
    splits = scan_data(data, val_fraction=0.0)
    pca = compute_pca_stats(splits.train, seed=seed) if spec.uses_pca else None
    preprocess = PreprocessSpec(size=size)
    try:
        grid, shown = render_preview(
            splits.train,
            splits.labels.names,
            preprocess,
            spec,
            pca=pca,
            rows=rows,
            cols=cols,
            seed=seed,
            tile=tile,
        )
    except ValueError as exc:
        raise VisiontuneError(f"{data}: {exc}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: grid.save(tmp, format="PNG", optimize=True))
    return {
        "out": str(out),
        "augment": str(spec),
        "ops": spec.text,
        "rows": len(shown),
        "cols": cols,
        "size": list(grid.size),
        "images": [str(s.path) for s in shown],
        "pca": pca.to_dict() if pca else None,
    }
