"""Look at one image file cheaply: is it readable, what is in it, what does it hash to.

``inspect_file`` parses the header from the bytes already read for the content hash, so a file is
read once and no pixel is decoded: cheap enough for ``train`` to run over every file first.
``decode_file`` adds what needs pixels (truncation, the perceptual hash), at reduced resolution
where the format allows; ``visiontune check`` runs it once per distinct content.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .images import ImageDecodeError, decode_image

__all__ = [
    "EXPECTED_FORMATS",
    "MIN_USABLE_SIDE",
    "PHASH_SIZE",
    "FileInfo",
    "decode_file",
    "inspect_file",
    "phash",
    "read_bytes",
]

# Below this many pixels on the shorter side an image is skipped by training: resizing it to the
# model's input would invent every pixel. (Check's "tiny-image" threshold is a separate option.)
MIN_USABLE_SIDE = 8
PHASH_SIZE = 12

# What Pillow reports for content each suffix is meant to hold (MPO is a JPEG with extra frames).
EXPECTED_FORMATS = {
    ".jpg": {"JPEG", "MPO"},
    ".jpeg": {"JPEG", "MPO"},
    ".jpe": {"JPEG", "MPO"},
    ".jfif": {"JPEG", "MPO"},
    ".png": {"PNG"},
    ".bmp": {"BMP", "DIB"},
    ".gif": {"GIF"},
    ".webp": {"WEBP"},
    ".tif": {"TIFF"},
    ".tiff": {"TIFF"},
    ".ppm": {"PPM"},
    ".pgm": {"PPM"},
    ".pbm": {"PPM"},
    ".pnm": {"PPM"},
    ".ico": {"ICO"},
}


@dataclass(frozen=True)
class FileInfo:
    """What ``inspect_file`` learnt about one path. ``problem`` set: training skips the file."""

    path: str
    num_bytes: int = 0
    sha256: str | None = None
    format: str | None = None
    mode: str | None = None
    size: tuple[int, int] | None = None  # (width, height)
    problem: str | None = None  # one line: why the file cannot be used
    problem_kind: str | None = None  # "unreadable", "decompression-bomb", "not-a-file", "too-small"
    note: str | None = None  # usable with a caveat, e.g. truncated and loaded partially
    phash: bytes | None = None  # perceptual hash, packed bits (after ``decode_file``)

    @property
    def usable(self) -> bool:
        return self.problem is None


def read_bytes(path: Path) -> bytes:
    """The file's bytes (its own function so tests can simulate an unreadable file as root)."""
    return path.read_bytes()


def _one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text or type(exc).__name__


def _header(data: bytes) -> tuple[str, str, tuple[int, int]]:
    """Format, mode and size from the header, with Pillow's pixel limit as an error, not a warning:
    an image over it would need gigabytes to decode (a decompression bomb, or near enough)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as img:
            return img.format, img.mode, img.size


@lru_cache(maxsize=4)
def _dct_rows(n: int, keep: int) -> np.ndarray:
    """The first ``keep`` rows of the orthonormal DCT-II matrix of size ``n``."""
    k, i = np.arange(keep)[:, None], np.arange(n)[None, :]
    rows = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * i + 1) * k / (2 * n))
    rows[0] /= np.sqrt(2.0)
    return rows


def phash(image: Image.Image, hash_size: int = PHASH_SIZE) -> bytes:
    """Perceptual hash (pHash): signs of the lowest 2-D DCT frequencies of a small greyscale copy
    against their median, DC term left out; ``hash_size**2 - 1`` bits, packed.

    Survives resizing, re-encoding, small crops, borders and colour shifts. 12x12 rather than the
    usual 8x8: on photos against white backgrounds (the yoga set) 64-bit hashes of different
    people collide, 143-bit ones keep their distance.
    """
    n = 4 * hash_size
    small = image.convert("L").resize((n, n), Image.Resampling.LANCZOS)
    pixels = np.asarray(small, dtype=np.float64)
    dct = _dct_rows(n, hash_size)
    coefficients = (dct @ pixels @ dct.T).ravel()[1:]
    return np.packbits(coefficients > np.median(coefficients)).tobytes()


def _ends_early(fmt: str, data: bytes) -> bool:
    """Whether the file stops before its format's end marker: truncated, told without decoding.
    (Decoding says so for sure; this is for the checks that do not decode.)"""
    if fmt in ("JPEG", "MPO"):  # an end-of-image marker after the last scan's start (neither can
        return data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda")  # occur inside coded data)
    if fmt == "PNG":
        return b"IEND" not in data[-64:]
    if fmt == "GIF":  # trailer byte
        return b";" not in data[-16:]
    if fmt == "WEBP":  # the RIFF header gives the file's length
        return int.from_bytes(data[4:8], "little") + 8 > len(data)
    return False


def _problem(path: Path, kind: str, reason: str, **known) -> FileInfo:
    return FileInfo(str(path), problem=f"{path}: {reason}", problem_kind=kind, **known)


def inspect_file(path: str | Path) -> FileInfo:
    """Read ``path`` once: byte count, sha256 and header (format, mode, size), no pixel decoding.
    Never raises for anything wrong with the file itself: that goes in ``problem``."""
    path = Path(path)
    if path.is_dir():
        return _problem(path, "not-a-file", "a folder named like an image file, not an image")
    try:
        data = read_bytes(path)
    except OSError as exc:  # permissions, symlink loops, vanished files
        return _problem(path, "unreadable", exc.strerror or _one_line(exc))
    known = {"num_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    if not data:
        return _problem(path, "unreadable", "empty file (0 bytes)", **known)
    try:
        fmt, mode, size = _header(data)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        reason = f"{_one_line(exc).rstrip('.')}; not decoded"
        return _problem(path, "decompression-bomb", reason, **known)
    except UnidentifiedImageError:
        return _problem(path, "unreadable", "not an image format Pillow can identify", **known)
    except Exception as exc:  # noqa: BLE001 - any parser failure on untrusted bytes: not an image
        return _problem(path, "unreadable", _one_line(exc), **known)
    known.update(format=fmt, mode=mode, size=size)
    if min(size) < MIN_USABLE_SIDE:
        reason = f"{size[0]}x{size[1]} px, under {MIN_USABLE_SIDE} px a side"
        return _problem(path, "too-small", reason, **known)
    note = "truncated: the file ends before its end marker" if _ends_early(fmt, data) else None
    return FileInfo(str(path), **known, note=note)


def decode_file(info: FileInfo, hash_size: int = PHASH_SIZE) -> FileInfo:
    """``info`` completed by decoding the pixels: truncation noted, perceptual hash computed, or
    the decoding failure as its ``problem``. Files already marked unusable are returned as is."""
    if not info.usable:
        return info
    try:  # JPEG decodes at 1/8 scale or so here; truncation shows all the same
        decoded = decode_image(info.path, min_short_side=4 * hash_size)
    except ImageDecodeError as exc:
        return replace(info, problem=str(exc), problem_kind="unreadable")
    return replace(info, note=decoded.note, phash=phash(decoded.image, hash_size))
