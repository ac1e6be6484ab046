"""How fast this machine trains a model: measured, not guessed, before a time budget is planned.

A budget (``--time-budget``) has to know what an epoch costs here, and that depends on the CPU,
its load, the thread count and the backbone; so the planner times real training steps (a
forward and a backward pass on a batch of the model's input size) on a throwaway copy.
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

from .loop import Runtime

__all__ = ["train_step_seconds"]


def train_step_seconds(
    model: nn.Module,
    *,
    size: int | None = None,
    shape: tuple[int, ...] | None = None,
    batch_size: int,
    runtime: Runtime,
    steps: int = 2,
) -> float:
    """Seconds per image of one training step of ``model`` (every parameter trainable: the
    costliest strategy) on images of ``size`` px, or on inputs of ``shape`` (one example's:
    the cached activations a ``partial`` epoch trains on), after a warm-up step; ``model`` is
    not touched."""
    probe = copy.deepcopy(model).to(runtime.device).train()
    for p in probe.parameters():
        p.requires_grad_(True)
    shape = shape or (3, size, size)
    images = torch.randn(batch_size, *shape, device=runtime.device)
    if runtime.channels_last and images.ndim == 4:  # as the training loop does
        probe = probe.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    seconds = 0.0
    for step in range(steps + 1):
        started = time.perf_counter()
        probe(images).float().logsumexp(1).mean().backward()
        probe.zero_grad(set_to_none=True)
        if step:  # the first step pays for allocation and kernel selection
            seconds += time.perf_counter() - started
    return seconds / (steps * batch_size)
