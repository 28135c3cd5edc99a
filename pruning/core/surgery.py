"""Physical removal of heads, FFN neurons, whole MLPs and whole encoder layers, and gates on unit outputs.

Removal works in place: each affected nn.Linear keeps its Parameter objects and gets smaller
tensors (`param.data = param.data[kept]`). The optimizer therefore still refers to the right
parameters, and its per-parameter state (AdamW's moments) is sliced with the same indices, so the
kept units carry their optimizer state over. (transformers' `prune_linear_layer` builds new
modules, which would orphan the optimizer state.) The attention module's head-count attributes are kept in
step with the weights (`Layout.set_heads`): most families infer the head count from tensor shapes, but
DeBERTa-v2 reshapes with its `num_attention_heads` attribute. A fused Linear (`Slice.chunks` > 1: ModernBERT's
[q | k | v] and gated [input | gate] projections) keeps its chunked layout: the kept rows of each chunk stay
together, chunk after chunk (`Slice.index`), which `index_select` writes as one new contiguous tensor.

A whole MLP goes as all its neurons plus the down projection's bias (its Linears keep zero rows / columns:
the block then adds nothing before its residual). A whole layer leaves the encoder's nn.ModuleList and the
config's layer count (and per-layer `layer_types`, where the family has them) follows. Parameters that leave
the model leave the optimizer too, so a checkpoint written afterwards matches the smaller model.
"""
from __future__ import annotations

import torch
from torch import nn

from pruning.core.units import PrunableUnits, Slice, UnitGroup


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


def _drop_parameters(params: list[nn.Parameter], optimizer) -> None:
    """Take parameters out of the optimizer's groups and state (they left the model)."""
    if optimizer is None or not params:
        return
    ids = {id(p) for p in params}
    for group in optimizer.param_groups:
        group["params"] = [p for p in group["params"] if id(p) not in ids]
    for p in params:
        optimizer.state.pop(p, None)


def _remove_layers(units: PrunableUnits, keep: torch.Tensor, optimizer) -> int:
    """Remove the live encoder layers whose dense index `keep` (bool, (L,)) marks False; returns how many."""
    group = units.whole_group("layer")
    live_keep = units.live_mask(group.name, keep.to(torch.bool).cpu())
    if bool(live_keep.all()):
        return 0
    layout, model = units.layout, units.model
    layer_list = getattr(model, "base_model", model).get_submodule(layout.layers)
    gone = [j for j in range(len(layer_list)) if not live_keep[j]]
    _drop_parameters([p for j in gone for p in layer_list[j].parameters()], optimizer)
    for j in reversed(gone):
        del layer_list[j]
    config = model.config
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, (list, tuple)) and len(layer_types) == len(live_keep):
        config.layer_types = [t for t, k in zip(layer_types, live_keep.tolist()) if k]
    setattr(config, layout.config_layers, len(layer_list))
    group.origin = group.origin[live_keep]
    return len(gone)


def remove_units(units: PrunableUnits, keep: dict[str, torch.Tensor], optimizer=None) -> dict[str, int]:
    """Remove every unit whose original-space keep-mask is False; returns units removed per group.

    `keep`: group name -> bool tensor of the dense group's shape, (heads,) / (neurons,) / (layers,), for every
    group of `units.mask_groups` (`PrunableUnits.compose` has carried whole MLPs / layers down to their units).
    Units already removed stay removed (the live model has no place for them). `optimizer` (HF's wrapper or a
    torch optimizer) gets its state sliced along and loses the parameters that leave the model. Raises
    ValueError when a layer that stays would keep no attention head.
    """
    optimizer = getattr(optimizer, "optimizer", optimizer)
    modules = units.modules()
    layers = units.whole_group("layer")
    going = set()  # dense indices of the layers removed now: their units go with them
    if layers is not None:
        going = {i for i in layers.origin.tolist() if not bool(keep[layers.name][i])}
    removed = {}
    for name, group in units.groups.items():
        if group.layer in going or not len(group.origin):
            removed[name] = len(group.origin)
            group.origin = group.origin[:0]
            continue
        live_keep = units.live_mask(name, keep[name].to(torch.bool).cpu())
        if bool(live_keep.all()):
            removed[name] = 0
            continue
        if group.kind == "head" and not bool(live_keep.any()):
            raise ValueError(f"{name}: a layer must keep at least one attention head")
        for s in group.slices:
            _shrink(modules[s.module], s.index(live_keep), s.dim, optimizer)
        if group.kind == "head":  # the attention module's head count follows its weights
            units.layout.set_heads(modules[group.name.rsplit(".", 1)[0]], int(live_keep.sum()))
        if group.kind == "neuron" and not bool(live_keep.any()):  # the whole MLP: its output bias goes too
            down = modules[output_slice(group).module]
            if down.bias is not None:
                _drop_parameters([down.bias], optimizer)
                down.bias = None
        removed[name] = int((~live_keep).sum())
        group.origin = group.origin[live_keep]
    mlps = units.whole_group("mlp")
    if mlps is not None:
        with_ffn = torch.tensor([len(units.groups[f"{units.prefix}.{i}.neurons"].origin) > 0
                                 for i in mlps.origin.tolist()], dtype=torch.bool)
        removed[mlps.name] = int((~with_ffn).sum())
        mlps.origin = mlps.origin[with_ffn]
    if layers is not None:
        removed[layers.name] = _remove_layers(units, keep[layers.name], optimizer)
    return removed  # the Parameter objects are the same, so units.params still holds them


def output_slice(group: UnitGroup) -> Slice:
    """The slice on a unit group's output side: the attention output projection's columns of a head, the FFN
    down projection's column of a neuron. That Linear's input is the units' output (a head's context vector,
    a neuron's activation), one unit every `width` features."""
    return next(s for s in group.slices if s.output)


class UnitGates:
    """Multiplies each head's attention output and each FFN neuron's activation (after GELU) by a gate.

    Scaling a head's context vector by c equals scaling its attention probabilities by c (the context
    is linear in them), which is where EarlyBERT puts its head coefficients. The gates are forward
    pre-hooks on the output-side Linears (`output_slice`: they scale its input features), not modules,
    so they never enter the model's state dict. `gates`: group name -> tensor of (live heads,) /
    (live neurons,), read at every forward (so trained gates take effect at once).
    """

    def __init__(self, units: PrunableUnits, gates: dict[str, torch.Tensor]):
        self.units, self.gates, self.handles = units, gates, []
        modules = units.modules()
        for name, group in units.groups.items():
            if group.kind in ("head", "neuron"):
                s = output_slice(group)
                self.handles.append(modules[s.module].register_forward_pre_hook(self._scale(name, s)))

    def _scale(self, name, s: Slice):
        def hook(module, args):
            return (args[0] * s.expand(self.gates[name].to(args[0].dtype)), *args[1:])
        return hook

    def remove(self) -> None:
        """Remove the hooks; the model computes ungated again (fold the gates first to keep its function)."""
        for h in self.handles:
            h.remove()
        self.handles = []


@torch.no_grad()
def fold_gates(units: PrunableUnits, gates: dict[str, torch.Tensor]) -> None:
    """Scale each unit's output-side weights by its gate, so the model computes without the gates
    exactly what it computed with them. `gates`: group name -> tensor of (live units,)."""
    modules = units.modules()
    for name, group in units.groups.items():
        for s in group.slices:
            if s.output:
                w = modules[s.module].weight
                scale = s.expand(gates[name].to(w.dtype))
                w.mul_(scale.view([-1 if d == s.dim else 1 for d in range(w.dim())]))
