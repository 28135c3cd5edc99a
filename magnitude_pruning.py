"""Magnitude pruning: a weight scores |w|; a head or FFN neuron scores the L2 norm of all its weights
(Q/K/V rows and output-projection columns; intermediate row and output column), the group-lasso
norm that structured magnitude pruning uses (e.g. Torch-Pruning's group magnitude importance)."""
import torch

from pruning import Criterion, PruningTrainer
from pruning.units import GRANULARITIES


class MagnitudeCriterion(Criterion):
    name = "magnitude"
    rescores = GRANULARITIES  # norms of the live weights: a score at any time

    def scores(self) -> dict[str, torch.Tensor]:
        return self.units.norm({n: p.detach() for n, p in self.params.items()})


class MagnitudePruningTrainer(PruningTrainer):
    criterion_class = MagnitudeCriterion
