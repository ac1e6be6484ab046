"""``visiontune audit`` on yoga: does it find seeded wrong labels, and what does it find in yoga?

    python benchmarks/audit.py [--seeds 3]

For each seed, a copy of the yoga folder (a symlink farm: the feature cache keys resolve links,
so the copy reads yoga's cached features) has 5 % of its TRAIN images, drawn with that seed,
filed under another class drawn uniformly from the other four. The audit (EfficientNet-Lite0
features, 5-fold linear probes over TRAIN + TEST pooled, cleanlab's confident learning) then
says which images look mislabelled. Measured:

* recall - the moved images among the ``label-issue`` findings;
* precision - the moved images among all ``label-issue`` findings (strict: yoga's own doubtful
  labels count against it), and "net": leaving out the images the audit of yoga as is flags;
* suggested original - of the moved images found, how many have their original class suggested;
* the same with cleanlab's default filter, ``prune_by_noise_rate``, on the same probabilities;
* time - ``audit`` in this process on a warm cache (the features are read, not computed), and
  the command ``visiontune audit COPY --json`` as a process (start and imports included).

Then yoga's own findings: the first few, and TEST accuracy (a probe on TRAIN) with and without
the flagged TEST images. The feature cache is the default one; a cold cache is warmed first.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import YOGA, write_section

FRACTION = 0.05


def moved_copy(target: Path, seed: int) -> dict[str, tuple[str, str]]:
    """A symlink farm of yoga in ``target`` with ``FRACTION`` of TRAIN under another class;
    ``{path in the copy: (original class, given class)}``."""
    rng = np.random.default_rng(seed)
    train = sorted(p for p in (YOGA / "TRAIN").rglob("*") if p.is_file())
    classes = sorted(p.name for p in (YOGA / "TRAIN").iterdir() if p.is_dir())
    chosen = set(rng.choice(len(train), size=round(FRACTION * len(train)), replace=False).tolist())
    moved = {}
    for i, source in enumerate(train):
        original = source.parent.name
        given = original
        if i in chosen:
            given = str(rng.choice([c for c in classes if c != original]))
        name = source.name if given == original else f"moved-from-{original}-{source.name}"
        link = target / "TRAIN" / given / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(source)
        if given != original:
            moved[str(link)] = (original, given)
    for source in sorted(p for p in (YOGA / "TEST").rglob("*") if p.is_file()):
        link = target / source.relative_to(YOGA)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(source)
    return moved


def score(result, moved: dict, own_flagged: set[str]) -> dict:
    issues = result.of_kind("label-issue")
    found = [f for f in issues if f.path in moved]
    # yoga's own flagged images, under their paths in the copy (unmoved files keep their names)
    own = [f for f in issues if f.path not in moved and _in_yoga(f.path) in own_flagged]
    return {
        "moved": len(moved),
        "issues": len(issues),
        "found": len(found),
        "recall": len(found) / len(moved),
        "precision": len(found) / max(1, len(issues)),
        "net_precision": len(found) / max(1, len(issues) - len(own)),
        "suggested_original": sum(f.suggested == moved[f.path][0] for f in found)
        / max(1, len(found)),
        "seconds": result.seconds,
        "prune_by_noise_rate": noise_rate_only(result, moved),
    }


def noise_rate_only(result, moved: dict) -> dict:
    """The same probabilities through cleanlab's default filter, ``prune_by_noise_rate``."""
    from visiontune.trust.audit import find_label_issues

    mask = find_label_issues(result.labels, result.probabilities, filter_by="prune_by_noise_rate")
    flagged = {result.paths[i] for i in np.flatnonzero(mask)}
    found = flagged & set(moved)
    return {"recall": len(found) / len(moved), "precision": len(found) / max(1, len(flagged))}


def _in_yoga(path: str) -> str:
    return str(Path(path).resolve())


def cli_seconds(data: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "visiontune", "audit", str(data), "--json", "--workers", "1"],
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise RuntimeError(proc.stderr)
    return time.perf_counter() - start


def _table(rows: list[dict]) -> str:
    lines = [
        "| seed | moved | label-issue findings | moved found (recall) | precision (net) | "
        "suggested original | audit s (warm) | `prune_by_noise_rate`: recall, precision |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for seed, r in enumerate(rows):
        lines.append(
            f"| {seed} | {r['moved']} | {r['issues']} | {r['found']} ({100 * r['recall']:.1f}%) | "
            f"{100 * r['precision']:.1f}% ({100 * r['net_precision']:.1f}%) | "
            f"{100 * r['suggested_original']:.1f}% | {r['seconds']['audit']:.1f} | "
            f"{100 * r['prune_by_noise_rate']['recall']:.1f}%, "
            f"{100 * r['prune_by_noise_rate']['precision']:.1f}% |"
        )
    mean = {k: np.mean([r[k] for r in rows]) for k in ("recall", "precision", "net_precision")}
    mean["suggested_original"] = np.mean([r["suggested_original"] for r in rows])
    other = {
        k: np.mean([r["prune_by_noise_rate"][k] for r in rows]) for k in ("recall", "precision")
    }
    lines.append(
        f"| mean | | | {100 * mean['recall']:.1f}% | {100 * mean['precision']:.1f}% "
        f"({100 * mean['net_precision']:.1f}%) | {100 * mean['suggested_original']:.1f}% | | "
        f"{100 * other['recall']:.1f}%, {100 * other['precision']:.1f}% |"
    )
    return "\n".join(lines)


def _own_findings(own, top: int) -> str:
    counts = ", ".join(
        f"{len(own.of_kind(k))} {k}" for k in ("label-issue", "outlier", "ambiguous")
    )
    test = own.test
    lines = [
        f"Yoga as is ({own.counts['train']} TRAIN + {own.counts['test']} TEST images): {counts}. "
        f"TEST accuracy of a probe on TRAIN (C={own.C:g}): **{100 * test['accuracy']:.2f}%** on "
        f"{test['num_images']} images, **{100 * test['accuracy_without_flagged']:.2f}%** without "
        f"the {test['flagged']} TEST image(s) flagged label-issue or outlier. The first {top}:",
        "",
        "| kind | score | split | path | given | suggested |",
        "|---|---|---|---|---|---|",
    ]
    for f in own.findings[:top]:
        rel = Path(f.path).relative_to(YOGA)
        lines.append(
            f"| {f.kind} | {f.score:.3f} | {f.split} | `{rel}` | {f.given} | {f.suggested} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    import visiontune

    load = os.getloadavg()[0]
    visiontune.audit(YOGA, workers=1)  # warm the cache (no-op when it is)
    own = visiontune.audit(YOGA, workers=1)
    own_flagged = {_in_yoga(f.path) for f in own.of_kind("label-issue")}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            copy = Path(tmp) / f"yoga-{seed}"
            moved = moved_copy(copy, seed)
            rows.append(score(visiontune.audit(copy, workers=1), moved, own_flagged))
            print(json.dumps(rows[-1]), flush=True)
        cli_s = cli_seconds(Path(tmp) / "yoga-0")
    body = (
        "## Audit: wrong labels\n\n"
        f"`visiontune audit`, EfficientNet-Lite0 features (warm cache), 5-fold linear probes over "
        f'TRAIN + TEST pooled, cleanlab `filter_by="both"`. A symlink copy of yoga with '
        f"{100 * FRACTION:g} % of TRAIN ({rows[0]['moved']} images) filed under another class, "
        "per seed:\n\n"
        f"{_table(rows)}\n\n"
        'Precision counts every label-issue finding; "net" leaves out the images the audit of '
        "yoga as is also flags (yoga's own doubtful labels, below). The last column is the same "
        "probabilities through cleanlab's default filter, `prune_by_noise_rate`, alone (the "
        "audit's first version). The \"audit s\" column is the audit's own time (probes, "
        "confident learning, outliers, the TEST probe; the features read from the cache); "
        f"`visiontune audit COPY --json` as a command took **{cli_s:.1f} s** "
        "(process start, imports and cache lookup included).\n\n"
        f"{_own_findings(own, 8)}\n\n"
        f"Load average at the start: {load:.1f} (the machine is shared; times are wall-clock)."
    )
    write_section("audit", body, command="python benchmarks/audit.py")


if __name__ == "__main__":
    main()
