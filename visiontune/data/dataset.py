"""One entry to a dataset, whatever its layout: class folders, split folders or a manifest.

>>> scan_data(photos).layout
'splits'
>>> len(labelled_samples(Path(photos) / "test", scan_data(photos).labels))
6
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from ..specs import LabelMap
from .folder import DatasetSplits, Sample, evaluation_folder, scan_class_folder, scan_folder
from .manifest import ManifestColumns, is_manifest, manifest_samples, scan_manifest

__all__ = ["describe_data", "labelled_samples", "scan_data"]


def scan_data(
    data,
    columns: ManifestColumns | None = None,
    *,
    val_fraction: float = 0.15,
    seed: int = 0,
    min_classes: int = 2,
) -> DatasetSplits:
    """``scan_manifest`` for a .csv/.parquet file or a DataFrame, else ``scan_folder``.
    ``columns``: how to read a manifest; refused for a folder, which has no columns."""
    if is_manifest(data):
        return scan_manifest(
            data, columns or ManifestColumns(), val_fraction=val_fraction, seed=seed
        )
    if columns is not None and columns != ManifestColumns():
        raise DataError(
            f"{data} is a folder: --path-column, --label-column, --group-column and "
            "--multi-label describe a .csv/.parquet manifest"
        )
    return scan_folder(data, val_fraction=val_fraction, seed=seed, min_classes=min_classes)


def labelled_samples(
    data, labels: LabelMap, columns: ManifestColumns | None = None
) -> list[Sample]:
    """The images to score a trained model on: a folder of class sub-folders (a dataset root's
    test split), or a manifest's test rows (every row when it has no split column)."""
    if not is_manifest(data):
        return scan_class_folder(evaluation_folder(data), labels)[1]
    parts, _, _, record = manifest_samples(data, columns or ManifestColumns(), labels=labels)
    if record["columns"]["split"] is None:
        return parts["train"]
    if not parts["test"]:
        raise DataError("the manifest has no test rows to evaluate on")
    return parts["test"]


def describe_data(data) -> str:
    """How messages name DATA: its path, or "a DataFrame"."""
    return "a DataFrame" if not isinstance(data, str | Path) else str(data)
