"""``write_report``: an evaluation as a folder a person can open, move or zip.

The folder holds ``metrics.json`` (every number), ``confusion_matrix.png``, ``curves.png``
(training curves from the run's ``history.json``), ``thumbs/`` (misclassified images, small) and
``index.html``, one page with all of it that refers to the other files by relative paths.
``index.html`` is written last, so its presence means the report is complete.

>>> result = visiontune.fit(photos, **TINY, strategy="head", epochs=1, workers=0, progress=False)
>>> predictions = visiontune.load(result.run_dir).labelled_predictions(photos / "test", workers=0)
>>> history = load_history(result.run_dir)
>>> metrics = write_report("report/", predictions, histories={"run": history})
>>> metrics["num_images"], (Path("report") / "index.html").is_file()
(6, True)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .._io import atomic_write
from .._paths import check_writable_dir
from ..data.images import ImageDecodeError, decode_image
from ..errors import DataError
from ._html import render_page
from ._plots import plot_confusion_matrix, plot_history, plot_reliability
from .metrics import (
    calibrated_ece,
    calibration_bins,
    expected_calibration_error,
    most_confused_pairs,
    top_k_accuracy,
)
from .predictions import LabelledPredictions

__all__ = [
    "EXPLAIN_DIR",
    "GALLERY_LIMIT",
    "check_report_dir",
    "load_history",
    "misclassified",
    "report_metrics",
    "short_path",
    "write_report",
    "write_thumbnail",
    "write_utf8",
]

GALLERY_LIMIT = 200  # thumbnails on the page; metrics.json lists every misclassified image
THUMB_SIDE = 160  # pixels, longer side
TOP_K = (1, 2, 3, 5)
CALIBRATION_BINS = 15  # as in Guo et al. (2017)
THUMB_PREFIX = "miss-"
EXPLAIN_DIR = "explain"  # the gallery's Grad-CAM overlays, written by the layer with the model


def check_report_dir(out_dir: str | Path) -> Path:
    """The report folder as a path; refuses one that exists as a file or cannot be written
    (before any work; nothing is created)."""
    return check_writable_dir(out_dir, "report folder")


def load_history(run_dir: str | Path | None) -> list[dict] | None:
    """A run folder's ``history.json``, or None when it has none (or it is unreadable)."""
    path = Path(run_dir) / "history.json" if run_dir else None
    if path is None or not path.is_file():
        return None
    try:
        history = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return history if isinstance(history, list) else None


def misclassified(p: LabelledPredictions) -> list[dict]:
    """Every wrong image, the most confident mistakes first (the likeliest label errors)."""
    names, probs, y_pred = list(p.class_names), np.asarray(p.probs), p.y_pred
    wrong = [i for i in range(len(p.paths)) if y_pred[i] != p.y_true[i]]
    items = [
        {
            "path": str(p.paths[i]),
            "true": names[p.y_true[i]],
            "predicted": names[y_pred[i]],
            "confidence": float(probs[i, y_pred[i]]),
            "true_probability": float(probs[i, p.y_true[i]]),
        }
        for i in wrong
    ]
    return sorted(items, key=lambda item: (-item["confidence"], item["path"]))


def report_metrics(predictions: LabelledPredictions, *, bins: int = CALIBRATION_BINS) -> dict:
    """Everything ``metrics.json`` holds: ``classification_metrics`` plus top-k accuracies,
    calibration (ECE and its bins), the most-confused pairs, the cost per image and every
    misclassified image."""
    p = predictions
    metrics = p.metrics()
    metrics["forward_passes_per_image"] = p.forward_passes
    ks = sorted({1} | {k for k in TOP_K if k < len(p.class_names)})
    metrics["top_k_accuracy"] = {str(k): top_k_accuracy(p.y_true, p.probs, k=k) for k in ks}
    metrics["expected_calibration_error"] = expected_calibration_error(p.y_true, p.probs, bins=bins)
    metrics["ece_if_calibrated"] = calibrated_ece(p.probs, bins=bins)
    metrics["calibration_bins"] = bins
    metrics["reliability"] = calibration_bins(p.y_true, p.probs, bins=bins)
    metrics["most_confused"] = most_confused_pairs(metrics["confusion_matrix"], p.class_names)
    metrics["misclassified"] = misclassified(p)
    return metrics


def write_thumbnail(source: str, target: Path) -> tuple[int, int] | None:
    """A small JPEG of ``source``, decoded as training decodes it (EXIF, CMYK, 16-bit...)."""
    try:
        image = decode_image(source, min_short_side=THUMB_SIDE).image
    except ImageDecodeError:
        return None
    image.thumbnail((THUMB_SIDE, THUMB_SIDE))
    atomic_write(target, lambda tmp: image.save(tmp, format="JPEG", quality=85))
    return image.size


def short_path(path: str) -> str:
    """The class folder and file name of ``path``: enough to find it on a page."""
    parts = Path(path).parts
    return "/".join(parts[-2:])


def _write_gallery(
    out: Path, wrong: list[dict], limit: int, explanations: Mapping[str, str]
) -> list[dict]:
    thumbs = out / "thumbs"
    for old in thumbs.glob(f"{THUMB_PREFIX}*.jpg"):  # an earlier report's, not this one's
        old.unlink()
    gallery = []
    for rank, item in enumerate(wrong[:limit], start=1):
        name = f"thumbs/{THUMB_PREFIX}{rank:04d}.jpg"
        size = write_thumbnail(item["path"], out / name)
        item["thumbnail"] = name if size else None
        if item["path"] in explanations:
            item["explanation"] = explanations[item["path"]]
        gallery.append({**item, "thumbnail_size": size, "short_path": short_path(item["path"])})
    return gallery


def write_report(
    out_dir: str | Path,
    predictions: LabelledPredictions,
    *,
    histories: Mapping[str, Sequence[dict] | None] | None = None,
    context: Mapping[str, str] | None = None,
    gallery_limit: int = GALLERY_LIMIT,
    bins: int = CALIBRATION_BINS,
    calibration: dict | None = None,
    explanations: Mapping[str, str] | None = None,
) -> dict:
    """Write the report folder and return its metrics (what ``metrics.json`` holds).

    ``histories`` maps a name to a run's ``history.json`` (epochs, or a ``head`` run's C grid):
    one run, or an ensemble's members; none: no curves. ``context`` is shown at the top of the
    page (run, data, backbone...) and kept in ``metrics.json``. ``calibration``: the model's
    temperature and its validation record, shown beside the reliability diagram.
    ``explanations`` maps an image's path to its overlay, a file already in ``out_dir``
    given relative to it (``EXPLAIN_DIR``): shown beside the image in the gallery and kept
    as the item's ``explanation``.
    """
    out = check_report_dir(out_dir)
    if not len(predictions.paths):
        raise DataError(
            "no image could be evaluated, so there is nothing to report"
            + (f" ({len(predictions.skipped)} skipped)" if predictions.skipped else "")
        )
    metrics = report_metrics(predictions, bins=bins)
    metrics["context"] = dict(context or {})
    metrics["calibration"] = calibration
    out.mkdir(parents=True, exist_ok=True)
    plot_reliability(
        out / "reliability.png", metrics["reliability"], metrics["expected_calibration_error"]
    )
    gallery = _write_gallery(out, metrics["misclassified"], gallery_limit, explanations or {})
    plot_confusion_matrix(
        out / "confusion_matrix.png", metrics["confusion_matrix"], predictions.class_names
    )
    histories = {name: h for name, h in (histories or {}).items() if h}
    has_curves = bool(histories) and plot_history(out / "curves.png", histories)
    if not has_curves:
        (out / "curves.png").unlink(missing_ok=True)  # an earlier report's
    curves_note = (
        "No training history: the run folder has no history.json."
        if not histories
        else "The run's history.json has a shape this report does not know; no curves drawn."
    )
    write_utf8(out / "metrics.json", json.dumps(metrics, indent=2, default=_jsonable) + "\n")
    page = render_page(
        metrics,
        context=metrics["context"],
        gallery=gallery,
        has_curves=has_curves,
        curves_note=curves_note,
    )
    write_utf8(out / "index.html", page)
    return metrics


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_utf8(path: Path, text: str) -> None:
    """``text`` to ``path`` as UTF-8, atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
