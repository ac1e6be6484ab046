"""Scan a folder of class sub-folders (optionally inside train/val/test split folders).

Two layouts are recognised::

    DATA/<class>/<image>                    -> validation held out of it, no test split
    DATA/<split>/<class>/<image>            -> split names train, val|valid|validation, test
                                               in any letter case (e.g. TRAIN, TEST)

Class names are matched across splits without regard to case.

>>> splits = scan_folder(photos)
>>> splits.layout, splits.labels.names, len(splits.train), len(splits.val), len(splits.test)
('splits', ('cat', 'dog'), 12, 4, 6)
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from ..specs import LabelMap

__all__ = [
    "IMAGE_EXTENSIONS",
    "DatasetSplits",
    "Sample",
    "evaluation_folder",
    "expand_image_paths",
    "group_split",
    "ignored_name",
    "list_images",
    "scan_class_folder",
    "scan_folder",
    "stratified_split",
]

# Decoding goes by content; the extension only decides which files are meant to be images.
IMAGE_EXTENSIONS = frozenset(
    [
        ".jpg",
        ".jpeg",
        ".jpe",
        ".jfif",
        ".png",
        ".bmp",
        ".gif",
        ".webp",
        ".tif",
        ".tiff",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
        ".ico",
    ]
)


def _register_heif() -> frozenset[str]:
    """HEIC/HEIF (iPhone photos) when the optional ``pillow-heif`` is installed
    (``pip install visiontune[heif]``): registered with Pillow, so decoding reads them too."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return frozenset()
    register_heif_opener()
    return frozenset([".heic", ".heif"])


IMAGE_EXTENSIONS = IMAGE_EXTENSIONS | _register_heif()
# Left behind by operating systems, never data: a macOS zip's __MACOSX/ (AppleDouble copies of
# every file), Finder's .DS_Store, Windows' Thumbs.db and desktop.ini. Hidden names (".x") too.
IGNORED_NAMES = frozenset(["__macosx", ".ds_store", "thumbs.db", "desktop.ini", "@eadir"])
# Image formats people have that Pillow does not read without a plugin
PLUGIN_FORMATS = {".heic": "pillow-heif", ".heif": "pillow-heif", ".avif": "pillow-avif-plugin"}
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


@dataclass(frozen=True)
class Sample:
    """One image and its label. ``group``: the manifest's ``--group-column`` value (a patient,
    a person, a video), so a held-out split never shares a group with train. ``multi_hot``: a
    multi-label image's 0/1 per class (``label`` is then its first class), empty otherwise."""

    path: Path
    label: int
    group: str | None = None
    multi_hot: tuple[int, ...] = ()

    @property
    def target(self):
        """What the loader yields as this image's label: the class index, or the multi-hot row
        (a batch of them collates to a ``(batch, classes)`` tensor)."""
        return self.multi_hot if self.multi_hot else self.label


@dataclass
class DatasetSplits:
    """Everything ``train`` needs to know about DATA after scanning it."""

    root: Path
    layout: str  # "classes" or "splits"
    labels: LabelMap
    train: list[Sample]
    val: list[Sample]
    test: list[Sample] = field(default_factory=list)
    val_source: str = "held-out"  # "held-out" fraction of train, or "folder"
    # files under DATA that are not used, path -> {"type", "reason"}: "unsupported-file" (an
    # extension that is not an image type we read), "stray-image" (an image outside any class)
    left_out: dict[str, dict] = field(default_factory=dict)
    multi_label: bool = False  # samples carry ``multi_hot`` rows (a manifest's label sets)
    # A manifest's record (``data.manifest``): its path, sha256, the columns read, and the row
    # number of each path (for messages); empty for a folder.
    manifest: dict = field(default_factory=dict)

    def summary(self) -> dict:
        found = {
            "root": str(self.root),
            "layout": self.layout,
            "classes": list(self.labels.names),
            "train": len(self.train),
            "val": len(self.val),
            "test": len(self.test),
            "val_source": self.val_source,
        }
        if self.multi_label:
            found["multi_label"] = True
        if self.manifest:
            found["manifest"] = {k: v for k, v in self.manifest.items() if k != "rows"}
        return found


def ignored_name(name: str) -> bool:
    """Hidden names and what operating systems leave behind (``__MACOSX``, ``Thumbs.db``...)."""
    return name.startswith(".") or name.lower() in IGNORED_NAMES


def _is_visible_dir(path: Path) -> bool:
    return path.is_dir() and not ignored_name(path.name)


def _unsupported(path: Path) -> dict:
    suffix = path.suffix.lower()
    what = f"{suffix} is not an image type visiontune reads" if suffix else "no file extension"
    plugin = PLUGIN_FORMATS.get(suffix)
    hint = f" (`pip install {plugin}` adds it)" if plugin else ""
    return {"type": "unsupported-file", "reason": f"{path}: {what}{hint}; left out"}


def _stray(path: Path, where: str) -> dict:
    reason = f"{path}: an image in {where}, outside any class folder; left out"
    return {"type": "stray-image", "reason": reason}


def list_images(folder: Path, *, left_out: dict[str, dict] | None = None) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted; hidden and system files and folders
    skipped. ``left_out``: gets the other files, with why (``DatasetSplits.left_out``)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not ignored_name(d))
        for name in sorted(filenames):
            if ignored_name(name):
                continue
            path = Path(dirpath) / name
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                found.append(path)
            elif left_out is not None:
                left_out[str(path)] = _unsupported(path)
    return found


def _stray_images(folder: Path, where: str, left_out: dict[str, dict] | None) -> None:
    """Image files directly in ``folder`` (the dataset root, a split folder): no class."""
    if left_out is None:
        return
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in IMAGE_EXTENSIONS and not ignored_name(path.name):
            if path.is_file():
                left_out[str(path)] = _stray(path, where)


def _class_dirs(folder: Path) -> dict[str, Path]:
    dirs = sorted((p for p in folder.iterdir() if _is_visible_dir(p)), key=lambda p: p.name)
    by_key: dict[str, Path] = {}
    for d in dirs:
        key = d.name.lower()
        if key in by_key:
            raise DataError(
                f"class folders {by_key[key].name!r} and {d.name!r} in {folder} differ only in case"
            )
        by_key[key] = d
    return by_key


def _new_labels(folder: Path, class_dirs: dict[str, Path], min_classes: int) -> LabelMap:
    labels = LabelMap(tuple(class_dirs[k].name for k in sorted(class_dirs)))
    if len(labels) < min_classes:
        raise DataError(
            f"{folder} has a single class ({labels.names[0]!r}); a classifier needs at least two"
        )
    return labels


def _empty_classes(folder: Path, empty: list[str], left_out: dict[str, dict]) -> DataError:
    unused = [info for path, info in left_out.items() if Path(path).parent.name in empty]
    aside = f" ({len(unused)} file(s) left out, e.g. {unused[0]['reason']})" if unused else ""
    return DataError(f"class folder(s) with no images in {folder}: {', '.join(empty)}{aside}")


def scan_class_folder(
    folder: Path,
    labels: LabelMap | None = None,
    *,
    min_classes: int = 2,
    left_out: dict[str, dict] | None = None,
) -> tuple[LabelMap, list[Sample]]:
    """Read ``folder/<class>/<images>``. With ``labels`` given, class names must be among them.
    ``min_classes``: without ``labels``, fewer classes are refused (a classifier needs two).
    ``left_out``: gets the files that are not used, with why."""
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"no such folder: {folder}")
    if not folder.is_dir():
        raise DataError(f"not a folder: {folder}")
    class_dirs = _class_dirs(folder)
    if not class_dirs:
        raise DataError(f"{folder} has no class sub-folders (expected {folder}/<class>/<image>)")
    unused: dict[str, dict] = {}
    _stray_images(folder, f"{folder}", unused)
    images = {key: list_images(d, left_out=unused) for key, d in class_dirs.items()}
    if left_out is not None:
        left_out.update(unused)
    empty = [class_dirs[k].name for k, files in images.items() if not files]
    if empty and labels is None:
        raise _empty_classes(folder, empty, unused)
    if labels is None:
        labels = _new_labels(folder, class_dirs, min_classes)
    known = {n.lower(): i for i, n in enumerate(labels.names)}
    unknown = [class_dirs[k].name for k in images if k not in known and images[k]]
    if unknown:
        raise DataError(
            f"class folder(s) in {folder} that the model does not know: {', '.join(unknown)} "
            f"(known: {', '.join(labels.names)})"
        )
    samples = [Sample(p, known[k]) for k in sorted(images) for p in images[k]]
    if not samples:
        raise DataError(f"no images found under {folder}")
    return labels, samples


def evaluation_folder(folder: str | Path) -> Path:
    """The folder of class sub-folders to score a model on: ``folder`` itself, or its test split
    when it is a dataset root with split folders (as a manifest gives its test rows)."""
    folder = Path(folder)
    splits = _split_dirs(folder) if folder.is_dir() else {}
    if not splits:
        return folder
    if "test" not in splits:
        names = ", ".join(sorted(d.name for d in splits.values()))
        raise DataError(
            f"{folder} holds split folders ({names}) but no test folder to evaluate on; give "
            "a folder of class sub-folders"
        )
    return splits["test"]


def _split_dirs(root: Path) -> dict[str, Path]:
    splits: dict[str, Path] = {}
    for d in root.iterdir():
        alias = SPLIT_ALIASES.get(d.name.lower())
        if alias and _is_visible_dir(d):
            if alias in splits:
                raise DataError(f"{root} has two {alias} folders: {splits[alias].name}, {d.name}")
            splits[alias] = d
    return splits


def stratified_split(
    samples: list[Sample], fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Hold out ``fraction`` of each class (at least one image where a class has two or more).
    Samples with a ``group`` are split by group instead (``group_split``)."""
    if fraction > 0 and any(s.group is not None for s in samples):
        return group_split(samples, fraction, seed)
    rng = random.Random(seed)
    by_class: dict[int, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(s.label, []).append(s)
    kept, held = [], []
    for label in sorted(by_class):
        group = list(by_class[label])
        rng.shuffle(group)
        n_held = int(round(len(group) * fraction)) if fraction > 0 else 0
        if fraction > 0 and len(group) >= 2:
            n_held = min(max(n_held, 1), len(group) - 1)
        held += group[:n_held]
        kept += group[n_held:]
    # Path order, independent of the shuffle, so loaders see a stable order.
    return sorted(kept, key=_path_key), sorted(held, key=_path_key)


def _path_key(sample: Sample) -> str:
    return str(sample.path)


def group_split(
    samples: list[Sample], fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Hold out about ``fraction`` of the images, whole groups at a time and stratified by
    class as far as the groups allow (scikit-learn's ``StratifiedGroupKFold``: its first fold
    of ``round(1 / fraction)``), so no group is on both sides. Fewer groups than folds: one
    seeded ``GroupShuffleSplit``. Samples without a group are each a group of their own."""
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

    groups = [s.group if s.group is not None else f"\0{s.path}" for s in samples]
    labels = [s.label for s in samples]
    folds = max(2, round(1 / fraction))
    rows = list(range(len(samples)))
    if len(set(groups)) >= folds and min(Counter(labels).values()) >= folds:
        splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed % 2**32)
        kept, held = next(splitter.split(rows, labels, groups))
    elif len(set(groups)) >= 2:
        splitter = GroupShuffleSplit(1, test_size=fraction, random_state=seed % 2**32)
        kept, held = next(splitter.split(rows, labels, groups))
    else:
        raise DataError(f"every image is in one group ({groups[0]!r}): no group can be held out")
    return (
        sorted((samples[i] for i in kept), key=_path_key),
        sorted((samples[i] for i in held), key=_path_key),
    )


def scan_folder(
    root: str | Path, *, val_fraction: float = 0.15, seed: int = 0, min_classes: int = 2
) -> DatasetSplits:
    """Detect the layout of ``root`` and return its splits, holding out validation if needed.
    ``min_classes``: 1 where no classifier is trained (``extract``). Files that are not used
    (other extensions, images outside a class folder) are listed in ``left_out``."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"no such folder: {root}")
    if not root.is_dir():
        raise DataError(f"not a folder: {root}")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    splits, left_out = _split_dirs(root), {}
    if not splits:
        labels, samples = scan_class_folder(root, min_classes=min_classes, left_out=left_out)
        train, val = stratified_split(samples, val_fraction, seed)
        return DatasetSplits(root, "classes", labels, train, val, left_out=left_out)
    if "train" not in splits:
        raise DataError(
            f"{root} has split folders ({', '.join(d.name for d in splits.values())}) but no train "
            "folder"
        )
    _stray_images(root, f"the dataset root {root}", left_out)
    labels, train = scan_class_folder(splits["train"], min_classes=min_classes, left_out=left_out)
    test = []
    if "test" in splits:
        test = scan_class_folder(splits["test"], labels, left_out=left_out)[1]
    if "val" in splits:
        val = scan_class_folder(splits["val"], labels, left_out=left_out)[1]
        return DatasetSplits(
            root, "splits", labels, train, val, test, val_source="folder", left_out=left_out
        )
    train, val = stratified_split(train, val_fraction, seed)
    return DatasetSplits(root, "splits", labels, train, val, test, left_out=left_out)


def expand_image_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given, folders expanded recursively to their image files."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            found += list_images(path)
        elif path.is_file():
            found.append(path)
        else:
            raise DataError(f"no such file or folder: {path}")
    if not found:
        raise DataError(
            "no image files found in: "
            + ", ".join(str(p) for p in paths)
            + f" (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return found
