"""Magnitude pruning: a weight scores |w|; a head or FFN neuron scores the L2 norm of all its weights
(Q/K/V rows and output-projection columns; intermediate row and output column), the group-lasso
norm that structured magnitude pruning uses (e.g. Torch-Pruning's group magnitude importance)."""
import torch

from pruning import Criterion, PruningTrainer
from pruning.core.units import GRANULARITIES


class MagnitudeCriterion(Criterion):
    """Magnitude: |w| per weight, the L2 (group-lasso) norm of a head's or neuron's weights per unit.
    Scores the live weights at any time, so it also rescores for gradual pruning at both granularities."""
    name = "magnitude"
    rescores = GRANULARITIES  # norms of the live weights: a score at any time

    def scores(self) -> dict[str, torch.Tensor]:
        """`units.norm` of the live weights: group name -> float tensor of (live heads,) / (live neurons,) or
        the weight's shape."""
        return self.units.norm({n: p.detach() for n, p in self.params.items()})


class MagnitudePruningTrainer(PruningTrainer):
    """PruningTrainer with the magnitude criterion."""
    criterion_class = MagnitudeCriterion
