"""``apply_fixes``: a relabelled copy of DATA from an (edited) ``fixes.csv``; DATA is never
modified.

The copy has DATA's layout (the same split and class folders, every other file too), with each
listed image moved to the class folder its ``suggested`` column names, or left out where that
column is empty. By default it is a symlink farm (instant, no extra disk; links are absolute, so
the copy can move but DATA cannot); ``copy=True`` copies the bytes instead. Every row is checked
before anything is written: a bad row is refused with its line number and nothing is made.
"""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

from ..data.folder import ignored_name
from ..errors import DataError, VisiontuneError

__all__ = ["REQUIRED_COLUMNS", "apply_fixes", "read_fixes"]

REQUIRED_COLUMNS = ("path", "given", "suggested")


def _class_folders(root: Path) -> set[str]:
    """Class names of DATA: sub-folders of its split folders, or its own sub-folders."""
    names = set()
    for folder in (p for p in root.iterdir() if p.is_dir() and not ignored_name(p.name)):
        inner = [p.name for p in folder.iterdir() if p.is_dir() and not ignored_name(p.name)]
        names.update(inner if folder.name.lower() in ("train", "val", "test") else [folder.name])
    return names


def _resolve(root: Path, text: str) -> Path:
    path = Path(text)
    return (path if path.is_absolute() else root / path).resolve()


def _check_row(n: int, row: dict, root: Path, classes: set[str], seen: set) -> tuple | None:
    """``(relative path, target class or None)`` of one row, or None for no change."""
    where = f"fixes row {n}"
    path, given = (row.get("path") or "").strip(), (row.get("given") or "").strip()
    suggested = (row.get("suggested") or "").strip()
    source = _resolve(root, path)
    try:
        relative = source.relative_to(root)
    except ValueError:
        raise DataError(f"{where}: {path!r} is not inside DATA ({root})") from None
    if not path or not source.is_file():
        raise DataError(f"{where}: no such image under DATA: {path!r}")
    if relative in seen:
        raise DataError(f"{where}: {path!r} is listed twice")
    seen.add(relative)
    if len(relative.parts) < 2 or relative.parts[-2] != given:
        current = relative.parts[-2] if len(relative.parts) > 1 else "(none)"
        raise DataError(f"{where}: {path!r} is in class {current!r}, not {given!r}")
    if suggested and suggested not in classes:
        raise DataError(
            f"{where}: unknown class {suggested!r} (classes: {', '.join(sorted(classes))})"
        )
    if suggested == given:
        return None
    return relative, suggested or None


def read_fixes(fixes: str | Path, root: str | Path) -> dict[Path, str | None]:
    """The changes ``fixes`` asks for: relative path -> new class, or None to leave it out."""
    root = Path(root).resolve()
    try:
        with open(fixes, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{fixes}: missing column(s) {', '.join(missing)}")
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{fixes}: not a readable CSV file ({exc})") from None
    classes, seen, changes = _class_folders(root), set(), {}
    for n, row in enumerate(rows, start=2):  # line 1 is the header
        change = _check_row(n, row, root, classes, seen)
        if change is not None:
            changes[change[0]] = change[1]
    return changes


def _check_out(root: Path, out: Path) -> None:
    if out == root or root in out.parents or out in root.parents:
        raise VisiontuneError(f"--out {out} must be outside DATA ({root}), and not contain it")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise VisiontuneError(f"--out {out} exists and is not an empty folder")


def _target(out: Path, relative: Path, new_class: str, taken: set[Path]) -> Path:
    """Where a relabelled file goes; ``name-from-<class>.ext`` if that name is taken."""
    target = out / relative.parent.parent / new_class / relative.name
    if target in taken:
        target = target.with_name(f"{relative.stem}-from-{relative.parts[-2]}{relative.suffix}")
    return target


def _files(root: Path) -> list[Path]:
    """Every file under ``root`` (hidden and system names skipped), relative, in order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not ignored_name(d))
        found += [(Path(dirpath) / n).relative_to(root) for n in sorted(filenames)]
    return found


def apply_fixes(
    data: str | Path, fixes: str | Path, out: str | Path, *, copy: bool = False
) -> dict:
    """Make ``out``: DATA with the changes of ``fixes`` (``read_fixes``). Returns counts."""
    root, out = Path(data).resolve(), Path(out).absolute()
    if not root.is_dir():
        raise DataError(f"no such folder: {data}")
    changes = read_fixes(fixes, root)
    _check_out(root, out.resolve())
    files = _files(root)
    unchanged = [f for f in files if f not in changes]
    # Unchanged files first, so a relabelled file never takes the name of one already there.
    placed = [(f, out / f) for f in unchanged]
    taken = {target for _, target in placed}
    for f in (f for f in files if changes.get(f) is not None):
        target = _target(out, f, changes[f], taken)
        placed.append((f, target))
        taken.add(target)
    place = shutil.copy2 if copy else os.symlink
    for source, target in placed:
        target.parent.mkdir(parents=True, exist_ok=True)
        place(str(root / source), str(target))
    return {
        "out": str(out),
        "copy": copy,
        "relabelled": len(placed) - len(unchanged),
        "left_out": sum(1 for v in changes.values() if v is None),
        "unchanged": len(unchanged),
    }
