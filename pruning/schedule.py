"""The run's step plan and learning-rate policy: pure functions of the step, tested without training.

search: dense training, at most `search_steps`; the Early-Bird detector watches from the end of the
LR warm-up. retrain: `retrain_steps` after the pruning step. The learning rate warms up and decays
linearly over the whole budget, as the dense run's does; after pruning, the rest decays linearly
from its current value to zero at the end of the retrain phase.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


def linear_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


@dataclass
class PhasePlan:
    total_steps: int
    steps_per_epoch: float
    search_steps: int
    retrain_steps: int
    warmup_steps: int
    first_check_after: int

    @classmethod
    def of(cls, total_steps: int, epochs: float, search_epochs: float, retrain_epochs: float,
           warmup_steps: int, skip_warmup: bool) -> "PhasePlan":
        per_epoch = total_steps / epochs
        search = max(1, math.ceil(search_epochs * per_epoch - 1e-6))
        return cls(total_steps, per_epoch, search, total_steps - search if retrain_epochs else 0, warmup_steps,
                   warmup_steps if skip_warmup else 0)

    def check_due(self, step: int, check_every: int) -> bool:
        """An Early-Bird check at this finished step? (Always at the end of the search budget.)"""
        return step >= self.search_steps or (step % check_every == 0 and step > self.first_check_after)

    def lr_factor(self, step: int, prune_step: int | None, stop_step: int | None) -> float:
        if prune_step is None or step <= prune_step:
            return linear_factor(step, self.warmup_steps, self.total_steps)
        return (linear_factor(prune_step, self.warmup_steps, self.total_steps)
                * max(0.0, (stop_step - step) / max(1, stop_step - prune_step)))
