"""``write_audit_report``: the audit as a folder - ``index.html``, ``audit.json``, ``fixes.csv``
and ``thumbs/``.

The page shows each finding's thumbnail beside examples of its given and its suggested class
(the images of that class the probe is surest of), so a person can judge at a glance which
label is right. ``fixes.csv`` lists every finding as ``path,given,suggested,kind,score``: edit
the ``suggested`` column (a class name, or empty to leave the image out) and apply it with
``visiontune audit DATA --apply fixes.csv --out FIXED``. Label issues are pre-filled with the
suggestion; outliers and ambiguous images with their given class (no change), since for them
the probe's second choice is no better than a guess. ``index.html`` is written last.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from html import escape
from pathlib import Path

import numpy as np

from ..evaluation._html import STYLE
from ..evaluation.report import check_report_dir, short_path, write_thumbnail, write_utf8
from .audit import KINDS, AuditResult, Finding

__all__ = ["EXAMPLES", "REPORT_LIMIT", "fixes_rows", "write_audit_report"]

REPORT_LIMIT = 200  # findings shown on the page; audit.json and fixes.csv list all of them
EXAMPLES = 3  # images shown of the given and of the suggested class
FIXES_COLUMNS = ("path", "given", "suggested", "kind", "score")

_EXTRA_CSS = """
table.audit td{vertical-align:top;text-align:left} table.audit img{display:block;margin:2px}
.examples{display:flex;gap:4px;flex-wrap:wrap} .kind{font-weight:600}
.label-issue{color:#b3261e} .outlier{color:#7a4b00} .ambiguous{color:#3a5a9c}
"""


OVERLAY_SIDE = 128  # pixels on the page


def _relative(path: str, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path


def fixes_rows(result: AuditResult, root: str | Path) -> list[dict]:
    """The rows of ``fixes.csv``: paths relative to ``root`` (DATA), a suggestion only for label
    issues (see the module docstring)."""
    return [
        {
            "path": _relative(f.path, Path(root)),
            "given": f.given,
            "suggested": f.suggested if f.kind == "label-issue" else f.given,
            "kind": f.kind,
            "score": f"{f.score:.4f}",
        }
        for f in result.findings
    ]


def _fixes_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIXES_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _class_examples(result: AuditResult, k: int) -> dict[str, list[str]]:
    """Per class, the ``k`` unflagged images the out-of-fold probe gives that class most
    confidently: what the class looks like."""
    flagged = {f.path for f in result.findings}
    examples = {}
    for c, name in enumerate(result.class_names):
        rows = [i for i in np.flatnonzero(result.labels == c) if result.paths[i] not in flagged]
        rows.sort(key=lambda i: -result.probabilities[i, c])
        examples[name] = [result.paths[i] for i in rows[:k]]
    return examples


class _Thumbs:
    """Writes each source image's thumbnail once, under ``thumbs/``; the ``<img>`` for it."""

    def __init__(self, out: Path):
        self.out, self.names = out, {}
        for old in (out / "thumbs").glob("audit-*.jpg"):  # an earlier report's
            old.unlink()

    def img(self, path: str, size: int | None = None) -> str:
        if path not in self.names:
            name = f"thumbs/audit-{len(self.names):05d}.jpg"
            self.names[path] = (name, write_thumbnail(path, self.out / name))
        name, wh = self.names[path]
        if wh is None:
            return '<span class="note">(unreadable)</span>'
        w, h = (
            wh
            if size is None
            else (max(1, wh[0] * size // max(wh)), max(1, wh[1] * size // max(wh)))
        )
        return f'<img src="{escape(name)}" width="{w}" height="{h}" alt="{escape(path)}">'


def _row(f: Finding, thumbs: _Thumbs, examples: dict[str, list[str]], explanations: Mapping) -> str:
    def strip(name: str) -> str:
        images = "".join(thumbs.img(p, 72) for p in examples.get(name, []))
        return f'<b>{escape(name)}</b><div class="examples">{images}</div>'

    overlay = explanations.get(f.path)
    why = (
        f'<br><img src="{escape(overlay)}" width="{OVERLAY_SIDE}" height="{OVERLAY_SIDE}" '
        f'alt="where the evidence for {escape(f.suggested)} lies" '
        f'title="Grad-CAM: where the evidence for {escape(f.suggested)} lies">'
        if overlay
        else ""
    )
    return (
        f"<tr><td>{thumbs.img(f.path)}{why}</td>"
        f'<td><span class="kind {escape(f.kind)}">{escape(f.kind)}</span><br>'
        f"score {f.score:.3f}<br>split: {escape(f.split)}<br>"
        f'<span class="path" title="{escape(f.path)}">{escape(short_path(f.path))}</span></td>'
        f"<td>given: {strip(f.given)}</td><td>suggested: {strip(f.suggested)}</td></tr>"
    )


def _tiles(result: AuditResult) -> str:
    tiles = [(str(sum(result.counts.values())), "images audited")]
    tiles += [(str(len(result.of_kind(k))), k) for k in KINDS]
    if result.test and result.test["accuracy"] is not None:
        without = result.test["accuracy_without_flagged"]
        tiles.append((f"{100 * result.test['accuracy']:.1f}%", "TEST accuracy (probe)"))
        tiles.append(
            ("n/a" if without is None else f"{100 * without:.1f}%", "TEST without flagged")
        )
    return "".join(
        f'<div class="tile"><div class="v">{escape(v)}</div><div class="k">{escape(k)}</div></div>'
        for v, k in tiles
    )


def _page(result: AuditResult, context: dict, rows: str, shown: int) -> str:
    ctx = " · ".join(f"{escape(k)}: <b>{escape(str(v))}</b>" for k, v in context.items())
    total = len(result.findings)
    note = f"All {total} findings" if shown == total else f"The first {shown} of {total} findings"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>visiontune audit</title><style>{STYLE}{_EXTRA_CSS}</style></head>
<body><main>
<h1>Label audit</h1>
<p class="context">{ctx}</p>
<div class="tiles">{_tiles(result)}</div>
<h2>Findings</h2>
<p class="note">{escape(note)}, label issues first, each beside the images its given and its
suggested class are surest of. Scores: label-issue - the out-of-fold probability of the suggested
class; outlier - the distance to its nearest images over the outlier limit; ambiguous - 1 minus
the gap between the two classes. Edit <a href="fixes.csv">fixes.csv</a> and apply it with
<code>visiontune audit DATA --apply fixes.csv --out FIXED</code>.</p>
<table class="audit"><tr><th class=l>image</th><th class=l>finding</th><th class=l>given class</th>
<th class=l>suggested class</th></tr>{rows}</table>
<footer>Written by visiontune. Every finding is in <a href="audit.json">audit.json</a>.</footer>
</main></body></html>
"""


def write_audit_report(
    out_dir: str | Path,
    result: AuditResult,
    *,
    root: str | Path,
    context: dict | None = None,
    limit: int = REPORT_LIMIT,
    explanations: Mapping[str, str] | None = None,
) -> Path:
    """Write the audit folder for ``result`` of DATA ``root``; returns ``index.html``'s path.
    ``explanations`` maps a finding's path to its Grad-CAM overlay (for its suggested class), a
    file already in ``out_dir`` given relative to it (``evaluation.report.EXPLAIN_DIR``, as the
    evaluation report's): shown under the finding's thumbnail."""
    out = check_report_dir(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    context = {"data": str(root), **(context or {})}
    write_utf8(
        out / "audit.json", json.dumps({**result.to_dict(), "context": context}, indent=2) + "\n"
    )
    write_utf8(out / "fixes.csv", _fixes_csv(fixes_rows(result, root)))
    thumbs = _Thumbs(out)
    examples = _class_examples(result, EXAMPLES)
    shown = result.findings[:limit]
    rows = "".join(_row(f, thumbs, examples, explanations or {}) for f in shown)
    write_utf8(out / "index.html", _page(result, context, rows, len(shown)))
    return out / "index.html"
