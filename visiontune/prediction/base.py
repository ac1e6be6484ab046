"""``Predictor``: predictions and metrics from any model's class probabilities (no torch model
code here, so the ONNX predictor shares it), and ``expand_image_paths``.

Rejection (``reject``): ``None`` flags unknown images where the model has rejection statistics
(``evaluation.rejection``) and says nothing where it has none; ``"auto"`` insists on them (the
automatic threshold: score 1); a number is a threshold on the same normalised score (higher:
fewer rejected); ``"none"`` turns it off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..data.dataset import labelled_samples
from ..data.folder import Sample, expand_image_paths
from ..data.loader import SkipLog
from ..data.manifest import ManifestColumns
from ..errors import VisiontuneError
from ..evaluation.metrics import (
    calibrated_ece,
    classification_metrics,
    expected_calibration_error,
)
from ..evaluation.multilabel import multilabel_metrics
from ..evaluation.predictions import LabelledPredictions
from ..evaluation.rejection import check_rate
from ..specs import LabelMap

__all__ = ["Outputs", "Predictor", "check_reject", "expand_image_paths"]


@dataclass(frozen=True)
class Outputs:
    """Class probabilities of the decodable samples, their indices into the samples, and each
    row's normalised unknown score (None: the model has no rejection statistics)."""

    probs: np.ndarray
    indices: np.ndarray
    unknown: np.ndarray | None = None


def check_reject(reject) -> str | float | None:
    """``None``, ``"auto"``, ``"none"`` or a finite number (a string that parses as one)."""
    if reject is None or reject in ("auto", "none"):
        return reject
    try:
        value = float(reject)
    except (TypeError, ValueError):
        value = float("nan")
    if not np.isfinite(value):
        raise VisiontuneError(f"reject must be auto, none or a number, got {reject!r}")
    return value


def _threshold(reject, outputs: Outputs, auto: float) -> float | None:
    """The normalised-score threshold ``reject`` asks for (``auto``: the one for the asked
    rate), or None for no rejection."""
    if reject == "none" or (reject is None and outputs.unknown is None):
        return None
    if outputs.unknown is None:
        raise VisiontuneError(
            "this model has no rejection statistics (trained before visiontune stored them, or "
            "an export without them); use reject='none' or retrain"
        )
    return auto if reject in (None, "auto") else float(reject)


class Predictor:
    """Predictions and metrics from class probabilities; subclasses provide ``labels``,
    ``passes_per_image`` and ``_probabilities`` (an ``Outputs``)."""

    labels: LabelMap
    # Multi-label: ``probs`` are per-class sigmoids, a class is predicted above its threshold.
    multi_label: bool = False
    thresholds: np.ndarray | None = None

    def passes_per_image(self, tta: str = "none") -> int:
        """Forward passes through a network per image: views x members."""
        raise NotImplementedError

    def threshold_for_rate(self, rate: float) -> float:
        """The unknown-score threshold flagging a share ``rate`` of the validation images."""
        return 1.0

    def calibration_record(self) -> dict | None:
        """The temperature the logits are divided by and how it was fitted, or None."""
        return None

    def _probabilities(
        self,
        samples: list[Sample],
        *,
        batch_size: int,
        workers: int | None,
        progress: bool,
        skips: SkipLog,
        tta: str,
    ) -> Outputs:
        """Class probabilities (and unknown scores) for the decodable samples."""
        raise NotImplementedError

    def predict(
        self,
        paths: Sequence[str | Path],
        *,
        top_k: int = 1,
        batch_size: int = 32,
        workers: int | None = None,
        progress: bool = False,
        tta: str = "none",
        reject: str | float | None = None,
        reject_rate: float | None = None,
    ) -> list[dict]:
        """One dict per input image: ``path``, ``top`` (k best classes with probabilities), or
        ``error`` for a file that could not be decoded; with rejection (module docstring) also
        ``unknown`` (true: unlike the training images) and ``unknown_score``. ``tta``:
        ``none``, ``flip``, ``5crop`` or ``10crop`` (``visiontune.prediction.tta``);
        ``batch_size`` counts views. ``reject_rate``: the share of validation images the
        automatic threshold flags (default: the run's, 5 %)."""
        reject = check_reject(reject)  # both checked before any work
        if reject_rate is not None:
            check_rate(reject_rate)
        files = expand_image_paths(paths)
        samples = [Sample(p, -1) for p in files]
        skips = SkipLog()
        out = self._probabilities(
            samples, batch_size=batch_size, workers=workers, progress=progress, skips=skips, tta=tta
        )
        return self.rows(
            [str(p) for p in files],
            out,
            top_k=top_k,
            reject=reject,
            reject_rate=reject_rate,
            errors=skips.skipped,
        )

    def decoded_outputs(self, images: Sequence, *, tta: str = "none") -> Outputs:
        """``Outputs`` of already decoded RGB images (PIL), all in one forward pass (per member
        and view): what a server that decodes its uploads itself batches together."""
        raise NotImplementedError

    def rows(
        self,
        names: Sequence[str],
        out: Outputs,
        *,
        top_k: int = 1,
        reject: str | float | None = None,
        reject_rate: float | None = None,
        errors: dict[str, str] | None = None,
    ) -> list[dict]:
        """``predict``'s rows, one per name, from ``out`` (whose ``indices`` point into
        ``names``); a name without an output row gets ``error`` (from ``errors``)."""
        reject = check_reject(reject)
        auto = 1.0 if reject_rate is None else self.threshold_for_rate(check_rate(reject_rate))
        threshold = _threshold(reject, out, auto)
        k = max(1, min(top_k, len(self.labels)))
        found = {int(i): j for j, i in enumerate(out.indices.tolist())}
        results = []
        for i, name in enumerate(names):
            if i in found:
                results.append(self._row(name, out, found[i], k, threshold))
            else:
                results.append({"path": name, "error": (errors or {}).get(name, "unreadable")})
        return results

    def _row(self, path: str, out: Outputs, j: int, k: int, threshold: float | None) -> dict:
        probs = out.probs[j]
        order = np.argsort(-probs)
        row = {
            "path": path,
            "top": [
                {"class": self.labels.names[c], "probability": float(probs[c])} for c in order[:k]
            ],
        }
        if self.multi_label:  # every class at or above its own threshold, most probable first
            row["labels"] = [
                {"class": self.labels.names[c], "probability": float(probs[c])}
                for c in order
                if probs[c] >= self.thresholds[c]
            ]
        if threshold is not None:
            score = float(out.unknown[j])
            row["unknown"] = bool(score > threshold)
            row["unknown_score"] = score
        return row

    def labelled_samples(self, data, columns: ManifestColumns | None = None) -> list[Sample]:
        """The images ``evaluate`` scores: ``data.dataset.labelled_samples`` with this model's
        classes (a multi-label model reads every manifest cell as a label set)."""
        if self.multi_label:
            columns = replace(columns or ManifestColumns(), multi_label=True)
        return labelled_samples(data, self.labels, columns)

    def evaluate(
        self,
        folder: str | Path,
        *,
        batch_size: int = 32,
        workers: int | None = None,
        progress: bool = False,
        tta: str = "none",
        columns: ManifestColumns | None = None,
    ) -> dict:
        """Metrics on ``folder/<class>/<images>`` (the class folders must be model classes), or
        on a manifest's test rows (``data.dataset.labelled_samples``, read by ``columns``)."""
        samples = self.labelled_samples(folder, columns)
        return self.evaluate_samples(
            samples, batch_size=batch_size, workers=workers, progress=progress, tta=tta
        )

    def evaluate_samples(
        self,
        samples: list[Sample],
        *,
        batch_size: int = 32,
        workers: int | None = None,
        progress: bool = False,
        tta: str = "none",
    ) -> dict:
        passes = self.passes_per_image(tta)  # checks ``tta`` before any work
        skips = SkipLog()
        out = self._probabilities(
            samples, batch_size=batch_size, workers=workers, progress=progress, skips=skips, tta=tta
        )
        probs, indices = out.probs, out.indices
        if self.multi_label:
            y_true = [samples[i].multi_hot for i in indices]
            names = list(self.labels.names)
            metrics = multilabel_metrics(y_true, probs, self.thresholds, names)
        else:
            y_true = [samples[i].label for i in indices]
            metrics = classification_metrics(y_true, probs.argmax(1), self.labels.names, probs)
            metrics["expected_calibration_error"] = expected_calibration_error(y_true, probs)
            metrics["ece_if_calibrated"] = calibrated_ece(probs)
        metrics["calibration"] = self.calibration_record()
        metrics["skipped"] = skips.to_dict()["skipped"]
        metrics["tta"] = tta
        metrics["forward_passes_per_image"] = passes
        return metrics

    def labelled_predictions(
        self,
        folder: str | Path,
        *,
        batch_size: int = 32,
        workers: int | None = None,
        progress: bool = False,
        tta: str = "none",
        columns: ManifestColumns | None = None,
    ) -> LabelledPredictions:
        """Each image's class probabilities on ``folder/<class>/<images>`` (or a manifest's test
        rows) beside its true label: what ``evaluate(..., report=DIR)`` builds its report from."""
        samples = self.labelled_samples(folder, columns)
        passes = self.passes_per_image(tta)  # checks ``tta`` before any work
        skips = SkipLog()
        out = self._probabilities(
            samples, batch_size=batch_size, workers=workers, progress=progress, skips=skips, tta=tta
        )
        probs, indices = out.probs, out.indices
        return LabelledPredictions(
            paths=[str(samples[i].path) for i in indices],
            y_true=np.array([samples[i].target for i in indices], dtype=int),
            probs=probs,
            class_names=list(self.labels.names),
            forward_passes=passes,
            skipped=skips.to_dict()["skipped"],
        )
