"""The transforms behind ``augment.py``'s names (imported lazily: this module loads torch), built
on the eval view's pieces in ``preprocess``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from ..specs import PreprocessSpec
from .preprocess import interpolation_mode, normalize

if TYPE_CHECKING:  # pragma: no cover
    from .augment import AugmentSpec, PCAStats

__all__ = ["ColorShift", "LocalWarp", "PCALighting", "build_batch_pipeline", "build_image_pipeline"]


class _FloatColourTransform(v2.Transform):
    """Adds one random RGB offset per image to a float image in [0, 1], then clips to [0, 1]."""

    _transformed_types = (torch.Tensor,)

    def offset(self) -> torch.Tensor:  # (3,)
        raise NotImplementedError

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"offset": self.offset()}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not inpt.is_floating_point():
            raise TypeError(
                f"{type(self).__name__} needs a float image in [0, 1] (after ToDtype), "
                f"got {inpt.dtype}"
            )
        offset = params["offset"].to(inpt.device, inpt.dtype).view(3, 1, 1)
        out = (inpt.as_subclass(torch.Tensor) + offset).clamp_(0.0, 1.0)
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out


class ColorShift(_FloatColourTransform):
    """Colour shifting: add a different uniform amount in ``[-max_offset, max_offset]`` to each of
    R, G and B (``max_offset`` in units of the full range, 1 = 255 grey levels)."""

    def __init__(self, max_offset: float) -> None:
        super().__init__()
        self.max_offset = float(max_offset)

    def offset(self) -> torch.Tensor:
        return (torch.rand(3) * 2 - 1) * self.max_offset

    def extra_repr(self) -> str:
        return f"max_offset={self.max_offset:g}"


class PCALighting(_FloatColourTransform):
    """AlexNet's lighting noise (Krizhevsky et al. 2012, section 4.1): add
    ``eigvecs^T @ (alpha * eigvals)`` to every pixel, ``alpha ~ N(0, std^2)`` drawn per image, where
    ``eigvals``/``eigvecs`` are the principal components of the training set's RGB pixels."""

    def __init__(self, stats: PCAStats, std: float) -> None:
        super().__init__()
        self.stats, self.std = stats, float(std)
        self.register_buffer(
            "eigvals", torch.tensor(stats.eigvals, dtype=torch.float64), persistent=False
        )
        self.register_buffer(
            "eigvecs", torch.tensor(stats.eigvecs, dtype=torch.float64), persistent=False
        )

    def offset(self) -> torch.Tensor:
        alpha = torch.randn(3, dtype=torch.float64) * self.std
        return (self.eigvecs.T @ (alpha * self.eigvals)).float()

    def extra_repr(self) -> str:
        vals = ", ".join(f"{v:.4g}" for v in self.stats.eigvals)
        vecs = ", ".join(
            "(" + ", ".join(f"{x:.4f}" for x in row) + ")" for row in self.stats.eigvecs
        )
        return f"std={self.std:g}, eigvals=({vals}), eigvecs=({vecs})"


class LocalWarp(v2.Transform):
    """Local warping (grid distortion): every node of a ``grid`` x ``grid`` lattice moves by a
    random offset of up to ``magnitude`` x the image size (border nodes stay put), and the offsets
    are interpolated bicubically into a smooth displacement field, applied with one bilinear
    resampling by torchvision's elastic kernel.

    The same kind of distortion as ``v2.ElasticTransform``, whose Gaussian blur of a full-size
    noise field cost 27 ms per 224 px image here; interpolating a coarse grid costs ~2 ms.
    Above ``magnitude`` ~0.06 (half a cell at ``grid=8``) neighbouring nodes can cross and fold.
    """

    _transformed_types = (torch.Tensor, PIL.Image.Image)

    def __init__(
        self, magnitude: float, *, grid: int = 8, fill: Sequence[float] | None = None
    ) -> None:
        super().__init__()
        self.magnitude, self.grid = float(magnitude), int(grid)
        self.fill = None if fill is None else [float(v) for v in fill]

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = F.get_size(flat_inputs[0])
        # Normalised coordinates span [-1, 1], so a fraction f of the size is 2f.
        nodes = (torch.rand(1, 2, self.grid + 1, self.grid + 1) * 2 - 1) * (2 * self.magnitude)
        nodes[..., 0, :] = nodes[..., -1, :] = nodes[..., :, 0] = nodes[..., :, -1] = 0
        field = torch.nn.functional.interpolate(
            nodes, size=(height, width), mode="bicubic", align_corners=True
        )
        return {"displacement": field.permute(0, 2, 3, 1)}  # 1 x H x W x (dx, dy)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(
            F.elastic,
            inpt,
            params["displacement"],
            interpolation=InterpolationMode.BILINEAR,
            fill=self.fill,
        )

    def extra_repr(self) -> str:
        return f"magnitude={self.magnitude:g}, grid={self.grid}"


def _fill(spec: PreprocessSpec) -> list[int]:
    # Areas uncovered by rotation, shear or warping get the normalisation mean: zeros once
    # normalised, the least informative value.
    return [round(255 * m) for m in spec.mean]


def build_image_pipeline(
    spec: PreprocessSpec, augment: AugmentSpec, pca: PCAStats | None
) -> v2.Compose:
    """uint8 ops (geometry, then policies and jitter), float conversion, float colour ops,
    normalisation: the fixed order ``augment.py`` documents."""
    ops = dict(augment.image_ops.ops)
    fill = _fill(spec)
    to_float, normalise = normalize(spec)  # ToDtype(float32, scale=True), Normalize
    return v2.Compose(
        [
            v2.ToImage(),
            *_geometry(spec, ops, fill),
            *_policies_and_jitter(ops, fill),
            to_float,
            *_float_colour(ops, pca),
            normalise,
        ]
    )


def _geometry(spec: PreprocessSpec, s: dict, fill: list[int]) -> list:
    # Geometry on uint8 tensors (see preprocess.py); crop first, so later ops work at the
    # model's input size. Rotation, shear and warping resample bilinearly (bicubic is slower and
    # buys nothing for a random distortion).
    if "crop" in s:
        steps: list = [
            v2.RandomResizedCrop(
                spec.size,
                scale=(s["crop"], 1.0),
                interpolation=interpolation_mode(spec),
                antialias=True,
            )
        ]
    else:
        steps = [
            v2.Resize(spec.resize_size, interpolation=interpolation_mode(spec), antialias=True),
            v2.CenterCrop(spec.size),
        ]
    if "flip" in s:
        steps.append(v2.RandomHorizontalFlip(p=s["flip"]))
    if "rotate" in s or "shear" in s:  # one affine warp, one resampling
        shear = s.get("shear")
        steps.append(
            v2.RandomAffine(
                degrees=s.get("rotate", 0.0),
                shear=(-shear, shear, -shear, shear) if shear else None,
                interpolation=InterpolationMode.BILINEAR,
                fill=fill,
            )
        )
    if "warp" in s:
        steps.append(LocalWarp(s["warp"], fill=fill))
    return steps


def _policies_and_jitter(s: dict, fill: list[int]) -> list:
    steps: list = []
    if "randaugment" in s:
        steps.append(v2.RandAugment(num_ops=2, magnitude=int(s["randaugment"]), fill=fill))
    if "trivialaugment" in s:
        trivial = v2.TrivialAugmentWide(fill=fill)
        steps.append(
            trivial
            if s["trivialaugment"] >= 1
            else v2.RandomApply([trivial], p=s["trivialaugment"])
        )
    if "jitter" in s:
        j = s["jitter"]
        steps.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j, hue=min(0.5, j / 4)))
    return steps


def _float_colour(s: dict, pca: PCAStats | None) -> list:
    steps: list = []
    if "color-shift" in s:
        steps.append(ColorShift(s["color-shift"]))
    if "pca-color" in s:
        if pca is None:
            raise ValueError(
                "pca-color needs the training set's RGB principal components: pass "
                "pca=compute_pca_stats(training samples)"
            )
        steps.append(PCALighting(pca, s["pca-color"]))
    return steps


def build_batch_pipeline(augment: AugmentSpec, num_classes: int):
    mixers = []
    if "mixup" in augment:
        mixers.append(v2.MixUp(alpha=augment.strength("mixup"), num_classes=num_classes))
    if "cutmix" in augment:
        mixers.append(v2.CutMix(alpha=augment.strength("cutmix"), num_classes=num_classes))
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)
