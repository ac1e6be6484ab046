"""Strategies are small objects: ``setup(model)`` freezes what must not train and returns the
optimizer's parameter groups; ``set_train_mode(model)`` applies the BatchNorm policy.

BatchNorm policy, the same in every phase: a frozen stage is kept in eval mode, so its running
statistics never move (a frozen layer whose statistics drift is not frozen); a trainable stage's
BatchNorm layers train normally. Pretrained layers train at ``lr * backbone_lr_mult`` so the new
head's large early gradients do not erase what the backbone learnt on ImageNet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from ..backbones import Classifier
from ..errors import VisiontuneError

__all__ = [
    "STRATEGIES",
    "FullStrategy",
    "HeadStrategy",
    "PartialStrategy",
    "StageRow",
    "Strategy",
    "make_strategy",
]


@dataclass(frozen=True)
class StageRow:
    """One line of the parameter-group table printed before training."""

    stage: str
    trainable: bool
    num_params: int
    lr: float
    batchnorm: str  # "train" (statistics update), "frozen" (eval mode) or "-" (none)


def _no_weight_decay(name: str, param: nn.Parameter) -> bool:
    # Biases and normalisation scales are not regularised (timm / nanoGPT convention).
    return param.ndim <= 1 or name.endswith(".bias")


class Strategy:
    """Base class: subclasses say which backbone stages train (the head always does)."""

    name = "base"
    uses_frozen_backbone = False

    def __init__(self, *, unfreeze: int | None = None):
        self.unfreeze = unfreeze

    def __repr__(self) -> str:
        return f"{type(self).__name__}(unfreeze={self.unfreeze!r})"

    def trainable_stages(self, num_stages: int) -> set[int]:
        raise NotImplementedError

    def _stage_plan(self, model: Classifier) -> list[tuple[str, list[str], bool]]:
        stages = model.backbone.stages()
        trainable = self.trainable_stages(len(stages))
        return [(name, params, i in trainable) for i, (name, params) in enumerate(stages)]

    def setup(
        self, model: Classifier, *, lr: float, backbone_lr_mult: float, weight_decay: float
    ) -> list[dict]:
        """Freeze and unfreeze parameters; return AdamW parameter groups (each with ``base_lr``)."""
        named = dict(model.backbone.named_parameters())
        self._frozen_module_names = []
        backbone_params: list[tuple[str, nn.Parameter]] = []
        for _, param_names, trainable in self._stage_plan(model):
            for pname in param_names:
                named[pname].requires_grad_(trainable)
                if trainable:
                    backbone_params.append((pname, named[pname]))
            if not trainable:
                self._frozen_module_names += sorted({n.rsplit(".", 1)[0] for n in param_names})
        for param in model.head.parameters():
            param.requires_grad_(True)
        groups = []
        for label, params, group_lr in (
            ("backbone", backbone_params, lr * backbone_lr_mult),
            ("head", list(model.head.named_parameters()), lr),
        ):
            decay = [p for n, p in params if not _no_weight_decay(n, p)]
            no_decay = [p for n, p in params if _no_weight_decay(n, p)]
            for suffix, plist, wd in (("", decay, weight_decay), ("/no_decay", no_decay, 0.0)):
                if plist:
                    groups.append({"name": label + suffix, "params": plist, "lr": group_lr,
                                   "base_lr": group_lr, "weight_decay": wd})
        return groups

    def set_train_mode(self, model: Classifier) -> None:
        """``model.train()``, then frozen stages back to eval so their BatchNorm stays fixed."""
        model.train()
        frozen = set(getattr(self, "_frozen_module_names", []))
        for name, module in model.backbone.named_modules():
            if name in frozen:
                module.eval()
        if self.uses_frozen_backbone:
            model.backbone.eval()

    def describe(self, model: Classifier, *, lr: float, backbone_lr_mult: float) -> list[StageRow]:
        rows = []
        for stage, param_names, trainable in self._stage_plan(model):
            prefixes = {n.rsplit(".", 1)[0] for n in param_names}
            has_bn = any(
                isinstance(m, nn.modules.batchnorm._BatchNorm)
                for n, m in model.backbone.named_modules()
                if n in prefixes
            )
            count = sum(model.backbone.get_parameter(n).numel() for n in param_names)
            rows.append(StageRow(stage, trainable, count, lr * backbone_lr_mult if trainable else 0.0,
                                 ("train" if trainable else "frozen") if has_bn else "-"))
        head_count = sum(p.numel() for p in model.head.parameters())
        rows.append(StageRow("head (new)", True, head_count, lr, "-"))
        return rows

    def state_dict(self) -> dict:
        return {"name": self.name, "unfreeze": self.unfreeze}


class HeadStrategy(Strategy):
    """Backbone frozen, BatchNorm statistics included; only the new head trains.

    Its features can be computed once and cached, so training is nearly free.
    """

    name = "head"
    uses_frozen_backbone = True

    def trainable_stages(self, num_stages: int) -> set[int]:
        return set()


class PartialStrategy(Strategy):
    """The first stages stay frozen; the last ``unfreeze`` stages (default: a third) and the head train."""

    name = "partial"

    def trainable_stages(self, num_stages: int) -> set[int]:
        count = self.unfreeze if self.unfreeze is not None else math.ceil(num_stages / 3)
        if not 0 <= count <= num_stages:
            raise VisiontuneError(
                f"--unfreeze must be between 0 and {num_stages} for this backbone, got {count}")
        return set(range(num_stages - count, num_stages))


class FullStrategy(Strategy):
    """Everything trains, starting from the pretrained weights."""

    name = "full"

    def trainable_stages(self, num_stages: int) -> set[int]:
        return set(range(num_stages))


STRATEGIES = {cls.name: cls for cls in (HeadStrategy, PartialStrategy, FullStrategy)}


def make_strategy(name: str, *, unfreeze: int | None = None) -> Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")
    return STRATEGIES[name](unfreeze=unfreeze)
