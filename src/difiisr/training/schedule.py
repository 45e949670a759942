"""Learning-rate schedule: linear warm-up, then constant or cosine decay (as the ResShift trainer)."""

from __future__ import annotations

import math
from typing import Literal

import torch


class WarmupSchedule:
    """Multiplier of the base LR for optimizer update ``k`` (0-based), as used by ``torch.optim.lr_scheduler.LambdaLR``.

    Update ``k`` runs with ``lr * min(1, (k+1)/warmup_steps)`` during warm-up (the reference ramps from lr/warmup to
    lr). After warm-up: ``constant`` keeps ``lr``; ``cosine`` follows ``min_lr + (lr - min_lr)(1 + cos(pi p))/2`` with
    ``p = (k+1 - warmup_steps)/(max_steps - warmup_steps)``, reaching ``min_lr`` at the last update.
    A plain object (not a closure) so that ``LambdaLR.state_dict()`` can save it.
    """

    def __init__(
        self,
        warmup_steps: int,
        max_steps: int,
        schedule: Literal["constant", "cosine"] = "constant",
        min_lr_ratio: float = 0.0,
    ) -> None:
        if schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule={schedule!r}: use 'constant' or 'cosine'")
        self.warmup_steps = int(warmup_steps)
        self.max_steps = int(max_steps)
        self.schedule = schedule
        self.min_lr_ratio = float(min_lr_ratio)

    def __call__(self, k: int) -> float:
        """LR multiplier in (0, 1] for update index ``k >= 0``."""
        n = k + 1
        if self.warmup_steps > 0 and n <= self.warmup_steps:
            return n / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        span = max(1, self.max_steps - self.warmup_steps)
        progress = min(1.0, max(0.0, (n - self.warmup_steps) / span))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    max_steps: int,
    schedule: Literal["constant", "cosine"],
    min_lr_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` over ``WarmupSchedule``; call ``.step()`` once after every optimizer update."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupSchedule(warmup_steps, max_steps, schedule, min_lr_ratio)
    )
