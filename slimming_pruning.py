"""Network slimming for heads and FFN neurons, the criterion of EarlyBERT (Chen et al., ACL 2021):
every attention head and every FFN neuron gets a learnable coefficient, initialised at 1, that scales
its output (the head's attention probabilities; the neuron's activation after GELU). The coefficients
train with the model under an L1 penalty (lambda = SLIMMING_L1, EarlyBERT's 1e-4), and the units
with the smallest |c| are pruned.

At pruning the coefficients are folded into the kept units' output-projection weights (exact: the
output is linear in each coefficient) and their hooks removed, so the retrained and saved model is a
plain model of its family that computes what the gated model computed. Dropping them instead would change
the function the search trained.
"""
import torch
from torch import nn

from pruning import Criterion, PruningTrainer
from pruning.core.surgery import UnitGates, fold_gates


class SlimmingCriterion(Criterion):
    """Network slimming for heads and FFN neurons (EarlyBERT, Chen et al. 2021): one learnable coefficient
    per unit, gated with `UnitGates`, trained under an L1 penalty; scores are |c|. Raises ValueError
    at "weights" granularity or for a negative `l1`."""
    name = "slimming"
    granularities = ("heads+neurons",)
    ranks_at_start = False  # every coefficient starts at 1

    def __init__(self, units, l1: float = 1e-4):
        if not units.structured:
            raise ValueError("SlimmingPruningTrainer learns one coefficient per attention head and FFN neuron: "
                             "it needs GRANULARITY='heads+neurons'")
        self.check_options(l1)
        super().__init__(units)
        self.l1 = float(l1)
        device = next(iter(self.params.values())).device
        self.coefficients = {n: nn.Parameter(torch.ones(units.live_size(n), device=device))
                             for n in units.groups}
        self.gates = UnitGates(units, self.coefficients)

    @classmethod
    def check_options(cls, l1: float = 1e-4) -> None:
        """Raise ValueError unless `l1` is a number >= 0 (bools are refused)."""
        if isinstance(l1, bool) or not isinstance(l1, (int, float)) or not l1 >= 0:
            raise ValueError(f"slimming L1 penalty must be >= 0, got {l1!r}")

    def extra_parameters(self) -> list[nn.Parameter]:
        """The coefficients, one float tensor of (live units,) per group, for the optimizer to train."""
        return list(self.coefficients.values())

    @torch.no_grad()
    def on_gradients(self) -> None:
        """Average the coefficients' gradients across processes (DDP does not: they are not module
        parameters), then add the L1 subgradient l1 * sign(c)."""
        coefficients = list(self.coefficients.values())
        if any(c.grad is None for c in coefficients):
            return
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # The coefficients are not module parameters, so DDP does not average their gradients.
            flat = torch.cat([c.grad for c in coefficients])
            torch.distributed.all_reduce(flat)
            flat /= torch.distributed.get_world_size()
            for c, g in zip(coefficients, flat.split([c.numel() for c in coefficients])):
                c.grad.copy_(g)
        for c in coefficients:  # the L1 penalty's subgradient
            c.grad.add_(torch.sign(c), alpha=self.l1)

    def after_step(self) -> None:
        """Clear the coefficients' gradients (HF's zero_grad only clears the model's)."""
        for c in self.coefficients.values():  # HF zeroes the model's gradients, not these
            c.grad = None

    def scores(self) -> dict[str, torch.Tensor]:
        """|c| per unit: group name -> float tensor of (live heads,) or (live neurons,)."""
        return {n: c.detach().abs().clone() for n, c in self.coefficients.items()}

    def before_removal(self, masks) -> None:
        """Fold the coefficients into the units' output-side weights (`fold_gates`), so removal keeps the
        function the gated model computed."""
        fold_gates(self.units, {n: c.detach() for n, c in self.coefficients.items()})

    def close(self) -> None:
        """Remove the gate hooks."""
        self.gates.remove()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """{"coefficient/<group>": coefficients of (live units,)}."""
        return {f"coefficient/{n}": c.detach() for n, c in self.coefficients.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copy a `state_dict`'s coefficients into place (shapes must match)."""
        with torch.no_grad():
            for n, c in self.coefficients.items():
                c.copy_(state[f"coefficient/{n}"])


class SlimmingPruningTrainer(PruningTrainer):
    """PruningTrainer with the slimming criterion (option: SLIMMING_L1; needs GRANULARITY='heads+neurons')."""
    criterion_class = SlimmingCriterion
