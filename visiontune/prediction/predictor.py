"""``TrainedModel``: a loaded bundle that predicts on image files and evaluates on folders.

``Predictor`` is what it shares with ``Ensemble``: ``predict``, ``evaluate`` and
``evaluate_samples`` built on one method, ``_probabilities``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..backbones import Classifier
from ..data.folder import Sample
from ..data.loader import ImageDataset, SkipLog, default_workers, make_loader
from ..data.transforms import decode_size
from ..engine.loop import Runtime, run_inference
from ..engine.precision import Precision, autocast, resolve_precision
from ..evaluation.rejection import FeatureGaussians, RejectionScale, UnknownDetector
from ..formats.bundle import load_bundle
from ..formats.trust import read_trust_tensors, temperature_of, thresholds_of
from ..specs import LabelMap
from .base import Outputs, Predictor, expand_image_paths
from .scored import ScoredViews
from .tta import TTAViews, view_count

__all__ = ["Predictor", "TrainedModel", "expand_image_paths"]


class TrainedModel(Predictor):
    """A classifier with its labels and preprocessing. Build with ``visiontune.load(run)``.

    >>> run = visiontune.fit(photos, strategy="head", out="run", progress=False, **TINY).run_dir
    >>> model = visiontune.load(run)
    >>> top = model.predict([photos / "test" / "cat"], top_k=2)[0]["top"]
    >>> [sorted(t) for t in top], top[0]["probability"] >= top[1]["probability"]
    ([['class', 'probability'], ['class', 'probability']], True)
    >>> model.evaluate(photos / "test", tta="10crop")["num_images"]
    6
    """

    def __init__(
        self,
        model: Classifier,
        labels: LabelMap,
        *,
        config: dict | None = None,
        device: str | torch.device = "cpu",
        run_dir: Path | None = None,
        temperature: float = 1.0,
        detector: UnknownDetector | None = None,
        precision: Precision | None = None,
        thresholds=None,
    ):
        self.model = model.eval().to(device)
        self.labels = labels
        self.config = config or {}
        self.device = torch.device(device)
        self.run_dir = run_dir
        self.temperature = float(temperature)  # divides the logits (evaluation.calibration)
        self.detector = detector  # unknown-image scores (evaluation.rejection), or None
        # The autocast dtype of its forward passes: the run's own, which its calibration and
        # rejection threshold were fitted in (``engine.precision``); fp32 unless told.
        self.precision = precision or Precision()
        # A multi-label model's per-class thresholds: given, or the bundle's.
        thresholds = thresholds if thresholds is not None else thresholds_of(self.config)
        self.multi_label = thresholds is not None
        self.thresholds = None if thresholds is None else np.asarray(thresholds)

    @classmethod
    def from_run(
        cls, run: str | Path, *, device: str | torch.device = "cpu", precision: str | None = None
    ) -> TrainedModel:
        """The bundle in ``run``; ``precision`` (``fp32``, ``bf16``, ``auto``) overrides the
        one it was trained and calibrated in, which it predicts in by default."""
        model, labels, config = load_bundle(run)
        if precision is None:
            chosen = Precision.from_dict(config.get("precision"))
        else:
            chosen = resolve_precision(precision, torch.device(device))
        return cls(
            model,
            labels,
            config=config,
            device=device,
            run_dir=Path(run),
            temperature=temperature_of(config),
            detector=_detector(Path(run), config),
            precision=chosen,
        )

    @property
    def preprocess(self):
        return self.model.backbone.preprocess

    def __repr__(self) -> str:
        return (
            f"TrainedModel(backbone={self.model.backbone.name!r}, "
            f"classes={list(self.labels.names)}, "
            f"run_dir={str(self.run_dir) if self.run_dir else None!r})"
        )

    def passes_per_image(self, tta: str = "none") -> int:
        return view_count(tta)

    def threshold_for_rate(self, rate: float) -> float:
        return 1.0 if self.detector is None else self.detector.scale.threshold_for(rate)

    def calibration_record(self) -> dict | None:
        trust = self.config.get("trust")
        if trust is None:
            return None
        return {"temperature": self.temperature, "validation": trust.get("calibration")}

    @torch.inference_mode()
    def decoded_outputs(self, images: Sequence, *, tta: str = "none") -> Outputs:
        # tta="none" is the run's eval transform, one view: what the export parity check
        # compares an exported file with.
        views = TTAViews(self.preprocess, tta)
        batch = torch.stack([views(image) for image in images]).to(self.device)
        with autocast(self.device, self.precision.inference):
            out = self._scored()(batch)
        probs, unknown = self._split(out.float().cpu().numpy())
        return Outputs(probs, np.arange(len(images)), unknown)

    def _scored(self) -> ScoredViews:
        return ScoredViews(
            self.model,
            temperature=self.temperature,
            detector=self.detector,
            multi_label=self.multi_label,
        )

    def _split(self, out: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``ScoredViews``' columns: the probabilities, and the unknown score if it has one."""
        classes = len(self.labels)
        unknown = out[:, classes].astype(np.float64) if self.detector is not None else None
        return out[:, :classes], unknown

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
        views = TTAViews(self.preprocess, tta)
        dataset = ImageDataset(samples, views, decode_size=decode_size(self.preprocess))
        per_batch = max(1, batch_size // view_count(tta))  # a forward pass sees ~batch_size views
        workers = default_workers() if workers is None else workers
        workers = min(workers, max(0, len(samples) // per_batch))  # tiny jobs: no process start-up
        loader = make_loader(dataset, batch_size=per_batch, shuffle=False, workers=workers)
        out, _, indices = run_inference(
            self._scored(),
            loader,
            runtime=Runtime(self.device, progress=progress, precision=self.precision),
            desc="predict",
            on_batch=skips.record,
        )
        width = len(self.labels) + (self.detector is not None)
        probs, unknown = self._split(out.numpy() if len(indices) else np.zeros((0, width)))
        return Outputs(probs, indices.numpy(), unknown)


def _detector(run: Path, config: dict) -> UnknownDetector | None:
    """The bundle's rejection statistics and scale (``formats.trust``), or None."""
    tensors = read_trust_tensors(run, config)
    if tensors is None:
        return None
    rejection = config["trust"]["rejection"]
    scale = RejectionScale(
        float(rejection["center"]),
        float(rejection["threshold"]),
        float(rejection["rate"]),
        tuple(float(q) for q in rejection.get("quantiles", ())),
    )
    return UnknownDetector(FeatureGaussians.from_tensors(tensors), scale)
