"""Checks for the fields a saved model describes itself with, shared by bundles and exports.

A run folder's ``config.json`` and an export's metadata are files a user can edit, damage or
replace; everything read from them is checked here once, with bounds, so a bad value is one
``BundleError`` naming the file and the field instead of a traceback (or a 52 GB allocation for
``preprocess.size: 100000``) somewhere downstream. Torch-free, like ``export_metadata``.
"""

from __future__ import annotations

import hashlib
import json
import math

from ..errors import BundleError
from ..specs import INTERPOLATIONS, LabelMap, PreprocessSpec

__all__ = [
    "MAX_SIZE",
    "MIN_SIZE",
    "check_classes",
    "check_format_version",
    "check_object",
    "check_preprocess",
    "meaning_digest",
]

MIN_SIZE, MAX_SIZE = 8, 4096  # pixels of the crop a backbone is fed
MAX_RESIZE = 2 * MAX_SIZE  # the short side before the crop: size / crop_pct


def check_object(value, where: str, field: str) -> dict:
    if not isinstance(value, dict):
        raise BundleError(f"{where}: {field} must be a JSON object, got {_kind(value)}")
    return value


def check_format_version(value, where: str) -> int:
    if value is None:
        raise BundleError(f"{where} has no format_version")
    if not _is_int(value):
        raise BundleError(
            f"{where}: format_version {value!r} is invalid (it must be a whole number, such as 1)"
        )
    return value


def check_classes(value, where: str) -> LabelMap:
    """A non-empty list of distinct (ignoring case), non-empty class names."""
    if not isinstance(value, list) or not value:
        raise BundleError(f"{where}: classes must be a non-empty list of names, got {_kind(value)}")
    if not all(isinstance(name, str) and name.strip() for name in value):
        raise BundleError(f"{where}: every entry of classes must be a non-empty string")
    seen: dict[str, str] = {}
    for name in value:
        if name.lower() in seen:
            raise BundleError(
                f"{where}: classes lists {seen[name.lower()]!r} and {name!r}; class names must "
                "be unique (ignoring case)"
            )
        seen[name.lower()] = name
    return LabelMap(tuple(value))


def check_preprocess(value, where: str) -> PreprocessSpec:
    """A ``PreprocessSpec`` from its dict, every field typed and within bounds."""
    data = check_object(value, where, "preprocess")
    size = data.get("size")
    if not _is_int(size) or not MIN_SIZE <= size <= MAX_SIZE:
        raise BundleError(
            f"{where}: preprocess.size must be a whole number of pixels from {MIN_SIZE} to "
            f"{MAX_SIZE}, got {size!r}"
        )
    crop = data.get("crop_pct", 0.875)
    if not _is_number(crop) or not 0 < crop <= 1 or size / crop > MAX_RESIZE:
        raise BundleError(
            f"{where}: preprocess.crop_pct must be a number in (0, 1] with size / crop_pct at "
            f"most {MAX_RESIZE}, got {crop!r}"
        )
    interpolation = data.get("interpolation", "bicubic")
    if interpolation not in INTERPOLATIONS:
        raise BundleError(
            f"{where}: preprocess.interpolation must be one of {', '.join(INTERPOLATIONS)}, "
            f"got {interpolation!r}"
        )
    mean = _three_numbers(data.get("mean"), where, "mean", positive=False)
    std = _three_numbers(data.get("std"), where, "std", positive=True)
    return PreprocessSpec(
        size=size, mean=mean, std=std, interpolation=interpolation, crop_pct=float(crop)
    )


def meaning_digest(fields: dict) -> str:
    """SHA-256 of ``fields`` as canonical JSON: what gives a model's outputs their meaning
    (classes in order, preprocessing, ...) bound to its weights' digest."""
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _three_numbers(value, where: str, field: str, *, positive: bool) -> tuple:
    if (
        not isinstance(value, list | tuple)
        or len(value) != 3
        or not all(_is_number(v) and math.isfinite(v) for v in value)
    ):
        raise BundleError(
            f"{where}: preprocess.{field} must be three finite numbers (R, G, B), got {value!r}"
        )
    if positive and not all(v > 0 for v in value):
        raise BundleError(f"{where}: preprocess.{field} must be positive, got {value!r}")
    return tuple(float(v) for v in value)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _kind(value) -> str:
    names = {dict: "an object", list: "a list", str: "a string", type(None): "nothing"}
    return names.get(type(value), repr(value))
