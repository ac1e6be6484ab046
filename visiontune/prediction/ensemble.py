"""``Ensemble``: several trained models as one, their class probabilities averaged.

Members must predict the same classes in the same order (an output index means the same class in
each); anything else is refused, naming the difference. Each member keeps its own backbone and
preprocessing, so a Lite0 (224 px) and a Lite2 (260 px) can be averaged: each sees the image as
it was trained to.

A folder with an ``ensemble.json`` (written by ``visiontune train --ensemble N``) loads as one
model; ``load_predictor`` takes such folders, ordinary run folders, or a list of either.

>>> runs = [visiontune.fit(photos, strategy="head", seed=seed, out=f"run{seed}", progress=False,
...                        **TINY).run_dir for seed in (0, 1)]
>>> model = load_predictor(runs)
>>> len(model.members), model.evaluate(photos / "test", tta="flip")["num_images"]
(2, 6)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .._io import atomic_write_text
from ..data.folder import Sample
from ..data.loader import SkipLog
from ..errors import BundleError, VisiontuneError
from ..formats.validation import check_format_version, check_object
from ..specs import LabelMap
from .base import Outputs
from .predictor import Predictor, TrainedModel
from .tta import view_count

__all__ = [
    "ENSEMBLE_FILE",
    "Ensemble",
    "is_ensemble_folder",
    "load_predictor",
    "write_ensemble_file",
]

ENSEMBLE_FILE = "ensemble.json"
ENSEMBLE_FORMAT = 1


def _name(member: TrainedModel, index: int) -> str:
    return str(member.run_dir) if member.run_dir else f"member {index}"


def _check_same_classes(members: Sequence[TrainedModel]) -> LabelMap:
    first = members[0].labels.names
    for i, member in enumerate(members[1:], 1):
        names = member.labels.names
        if names == first:
            continue
        a, b = _name(members[0], 0), _name(member, i)
        only_a = [n for n in first if n not in names]
        only_b = [n for n in names if n not in first]
        if only_a or only_b:
            detail = (
                f"only in {a}: {', '.join(only_a) or '-'}; only in {b}: {', '.join(only_b) or '-'}"
            )
        else:
            at = next(j for j, (x, y) in enumerate(zip(first, names, strict=True)) if x != y)
            detail = (
                f"same classes in another order: output {at} is {first[at]!r} in {a} "
                f"but {names[at]!r} in {b}"
            )
        raise VisiontuneError(
            f"ensemble members must predict the same classes in the same order; {detail}"
        )
    return members[0].labels


class Ensemble(Predictor):
    """Averages the class probabilities of its members (each with its own preprocessing)."""

    def __init__(self, members: Sequence[TrainedModel], *, run_dir: Path | None = None):
        if not members:
            raise VisiontuneError("an ensemble needs at least one member")
        self.members = list(members)
        self.labels = _check_same_classes(self.members)
        self.run_dir = run_dir
        kinds = {m.multi_label for m in self.members}
        if len(kinds) > 1:
            raise VisiontuneError("ensemble members must all be multi-label, or none of them")
        self.multi_label = kinds.pop()
        # The averaged sigmoids are cut at the members' mean thresholds: each member's was
        # chosen on the same validation split, and the mean of probabilities moves with them.
        if self.multi_label:
            self.thresholds = np.mean([m.thresholds for m in self.members], axis=0)

    def __repr__(self) -> str:
        names = [m.model.backbone.name for m in self.members]
        classes = list(self.labels.names)
        return f"Ensemble(members={len(self.members)}, backbones={names}, classes={classes})"

    def __len__(self) -> int:
        return len(self.members)

    def passes_per_image(self, tta: str = "none") -> int:
        return view_count(tta) * len(self.members)

    def calibration_record(self) -> dict | None:
        records = [m.calibration_record() for m in self.members]
        if all(r is None for r in records):
            return None
        return {"members": [r or {"temperature": 1.0, "validation": None} for r in records]}

    def threshold_for_rate(self, rate: float) -> float:
        # The mean score's threshold for another rate, approximated by the members' mean.
        return float(np.mean([m.threshold_for_rate(rate) for m in self.members]))

    def _probabilities(
        self,
        samples: list[Sample],
        *,
        batch_size: int,
        workers: int | None,
        progress: bool,
        skips: SkipLog,
        tta: str = "none",
    ) -> Outputs:
        outputs = [
            member._probabilities(
                samples,
                batch_size=batch_size,
                workers=workers,
                progress=progress,
                skips=skips,
                tta=tta,
            )
            for member in self.members
        ]
        return _mean(outputs, len(self.labels))

    def decoded_outputs(self, images: Sequence, *, tta: str = "none") -> Outputs:
        outputs = [member.decoded_outputs(images, tta=tta) for member in self.members]
        return _mean(outputs, len(self.labels))


def _mean(outputs: Sequence[Outputs], classes: int) -> Outputs:
    """The members' outputs averaged over the images every member could decode."""
    rows = [{int(i): j for j, i in enumerate(o.indices.tolist())} for o in outputs]
    # A file one member could not decode (members may decode at different sizes) is left
    # out for all, so every kept image is an average over every member.
    kept = sorted(set.intersection(*(set(r) for r in rows)))
    if not kept:
        return Outputs(np.zeros((0, classes)), np.zeros(0, dtype=np.int64))
    picks = [[r[i] for i in kept] for r in rows]
    mean = np.mean([o.probs[p] for o, p in zip(outputs, picks, strict=True)], axis=0)
    unknown = None  # each member's normalised score has threshold 1: their mean does too
    if all(o.unknown is not None for o in outputs):
        unknown = np.mean([o.unknown[p] for o, p in zip(outputs, picks, strict=True)], axis=0)
    return Outputs(mean, np.asarray(kept, dtype=np.int64), unknown)


def is_ensemble_folder(folder: str | Path) -> bool:
    return (Path(folder) / ENSEMBLE_FILE).is_file()


def write_ensemble_file(
    folder: str | Path, members: Sequence[str | Path], *, extra: dict | None = None
) -> Path:
    """Write ``folder/ensemble.json`` listing ``members`` (run folders inside ``folder``)."""
    folder = Path(folder)
    relative = [str(Path(m).resolve().relative_to(folder.resolve())) for m in members]
    data = {"format_version": ENSEMBLE_FORMAT, "members": relative, **(extra or {})}
    atomic_write_text(folder / ENSEMBLE_FILE, json.dumps(data, indent=2) + "\n")
    return folder / ENSEMBLE_FILE


def _member_folders(folder: Path) -> list[Path]:
    path = folder / ENSEMBLE_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"cannot read {path}: {exc}") from exc
    version = check_format_version(
        check_object(data, str(path), "the whole file").get("format_version"), str(path)
    )
    if version > ENSEMBLE_FORMAT:
        raise BundleError(
            f"{path} has format {version}; this visiontune reads up to "
            f"{ENSEMBLE_FORMAT}. Upgrade visiontune to load it."
        )
    members = data.get("members")
    if not isinstance(members, list) or not members:
        raise BundleError(f"{path} lists no members")
    if not all(isinstance(m, str) and m for m in members):
        raise BundleError(f"{path}: members must be folder names, got {members!r}")
    return [folder / m for m in members]


def _run_folders(runs: str | Path | Sequence[str | Path]) -> list[Path]:
    """Each run folder, with ensemble folders replaced by their members."""
    runs = [runs] if isinstance(runs, (str, Path)) else list(runs)
    if not runs:
        raise VisiontuneError("no run folder given")
    folders: list[Path] = []
    for run in map(Path, runs):
        folders += _member_folders(run) if is_ensemble_folder(run) else [run]
    return folders


def load_predictor(
    runs: str | Path | Sequence[str | Path],
    *,
    device: str | torch.device = "cpu",
    precision: str | None = None,
) -> TrainedModel | Ensemble:
    """A ``TrainedModel`` for one plain run folder; an ``Ensemble`` for an ensemble folder or
    several folders (the members of all of them averaged together). ``precision``: see
    ``TrainedModel.from_run`` (default: each run's own)."""
    runs = [Path(runs)] if isinstance(runs, (str, Path)) else [Path(r) for r in runs]
    if len(runs) == 1 and not is_ensemble_folder(runs[0]):
        return TrainedModel.from_run(runs[0], device=device, precision=precision)
    members = [
        TrainedModel.from_run(f, device=device, precision=precision) for f in _run_folders(runs)
    ]
    return Ensemble(members, run_dir=runs[0] if len(runs) == 1 else None)
