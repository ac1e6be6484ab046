"""The report's ``index.html``: one self-contained page (inline CSS, no script, no network),
linking only to files beside it by relative paths. Every piece of text is escaped."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

__all__ = ["STYLE", "render_page"]

EXPLANATION_SIDE = 160  # pixels on the page, as the thumbnails' longer side

# The page style, shared by the other report pages (the audit page).
STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;
     background:#f6f7f9;line-height:1.4}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{margin:0 0 4px;font-size:1.6rem} h2{font-size:1.15rem;margin:28px 0 10px}
.context{color:#5a6372;font-size:.9rem;margin:0} .context b{color:#1d2330;font-weight:600}
.tiles{display:flex;flex-wrap:wrap;gap:12px;margin-top:18px}
.tile{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:10px 16px;min-width:120px}
.tile .v{font-size:1.45rem;font-weight:650} .tile .k{color:#5a6372;font-size:.8rem}
table{border-collapse:collapse;background:#fff;font-size:.9rem}
th,td{border:1px solid #dde1e7;padding:4px 10px;text-align:right} th.l,td.l{text-align:left}
th{background:#eef1f5} tr.avg td{font-style:italic}
.row{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
img.figure{max-width:100%;background:#fff;border:1px solid #dde1e7;border-radius:6px}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:12px}
.gallery figure{margin:0;background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:6px;
  font-size:.8rem}
.gallery img{display:block;margin:0 auto 4px;max-width:100%;height:auto}
.gallery .path{color:#5a6372;word-break:break-all} .wrong{color:#b3261e;font-weight:600}
.gallery.explained{grid-template-columns:repeat(auto-fill,minmax(330px,1fr))}
.pair{display:flex;gap:4px;justify-content:center;align-items:center}
.pair img{margin:0 0 4px;max-width:calc(50% - 2px)}
.note{color:#5a6372;font-size:.9rem}
footer{margin-top:32px;color:#5a6372;font-size:.8rem}
"""


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _floor(metrics: Mapping) -> str:
    """What a perfectly calibrated model would score on these images, for the ECE tile."""
    floor = metrics.get("ece_if_calibrated")
    if not floor:
        return ""
    return f"; a calibrated model: {_pct(floor['mean'])} (up to {_pct(floor['p95'])})"


def _tiles(metrics: Mapping) -> str:
    n, correct = metrics["num_images"], round((metrics["accuracy"] or 0) * metrics["num_images"])
    tiles = [("accuracy", _pct(metrics["accuracy"]), f"{correct} of {n} images")]
    for k, value in metrics["top_k_accuracy"].items():
        if k != "1":
            tiles.append((f"top-{k} accuracy", _pct(value), ""))
    tiles += [
        (
            "macro F1",
            f"{metrics['macro_avg']['f1']:.3f}" if n else "n/a",
            "mean over the classes present",
        ),
        (
            "calibration error (ECE)",
            _pct(metrics["expected_calibration_error"]),
            f"{metrics['calibration_bins']} equal-width confidence bins" + _floor(metrics),
        ),
        ("forward passes per image", str(metrics["forward_passes_per_image"]), "views x models"),
    ]
    if metrics["skipped"]:
        tiles.append(("skipped files", str(len(metrics["skipped"])), "could not be decoded"))
    return "".join(
        f'<div class="tile"><div class="v">{escape(v)}</div><div class="k">{escape(k)}'
        f"{'<br>' + escape(sub) if sub else ''}</div></div>"
        for k, v, sub in tiles
    )


def _per_class_table(metrics: Mapping) -> str:
    rows = [
        f"<tr><td class=l>{escape(name)}</td><td>{r['precision']:.3f}</td>"
        f"<td>{r['recall']:.3f}</td><td>{r['f1']:.3f}</td><td>{r['support']}</td></tr>"
        for name, r in metrics["per_class"].items()
    ]
    for avg in ("macro_avg", "weighted_avg"):
        if avg in metrics:
            r = metrics[avg]
            rows.append(
                f'<tr class="avg"><td class=l>{avg.replace("_avg", " average")}</td>'
                f"<td>{r['precision']:.3f}</td><td>{r['recall']:.3f}</td><td>{r['f1']:.3f}</td>"
                "<td></td></tr>"
            )
    return (
        "<table><tr><th class=l>class</th>"
        "<th>precision</th><th>recall</th><th>F1</th><th>images</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _confused_table(pairs: Sequence[Mapping]) -> str:
    if not pairs:
        return '<p class="note">No image was misclassified.</p>'
    rows = "".join(
        f"<tr><td class=l>{escape(p['true'])}</td><td class=l>{escape(p['predicted'])}</td>"
        f"<td>{p['count']}</td><td>{_pct(p['rate'])}</td></tr>"
        for p in pairs
    )
    return (
        "<table><tr><th class=l>true class</th><th class=l>predicted as</th><th>images</th>"
        "<th>of the true class</th></tr>" + rows + "</table>"
    )


def _calibration_table(rows: Sequence[Mapping]) -> str:
    body = "".join(
        f"<tr><td class=l>{r['lower']:.2f} – {r['upper']:.2f}</td><td>{r['count']}</td>"
        f"<td>{_pct(r['confidence'])}</td><td>{_pct(r['accuracy'])}</td></tr>"
        for r in rows
    )
    return (
        "<table><tr><th class=l>confidence</th><th>images</th><th>mean confidence</th>"
        "<th>accuracy</th></tr>" + body + "</table>"
    )


def _temperature_note(calibration: Mapping | None) -> str:
    """One sentence on the temperature the probabilities were divided by."""
    if not calibration:
        return "The model was not calibrated (no temperature stored)."
    members = calibration.get("members")
    if members:
        temps = ", ".join(f"{m['temperature']:.3f}" for m in members)
        return escape(f"Each member's logits were divided by its own temperature ({temps}).")
    text = f"The logits were divided by a temperature of {calibration['temperature']:.3f}"
    val = calibration.get("validation") or {}
    if val.get("ece_before") is not None and val.get("ece_after") is not None:
        text += (
            f", fitted on the run's validation split (ECE there {_pct(val['ece_before'])} "
            f"before, {_pct(val['ece_after'])} after)"
        )
    return escape(text + ".")


def _gallery(shown: Sequence[Mapping], total: int) -> str:
    if not total:
        return '<p class="note">No image was misclassified.</p>'
    note = (
        f"All {total} misclassified images"
        if len(shown) == total
        else f"The {len(shown)} most confident of {total} misclassified images "
        "(the rest are listed in metrics.json)"
    )
    cards = []
    explained = any(item.get("explanation") for item in shown)
    for item in shown:
        thumb = item.get("thumbnail")
        image = (
            f'<img src="{escape(thumb)}" width="{item["thumbnail_size"][0]}" '
            f'height="{item["thumbnail_size"][1]}" alt="{escape(item["path"])}">'
            if thumb
            else '<p class="note">(no thumbnail: the file could not be read again)</p>'
        )
        if item.get("explanation"):
            side = EXPLANATION_SIDE
            image = (
                f'<div class="pair">{image}<img src="{escape(item["explanation"])}" '
                f'width="{side}" height="{side}" alt="Grad-CAM of {escape(item["predicted"])}" '
                f'title="where the evidence for {escape(item["predicted"])} lies"></div>'
            )
        cards.append(
            f"<figure>{image}<figcaption>true: <b>{escape(item['true'])}</b><br>"
            f'predicted: <span class="wrong">{escape(item["predicted"])}</span> '
            f"({_pct(item['confidence'])})<br>p(true class): {_pct(item['true_probability'])}<br>"
            f'<span class="path" title="{escape(item["path"])}">{escape(item["short_path"])}</span>'
            "</figcaption></figure>"
        )
    how = (
        " Beside each: the Grad-CAM map of the predicted class over the centre crop the model "
        "saw (red: where the evidence for that class lies)."
        if explained
        else ""
    )
    return (
        f'<p class="note">{escape(note)}, most confident first (confident mistakes are '
        f"worth checking for wrong labels).{escape(how)}</p>"
        f'<div class="gallery{" explained" if explained else ""}">{"".join(cards)}</div>'
    )


def render_page(
    metrics: Mapping,
    *,
    context: Mapping[str, str],
    gallery: Sequence[Mapping],
    has_curves: bool,
    curves_note: str,
) -> str:
    """The whole page as a string; ``gallery`` holds the misclassified images to show."""
    ctx = " · ".join(f"{escape(k)}: <b>{escape(str(v))}</b>" for k, v in context.items())
    curves = (
        '<img class="figure" src="curves.png" alt="training curves">'
        if has_curves
        else f'<p class="note">{escape(curves_note)}</p>'
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>visiontune evaluation report</title><style>{STYLE}</style></head>
<body><main>
<h1>Evaluation report</h1>
<p class="context">{ctx}</p>
<div class="tiles">{_tiles(metrics)}</div>
<h2>Per class</h2>
{_per_class_table(metrics)}
<h2>Confusion</h2>
<div class="row"><img class="figure" src="confusion_matrix.png" alt="confusion matrix">
<div><h3>Most confused pairs</h3>{_confused_table(metrics["most_confused"])}</div></div>
<h2>Training</h2>
{curves}
<h2>Misclassified images</h2>
{_gallery(gallery, len(metrics["misclassified"]))}
<h2>Calibration</h2>
<p class="note">Images grouped by the model's confidence in its answer; a calibrated model's
accuracy matches its confidence in every row. The expected calibration error is the
image-weighted mean gap. {_temperature_note(metrics.get("calibration"))}</p>
<div class="row"><img class="figure" src="reliability.png" alt="reliability diagram">
<div>{_calibration_table(metrics["reliability"])}</div></div>
<footer>Written by visiontune. All numbers are in <a href="metrics.json">metrics.json</a>.</footer>
</main></body></html>
"""
