"""Undecayed pruning (Good et al., NeurIPS 2022, "Recall Distortion in Neural Network Pruning and
the Undecayed Pruning Algorithm"): |-w * g + epsilon * w^2|, summed over the optimizer steps since
the last Early-Bird check; a head or FFN neuron sums -w * g + epsilon * w^2 over its output-projection
weights before the absolute value, as the gradient criterion does. The epsilon * w^2 term puts back
the weight decay's share of the gradient, so weights that decay is shrinking are not mistaken for
unimportant ones. Our default epsilon is 0.01, the AdamW weight decay of these runs, which is what the
term stands for; Good et al.'s own code uses 5e-4."""
import torch

from pruning import AccumulatedCriterion, PruningTrainer


class UndecayedCriterion(AccumulatedCriterion):
    """Undecayed pruning (Good et al. 2022): |-w * g + epsilon * w^2| summed over steps; see the module
    docstring. Raises ValueError for a negative or non-numeric epsilon."""
    name = "undecayed"

    def __init__(self, units, epsilon: float = 0.01):
        self.check_options(epsilon)
        super().__init__(units)
        self.epsilon = float(epsilon)

    @classmethod
    def check_options(cls, epsilon: float = 0.01) -> None:
        """Raise ValueError unless `epsilon` is a number >= 0 (bools are refused)."""
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not epsilon >= 0:
            raise ValueError(f"undecayed epsilon must be >= 0, got {epsilon!r}")

    def step_score(self, w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        # -w*g + eps*w^2 = -(w * (g - eps*w)); the sign goes with the absolute value
        """w * (g - epsilon * w), elementwise, same shape as `w`: the negative of -w * g + epsilon * w^2, whose
        sign the absolute value drops."""
        return torch.mul(w, torch.add(g, w, alpha=-self.epsilon))


class UndecayedPruningTrainer(PruningTrainer):
    """PruningTrainer with the undecayed criterion (option: UNDECAYED_EPSILON)."""
    criterion_class = UndecayedCriterion
