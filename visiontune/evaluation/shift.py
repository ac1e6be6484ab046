"""Do validation and TEST look alike? A check of the assumption behind every fit on validation.

The temperature and the automatic reject threshold are fitted on the validation images and are
right for images like them. When DATA has a TEST split that was collected apart from TRAIN (a
different source, a later crawl, a cleaned subset), validation, drawn from TRAIN, can differ from
TEST; then a temperature fitted on validation is off on TEST, and the threshold flags a share of
TEST unlike the rate asked for, however well both were fitted. Two counts show it directly:

- the share of images the model classifies correctly on each split (a model that is right
  90 % of the time on validation and 97 % on TEST cannot be calibrated for both), and
- the share the automatic threshold flags as unknown (the rate on validation by construction).

Each is compared with Fisher's exact test on the 2x2 table (SciPy): with a few hundred images a
difference of a few points is often noise, and the test says when it is not. ``ALPHA`` is strict
(two tests, and a warning should be believed when it comes).

>>> same = compare_splits(np.r_[np.ones(95), np.zeros(5)], np.r_[np.ones(190), np.zeros(10)])
>>> same.differ
False
>>> apart = compare_splits(np.r_[np.ones(90), np.zeros(20)], np.r_[np.ones(465), np.zeros(5)])
>>> apart.differ, round(apart.accuracy_p, 6) < ALPHA
(True, True)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import fisher_exact

__all__ = ["ALPHA", "SplitShift", "compare_splits"]

ALPHA = 0.01


def _fisher(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p of Fisher's exact test that boolean samples ``a`` and ``b`` share a rate."""
    table = [[int(a.sum()), int(len(a) - a.sum())], [int(b.sum()), int(len(b) - b.sum())]]
    return float(fisher_exact(table).pvalue)


@dataclass(frozen=True)
class SplitShift:
    val_images: int
    test_images: int
    val_accuracy: float
    test_accuracy: float
    accuracy_p: float
    val_flagged: float | None  # None: no rejection statistics
    test_flagged: float | None
    flagged_p: float | None
    differ: bool

    def to_dict(self) -> dict:
        return asdict(self)

    def warning(self) -> str | None:
        """What a user should be told when the splits differ, or None."""
        if not self.differ:
            return None
        seen = [
            f"accuracy {100 * self.val_accuracy:.1f} % on validation and "
            f"{100 * self.test_accuracy:.1f} % on TEST (Fisher p = {self.accuracy_p:.2g})"
        ]
        if self.flagged_p is not None and self.flagged_p < ALPHA:
            seen.append(
                f"{100 * self.val_flagged:.1f} % and {100 * self.test_flagged:.1f} % flagged "
                f"unknown (p = {self.flagged_p:.2g})"
            )
        return (
            f"validation and TEST differ: {'; '.join(seen)}. The temperature and the reject "
            "threshold are fitted on validation (drawn from train) and hold for images like it; "
            "on TEST expect a different calibration error and reject rate. A validation folder "
            "collected as TEST was (DATA/val) makes them fit TEST's kind of image."
        )


def compare_splits(
    val_correct: np.ndarray,
    test_correct: np.ndarray,
    val_flagged: np.ndarray | None = None,
    test_flagged: np.ndarray | None = None,
) -> SplitShift:
    """Validation against TEST from per-image booleans: classified correctly, and flagged
    unknown at the automatic threshold (optional)."""
    val_correct = np.asarray(val_correct, dtype=bool)
    test_correct = np.asarray(test_correct, dtype=bool)
    accuracy_p = _fisher(val_correct, test_correct)
    rates = flagged_p = None
    if val_flagged is not None and test_flagged is not None:
        val_flagged = np.asarray(val_flagged, dtype=bool)
        test_flagged = np.asarray(test_flagged, dtype=bool)
        rates = (float(val_flagged.mean()), float(test_flagged.mean()))
        flagged_p = _fisher(val_flagged, test_flagged)
    differ = accuracy_p < ALPHA or (flagged_p is not None and flagged_p < ALPHA)
    return SplitShift(
        val_images=len(val_correct),
        test_images=len(test_correct),
        val_accuracy=float(val_correct.mean()),
        test_accuracy=float(test_correct.mean()),
        accuracy_p=accuracy_p,
        val_flagged=rates[0] if rates else None,
        test_flagged=rates[1] if rates else None,
        flagged_p=flagged_p,
        differ=bool(differ),
    )
