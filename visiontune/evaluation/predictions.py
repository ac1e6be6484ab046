"""``LabelledPredictions``: the per-image outcome of an evaluation, which a report is made from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .metrics import classification_metrics

__all__ = ["LabelledPredictions"]


@dataclass(frozen=True, eq=False)
class LabelledPredictions:
    """Class probabilities of each evaluated image beside its true label.

    ``forward_passes`` is the cost per image: 1 for a plain evaluation, views x members for
    test-time augmentation and ensembles (whoever computes ``probs`` knows it). ``skipped`` maps
    the files that could not be decoded to the reason.
    """

    paths: Sequence[str]
    y_true: np.ndarray  # (n,) class indices
    probs: np.ndarray  # (n, classes), rows sum to 1
    class_names: Sequence[str]
    forward_passes: int = 1
    skipped: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n, classes = len(self.paths), len(self.class_names)
        if len(self.y_true) != n or np.shape(self.probs) != (n, classes):
            raise ValueError(
                f"{n} paths, {len(self.y_true)} labels and probabilities of shape "
                f"{np.shape(self.probs)} do not describe the same {n} images of {classes} classes"
            )

    @property
    def y_pred(self) -> np.ndarray:
        return np.asarray(self.probs).argmax(axis=1) if len(self.paths) else np.zeros(0, dtype=int)

    def metrics(self) -> dict:
        """``classification_metrics`` of these predictions, with the skipped files."""
        result = classification_metrics(self.y_true, self.y_pred, self.class_names, self.probs)
        result["skipped"] = dict(self.skipped)
        return result
