"""The empirical Fisher information of mask variables on attention heads and FFN neurons.

Every head's context vector and every FFN neuron's activation is multiplied by a mask variable m (1 in the
model as it is; 0 removes the unit). For one example x with loss L(x), the gradient g_u(x) = dL(x)/dm_u at
m = 1 says, to first order, how the loss moves when unit u is scaled. The empirical Fisher information of
the masks over a sample D is I = 1/|D| sum_x g(x) g(x)^T; its diagonal I_uu is the importance of unit u: the
second-order estimate of the loss increase when u alone is removed is I_uu / 2 (Kwon et al., "A Fast
Post-Training Pruning Framework for Transformers", NeurIPS 2022, Sections 3-4; Molchanov et al. 2019 for the
first-order form). Within a layer the block I_l = 1/|D| G_l^T G_l (G_l: the per-example gradients of the
layer's units, one row per example) scores a whole set Z of removed units together: 1/2 * 1_Z^T I_l 1_Z.

Per-example gradients come from one batched backward pass: the masks are per example, shape (batch, units),
so the gradient of the summed per-example losses with respect to mask row b is example b's own gradient.
The masks are forward pre-hooks on each layer's output-side Linears (the attention output projection, whose
input columns h*d:(h+1)*d are head h's context; the FFN down projection, whose input column j is neuron
j's activation), as `surgery.UnitGates` places its gates, so every family in `layouts.py` is covered.
"""
from __future__ import annotations

from contextlib import contextmanager

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn
from torch.nn import functional as F

from pruning.core.surgery import output_slice
from pruning.core.units import PrunableUnits


class ExampleMasks:
    """Per-example mask variables on every head and FFN neuron of `units` (heads+neurons granularity).

    `set(batch_size)` makes fresh masks of shape (batch_size, live units) per group, valued `base` (1, or a
    given keep-mask / tuned values: group name -> (live units,)), with requires_grad; the hooks read them at
    the next forward. A context manager: the hooks go on exit.
    """

    def __init__(self, units: PrunableUnits, base: dict[str, torch.Tensor] | None = None):
        self.units, self.base, self.masks, self.handles = units, base or {}, {}, []
        modules = units.modules()
        for name, group in units.groups.items():
            if group.kind in ("head", "neuron") and len(group.origin):
                s = output_slice(group)
                self.handles.append(modules[s.module].register_forward_pre_hook(self._scale(name, s.width)))

    def _scale(self, name: str, width: int):
        def hook(module, args):
            mask = self.masks[name].to(args[0].device, args[0].dtype).repeat_interleave(width, dim=-1)  # (batch, features)
            x = args[0]
            return (x * mask.view(mask.shape[0], *([1] * (x.dim() - 2)), mask.shape[1]), *args[1:])
        return hook

    def set(self, batch_size: int) -> dict[str, torch.Tensor]:
        """Fresh masks for the next forward: group name -> (batch_size, live units), requires_grad."""
        self.masks = {}
        for name, group in self.units.groups.items():
            if group.kind in ("head", "neuron") and len(group.origin):
                base = self.base.get(name)
                row = torch.ones(len(group.origin)) if base is None else base.detach().float().cpu()
                self.masks[name] = row.expand(batch_size, -1).clone().requires_grad_(True)
        return self.masks

    def __enter__(self) -> "ExampleMasks":
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def example_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example losses (batch,): cross-entropy for classifiers (logits (batch, classes), class ids),
    squared error for a regression head (logits (batch, 1), float targets)."""
    if logits.shape[-1] == 1:
        return (logits.squeeze(-1) - labels.to(logits.dtype)) ** 2
    return F.cross_entropy(logits, labels, reduction="none")


@dataclass
class FisherInformation:
    """Per-example mask gradients and the diagonal of their empirical Fisher information.

    `grads`: group name -> (examples, live units) float32, dL(x)/dm_u at the masks' base values;
    `diagonal`: group name -> (live units,), the mean over examples of the squared gradients;
    `examples`: how many examples they average over."""
    grads: dict[str, torch.Tensor]
    diagonal: dict[str, torch.Tensor]
    examples: int

    def block(self, group: str) -> torch.Tensor:
        """The block of the empirical Fisher information of one group's masks (live units x live units):
        1/|D| G^T G, G the per-example gradients."""
        g = self.grads[group]
        return g.T @ g / self.examples


@contextmanager
def frozen(model: nn.Module):
    """`model` in eval mode (no dropout) with no parameter requiring a gradient, as a Fisher pass needs it (gradients
    flow to the mask gates only); both restored on exit."""
    was_training = model.training
    requires = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)
        model.train(was_training)


def fisher_information(model: nn.Module, units: PrunableUnits, batches: Iterable[dict],
                       base: dict[str, torch.Tensor] | None = None, progress=None) -> FisherInformation:
    """The empirical Fisher information of the head and neuron masks of `model` over `batches` (dicts of
    model inputs with "labels"), at mask values `base` (group -> (live units,); default all ones). The
    model runs in eval mode (no dropout) and its weights get no gradient. `progress`: an optional callable
    called with each batch's size (e.g. a tqdm's update). Raises ValueError for a batch without labels."""
    grads: dict[str, list[torch.Tensor]] = {}
    examples = 0
    with frozen(model), ExampleMasks(units, base) as masks:
        for batch in batches:
            if "labels" not in batch:
                raise ValueError("Fisher information needs labelled examples: a batch has no 'labels'")
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            size = batch["labels"].shape[0]
            variables = masks.set(size)
            loss = example_losses(model(**inputs).logits, batch["labels"]).sum()
            for name, g in zip(variables, torch.autograd.grad(loss, list(variables.values()))):
                grads.setdefault(name, []).append(g.detach().float())
            examples += size
            if progress is not None:
                progress(size)
    stacked = {name: torch.cat(parts) for name, parts in grads.items()}
    return FisherInformation(stacked, {n: (g ** 2).mean(0) for n, g in stacked.items()}, examples)
