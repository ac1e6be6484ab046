"""Per-user folders."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_cache_dir"]


def default_cache_dir() -> Path:
    """``$VISIONTUNE_CACHE``, else ``$XDG_CACHE_HOME/visiontune``, else ``~/.cache/visiontune``."""
    if os.environ.get("VISIONTUNE_CACHE"):
        return Path(os.environ["VISIONTUNE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "visiontune"
