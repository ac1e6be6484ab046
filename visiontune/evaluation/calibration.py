"""Temperature scaling: one scalar ``T`` that divides every logit, fitted on validation.

Guo et al. (2017) found it the most reliable of the simple calibration methods for modern
networks: it cannot change a prediction (``argmax(z / T) == argmax(z)``), only how confident it
is, so accuracy is untouched and one parameter cannot overfit a small validation split the way
per-class (vector or matrix) scaling can. ``T`` minimises the validation negative log-likelihood,
a smooth one-dimensional problem solved by SciPy's bounded Brent search on ``log T``.

The fit is kept only where it helps: with fewer than ``MIN_IMAGES`` validation images, or when
the calibrated validation ECE would be worse than the uncalibrated one (the NLL optimum and the
ECE need not agree on a few dozen images), ``T`` stays 1 and the reason is recorded.

>>> logits = np.array([[4.0, 0.0], [4.0, 0.0], [0.0, 4.0], [0.0, 4.0]])
>>> fit = fit_temperature(logits, np.array([0, 1, 1, 1]), min_images=1)
>>> fit.temperature > 1, fit.ece_after < fit.ece_before   # over-confident: softened
(True, True)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from .metrics import expected_calibration_error

__all__ = ["MIN_IMAGES", "TemperatureFit", "fit_temperature", "scaled_probabilities"]

MIN_IMAGES = 20  # below this a validation split says little about confidence
LOG_T_BOUNDS = (np.log(0.05), np.log(20.0))  # far beyond any T seen in practice (0.5 - 3)


@dataclass(frozen=True)
class TemperatureFit:
    temperature: float
    fitted: bool  # False: T = 1, ``reason`` says why
    reason: str
    images: int
    ece_before: float | None
    ece_after: float | None
    nll_before: float | None
    nll_after: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    return float(-log_softmax(logits / temperature, axis=1)[np.arange(len(labels)), labels].mean())


def scaled_probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(logits / T)`` over the class axis."""
    return softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)


def fit_temperature(
    logits: np.ndarray, labels: np.ndarray, *, min_images: int = MIN_IMAGES
) -> TemperatureFit:
    """The validation NLL's minimiser ``T`` for ``logits`` ``(N, classes)`` and true ``labels``,
    or ``T = 1`` where fitting is not supported by the evidence (see the module docstring)."""
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=int)
    n = len(labels)
    if n < min_images:
        why = f"{n} validation images (a temperature is fitted from {min_images})"
        return TemperatureFit(1.0, False, why, n, None, None, None, None)
    before = expected_calibration_error(labels, scaled_probabilities(logits, 1.0))
    nll_before = _nll(logits, labels, 1.0)
    best = minimize_scalar(
        lambda log_t: _nll(logits, labels, float(np.exp(log_t))),
        bounds=LOG_T_BOUNDS,
        method="bounded",
        options={"xatol": 1e-4},
    )
    temperature = float(np.exp(best.x))
    after = expected_calibration_error(labels, scaled_probabilities(logits, temperature))
    if after > before:
        why = (
            f"the fitted T={temperature:.3f} made validation ECE worse "
            f"({before:.4f} -> {after:.4f}); kept T=1"
        )
        return TemperatureFit(1.0, False, why, n, before, before, nll_before, nll_before)
    nll_after = _nll(logits, labels, temperature)
    why = "minimised the validation negative log-likelihood"
    return TemperatureFit(temperature, True, why, n, before, after, nll_before, nll_after)
