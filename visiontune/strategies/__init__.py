"""Fine-tuning strategies: which parts of ``Classifier(backbone, head)`` train, and at which LR;
``advisor.decide`` picks one from measurements of the data."""

from .advisor import Advice, Measurements, decide
from .base import (
    STRATEGIES,
    FullStrategy,
    GradualStrategy,
    HeadStrategy,
    PartialStrategy,
    Strategy,
    make_strategy,
)

__all__ = [
    "STRATEGIES",
    "Advice",
    "FullStrategy",
    "GradualStrategy",
    "HeadStrategy",
    "Measurements",
    "PartialStrategy",
    "Strategy",
    "decide",
    "make_strategy",
]
