"""Continuing an interrupted run: its checkpoint, its own options, and the ones that may change."""

from __future__ import annotations

from pathlib import Path

from ..config import TrainConfig
from ..errors import VisiontuneError
from ..formats.checkpoint import CHECKPOINT_FILE, Checkpoint, load_checkpoint
from .checkpoints import saved_options

__all__ = ["CHANGEABLE", "resumed_config"]

# May differ from the interrupted run's: they change where and how fast it runs, not what it
# computes (up to floating-point differences between devices).
CHANGEABLE = ("workers", "device", "progress")


def _same(name: str, value, saved) -> bool:
    if name in ("data", "out") and value is not None and saved is not None:
        return Path(value).resolve() == Path(saved).resolve()
    return value == saved


def _differences(saved: dict, given: dict) -> list[str]:
    """``--option value`` for each given option that contradicts the saved run's."""
    unknown = sorted(set(given) - set(TrainConfig.field_names()))
    if unknown:
        raise VisiontuneError(f"unknown training option(s): {', '.join(unknown)}")
    differ = []
    for name, value in given.items():
        if name not in CHANGEABLE and not _same(name, value, saved.get(name)):
            used = "the default" if saved.get(name) is None else saved[name]
            differ.append(f"--{name.replace('_', '-')} {value} (the run used {used})")
    return differ


def _checkpoint_of(run: Path) -> Checkpoint:
    """The interrupted run's checkpoint, or why there is none."""
    if (run / CHECKPOINT_FILE).is_file():
        return load_checkpoint(run / CHECKPOINT_FILE)
    if (run / "metrics.json").is_file():
        raise VisiontuneError(f"{run} finished training (it has metrics.json); nothing to resume")
    if not run.is_dir():
        raise VisiontuneError(f"no such run folder: {run}")
    interrupted = sorted((run / "candidates").glob(f"*/{CHECKPOINT_FILE}"))
    if interrupted:  # an auto run stopped while a candidate trained
        candidate = interrupted[0].parent
        raise VisiontuneError(
            f"{run} is an interrupted --strategy auto run: resume its candidate with "
            f"--resume {candidate} (it is an ordinary run), or run auto again, which starts "
            "its candidates afresh"
        )
    raise VisiontuneError(
        f"{run} has no {CHECKPOINT_FILE}: it stopped before training began, or it is a "
        "--strategy head run (never checkpointed; run it again, its features come back from "
        "the cache)"
    )


def resumed_config(run: str | Path, options: dict) -> tuple[TrainConfig, Checkpoint]:
    """The config to continue ``run`` with, and its checkpoint. ``options`` may repeat the run's
    own options but not change them, except ``CHANGEABLE`` ones."""
    run = Path(run).expanduser()
    checkpoint = _checkpoint_of(run)
    saved = saved_options(checkpoint)
    differ = _differences({**saved, "out": str(run)}, options)
    if differ:
        raise VisiontuneError(
            f"--resume continues {run} with the options it was started with; drop or match: "
            f"{'; '.join(differ)}"
        )
    changed = {k: options[k] for k in CHANGEABLE if options.get(k) is not None}
    config = TrainConfig.from_dict({**saved, "out": str(run), "progress": True, **changed})
    return config, checkpoint
