"""``resume``: continue an interrupted run from its last checkpoint."""

from __future__ import annotations

from pathlib import Path

from ..config import TrainConfig
from ..engine import distributed
from ..errors import VisiontuneError
from ..formats.checkpoint import CHECKPOINT_FILE, load_checkpoint
from ._checkpoints import saved_options
from ._training import FitResult, _fit

# May differ from the interrupted run's: they change where and how fast it runs, not what it
# computes (up to floating-point differences between devices).
CHANGEABLE = ("workers", "device", "progress")


def _differences(saved: dict, given: dict) -> list[str]:
    """``--option value`` for each given option that contradicts the saved run's."""
    unknown = sorted(set(given) - set(TrainConfig.field_names()))
    if unknown:
        raise VisiontuneError(f"unknown training option(s): {', '.join(unknown)}")
    differ = []
    for name, value in given.items():
        if name in CHANGEABLE:
            continue
        same = (
            Path(value).resolve() == Path(saved[name]).resolve()
            if name in ("data", "out") and value is not None and saved.get(name) is not None
            else value == saved.get(name)
        )
        if not same:
            used = "the default" if saved.get(name) is None else saved[name]
            differ.append(f"--{name.replace('_', '-')} {value} (the run used {used})")
    return differ


def resume(
    run: str | Path,
    *,
    workers: int | None = None,
    device: str | None = None,
    progress: bool = True,
    **options,
) -> FitResult:
    """Continue the run in folder ``run`` from its last checkpoint, with its own options.

    The run ends exactly as it would have without the interruption (on the CPU, where
    arithmetic is deterministic): the interrupted epoch is trained again from its start, drawing
    the same random numbers. ``options`` may repeat the run's options (``data``, ``lr``, ...) but
    not change them; ``workers``, ``device`` and ``progress`` may change.

    >>> visiontune.resume("runs/poses")          # doctest: +SKIP
    """
    run = Path(run).expanduser()
    path = run / CHECKPOINT_FILE
    if not path.is_file():
        if (run / "metrics.json").is_file():
            raise VisiontuneError(
                f"{run} finished training (it has metrics.json); nothing to resume"
            )
        if not run.is_dir():
            raise VisiontuneError(f"no such run folder: {run}")
        raise VisiontuneError(
            f"{run} has no {CHECKPOINT_FILE}: it stopped before training began, or it "
            "is a --strategy head run (never checkpointed; run it again, its features "
            "come back from the cache)"
        )
    checkpoint = load_checkpoint(path)
    saved = saved_options(checkpoint)
    differ = _differences({**saved, "out": str(run)}, options)
    if differ:
        raise VisiontuneError(
            f"--resume continues {run} with the options it was started with; "
            f"drop or match: {'; '.join(differ)}"
        )
    known = {k: v for k, v in saved.items() if k in TrainConfig.field_names()}
    config = TrainConfig(
        **{
            **known,
            "out": str(run),
            "progress": progress,
            "workers": known.get("workers") if workers is None else workers,
            "device": device or known.get("device", "auto"),
        }
    )
    with distributed.session(config.device) as dist:
        return _fit(config, dist, resume=checkpoint)
