"""AdamW over a strategy's parameter groups, and the LR schedule as a pure function."""

from __future__ import annotations

import math

import torch

__all__ = ["apply_lr", "build_optimizer", "lr_multiplier"]


def build_optimizer(param_groups: list[dict], *, weight_decay: float) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups, weight_decay=weight_decay)


def lr_multiplier(step: int, *, total_steps: int, warmup_steps: int, final: float = 0.01) -> float:
    """Linear warm-up to 1, then cosine decay to ``final`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def apply_lr(optimizer: torch.optim.Optimizer, multiplier: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * multiplier
