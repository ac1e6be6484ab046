"""The frozen stages' outputs, computed once per image view and kept in the feature cache.

A ``BackboneSplit``'s ``lower`` part turns a preprocessed image into an activation map
``(C, H, W)``; stored flattened, it is one row of a ``FeatureCache`` like a pooled feature. The
cache's ``pooling`` field names the cut (``activations@<stage>``) and its ``view`` the augmented
view, and the key hashes the weights, so a cache is never read for another boundary, view or
network: those make a new key, and their activations are computed afresh.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from ..backbones.split import BackboneSplit
from ..data.folder import Sample
from .extract import FeatureSet

__all__ = [
    "ActivationViews",
    "Flattened",
    "activation_pooling",
    "common_samples",
]


def activation_pooling(split: BackboneSplit) -> str:
    """The feature cache's ``pooling`` for activations entering ``split.boundary``."""
    return f"activations@{split.boundary}"


class Flattened(nn.Module):
    """``module(x).flatten(1)``: activation maps as cache rows."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x).flatten(1)


def common_samples(views: Sequence[FeatureSet]) -> list[FeatureSet]:
    """The views restricted to the images every one of them holds, in the first view's order
    (a file that failed to decode once is left out of all)."""
    shared = set.intersection(*({s.path for s in v.samples} for v in views))
    out = []
    for view in views:
        where = {s.path: i for i, s in enumerate(view.samples)}
        order = [where[s.path] for s in views[0].samples if s.path in shared]
        out.append(
            FeatureSet(
                view.features[order],
                view.labels[order],
                [view.samples[i] for i in order],
                computed=view.computed,
                from_cache=view.from_cache,
            )
        )
    return out


class ActivationViews(Dataset):
    """Cached activations in ``ImageDataset``'s ``(input, label, index, note, path)`` form.

    Epoch ``e`` reads view ``e mod K`` (``set_epoch``): each view stands for a fresh
    augmentation of the images, reused every K epochs.
    """

    def __init__(self, views: Sequence[FeatureSet], shape: tuple[int, ...]):
        if not views:
            raise ValueError("need at least one view")
        self.views = common_samples(views) if len(views) > 1 else list(views)
        self.shape = tuple(shape)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def samples(self) -> list[Sample]:
        return self.views[0].samples

    def __len__(self) -> int:
        return len(self.views[0])

    def __getitem__(self, index: int):
        view = self.views[self.epoch % len(self.views)]
        return view.features[index].view(self.shape), view.labels[index].tolist(), index, None, None
