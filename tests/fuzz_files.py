"""Hostile and broken files for the robustness tests: each kind real folders (or attackers) hold.

``write_fuzz_files(folder)`` writes one of each and returns ``{kind: path}``.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from conftest import shape_image
from PIL import Image

# Kinds training skips outright, and kinds it may load partially (truncated, noted) instead.
SKIPPED = (
    "zero-bytes",
    "random-bytes",
    "bomb-error",
    "bomb-warning",
    "one-pixel",
    "symlink-loop",
    "folder-named-jpg",
    "no-permission",
)
TRUNCATED = ("truncated-png", "truncated-jpeg", "truncated-gif", "truncated-webp")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` 8-bit greyscale and holds no pixel data: enough for
    Pillow to refuse it as a decompression bomb from the header, without anyone allocating it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _encoded(fmt: str, seed: int) -> bytes:
    buffer = io.BytesIO()
    shape_image("disc", 64, seed=seed).save(buffer, fmt)
    return buffer.getvalue()


def write_fuzz_files(folder: Path) -> dict[str, Path]:
    """One file of every broken kind in ``folder``; ``{kind: path}``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = {
        "zero-bytes": ("empty.jpg", b""),
        "random-bytes": ("random.png", rng.bytes(3000)),
        "truncated-png": ("truncated.png", _encoded("PNG", 1)[:2500]),
        "truncated-jpeg": ("truncated.jpg", _encoded("JPEG", 2)[:900]),
        "truncated-gif": ("truncated.gif", _encoded("GIF", 3)[:2000]),
        "truncated-webp": ("truncated.webp", _encoded("WEBP", 4)[:400]),
        # Over twice Pillow's limit (an error) and just over it (only a warning in Pillow).
        "bomb-error": ("bomb.png", png_header_only(30_000, 30_000)),
        "bomb-warning": ("bomb-warning.png", png_header_only(10_000, 10_000)),
    }
    paths = {}
    for kind, (name, data) in files.items():
        paths[kind] = folder / name
        paths[kind].write_bytes(data)
    paths["one-pixel"] = folder / "one-pixel.png"
    Image.new("RGB", (1, 1), (200, 30, 30)).save(paths["one-pixel"])
    paths["symlink-loop"] = folder / "loop.jpg"
    os.symlink("loop.jpg", paths["symlink-loop"])  # points at itself
    paths["folder-named-jpg"] = folder / "folder.jpg"
    paths["folder-named-jpg"].mkdir()
    paths["no-permission"] = folder / "locked.jpg"
    shape_image("disc", 64, seed=9).save(paths["no-permission"])
    paths["no-permission"].chmod(0)
    return paths


def simulate_no_permission(monkeypatch, path: Path) -> None:
    """As root, chmod 000 does not stop reads: make reading ``path`` fail as it would for a user."""
    from visiontune.data import inspect

    real = inspect.read_bytes

    def read_bytes(p: Path) -> bytes:
        if Path(p) == path:
            raise PermissionError(13, "Permission denied", str(p))
        return real(p)

    monkeypatch.setattr(inspect, "read_bytes", read_bytes)


def running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0
