"""``Predictor``: predictions and metrics from any model's class probabilities (no torch model
code here, so the ONNX predictor shares it), and ``expand_image_paths``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..data.folder import Sample, expand_image_paths, scan_class_folder
from ..data.loader import SkipLog
from ..evaluation.metrics import classification_metrics
from ..evaluation.predictions import LabelledPredictions
from ..specs import LabelMap

__all__ = ["Predictor", "expand_image_paths"]


class Predictor:
    """Predictions and metrics from class probabilities; subclasses provide ``labels``,
    ``passes_per_image`` and ``_probabilities``."""

    labels: LabelMap

    def passes_per_image(self, tta: str = "none") -> int:
        """Forward passes through a network per image: views x members."""
        raise NotImplementedError

    def _probabilities(
        self,
        samples: list[Sample],
        *,
        batch_size: int,
        workers: int | None,
        progress: bool,
        skips: SkipLog,
        tta: str,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities for the decodable samples, and their indices into ``samples``."""
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
    ) -> list[dict]:
        """One dict per input image: ``path``, ``top`` (k best classes with probabilities), or
        ``error`` for a file that could not be decoded. ``tta``: ``none``, ``flip``, ``5crop``
        or ``10crop`` (``visiontune.prediction.tta``); ``batch_size`` counts views."""
        files = expand_image_paths(paths)
        samples = [Sample(p, -1) for p in files]
        skips = SkipLog()
        probs, indices = self._probabilities(
            samples, batch_size=batch_size, workers=workers, progress=progress, skips=skips, tta=tta
        )
        k = max(1, min(top_k, len(self.labels)))
        by_index = dict(zip(indices.tolist(), probs, strict=False))
        results = []
        for i, path in enumerate(files):
            if i not in by_index:
                results.append(
                    {"path": str(path), "error": skips.skipped.get(str(path), "unreadable")}
                )
                continue
            order = np.argsort(-by_index[i])[:k]
            results.append(
                {
                    "path": str(path),
                    "top": [
                        {"class": self.labels.names[j], "probability": float(by_index[i][j])}
                        for j in order
                    ],
                }
            )
        return results

    def evaluate(
        self,
        folder: str | Path,
        *,
        batch_size: int = 32,
        workers: int | None = None,
        progress: bool = False,
        tta: str = "none",
    ) -> dict:
        """Metrics on ``folder/<class>/<images>``; the class folders must be model classes."""
        _, samples = scan_class_folder(Path(folder), self.labels)
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
        probs, indices = self._probabilities(
            samples, batch_size=batch_size, workers=workers, progress=progress, skips=skips, tta=tta
        )
        y_true = [samples[i].label for i in indices]
        metrics = classification_metrics(y_true, probs.argmax(1), self.labels.names, probs)
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
    ) -> LabelledPredictions:
        """Each image's class probabilities on ``folder/<class>/<images>`` beside its true label:
        what ``evaluate(..., report=DIR)`` builds its report from."""
        _, samples = scan_class_folder(Path(folder), self.labels)
        passes = self.passes_per_image(tta)  # checks ``tta`` before any work
        skips = SkipLog()
        probs, indices = self._probabilities(
            samples, batch_size=batch_size, workers=workers, progress=progress, skips=skips, tta=tta
        )
        return LabelledPredictions(
            paths=[str(samples[i].path) for i in indices],
            y_true=np.array([samples[i].label for i in indices], dtype=int),
            probs=probs,
            class_names=list(self.labels.names),
            forward_passes=passes,
            skipped=skips.to_dict()["skipped"],
        )
