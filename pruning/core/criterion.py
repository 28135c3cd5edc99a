"""Criteria: one small class each, that only scores units (higher = keep).

A criterion sees the model through `PrunableUnits`, so the same formula scores single weights and
whole heads / FFN neurons: `units.norm` and `units.reduce` fold per-weight values into per-unit
values along the units' index maps (and are the identity for weights).
"""
from __future__ import annotations

import torch
from torch import nn

from pruning.core.units import GRANULARITIES, PrunableUnits


class Criterion:
    """Scores the live units of every group; the lowest-scoring ones are pruned.

    Lifecycle, driven by the pruning callbacks: `on_gradients()` once per optimizer step of the search
    phase, after the backward of all its micro-batches (gradients are all-reduced, unscaled, clipped and
    finite, not yet applied: `PruningTrainer.read_gradients`); `observe()` on those steps whose
    scores count (after the warm-up); `scores()` at each Early-Bird check, then `reset()`;
    `before_removal(masks)` right before pruned units are removed; `close()` once the search ends.
    """
    name = "criterion"
    granularities: tuple[str, ...] = GRANULARITIES   # the granularities this criterion can score
    # Whether scores() ranks units before any training (magnitude does; accumulated gradients and
    # slimming coefficients, all 1 at the start, do not): then the detector also reports how far the
    # mask drifts from the mask of the starting weights.
    ranks_at_start: bool = True
    # Whether scores() ranks only what observe() saw (accumulated gradients, activations): such a
    # criterion needs at least one search step after the warm-up (checked before training).
    observes: bool = False
    # The granularities at which it can score again after pruning, for the updates of a gradual
    # schedule (magnitude can at both; accumulated scores at "weights", whose tensors keep their shape).
    rescores: tuple[str, ...] = ()

    def __init__(self, units: PrunableUnits):
        self.units = units
        self.params = units.params

    @classmethod
    def check_options(cls, **options) -> None:
        """Validate the criterion's own settings before any data or model is loaded."""

    def on_gradients(self) -> None:
        """Every search optimizer step with finite gradients, after backward and before the optimizer step."""

    def after_step(self) -> None:
        """Every search step, after the optimizer step."""

    def observe(self) -> None:
        """Called after backward and before the optimizer step, while `.grad` holds this step's gradient."""

    def scores(self) -> dict[str, torch.Tensor]:
        """Each group's scores, higher = keep: group name -> float tensor over the live units, (live heads,) /
        (live neurons,) or the weight's shape. Subclasses implement it; the base raises NotImplementedError."""
        raise NotImplementedError

    def whole_scores(self, scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Scores of the whole MLPs and layers (`PrunableUnits.whole`) from the units' original-space `scores`:
        by default derived from them (`PrunableUnits.whole_scores`); a criterion that measures whole units itself
        (Fisher pruning's gates) overrides it. Returns whole group -> float tensor (L,), -inf for removed ones."""
        return self.units.whole_scores(scores)

    def reset(self) -> None:
        """Called after each Early-Bird check."""

    def extra_parameters(self) -> list[nn.Parameter]:
        """Parameters the criterion trains alongside the model during the search (none by default)."""
        return []

    def before_removal(self, masks: dict[str, torch.Tensor]) -> None:
        """Last look at the dense model before pruned units go (e.g. fold learned gates into weights)."""

    def close(self) -> None:
        """The search is over: release hooks and anything else the criterion attached to the model."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The criterion's running state for a checkpoint, name -> tensor (empty for stateless criteria)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a `state_dict` (nothing to restore for stateless criteria)."""
        pass


class AccumulatedCriterion(Criterion):
    """A per-step first-order score, summed over the optimizer steps since the last check.

    `step_score(w, g)` gives each weight's signed contribution to the estimated loss change if it
    were removed. A weight scores |contribution|; a unit scores |sum of the contributions of its
    output-side weights|, which is exactly |dL/dc| for a gate c on the unit's output (Molchanov et
    al. 2019; for heads, Michel et al. 2019). A single minibatch is mostly noise; the sum over the
    steps between two checks is what the detector compares.
    """

    ranks_at_start = False
    observes = True
    rescores = ("weights",)

    def __init__(self, units: PrunableUnits):
        super().__init__(units)
        self.watched = units.output_params()
        self.sums = {n: torch.zeros(g.shape, dtype=torch.float32, device=self._device())
                     for n, g in units.groups.items()}
        self.steps = 0

    def _device(self):
        return next(iter(self.params.values())).device

    def step_score(self, w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Each weight's signed per-step contribution from weight `w` and its gradient `g` (same shape);
        returns a tensor of that shape. Subclasses implement it."""
        raise NotImplementedError

    @torch.no_grad()
    def observe(self) -> None:
        """Add this step's |reduced step_score| to each group's sum; a no-op while any watched weight has no
        `.grad` (e.g. a step without backward)."""
        if any(p.grad is None for p in self.watched.values()):
            return
        for name, total in self.sums.items():  # one group at a time: no copy of every weight at once
            contributions = {n: self.step_score(p, p.grad) for n, p in self.units.output_params(name).items()}
            total.add_(self.units.reduce(contributions, groups=[name])[name].abs_())
        self.steps += 1

    def scores(self) -> dict[str, torch.Tensor]:
        """The sums since the last reset: group name -> float32 tensor of the group's shape ((heads,),
        (neurons,) or the weight's shape). Raises RuntimeError before any observed step."""
        if self.steps == 0:
            raise RuntimeError(f"{self.name} scores need at least one optimizer step of gradients")
        return self.sums

    def reset(self) -> None:
        """Zero the sums and the step count (after each Early-Bird check)."""
        for s in self.sums.values():
            s.zero_()
        self.steps = 0

    def state_dict(self) -> dict[str, torch.Tensor]:
        """{"sum/<group>": running sum, "steps": 0-d tensor of observed steps}."""
        return {**{f"sum/{n}": s for n, s in self.sums.items()}, "steps": torch.tensor(self.steps)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copy a `state_dict`'s sums into place (shapes must match) and restore the step count."""
        for n, s in self.sums.items():
            s.copy_(state[f"sum/{n}"])
        self.steps = int(state["steps"])
