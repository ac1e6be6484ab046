"""``load``, ``evaluate``, ``predict``: saved runs on new images, alone or as an ensemble."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .. import _runtime
from ..evaluation.report import check_report_dir
from ..prediction.ensemble import Ensemble, load_predictor
from ..prediction.predictor import TrainedModel
from ._report import evaluation_report

Runs = str | Path | Sequence[str | Path]


def load(run: Runs, *, device: str = "cpu") -> TrainedModel | Ensemble:
    """Load a saved run folder (``model.safetensors`` + ``config.json``) for prediction; an
    ensemble folder (``train --ensemble``) or a list of folders loads as one ``Ensemble`` that
    averages its members' probabilities. An ``.onnx`` file from ``visiontune export`` loads as
    an ``OnnxModel`` run by onnxruntime (same ``predict``/``evaluate``)."""
    _runtime.tune_allocator()
    single = run if isinstance(run, (str, Path)) else (run[0] if len(run) == 1 else None)
    if single is not None and str(single).lower().endswith(".onnx"):
        from ..prediction.onnx_predictor import OnnxModel  # onnx/onnxruntime only when asked for

        return OnnxModel.from_file(single)
    return load_predictor(run, device=device)


def evaluate(
    run: Runs,
    folder: str | Path,
    *,
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool = False,
    tta: str = "none",
    report: str | Path | None = None,
) -> dict:
    """Accuracy, per-class precision/recall/F1 and the confusion matrix on ``folder/<class>/...``.
    ``tta``: ``none``, ``flip``, ``5crop`` or ``10crop`` views per image, probabilities averaged.
    ``report``: a folder to write ``index.html``, ``metrics.json`` and figures into."""
    if report is not None:
        check_report_dir(report)  # before any work: a bad folder writes nothing
        return evaluation_report(
            load(run),
            run,
            folder,
            report,
            batch_size=batch_size,
            workers=workers,
            progress=progress,
            tta=tta,
        )
    return load(run).evaluate(
        folder, batch_size=batch_size, workers=workers, progress=progress, tta=tta
    )


def predict(
    run: Runs,
    paths,
    *,
    top_k: int = 1,
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool = False,
    tta: str = "none",
) -> list[dict]:
    """Top-k classes with probabilities for each image file (folders are expanded)."""
    return load(run).predict(
        paths, top_k=top_k, batch_size=batch_size, workers=workers, progress=progress, tta=tta
    )
