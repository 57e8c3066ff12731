"""The one learning-rate schedule (RL learner and SFT warm start): linear warm-up, then cosine or constant.

    factor(u) = (u + 1) / warmup                                     u < warmup
              = floor + (1 - floor) * (1 + cos(pi * p)) / 2          cosine, p = (u - warmup) / (total - warmup)
              = 1                                                    constant

`u` counts optimiser updates from 0; `p` is clamped to [0, 1], so updates past `total` stay at `floor`.
"""
from __future__ import annotations

import math


def lr_factor(update: int, *, warmup: int, total: int, schedule: str = "cosine", floor: float = 0.0) -> float:
    """The multiplier of the base learning rate at optimiser update `update` (0-based)."""
    if warmup and update < warmup:
        return (update + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"lr schedule {schedule!r}: expected 'cosine' or 'constant'")
    progress = min(1.0, (update - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_lambda(*, warmup: int, total: int, schedule: str = "cosine", floor: float = 0.0):
    """`lr_factor` as the one-argument function `torch.optim.lr_scheduler.LambdaLR` takes."""
    return lambda update: lr_factor(update, warmup=warmup, total=total, schedule=schedule, floor=floor)
