"""``train_one_epoch``, ``evaluate_epoch`` and ``fit``: a loop you can read in one sitting.

The same loop trains a whole ``Classifier`` on image batches and a lone head on cached feature
batches: it only needs a module, batches of ``(inputs, labels)`` and a strategy that sets modes.
Two frozen settings objects drive it: ``LoopConfig`` says *what* is computed (epochs, schedule,
loss), ``Runtime`` says *where* (device, memory format, progress bars, the torchrun group), so
the same ``LoopConfig`` gives the same numbers on any ``Runtime`` up to floating point.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

# tqdm's plain bar, not tqdm.auto: tqdm.auto's asyncio variant calls iter() on its iterable when
# constructed, and on a DataLoader with persistent workers that starts (and discards) a whole
# pass, moving the seeded EpochSampler one epoch on before the real pass begins.
from tqdm import tqdm

from .. import _faults
from .._seeding import derive_seed, seed_all
from ..errors import TrainingDiverged
from ..formats.checkpoint import TrainingState
from .distributed import Distributed
from .objective import correct_count, task_loss
from .optim import apply_lr, lr_multiplier
from .precision import Precision, autocast

__all__ = [
    "EvalOutput",
    "LoopConfig",
    "Runtime",
    "StopTraining",
    "TimeBox",
    "check_finite",
    "evaluate_epoch",
    "fit",
    "non_finite",
    "run_inference",
    "train_one_epoch",
]


class StopTraining(Exception):
    """Raised by a callback to end ``fit`` after the current epoch."""


@dataclass(frozen=True)
class LoopConfig:
    """What the loop computes: how long, the LR schedule, the loss, the per-epoch seeding."""

    epochs: int
    warmup_epochs: float = 0.5
    label_smoothing: float = 0.1
    patience: int | None = None  # epochs without val improvement before stopping; None: never
    desc: str = "train"
    # (images, labels) -> (images, soft labels), applied to each training batch before the
    # forward pass: mixup / cutmix (``visiontune.data.augment.build_batch_transform``).
    batch_transform: Callable | None = None
    # --balance weights: per-class weights of the training loss (``data.balance.class_weights``).
    class_weights: torch.Tensor | None = None
    # Set: each epoch reseeds every generator from (seed, epoch) and tells the train loader's
    # sampler its epoch, so an epoch re-run after a resume draws exactly the same numbers.
    seed: int | None = None
    # ``time.monotonic()`` by which training and its last validation must be done (--time-budget,
    # less what the caller needs afterwards): the LR schedule is compressed to end there, and the
    # epoch running at that moment is cut short, validated and the last one.
    deadline: float | None = None
    # (history so far, epochs planned) -> why to stop now, or None: a rule on the validation
    # curve (``auto`` gives up a fine-tune that cannot catch the head); checked after each epoch.
    give_up: Callable[[list[dict], int], str | None] | None = None


class TimeBox:
    """A deadline for ``fit``: how far through the time the loop is, and whether it is over.

    The validation pass after an epoch must fit too, so the training stops one (measured)
    validation pass early; before the first is measured it counts as free."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.start = time.monotonic()
        self.val_seconds = 0.0

    def stop_at(self) -> float:
        return self.deadline - self.val_seconds

    def over(self) -> bool:
        return time.monotonic() >= self.stop_at()

    def schedule_step(self, step: int, total_steps: int) -> int:
        """The step the LR schedule is at: by steps taken, or by time used, whichever is later,
        so the cosine decay ends at the deadline even when the epochs cannot all run."""
        span = max(self.stop_at() - self.start, 1e-9)
        by_time = int(total_steps * (time.monotonic() - self.start) / span)
        return max(step, min(total_steps, by_time))


@dataclass(frozen=True)
class Runtime:
    """Where the loop runs: device, memory format, progress bars, and the torchrun group."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    channels_last: bool = True
    progress: bool = False
    # Under torchrun: training steps run through DistributedDataParallel.
    distributed: Distributed | None = None
    # The autocast dtypes of inference and training (``engine.precision``); fp32 by default.
    precision: Precision = field(default_factory=Precision)

    @classmethod
    def on(
        cls,
        device: torch.device,
        *,
        progress: bool,
        distributed=None,
        precision: Precision | None = None,
    ) -> Runtime:
        """The default for ``device``: ``channels_last`` on the CPU, where oneDNN prefers it."""
        return cls(device, device.type == "cpu", progress, distributed, precision or Precision())


@dataclass
class EvalOutput:
    logits: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    loss: float

    @property
    def accuracy(self) -> float:
        """Top-1 accuracy; for multi-label targets, subset accuracy at probability 0.5."""
        if len(self.labels) == 0:
            return float("nan")
        return correct_count(self.logits, self.labels) / len(self.labels)


def _bar_disabled(runtime: Runtime, num_batches: int) -> bool | None:
    """Batch bars only for passes long enough to watch; None lets tqdm hide them off a terminal."""
    return True if not runtime.progress or num_batches < 8 else None


def _to_device(x: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    x = x.to(runtime.device, non_blocking=True)
    if runtime.channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@dataclass
class _Totals:
    loss: float = 0.0
    correct: int = 0
    seen: int = 0

    def add(self, loss: float, logits: torch.Tensor, targets: torch.Tensor) -> None:
        self.loss += loss * len(targets)
        self.correct += correct_count(logits, targets)
        self.seen += len(targets)


def train_one_epoch(
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    *,
    cfg: LoopConfig,
    runtime: Runtime,
    step: int,
    total_steps: int,
    warmup_steps: int,
    set_train_mode: Callable[[nn.Module], None],
    on_batch: Callable | None = None,
    epoch: int = 0,
    wrapped: nn.Module | None = None,
    timebox: TimeBox | None = None,
) -> tuple[dict, int]:
    """One pass over ``loader``; returns mean loss/accuracy and the next global step.

    ``wrapped`` (``DistributedDataParallel(model)``) runs the forward and backward passes when
    given; ``model`` is the one whose modes ``set_train_mode`` sets. ``timebox``: the pass ends
    early (after at least one step) when its time is over, and the LR follows the time used.
    """
    set_train_mode(model)
    forward = wrapped if wrapped is not None else model
    dist = runtime.distributed
    weight = None if cfg.class_weights is None else cfg.class_weights.to(runtime.device)
    totals = _Totals()
    bar = tqdm(
        loader,
        desc=f"{cfg.desc} {epoch + 1}/{cfg.epochs}",
        leave=False,
        unit="batch",
        disable=_bar_disabled(runtime, len(loader)),
        dynamic_ncols=True,
    )
    for index, batch in enumerate(bar):
        _faults.at_batch(epoch, index)
        if on_batch:
            on_batch(batch)
        empty = len(batch.labels) == 0
        if dist.any(empty) if dist is not None else empty:  # ranks step together, or DDP hangs
            continue
        if _time_is_up(timebox, dist, stepped=totals.seen > 0):
            break
        at = timebox.schedule_step(step, total_steps) if timebox else step
        apply_lr(optimizer, lr_multiplier(at, total_steps=total_steps, warmup_steps=warmup_steps))
        inputs, targets = batch.images, batch.labels
        if cfg.batch_transform is not None:
            inputs, targets = cfg.batch_transform(inputs, targets)
        inputs, targets = _to_device(inputs, runtime), targets.to(runtime.device)
        with autocast(runtime.device, runtime.precision.training):
            logits = forward(inputs)
            # Cross-entropy takes soft (mixed) class probabilities too.
            loss = task_loss(
                logits.float(), targets, weight=weight, label_smoothing=cfg.label_smoothing
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        totals.add(loss.item(), logits.detach(), targets)
        bar.set_postfix(
            loss=f"{totals.loss / totals.seen:.3f}", acc=f"{totals.correct / totals.seen:.3f}"
        )
    loss, correct, seen = totals.loss, totals.correct, totals.seen
    if dist is not None:  # every rank saw its share: report the whole epoch
        loss, correct, seen = dist.all_sum([loss, correct, seen])
    return {"train_loss": loss / max(seen, 1), "train_acc": correct / max(seen, 1)}, step


def _time_is_up(timebox: TimeBox | None, dist, *, stepped: bool) -> bool:
    """Every rank stops together (or DDP hangs): when any rank's time is over."""
    if timebox is None or not stepped:
        return False
    over = timebox.over()
    return dist.any(over) if dist is not None else over


def run_inference(
    model: nn.Module,
    loader,
    *,
    runtime: Runtime,
    on_batch: Callable | None = None,
    desc: str = "eval",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(outputs, labels, indices)`` for every decodable sample in ``loader``, in loader order."""
    model.eval()
    outputs, labels, indices = [], [], []
    disable = _bar_disabled(runtime, len(loader))
    for batch in tqdm(
        loader, desc=desc, leave=False, disable=disable, unit="batch", dynamic_ncols=True
    ):
        if on_batch:
            on_batch(batch)
        if len(batch.labels) == 0:
            continue
        with torch.inference_mode(), autocast(runtime.device, runtime.precision.inference):
            out = model(_to_device(batch.images, runtime))
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
    runtime: Runtime,
    on_batch: Callable | None = None,
    desc: str = "eval",
) -> EvalOutput:
    """Logits, labels and the mean loss (``task_loss``, unsmoothed) over ``loader``."""
    logits, labels, indices = run_inference(
        model, loader, runtime=runtime, on_batch=on_batch, desc=desc
    )
    loss = float(task_loss(logits, labels)) if len(labels) else float("nan")
    return EvalOutput(logits, labels, indices, loss)


def _validate(model, loader, *, runtime, on_batch, timebox: TimeBox | None) -> EvalOutput:
    """The validation pass after an epoch; ``timebox`` learns what one costs."""
    started = time.monotonic()
    val = evaluate_epoch(model, loader, runtime=runtime, on_batch=on_batch, desc="validate")
    if timebox:
        timebox.val_seconds = time.monotonic() - started
    return val


def _better(current: dict, best: dict | None, *, validated: bool) -> bool:
    # Validation loss, not accuracy: on a few hundred validation images accuracy moves in steps
    # of one image and ties often, and picking its maximum mostly picks noise.
    if best is None or not validated:  # no validation data (an empty loader): the latest is best
        return True
    return current["val_loss"] < best["val_loss"]


def non_finite(row: dict, model: nn.Module, *, validated: bool) -> str | None:
    """What became inf or NaN in this epoch (its losses, then ``model``'s weights), or None."""
    losses = [("train_loss", "training loss")]
    if validated:  # without validation data its loss is NaN by definition
        losses.append(("val_loss", "validation loss"))
    for key, what in losses:
        if not math.isfinite(row[key]):
            return f"the {what} is {row[key]}"
    bad = [
        name
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        return f"{len(bad)} weight tensor(s) hold inf or NaN (the first: {bad[0]})"
    return None


def check_finite(row: dict, model: nn.Module, *, validated: bool) -> None:
    """Raise ``TrainingDiverged`` when the epoch of ``row`` left a non-finite loss or weight.

    Every rank of a torchrun group sees the same summed losses and the same weights, so all of
    them stop together."""
    problem = non_finite(row, model, validated=validated)
    if problem is not None:
        raise TrainingDiverged(
            f"training diverged in epoch {row['epoch']}: {problem}; the model was not saved - "
            f"try a lower --lr (it was {row['lr']:.3g} at the epoch's end)"
        )


def _start_epoch(loader, cfg: LoopConfig, epoch: int) -> None:
    """Reseed from ``(seed, epoch)``: dropout, mixup and the loader's order and augmentation."""
    if cfg.seed is None:
        return
    seed_all(derive_seed(cfg.seed, epoch))
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


def _record_epoch(
    state: TrainingState, row: dict, model: nn.Module, cfg: LoopConfig, *, validated: bool
) -> None:
    """Append ``row`` to the history; keep the weights when it is the best epoch so far."""
    best = state.history[state.best_epoch] if state.best_epoch is not None else None
    state.history.append(row)
    if _better(row, best, validated=validated):
        state.best_epoch, state.stale = len(state.history) - 1, 0
        state.best_weights = copy.deepcopy(model.state_dict())
    else:
        state.stale += 1
    state.epoch += 1
    state.done = state.epoch == cfg.epochs or (
        cfg.patience is not None and state.stale >= cfg.patience
    )


def _schedule(steps_per_epoch: int, cfg: LoopConfig) -> dict:
    """The LR schedule's length and warm-up, in optimizer steps."""
    steps_per_epoch = max(1, steps_per_epoch)
    return {
        "total_steps": steps_per_epoch * cfg.epochs,
        "warmup_steps": int(round(cfg.warmup_epochs * steps_per_epoch)),
    }


def _epochs_bar(state: TrainingState, cfg: LoopConfig, runtime: Runtime):
    """The epochs still to run (none once ``state.done``), as a progress bar."""
    return tqdm(
        range(state.epoch, state.epoch if state.done else cfg.epochs),
        unit="epoch",
        desc=cfg.desc,
        dynamic_ncols=True,
        disable=None if runtime.progress else True,
        initial=state.epoch,
        total=cfg.epochs,
    )


def _stop_now(state: TrainingState, cfg: LoopConfig, timebox, dist) -> bool:
    """Whether the time budget is spent, or ``cfg.give_up`` says the curve cannot pay."""
    if timebox and _time_is_up(timebox, dist, stepped=True):
        return True
    return bool(cfg.give_up and cfg.give_up(state.history, cfg.epochs))


def fit(
    model: nn.Module,
    train_loader,
    val_loader,
    optimizer: torch.optim.Optimizer,
    *,
    cfg: LoopConfig,
    runtime: Runtime,
    set_train_mode: Callable[[nn.Module], None],
    on_batch: Callable | None = None,
    on_epoch_end: Callable[[dict], None] | None = None,
    on_epoch_start: Callable[[int, nn.Module, torch.optim.Optimizer], None] | None = None,
    state: TrainingState | None = None,
    on_checkpoint: Callable[[TrainingState], None] | None = None,
    forward: nn.Module | None = None,
) -> list[dict]:
    """Train for ``cfg.epochs`` with early stopping; leaves the best epoch's weights in ``model``.

    "Best" is the lowest validation loss. Returns the per-epoch history. ``on_epoch_end`` may
    raise ``StopTraining``. ``on_epoch_start(epoch, model, optimizer)`` runs before each epoch's
    training (a strategy's, e.g. to unfreeze). ``state`` continues a run from a checkpoint (model
    and optimizer already restored); ``on_checkpoint(state)`` is called after every epoch.
    ``forward``: the module that maps the loaders' inputs to logits, sharing ``model``'s
    parameters (cached activations into the top stages); default ``model`` itself. ``model``
    is still the one whose modes are set and whose weights are kept and checkpointed.
    """
    net = forward if forward is not None else model
    schedule = _schedule(len(train_loader), cfg)
    state = copy.copy(state) if state is not None else TrainingState()
    state.history = list(state.history)
    dist = runtime.distributed
    epochs_bar = _epochs_bar(state, cfg, runtime)
    timebox = TimeBox(cfg.deadline) if cfg.deadline is not None else None
    for epoch in epochs_bar:
        start = time.perf_counter()
        _start_epoch(train_loader, cfg, epoch)
        if on_epoch_start:
            on_epoch_start(epoch, model, optimizer)
        train_stats, state.step = train_one_epoch(
            model,
            train_loader,
            optimizer,
            cfg=cfg,
            runtime=runtime,
            step=state.step,
            epoch=epoch,
            set_train_mode=set_train_mode,
            on_batch=on_batch,
            **schedule,
            wrapped=dist.wrap(net) if dist else forward,
            timebox=timebox,
        )
        if dist:
            dist.sync_buffers(model)
        val = _validate(net, val_loader, runtime=runtime, on_batch=on_batch, timebox=timebox)
        lr = max(g["lr"] for g in optimizer.param_groups)
        row = {"epoch": epoch + 1, **train_stats, "val_loss": val.loss, "val_acc": val.accuracy}
        row.update(lr=lr, seconds=time.perf_counter() - start)
        validated = len(val.labels) > 0
        check_finite(row, model, validated=validated)  # a diverged epoch is never kept
        _record_epoch(state, row, model, cfg, validated=validated)
        best = state.history[state.best_epoch]["val_acc"]
        epochs_bar.set_postfix(
            loss=f"{row['train_loss']:.3f}", val_acc=f"{val.accuracy:.3f}", best=f"{best:.3f}"
        )
        try:
            if on_epoch_end:
                on_epoch_end(row)
        except StopTraining:
            state.done = True
        if _stop_now(state, cfg, timebox, dist):
            state.done = True
        if on_checkpoint:
            on_checkpoint(copy.copy(state))
        if state.done:
            break
    epochs_bar.close()
    if state.best_weights is not None:
        model.load_state_dict(state.best_weights)
    return [{**row, "best": i == state.best_epoch} for i, row in enumerate(state.history)]
