"""``write_multilabel_report``: the evaluation report of a multi-label model.

A confusion matrix needs one true and one predicted class per image, which multi-label images do
not have. The page shows instead the per-class table (precision, recall, F1, average precision,
threshold), the **co-occurrence of errors** (``error_cooccurrence``: which class is missed while
which other is wrongly predicted on the same image) and galleries of each class's false
positives and false negatives, most confident first. ``metrics.json`` holds every number.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path

import numpy as np

from ..errors import DataError
from ._html import STYLE
from ._plots import plot_error_cooccurrence
from .multilabel import multilabel_metrics, predicted_sets
from .predictions import LabelledPredictions
from .report import GALLERY_LIMIT, check_report_dir, short_path, write_thumbnail, write_utf8

__all__ = ["error_cooccurrence", "multilabel_errors", "write_multilabel_report"]

NONE = "(none)"  # the row/column of an error with no counterpart on the same image


def error_cooccurrence(y_true, predicted) -> np.ndarray:
    """``(C + 1, C + 1)`` counts: cell ``[i, j]`` is the images on which class ``i`` was missed
    and class ``j`` wrongly predicted; the last column counts misses with no wrong class on the
    image, the last row wrong classes with nothing missed."""
    y, pred = np.asarray(y_true, dtype=int), np.asarray(predicted, dtype=int)
    classes = y.shape[1]
    counts = np.zeros((classes + 1, classes + 1), dtype=int)
    for truth, guess in zip(y, pred, strict=True):
        missed = np.flatnonzero((truth == 1) & (guess == 0))
        wrong = np.flatnonzero((truth == 0) & (guess == 1))
        for i in missed if len(missed) else [classes]:
            for j in wrong if len(wrong) else [classes]:
                counts[i, j] += int(i != classes or j != classes)
    return counts


def multilabel_errors(p: LabelledPredictions, thresholds) -> list[dict]:
    """Every false positive and false negative: ``path``, ``class``, ``kind``, ``probability``,
    the image's ``true`` and ``predicted`` classes; the most confident mistakes first (a false
    positive by its probability, a false negative by one minus it)."""
    pred = predicted_sets(p.probs, thresholds)
    names = list(p.class_names)
    errors = []
    for row, (truth, guess, probs) in enumerate(zip(p.y_true, pred, p.probs, strict=True)):
        for c in np.flatnonzero(truth != guess):
            kind = "false-positive" if guess[c] else "false-negative"
            errors.append(
                {
                    "path": p.paths[row],
                    "class": names[c],
                    "kind": kind,
                    "probability": float(probs[c]),
                    "true": [names[k] for k in np.flatnonzero(truth)],
                    "predicted": [names[k] for k in np.flatnonzero(guess)],
                }
            )
    confidence = {
        "false-positive": lambda e: e["probability"],
        "false-negative": lambda e: 1 - e["probability"],
    }
    return sorted(errors, key=lambda e: -confidence[e["kind"]](e))


def _gallery(out: Path, errors: Sequence[dict], limit: int) -> list[dict]:
    thumbs = out / "thumbs"
    for old in thumbs.glob("error-*.jpg"):  # an earlier report's
        old.unlink()
    shown = []
    for rank, item in enumerate(errors[:limit], start=1):
        name = f"thumbs/error-{rank:04d}.jpg"
        size = write_thumbnail(item["path"], out / name)
        shown.append({**item, "thumbnail": name if size else None})
    return shown


def _per_class_rows(metrics: Mapping) -> str:
    rows = []
    for name, r in metrics["per_class"].items():
        ap = "–" if r["average_precision"] is None else f"{r['average_precision']:.3f}"
        cells = (f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", ap)
        cells += (f"{r['threshold']:.3f}", str(r["support"]))
        rows.append(
            f'<tr><td class="l">{escape(name)}</td>'
            + "".join(f"<td>{c}</td>" for c in cells)
            + "</tr>"
        )
    head = "".join(
        f"<th>{h}</th>" for h in ("precision", "recall", "F1", "AP", "threshold", "support")
    )
    return f'<table><tr><th class="l">class</th>{head}</tr>{"".join(rows)}</table>'


def _figures(shown: Sequence[dict], kind: str) -> str:
    items = [e for e in shown if e["kind"] == kind]
    if not items:
        return '<p class="note">None.</p>'
    figures = []
    for e in items:
        image = f'<img src="{escape(e["thumbnail"])}" alt="">' if e["thumbnail"] else ""
        figures.append(
            f'<figure>{image}<div class="wrong">{escape(e["class"])} {e["probability"]:.2f}</div>'
            f"<div>true: {escape(', '.join(e['true']) or '-')}</div>"
            f"<div>predicted: {escape(', '.join(e['predicted']) or '-')}</div>"
            f'<div class="path">{escape(short_path(e["path"]))}</div></figure>'
        )
    return f'<div class="gallery">{"".join(figures)}</div>'


def _page(metrics: Mapping, context: Mapping[str, str], shown: Sequence[dict]) -> str:
    ctx = " · ".join(f"{escape(k)}: <b>{escape(str(v))}</b>" for k, v in context.items())
    fixed = metrics["at_0.5"]
    tiles = (
        ("mAP", metrics["mAP"]),
        ("macro F1", metrics["macro_f1"]),
        ("macro F1 at 0.5", fixed["macro_f1"]),
        ("micro F1", metrics["micro_f1"]),
        ("subset accuracy", metrics["subset_accuracy"]),
    )
    tile_html = "".join(
        f'<div class="tile"><div class="v">{100 * v:.1f}%</div><div class="k">{k}</div></div>'
        for k, v in tiles
    )
    total = len(metrics["errors"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>visiontune evaluation report (multi-label)</title><style>{STYLE}</style></head>
<body><main>
<h1>Evaluation report (multi-label)</h1>
<p class="context">{ctx}</p>
<div class="tiles">{tile_html}</div>
<p class="note">{metrics["num_images"]} images. A class is predicted where its probability
reaches its threshold, chosen on the run's validation split; "at 0.5" is every threshold 0.5.</p>
<h2>Per class</h2>
{_per_class_rows(metrics)}
<h2>Errors that occur together</h2>
<p class="note">Rows: the class missed on an image; columns: the class wrongly predicted on the
same image. "(none)": a miss with no wrong class, or a wrong class with nothing missed.</p>
<img class="figure" src="error_cooccurrence.png" alt="co-occurrence of errors">
<h2>False positives</h2>
<p class="note">{total} errors in all; up to {GALLERY_LIMIT} shown, most confident first.</p>
{_figures(shown, "false-positive")}
<h2>False negatives</h2>
{_figures(shown, "false-negative")}
<footer>Written by visiontune. All numbers are in <a href="metrics.json">metrics.json</a>.</footer>
</main></body></html>
"""


def write_multilabel_report(
    out_dir: str | Path,
    predictions: LabelledPredictions,
    thresholds,
    *,
    context: Mapping[str, str] | None = None,
    gallery_limit: int = GALLERY_LIMIT,
) -> dict:
    """Write the multi-label report folder (module docstring); returns its metrics."""
    out = check_report_dir(out_dir)
    if not len(predictions.paths):
        raise DataError("no image could be evaluated, so there is nothing to report")
    names = list(predictions.class_names)
    metrics = multilabel_metrics(predictions.y_true, predictions.probs, thresholds, names)
    predicted = predicted_sets(predictions.probs, thresholds)
    counts = error_cooccurrence(predictions.y_true, predicted)
    metrics["error_cooccurrence"] = {"labels": [*names, NONE], "counts": counts.tolist()}
    metrics["errors"] = multilabel_errors(predictions, thresholds)
    metrics["skipped"] = dict(predictions.skipped)
    metrics["forward_passes_per_image"] = predictions.forward_passes
    metrics["context"] = dict(context or {})
    out.mkdir(parents=True, exist_ok=True)
    plot_error_cooccurrence(out / "error_cooccurrence.png", counts, [*names, NONE])
    shown = _gallery(out, metrics["errors"], gallery_limit)
    write_utf8(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    write_utf8(out / "index.html", _page(metrics, metrics["context"], shown))
    return metrics
