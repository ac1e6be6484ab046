"""``--augment`` for a run, and the preview grid of what training sees."""

from __future__ import annotations

from pathlib import Path

from .._io import atomic_write
from ..data.augment import (
    PCAStats,
    build_batch_transform,
    compute_pca_stats,
    parse_augment,
)
from ..data.folder import scan_folder
from ..data.preview import render_preview
from ..data.transforms import train_transform
from ..errors import VisiontuneError
from ..specs import PreprocessSpec


def _augmentation(config, splits, strategy, preprocess) -> tuple[PCAStats | None, dict]:
    """``--augment`` for this run: the training pixels' principal components when ``pca-color`` is
    used (computed once, before training), and the exact pipeline, recorded in config.json."""
    augment = parse_augment(config.augment)
    if not strategy.uses_frozen_backbone:
        used_for = "training images"
    elif config.cache_views:
        used_for = f"{config.cache_views} cached view(s) of each training image"
    else:
        return None, {"text": str(augment), "ops": augment.text, "used_for": None, "pca": None}
    pca = compute_pca_stats(splits.train, seed=config.seed) if augment.uses_pca else None
    pipeline = train_transform(preprocess, augment=augment, pca=pca).transforms
    mixer = build_batch_transform(augment, num_classes=len(splits.labels))
    return pca, {
        "text": str(augment),
        "ops": augment.text,
        "used_for": used_for,
        "pipeline": [repr(t) for t in pipeline],
        "batch": repr(mixer) if mixer else None,
        "pca": pca.to_dict() if pca else None,
    }


def augment_preview(
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
    splits = scan_folder(data, val_fraction=0.0)
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
