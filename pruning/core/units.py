"""Prunable units and where they live in the model's parameters.

A *unit group* is a set of units that share one keep-mask:
- granularity "weights": every prunable weight tensor is a group and each of its entries a unit
  (the mask has the tensor's shape);
- granularity "heads+neurons": each encoder layer has a group of attention heads (head h owns rows
  h*d:(h+1)*d of Q, K and V and the same columns of the attention output projection) and a group of
  FFN neurons (neuron j owns row j of the FFN up projection and column j of the FFN down projection);
  which Linears these are in each architecture family is declared in `pruning.core.layouts`. A fused Linear
  (ModernBERT's [q | k | v] projection, its gated FFN's [input | gate]) is one `Slice` with `chunks` > 1.

Criteria score units through `PrunableUnits.reduce` / `norm`, which fold per-weight tensors into
per-unit values along these index maps; for "weights" both are the identity, so one criterion
formula serves both granularities. Masks are always held in the *original* index space (all
heads / neurons of the dense model); the live model holds only the kept units, listed in `origin`.

At "heads+neurons" two coarser unit kinds may be added (`WHOLE_KINDS`), each one group with one unit per
encoder layer, held in `PrunableUnits.whole` beside the scored groups:
- "mlp": a layer's whole FFN (all its neurons, and the down projection's bias: the block then adds nothing
  before its residual and LayerNorm; Prasanna et al. 2020 prune these "MLPs");
- "layer": a whole encoder layer, removed from the layer list (the config's layer count follows).
Criteria never see them: their scores are derived from the heads' and neurons' (`whole_scores`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from pruning.core.layouts import Layout, layout_of

GRANULARITIES = ("weights", "heads+neurons")
WHOLE_KINDS = ("mlp", "layer")  # unit kinds of one unit per encoder layer (heads+neurons only)


@dataclass(frozen=True)
class Slice:
    """Where a group's units sit inside one nn.Linear: along `dim` of its weight, `width` entries a unit in each
    of `chunks` equal parts. With n live units, unit u owns entries c*n*width + u*width ... + width for
    c in 0..chunks-1: chunks=1 is a plain Linear; 3 a fused [q | k | v] projection (width: the head size);
    2 a gated FFN's [input | gate] up projection (width 1)."""
    module: str        # qualified name of the nn.Linear
    dim: int           # 0: the units are output rows (bias entries too); 1: input columns
    width: int         # entries per unit along dim in each chunk (the head size for heads, 1 for neurons)
    output: bool       # the unit's output side: gating the unit by c scales exactly these weights by c
    chunks: int = 1    # equal parts of dim, in each of which every unit owns `width` entries

    def index(self, keep: torch.Tensor) -> torch.Tensor:
        """Indices along `dim` of the entries of the units `keep` (bool, (live units,)) marks, in order: chunk by
        chunk, unit by unit, so the kept entries keep the chunked layout."""
        kept = keep.nonzero().squeeze(1)
        per_chunk = (kept[:, None] * self.width + torch.arange(self.width, device=kept.device)).flatten()
        if self.chunks == 1:
            return per_chunk
        span = keep.numel() * self.width
        return (torch.arange(self.chunks, device=kept.device)[:, None] * span + per_chunk).flatten()

    def per_unit(self, t: torch.Tensor, units: int) -> torch.Tensor:
        """A tensor of the Linear's weight shape as (units, entries): row u holds every entry unit u owns
        ((0, 0) when no unit is left, e.g. a whole FFN removed)."""
        if units == 0:
            return t.new_zeros(0, 0)
        x = t.movedim(self.dim, 0)
        if self.chunks > 1:
            x = x.reshape(self.chunks, units, -1).transpose(0, 1)
        return x.reshape(units, -1)

    def expand(self, values: torch.Tensor) -> torch.Tensor:
        """Per-unit values, (units,), repeated to one per entry along `dim`, (chunks * units * width,)."""
        out = values.repeat_interleave(self.width)
        return out.repeat(self.chunks) if self.chunks > 1 else out


@dataclass
class UnitGroup:
    """One set of units sharing a keep-mask: a weight tensor's entries, or one encoder layer's heads or FFN
    neurons (see the module docstring)."""
    name: str
    kind: str                        # "weight", "head" or "neuron"; "mlp" or "layer" (one unit per layer)
    layer: int                       # encoder layer index (-1 when the name has none)
    size: int                        # units in the dense model (the mask's numel)
    shape: tuple                     # the mask's shape
    slices: list[Slice] = field(default_factory=list)
    origin: torch.Tensor | None = None  # original indices of the units the live model still has


def prunable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Weights of every nn.Linear inside the encoder, by name.

    That is every Linear under `model.base_model` whose path does not pass through a module named
    `*embeddings*` or `pooler`: attention Q/K/V/output and the FFN intermediate/output layers of
    BERT, RoBERTa and other HF encoders. Embeddings, LayerNorms, biases, the pooler and the
    classification head are never pruned. Raises ValueError when there is no such Linear.
    """
    base = getattr(model, "base_model", model)
    in_base = {id(m) for m in base.modules()}
    params = {}
    for name, module in model.named_modules():
        parts = name.split(".")
        if (isinstance(module, nn.Linear) and id(module) in in_base
                and not any("embeddings" in p or p == "pooler" for p in parts)):
            params[f"{name}.weight"] = module.weight
    if not params:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layers inside its base model: nothing to prune")
    return params


def layer_of(name: str) -> int:
    """Encoder layer index in a parameter or module name (the `.layer.<i>.` part, or ModernBERT's `.layers.<i>.`),
    -1 when it has none."""
    m = re.search(r"\.layers?\.(\d+)\.", name)
    return int(m.group(1)) if m else -1


def encoder_layers(model: nn.Module) -> tuple[Layout, str, list[nn.Module]]:
    """(layout, qualified prefix, layers) of a model the structured path knows, e.g.
    (BERT, "bert.encoder.layer", [BertLayer, ...]). Raises ValueError (naming the known model types) for
    any other architecture, and for one whose layers lack a Linear its layout declares."""
    layout = layout_of(model)
    try:
        layers = layout.layer_list(model)
        linears = [layers[0].get_submodule(p) for p, _ in layout.head_projections_in(layers[0])]
        linears += [layers[0].get_submodule(p) for p in (layout.attention_output, layout.ffn_up, layout.ffn_down)]
    except (AttributeError, IndexError):
        linears = []
    if not linears or not all(isinstance(m, nn.Linear) for m in linears):
        needed = ", ".join((*layout.head_projections, layout.attention_output, layout.ffn_up, layout.ffn_down))
        raise ValueError(f"{type(model).__name__} does not have the {layout.name} layout its model type "
                         f"{model.config.model_type!r} implies ({layout.layers}[i] with {needed}). "
                         "Use GRANULARITY='weights'.")
    return layout, layout.layers_prefix(model), layers


class PrunableUnits:
    """The unit groups of a model at one granularity, with their parameters.

    `groups`: name -> UnitGroup, the groups criteria score (weights; or each layer's heads and neurons);
    `whole`: name -> UnitGroup of the `WHOLE_KINDS` asked for (`whole`, heads+neurons only): "<layers>.mlps"
    and/or "<layers>.layers", shape (L,); `params`: qualified weight name -> nn.Parameter; `layout`: the
    family's `Layout` (heads+neurons; None for weights). Names keep the dense model's layer numbers even after
    whole layers are removed (`modules` maps them to the live model). Raises ValueError for an unknown
    granularity or whole kind, whole kinds at "weights", or (heads+neurons) an architecture without a declared
    layout (`pruning.core.layouts.layout_of`)."""

    def __init__(self, model: nn.Module, granularity: str = "weights", whole: tuple[str, ...] = ()):
        if granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity {granularity!r}; choose one of {GRANULARITIES}")
        if any(k not in WHOLE_KINDS for k in whole) or (whole and granularity == "weights"):
            raise ValueError(f"whole unit kinds {tuple(whole)}: only {WHOLE_KINDS} exist, and only at "
                             "granularity 'heads+neurons'")
        self.model = model
        self.granularity = granularity
        self.groups: dict[str, UnitGroup] = {}
        self.whole: dict[str, UnitGroup] = {}
        self.layout: Layout | None = None  # heads+neurons: where the units live (`pruning.core.layouts`)
        self.prefix = ""                   # heads+neurons: qualified name of the layer list
        if granularity == "weights":
            self.params = prunable_parameters(model)
            for name, p in self.params.items():
                self.groups[name] = UnitGroup(name, "weight", layer_of(name), p.numel(), tuple(p.shape))
        else:
            self.layout, prefix, layers = encoder_layers(model)
            self.prefix, lay = prefix, self.layout
            for i, layer in enumerate(layers):
                d = lay.head_size(layer)
                n_heads = lay.heads_in(layer)
                at = f"{prefix}.{i}"
                self.groups[f"{at}.heads"] = UnitGroup(f"{at}.heads", "head", i, n_heads, (n_heads,), [
                    *(Slice(f"{at}.{p}", 0, d, False, chunks) for p, chunks in lay.head_projections_in(layer)),
                    Slice(f"{at}.{lay.attention_output}", 1, d, True)])
                n_neurons = lay.ffn_size_in(layer)
                self.groups[f"{at}.neurons"] = UnitGroup(f"{at}.neurons", "neuron", i, n_neurons, (n_neurons,), [
                    Slice(f"{at}.{lay.ffn_up}", 0, 1, False, lay.ffn_chunks),
                    Slice(f"{at}.{lay.ffn_down}", 1, 1, True)])
            for kind in WHOLE_KINDS:
                if kind in whole:
                    name = f"{prefix}.{kind}s"
                    self.whole[name] = UnitGroup(name, kind, -1, len(layers), (len(layers),))
            for g in self.mask_groups.values():
                g.origin = torch.arange(g.size)
            modules = dict(model.named_modules())
            self.params = {f"{s.module}.weight": modules[s.module].weight for g in self.groups.values()
                           for s in g.slices}

    @property
    def mask_groups(self) -> dict[str, UnitGroup]:
        """Every group a keep-mask covers: the scored `groups`, then the `whole` ones (in that order)."""
        return {**self.groups, **self.whole}

    def whole_group(self, kind: str) -> UnitGroup | None:
        """The "mlp" or "layer" group, or None when this run has none."""
        return next((g for g in self.whole.values() if g.kind == kind), None)

    def live_layers(self) -> list[int]:
        """Dense-model indices of the encoder layers the live model still has, in order."""
        layers = self.whole_group("layer")
        if layers is not None:
            return layers.origin.tolist()
        return sorted({g.layer for g in self.groups.values()})

    def modules(self) -> dict[str, nn.Module]:
        """The live model's modules by qualified name, with the dense model's layer numbers: after whole
        layers are removed, the live "<layers>.1" is the dense "<layers>.3" if layers 1 and 2 went."""
        named = dict(self.model.named_modules())
        if self.whole_group("layer") is None:
            return named
        origin, prefix = self.live_layers(), self.prefix + "."
        out = {}
        for name, module in named.items():
            if name.startswith(prefix):
                live, dot, rest = name[len(prefix):].partition(".")
                name = f"{prefix}{origin[int(live)]}{dot}{rest}"
            out[name] = module
        return out

    @torch.no_grad()
    def whole_scores(self, scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Scores of the whole groups from their heads' and neurons' scores, in the original space.

        `scores`: group -> float tensor of the dense group's shape, -inf for removed units (`to_original`).
        A whole MLP scores the sum of its neurons' scores. A layer scores its heads' sum divided by the mean of
        that sum over the live layers, plus the same for its MLP, so heads and neurons weigh alike whatever the
        criterion's units. (For accumulated first-order criteria a unit's score is |dL/dc| of its gate; the
        sum over an MLP's neurons bounds the |dL/dc| of a gate on the whole MLP that Michel et al. 2019 and
        Prasanna et al. 2020 use.) Where the family's layer 0 is built unlike the others
        (`Layout.first_layer_stays`), it scores the largest float32 and is never removed; the last live layer of a
        classifier that reads its first token scores half that (`layer_protection`, issue 36): it goes
        only when the rate leaves no other layer. Returns whole group ->
        float tensor (L,), -inf for removed MLPs / layers."""
        if not self.whole:
            return {}
        dense_layers = next(iter(self.whole.values())).size
        sums = {kind: torch.full((dense_layers,), float("-inf")) for kind in ("head", "neuron")}
        for n, g in self.groups.items():
            live = scores[n].detach().float().cpu()
            live = live[torch.isfinite(live)]
            if len(live):
                sums[g.kind][g.layer] = live.sum()
        live_layers = self.live_layers()
        out = {}
        for name, g in self.whole.items():
            if g.kind == "mlp":
                out[name] = sums["neuron"].clone()
            else:
                total = torch.zeros(dense_layers)
                for kind in ("head", "neuron"):
                    values = sums[kind][live_layers]
                    values = values[torch.isfinite(values)]
                    mean = float(values.mean()) if len(values) else 0.0
                    total += torch.where(torch.isfinite(sums[kind]), sums[kind], 0) / (mean or 1.0)
                score = torch.full((dense_layers,), float("-inf"))
                score[live_layers] = total[live_layers]
                for layer, value in layer_protection(self).items():  # layer 0 of some families; the classifier's layer, ranked above every other layer
                    score[layer] = value
                out[name] = score
            removed = torch.ones(dense_layers, dtype=torch.bool)
            removed[g.origin] = False
            out[name][removed] = float("-inf")
        return out

    def compose(self, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Keep-masks with what the whole groups remove carried down to the units: a removed layer loses its
        heads, neurons and MLP; a removed MLP its neurons. `masks`: group -> bool tensor of the dense group's
        shape, for every mask group; returns new tensors of the same shapes."""
        if not self.whole:
            return masks
        out = {n: m.clone() for n, m in masks.items()}
        mlps, layers = self.whole_group("mlp"), self.whole_group("layer")
        if layers is not None and mlps is not None:
            out[mlps.name] &= out[layers.name].to(out[mlps.name].device)
        for n, g in self.groups.items():
            if layers is not None and not bool(out[layers.name][g.layer]):
                out[n][:] = False
            if mlps is not None and g.kind == "neuron" and not bool(out[mlps.name][g.layer]):
                out[n][:] = False
        return out

    @classmethod
    def of_parameters(cls, params: dict[str, nn.Parameter]) -> "PrunableUnits":
        """Weights granularity over the given tensors (for criteria used outside a model, and tests)."""
        units = cls.__new__(cls)
        units.model, units.granularity, units.params, units.layout = None, "weights", dict(params), None
        units.whole, units.prefix = {}, ""
        units.groups = {n: UnitGroup(n, "weight", layer_of(n), p.numel(), tuple(p.shape)) for n, p in params.items()}
        return units

    @property
    def structured(self) -> bool:
        """True for "heads+neurons" (a unit spans slices of several weights), False for "weights"."""
        return self.granularity != "weights"

    def kinds(self) -> list[str]:
        """The unit kinds present, in group order: ["weight"], or ["head", "neuron"] and any whole kinds
        ("mlp", "layer")."""
        return list(dict.fromkeys(g.kind for g in self.mask_groups.values()))

    def output_params(self, group: str | None = None) -> dict[str, nn.Parameter]:
        """The weights whose gradients give a unit's first-order (Taylor) score (of one group, or all)."""
        groups = [self.groups[group]] if group else self.groups.values()
        if not self.structured:
            return {g.name: self.params[g.name] for g in groups}
        return {f"{s.module}.weight": self.params[f"{s.module}.weight"] for g in groups for s in g.slices if s.output}

    def live_size(self, group: str) -> int:
        """Units of `group` the live model still has: len(origin), or the dense size when origin is None."""
        g = self.mask_groups[group]
        return g.size if g.origin is None else len(g.origin)

    def _per_unit(self, g: UnitGroup, tensors: dict[str, torch.Tensor], output_only: bool, fn) -> torch.Tensor:
        """fn(entries) summed over each unit's entries, over its output-side slices or all of them."""
        total = None
        for s in g.slices:
            if output_only and not s.output:
                continue
            t = tensors[f"{s.module}.weight"]
            v = fn(s.per_unit(t, self.live_size(g.name))).sum(1)
            total = v if total is None else total + v
        return total

    def reduce(self, tensors: dict[str, torch.Tensor], groups: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Per-weight values summed over each unit's output-side entries (the identity for weights),
        for every group or the listed ones. `tensors`: weight name -> tensor of the live weight's
        shape; returns group name -> tensor of (live units,) (the weight's shape for weights)."""
        if not self.structured:
            return tensors
        return {n: self._per_unit(self.groups[n], tensors, True, lambda x: x) for n in groups or self.groups}

    def norm(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """L2 norm of each unit's entries over all its weights (|w| for weights): the group-lasso norm.
        `tensors`: weight name -> live weight; returns group name -> float tensor (live units,)."""
        if not self.structured:
            return {n: t.abs() for n, t in tensors.items()}
        return {n: self._per_unit(g, tensors, False, lambda x: x.float().square()).sqrt()
                for n, g in self.groups.items()}

    def to_original(self, live: dict[str, torch.Tensor], fill: float) -> dict[str, torch.Tensor]:
        """Live per-unit values placed at their original indices; removed units get `fill`.
        `live`: group -> tensor (live units,); returns group -> tensor (dense units,), same dtype."""
        if not self.structured:
            return live
        out = {}
        for n, g in self.groups.items():
            full = torch.full((g.size,), fill, dtype=live[n].dtype, device=live[n].device)
            full[g.origin.to(full.device)] = live[n]
            out[n] = full
        return out

    def live_mask(self, group: str, mask: torch.Tensor) -> torch.Tensor:
        """An original-space keep-mask (dense units,) restricted to the units the live model still has
        (live units,)."""
        g = self.mask_groups[group]
        return mask if g.origin is None else mask[g.origin.to(mask.device)]


def reads_first_token(model: nn.Module) -> bool:
    """Whether the classifier reads only the last layer's first token (BERT's pooler, RoBERTa's, DistilBERT's and
    DeBERTa's heads, ModernBERT with classifier_pooling="cls")."""
    return getattr(model.config, "classifier_pooling", "cls") == "cls"


def layer_protection(units: PrunableUnits) -> dict[int, float]:
    """Dense index -> the score a protected live layer takes in a score-based pick: layer 0 where the family builds it
    unlike the others (`Layout.first_layer_stays`: the largest float32, never removed), and the last live layer of a
    first-token classifier (see `pruning.core.whole_scores`' docstring: half the largest float32, ranked above every unprotected layer,
    so it goes only when the rate leaves nothing else, e.g. 2 of 3 layers with layer 0 kept)."""
    live = units.live_layers()
    out = {}
    if reads_first_token(units.model) and live:
        out[live[-1]] = torch.finfo(torch.float32).max / 2
    if units.layout.first_layer_stays and 0 in live:
        out[0] = torch.finfo(torch.float32).max
    return out


def protected_layers(units: PrunableUnits) -> list[int]:
    """Dense indices of the layers `layer_protection` ranks above the others, in order."""
    return sorted(layer_protection(units))
