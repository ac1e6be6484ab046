"""``TrainConfig``: every option of ``visiontune train`` as one frozen, validated dataclass."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .data.augment import parse_augment
from .errors import VisiontuneError
from .strategies import STRATEGIES

__all__ = ["BALANCE_CHOICES", "STRATEGY_CHOICES", "STRATEGY_DEFAULTS", "TrainConfig"]

# Per-strategy defaults, chosen so each finishes in minutes on a 2-core CPU. A frozen backbone's
# head trains on cached features, where an epoch costs milliseconds, so it gets many.
STRATEGY_DEFAULTS = {
    "head": {"epochs": 60, "lr": 1e-3, "patience": None},
    "partial": {"epochs": 6, "lr": 5e-3, "patience": None},
    "full": {"epochs": 6, "lr": 5e-3, "patience": None},
    # Head fitted on cached features first, then one more stage per epoch: 6 epochs reach 6 stages.
    "gradual": {"epochs": 6, "lr": 5e-3, "patience": None},
    # Replaced, before training, by the strategy and settings ``visiontune advise`` chooses.
    "auto": {"epochs": None, "lr": None, "patience": None},
}
STRATEGY_CHOICES = (*STRATEGIES, "auto")
DEVICES = ("auto", "cpu", "cuda")
HEAD_SOLVERS = ("lbfgs", "adamw")
BALANCE_CHOICES = ("none", "weights", "sampler")


@dataclass(frozen=True)
class TrainConfig:
    data: str
    backbone: str = "efficientnet_lite0"
    weights: str | None = None  # None: embedded package or hub; "none": random; else a path
    strategy: str = "full"
    epochs: int | None = None  # None: the strategy's default
    batch_size: int = 32
    lr: float | None = None  # head LR; None: the strategy's default
    backbone_lr_mult: float = 0.1
    unfreeze: int | None = None
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    dropout: float = 0.2
    augment: str = "standard"  # preset or op list (visiontune.data.augment); training only
    warmup_epochs: float = 0.5
    patience: int | None = None
    warm_start_head: bool = False  # partial/full: fit the head as a linear probe first (LP-FT)
    cache: bool = True  # frozen-backbone features go to / come from the on-disk feature cache
    cache_dir: str | None = None  # None: the per-user cache folder
    cache_views: int = 0  # head strategy: augmented views per training image, cached too
    head_solver: str = "lbfgs"  # head strategy: full-batch linear probe, or "adamw" mini-batches
    balance: str = (
        "none"  # class imbalance: "weights" (weighted loss) or "sampler" (balanced draws)
    )
    exclude_duplicates: bool = False  # val/test images with a byte-identical copy in train left out
    val_fraction: float = 0.15
    seed: int = 0
    workers: int | None = None  # None: one per spare core
    device: str = "auto"
    out: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        def bad(message: str) -> None:
            raise VisiontuneError(message)

        if self.strategy not in STRATEGY_CHOICES:
            bad(f"--strategy must be one of {', '.join(STRATEGY_CHOICES)}, got {self.strategy!r}")
        if self.epochs is not None and self.epochs < 1:
            bad(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            bad(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.lr is not None and not self.lr > 0:
            bad(f"--lr must be positive, got {self.lr}")
        if not 0 <= self.backbone_lr_mult <= 1:
            bad(f"--backbone-lr-mult must be in [0, 1], got {self.backbone_lr_mult}")
        if self.unfreeze is not None and self.unfreeze < 0:
            bad(f"--unfreeze must be 0 or more, got {self.unfreeze}")
        if not 0 <= self.val_fraction < 1:
            bad(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if not 0 <= self.label_smoothing < 1:
            bad(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.dropout < 1:
            bad(f"--dropout must be in [0, 1), got {self.dropout}")
        try:
            augment = parse_augment(self.augment)
        except ValueError as exc:
            bad(f"--augment: {exc}")
        if augment.batch_ops and self.strategy == "head":
            bad(
                f"--augment {', '.join(augment.batch_ops)} mixes whole images, so it needs --strategy "
                "partial or full (a frozen backbone trains its head on cached features)"
            )
        if self.head_solver not in HEAD_SOLVERS:
            bad(f"--head-solver must be one of {', '.join(HEAD_SOLVERS)}, got {self.head_solver!r}")
        if self.balance not in BALANCE_CHOICES:
            bad(f"--balance must be one of {', '.join(BALANCE_CHOICES)}, got {self.balance!r}")
        if self.cache_views < 0:
            bad(f"--cache-views must be 0 or more, got {self.cache_views}")
        if self.workers is not None and self.workers < 0:
            bad(f"--workers must be 0 or more, got {self.workers}")
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            bad(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")

    def resolved(self, name: str):
        """The option's value, or the strategy's default where left unset."""
        value = getattr(self, name)
        return STRATEGY_DEFAULTS[self.strategy].get(name) if value is None else value

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
