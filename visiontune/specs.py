"""Frozen, JSON-round-trippable specs shared by every layer.

They sit at the bottom of the import graph: nothing here imports the rest of the package.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

__all__ = ["INTERPOLATIONS", "LabelMap", "PreprocessSpec", "WeightsSpec"]

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


@dataclass(frozen=True)
class PreprocessSpec:
    """How the backbone's pretraining fed it images; travels with the weights into every bundle.

    Evaluation resizes the short side to ``size / crop_pct`` and centre-crops ``size`` pixels,
    then normalises with ``mean``/``std`` (timm's and torchvision's convention).

    >>> spec = PreprocessSpec(size=224, crop_pct=0.875)
    >>> spec.resize_size, PreprocessSpec.from_dict(spec.to_dict()) == spec
    (256, True)
    """

    size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"
    crop_pct: float = 0.875

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation {self.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}"
            )
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.size < 8:
            raise ValueError(f"size must be at least 8 pixels, got {self.size}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need three values (R, G, B)")

    @property
    def resize_size(self) -> int:
        """Short side before the centre crop."""
        return int(round(self.size / self.crop_pct))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessSpec:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_timm_config(cls, cfg: dict) -> PreprocessSpec:
        """Build from a timm ``pretrained_cfg`` / ``resolve_data_config`` dict."""
        interpolation = cfg.get("interpolation", "bicubic")
        if interpolation not in INTERPOLATIONS:
            interpolation = "bicubic"
        return cls(
            size=int(cfg.get("input_size", (3, 224, 224))[-1]),
            mean=tuple(cfg.get("mean", cls.mean)),
            std=tuple(cfg.get("std", cls.std)),
            interpolation=interpolation,
            crop_pct=float(cfg.get("crop_pct", 0.875)),
        )


@dataclass(frozen=True)
class WeightsSpec:
    """What a backbone's weights are: how to feed them, where they came from, which file.

    One frozen object per ``Backbone``, given at construction and never patched: a backbone with
    other weights is a new ``Backbone`` (``Backbone.with_weights``). ``sha256`` is the hash of
    the weights file they were loaded from (None for random initialisation or hub weights).
    ``fine_tuned``: the tensors were trained after that file was loaded (a run's bundle), so the
    file's hash no longer names them; ``identity`` is then None and whoever needs to name these
    weights (the feature cache) hashes the tensors themselves.
    """

    preprocess: PreprocessSpec
    source: (
        str  # human-readable: "embedded package ...", "local file PATH", "random initialisation"
    )
    sha256: str | None = None
    fine_tuned: bool = False

    @property
    def identity(self) -> str | None:
        """A hash naming exactly these weights, or None when only their tensors can."""
        return None if self.fine_tuned else self.sha256

    def to_dict(self) -> dict:
        return {
            "preprocess": self.preprocess.to_dict(),
            "source": self.source,
            "sha256": self.sha256,
            "fine_tuned": self.fine_tuned,
        }

    @classmethod
    def from_dict(cls, data: dict) -> WeightsSpec:
        return cls(
            preprocess=PreprocessSpec.from_dict(data["preprocess"]),
            source=str(data["source"]),
            sha256=data.get("sha256"),
            fine_tuned=bool(data.get("fine_tuned", False)),
        )


@dataclass(frozen=True)
class LabelMap:
    """Class names in index order; index ``i`` of a model's output is ``names[i]``."""

    names: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(self.names))
        if len(set(n.lower() for n in self.names)) != len(self.names):
            raise ValueError(f"class names must be unique (ignoring case): {self.names}")

    def __len__(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        lowered = [n.lower() for n in self.names]
        return lowered.index(name.lower())
