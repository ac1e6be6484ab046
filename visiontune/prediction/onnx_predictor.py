"""``OnnxModel``: an exported ``.onnx`` file that predicts and evaluates like ``TrainedModel``.

It reads classes and preprocessing from the file's metadata, decodes and crops images with
visiontune's data code (the same decoder and eval geometry as the run folder) and runs the
graph in onnxruntime. It imports no model code (no backbones, no timm), so a deployment needs
the exported file and the data transforms only.

>>> run = visiontune.fit(photos, strategy="head", out="run", progress=False, **TINY).run_dir
>>> report = visiontune.export(run, format="onnx")
>>> model = visiontune.load(run / "model.onnx")
>>> [row["top"][0]["class"] for row in model.predict([photos / "test" / "dog"])][:1]
['dog']
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..data.folder import Sample
from ..data.loader import ImageDataset, SkipLog, default_workers, make_loader
from ..data.transforms import decode_size, eval_geometry
from ..errors import VisiontuneError
from ..formats.export_metadata import INPUT_NAME, OUTPUT_NAME, UNKNOWN_NAME, ExportMetadata
from ..formats.onnx_reader import check_class_count, onnx_session
from .base import Outputs, Predictor

__all__ = ["OnnxModel"]


class OnnxModel(Predictor):
    """An ONNX export run by onnxruntime on the CPU. Build with ``visiontune.load("x.onnx")``."""

    def __init__(self, session, metadata: ExportMetadata, *, path: Path | None = None):
        self.session = session
        self.metadata = metadata
        self.labels = metadata.labels
        self.preprocess = metadata.preprocess
        self.path = path
        self.run_dir = None  # no run folder behind it; ``path`` is the file
        self.multi_label = metadata.thresholds is not None  # its outputs are sigmoids
        self.thresholds = None if metadata.thresholds is None else np.array(metadata.thresholds)

    @classmethod
    def from_file(cls, path: str | Path, *, threads: int | None = None) -> OnnxModel:
        session, metadata = onnx_session(path, threads=threads)
        return cls(session, metadata, path=Path(path))

    @property
    def config(self) -> dict:
        return self.metadata.to_dict()

    def __repr__(self) -> str:
        return (
            f"OnnxModel(backbone={self.metadata.backbone!r}, classes={list(self.labels.names)}, "
            f"path={str(self.path) if self.path else None!r})"
        )

    def passes_per_image(self, tta: str = "none") -> int:
        if tta != "none":
            raise VisiontuneError(
                f"tta={tta!r} is not available for an ONNX export; use the run "
                "folder for test-time augmentation"
            )
        return 1

    def run(self, images: np.ndarray) -> np.ndarray:
        """Probabilities for a uint8 ``(N, 3, size, size)`` batch of eval crops."""
        return self._run(images)[0]

    def _run(self, images: np.ndarray, *, unknown: bool = False) -> list[np.ndarray]:
        """One pass of the graph over a uint8 batch: the probabilities and, with ``unknown``,
        the unknown score, together (asked for apart, the backbone would run twice)."""
        outputs = [OUTPUT_NAME, UNKNOWN_NAME] if unknown else [OUTPUT_NAME]
        found = self.session.run(outputs, {INPUT_NAME: np.ascontiguousarray(images)})
        # A graph whose class axis is not fixed could only be checked once it ran.
        check_class_count(self.metadata, found[0].shape[-1], source=str(self.path or "the model"))
        return found

    def calibration_record(self) -> dict | None:
        return {"temperature": self.metadata.temperature, "validation": None}

    def threshold_for_rate(self, rate: float) -> float:
        quantiles = (self.metadata.unknown or {}).get("quantiles") or []
        if len(quantiles) < 2 or rate == self.metadata.unknown.get("rate"):
            return 1.0
        return float(np.interp(1 - rate, np.linspace(0, 1, len(quantiles)), quantiles))

    def decoded_outputs(self, images: Sequence, *, tta: str = "none") -> Outputs:
        self.passes_per_image(tta)
        geometry = eval_geometry(self.preprocess)
        batch = np.stack([geometry(image).numpy() for image in images])
        return self._outputs(batch, np.arange(len(images)))

    def _outputs(self, images: np.ndarray, indices: np.ndarray) -> Outputs:
        """The graph's probabilities (and unknown scores, where it has them) of a uint8 batch."""
        if self.metadata.unknown is None:
            return Outputs(self.run(images), indices, None)
        probs, unknown = self._run(images, unknown=True)
        return Outputs(probs, indices, unknown.astype(np.float64))

    def _probabilities(
        self,
        samples: list[Sample],
        *,
        batch_size: int,
        workers: int | None,
        progress: bool,
        skips: SkipLog,
        tta: str = "none",
    ) -> Outputs:
        self.passes_per_image(tta)
        dataset = ImageDataset(
            samples, eval_geometry(self.preprocess), decode_size=decode_size(self.preprocess)
        )
        workers = default_workers() if workers is None else workers
        workers = min(workers, max(0, len(samples) // batch_size))  # tiny jobs: no process start-up
        loader = make_loader(dataset, batch_size=batch_size, shuffle=False, workers=workers)
        if progress:
            from tqdm import tqdm

            loader = tqdm(loader, desc="predict", unit="batch", leave=False)
        parts = []
        for batch in loader:
            skips.record(batch)
            if len(batch.indices):
                parts.append(self._outputs(batch.images.numpy(), batch.indices.numpy()))
        if not parts:
            empty = np.zeros((0, len(self.labels)), dtype=np.float32)
            return Outputs(empty, np.zeros(0, dtype=np.int64))
        unknown = None if parts[0].unknown is None else np.concatenate([o.unknown for o in parts])
        probs = np.concatenate([o.probs for o in parts])
        return Outputs(probs, np.concatenate([o.indices for o in parts]), unknown)

    def labelled_predictions(self, folder: str | Path, **_options):
        # What ``evaluate(..., report=DIR)`` calls; the report also shows the run's training
        # curves, which an exported file does not carry.
        raise VisiontuneError(
            "an evaluation report (--report) needs the run folder; an ONNX export "
            "has no training history. Evaluate the .onnx file without --report."
        )
