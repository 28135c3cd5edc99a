"""Magnitude pruning: a weight's importance is |w|."""
import torch

from pruning import Criterion, PruningTrainer


class MagnitudeCriterion(Criterion):
    name = "magnitude"

    def scores(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().abs() for n, p in self.params.items()}


class MagnitudePruningTrainer(PruningTrainer):
    criterion_class = MagnitudeCriterion
