"""Strategies are small objects: ``setup(model)`` freezes what must not train and returns the
optimizer's parameter groups; ``set_train_mode(model)`` applies the BatchNorm policy;
``on_epoch_start(epoch, model, optimizer)`` lets a plan change between epochs (``gradual``);
``describe`` is the table printed before training; ``state_dict`` goes into the run's config.

BatchNorm policy, the same in every phase: a frozen stage is kept in eval mode, so its running
statistics never move (a frozen layer whose statistics drift is not frozen); a trainable stage's
BatchNorm layers train normally, except under ``gradual``, whose fitted head needs the pretrained
statistics kept (``fixed_batchnorm_statistics``). Pretrained layers train at
``lr * backbone_lr_mult`` so the new head's large early gradients do not erase what the backbone
learnt on ImageNet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from ..backbones import Classifier
from ..choices import STRATEGIES as STRATEGY_NAMES
from ..errors import VisiontuneError

__all__ = [
    "STRATEGIES",
    "FullStrategy",
    "GradualStrategy",
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
    starts: int | None = (
        None  # trains from this epoch on (0-based; gradual unfreezing), else always
    )


def _no_weight_decay(name: str, param: nn.Parameter) -> bool:
    # Biases and normalisation scales are not regularised (timm / nanoGPT convention).
    return param.ndim <= 1 or name.endswith(".bias")


def _param_groups(
    label: str, params: list[tuple[str, nn.Parameter]], lr: float, weight_decay: float
) -> list[dict]:
    """AdamW groups for ``params``: decayed weights, then undecayed biases and norm scales."""
    decay = [p for n, p in params if not _no_weight_decay(n, p)]
    no_decay = [p for n, p in params if _no_weight_decay(n, p)]
    return [
        {"name": label + suffix, "params": plist, "lr": lr, "base_lr": lr, "weight_decay": wd}
        for suffix, plist, wd in (("", decay, weight_decay), ("/no_decay", no_decay, 0.0))
        if plist
    ]


class Strategy:
    """Base class: subclasses say which backbone stages train (the head always does)."""

    name = "base"
    uses_frozen_backbone = False
    warm_starts_head = False  # fits the head as a linear probe on cached features before training
    # Keep every BatchNorm layer's running statistics, trainable stages' included (their scale and
    # shift still train): for a head fitted on features normalised by the pretrained statistics.
    fixed_batchnorm_statistics = False

    def __init__(self, *, unfreeze: int | None = None):
        self.unfreeze = unfreeze

    def __repr__(self) -> str:
        return f"{type(self).__name__}(unfreeze={self.unfreeze!r})"

    def trainable_stages(self, num_stages: int) -> set[int]:
        raise NotImplementedError

    def lowest_trained_stage(self, num_stages: int) -> int:
        """The first stage that trains at any point of the run (``num_stages``: none does).
        Every stage below it stays frozen, BatchNorm included, so its output for an image view
        never changes and can be computed once (``training.activations``)."""
        return min(self.trainable_stages(num_stages), default=num_stages)

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
        return _param_groups(
            "backbone", backbone_params, lr * backbone_lr_mult, weight_decay
        ) + _param_groups("head", list(model.head.named_parameters()), lr, weight_decay)

    def set_train_mode(self, model: Classifier) -> None:
        """``model.train()``, then frozen stages back to eval so their BatchNorm stays fixed."""
        model.train()
        frozen = set(getattr(self, "_frozen_module_names", []))
        for name, module in model.backbone.named_modules():
            if name in frozen:
                module.eval()
        if self.uses_frozen_backbone:
            model.backbone.eval()
        elif self.fixed_batchnorm_statistics:
            for module in model.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def on_epoch_start(self, epoch: int, model: Classifier, optimizer) -> None:
        """Called before each training epoch (0-based); a fixed plan does nothing here."""

    def _planned(
        self, index: int, num_stages: int, *, lr: float, backbone_lr_mult: float, epochs: int | None
    ) -> tuple[bool, float, int | None]:
        """For ``describe``: (trains at some point, its LR, first epoch if not from the start)."""
        return index in self.trainable_stages(num_stages), lr * backbone_lr_mult, None

    def describe(
        self, model: Classifier, *, lr: float, backbone_lr_mult: float, epochs: int | None = None
    ) -> list[StageRow]:
        """One row per stage and one for the head: the plan printed before training."""
        rows = []
        stages = model.backbone.stages()
        for index, (stage, param_names) in enumerate(stages):
            trainable, stage_lr, starts = self._planned(
                index, len(stages), lr=lr, backbone_lr_mult=backbone_lr_mult, epochs=epochs
            )
            prefixes = {n.rsplit(".", 1)[0] for n in param_names}
            has_bn = any(
                isinstance(m, nn.modules.batchnorm._BatchNorm)
                for n, m in model.backbone.named_modules()
                if n in prefixes
            )
            count = sum(model.backbone.get_parameter(n).numel() for n in param_names)
            bn_trains = trainable and not self.fixed_batchnorm_statistics
            rows.append(
                StageRow(
                    stage,
                    trainable,
                    count,
                    stage_lr if trainable else 0.0,
                    ("train" if bn_trains else "frozen") if has_bn else "-",
                    starts,
                )
            )
        head_count = sum(p.numel() for p in model.head.parameters())
        rows.append(StageRow("head (new)", True, head_count, lr, "-"))
        return rows

    def state_dict(self) -> dict:
        """The plan's settings and progress, for the run's config and checkpoint."""
        return {"name": self.name, "unfreeze": self.unfreeze}

    def load_state_dict(self, state: dict, *, model: Classifier, optimizer) -> None:
        """Put a set-up plan (``setup`` done) where ``state`` says it was, without replaying
        epochs: a fixed plan only checks that ``state`` describes it."""
        if state != self.state_dict():
            raise VisiontuneError(f"strategy state {state} does not describe {self!r}")


class HeadStrategy(Strategy):
    """Backbone frozen, BatchNorm statistics included; only the new head trains.

    Its features can be computed once and cached, so training is nearly free.
    """

    name = "head"
    uses_frozen_backbone = True

    def trainable_stages(self, num_stages: int) -> set[int]:
        return set()


class PartialStrategy(Strategy):
    """The first stages stay frozen; the last ``unfreeze`` (default: a third) and the head train."""

    name = "partial"

    def trainable_stages(self, num_stages: int) -> set[int]:
        count = self.unfreeze if self.unfreeze is not None else math.ceil(num_stages / 3)
        if not 0 <= count <= num_stages:
            raise VisiontuneError(
                f"--unfreeze must be between 0 and {num_stages} for this backbone, got {count}"
            )
        return set(range(num_stages - count, num_stages))


class FullStrategy(Strategy):
    """Everything trains, starting from the pretrained weights."""

    name = "full"

    def trainable_stages(self, num_stages: int) -> set[int]:
        return set(range(num_stages))


class GradualStrategy(Strategy):
    """Head first, then one more stage per epoch from the top, deeper stages at smaller LRs.

    Gradual unfreezing with discriminative learning rates (ULMFiT, Howard & Ruder 2018) after a
    linear probe (linear-probe-then-fine-tune, Kumar et al. 2022): the head is fitted on cached
    frozen features before the first epoch (``warm_starts_head``). Epoch 0 trains the head alone,
    on augmented images, so it adapts to them before any pretrained stage gets its gradients
    (ULMFiT unfreezes the last layer first); epoch ``e`` trains the top ``min(e, unfreeze)``
    stages (default ``unfreeze``: all of them).
    The stage ``d`` places below the top trains at ``lr * backbone_lr_mult * lr_decay**d``: the
    lower, more generic layers move least. A stage not yet unfrozen is frozen in every sense;
    unfreezing adds its parameters to the optimizer.

    BatchNorm layers keep their pretrained running statistics throughout, unfrozen stages too (the
    Keras fine-tuning guide's rule; their scale and shift train). The fitted head expects features
    normalised by those statistics; in training mode each batch would be normalised by its own,
    which on data far from ImageNet is a different feature space: on scikit-learn's digits
    (BatchNorm shift 1.4) the first epoch's training loss rose above chance level and TEST
    accuracy fell from the probe's 94 % to 78 %.
    """

    name = "gradual"
    warm_starts_head = True
    fixed_batchnorm_statistics = True

    def __init__(self, *, unfreeze: int | None = None, lr_decay: float = 0.5):
        super().__init__(unfreeze=unfreeze)
        if not 0 < lr_decay <= 1:
            raise VisiontuneError(f"lr_decay must be in (0, 1], got {lr_decay}")
        self.lr_decay = lr_decay
        self.unfrozen = 0  # stages trainable now, counted from the top
        self._hparams = None

    def __repr__(self) -> str:
        return f"GradualStrategy(unfreeze={self.unfreeze!r}, lr_decay={self.lr_decay!r})"

    def limit(self, num_stages: int) -> int:
        """How many stages will be unfrozen in all."""
        count = num_stages if self.unfreeze is None else self.unfreeze
        if not 0 <= count <= num_stages:
            raise VisiontuneError(
                f"--unfreeze must be between 0 and {num_stages} for this backbone, got {count}"
            )
        return count

    def trainable_stages(self, num_stages: int) -> set[int]:
        self.limit(num_stages)
        return set(range(num_stages - self.unfrozen, num_stages))

    def lowest_trained_stage(self, num_stages: int) -> int:
        return num_stages - self.limit(num_stages)

    def stage_lr(self, depth: int, *, lr: float, backbone_lr_mult: float) -> float:
        """LR of the stage ``depth`` places below the top (0 = the one under the head)."""
        return lr * backbone_lr_mult * self.lr_decay**depth

    def setup(
        self, model: Classifier, *, lr: float, backbone_lr_mult: float, weight_decay: float
    ) -> list[dict]:
        self.unfrozen = 0
        self._hparams = {
            "lr": lr,
            "backbone_lr_mult": backbone_lr_mult,
            "weight_decay": weight_decay,
        }
        return super().setup(
            model, lr=lr, backbone_lr_mult=backbone_lr_mult, weight_decay=weight_decay
        )

    def on_epoch_start(self, epoch: int, model: Classifier, optimizer) -> None:
        """Unfreeze stages from the top until ``epoch`` of them (capped at ``limit``) train."""
        self._unfreeze_to(min(epoch, self.limit(len(model.backbone.stages()))), model, optimizer)

    def _unfreeze_to(self, target: int, model: Classifier, optimizer) -> None:
        """Make the top ``target`` stages trainable, each a new optimizer group at its LR."""
        if self._hparams is None:
            raise RuntimeError("call setup(model, ...) before unfreezing")
        stages = model.backbone.stages()
        named = dict(model.backbone.named_parameters())
        while self.unfrozen < target:
            depth = self.unfrozen
            stage, param_names = stages[len(stages) - 1 - depth]
            params = [(n, named[n]) for n in param_names]
            for _, param in params:
                param.requires_grad_(True)
            modules = {n.rsplit(".", 1)[0] for n in param_names}
            self._frozen_module_names = [n for n in self._frozen_module_names if n not in modules]
            group_lr = self.stage_lr(
                depth, lr=self._hparams["lr"], backbone_lr_mult=self._hparams["backbone_lr_mult"]
            )
            for group in _param_groups(
                f"backbone.{stage}", params, group_lr, self._hparams["weight_decay"]
            ):
                optimizer.add_param_group(group)
            self.unfrozen += 1

    def _planned(
        self, index: int, num_stages: int, *, lr: float, backbone_lr_mult: float, epochs: int | None
    ) -> tuple[bool, float, int | None]:
        depth = num_stages - 1 - index
        trains = depth < self.limit(num_stages) and (epochs is None or depth + 1 < epochs)
        return trains, self.stage_lr(depth, lr=lr, backbone_lr_mult=backbone_lr_mult), depth + 1

    def state_dict(self) -> dict:
        return {
            "name": self.name,
            "unfreeze": self.unfreeze,
            "lr_decay": self.lr_decay,
            "unfrozen": self.unfrozen,
        }

    def load_state_dict(self, state: dict, *, model: Classifier, optimizer) -> None:
        """Restore the plan's progress: unfreeze the stages ``state`` had unfrozen (adding their
        optimizer groups, so the optimizer's saved state can then be loaded)."""
        settings = {k: state.get(k) for k in ("name", "unfreeze", "lr_decay")}
        if settings != {"name": self.name, "unfreeze": self.unfreeze, "lr_decay": self.lr_decay}:
            raise VisiontuneError(f"strategy state {state} does not describe {self!r}")
        self._unfreeze_to(int(state.get("unfrozen", 0)), model, optimizer)


STRATEGIES = {
    cls.name: cls for cls in (HeadStrategy, PartialStrategy, FullStrategy, GradualStrategy)
}
assert tuple(STRATEGIES) == STRATEGY_NAMES, "visiontune.choices.STRATEGIES lists these"


def make_strategy(name: str, *, unfreeze: int | None = None) -> Strategy:
    """A strategy by name (``STRATEGIES``); ``auto`` is resolved before this, by the advisor."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")
    return STRATEGIES[name](unfreeze=unfreeze)
