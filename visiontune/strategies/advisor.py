"""Which fine-tuning strategy suits a dataset: a pure decision on measured numbers.

How much of a pretrained network to retrain depends on two things (the classic transfer-learning
advice, e.g. CS231n's "Transfer Learning" notes): how much labelled data there is, and how similar
it is to the data the backbone was trained on.

==================  ===============================  ====================================
quadrant            strategy                         why
==================  ===============================  ====================================
small + similar     ``head``                         the pretrained features already fit;
                                                     retraining them would overfit
small + different   ``gradual`` (top third)          features need adapting, but gently:
                                                     head first, then a few stages from
                                                     the top at decaying learning rates
big + similar       ``partial`` (top third)          enough data to specialise the most
                                                     task-specific (top) stages
big + different     ``full``                         enough data, and the features must
                                                     change: retrain everything
==================  ===============================  ====================================

Pretrained layers always train at ``lr * backbone_lr_mult`` (0.1), deeper stages less under
``gradual``.

``decide`` takes ``Measurements`` (what ``visiontune.features.similarity.measure`` computes from a
folder of images) and returns ``Advice``; it reads no files, so the table is testable on hand-made
numbers. The thresholds are the module constants below, each with its reason.

>>> few = Measurements(40, 2, 20, 20, probe_accuracy=0.95, bn_shift=0.1, num_stages=7)
>>> decide(few).quadrant, decide(few).strategy
('small+similar', 'head')
>>> many = Measurements(4000, 2, 2000, 2000, probe_accuracy=0.6, bn_shift=3.0, num_stages=7)
>>> decide(many).quadrant, decide(many).strategy
('big+different', 'full')
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from .evidence import auto_plan

__all__ = [
    "BN_SHIFT_SCALE",
    "SIMILAR_AT",
    "SMALL_BELOW",
    "Advice",
    "Measurements",
    "decide",
    "similarity_score",
]

# Mean images per class (train + validation, test excluded) below which a dataset is "small" for
# fine-tuning purposes. Placed by benchmarks/strategies.py (BENCHMARKS.md) on six datasets: at 20
# per class (yoga, fashion-MNIST) the linear probe matched or beat every fine-tune; at 75
# (lfw_subset) it was already perfect, nothing left to gain; at 130 (digits), 160 (fashion-MNIST)
# and 216 (yoga) fine-tuning gained 1.4-3.2 points over it. The boundary lies between 75 and 130;
# 100 is their rounded geometric mean. At a few dozen images per class a retrained network mostly
# memorises.
SMALL_BELOW = 100

# ``similarity`` at or above this is "similar".
SIMILAR_AT = 0.5

# BatchNorm shift (symmetric KL divergence, in nats, between the data's per-channel activation
# statistics and the backbone's running statistics; median over channels, mean over layers) at
# which the statistics part of ``similarity`` falls to 1/e. Measured on EfficientNet-Lite0:
# crops of colour photos 0.1-0.2, greyscale natural textures 0.6, 25-px greyscale faces
# upscaled 1.1, binary stripes and pixel noise 2.0-2.3. At 1.0, photos score about 0.85 and
# synthetic images about 0.1.
BN_SHIFT_SCALE = 1.0

# How far down the network "a few stages" reaches: the top third, as ``partial``'s default.
TOP_FRACTION = 1 / 3


@dataclass(frozen=True)
class Measurements:
    """What the advisor looks at. ``None`` where a number could not be measured."""

    num_images: int  # labelled images available for training: train + val splits, not test
    num_classes: int
    min_per_class: int
    max_per_class: int
    # Cross-validated balanced accuracy of a linear probe on the frozen backbone's pooled features.
    probe_accuracy: float | None = None
    probe_images: int = 0  # images the probe was cross-validated on
    # Mean over BatchNorm layers of the symmetric KL between N(data mean, data var) and
    # N(running mean, running var) per channel (median over channels); 0 = ImageNet-like.
    bn_shift: float | None = None
    bn_images: int = 0  # images the BatchNorm statistics were measured on
    backbone: str = ""
    num_stages: int = 0  # the backbone's coarse stages (``Backbone.stages()``)

    @property
    def images_per_class(self) -> float:
        return self.num_images / max(self.num_classes, 1)

    @property
    def balance(self) -> float:
        """Smallest class over largest: 1 balanced, near 0 very imbalanced."""
        return self.min_per_class / max(self.max_per_class, 1)

    @property
    def chance(self) -> float:
        return 1.0 / max(self.num_classes, 1)

    @property
    def separability(self) -> float | None:
        """The probe's accuracy above chance, as a share of the room above chance: 0..1."""
        if self.probe_accuracy is None or self.num_classes < 2:
            return None
        return min(1.0, max(0.0, (self.probe_accuracy - self.chance) / (1.0 - self.chance)))

    @property
    def statistics_similarity(self) -> float | None:
        """``exp(-bn_shift / BN_SHIFT_SCALE)``: 1 when the statistics match ImageNet's."""
        return (
            None if self.bn_shift is None else math.exp(-max(self.bn_shift, 0.0) / BN_SHIFT_SCALE)
        )

    @property
    def similarity(self) -> float | None:
        return similarity_score(self.separability, self.statistics_similarity)

    def to_dict(self) -> dict:
        out = asdict(self)
        for name in (
            "images_per_class",
            "balance",
            "chance",
            "separability",
            "statistics_similarity",
            "similarity",
        ):
            out[name] = getattr(self, name)
        return out


def similarity_score(
    separability: float | None, statistics_similarity: float | None
) -> float | None:
    """The mean of the two measures (either alone where the other is missing), in [0, 1].

    Separability says whether the frozen features already carry the classes; the statistics say
    whether the images look like the pretraining data at all. Either being low means the
    features need to change, so they count equally.
    """
    parts = [p for p in (separability, statistics_similarity) if p is not None]
    return sum(parts) / len(parts) if parts else None


@dataclass(frozen=True)
class Advice:
    """The chosen strategy, its ``TrainConfig`` settings, and why."""

    strategy: str
    quadrant: str  # "small+similar", "small+different", "big+similar" or "big+different"
    settings: dict = field(
        default_factory=dict
    )  # TrainConfig fields: epochs, lr, backbone_lr_mult...
    reason: str = ""
    measurements: Measurements | None = None

    def to_dict(self) -> dict:
        m = self.measurements
        return {
            "strategy": self.strategy,
            "quadrant": self.quadrant,
            "settings": dict(self.settings),
            "reason": self.reason,
            "auto_plan": auto_plan(self.strategy),
            "num_images": m.num_images if m else None,
            "images_per_class": m.images_per_class if m else None,
            "similarity": m.similarity if m else None,
            "thresholds": {
                "small_below_per_class": SMALL_BELOW,
                "similar_at": SIMILAR_AT,
                "bn_shift_scale": BN_SHIFT_SCALE,
            },
            "measurements": m.to_dict() if m else None,
        }


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _describe_similarity(m: Measurements, similar: bool) -> str:
    bits = []
    if m.probe_accuracy is not None:
        bits.append(
            f"a linear probe on the frozen features reaches {_pct(m.probe_accuracy)} "
            f"(chance {_pct(m.chance)})"
        )
    if m.bn_shift is not None:
        closeness = "close to" if (m.statistics_similarity or 0) >= SIMILAR_AT else "far from"
        bits.append(
            f"the images' activation statistics are {closeness} the pretraining data's "
            f"(BatchNorm shift {m.bn_shift:.2f})"
        )
    else:
        bits.append("no pretrained BatchNorm statistics to compare with")
    measured = "; ".join(bits) if bits else "nothing could be measured"
    verdict = "similar to" if similar else "different from"
    score = "n/a" if m.similarity is None else f"{m.similarity:.2f}"
    return (
        f"{measured}, so the data is {verdict} what {m.backbone or 'the backbone'} learnt on "
        f"(similarity {score}, threshold {SIMILAR_AT})"
    )


def decide(m: Measurements) -> Advice:
    """The quadrant and strategy for ``m``; see the module docstring for the table.

    Unmeasurable similarity counts as "different": fine-tuning gently is the safer error.
    """
    small = m.images_per_class < SMALL_BELOW
    similar = m.similarity is not None and m.similarity >= SIMILAR_AT
    quadrant = f"{'small' if small else 'big'}+{'similar' if similar else 'different'}"
    top = max(1, math.ceil(m.num_stages * TOP_FRACTION)) if m.num_stages else None
    size = (
        f"{m.num_images} images, {m.images_per_class:.0f} per class: "
        f"{'small' if small else 'big'} (threshold {SMALL_BELOW} per class)"
    )
    if quadrant == "small+similar":
        strategy = "head"
        settings = {
            "epochs": 60,
            "lr": 1e-3,
            "backbone_lr_mult": 0.0,
            "unfreeze": 0,
            "warm_start_head": False,
        }
        action = (
            "train only a new classifier on the frozen features (a linear probe on cached "
            "features); retraining the backbone on this little data would mostly overfit"
        )
    elif quadrant == "small+different":
        strategy = "gradual"
        settings = {
            "epochs": (top or 2) + 4,
            "lr": 1e-3,
            "backbone_lr_mult": 0.1,
            "unfreeze": top,
            "warm_start_head": True,
        }
        action = (
            f"adapt the features carefully: fit the classifier on cached features first, train it "
            f"alone for an epoch, then unfreeze the top {top or 'few'} stage(s) one per epoch, "
            f"deeper stages at smaller learning rates, BatchNorm statistics kept"
        )
    elif quadrant == "big+similar":
        strategy = "partial"
        # No head warm start: its fitted head expects features normalised by the pretrained
        # BatchNorm statistics, and the retrained stages normalise by each batch's own. On digits
        # (shift 1.4) that cost 3.4 points (92.6 % against 96.0 % without); on yoga it gained 0.4.
        settings = {
            "epochs": 6,
            "lr": 5e-3,
            "backbone_lr_mult": 0.1,
            "unfreeze": top,
            "warm_start_head": False,
        }
        action = (
            f"retrain the top {top or 'third of the'} stage(s) and the classifier; the lower, "
            f"generic stages stay frozen"
        )
    else:
        strategy = "full"
        settings = {
            "epochs": 6,
            "lr": 5e-3,
            "backbone_lr_mult": 0.1,
            "unfreeze": None,
            "warm_start_head": False,
        }
        action = (
            "retrain everything from the pretrained weights: there is enough data, and the "
            "features must change"
        )
    reason = f"{size}; {_describe_similarity(m, similar)}. So: {action}."
    if m.balance < 0.5:
        reason += (
            f" Note: classes are imbalanced (smallest/largest = {m.balance:.2f}); "
            f"per-class recall in `evaluate` tells more than accuracy."
        )
    return Advice(
        strategy=strategy, quadrant=quadrant, settings=settings, reason=reason, measurements=m
    )
