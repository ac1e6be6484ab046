"""A run's checkpoint: saved after setup and after every epoch, restored by ``resume``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ..data.folder import DatasetSplits
from ..data.loader import SkipLog
from ..engine.distributed import Distributed
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
            digest.update(f"{part}\t{rel}\t{sample.label}\t{size}\n".encode())
    return digest.hexdigest()


def refuse_interrupted(run_dir: Path) -> None:
    """A fresh run must not overwrite an interrupted one's checkpoint."""
    if (run_dir / CHECKPOINT_FILE).is_file():
        raise VisiontuneError(
            f"{run_dir} holds an interrupted run ({CHECKPOINT_FILE}); continue it with "
            f"`visiontune train --resume {run_dir}`, or choose another --out"
        )


class RunCheckpoints:
    """Writes ``RUN/checkpoint.safetensors`` (rank 0 only) and puts a resumed run back."""

    def __init__(
        self,
        run_dir: Path,
        *,
        dist: Distributed | None,
        resumed: Checkpoint | None,
        extra: dict,
        skips: SkipLog,
    ):
        self.path = Path(run_dir) / CHECKPOINT_FILE
        self.dist, self.resumed, self.extra, self.skips = dist, resumed, extra, skips
        if resumed is not None:
            saved = resumed.extra.get("data_fingerprint")
            if saved != extra["data_fingerprint"]:
                raise DataError(
                    f"the data changed since {run_dir} was checkpointed (files added, removed "
                    "or resized); resuming would not continue the same run"
                )
            skips.skipped.update(resumed.extra.get("skips", {}).get("skipped", {}))
            skips.notes.update(resumed.extra.get("skips", {}).get("notes", {}))

    @property
    def writes(self) -> bool:
        return self.dist is None or self.dist.is_main

    def save(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        state: TrainingState,
        strategy,
    ) -> None:
        if self.writes:
            extra = {**self.extra, "strategy": strategy.state_dict(), "skips": self.skips.to_dict()}
            save_checkpoint(self.path, model=model, optimizer=optimizer, state=state, extra=extra)

    def restore(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, strategy
    ) -> TrainingState | None:
        """Load weights, strategy progress and optimizer state; ``None`` for a fresh run."""
        if self.resumed is None:
            return None
        checkpoint = self.resumed
        model.load_state_dict(checkpoint.model_state)
        if checkpoint.state.epoch > 0:
            # Replaying the last epoch's start puts a gradual plan (frozen stages, optimizer
            # groups) where it was; fixed plans do nothing.
            strategy.on_epoch_start(checkpoint.state.epoch - 1, model, optimizer)
        if strategy.state_dict() != checkpoint.extra.get("strategy"):
            raise VisiontuneError(
                f"{self.path}: strategy state {checkpoint.extra.get('strategy')} "
                f"cannot be rebuilt (got {strategy.state_dict()})"
            )
        optimizer.load_state_dict(checkpoint.optimizer_state)
        _match_memory_format(optimizer)
        return checkpoint.state

    def finish(self) -> None:
        """The bundle is written: the checkpoint has served."""
        if self.writes:
            self.path.unlink(missing_ok=True)


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
