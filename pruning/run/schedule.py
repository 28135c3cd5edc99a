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
    """HF's linear schedule as a multiplier of the peak learning rate at `step`: step / warmup during the
    warm-up, then a linear decay to 0 at `total` (steps; never below 0)."""
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


@dataclass
class PhasePlan:
    """The run's steps: total and per epoch, the search budget, the retrain phase, the LR warm-up, and the
    steps before the first Early-Bird check (the warm-up, when it is skipped). All in optimizer steps."""
    total_steps: int
    steps_per_epoch: float
    search_steps: int
    retrain_steps: int
    warmup_steps: int
    first_check_after: int

    @classmethod
    def of(cls, total_steps: int, epochs: float, search_epochs: float, retrain_epochs: float,
           warmup_steps: int, skip_warmup: bool) -> "PhasePlan":
        """The plan of `total_steps` optimizer steps over `epochs`: search = ceil(search_epochs * steps per
        epoch), at least 1; retrain = the rest (0 when retrain_epochs is 0)."""
        per_epoch = total_steps / epochs
        search = max(1, math.ceil(search_epochs * per_epoch - 1e-6))
        return cls(total_steps, per_epoch, search, total_steps - search if retrain_epochs else 0, warmup_steps,
                   warmup_steps if skip_warmup else 0)

    def check_due(self, step: int, check_every: int) -> bool:
        """An Early-Bird check at this finished step? (Always at the end of the search budget.)"""
        return step >= self.search_steps or (step % check_every == 0 and step > self.first_check_after)

    def lr_factor(self, step: int, restart_step: int | None, stop_step: int | None,
                  peak_step: int | None = None) -> float:
        """The dense schedule until `restart_step` (the pruning step); after it, a linear decay to zero
        at `stop_step` from the value the dense schedule had at `peak_step` (default: the restart).
        Re-warming at a gradual mask update moves the restart there and keeps the peak at pruning."""
        if restart_step is None or step <= restart_step:
            return linear_factor(step, self.warmup_steps, self.total_steps)
        peak = restart_step if peak_step is None else peak_step
        return (linear_factor(peak, self.warmup_steps, self.total_steps)
                * max(0.0, (stop_step - step) / max(1, stop_step - restart_step)))


def gradual_fractions(updates: int, start: float) -> list[float]:
    """The share of the target rate pruned at the early bird (first entry) and after each of `updates`
    mask updates, on Zhu & Gupta's (2018) cubic schedule: start + (1 - start)(1 - (1 - k/n)^3). The
    last is exactly 1: the target."""
    return [1.0 if k == updates else start + (1 - start) * (1 - (1 - k / updates) ** 3) for k in range(updates + 1)]


def gradual_steps(prune_step: int, retrain_steps: int, updates: int, span: float) -> list[int]:
    """The steps of the mask updates, spread evenly over the first `span` (a fraction in (0, 1]) of the
    retrain phase. Raises ValueError when there are fewer steps in that span than updates."""
    spread = span * retrain_steps
    if updates > spread:
        raise ValueError(f"{updates} gradual mask updates need at least {updates} steps, but {span:g} of the "
                         f"{retrain_steps} retrain steps is {spread:g}: use fewer GRADUAL_UPDATES or a longer GRADUAL_SPAN")
    return [prune_step + round(k * spread / updates) for k in range(1, updates + 1)]
