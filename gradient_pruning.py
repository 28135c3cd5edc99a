"""Gradient pruning: the first-order Taylor estimate |w * g| of the loss change when w is removed,
summed over the optimizer steps since the last Early-Bird check."""
import torch

from pruning import AccumulatedCriterion, PruningTrainer


class GradientCriterion(AccumulatedCriterion):
    name = "gradient"

    def step_score(self, w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return torch.mul(w, g).abs_()


class GradientPruningTrainer(PruningTrainer):
    criterion_class = GradientCriterion
