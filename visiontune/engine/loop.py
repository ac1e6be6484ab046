"""``train_one_epoch``, ``evaluate_epoch`` and ``fit``: a loop you can read in one sitting.

The same loop trains a whole ``Classifier`` on image batches and a lone head on cached feature
batches: it only needs a module, batches of ``(inputs, labels)`` and a strategy that sets modes.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import _faults
from .._seeding import derive_seed, seed_all
from .checkpoint import TrainingState
from .distributed import Distributed
from .optim import apply_lr, lr_multiplier

__all__ = [
    "EvalOutput",
    "LoopConfig",
    "StopTraining",
    "evaluate_epoch",
    "fit",
    "run_inference",
    "train_one_epoch",
]


class StopTraining(Exception):
    """Raised by a callback to end ``fit`` after the current epoch."""


@dataclass
class LoopConfig:
    epochs: int
    warmup_epochs: float = 0.5
    label_smoothing: float = 0.1
    patience: int | None = None  # epochs without val improvement before stopping; None: never
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    channels_last: bool = True
    progress: bool = True
    desc: str = "train"
    # (images, labels) -> (images, soft labels), applied to each training batch before the
    # forward pass: mixup / cutmix (``visiontune.data.augment.build_batch_transform``).
    batch_transform: Callable | None = None
    # --balance weights: per-class weights of the training loss (``data.balance.class_weights``).
    class_weights: torch.Tensor | None = None
    # Set: each epoch reseeds every generator from (seed, epoch) and tells the train loader's
    # sampler its epoch, so an epoch re-run after a resume draws exactly the same numbers.
    seed: int | None = None
    # Under torchrun: training steps run through DistributedDataParallel.
    distributed: Distributed | None = None


@dataclass
class EvalOutput:
    logits: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    loss: float

    @property
    def accuracy(self) -> float:
        if len(self.labels) == 0:
            return float("nan")
        return float((self.logits.argmax(1) == self.labels).float().mean())


def _bar_disabled(cfg: LoopConfig, num_batches: int) -> bool | None:
    """Batch bars only for passes long enough to watch; None lets tqdm hide them off a terminal."""
    return True if not cfg.progress or num_batches < 8 else None


def _autocast(device: torch.device):
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return nullcontext()


def _to_device(x: torch.Tensor, cfg: LoopConfig) -> torch.Tensor:
    x = x.to(cfg.device, non_blocking=True)
    if cfg.channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def train_one_epoch(
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    *,
    cfg: LoopConfig,
    step: int,
    total_steps: int,
    warmup_steps: int,
    set_train_mode: Callable[[nn.Module], None],
    on_batch: Callable | None = None,
    epoch: int = 0,
    wrapped: nn.Module | None = None,
) -> tuple[dict, int]:
    """One pass over ``loader``; returns mean loss/accuracy and the next global step.

    ``wrapped`` (``DistributedDataParallel(model)``) runs the forward and backward passes when
    given; ``model`` is the one whose modes ``set_train_mode`` sets.
    """
    set_train_mode(model)
    forward = wrapped if wrapped is not None else model
    weight = None if cfg.class_weights is None else cfg.class_weights.to(cfg.device)
    loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(
        loader,
        desc=f"{cfg.desc} {epoch + 1}/{cfg.epochs}",
        leave=False,
        disable=_bar_disabled(cfg, len(loader)),
        unit="batch",
        dynamic_ncols=True,
    )
    for index, batch in enumerate(bar):
        _faults.at_batch(epoch, index)  # test hook: no-op unless $VISIONTUNE_FAULT says
        if on_batch:
            on_batch(batch)
        empty = len(batch.labels) == 0
        if cfg.distributed is not None:  # ranks step together or not at all, else DDP hangs
            empty = cfg.distributed.any(empty)
        if empty:
            continue
        apply_lr(optimizer, lr_multiplier(step, total_steps=total_steps, warmup_steps=warmup_steps))
        inputs, targets = batch.images, batch.labels
        if cfg.batch_transform is not None:
            inputs, targets = cfg.batch_transform(inputs, targets)
        inputs, targets = _to_device(inputs, cfg), targets.to(cfg.device)
        # Soft (mixed) targets count as their largest share for accuracy.
        labels = targets.argmax(1) if targets.ndim == 2 else targets
        with _autocast(cfg.device):
            logits = forward(inputs)
            loss = loss_fn(
                logits.float(), targets
            )  # CrossEntropyLoss takes class probabilities too
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        total_loss += loss.item() * len(labels)
        correct += int((logits.argmax(1) == labels).sum())
        seen += len(labels)
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
    if cfg.distributed is not None:  # every rank saw its share: report the whole epoch
        total_loss, correct, seen = cfg.distributed.all_sum([total_loss, correct, seen])
    return {"train_loss": total_loss / max(seen, 1), "train_acc": correct / max(seen, 1)}, step


def run_inference(
    model: nn.Module,
    loader,
    *,
    cfg: LoopConfig,
    on_batch: Callable | None = None,
    desc: str = "eval",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(outputs, labels, indices)`` for every decodable sample in ``loader``, in loader order."""
    model.eval()
    outputs, labels, indices = [], [], []
    for batch in tqdm(
        loader,
        desc=desc,
        leave=False,
        disable=_bar_disabled(cfg, len(loader)),
        unit="batch",
        dynamic_ncols=True,
    ):
        if on_batch:
            on_batch(batch)
        if len(batch.labels) == 0:
            continue
        with torch.inference_mode(), _autocast(cfg.device):
            out = model(_to_device(batch.images, cfg))
        outputs.append(out.float().cpu())
        labels.append(batch.labels)
        indices.append(batch.indices)
    # Concatenated outside inference mode, so callers may train on the result (cached features).
    if not outputs:
        empty = torch.empty(0, dtype=torch.long)
        return torch.empty(0, 0), empty, empty
    return torch.cat(outputs), torch.cat(labels), torch.cat(indices)


def evaluate_epoch(
    model: nn.Module,
    loader,
    *,
    cfg: LoopConfig,
    on_batch: Callable | None = None,
    desc: str = "eval",
) -> EvalOutput:
    """Logits, labels and mean cross-entropy over ``loader``."""
    logits, labels, indices = run_inference(model, loader, cfg=cfg, on_batch=on_batch, desc=desc)
    loss = float(nn.functional.cross_entropy(logits, labels)) if len(labels) else float("nan")
    return EvalOutput(logits, labels, indices, loss)


def _better(current: dict, best: dict | None) -> bool:
    # Validation loss, not accuracy: on a few hundred validation images accuracy moves in steps
    # of one image and ties often, and picking its maximum mostly picks noise.
    if best is None or math.isnan(current["val_loss"]):  # no validation data: the latest is best
        return True
    return current["val_loss"] < best["val_loss"]


def _start_epoch(loader, cfg: LoopConfig, epoch: int) -> None:
    """Reseed from ``(seed, epoch)``: dropout, mixup and the loader's order and augmentation."""
    if cfg.seed is None:
        return
    seed_all(derive_seed(cfg.seed, epoch))
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


def fit(
    model: nn.Module,
    train_loader,
    val_loader,
    optimizer: torch.optim.Optimizer,
    *,
    cfg: LoopConfig,
    set_train_mode: Callable[[nn.Module], None],
    on_batch: Callable | None = None,
    on_epoch_end: Callable[[dict], None] | None = None,
    on_epoch_start: Callable[[int, nn.Module, torch.optim.Optimizer], None] | None = None,
    state: TrainingState | None = None,
    on_checkpoint: Callable[[TrainingState], None] | None = None,
) -> list[dict]:
    """Train for ``cfg.epochs`` with early stopping; leaves the best epoch's weights in ``model``.

    "Best" is the lowest validation loss. Returns the
    per-epoch history. ``on_epoch_end`` may raise ``StopTraining``. ``on_epoch_start(epoch,
    model, optimizer)`` runs before each epoch's training (a strategy's, e.g. to unfreeze).
    ``state`` continues a run from a checkpoint (model and optimizer already restored);
    ``on_checkpoint(state)`` is called after every epoch, to save one.
    """
    steps_per_epoch = max(1, len(train_loader))
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))
    state = state or TrainingState()
    history, step, stale = list(state.history), state.step, state.stale
    best, best_state = state.best_epoch, state.best_weights
    epochs_bar = tqdm(
        range(state.epoch, cfg.epochs if not state.done else state.epoch),
        desc=cfg.desc,
        unit="epoch",
        dynamic_ncols=True,
        disable=None if cfg.progress else True,
        initial=state.epoch,
        total=cfg.epochs,
    )
    for epoch in epochs_bar:
        start = time.perf_counter()
        _start_epoch(train_loader, cfg, epoch)
        if on_epoch_start:
            on_epoch_start(epoch, model, optimizer)
        wrapped = cfg.distributed.wrap(model) if cfg.distributed else None
        train_stats, step = train_one_epoch(
            model,
            train_loader,
            optimizer,
            cfg=cfg,
            step=step,
            total_steps=total_steps,
            warmup_steps=warmup_steps,
            set_train_mode=set_train_mode,
            on_batch=on_batch,
            epoch=epoch,
            wrapped=wrapped,
        )
        if cfg.distributed:
            cfg.distributed.sync_buffers(model)
        val = evaluate_epoch(model, val_loader, cfg=cfg, on_batch=on_batch, desc="validate")
        row = {
            "epoch": epoch + 1,
            **train_stats,
            "val_loss": val.loss,
            "val_acc": val.accuracy,
            "lr": max(g["lr"] for g in optimizer.param_groups),
            "seconds": time.perf_counter() - start,
        }
        history.append(row)
        if _better(row, history[best] if best is not None else None):
            best, stale = len(history) - 1, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        epochs_bar.set_postfix(
            loss=f"{row['train_loss']:.3f}",
            val_acc=f"{row['val_acc']:.3f}",
            best=f"{history[best]['val_acc']:.3f}",
        )
        try:
            if on_epoch_end:
                on_epoch_end(row)
            done = epoch + 1 == cfg.epochs or (cfg.patience is not None and stale >= cfg.patience)
        except StopTraining:
            done = True
        if on_checkpoint:
            on_checkpoint(
                TrainingState(
                    epoch=epoch + 1,
                    step=step,
                    history=history,
                    best_epoch=best,
                    best_weights=best_state,
                    stale=stale,
                    done=done,
                )
            )
        if done:
            break
    epochs_bar.close()
    history = [{**row, "best": i == best} for i, row in enumerate(history)]
    if best_state is not None:
        model.load_state_dict(best_state)
    return history
