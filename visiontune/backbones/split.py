"""A backbone cut in two at a stage boundary: the frozen ``lower`` part and the ``upper`` rest.

``partial`` and ``gradual`` train only the top stages, so the frozen stages' output for one
image view never changes during a run; ``lower`` computes it once (``features.activations``
caches it) and each epoch runs ``upper`` alone. ``upper(lower(x))`` equals ``backbone(x)``:
``split_backbone`` checks that on a probe batch and refuses a split that does not hold.

timm has no generic "run from stage k" (``forward_intermediates`` stops early but cannot resume),
so the cut is written per family from its ``forward_features``: EfficientNet/MobileNet
(``conv_stem, bn1, blocks[...]``, then ``conv_head, bn2`` or the head's own conv) and ResNet
(``conv1, bn1, act1, maxpool, layer1..4``). Any other architecture gets None, and fine-tuning
runs on images as before.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from .classifier import Backbone

__all__ = ["BackboneSplit", "split_backbone"]


@dataclass(frozen=True)
class BackboneSplit:
    """``lower`` (stages before ``boundary``) and ``upper`` (``boundary`` up to pooled features);
    both share the backbone's parameters and modules, so training ``upper`` trains the backbone."""

    lower: nn.Module
    upper: nn.Module
    boundary: str  # the name of the first stage in ``upper`` (``Backbone.stages()``)
    shape: tuple[int, ...] = ()  # (C, H, W): one image's activations between the two parts


class _Lower(nn.Module):
    def __init__(self, modules: list[nn.Module]):
        super().__init__()
        self.parts = nn.ModuleList(modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for part in self.parts:
            x = part(x)
        return x


class _Upper(nn.Module):
    """The remaining stages, then what ``forward_features`` does after them and the body's head."""

    def __init__(self, body: nn.Module, modules: list[nn.Module], tail: list[nn.Module]):
        super().__init__()
        self.parts = nn.ModuleList(modules)
        self.tail = nn.ModuleList(tail)
        self._head = body.forward_head  # bound method: global pool (and head conv), no classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for part in [*self.parts, *self.tail]:
            x = part(x)
        return self._head(x)


def _families(body: nn.Module) -> tuple[list[nn.Module], list[nn.Module], list[nn.Module]] | None:
    """``(stem modules, one module per later stage, modules after the stages)``, or None."""
    names = {name for name, _ in body.named_children()}
    if {"conv_stem", "bn1", "blocks"} <= names and isinstance(body.blocks, nn.Sequential):
        tail = [getattr(body, n) for n in ("conv_head", "bn2") if n in names]
        if type(body).__name__ != "EfficientNet":  # MobileNetV3: the head conv is forward_head's
            tail = []
        return [body.conv_stem, body.bn1], list(body.blocks), tail
    if {"conv1", "bn1", "act1", "maxpool", "layer1", "layer4"} <= names:
        layers = [getattr(body, f"layer{i}") for i in range(1, 5)]
        return [body.conv1, body.bn1, body.act1, body.maxpool], layers, []
    return None


def _checked_shape(split: BackboneSplit, backbone: Backbone) -> tuple[int, ...] | None:
    """The ``(C, H, W)`` that ``lower`` hands ``upper`` for one image, if ``upper(lower(x))``
    equals ``backbone(x)`` on a probe batch (in eval mode, modes restored); else None."""
    size = backbone.preprocess.size
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    was_training = backbone.training
    device = next(backbone.parameters()).device
    backbone.eval()
    try:
        with torch.no_grad():
            x = x.to(device)
            middle = split.lower(x)
            whole, parts = backbone(x), split.upper(middle)
    finally:
        backbone.train(was_training)
    holds = whole.shape == parts.shape and torch.allclose(whole, parts, atol=1e-4, rtol=1e-4)
    return tuple(middle.shape[1:]) if holds else None


def split_backbone(backbone: Backbone, first_stage: int) -> BackboneSplit | None:
    """Cut ``backbone`` before stage ``first_stage`` (1 .. stages-1); None where this family
    cannot be cut, or the cut does not reproduce the backbone's output."""
    stages = backbone.stages()
    found = _families(backbone.body)
    if found is None or not 0 < first_stage < len(stages):
        return None
    stem, later, tail = found
    if len(later) != len(stages) - 1:  # the stage list is not stem + one per block group
        return None
    lower = _Lower(stem + later[: first_stage - 1])
    upper = _Upper(backbone.body, later[first_stage - 1 :], tail)
    split = BackboneSplit(lower, upper, stages[first_stage][0])
    shape = _checked_shape(split, backbone)
    return replace(split, shape=shape) if shape is not None else None
