"""A run's checkpoint: saved after set-up and after every epoch, restored by ``resume``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ..data.folder import DatasetSplits
from ..data.loader import SkipLog
from ..errors import DataError, VisiontuneError
from ..formats.checkpoint import CHECKPOINT_FILE, Checkpoint, TrainingState, save_checkpoint


def splits_fingerprint(splits: DatasetSplits) -> str:
    """Digest of which files train, validate and test, with labels and sizes.

    A resumed run must see the same data; the split itself is re-drawn from the seed.
    """
    root = Path(splits.root)
    digest = hashlib.sha256()
    for part in ("train", "val", "test"):
        for sample in getattr(splits, part):
            path = Path(sample.path)
            rel = path.relative_to(root) if path.is_relative_to(root) else path
            size = path.stat().st_size if path.exists() else -1
            digest.update(f"{part}\t{rel}\t{sample.target}\t{size}\n".encode())
    return digest.hexdigest()


def refuse_interrupted(run_dir: Path) -> None:
    """A fresh run must not overwrite an interrupted one's checkpoint."""
    if (run_dir / CHECKPOINT_FILE).is_file():
        raise VisiontuneError(
            f"{run_dir} holds an interrupted run ({CHECKPOINT_FILE}); continue it with "
            f"`visiontune train --resume {run_dir}`, or choose another --out"
        )


class RunCheckpoints:
    """Writes ``RUN/checkpoint.safetensors`` after set-up and after every epoch (rank 0 only).

    ``record`` is the run's part that does not change between epochs (its options, the advice,
    the data fingerprint, the warm start); each save adds the strategy's state and the files
    skipped so far, so a resumed run reports them too.
    """

    def __init__(self, run_dir: Path, *, writes: bool, record: dict):
        self.path = Path(run_dir) / CHECKPOINT_FILE
        self.writes, self.record = writes, record

    def save(self, model, optimizer, state: TrainingState, strategy, skips: SkipLog) -> None:
        if self.writes:
            extra = {**self.record, "strategy": strategy.state_dict(), "skips": skips.to_dict()}
            save_checkpoint(self.path, model=model, optimizer=optimizer, state=state, extra=extra)


def check_same_data(checkpoint: Checkpoint, fingerprint: str, run_dir: Path) -> None:
    """A resumed run must train on the files it was checkpointed with."""
    if checkpoint.extra.get("data_fingerprint") != fingerprint:
        raise DataError(
            f"the data changed since {run_dir} was checkpointed (files added, removed or "
            "resized); resuming would not continue the same run"
        )


def restore(checkpoint: Checkpoint, model, optimizer, strategy) -> TrainingState:
    """Put weights, the strategy's progress and the optimizer's state back; where to go on."""
    model.load_state_dict(checkpoint.model_state)
    # The strategy's progress (a gradual plan's unfrozen stages and their optimizer groups)
    # comes back before the optimizer's state, whose groups it must match.
    saved = checkpoint.extra.get("strategy") or {}
    strategy.load_state_dict(saved, model=model, optimizer=optimizer)
    optimizer.load_state_dict(checkpoint.optimizer_state)
    _match_memory_format(optimizer)
    return checkpoint.state


def skipped_before(checkpoint: Checkpoint | None) -> dict:
    """The files an interrupted run had skipped (``SkipLog.to_dict()`` form)."""
    saved = (checkpoint.extra.get("skips") if checkpoint else None) or {}
    return {"skipped": saved.get("skipped", {}), "notes": saved.get("notes", {})}


def _match_memory_format(optimizer: torch.optim.Optimizer) -> None:
    # Saved moments are row-major; channels_last weights train with channels_last moments.
    for group in optimizer.param_groups:
        for param in group["params"]:
            entries = optimizer.state.get(param, {})
            for name, value in entries.items():
                if isinstance(value, torch.Tensor) and value.shape == param.shape:
                    entries[name] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def saved_options(checkpoint: Checkpoint) -> dict:
    """The run's ``TrainConfig`` fields as saved (already resolved: ``auto`` became a strategy)."""
    return json.loads(json.dumps(checkpoint.extra["training"]))
