"""The model card ``GET /model`` returns and the card page shows: classes, backbone and
preprocessing, the training data and strategy, validation/test metrics from each run's
``metrics.json``, calibration and rejection, versions, and the evaluation reports found in the
run folders (sub-folders holding ``index.html`` and ``metrics.json``, as ``evaluate --report``
writes them)."""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path

from .._version import __version__
from ..prediction.base import Predictor
from ..prediction.ensemble import Ensemble
from ..prediction.onnx_predictor import OnnxModel
from ..training.outdir import is_report

__all__ = ["find_reports", "model_card", "runtime_versions"]

_PACKAGES = ("torch", "torchvision", "timm", "onnxruntime", "fastapi", "uvicorn", "pillow")


def runtime_versions() -> dict:
    """The versions serving the model now (the bundle records those it was trained with)."""
    versions = {"visiontune": __version__, "python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def find_reports(run_dir: Path | None) -> list[Path]:
    """Evaluation report folders directly inside ``run_dir``, by name."""
    if run_dir is None or not Path(run_dir).is_dir():
        return []
    return sorted(child for child in Path(run_dir).iterdir() if is_report(child))


def _read_metrics(run_dir: Path | None) -> dict:
    try:
        return json.loads((Path(run_dir) / "metrics.json").read_text())
    except (TypeError, OSError, ValueError):  # no run folder, no file, or not JSON
        return {}


def _metrics_summary(metrics: dict) -> dict:
    """What a reader of the card wants from ``metrics.json``: the scores, not the tables."""
    test = metrics.get("test") or {}
    val = metrics.get("val") or {}
    return {
        "validation": {
            "accuracy": val.get("accuracy"),
            "loss": val.get("loss"),
            "images": metrics.get("val_images"),
        },
        "test": {
            "accuracy": test.get("accuracy"),
            "macro_f1": (test.get("macro_avg") or {}).get("f1"),
            "images": test.get("num_images"),
        }
        if test
        else None,
        "calibration": metrics.get("calibration"),
        "rejection": metrics.get("rejection"),
        "auto": metrics.get("auto"),
        "train_seconds": (metrics.get("timing") or {}).get("total_s"),
    }


def _member_card(member) -> dict:
    config = member.config
    backbone = config.get("backbone") or {}
    return {
        "run": str(member.run_dir) if member.run_dir else None,
        "backbone": backbone.get("name"),
        "weights": backbone.get("weights_source"),
        "preprocess": config.get("preprocess"),
        "strategy": (config.get("strategy") or {}).get("name"),
        "data": config.get("data"),
        "augment": (config.get("augment") or {}).get("text"),
        "precision": member.precision.to_dict(),  # what it predicts in here
        "trained_with": config.get("versions"),
        "metrics": _metrics_summary(_read_metrics(member.run_dir)),
    }


def model_card(model: Predictor, *, report_urls: list[str] = ()) -> dict:
    """The card of a run, an ensemble or an ONNX export (whose card holds what its metadata
    carries: no training data or metrics)."""
    if isinstance(model, OnnxModel):
        kind, members = "onnx", [{"file": str(model.path), **model.metadata.to_dict()}]
    elif isinstance(model, Ensemble):
        kind, members = "ensemble", [_member_card(m) for m in model.members]
    else:
        kind, members = "run", [_member_card(model)]
    return {
        "kind": kind,
        "classes": list(model.labels.names),
        "members": members,
        "calibration": model.calibration_record(),
        "reports": list(report_urls),
        "versions": runtime_versions(),
    }
