"""Transforms derived from a backbone's ``PreprocessSpec`` (never hard-coded at call sites): the
one place call sites get the eval view (``preprocess``) and the training views (``augment``)."""

from __future__ import annotations

from torchvision.transforms import v2

from ..specs import PreprocessSpec
from .augment import AugmentSpec, PCAStats, build_train_transform
from .preprocess import decode_size, eval_geometry, eval_transform, interpolation_mode, normalize

__all__ = [
    "decode_size",
    "eval_geometry",
    "eval_transform",
    "interpolation_mode",
    "normalize",
    "train_transform",
]


def train_transform(
    spec: PreprocessSpec, *, augment: str | AugmentSpec = "standard", pca: PCAStats | None = None
) -> v2.Compose:
    """Training views: ``augment`` is a preset (``none``, ``light``, ``standard``, ``strong``) or
    a list of ops; see ``visiontune.data.augment``. ``standard``: random-resized crop + mirroring;
    ``none``: exactly the eval view. ``pca``: the training set's statistics, for ``pca-color``."""
    return build_train_transform(spec, augment, pca=pca)
