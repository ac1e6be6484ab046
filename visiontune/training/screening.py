"""The cheap checks ``fit`` runs on its actual splits before training: what to leave out."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from .._console import console
from ..data.checks import CheckReport, check_splits, leaked_files
from ..data.folder import DatasetSplits

__all__ = ["Screening", "screen_splits"]


@dataclass(frozen=True)
class Screening:
    """What screening found: files left out (with why), files loaded with a caveat, and the
    ``data_checks`` record for ``metrics.json``."""

    skipped: dict[str, str]
    notes: dict[str, str]
    record: dict


def _without(splits: DatasetSplits, paths: set[str]) -> tuple[DatasetSplits, dict[str, int]]:
    """``splits`` without ``paths``, and how many went from each split."""
    kept, dropped = {}, {}
    for part in ("train", "val", "test"):
        samples = getattr(splits, part)
        kept[part] = [s for s in samples if str(s.path) not in paths]
        dropped[part] = len(samples) - len(kept[part])
    return replace(splits, **kept), dropped


def screen_splits(
    splits: DatasetSplits, *, exclude_duplicates: bool, warn: bool = True
) -> tuple[DatasetSplits, Screening]:
    """Headers and content hashes (no decoding) of every file ``fit`` will use.

    Unusable files leave the splits (so each is reported, not only those an epoch reaches);
    leakage and conflicting labels are warned about on the console; with ``exclude_duplicates``,
    val/test images with a byte-identical copy in train leave the evaluation. ``warn=False``: no
    console output (torchrun ranks other than 0). Returns the screened splits and the findings.
    """
    report = check_splits(splits, decode=False, near_distance=None, workers=0)
    unusable = report.skipped()
    for finding in report.of_type("not-a-file"):
        folder = finding.files[0]
        unusable[folder] = f"{folder}: a folder named like an image file, not an image"
    # Known up front, so reported even where an epoch never reaches the file (drop_last).
    notes = {info.path: info.note for info in report.files if info.usable and info.note}
    splits, _ = _without(splits, set(unusable))
    leaked = leaked_files(report)
    conflicts = [f.files for f in report.of_type("label-conflict")]
    groups = {f.message: f.details["groups"] for f in report.of_type("group-leakage")}
    if warn:
        _warn(report, leaked, conflicts, exclude_duplicates)
        _warn_left_out(splits.left_out)
        for message in groups:
            console.print(f"[bold red]warning:[/] {message}; the held-out score is optimistic")
    excluded = None
    if exclude_duplicates:
        splits, dropped = _without(splits, set(leaked))
        excluded = {"val": dropped["val"], "test": dropped["test"]}
    by_split = Counter(f.details["split"] for f in report.of_type("leakage"))
    record = {
        "leakage": {"val": by_split["val"], "test": by_split["test"], "files": leaked},
        "label_conflicts": conflicts,
        "group_leakage": list(groups.values()),
        "excluded_duplicates": excluded,
        "left_out": splits.left_out,
        "seconds": round(report.seconds, 3),
    }
    return splits, Screening(unusable, notes, record)


def _warn(report: CheckReport, leaked: dict, conflicts: list, excluded: bool) -> None:
    if leaked:
        per_split = Counter(f.details["split"] for f in report.of_type("leakage"))
        splits = [part for part in ("test", "val") if per_split[part]]
        action = (
            "left out of the evaluation (--exclude-duplicates)"
            if excluded
            else f"{' and '.join(splits)} accuracy is inflated; --exclude-duplicates leaves "
            "them out"
        )
        counts = " and ".join(f"{per_split[part]} {part}" for part in splits)
        console.print(
            f"[bold red]warning:[/] {counts} image(s) have a byte-identical copy in "
            f"train: {action}. Listed in metrics.json (data_checks)."
        )
    if conflicts:
        example = " = ".join(Path(p).name for p in conflicts[0])
        console.print(
            f"[bold red]warning:[/] {len(conflicts)} image(s) are filed under two or "
            f"more classes (e.g. {example}); listed in metrics.json (data_checks)."
        )


def _warn_left_out(left_out: dict[str, dict]) -> None:
    """Files under DATA that scanning did not use: say so, once, with an example."""
    if not left_out:
        return
    kinds = Counter(info["type"] for info in left_out.values())
    listing = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))
    example = next(iter(left_out.values()))["reason"]
    console.print(
        f"[bold red]warning:[/] {len(left_out)} file(s) under DATA are not used ({listing}), "
        f"e.g. {example}. Listed in metrics.json (data_checks.left_out)."
    )
