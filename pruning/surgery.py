"""Physical removal of heads and FFN neurons, and gates on unit outputs.

Removal works in place: each affected nn.Linear keeps its Parameter objects and gets smaller
tensors (`param.data = param.data[kept]`). The optimizer therefore still refers to the right
parameters, and its per-parameter state (AdamW's moments) is sliced with the same indices, so the
kept units carry their optimizer state over. (transformers' `prune_linear_layer` builds new
modules, which would orphan the optimizer state.) BERT and RoBERTa infer the head count from tensor
shapes, so layers may keep different numbers of heads.
"""
from __future__ import annotations

import torch
from torch import nn

from pruning.units import PrunableUnits


def _unit_index(keep: torch.Tensor, width: int) -> torch.Tensor:
    """Row/column indices of the kept units, `width` entries each."""
    kept = keep.nonzero().squeeze(1)
    return (kept[:, None] * width + torch.arange(width, device=kept.device)).flatten()


@torch.no_grad()
def _shrink(linear: nn.Linear, index: torch.Tensor, dim: int, optimizer) -> None:
    params = [(linear.weight, dim)] + ([(linear.bias, 0)] if dim == 0 and linear.bias is not None else [])
    for p, d in params:
        index = index.to(p.device)
        old_shape = p.shape
        p.data = p.data.index_select(d, index).contiguous()
        p.grad = None
        state = optimizer.state.get(p, {}) if optimizer is not None else {}
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.shape == old_shape:
                state[key] = value.index_select(d, index).contiguous()
    if dim == 0:
        linear.out_features = linear.weight.shape[0]
    else:
        linear.in_features = linear.weight.shape[1]


def remove_units(units: PrunableUnits, keep: dict[str, torch.Tensor], optimizer=None) -> dict[str, int]:
    """Remove every unit whose original-space keep-mask is False; returns units removed per group.

    `keep`: group name -> bool tensor of the dense group's shape, (heads,) / (neurons,). Units
    already removed stay removed (the live model has no place for them). `optimizer` (HF's wrapper
    or a torch optimizer) gets its state sliced along. Raises ValueError when a layer would keep no
    attention head.
    """
    optimizer = getattr(optimizer, "optimizer", optimizer)
    modules = dict(units.model.named_modules())
    removed = {}
    for name, group in units.groups.items():
        live_keep = units.live_mask(name, keep[name].to(torch.bool).cpu())
        if bool(live_keep.all()):
            removed[name] = 0
            continue
        if group.kind == "head" and not bool(live_keep.any()):
            raise ValueError(f"{name}: a layer must keep at least one attention head")
        for s in group.slices:
            _shrink(modules[s.module], _unit_index(live_keep, s.width), s.dim, optimizer)
        if group.kind == "head":
            attn = modules[group.slices[0].module.rsplit(".", 1)[0]]
            attn.num_attention_heads = int(live_keep.sum())
            attn.all_head_size = attn.num_attention_heads * attn.attention_head_size
        removed[name] = int((~live_keep).sum())
        group.origin = group.origin[live_keep]
    return removed  # the Parameter objects are the same, so units.params still holds them


class UnitGates:
    """Multiplies each head's attention output and each FFN neuron's activation (after GELU) by a gate.

    Scaling a head's context vector by c equals scaling its attention probabilities by c (the context
    is linear in them), which is where EarlyBERT puts its head coefficients. The gates are forward
    hooks, not modules, so they never enter the model's state dict. `gates`: group name -> tensor of
    (live heads,) / (live neurons,), read at every forward (so trained gates take effect at once).
    """

    def __init__(self, units: PrunableUnits, gates: dict[str, torch.Tensor]):
        self.units, self.gates, self.handles = units, gates, []
        modules = dict(units.model.named_modules())
        for name, group in units.groups.items():
            if group.kind == "head":
                attn = modules[group.slices[0].module.rsplit(".", 1)[0]]
                self.handles.append(attn.register_forward_hook(self._scale_heads(name, attn.attention_head_size)))
            elif group.kind == "neuron":
                intermediate = modules[group.slices[0].module.rsplit(".", 1)[0]]
                self.handles.append(intermediate.register_forward_hook(self._scale_neurons(name)))

    def _scale_heads(self, name, head_size):
        def hook(module, args, output):
            gate = self.gates[name].to(output[0].dtype).repeat_interleave(head_size)
            return (output[0] * gate, *output[1:])
        return hook

    def _scale_neurons(self, name):
        def hook(module, args, output):
            return output * self.gates[name].to(output.dtype)
        return hook

    def remove(self) -> None:
        """Remove the forward hooks; the model computes ungated again (fold the gates first to keep its function)."""
        for h in self.handles:
            h.remove()
        self.handles = []


@torch.no_grad()
def fold_gates(units: PrunableUnits, gates: dict[str, torch.Tensor]) -> None:
    """Scale each unit's output-side weights by its gate, so the model computes without the gates
    exactly what it computed with them. `gates`: group name -> tensor of (live units,)."""
    modules = dict(units.model.named_modules())
    for name, group in units.groups.items():
        for s in group.slices:
            if s.output:
                w = modules[s.module].weight
                scale = gates[name].to(w.dtype).repeat_interleave(s.width)
                w.mul_(scale.view([-1 if d == s.dim else 1 for d in range(w.dim())]))
