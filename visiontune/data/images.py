"""Decode any image file into an RGB PIL image, by content rather than extension.

Handles what real folders contain: EXIF rotation, RGBA/LA/P with transparency (composited on
white, since the colour under transparent pixels is often garbage), CMYK, greyscale, 16-bit and
float images, and truncated files (loaded as far as they go, and reported).
"""

from __future__ import annotations

import io
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

__all__ = [
    "DecodedImage",
    "ImageDecodeError",
    "decode_bytes",
    "decode_image",
    "is_pixel_limit",
    "to_rgb",
]


_TRUNCATED_SWITCH = threading.Lock()
_IN_MEMORY = re.compile(r" ?<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


class ImageDecodeError(Exception):
    """The file is not an image we can decode."""


@dataclass
class DecodedImage:
    image: Image.Image
    note: str | None = None  # e.g. "truncated: loaded partially"


def _high_bit_depth_to_rgb(img: Image.Image) -> Image.Image:
    """16-bit and float images: scale to 8 bits instead of letting Pillow clip them."""
    arr = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        arr = (arr - lo) / (hi - lo or 1.0) * 255.0
    elif arr.size and arr.max() > 65535:  # 32-bit integers (mode I): stretch the range in use
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo or 1.0) * 255.0
    elif img.mode.startswith("I;16") or (arr.size and arr.max() > 255):  # 16-bit, dark ones too
        arr = arr / 257.0
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L").convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return _high_bit_depth_to_rgb(img)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _open_and_load(source: Path | bytes, min_short_side: int | None) -> Image.Image:
    img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    if min_short_side and img.format == "JPEG":
        # Decode-time downscaling (by 1/2, 1/4, 1/8) keeping both sides >= the request:
        # several times faster on large photos, and the resize that follows needs no more pixels.
        img.draft("RGB", (min_short_side, min_short_side))
    img.load()
    return img


def decode_image(path: str | Path, *, min_short_side: int | None = None) -> DecodedImage:
    """Decode ``path`` to RGB, EXIF orientation applied.

    ``min_short_side`` lets JPEG decoding skip resolution the caller would throw away.
    Raises ``ImageDecodeError`` with a short reason when the file cannot be decoded at all.
    """
    path = Path(path)
    return _decode(path, str(path), min_short_side)


def decode_bytes(
    data: bytes, *, name: str = "image", min_short_side: int | None = None
) -> DecodedImage:
    """``decode_image`` of a file's bytes (an upload); ``name`` starts the error message."""
    return _decode(bytes(data), name, min_short_side)


def is_pixel_limit(error: ImageDecodeError) -> bool:
    """Whether ``error`` is Pillow's refusal of an image over its pixel limit
    (``Image.MAX_IMAGE_PIXELS``: a decompression bomb), not an undecodable file."""
    return isinstance(
        error.__cause__, (Image.DecompressionBombWarning, Image.DecompressionBombError)
    )


def _decode(source: Path | bytes, name: str, min_short_side: int | None) -> DecodedImage:
    note = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF / palette warnings are noise here
            # ...but an image over Pillow's pixel limit would take gigabytes: refuse, not decode.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                img = _open_and_load(source, min_short_side)
            except OSError as exc:
                if "truncated" not in str(exc):
                    raise
                # Pillow has only a global switch for this; it is restored right after, and
                # the lock keeps two threads (a server's decoders) from restoring it early.
                with _TRUNCATED_SWITCH:
                    previous = ImageFile.LOAD_TRUNCATED_IMAGES
                    ImageFile.LOAD_TRUNCATED_IMAGES = True
                    try:
                        img = _open_and_load(source, min_short_side)
                    finally:
                        ImageFile.LOAD_TRUNCATED_IMAGES = previous
                note = "truncated file: loaded partially"
            img = ImageOps.exif_transpose(img)
            return DecodedImage(to_rgb(img), note)
    # Any exception: a format plugin fed hostile bytes may raise almost anything (struct.error,
    # IndexError, MemoryError...), and one bad file must never end a training run.
    except Exception as exc:  # noqa: BLE001
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        reason = _IN_MEMORY.sub("", reason)  # Pillow names the file by repr(); bytes have none
        raise ImageDecodeError(f"{name}: {reason}") from exc


def header_problem(path: str | Path) -> str | None:
    """Why ``path`` is not an image, judged from its header alone (no pixel decoding), or None.

    Cheap enough to run over a whole dataset before training, so files that are not images at
    all (zero bytes, random bytes, text) are excluded up front rather than discovered mid-epoch.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.size  # noqa: B018 - parsing the header is the check
        return None
    except Exception as exc:  # noqa: BLE001 - as in decode_image
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"{path}: {reason}"
