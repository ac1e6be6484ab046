"""Per-user folders, and whether a target can be written before any work is done."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import VisiontuneError

__all__ = ["check_writable_dir", "check_writable_file", "default_cache_dir"]


def default_cache_dir() -> Path:
    """``$VISIONTUNE_CACHE``, else ``$XDG_CACHE_HOME/visiontune``, else ``~/.cache/visiontune``."""
    if os.environ.get("VISIONTUNE_CACHE"):
        return Path(os.environ["VISIONTUNE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "visiontune"


def _nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (a relative path ends at ``.``)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_can_create_in(path: Path, what: str, target: Path) -> None:
    """``path`` (existing) must be a folder we may create and replace files in."""
    if not path.is_dir():
        raise VisiontuneError(f"{what} {target}: {path} is a file, not a folder")
    if not os.access(path, os.W_OK | os.X_OK):
        raise VisiontuneError(
            f"{what} {target}: {path} is not writable (read-only or no permission)"
        )


def check_writable_dir(folder: str | Path, what: str = "output folder") -> Path:
    """``folder`` as a path, refused unless it is (or can be created as) a writable folder.

    Creates nothing: the folder, or the nearest ancestor that exists, is checked instead, so a
    command can refuse a bad target before it does minutes of work.
    """
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise VisiontuneError(f"{what} {folder} exists and is not a folder")
    _check_can_create_in(_nearest_existing(folder), what, folder)
    return folder


def check_writable_file(path: str | Path, what: str = "output file") -> Path:
    """``path`` as a path, refused unless a file can be written there (not a folder, its folder
    writable or creatable). Creates nothing."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise VisiontuneError(f"{what} {path} is a folder, not a file")
    _check_can_create_in(_nearest_existing(path.parent), what, path)
    return path
