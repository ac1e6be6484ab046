"""Findings about a dataset folder: files that cannot be used, odd files, class balance,
duplicates, leakage between splits and conflicting labels.

``visiontune check`` runs them all (``check_folder``); ``train`` runs the cheap ones
(``check_splits(decode=False)``: headers and content hashes, no pixel decoding) on its actual
splits before it starts, so unusable files are excluded up front and leakage is known.
"""

from __future__ import annotations

import os
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .dataset import scan_data
from .duplicates import DEFAULT_NEAR_DISTANCE, exact_groups, near_groups
from .folder import IMAGE_EXTENSIONS, DatasetSplits, ignored_name
from .inspect import EXPECTED_FORMATS, MIN_USABLE_SIDE, FileInfo, decode_file, inspect_file
from .manifest import ManifestColumns

__all__ = [
    "FINDING_TYPES",
    "CheckReport",
    "Finding",
    "check_folder",
    "check_splits",
    "default_check_workers",
    "leaked_files",
]

# Every finding type, its usual severity, and what it means. "error": training skips the file or
# its numbers are wrong; "warning": worth a look; "info": handled, for the record.
FINDING_TYPES = {
    "unreadable": (
        "error",
        "not decodable (empty, not an image, no read permission, a symlink "
        "loop...); train skips it",
    ),
    "decompression-bomb": (
        "error",
        "more pixels than Pillow's limit (PIL.Image.MAX_IMAGE_PIXELS); "
        "never decoded, train skips it",
    ),
    "not-a-file": ("warning", "a folder named like an image file"),
    "unsupported-file": (
        "warning",
        "a file whose extension is not an image type visiontune reads (.heic, .txt...); left out",
    ),
    "stray-image": ("warning", "an image outside any class folder (in DATA or a split); left out"),
    "truncated": ("warning", "the file ends early; train loads what there is"),
    "extension-mismatch": (
        "warning",
        "the content's format differs from the suffix (decoding goes by content)",
    ),
    "colour-mode": (
        "info",
        "not 8-bit RGB (CMYK, RGBA, palette, greyscale, 16-bit...); converted to RGB when loaded",
    ),
    "tiny-image": ("warning", "shorter side under --min-side px; under 8 px train skips it"),
    "huge-image": ("warning", "more than --max-pixels pixels: slow to decode"),
    "class-counts": ("info", "images per class in each split"),
    "class-imbalance": (
        "warning",
        "a split's largest class has --imbalance-ratio times the images of its smallest or more",
    ),
    "duplicates": ("warning", "byte-identical files"),
    "near-duplicates": ("warning", "different files of the same picture (perceptual hash)"),
    "leakage": (
        "error",
        "a val/test image with a byte-identical copy in train: it inflates the held-out accuracy",
    ),
    "label-conflict": ("error", "the same image filed under two or more classes"),
    "group-leakage": (
        "error",
        "a manifest's --group-column group (a patient, a person) with images both in train "
        "and in val/test: the held-out score then measures recognising the group",
    ),
}

MODE_NAMES = {
    "RGBA": "RGB with alpha",
    "RGBa": "RGB with alpha",
    "LA": "greyscale with alpha",
    "La": "greyscale with alpha",
    "PA": "palette with alpha",
    "P": "palette",
    "L": "greyscale",
    "1": "1-bit black and white",
    "CMYK": "CMYK",
    "YCbCr": "YCbCr",
    "LAB": "Lab",
    "HSV": "HSV",
    "I": "32-bit integer",
    "F": "32-bit float",
    "I;16": "16-bit greyscale",
    "I;16B": "16-bit greyscale",
    "I;16L": "16-bit greyscale",
    "I;16N": "16-bit greyscale",
}
PARTS = ("train", "val", "test")


@dataclass
class Finding:
    type: str
    severity: str  # "error", "warning" or "info"
    message: str
    files: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CheckReport:
    root: str
    layout: str
    counts: dict[str, dict[str, int]]  # split -> class -> files listed
    files: list[FileInfo]
    findings: list[Finding]
    seconds: float = 0.0

    @property
    def has_errors(self) -> bool:
        return any(f.severity == "error" for f in self.findings)

    def of_type(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.type == kind]

    def summary(self) -> dict[str, int]:
        """Number of findings of each type, in ``FINDING_TYPES`` order."""
        counts = Counter(f.type for f in self.findings)
        return {kind: counts[kind] for kind in FINDING_TYPES if counts[kind]}

    def skipped(self) -> dict[str, str]:
        """Files training cannot use, with the reason."""
        return {info.path: info.problem for info in self.files if not info.usable}

    def to_dict(self) -> dict:
        return {
            "root": self.root,
            "layout": self.layout,
            "num_files": len(self.files),
            "counts": self.counts,
            "seconds": round(self.seconds, 3),
            "has_errors": self.has_errors,
            "summary": self.summary(),
            "findings": [f.to_dict() for f in self.findings],
        }


def leaked_files(report: CheckReport) -> dict[str, list[str]]:
    """Held-out (val/test) file -> its byte-identical copies in train."""
    return {f.files[0]: f.files[1:] for f in report.of_type("leakage")}


# ----------------------------------------------------------------------------- per file


class _Where:
    """Split, class and short name of every listed file."""

    def __init__(self, splits: DatasetSplits):
        self.root = Path(splits.root)
        self.rows: dict[str, int] = splits.manifest.get("rows", {})
        self.split: dict[str, str] = {}
        self.label: dict[str, str] = {}
        for part in PARTS:
            for sample in getattr(splits, part):
                self.split[str(sample.path)] = part
                self.label[str(sample.path)] = splits.labels.names[sample.label]

    def rel(self, path: str) -> str:
        """``path`` as messages show it: relative to DATA, with its manifest row."""
        row = f" (row {self.rows[path]})" if path in self.rows else ""
        try:
            return Path(path).relative_to(self.root).as_posix() + row
        except ValueError:
            return path + row


def _file_findings(
    info: FileInfo, where: _Where, *, min_side: int, max_pixels: int
) -> list[Finding]:
    name, found = where.rel(info.path), []

    def add(kind: str, message: str, severity: str | None = None, **details) -> None:
        severity = severity or FINDING_TYPES[kind][0]
        found.append(Finding(kind, severity, message, [info.path], details))

    if info.problem_kind == "too-small":
        add(
            "tiny-image",
            f"{name}: {info.size[0]}x{info.size[1]} px, under {MIN_USABLE_SIDE} px a "
            "side: train skips it",
            "error",
            size=list(info.size),
        )
    elif info.problem_kind:
        add(info.problem_kind, info.problem.replace(info.path, name, 1))
    if info.note:
        add("truncated", f"{name}: {info.note}")
    suffix = Path(info.path).suffix.lower()
    if info.format and info.format not in EXPECTED_FORMATS.get(suffix, {info.format}):
        add(
            "extension-mismatch",
            f"{name}: {info.format} content in a {suffix} file",
            format=info.format,
            suffix=suffix,
        )
    if info.size and info.usable:
        width, height = info.size
        if min(info.size) < min_side:
            add(
                "tiny-image",
                f"{name}: {width}x{height} px, under {min_side} px a side",
                size=list(info.size),
            )
        if width * height > max_pixels:
            megapixels = width * height / 1e6
            add(
                "huge-image",
                f"{name}: {width}x{height} px ({megapixels:.0f} megapixels)",
                size=list(info.size),
            )
    return found


def _mode_findings(infos: list[FileInfo], where: _Where) -> list[Finding]:
    by_mode: dict[str, list[str]] = defaultdict(list)
    for info in infos:
        if info.mode and info.mode != "RGB" and info.usable:
            by_mode[info.mode].append(info.path)
    return [
        Finding(
            "colour-mode",
            "info",
            f"{len(paths)} image(s) in mode {mode} "
            f"({MODE_NAMES.get(mode, mode)}), converted to RGB when loaded",
            paths,
            {"mode": mode},
        )
        for mode, paths in sorted(by_mode.items())
    ]


def _folders_named_like_images(root: Path) -> list[Finding]:
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not ignored_name(d))
        for name in dirnames:
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                path = Path(dirpath) / name
                message = (
                    f"{path.relative_to(root).as_posix()}/: a folder named like an image "
                    "file (not an image; images inside it, if any, are read as usual)"
                )
                found.append(Finding("not-a-file", "warning", message, [str(path)]))
    return found


def _left_out_findings(splits: DatasetSplits, where: _Where) -> list[Finding]:
    """The files scanning did not use: other extensions, images outside any class folder."""
    found = []
    for path, info in sorted(splits.left_out.items()):
        kind = info["type"]
        message = info["reason"].replace(path, where.rel(path), 1)
        found.append(Finding(kind, FINDING_TYPES[kind][0], message, [path]))
    return found


# --------------------------------------------------------------------- classes and splits


def _class_counts(splits: DatasetSplits) -> dict[str, dict[str, int]]:
    counts = {}
    for part in PARTS:
        samples = getattr(splits, part)
        if samples:
            # Every label of a multi-label image counts (``Sample.label`` is only its first).
            per_class = Counter(
                splits.labels.names[c]
                for s in samples
                for c in (np.flatnonzero(s.multi_hot) if s.multi_hot else [s.label])
            )
            counts[part] = {name: per_class[name] for name in splits.labels.names}
    return counts


def _balance_findings(counts: dict[str, dict[str, int]], ratio: float) -> list[Finding]:
    listing = "; ".join(
        f"{part}: " + ", ".join(f"{c} {n}" for c, n in per_class.items())
        for part, per_class in counts.items()
    )
    found = [Finding("class-counts", "info", listing, [], {"counts": counts})]
    for part, per_class in counts.items():
        largest = max(per_class, key=per_class.get)
        smallest = min(per_class, key=per_class.get)
        big, small = per_class[largest], per_class[smallest]
        if small == 0 or big / small >= ratio:
            times = "no images" if small == 0 else f"{big / small:.1f}x"
            message = (
                f"{part}: {largest} has {big} images, {smallest} {small} ({times}); "
                "consider train --balance weights or sampler"
            )
            found.append(
                Finding(
                    "class-imbalance",
                    "warning",
                    message,
                    [],
                    {
                        "split": part,
                        "largest": largest,
                        "smallest": smallest,
                        "ratio": None if small == 0 else big / small,
                    },
                )
            )
    return found


# ----------------------------------------------------------------------------- duplicates


def _listing(paths: list[str], where: _Where) -> str:
    return " = ".join(where.rel(p) for p in paths)


def _duplicate_findings(infos: list[FileInfo], where: _Where) -> list[Finding]:
    found = []
    for group in exact_groups(infos):
        paths = [info.path for info in group]
        found.append(
            Finding(
                "duplicates",
                "warning",
                f"{len(paths)} byte-identical files: {_listing(paths, where)}",
                paths,
                {"redundant": len(paths) - 1},
            )
        )
        in_train = [p for p in paths if where.split[p] == "train"]
        for path in paths:
            if in_train and where.split[path] != "train":
                copies = ", ".join(where.rel(p) for p in in_train)
                message = (
                    f"{where.rel(path)} ({where.split[path]}) is byte-identical to {copies} (train)"
                )
                found.append(
                    Finding(
                        "leakage", "error", message, [path, *in_train], {"split": where.split[path]}
                    )
                )
        classes = sorted({where.label[p] for p in paths})
        if len(classes) > 1:
            found.append(
                Finding(
                    "label-conflict",
                    "error",
                    f"the same image is filed under "
                    f"{' and '.join(classes)}: {_listing(paths, where)}",
                    paths,
                    {"classes": classes},
                )
            )
    return found


def _near_findings(infos: list[FileInfo], where: _Where, max_distance: int) -> list[Finding]:
    found = []
    for group in near_groups(infos, max_distance):
        paths = [info.path for info in group]
        splits = sorted({where.split[p] for p in paths}, key=PARTS.index)
        classes = sorted({where.label[p] for p in paths})
        notes = []
        if len(splits) > 1:
            notes.append(f"across {' and '.join(splits)}: likely leakage")
        if len(classes) > 1:
            notes.append(f"under {' and '.join(classes)}: conflicting labels?")
        distinct = len({info.sha256 for info in group})
        aside = f" ({'; '.join(notes)})" if notes else ""
        # A group can hold byte-identical copies too (each also a "duplicates" finding).
        contents = f" ({distinct} different contents)" if distinct < len(paths) else ""
        message = (
            f"{len(paths)} files{contents} look like the same picture{aside}: "
            f"{_listing(paths, where)}"
        )
        found.append(
            Finding(
                "near-duplicates",
                "warning",
                message,
                paths,
                {"distinct": distinct, "splits": splits, "classes": classes},
            )
        )
    return found


# ---------------------------------------------------------------------------- the checks


def _pool(workers: int):
    return ProcessPoolExecutor(workers) if workers > 1 else nullcontext()


def _map(pool, fn, items: list) -> list:
    if pool is None or len(items) < 64:  # a pool costs more than it saves on a few files
        return [fn(item) for item in items]
    return list(pool.map(fn, items, chunksize=max(1, len(items) // 64)))


def _decode_each_content(pool, infos: list[FileInfo]) -> list[FileInfo]:
    """``decode_file`` once per distinct content; copies share the result."""
    first: dict[str, FileInfo] = {}
    for info in infos:
        if info.usable:
            first.setdefault(info.sha256, info)
    decoded = dict(zip(first, _map(pool, decode_file, list(first.values())), strict=True))

    def merged(info: FileInfo) -> FileInfo:
        done = decoded.get(info.sha256) if info.usable else None
        if done is None:
            return info
        problem = done.problem and done.problem.replace(done.path, info.path, 1)
        return replace(
            info, note=done.note, phash=done.phash, problem=problem, problem_kind=done.problem_kind
        )

    return [merged(info) for info in infos]


def default_check_workers() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8, cores or 1))


def check_splits(
    splits: DatasetSplits,
    *,
    decode: bool = True,
    near_distance: int | None = DEFAULT_NEAR_DISTANCE,
    min_side: int = 32,
    max_pixels: int = 50_000_000,
    imbalance_ratio: float = 3.0,
    workers: int | None = None,
) -> CheckReport:
    """Every finding about the files of ``splits``.

    ``decode=False`` reads headers and hashes bytes only (no truncation or near-duplicate
    findings). ``near_distance=None`` skips near duplicates. ``workers``: processes (default one
    per core, at most 8; 0 or 1 runs in this process).
    """
    started = time.perf_counter()
    where = _Where(splits)
    paths = list(where.split)
    workers = default_check_workers() if workers is None else workers
    with _pool(workers) as pool:
        infos = _map(pool, inspect_file, paths)
        if decode:
            infos = _decode_each_content(pool, infos)
    counts = _class_counts(splits)
    findings = _folders_named_like_images(Path(splits.root)) + _left_out_findings(splits, where)
    for info in infos:
        findings += _file_findings(info, where, min_side=min_side, max_pixels=max_pixels)
    findings += _mode_findings(infos, where)
    findings += _balance_findings(counts, imbalance_ratio)
    findings += _duplicate_findings(infos, where)
    findings += _group_findings(splits, where)
    if decode and near_distance is not None:
        findings += _near_findings(infos, where, near_distance)
    return CheckReport(
        str(splits.root), splits.layout, counts, infos, findings, time.perf_counter() - started
    )


def _group_findings(splits: DatasetSplits, where: _Where) -> list[Finding]:
    """One ``group-leakage`` finding per held-out split sharing groups with train."""
    train = {s.group for s in splits.train if s.group is not None}
    found = []
    for part in ("val", "test"):
        shared = [s for s in getattr(splits, part) if s.group in train]
        if not shared:
            continue
        groups = sorted({s.group for s in shared})
        shown = ", ".join(groups[:5]) + (f" and {len(groups) - 5} more" if len(groups) > 5 else "")
        message = (
            f"{len(groups)} group(s) in both train and {part} ({shown}): {len(shared)} {part} "
            f"image(s), e.g. {where.rel(str(shared[0].path))}"
        )
        files = [str(s.path) for s in shared]
        found.append(Finding("group-leakage", "error", message, files, {"groups": groups}))
    return found


def check_folder(
    root: str | Path,
    *,
    decode: bool = True,
    near_distance: int | None = DEFAULT_NEAR_DISTANCE,
    min_side: int = 32,
    max_pixels: int = 50_000_000,
    imbalance_ratio: float = 3.0,
    workers: int | None = None,
    columns: ManifestColumns | None = None,
) -> CheckReport:
    """Scan ``root`` (any layout ``scan_data`` accepts, a manifest read by ``columns``; nothing
    held out of train) and check it with ``check_splits``.

    >>> report = check_folder(photos, workers=0)
    >>> report.has_errors, report.summary()
    (False, {'class-counts': 1})
    """
    return check_splits(
        scan_data(root, columns, val_fraction=0.0),
        decode=decode,
        near_distance=near_distance,
        min_side=min_side,
        max_pixels=max_pixels,
        imbalance_ratio=imbalance_ratio,
        workers=workers,
    )
