"""Fine-tuning strategies: which parts of ``Classifier(backbone, head)`` train, and at which LR."""

from .base import STRATEGIES, FullStrategy, HeadStrategy, PartialStrategy, Strategy, make_strategy

__all__ = ["STRATEGIES", "FullStrategy", "HeadStrategy", "PartialStrategy", "Strategy", "make_strategy"]
