"""Undecayed pruning (Good et al., NeurIPS 2022, "Recall Distortion in Neural Network Pruning and
the Undecayed Pruning Algorithm"): |-w * g + epsilon * w^2|, summed over the optimizer steps since
the last Early-Bird check. The epsilon * w^2 term puts back the weight decay's share of the
gradient, so weights that decay is shrinking are not mistaken for unimportant ones."""
import torch

from pruning import AccumulatedCriterion, PruningTrainer


class UndecayedCriterion(AccumulatedCriterion):
    name = "undecayed"

    def __init__(self, params, epsilon: float = 0.01):
        if not epsilon >= 0:
            raise ValueError(f"undecayed epsilon must be >= 0, got {epsilon!r}")
        super().__init__(params)
        self.epsilon = float(epsilon)

    def step_score(self, w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        # |-w*g + eps*w^2| = |w * (g - eps*w)|
        return torch.mul(w, torch.add(g, w, alpha=-self.epsilon)).abs_()


class UndecayedPruningTrainer(PruningTrainer):
    criterion_class = UndecayedCriterion
