"""Importance-driven mixed precision: which encoder matrices keep 8 bits and which get 4.

A matrix's importance is the mean score of its live (nonzero) weights under a pruning criterion: the same
per-weight score that decided which weights to prune, averaged so that large and small matrices compare
(a global pruning threshold compares the same per-weight scores across matrices). The least important
matrices get 4 bits until the budget is met.
"""
from __future__ import annotations

import torch
from torch import nn

from pruning.core.criterion import AccumulatedCriterion, Criterion
from pruning.core.units import PrunableUnits


def matrix_importance(model: nn.Module, criterion_class: type[Criterion], options: dict | None = None,
                      batches=(), seed: int = 0) -> dict[str, float]:
    """Mean criterion score of each prunable Linear's nonzero weights, by module name.

    A criterion that ranks only what it observed (`Criterion.observes`: gradient, undecayed, activation) is
    shown `batches` (dicts of tensors with labels, from the training set: never the dev set the results
    are reported on), each as one search step that is never applied (`observe_batches`). Raises
    ValueError for such a criterion without batches, and what the criterion raises for bad `options`."""
    units = PrunableUnits(model, "weights")
    criterion = criterion_class(units, **(options or {}))
    try:
        if criterion.observes:
            if not batches:
                raise ValueError(f"the {criterion.name} criterion scores what it observes on training batches: "
                                 "it needs batches")
            observe_batches(model, criterion, batches, seed)
        scores = criterion.scores()
        out = {}
        for name, p in units.params.items():
            live = p.detach() != 0
            out[name.removesuffix(".weight")] = float(scores[name][live].float().mean()) if live.any() else 0.0
        return out
    finally:
        criterion.close()  # the hooks of an activation criterion must not outlive the scoring


def observe_batches(model: nn.Module, criterion: Criterion, batches, seed: int = 0) -> None:
    """Show `criterion` each of `batches` as a counted search step (`on_gradients`, `observe`, `after_step`),
    without an optimizer step. A criterion that learns from gradients (`AccumulatedCriterion`) reads each
    batch's gradient with the model in eval mode, so its scores are those of the deployed function. One that
    observes forwards (activation) counts training-mode forwards only, as in a run's search steps, so the
    batches run in training mode as those steps did (dropout on, from the CPU generator seeded with `seed`,
    the caller's random state left as it was), without gradients. The model's mode is restored and its
    gradients cleared."""
    reads_gradients = isinstance(criterion, AccumulatedCriterion)
    was_training = model.training
    model.train(not reads_gradients)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for batch in batches:
                model.zero_grad(set_to_none=True)
                if reads_gradients:
                    model(**batch).loss.backward()
                else:
                    with torch.no_grad():
                        model(**batch)
                criterion.on_gradients()
                criterion.observe()
                criterion.after_step()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)


def assign_bits(importance: dict[str, float], sizes: dict[str, int], four_bit_fraction: float) -> dict[str, int]:
    """4 bits for the least important matrices, in order of importance, until at least `four_bit_fraction`
    of all their weights (by count) are at 4 bits; 8 bits for the rest. Ties go by name, for a
    deterministic choice. Raises ValueError for a fraction outside [0, 1] or when `importance` and
    `sizes` name different matrices."""
    if not 0 <= four_bit_fraction <= 1:
        raise ValueError(f"the fraction of weights at 4 bits must be in [0, 1], got {four_bit_fraction!r}")
    if set(importance) != set(sizes):
        raise ValueError("importance and sizes must name the same matrices")
    total = sum(sizes.values())
    bits, at_four = {}, 0
    for name in sorted(importance, key=lambda n: (importance[n], n)):
        if at_four < four_bit_fraction * total:
            bits[name] = 4
            at_four += sizes[name]
        else:
            bits[name] = 8
    return bits


def average_bits(bits: dict[str, int], sizes: dict[str, int]) -> float:
    """Mean bits per weight over the matrices in `bits`, weighted by their sizes (weight counts)."""
    return sum(bits[n] * sizes[n] for n in bits) / sum(sizes[n] for n in bits)


def prunable_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The encoder Linears whose precision is chosen, by module name (the prunable ones)."""
    modules = dict(model.named_modules())
    return {name.removesuffix(".weight"): modules[name.removesuffix(".weight")]
            for name in PrunableUnits(model, "weights").params}


class FakeQuant4(nn.Module):
    """A parametrization that rounds a weight as 4-bit block quantization does (asymmetric, per block of
    `block_size` input columns; the same grid as ONNX Runtime's MatMulNBits), with a straight-through
    gradient, for quantization-aware fine-tuning."""

    def __init__(self, block_size: int = 32):
        super().__init__()
        self.block_size = block_size

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """`weight` (out_features, in_features) rounded to the 4-bit grid, same shape; straight-through
        gradient (the identity's)."""
        out_features, in_features = weight.shape
        pad = (-in_features) % self.block_size
        w = nn.functional.pad(weight, (0, pad)).reshape(out_features, -1, self.block_size)
        low = w.amin(-1, keepdim=True).clamp(max=0)
        high = w.amax(-1, keepdim=True).clamp(min=0)
        scale = ((high - low) / 15).clamp(min=1e-12)
        zero = torch.round(-low / scale).clamp(0, 15)
        q = (torch.clamp(torch.round(w / scale) + zero, 0, 15) - zero) * scale
        q = q.reshape(out_features, -1)[:, :in_features]
        return weight + (q - weight).detach()  # straight-through: forward q, gradient of the identity
