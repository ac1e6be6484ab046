"""``TrainConfig``: every option of ``visiontune train``, declared once.

Each field carries its command-line help (and choices) as metadata, so the ``train`` command is
generated from this class (``visiontune.cli.options``) and the CLI, the Python API, the run
folder and the checkpoint all derive from the same declaration. ``None`` means "the strategy's
default"; ``resolve()`` turns those into concrete values once, after ``auto`` has been replaced by
the advisor's choice.

>>> config = TrainConfig(data="photos/", strategy="head")
>>> config.resolve().epochs, config.resolve().lr
(60, 0.001)
>>> TrainConfig(data="photos/", strategy="fast")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
visiontune.errors.VisiontuneError: --strategy must be one of head, ..., auto, got 'fast'
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cached_property

from .choices import BALANCE_MODES, DEVICES, HEAD_SOLVERS, PRECISIONS, STRATEGY_CHOICES
from .data.augment import AugmentSpec, augment_help, parse_augment
from .data.manifest import ManifestColumns
from .errors import VisiontuneError

__all__ = [
    "DATA_OPTIONS",
    "MAX_SEED",
    "STRATEGY_DEFAULTS",
    "TrainConfig",
    "changed_options",
    "manifest_columns",
    "check_run_options",
    "option",
    "parse_duration",
]

# Per-strategy defaults, chosen so each finishes in minutes on a 2-core CPU. A frozen backbone's
# head trains on cached features, where an epoch costs milliseconds, so it gets many.
STRATEGY_DEFAULTS = {
    "head": {"epochs": 60, "lr": 1e-3, "patience": None},
    "partial": {"epochs": 6, "lr": 5e-3, "patience": None},
    "full": {"epochs": 6, "lr": 5e-3, "patience": None},
    # Head fitted on cached features first, then one more stage per epoch: 6 epochs reach 6 stages.
    "gradual": {"epochs": 6, "lr": 5e-3, "patience": None},
}
# Seeds are mixed into 64-bit keys (``visiontune._seeding``); torch's generator takes < 2**64.
MAX_SEED = 2**63 - 1

STRATEGY_HELP = """fine-tuning strategy:
head    - freeze the whole backbone (BatchNorm statistics too), train only the new classifier;
          features are computed once, so this is fast. Small data similar to ImageNet.
partial - freeze the first stages, train the last --unfreeze stages and the classifier.
full    - train everything, starting from the pretrained weights. Larger or different data.
gradual - fit the classifier on cached features first, then unfreeze one more stage per epoch
          from the top (up to --unfreeze, default all), each deeper stage at half the LR.
auto    - the default: fit the head on cached features first (seconds), then, where the data's
          measurements (`visiontune advise`) say fine-tuning may pay and time allows, try the
          advisor's fine-tune and keep it unless the head scores better on validation
          beyond noise.
          Options you give are kept; the candidates and the decision are saved in the run
          folder (auto.json). Under torchrun, auto runs the advisor's choice alone."""


def option(default, help: str, *, choices=None, metavar=None, flag=None, cli: bool = True):
    """A ``TrainConfig`` field with its command-line declaration as metadata.

    ``help`` ending in ``(default: ...)`` keeps its own wording; otherwise the default is added.
    ``flag``: the option's spelling when it is not ``--field-name`` (``--no-cache``).
    """
    meta = {"help": help, "choices": choices, "metavar": metavar, "flag": flag, "cli": cli}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class TrainConfig:
    """The options of one training run; invalid values raise ``VisiontuneError`` at once."""

    # The positional DATA argument of ``train``, declared by the CLI itself (it is optional there,
    # for ``--resume RUN``).
    data: str = field(metadata={"cli": False})
    backbone: str = option(
        "efficientnet_lite0",
        "registered name (see `visiontune backbones`) or any timm model name;\n"
        "a comma-separated list a,b,c trains an ensemble with one member per backbone;\n"
        "'auto' (with --strategy auto) races the installed embedded EfficientNet-Lites\n"
        "with a head each and keeps the best on validation",
    )
    weights: str | None = option(
        None,
        "local weights file (.safetensors/.pth) or folder; 'none' for random init\n"
        "(default: the embedded package, else the model hub)",
        metavar="PATH|none",
    )
    strategy: str = option("auto", STRATEGY_HELP, choices=STRATEGY_CHOICES)
    epochs: int | None = option(
        None, "training epochs (default: 6; 60 for --strategy head), or what auto chooses"
    )
    batch_size: int = option(32, "images per optimizer step (the global batch under torchrun)")
    lr: float | None = option(
        None, "learning rate of the new head (default: 5e-3; 1e-3 for --strategy head)"
    )
    backbone_lr_mult: float = option(
        0.1, "pretrained layers train at lr x this, so their knowledge is not erased"
    )
    unfreeze: int | None = option(
        None,
        "with --strategy partial: how many of the last stages train (default: a third);\n"
        "with gradual: how many are unfrozen in all (default: every stage)",
        metavar="N",
    )
    weight_decay: float = option(0.05, "AdamW weight decay")
    label_smoothing: float = option(0.1, "label smoothing of the training loss")
    dropout: float = option(0.2, "dropout before the new head")
    augment: str = option("standard", augment_help(), metavar="PRESET|OPS")
    warmup_epochs: float = option(0.5, "linear LR warm-up before the cosine decay, in epochs")
    patience: int | None = option(
        None, "stop after N epochs without validation improvement (default: off)", metavar="N"
    )
    warm_start_head: bool = option(
        False,
        "partial/full: before fine-tuning, fit the new head as a linear probe on the\n"
        "pretrained features (linear-probe-then-fine-tune) instead of random init",
    )
    cache: bool = option(
        True, "bypass the on-disk feature cache (default: use it)", flag="--no-cache"
    )
    cache_dir: str | None = option(
        None,
        "feature cache folder (default: $VISIONTUNE_CACHE or ~/.cache/visiontune)",
        metavar="DIR",
    )
    cache_views: int = option(
        0,
        "with --strategy head: also cache K augmented views of each training image\n"
        "and train the head on them too",
        metavar="K",
    )
    activation_views: int = option(
        2,
        "partial/gradual: compute the frozen stages' output once for K augmented views\n"
        "of each training image and train the unfrozen stages on them, epoch e on view\n"
        "e mod K, instead of recomputing the frozen stages for fresh augmentations\n"
        "every epoch; 0 recomputes (always so for mixup/cutmix, torchrun, or a backbone\n"
        "that cannot be cut)",
        metavar="K",
    )
    head_solver: str = option(
        "lbfgs",
        "with --strategy head: 'lbfgs' fits the head as a logistic regression on the\n"
        "cached features, its L2 strength chosen on validation; 'adamw' trains it in\n"
        "mini-batches for --epochs",
        choices=HEAD_SOLVERS,
    )
    balance: str = option(
        "none",
        "for imbalanced classes (`visiontune check` shows the counts):\n"
        "weights - the loss weighs each class by n_train / (classes x its count)\n"
        "sampler - training batches draw every class equally often (with\n"
        "          replacement); the L-BFGS head solver uses weights either way",
        choices=BALANCE_MODES,
    )
    exclude_duplicates: bool = option(
        False,
        "leave val/test images that have a byte-identical copy in train out of the\n"
        "evaluation (they inflate its accuracy); metrics.json says how many",
    )
    exclude_suspects: bool = option(
        False,
        "audit the training images first (`visiontune audit`: linear probes on the\n"
        "backbone's cached features) and leave out those whose label looks wrong or\n"
        "that look like no class; metrics.json lists them (excluded_suspects)",
    )
    val_fraction: float = option(
        0.15,
        "share of train held out (stratified, seeded) when DATA has no val split;\n"
        "with --group-column, whole groups are held out",
    )
    path_column: str | None = option(
        None,
        "DATA as a .csv/.parquet manifest: its column of image paths, relative to the\n"
        "manifest's folder or absolute (default: path, image, file, filename...)",
        metavar="NAME",
    )
    label_column: str | None = option(
        None,
        "the manifest's column of labels (default: label, labels, class, category...)",
        metavar="NAME",
    )
    group_column: str | None = option(
        None,
        "the manifest's column of groups (a patient, a person, a video): the held-out\n"
        "validation split never shares a group with train (default: none)",
        metavar="NAME",
    )
    label_delimiter: str = option(
        ";", "separates the labels of a multi-label manifest cell", metavar="TEXT"
    )
    multi_label: bool = option(
        False,
        "every image may carry several labels (a manifest cell 'dog;ball'): sigmoid\n"
        "outputs, per-class thresholds chosen on validation (default: on when a label\n"
        "cell holds --label-delimiter)",
    )
    seed: int = option(0, "seed for the split, initialisation, shuffling and augmentation")
    workers: int | None = option(
        None, "image-loading worker processes (default: one per spare core, max 4)"
    )
    device: str = option("auto", "auto, cpu, cuda or cuda:N; a GPU uses mixed precision")
    precision: str = option(
        "auto",
        "autocast dtype of extraction, training and prediction:\n"
        "fp32 - full precision throughout\n"
        "bf16 - bfloat16 autocast for inference and training\n"
        "auto - bf16 (fp16 without it) on a GPU; on a CPU, bf16 inference only where\n"
        "       it has native bf16 kernels and a one-time check finds them faster,\n"
        "       training in fp32 (BENCHMARKS.md, Precision). Saved with the model,\n"
        "       which predicts in it",
        choices=PRECISIONS,
    )
    out: str | None = option(
        None, "run folder (default: runs/<time>-<backbone>-<strategy>)", metavar="DIR"
    )
    overwrite: bool = option(
        False,
        "replace the finished run (or ensemble) in --out: its model, exports, history,\n"
        "metrics and report folders are removed before the new run is written\n"
        "(default: a finished run is refused)",
    )
    time_budget: str | None = option(
        None,
        "finish within DURATION (90s, 5m, 1h30m; a bare number is seconds), process\n"
        "start included: auto plans what it tries to fit, and fine-tuning stops at the\n"
        "budget with the best epoch so far (default: no limit)",
        metavar="DURATION",
    )
    progress: bool = option(
        True, "no progress bars or tables on stderr (default: show them)", flag="--no-progress"
    )

    def __post_init__(self) -> None:
        for problem in _problems(self):
            raise VisiontuneError(problem)
        if self.augment_spec.batch_ops and self.strategy == "head":
            raise VisiontuneError(
                f"--augment {', '.join(self.augment_spec.batch_ops)} mixes whole images, so it "
                "needs --strategy partial or full (a frozen backbone trains its head on cached "
                "features)"
            )

    @cached_property
    def augment_spec(self) -> AugmentSpec:
        """``augment`` parsed, once (validated by the constructor)."""
        try:
            return parse_augment(self.augment)
        except ValueError as exc:
            raise VisiontuneError(f"--augment: {exc}") from None

    @property
    def manifest_columns(self) -> ManifestColumns:
        """How to read DATA when it is a manifest."""
        return manifest_columns(self)

    @property
    def time_budget_s(self) -> float | None:
        """``time_budget`` in seconds (validated by the constructor)."""
        return None if self.time_budget is None else parse_duration(self.time_budget)

    def resolve(self) -> TrainConfig:
        """The same options with the strategy's defaults filled in where left unset."""
        if self.strategy not in STRATEGY_DEFAULTS:
            raise ValueError(f"resolve the strategy {self.strategy!r} first (the advisor's)")
        defaults = STRATEGY_DEFAULTS[self.strategy]
        unset = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        return replace(self, **unset)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """A config from ``to_dict()`` output (a run folder's or checkpoint's); unknown keys
        written by other versions are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def default(cls, name: str):
        """The default of option ``name`` (as ``ServeConfig.default``).

        >>> TrainConfig.default("val_fraction")
        0.15
        """
        return next(f.default for f in fields(cls) if f.name == name)


# The options that say how to read DATA: every command that takes DATA takes these.
DATA_OPTIONS = ("path_column", "label_column", "group_column", "label_delimiter", "multi_label")


def manifest_columns(options) -> ManifestColumns:
    """``ManifestColumns`` from an object with the ``DATA_OPTIONS`` attributes (a
    ``TrainConfig``, parsed arguments); missing ones keep their defaults."""
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.name in DATA_OPTIONS}
    value = {name: getattr(options, name, defaults[name]) for name in DATA_OPTIONS}
    return ManifestColumns(
        path=value["path_column"],
        label=value["label_column"],
        group=value["group_column"],
        delimiter=value["label_delimiter"],
        multi_label=bool(value["multi_label"]),
    )


_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?")


def parse_duration(text: str | float | int) -> float:
    """Seconds in a duration written ``90s``, ``5m``, ``1h30m``, ``2.5m`` or a bare number.

    >>> parse_duration("90s"), parse_duration("5m"), parse_duration("1h30m"), parse_duration(45)
    (90.0, 300.0, 5400.0, 45.0)
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    else:
        match = _DURATION.fullmatch(str(text).strip().lower())
        if not match or not str(text).strip() or not any(match.groups()):
            raise ValueError(f"a duration is like 90s, 5m or 1h30m, got {text!r}")
        hours, minutes, secs = (float(g) if g else 0.0 for g in match.groups())
        seconds = 3600 * hours + 60 * minutes + secs
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"a duration must be positive, got {text!r}")
    return seconds


def _duration_problem(value) -> str | None:
    if value is None:
        return None
    try:
        parse_duration(value)
    except ValueError as exc:
        return f"--time-budget: {exc}"
    return None


def changed_options(config: TrainConfig) -> set[str]:
    """The fields of ``config`` that differ from their defaults (the ones a user set)."""
    return {f.name for f in fields(config) if getattr(config, f.name) != f.default}


def _at_least(name: str, value, low, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        return f"--{name} must be an integer of at least {low}, got {value!r}"
    if value < low:
        return f"--{name} must be at least {low}, got {value}"
    return None


def _in_range(name: str, value, low, high, *, high_open: bool) -> str | None:
    ok = isinstance(value, int | float) and math.isfinite(value) and value >= low
    ok = ok and (value < high if high_open else value <= high)
    if not ok:
        return f"--{name} must be in [{low}, {high}{')' if high_open else ']'}, got {value!r}"
    return None


def _seed_problem(seed, *, optional: bool = False) -> str | None:
    problem = _at_least("seed", seed, 0, optional=optional)
    if problem is None and seed is not None and seed > MAX_SEED:
        return f"--seed must be below 2**63, got {seed}"
    return problem


def check_run_options(
    *, batch_size: int | None = None, workers: int | None = None, seed: int | None = None
) -> None:
    """Raise ``VisiontuneError`` for an invalid ``--batch-size``, ``--workers`` or ``--seed``
    (None: not given), with ``TrainConfig``'s messages: every command that takes them checks
    them here, before any work.

    >>> check_run_options(batch_size=32, workers=0, seed=7)
    >>> check_run_options(workers=-1)
    Traceback (most recent call last):
    ...
    visiontune.errors.VisiontuneError: --workers must be at least 0, got -1
    """
    for problem in (
        _at_least("batch-size", batch_size, 1, optional=True),
        _at_least("workers", workers, 0, optional=True),
        _seed_problem(seed, optional=True),
    ):
        if problem:
            raise VisiontuneError(problem)


def _problems(c: TrainConfig) -> list[str]:
    """Every invalid value of ``c``, as the message naming the valid ones."""
    found = [
        f"--{name.replace('_', '-')} must be one of {', '.join(valid)}, got {value!r}"
        for name, value, valid in (
            ("strategy", c.strategy, STRATEGY_CHOICES),
            ("head_solver", c.head_solver, HEAD_SOLVERS),
            ("balance", c.balance, BALANCE_MODES),
            ("precision", c.precision, PRECISIONS),
        )
        if value not in valid
    ]
    if not isinstance(c.label_delimiter, str) or not c.label_delimiter:
        found.append(f"--label-delimiter must be a non-empty text, got {c.label_delimiter!r}")
    if c.backbone == "auto" and c.strategy != "auto":
        found.append("--backbone auto races the embedded backbones: it needs --strategy auto")
    if c.device not in DEVICES and not str(c.device).startswith("cuda:"):
        found.append(f"--device must be one of {', '.join(DEVICES)} or cuda:N, got {c.device!r}")
    if c.lr is not None and not (isinstance(c.lr, int | float) and 0 < c.lr < math.inf):
        found.append(f"--lr must be a positive finite number, got {c.lr!r}")
    checks = (
        _at_least("epochs", c.epochs, 1, optional=True),
        _at_least("batch-size", c.batch_size, 1),
        _at_least("unfreeze", c.unfreeze, 0, optional=True),
        _at_least("patience", c.patience, 1, optional=True),
        _at_least("cache-views", c.cache_views, 0),
        _at_least("activation-views", c.activation_views, 0),
        _at_least("workers", c.workers, 0, optional=True),
        _seed_problem(c.seed),
        _in_range("backbone-lr-mult", c.backbone_lr_mult, 0, 1, high_open=False),
        _in_range("val-fraction", c.val_fraction, 0, 1, high_open=True),
        _in_range("label-smoothing", c.label_smoothing, 0, 1, high_open=True),
        _in_range("dropout", c.dropout, 0, 1, high_open=True),
        _in_range("weight-decay", c.weight_decay, 0, math.inf, high_open=True),
        _in_range("warmup-epochs", c.warmup_epochs, 0, math.inf, high_open=True),
        _duration_problem(c.time_budget),
    )
    return found + [problem for problem in checks if problem]
