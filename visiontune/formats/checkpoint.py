"""Training checkpoints: one safetensors file per run, written atomically, read without pickle.

Everything travels in that single file, so one atomic rename commits it all and a kill at any
moment leaves the previous checkpoint or the new one: the model's weights, the best-so-far
weights (omitted while they are the current ones), the optimizer's tensors, and, as JSON in the
safetensors header, the loop's position (epochs done, global step, history, best epoch,
epochs without improvement), the optimizer's hyper-parameters and whatever the caller adds
(the run's options, strategy state, data fingerprint).

No RNG state is stored: the loop reseeds every epoch from ``(seed, epoch)`` and every image
from ``(seed, epoch, index)`` (``visiontune._seeding``), so a checkpoint taken between epochs
needs none and an interrupted epoch is simply run again, drawing the same numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .._io import atomic_write
from ..errors import BundleError
from .validation import check_format_version, check_object

__all__ = [
    "CHECKPOINT_FILE",
    "Checkpoint",
    "TrainingState",
    "load_checkpoint",
    "read_checkpoint_meta",
    "save_checkpoint",
]

CHECKPOINT_FILE = "checkpoint.safetensors"
FORMAT_VERSION = 1
_META_KEY = "visiontune_checkpoint"


@dataclass
class TrainingState:
    """Where ``fit`` stands between two epochs."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken (the LR schedule's position)
    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None  # index into ``history`` of the lowest validation loss so far
    best_weights: dict[str, torch.Tensor] | None = None
    stale: int = 0  # epochs since the best one
    done: bool = False  # training ended (last epoch, patience or StopTraining)


@dataclass
class Checkpoint:
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict  # in ``optimizer.state_dict()`` form
    state: TrainingState
    extra: dict  # the caller's JSON (run options, strategy state, ...)


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu").contiguous()  # safetensors stores row-major tensors


def _flatten_optimizer(optimizer_state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors keyed ``optimizer/<param id>/<name>``; everything else as JSON."""
    tensors, scalars = {}, {}
    for pid, entries in optimizer_state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{pid}/{name}"] = _cpu(value)
            else:
                scalars.setdefault(str(pid), {})[name] = value
    groups = [
        {k: list(v) if isinstance(v, tuple) else v for k, v in g.items()}
        for g in optimizer_state["param_groups"]
    ]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, pid, name = key.split("/", 2)
        state.setdefault(int(pid), {})[name] = value
    for pid, entries in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(entries)
    # JSON turned tuples (AdamW's betas) into lists; give them back their type.
    groups = [
        {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
        for g in meta["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainingState,
    extra: dict | None = None,
) -> None:
    """Write the checkpoint to ``path`` atomically (temporary file, fsync, rename)."""
    tensors = {f"model/{k}": _cpu(v) for k, v in model.state_dict().items()}
    best_is_current = state.best_epoch is not None and state.best_epoch == len(state.history) - 1
    if state.best_weights is not None and not best_is_current:
        tensors.update({f"best/{k}": _cpu(v) for k, v in state.best_weights.items()})
    optimizer_tensors, optimizer_meta = _flatten_optimizer(optimizer.state_dict())
    tensors.update(optimizer_tensors)
    meta = {
        "format_version": FORMAT_VERSION,
        "epoch": state.epoch,
        "step": state.step,
        "history": state.history,
        "best_epoch": state.best_epoch,
        "best_is_current": best_is_current,
        "stale": state.stale,
        "done": state.done,
        "optimizer": optimizer_meta,
        "extra": extra or {},
    }
    header = {_META_KEY: json.dumps(meta)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def read_checkpoint_meta(path: str | Path) -> dict:
    """The checkpoint's JSON part (cheap: only the header is read)."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            text = (fh.metadata() or {}).get(_META_KEY)
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(
            f"{path} is not a visiontune checkpoint (not a safetensors file: "
            f"{str(exc).splitlines()[0]}); nothing in it was run"
        ) from exc
    if text is None:
        raise BundleError(f"{path} is a safetensors file but not a visiontune checkpoint")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: its checkpoint header is not valid JSON ({exc})") from exc
    version = check_format_version(
        check_object(meta, str(path), "the header").get("format_version"), str(path)
    )
    if version > FORMAT_VERSION:
        raise BundleError(
            f"{path} was written by a newer visiontune (checkpoint format "
            f"{version}); upgrade to resume it"
        )
    return meta


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint``; tensors stay on the CPU."""
    meta = read_checkpoint_meta(path)
    groups: dict[str, dict[str, torch.Tensor]] = {"model": {}, "best": {}, "optimizer": {}}
    try:
        with safe_open(str(path), framework="pt") as fh:
            for key in fh.keys():
                kind, name = key.split("/", 1)
                groups[kind][name if kind != "optimizer" else key] = fh.get_tensor(key)
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise BundleError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0]}") from exc
    best = meta["best_epoch"]
    best_weights = None
    if best is not None:
        source = groups["model"] if meta["best_is_current"] else groups["best"]
        best_weights = {k: v.clone() for k, v in source.items()}
    state = TrainingState(
        epoch=meta["epoch"],
        step=meta["step"],
        history=meta["history"],
        best_epoch=best,
        best_weights=best_weights,
        stale=meta["stale"],
        done=meta["done"],
    )
    optimizer_state = _unflatten_optimizer(groups["optimizer"], meta["optimizer"])
    return Checkpoint(groups["model"], optimizer_state, state, meta["extra"])
