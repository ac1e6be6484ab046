"""``check``: what is wrong with a dataset folder; and the cheap checks ``fit`` runs first."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from .._console import console
from ..data.checks import CheckReport, check_folder, check_splits, leaked_files
from ..data.duplicates import DEFAULT_NEAR_DISTANCE
from ..data.folder import DatasetSplits
from ..errors import VisiontuneError

if TYPE_CHECKING:  # the loader imports torch, which `visiontune check` does not need
    from ..data.loader import SkipLog


def check(
    data: str | Path,
    *,
    near_duplicates: bool = True,
    near_distance: int = DEFAULT_NEAR_DISTANCE,
    min_side: int = 32,
    max_pixels: int = 50_000_000,
    imbalance_ratio: float = 3.0,
    workers: int | None = None,
) -> CheckReport:
    """Every finding about the images under ``data`` (any layout ``train`` accepts).

    Unreadable and truncated files, extension/content mismatches, colour modes, tiny and huge
    images, class counts and imbalance, exact and near duplicates, test/val images with a copy
    in train (leakage) and images filed under two classes. ``report.has_errors`` is what
    ``visiontune check`` turns into exit code 1.

    >>> report = visiontune.api.check("photos/")                           # doctest: +SKIP
    >>> report.summary()                                                    # doctest: +SKIP
    {'duplicates': 3, 'leakage': 1, ...}
    """
    for name, value, low in (
        ("--near-distance", near_distance, 0),
        ("--min-side", min_side, 1),
        ("--max-pixels", max_pixels, 1),
        ("--imbalance-ratio", imbalance_ratio, 1),
        ("--workers", 0 if workers is None else workers, 0),
    ):
        if value < low:
            raise VisiontuneError(f"{name} must be at least {low}, got {value}")
    return check_folder(
        data,
        near_distance=near_distance if near_duplicates else None,
        min_side=min_side,
        max_pixels=max_pixels,
        imbalance_ratio=imbalance_ratio,
        workers=workers,
    )


def _drop(splits: DatasetSplits, paths: set[str]) -> dict[str, int]:
    """Remove ``paths`` from every split; how many went from each."""
    dropped = {}
    for part in ("train", "val", "test"):
        samples = getattr(splits, part)
        kept = [s for s in samples if str(s.path) not in paths]
        setattr(splits, part, kept)
        dropped[part] = len(samples) - len(kept)
    return dropped


def _screen_data(
    splits: DatasetSplits, skips: SkipLog, *, exclude_duplicates: bool, warn: bool = True
) -> dict:
    """``fit``'s cheap checks (headers and content hashes, no decoding) on its actual splits.

    Unusable files leave the splits and go to ``skips`` (so each is reported, not only those an
    epoch reaches); leakage and conflicting labels are warned about on the console; with
    ``exclude_duplicates``, val/test images with a byte-identical copy in train leave the
    evaluation. ``warn=False``: no console output (torchrun ranks other than 0). Returns the
    record for ``metrics.json``.
    """
    report = check_splits(splits, decode=False, near_distance=None, workers=0)
    unusable = report.skipped()
    for finding in report.of_type("not-a-file"):
        folder = finding.files[0]
        unusable[folder] = f"{folder}: a folder named like an image file, not an image"
    skips.skipped.update(unusable)
    # Known up front, so reported even where an epoch never reaches the file (drop_last).
    skips.notes.update({info.path: info.note for info in report.files if info.usable and info.note})
    _drop(splits, set(unusable))
    leaked = leaked_files(report)
    conflicts = [f.files for f in report.of_type("label-conflict")]
    if warn:
        _warn(report, leaked, conflicts, exclude_duplicates)
    excluded = _drop(splits, set(leaked)) if exclude_duplicates else None
    by_split = Counter(f.details["split"] for f in report.of_type("leakage"))
    return {
        "leakage": {"val": by_split["val"], "test": by_split["test"], "files": leaked},
        "label_conflicts": conflicts,
        "excluded_duplicates": excluded and {"val": excluded["val"], "test": excluded["test"]},
        "seconds": round(report.seconds, 3),
    }


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
