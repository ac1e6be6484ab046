"""``evaluate(..., report=DIR)``: an evaluation written as a folder with a page to open."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

from ..errors import VisiontuneError
from ..evaluation.multilabel_report import write_multilabel_report
from ..evaluation.predictions import LabelledPredictions
from ..evaluation.report import (
    EXPLAIN_DIR,
    GALLERY_LIMIT,
    load_history,
    misclassified,
    write_report,
)
from ..formats.bundle import AUTO_FILE
from .base import Predictor
from .explain import check_explainable, explain_images


def _histories(predictor: Predictor) -> dict[str, list[dict] | None]:
    members = getattr(predictor, "members", None)  # an Ensemble: one curve per member
    if members is None:
        run_dir = getattr(predictor, "run_dir", None)
        return {Path(run_dir).name if run_dir else "run": load_history(run_dir)}
    return {f"member {i}": load_history(m.run_dir) for i, m in enumerate(members)}


def auto_summary(run_dir: Path | None) -> str | None:
    """``--strategy auto``'s decision (``RUN/auto.json``) in a line: each candidate's validation
    accuracy and time, and why the kept one was kept; None for another run."""
    path = Path(run_dir) / AUTO_FILE if run_dir else None
    if path is None or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        tried = "; ".join(
            f"{c['name']}: {_pct(c['accuracy'])} on {c['images']} validation images, "
            f"{c['seconds']:.0f} s"
            for c in record["candidates"]
        )
        return f"kept {record['kept']} ({tried}). {record['reasons'][-1]}"
    except (ValueError, KeyError, TypeError):
        return f"{AUTO_FILE} is unreadable"


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _context(predictor: Predictor, runs, folder, tta: str) -> dict[str, str]:
    members = getattr(predictor, "members", None) or [predictor]
    backbones = sorted({m.model.backbone.name for m in members})
    runs = [runs] if isinstance(runs, str | Path) else list(runs)
    context = {
        "run": ", ".join(str(r) for r in runs),
        "data": str(folder),
        "backbone": ", ".join(backbones),
    }
    if len(members) > 1:
        context["ensemble"] = f"{len(members)} members, probabilities averaged"
    decision = auto_summary(getattr(predictor, "run_dir", None))
    if decision:
        context["strategy (auto)"] = decision
    context["test-time augmentation"] = tta
    context["evaluated"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return context


def report_overlays(
    predictor: Predictor, classes: Mapping[str, str], out_dir: Path
) -> dict[str, str]:
    """Grad-CAM overlays of ``classes`` (image path -> the class to explain) in a report folder's
    ``explain/``, an earlier report's removed first: ``{image path: overlay path relative to
    out_dir}``. Raises ``VisiontuneError`` for a model that cannot be explained."""
    folder = Path(out_dir) / EXPLAIN_DIR
    for old in folder.glob("*.png"):  # an earlier report's
        old.unlink()
    check_explainable(predictor)
    if not classes:
        return {}
    written = explain_images(predictor, list(classes), folder, classes=classes)
    return {path: f"{EXPLAIN_DIR}/{file.name}" for path, file in written.items()}


def gallery_explanations(
    predictor: Predictor, predictions: LabelledPredictions, out_dir: Path
) -> tuple[dict[str, str], str]:
    """Grad-CAM overlays of the predicted class for the misclassified images the gallery shows,
    written into ``out_dir/explain/``: ``{image path: overlay path relative to out_dir}``, and a
    line for the page saying what they are or why there are none."""
    wrong = misclassified(predictions)[:GALLERY_LIMIT]
    try:  # a model without gradients, or a backbone without a spatial feature map
        relative = report_overlays(predictor, {w["path"]: w["predicted"] for w in wrong}, out_dir)
    except VisiontuneError as exc:
        return {}, f"none: {exc}"
    if not wrong:
        return {}, "none: no image was misclassified"
    return relative, "Grad-CAM of the predicted class, beside each misclassified image"


def evaluation_report(
    predictor: Predictor,
    runs,
    folder: str | Path,
    out_dir: str | Path,
    *,
    batch_size: int,
    workers: int | None,
    progress: bool,
    tta: str,
    columns=None,
) -> dict:
    """Evaluate ``predictor`` on ``folder`` (or a manifest's test rows, read by ``columns``) and
    write the report into ``out_dir``; the metrics
    (what ``metrics.json`` holds) plus ``tta`` and ``report``, the page's path."""
    predictions = predictor.labelled_predictions(
        folder, batch_size=batch_size, workers=workers, progress=progress, tta=tta, columns=columns
    )
    if predictor.multi_label:
        context = _context(predictor, runs, folder, tta)
        metrics = write_multilabel_report(
            out_dir, predictions, predictor.thresholds, context=context
        )
        return {**metrics, "tta": tta, "report": str(Path(out_dir) / "index.html")}
    explanations, note = gallery_explanations(predictor, predictions, Path(out_dir))
    metrics = write_report(
        out_dir,
        predictions,
        histories=_histories(predictor),
        context={**_context(predictor, runs, folder, tta), "explanations": note},
        calibration=predictor.calibration_record(),
        explanations=explanations,
    )
    return {**metrics, "tta": tta, "report": str(Path(out_dir) / "index.html")}
