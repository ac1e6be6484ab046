"""What a bundle needs to say how far to trust a prediction: ``config.json``'s ``trust`` entry
and ``trust.safetensors`` beside the weights.

``trust`` holds the temperature that calibrates the probabilities (``evaluation.calibration``)
and, when the run measured its training features, how to score an unknown image
(``evaluation.rejection``): the score's name, its scale on the validation images (``center``,
``threshold``, ``rate``) and the digest of ``trust.safetensors`` (class means and precision
matrix). The digest is checked on load, and the whole entry is part of the bundle's seal
(``bundle._integrity``), so an edited temperature or swapped statistics are refused.

A bundle without the entry (saved before it existed) loads with temperature 1 and no rejection.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .._io import atomic_write
from ..errors import BundleError
from .export_metadata import state_digest

__all__ = [
    "REJECTION_SCORE",
    "TRUST_FILE",
    "check_trust",
    "read_trust_tensors",
    "temperature_of",
    "thresholds_of",
    "write_trust_tensors",
]

TRUST_FILE = "trust.safetensors"
# The one score this visiontune computes (evaluation.rejection); a bundle naming another is
# from a newer visiontune, and its rejection is refused rather than misread.
REJECTION_SCORE = "mahalanobis-l2"
TENSORS = ("class_means", "precision")


def write_trust_tensors(folder: Path, tensors: dict[str, torch.Tensor]) -> str:
    """``folder/trust.safetensors`` (atomically); its digest, for ``config.json``."""
    state = {k: v.detach().cpu().to(torch.float32).contiguous() for k, v in tensors.items()}
    atomic_write(folder / TRUST_FILE, lambda tmp: save_file(state, tmp))
    return state_digest(state)


def _number(value, where: str, name: str, *, positive: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (positive and value <= 0):
        kind = "a positive number" if positive else "a number"
        raise BundleError(f"{where}: trust.{name} must be {kind}, got {value!r}")
    return float(value)


def _check_thresholds(trust: dict, where: str) -> None:
    """A multi-label bundle's per-class thresholds: probabilities, one per class."""
    if not trust.get("multi_label"):
        return
    values = trust.get("thresholds")
    if not isinstance(values, list) or not values:
        raise BundleError(f"{where}: a multi-label trust entry needs a list of thresholds")
    for value in values:
        if not 0 < _number(value, where, "thresholds") <= 1:
            raise BundleError(f"{where}: trust.thresholds must lie in (0, 1], got {value!r}")


def thresholds_of(config: dict) -> list[float] | None:
    """A multi-label bundle's per-class probability thresholds; None for single-label."""
    trust = config.get("trust", {})
    return [float(t) for t in trust["thresholds"]] if trust.get("multi_label") else None


def check_trust(trust, where: str) -> None:
    """``config.json``'s ``trust`` entry, bounds-checked (see the module docstring)."""
    if not isinstance(trust, dict):
        raise BundleError(f"{where}: trust must be an object, got {type(trust).__name__}")
    _number(trust.get("temperature", 1.0), where, "temperature", positive=True)
    _check_thresholds(trust, where)
    rejection = trust.get("rejection")
    if rejection is None:
        return
    if not isinstance(rejection, dict):
        raise BundleError(f"{where}: trust.rejection must be an object")
    if rejection.get("score") != REJECTION_SCORE:
        raise BundleError(
            f"{where}: trust.rejection.score {rejection.get('score')!r} is not one this "
            f"visiontune computes ({REJECTION_SCORE}); upgrade visiontune"
        )
    center = _number(rejection.get("center"), where, "rejection.center")
    threshold = _number(rejection.get("threshold"), where, "rejection.threshold")
    if threshold <= center:
        raise BundleError(f"{where}: trust.rejection.threshold must exceed its center")


def temperature_of(config: dict) -> float:
    return float(config.get("trust", {}).get("temperature", 1.0))


def read_trust_tensors(folder: Path, config: dict) -> dict[str, torch.Tensor] | None:
    """The rejection statistics of a bundle (checked against their digest), or None for a
    bundle without them."""
    rejection = config.get("trust", {}).get("rejection")
    if rejection is None:
        return None
    path = Path(folder) / TRUST_FILE
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError: the file is unusable
        raise BundleError(f"cannot load {path}: {str(exc).strip().splitlines()[0]}") from exc
    if sorted(tensors) != sorted(TENSORS) or state_digest(tensors) != rejection.get("sha256"):
        raise BundleError(
            f"{path} does not match the checksum in config.json: it was modified, damaged or "
            "copied from another run"
        )
    return tensors
