"""Training on several processes with PyTorch's DistributedDataParallel, started by ``torchrun``.

``torchrun --nproc_per_node N -m visiontune train ...`` starts N copies of the command with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and the rendezvous address) in the environment;
``session`` reads them and joins the process group: NCCL with one GPU per process, gloo on the
CPU. Without those variables it yields ``None`` and training runs in one process as usual.

Decisions, kept simple on purpose:

- ``--batch-size`` is the global batch. Each rank takes ``batch / N`` images of every step
  (``EpochSampler`` shards each epoch's permutation) and DDP averages the gradients, so a step
  equals one process's step on the whole batch, except for BatchNorm, whose batch statistics
  are computed per rank on its share (SyncBatchNorm needs GPUs; the default of torchvision's
  reference scripts too). Running statistics are rank 0's: DDP broadcasts them every step and
  ``sync_buffers`` once more after each epoch.
- Validation and test run on every rank over the whole set. The ranks hold identical weights,
  so they reach identical metrics and early-stopping decisions with no more communication.
- Only rank 0 writes: the run folder, checkpoints, the feature cache, progress bars.
- Work on a frozen backbone's features (``--strategy head``, the warm-start probe) runs on rank
  0 alone; its result reaches the other ranks by broadcast.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import VisiontuneError

__all__ = ["Distributed", "launched", "on_main_rank", "session"]

# How long a rank waits for the others at a collective. Rank 0 may spend a while alone first
# (features for a warm start), and torchrun stops every rank when one fails, so this is generous.
TIMEOUT = timedelta(hours=2)


class Distributed:
    """This process's place in the group, and the few collectives training needs."""

    def __init__(self, *, rank: int, world_size: int, local_rank: int, device: torch.device):
        self.rank, self.world_size, self.local_rank, self.device = (
            rank,
            world_size,
            local_rank,
            device,
        )
        self._wrapped: DistributedDataParallel | None = None
        self._trainable: tuple[bool, ...] = ()

    def __repr__(self) -> str:
        return f"Distributed(rank={self.rank}, world_size={self.world_size}, device={self.device})"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> DistributedDataParallel:
        """``model`` in DDP, rebuilt whenever the set of trainable parameters changed.

        DDP registers its gradient hooks for the parameters that require grad when it is built,
        so a stage unfrozen later (``gradual``) would silently not be averaged: rebuild then.
        Building broadcasts rank 0's parameters and buffers, which also shares a head that
        rank 0 alone fitted.
        """
        trainable = tuple(p.requires_grad for p in model.parameters())
        if self._wrapped is None or trainable != self._trainable:
            self._wrapped = None
            gc.collect()  # the old wrapper's reducer removes its hooks when it is freed
            ids = [self.device.index] if self.device.type == "cuda" else None
            self._wrapped = DistributedDataParallel(model, device_ids=ids)
            self._trainable = trainable
        return self._wrapped

    def sync_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) to every rank."""
        for buffer in model.buffers():
            dist.broadcast(buffer.data, src=0)

    def all_sum(self, values: list[float]) -> list[float]:
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any."""
        tensor = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return bool(tensor.item())

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank (pickled between our own processes, never from disk)."""
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        boxes = [None] * self.world_size
        dist.all_gather_object(boxes, obj)
        return boxes

    def check_in_sync(self, model: nn.Module) -> None:
        """Raise if the ranks' weights differ: they must be bit-identical after training."""
        with torch.no_grad():
            digest = [float(t.double().sum()) for t in model.state_dict().values()]
        digests = self.gather(digest)
        if any(d != digests[0] for d in digests):
            raise RuntimeError("DistributedDataParallel ranks ended with different weights")


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError as exc:
        raise VisiontuneError(f"environment variable {name} must be an integer") from exc


def _device(device_name: str, local_rank: int) -> torch.device:
    if device_name == "cpu" or (device_name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise VisiontuneError("--device cuda was asked for, but PyTorch sees no CUDA GPU")
    if local_rank >= torch.cuda.device_count():
        raise VisiontuneError(
            f"local rank {local_rank} has no GPU: this node has "
            f"{torch.cuda.device_count()}; start at most that many processes per node"
        )
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)  # one GPU per process: --device cuda:K does not apply


def launched() -> bool:
    """Whether ``torchrun`` started this process as one of several."""
    return _env_int("WORLD_SIZE", 1) > 1


@contextmanager
def session(device_name: str = "auto") -> Iterator[Distributed | None]:
    """Join the torchrun process group for the body; ``None`` when not started by torchrun."""
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        yield None
        return
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    device = _device(device_name, local_rank)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    if device.type == "cpu":  # share this node's cores between its processes
        cores = (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1
        )
        torch.set_num_threads(max(1, cores // max(1, _env_int("LOCAL_WORLD_SIZE", 1))))
    try:
        yield Distributed(rank=rank, world_size=world_size, local_rank=local_rank, device=device)
    finally:
        if created:
            dist.destroy_process_group()


def on_main_rank(
    ctx: Distributed | None, work: Callable[[], object], module: nn.Module | None = None
):
    """Run ``work`` on rank 0 only and give every rank its result (and ``module``'s weights).

    A ``VisiontuneError`` of rank 0's (a diverged head, say) is raised on every rank, so none
    waits for a result that never comes."""
    if ctx is None:
        return work()
    result, failure = None, None
    if ctx.is_main:
        try:
            result = work()
        except VisiontuneError as exc:
            failure = exc
    state = (
        {k: v.cpu() for k, v in module.state_dict().items()}
        if ctx.is_main and module is not None and failure is None
        else None
    )
    result, state, failure = ctx.broadcast((result, state, failure))
    if failure is not None:
        raise failure
    if module is not None and not ctx.is_main:
        module.load_state_dict(state)
    return result
