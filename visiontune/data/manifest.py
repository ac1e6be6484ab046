"""Read a dataset from a manifest: a CSV or Parquet file (or a pandas DataFrame) of image paths
and labels, instead of class folders.

One row per image. Columns (found by name when not given; letter case ignored):

- the path (``path``, ``image``, ``file``, ``filename``, ``filepath``, ``image_path``): relative
  to the manifest's folder, or absolute;
- the label (``label``, ``labels``, ``class``, ``category``, ``target``, ``tags``): a class
  name, or several joined by the delimiter (``;``) for a multi-label image;
- optional: a split (``split``, ``subset``; values train, val|valid|validation, test), and a
  group given by ``ManifestColumns.group`` (a patient, a person, a video).

Every problem is refused with its row number (the file's line, header = line 1): a missing
column, cell or file, an unknown split, a path listed twice (or in two splits: leakage), a label
seen once (usually a typo) or only outside train, an empty train split.

>>> import pandas as pd
>>> root = Path(photos) / "train"
>>> files = sorted(root.rglob("*.png"))
>>> frame = pd.DataFrame({"path": [p.relative_to(root).as_posix() for p in files],
...                       "label": [p.parent.name for p in files]})
>>> splits = scan_manifest(frame, root=root, val_fraction=0.25)
>>> splits.layout, splits.labels.names, len(splits.train) + len(splits.val) == len(files)
('manifest', ('cat', 'dog'), True)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from ..specs import LabelMap
from .folder import SPLIT_ALIASES, DatasetSplits, Sample, stratified_split

__all__ = [
    "MANIFEST_SUFFIXES",
    "ManifestColumns",
    "is_manifest",
    "manifest_samples",
    "read_manifest",
    "save_frame",
    "scan_manifest",
]

MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq")
PATH_NAMES = ("path", "image", "file", "filename", "filepath", "image_path", "img")
LABEL_NAMES = ("label", "labels", "class", "category", "target", "tags")
SPLIT_NAMES = ("split", "subset")
# Header line + 1-based: the row number a spreadsheet shows for a data row.
FIRST_ROW = 2
SHOWN = 5  # rows named in one message


@dataclass(frozen=True)
class ManifestColumns:
    """Which manifest columns to read (None: found by name), and how labels are written.
    ``multi_label``: every cell is a label set (``delimiter``-separated); without it a manifest
    is multi-label when any label cell holds the delimiter."""

    path: str | None = None
    label: str | None = None
    split: str | None = None
    group: str | None = None
    delimiter: str = ";"
    multi_label: bool = False


def is_manifest(data) -> bool:
    """A DataFrame, or a path ending in .csv/.parquet."""
    if _is_frame(data):
        return True
    return isinstance(data, str | Path) and Path(data).suffix.lower() in MANIFEST_SUFFIXES


def _is_frame(data) -> bool:
    return type(data).__name__ == "DataFrame" and hasattr(data, "columns")


def read_manifest(source):
    """``(frame, folder, record)``: the table as strings, the folder relative paths start from,
    and ``{"path", "sha256"}`` of the file (a DataFrame's cells are hashed instead)."""
    import pandas as pd

    if _is_frame(source):
        frame = _as_text(source)
        digest = hashlib.sha256(frame.to_csv(index=False).encode()).hexdigest()
        return frame.reset_index(drop=True), Path.cwd(), {"path": None, "sha256": digest}
    path = Path(source).expanduser()
    if not path.is_file():
        raise DataError(f"no such manifest file: {path}")
    try:
        if path.suffix.lower() == ".csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
        else:
            frame = pd.read_parquet(path)
    except (ValueError, OSError, ImportError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable {path.suffix[1:]} manifest ({exc})") from None
    # Positions, not a Parquet file's stored index, number the rows.
    frame = _as_text(frame).reset_index(drop=True)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return frame, path.resolve().parent, {"path": str(path.resolve()), "sha256": digest}


def _as_text(frame):
    """Every cell as a string, or None where it is empty (NaN, None, blank)."""
    return frame.astype(object).map(_text)


def _text(value) -> str | None:
    import pandas as pd

    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return str(value) if str(value).strip() else None


def _column(frame, given: str | None, names: tuple[str, ...], what: str, *, needed: bool):
    columns = {str(c).lower(): c for c in frame.columns}
    if given is not None:
        if given in frame.columns:
            return given
        if given.lower() in columns:
            return columns[given.lower()]
        raise DataError(
            f"the manifest has no {what} column {given!r} (columns: "
            f"{', '.join(map(str, frame.columns))})"
        )
    for name in names:
        if name in columns:
            return columns[name]
    if needed:
        flag = "--" + what.split()[0] + "-column"
        raise DataError(
            f"the manifest has no {what} column: name it with {flag} (looked for "
            f"{', '.join(names)}; columns: {', '.join(map(str, frame.columns))})"
        )
    return None


def _rows(indices) -> str:
    shown = ", ".join(str(i + FIRST_ROW) for i in indices[:SHOWN])
    more = f" and {len(indices) - SHOWN} more" if len(indices) > SHOWN else ""
    return f"row{'s' if len(indices) > 1 else ''} {shown}{more}"


def _refuse_blank(frame, column: str, what: str) -> None:
    # pandas may hold an empty cell as None or as NaN, depending on the column's inferred dtype.
    blank = [i for i, v in enumerate(frame[column]) if v is None or v != v or not str(v).strip()]
    if blank:
        raise DataError(f"the manifest's {_rows(blank)}: no {what} (column {column!r})")


def _label_sets(cells, columns: ManifestColumns) -> tuple[list[tuple[str, ...]], bool]:
    """Each row's labels, and whether the manifest is multi-label."""
    multi = columns.multi_label or any(columns.delimiter in c for c in cells)
    if not multi:
        return [(c.strip(),) for c in cells], False
    sets = [
        tuple(sorted({p.strip() for p in c.split(columns.delimiter) if p.strip()})) for c in cells
    ]
    empty = [i for i, s in enumerate(sets) if not s]
    if empty:
        raise DataError(f"the manifest's {_rows(empty)}: a label cell with no label in it")
    return sets, True


def _splits(frame, column: str | None) -> list[str]:
    if column is None:
        return ["train"] * len(frame)
    _refuse_blank(frame, column, "split")
    values = [SPLIT_ALIASES.get(str(v).strip().lower()) for v in frame[column]]
    bad = [i for i, v in enumerate(values) if v is None]
    if bad:
        raise DataError(
            f"the manifest's {_rows(bad)}: split {frame[column][bad[0]]!r} is not one of "
            f"train, val, test (column {column!r})"
        )
    if "train" not in values:
        raise DataError(f"the manifest's split column {column!r} has no train rows")
    return values


def _paths(cells, folder: Path) -> list[Path]:
    paths = [Path(c.strip()).expanduser() for c in cells]
    paths = [p if p.is_absolute() else folder / p for p in paths]
    missing = [i for i, p in enumerate(paths) if not p.is_file()]
    if missing:
        raise DataError(
            f"the manifest's {_rows(missing)}: no such file, e.g. {paths[missing[0]]} (relative "
            f"paths start from {folder})"
        )
    return paths


def _refuse_repeats(paths: list[Path], split: list[str]) -> None:
    seen: dict[Path, int] = {}
    for i, path in enumerate(paths):
        key = path.resolve()
        if key in seen:
            j = seen[key]
            where = (
                f"in {split[j]} and {split[i]}: the same image on both sides of a split leaks "
                "into its score"
                if split[i] != split[j]
                else "twice"
            )
            raise DataError(
                f"the manifest's rows {j + FIRST_ROW} and {i + FIRST_ROW} list {path} {where}"
            )
        seen[key] = i


def _label_map(sets: list[tuple[str, ...]], split: list[str]) -> LabelMap:
    """Classes are the labels of train rows, sorted; a label seen once, or only outside train,
    is refused (a typo, usually, and it could be neither learnt nor scored)."""
    rows: dict[str, list[int]] = {}
    for i, labels in enumerate(sets):
        for label in labels:
            rows.setdefault(label, []).append(i)
    for label, where in sorted(rows.items()):
        if all(split[i] != "train" for i in where):
            raise DataError(f"label {label!r} ({_rows(where)}) has no train rows to learn it from")
        if len(where) == 1:
            raise DataError(
                f"label {label!r} appears once (row {where[0] + FIRST_ROW}): a class needs "
                "at least two images, and a single one is usually a typo"
            )
    names = tuple(sorted(rows))
    if len(names) < 2:
        raise DataError(f"the manifest has a single label ({names[0]!r}); a classifier needs two")
    return LabelMap(names)


def _samples(paths, sets, groups, labels: LabelMap, multi: bool) -> list[Sample]:
    index = {n: i for i, n in enumerate(labels.names)}
    samples = []
    for path, names, group in zip(paths, sets, groups, strict=True):
        hot = tuple(int(n in names) for n in labels.names) if multi else ()
        samples.append(Sample(path, index[names[0]], group, hot))
    return samples


def manifest_samples(source, columns: ManifestColumns = ManifestColumns(), *, labels=None):
    """Read and check a manifest: ``(samples by split, labels, multi_label, record)``.
    ``labels``: a trained model's classes, which every label must be among."""
    frame, folder, record = read_manifest(source)
    if not len(frame):
        raise DataError("the manifest has no rows")
    path_col = _column(frame, columns.path, PATH_NAMES, "path", needed=True)
    label_col = _column(frame, columns.label, LABEL_NAMES, "label", needed=True)
    split_col = _column(frame, columns.split, SPLIT_NAMES, "split", needed=False)
    group_col = _column(frame, columns.group, (), "group", needed=False) if columns.group else None
    for column, what in ((path_col, "path"), (label_col, "label")):
        _refuse_blank(frame, column, what)
    sets, multi = _label_sets([str(c) for c in frame[label_col]], columns)
    split = _splits(frame, split_col)
    paths = _paths([str(c) for c in frame[path_col]], folder)
    _refuse_repeats(paths, split)
    if group_col is not None:
        _refuse_blank(frame, group_col, "group")
    groups = list(frame[group_col].astype(str)) if group_col else [None] * len(frame)
    if labels is None:
        labels = _label_map(sets, split)
    else:
        _refuse_unknown(sets, labels)
    samples = _samples(paths, sets, groups, labels, multi)
    parts = {
        p: [s for s, where in zip(samples, split, strict=True) if where == p]
        for p in ("train", "val", "test")
    }
    record = {
        **record,
        "columns": {"path": path_col, "label": label_col, "split": split_col, "group": group_col},
        "rows": {str(p): i + FIRST_ROW for i, p in enumerate(paths)},
    }
    return parts, labels, multi, record


def _refuse_unknown(sets, labels: LabelMap) -> None:
    known = set(labels.names)
    bad = [i for i, s in enumerate(sets) if not set(s) <= known]
    if bad:
        unknown = sorted(set().union(*(set(sets[i]) - known for i in bad)))
        raise DataError(
            f"the manifest's {_rows(bad)}: label(s) the model does not know: "
            f"{', '.join(unknown)} (known: {', '.join(labels.names)})"
        )


def scan_manifest(
    source, columns: ManifestColumns = ManifestColumns(), *, val_fraction=0.15, seed=0, root=None
) -> DatasetSplits:
    """A manifest's splits: its own val/test rows where its split column has them, else
    ``val_fraction`` of train held out (by group with a group column). ``root``: the folder a
    DataFrame's relative paths start from (default: the working directory)."""
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if root is not None and _is_frame(source):
        source = _rooted(source, Path(root), columns)
    parts, labels, multi, record = manifest_samples(source, columns)
    train, val, val_source = parts["train"], parts["val"], "split-column"
    if not val:
        train, val = stratified_split(train, val_fraction, seed)
        val_source = "held-out by group" if columns.group else "held-out"
    base = Path(record["path"]).parent if record["path"] else Path(root or Path.cwd())
    return DatasetSplits(
        base,
        "manifest",
        labels,
        train,
        val,
        parts["test"],
        val_source=val_source,
        multi_label=multi,
        manifest=record,
    )


def save_frame(frame, folder: Path, columns: ManifestColumns = ManifestColumns()) -> Path:
    """``frame`` written as ``folder/<sha256>.csv`` with its paths made absolute (from the
    working directory), so a run trained on a DataFrame names a file it can be resumed and
    evaluated from. The same frame gives the same file."""
    from .._io import atomic_write_text

    text = _rooted(frame, Path.cwd(), columns).to_csv(index=False)
    path = Path(folder) / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.csv"
    if not path.is_file():
        atomic_write_text(path, text)
    return path


def _rooted(frame, root: Path, columns: ManifestColumns):
    """``frame`` with its relative paths made absolute from ``root``."""
    column = _column(frame, columns.path, PATH_NAMES, "path", needed=True)
    frame = frame.copy()
    # A blank cell (None, NaN) stays blank, to be refused as such, not as a file named "nan".
    texts = (_text(p) for p in frame[column])
    frame[column] = [str(root / text.strip()) if text else None for text in texts]
    return frame
