"""Training-time augmentation: named ops with strengths, presets, and AlexNet PCA lighting.

A pipeline is written as a preset name or as a comma-separated list of ops, each with an
optional strength (``op=strength``)::

    standard                           # the default: random-resized crop + mirroring
    flip,crop,rotate=15,pca-color=0.1  # ops; a bare name takes the op's default strength
    strong,pca-color=0.2               # a preset first, then ops that add to it or override it

>>> spec = parse_augment("crop=0.5,flip")
>>> str(spec)
'light'
>>> parse_augment("flip,rotate=15").text
'flip=0.5,rotate=15'

Ops run in a fixed order whatever order they are listed in: crop (or, without ``crop``, the
eval resize + centre crop), flip, rotate/shear (one affine warp), warp, randaugment,
trivialaugment, jitter on uint8 tensors (fast, SIMD kernels); then conversion to float in
[0, 1], color-shift, pca-color, and normalisation last. The output is always a float32
``(3, size, size)`` tensor. ``mixup``/``cutmix`` act on whole batches, in the training loop.

Presets:

- ``none``: the eval view (resize the short side to ``size / crop_pct``, centre-crop ``size``).
- ``light``: ``flip`` + ``crop=0.5`` (random-resized crop keeping 50-100 % of the area).
- ``standard``: ``flip`` + ``crop=0.35``; visiontune's behaviour before augmentation became
  configurable, kept identical so earlier results reproduce.
- ``strong``: ``standard`` + ``rotate=15``, ``shear=10``, ``jitter=0.3``, ``color-shift=0.05``,
  ``pca-color=0.1``.

This module imports no torch at import time, so the CLI can list the ops in its help cheaply;
the transforms themselves live in ``augment_ops``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from torchvision.transforms import v2

    from ..specs import PreprocessSpec

__all__ = [
    "OPS",
    "PRESETS",
    "AugmentSpec",
    "OpInfo",
    "PCAStats",
    "augment_help",
    "build_batch_transform",
    "build_train_transform",
    "compute_pca_stats",
    "describe_view",
    "parse_augment",
]


@dataclass(frozen=True)
class OpInfo:
    """One named op: what its strength means, its default and its valid range."""

    name: str
    strength: str  # what the number means
    default: float
    low: float
    high: float
    low_open: bool = False  # the strength must be > low, not >= low
    integer: bool = False
    batch: bool = False  # acts on whole batches (images and labels), in the training loop
    help: str = ""

    @property
    def range_text(self) -> str:
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"

    def check(self, value: float) -> float:
        ok = math.isfinite(value) and (value > self.low if self.low_open else value >= self.low)
        ok = ok and value <= self.high and (not self.integer or value == int(value))
        if not ok:
            kind = "an integer" if self.integer else "a number"
            raise ValueError(
                f"{self.name} strength ({self.strength}) must be {kind} in {self.range_text}, "
                f"got {value:g}"
            )
        return float(value)


# In pipeline order: the order the ops run in, and the order of the canonical text.
OPS: dict[str, OpInfo] = {
    op.name: op
    for op in (
        OpInfo(
            "crop",
            "smallest area fraction kept",
            0.35,
            0.0,
            1.0,
            low_open=True,
            help="random-resized crop to the input size (aspect 3/4-4/3)",
        ),
        OpInfo("flip", "probability", 0.5, 0.0, 1.0, help="horizontal mirroring"),
        OpInfo("rotate", "max degrees", 15.0, 0.0, 180.0, help="random rotation within +-degrees"),
        OpInfo(
            "shear",
            "max degrees",
            10.0,
            0.0,
            45.0,
            help="random shear along x and y within +-degrees",
        ),
        OpInfo(
            "warp",
            "max node offset (1 = image size)",
            0.03,
            0.0,
            0.1,
            help="local warping: an 8x8 grid's nodes move randomly, smoothly interpolated between",
        ),
        OpInfo(
            "randaugment",
            "magnitude",
            9.0,
            0.0,
            30.0,
            integer=True,
            help="RandAugment: 2 random ops per image at this magnitude",
        ),
        OpInfo(
            "trivialaugment",
            "probability",
            1.0,
            0.0,
            1.0,
            help="TrivialAugment (wide): one random op at a random magnitude",
        ),
        OpInfo(
            "jitter",
            "factor range",
            0.3,
            0.0,
            1.0,
            help="brightness/contrast/saturation x [1-s, 1+s], hue +-s/4",
        ),
        OpInfo(
            "color-shift",
            "max offset (1 = full scale)",
            0.05,
            0.0,
            0.5,
            help="add a different uniform offset in [-s, s] to each of R, G and B",
        ),
        OpInfo(
            "pca-color",
            "std of the alphas",
            0.1,
            0.0,
            1.0,
            help="AlexNet lighting noise along the training set's RGB principal components",
        ),
        OpInfo(
            "mixup",
            "Beta alpha",
            0.2,
            0.0,
            10.0,
            low_open=True,
            batch=True,
            help="batch-level: blend pairs of images and their labels",
        ),
        OpInfo(
            "cutmix",
            "Beta alpha",
            1.0,
            0.0,
            10.0,
            low_open=True,
            batch=True,
            help="batch-level: paste a box from another image, labels mixed by area",
        ),
    )
}

PRESETS: dict[str, tuple[tuple[str, float], ...]] = {
    "none": (),
    "light": (("crop", 0.5), ("flip", 0.5)),
    "standard": (("crop", 0.35), ("flip", 0.5)),
    "strong": (
        ("crop", 0.35),
        ("flip", 0.5),
        ("rotate", 15.0),
        ("shear", 10.0),
        ("jitter", 0.3),
        ("color-shift", 0.05),
        ("pca-color", 0.1),
    ),
}
PRESET_HELP = {
    "none": "the eval view: resize + centre crop, no randomness",
    "light": "flip + crop=0.5",
    "standard": "flip + crop=0.35 (the default)",
    "strong": "standard + rotate=15, shear=10, jitter=0.3, color-shift=0.05, pca-color=0.1",
}
_ORDER = {name: i for i, name in enumerate(OPS)}


def _valid_values() -> str:
    return f"presets: {', '.join(PRESETS)}; ops: {', '.join(OPS)}"


@dataclass(frozen=True)
class AugmentSpec:
    """An augmentation pipeline: ``(op, strength)`` pairs, kept in pipeline order.

    Build it with ``parse_augment``; ``str(spec)`` is its canonical text (a preset name when it is
    exactly a preset), which ``parse_augment`` turns back into an equal spec.
    """

    ops: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        ops = []
        for name, strength in self.ops:
            if name not in OPS:
                raise ValueError(f"unknown augmentation {name!r}; {_valid_values()}")
            ops.append((name, OPS[name].check(float(strength))))
        names = [name for name, _ in ops]
        if len(set(names)) != len(names):
            raise ValueError(f"an op is listed twice: {', '.join(names)}")
        object.__setattr__(self, "ops", tuple(sorted(ops, key=lambda op: _ORDER[op[0]])))

    @property
    def text(self) -> str:
        """Every op with its strength, in pipeline order; ``none`` when empty."""
        return ",".join(f"{name}={strength:g}" for name, strength in self.ops) or "none"

    def __str__(self) -> str:
        for preset, ops in PRESETS.items():
            if AugmentSpec(ops) == self:
                return preset
        return self.text

    def __contains__(self, name: str) -> bool:
        return any(op == name for op, _ in self.ops)

    def strength(self, name: str) -> float | None:
        return next((s for op, s in self.ops if op == name), None)

    @property
    def image_ops(self) -> AugmentSpec:
        """The per-image part (what a dataset's transform does)."""
        return AugmentSpec(tuple(op for op in self.ops if not OPS[op[0]].batch))

    @property
    def batch_ops(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.ops if OPS[name].batch)

    @property
    def uses_pca(self) -> bool:
        return "pca-color" in self

    def to_dict(self) -> dict:
        return {"text": str(self), "ops": [{"op": name, "strength": s} for name, s in self.ops]}

    @classmethod
    def from_dict(cls, data: dict) -> AugmentSpec:
        return cls(tuple((op["op"], op["strength"]) for op in data["ops"]))


def parse_augment(text: str | AugmentSpec) -> AugmentSpec:
    """A preset name, or ``op[=strength]`` items separated by commas (a preset may come first).

    Raises ``ValueError`` naming the valid presets and ops, or the valid range of a strength.
    """
    if isinstance(text, AugmentSpec):
        return text
    if not isinstance(text, str) or not text.strip():
        raise ValueError(
            f"augmentation must be a preset or a list of ops, got {text!r}; {_valid_values()}"
        )
    items = [item.strip() for item in text.strip().lower().split(",")]
    ops: dict[str, float] = {}
    explicit: set[str] = set()
    for position, item in enumerate(items):
        name, sep, value = (part.strip() for part in item.partition("="))
        if name in PRESETS:
            if position or sep:
                raise ValueError(
                    f"a preset ({', '.join(PRESETS)}) can only come first, without a "
                    f"strength; got {item!r} in {text!r}"
                )
            ops.update(PRESETS[name])
            continue
        if name not in OPS:
            raise ValueError(
                f"unknown augmentation {name or item!r} in {text!r}; {_valid_values()}"
            )
        if name in explicit:
            raise ValueError(f"{name} is listed twice in {text!r}")
        info = OPS[name]
        if not sep:
            strength = info.default
        else:
            try:
                strength = float(value)
            except ValueError:
                raise ValueError(
                    f"{name} strength ({info.strength}) must be a number in "
                    f"{info.range_text}, got {value!r}"
                ) from None
        ops[name] = info.check(strength)
        explicit.add(name)
    return AugmentSpec(tuple(ops.items()))


def describe_view(augment: str | AugmentSpec, pca: PCAStats | None = None) -> str:
    """What identifies an augmented view for the feature cache: the per-image ops, and the PCA
    statistics they were drawn with. ``standard`` stays ``standard``, as caches made before
    augmentation was configurable were keyed by it."""
    text = str(parse_augment(augment).image_ops)
    return text if pca is None else f"{text};pca={pca.digest()}"


def augment_help() -> str:
    """The ``--augment`` help text: presets, then every op with its strength and range."""
    lines = [
        "augmentation of training images: a preset, or ops with optional strengths,",
        "e.g. flip,crop=0.5,rotate=15,pca-color=0.1 or strong,pca-color=0.2",
        "(default: standard). Evaluation and prediction never augment.",
        "presets:",
    ]
    lines += [f"  {name:<15}{PRESET_HELP[name]}" for name in PRESETS]
    lines.append("ops (strength: default, range):")
    for op in OPS.values():
        lines.append(f"  {op.name:<15}{op.help}")
        lines.append(f"  {'':<15}  {op.strength}: {op.default:g}, {op.range_text}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- PCA lighting


@dataclass(frozen=True)
class PCAStats:
    """Principal components of a dataset's RGB pixels (values in [0, 1]), for ``pca-color``.

    ``eigvals`` in decreasing order; ``eigvecs[i]`` is the unit RGB vector of ``eigvals[i]``,
    its sign fixed so that its largest component is positive.
    """

    eigvals: tuple[float, float, float]
    eigvecs: tuple[tuple[float, float, float], ...]
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    images: int = 0
    pixels: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "eigvals", tuple(float(v) for v in self.eigvals))
        object.__setattr__(
            self, "eigvecs", tuple(tuple(float(v) for v in row) for row in self.eigvecs)
        )
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        if (
            len(self.eigvals) != 3
            or len(self.eigvecs) != 3
            or any(len(r) != 3 for r in self.eigvecs)
        ):
            raise ValueError("PCAStats needs 3 eigenvalues and 3 eigenvectors of 3 components")

    def to_dict(self) -> dict:
        return {
            "eigvals": list(self.eigvals),
            "eigvecs": [list(r) for r in self.eigvecs],
            "mean": list(self.mean),
            "images": self.images,
            "pixels": self.pixels,
        }

    @classmethod
    def from_dict(cls, data: dict) -> PCAStats:
        return cls(
            tuple(data["eigvals"]),
            tuple(tuple(r) for r in data["eigvecs"]),
            tuple(data.get("mean", (0.0, 0.0, 0.0))),
            int(data.get("images", 0)),
            int(data.get("pixels", 0)),
        )

    def digest(self) -> str:
        text = json.dumps([self.eigvals, self.eigvecs], separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def compute_pca_stats(
    samples: Sequence, *, max_images: int = 256, size: int = 64, seed: int = 0
) -> PCAStats:
    """The 3x3 covariance of RGB pixels over a seeded subsample of ``samples`` and its eigensystem.

    ``samples``: ``Sample``s or paths. Up to ``max_images`` images, each downscaled so its short
    side is at most ``size`` pixels (colour statistics barely change; decoding gets cheap). Files
    that cannot be decoded are skipped.
    """
    import numpy as np
    from PIL import Image

    from .images import ImageDecodeError, decode_image

    paths = [Path(getattr(s, "path", s)) for s in samples]
    if not paths:
        raise ValueError("compute_pca_stats needs at least one image")
    rng = np.random.default_rng(seed)
    chosen = sorted(
        rng.choice(len(paths), size=min(max_images, len(paths)), replace=False).tolist()
    )
    count, total, outer, images = 0, np.zeros(3), np.zeros((3, 3)), 0
    for i in chosen:
        try:
            img = decode_image(paths[i], min_short_side=size).image
        except ImageDecodeError:
            continue
        if min(img.size) > size:
            scale = size / min(img.size)
            img = img.resize(
                (max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                Image.Resampling.BILINEAR,
                reducing_gap=2.0,
            )
        pixels = np.asarray(img, dtype=np.float64).reshape(-1, 3) / 255.0
        count += len(pixels)
        total += pixels.sum(0)
        outer += pixels.T @ pixels
        images += 1
    if count < 2:
        raise ValueError("compute_pca_stats could not decode any of the images")
    mean = total / count
    cov = (outer - count * np.outer(mean, mean)) / (count - 1)
    eigvals, eigvecs = np.linalg.eigh(cov)  # ascending; columns are eigenvectors
    order = np.argsort(eigvals)[::-1]
    eigvals, eigvecs = np.clip(eigvals[order], 0.0, None), eigvecs[:, order].T
    signs = np.sign(eigvecs[np.arange(3), np.abs(eigvecs).argmax(1)])
    eigvecs = eigvecs * signs[:, None]
    return PCAStats(tuple(eigvals), tuple(map(tuple, eigvecs)), tuple(mean), images, count)


# ----------------------------------------------------------------------------------- builders


def build_train_transform(
    spec: PreprocessSpec, augment: str | AugmentSpec, *, pca: PCAStats | None = None
) -> v2.Compose:
    """The per-image training transform: PIL image or uint8 tensor -> float32 ``(3, size, size)``.

    ``pca``: the training set's ``PCAStats`` (``compute_pca_stats``), needed by ``pca-color``.
    Batch-level ops (``mixup``, ``cutmix``) are left to ``build_batch_transform``.
    """
    from .augment_ops import build_image_pipeline

    return build_image_pipeline(spec, parse_augment(augment), pca)


def build_batch_transform(augment: str | AugmentSpec, *, num_classes: int):
    """``(images, labels) -> (images, soft labels)`` for ``mixup``/``cutmix`` (one of the two,
    chosen at random per batch, when both are listed); ``None`` when the pipeline has neither."""
    from .augment_ops import build_batch_pipeline

    return build_batch_pipeline(parse_augment(augment), num_classes)
