"""``export_model``: a classifier to a self-describing ONNX or TorchScript file, parity-checked.

Order of work: parity inputs and the run's own ``TrainedModel`` probabilities for them first
(cheap, and they fail on bad input before anything is written), then the export to a temporary
file, the check against that file through the same reader users get, and only then the rename
onto ``out``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from .._version import __version__
from ..choices import EXPORT_FORMATS
from ..errors import VisiontuneError
from ..evaluation.rejection import UnknownDetector
from ..formats.export_metadata import (
    MULTI_LABEL_OUTPUT,
    OUTPUT_DESCRIPTION,
    UNKNOWN_NAME,
    ExportMetadata,
)
from ..prediction.predictor import TrainedModel
from ..specs import LabelMap
from .parity import (
    MAX_IMAGES,
    TOLERANCE,
    ExportReport,
    check_parity,
    check_unknown_parity,
    parity_inputs,
    reference_outputs,
)
from .wrapper import ProbabilityModel

__all__ = ["EXPORT_FORMATS", "default_export_name", "export_model"]

_DEFAULT_NAMES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}


def default_export_name(format: str) -> str:
    return _DEFAULT_NAMES[check_format(format)]


def check_format(format: str) -> str:
    if format not in EXPORT_FORMATS:
        raise VisiontuneError(
            f"export format must be one of {', '.join(EXPORT_FORMATS)}, got {format!r}"
        )
    return format


def _metadata(predictor: TrainedModel, temperature: float, detector) -> ExportMetadata:
    """What the exported file says about itself (``formats.export_metadata``)."""
    thresholds = predictor.thresholds
    return ExportMetadata(
        classes=tuple(predictor.labels.names),
        preprocess=predictor.preprocess,
        backbone=predictor.model.backbone.name,
        visiontune_version=__version__,
        temperature=temperature,
        unknown=_unknown_entry(detector),
        thresholds=None if thresholds is None else tuple(float(t) for t in thresholds),
        output=OUTPUT_DESCRIPTION if thresholds is None else MULTI_LABEL_OUTPUT,
    )


def export_model(
    model: torch.nn.Module,
    labels: LabelMap,
    *,
    format: str,
    out: str | Path,
    data: str | Path | None = None,
    tolerance: float = TOLERANCE,
    max_images: int = MAX_IMAGES,
    temperature: float = 1.0,
    detector: UnknownDetector | None = None,
    thresholds: Sequence[float] | None = None,
) -> ExportReport:
    """Export a ``Classifier`` (``model.backbone`` carries name and preprocessing) to ``out``.

    ``data``: a folder whose images feed the parity check (the run's data); generated images,
    with a ``ParityWarning``, when it is missing. ``temperature`` goes inside the graph; the
    ``detector``'s unknown score becomes a second output of an ONNX export (TorchScript keeps
    one output: its consumers expect a tensor, and ONNX is the recommended format).
    ``thresholds``: a multi-label model's, into the metadata; its graph outputs sigmoids.
    """
    check_format(format)
    if not tolerance > 0:
        raise VisiontuneError(f"tolerance must be positive, got {tolerance}")
    if max_images < 1:
        raise VisiontuneError(f"max_images must be at least 1, got {max_images}")
    out = Path(out)
    detector = detector if format == "onnx" else None
    predictor = TrainedModel(
        model,
        labels,
        device="cpu",
        temperature=temperature,
        detector=detector,
        thresholds=thresholds,
    )
    model = predictor.model
    spec = predictor.preprocess
    meta = _metadata(predictor, float(temperature), detector)
    inputs = parity_inputs(data, spec, max_images=max_images)
    eager, eager_unknown = reference_outputs(predictor, inputs)
    measured: dict = {"unknown": None}

    def check(run_exported) -> None:
        measured["diff"], measured["agreement"] = check_parity(
            eager, run_exported, inputs, tolerance=tolerance, what=f"the {format} export"
        )

    def check_unknown(run_exported) -> None:
        measured["unknown"] = check_unknown_parity(eager_unknown, run_exported, inputs)

    wrapper = ProbabilityModel(
        model,
        spec,
        temperature=temperature,
        detector=detector,
        multi_label=thresholds is not None,
    )
    if format == "onnx":
        from .onnx import export_onnx

        export_onnx(wrapper, meta, out, check=check, check_unknown=check_unknown)
    else:
        from .torchscript import export_torchscript

        export_torchscript(wrapper, meta, out, check=check)
    return ExportReport(
        path=out,
        format=format,
        max_abs_diff=measured["diff"],
        tolerance=tolerance,
        images=len(inputs.images),
        inputs=inputs.source,
        top1_agreement=measured["agreement"],
        size_bytes=out.stat().st_size,
        max_unknown_diff=measured["unknown"],
    )


def _unknown_entry(detector: UnknownDetector | None) -> dict | None:
    """The export metadata's description of its unknown-score output, or None."""
    if detector is None:
        return None
    return {
        "output": UNKNOWN_NAME,
        "threshold": 1.0,
        "rate": detector.scale.rate,
        # validation scores' quantiles 0..100 % (normalised): thresholds for other rates
        "quantiles": [
            round(float(q), 6) for q in detector.scale.normalise(detector.scale.quantiles)
        ],
        "meaning": "float32 (batch,): 0 a typical validation image, above 1 unlike the "
        "training images (the run's automatic threshold)",
    }
