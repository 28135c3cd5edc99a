"""Gradient pruning: the first-order Taylor estimate of the loss change when a unit is removed,
summed over the optimizer steps since the last Early-Bird check. A weight scores |w * g|; a head or
FFN neuron scores |sum of w * g over its output-projection weights|, which is |dL/dc| for a gate c on
its output (Michel et al. 2019 for heads, Molchanov et al. 2019 for neurons), taken per optimizer
step on the batch gradient."""
import torch

from pruning import AccumulatedCriterion, PruningTrainer


class GradientCriterion(AccumulatedCriterion):
    """First-order Taylor score |w * g| summed over steps (Molchanov et al. 2019; Michel et al. 2019 for
    heads): see the module docstring."""
    name = "gradient"

    def step_score(self, w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """w * g, elementwise; same shape as `w`."""
        return torch.mul(w, g)


class GradientPruningTrainer(PruningTrainer):
    """PruningTrainer with the gradient (Taylor) criterion."""
    criterion_class = GradientCriterion
