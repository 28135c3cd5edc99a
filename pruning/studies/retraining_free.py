"""Pruning a fine-tuned model without retraining: Kwon et al., "A Fast Post-Training Pruning Framework for
Transformers" (NeurIPS 2022), on every family in `layouts.py`.

Three steps, each a function here, on the mask variables of `pruning.core.fisher` (one per attention head and FFN
neuron; 1 keeps a unit as it is, 0 removes it):

1. `search_mask`: which units stay under a FLOPs budget. Importance is the diagonal empirical Fisher
   information of the masks; each head and neuron costs the FLOPs it adds to a forward pass (`unit_costs`,
   counted as `results.forward_flops` counts them). For every number of heads kept, the most important heads
   are taken and the remaining budget is filled with the most important neurons; the split with the largest
   summed importance wins (the paper's Algorithm 1). One head of each layer always stays (the toolkit's rule:
   `surgery.remove_units`), so the budget cannot go below what those heads cost.
2. `rearrange`: within each layer, which units of the same count stay, under the layer's block of the Fisher
   information (units removed together can cost more, or less, than apart). Greedy swaps from the searched
   mask: add the next most important kept unit to the removed set, then drop from that set the unit whose
   return lowers the block-diagonal loss estimate most; the estimate never rises (the paper's Section 4.2).
3. `tune_masks`: the kept units' mask values, layer by layer, so each attention block's and FFN's output
   (with its residual) matches the unpruned model's on the sample: a linear least-squares problem in the mask
   values, since an output projection's output is linear in the per-unit scales of its input; solved damped
   (torch.linalg.lstsq on the normal equations plus `damping` x their mean diagonal), and kept only where it
   lowers the reconstruction error (the paper's Section 4.3). In the last layer of a classifier that reads the
   first token, only that token is matched. `apply` folds the tuned values into the output projections' weights
   (`surgery.fold_gates`) and removes the pruned units (`surgery.remove_units`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from pruning.core.fisher import ExampleMasks
from pruning.core.surgery import fold_gates, remove_units
from pruning.core.units import PrunableUnits, reads_first_token
from pruning.run.measurements import forward_flops, unit_flops

MAX_SCALE = 10.0  # a tuned mask value beyond this is taken for an ill-posed solve (Kwon et al.'s bound)


# --- 1. mask search -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Costs:
    """FLOPs over the sample's sentences: `unit` (group name -> FLOPs of one of its units), `dense` (the model
    as given, `results.forward_flops`) and `fixed` (what no head or neuron accounts for: embeddings' sums,
    LayerNorms' neighbours, the pooler and classifier)."""
    unit: dict[str, float]
    dense: float
    fixed: float

    def of(self, keep: dict[str, torch.Tensor]) -> float:
        """FLOPs of the model with only the units `keep` marks (group -> bool (live units,))."""
        return self.fixed + sum(self.unit[g] * int(m.sum()) for g, m in keep.items())


def unit_costs(model: nn.Module, units: PrunableUnits, lengths: list[int]) -> Costs:
    """The FLOPs `Costs` of `model`'s heads and neurons (`units`: heads+neurons) over sentences of `lengths`
    tokens."""
    per_layer = unit_flops(model, lengths)
    live = units.live_layers()
    unit = {name: per_layer[live.index(g.layer)][0 if g.kind == "head" else 1]
            for name, g in units.groups.items()}
    dense = forward_flops(model, lengths)
    return Costs(unit, dense, dense - sum(unit[n] * len(g.origin) for n, g in units.groups.items()))


def smallest_budget(costs: Costs, kinds: dict[str, str]) -> float:
    """The fewest FLOPs any mask can reach (`search_mask` keeps one head per head group): `costs.fixed` plus
    one head of every layer. `kinds`: group -> "head" or "neuron"."""
    return costs.fixed + sum(costs.unit[g] for g, kind in kinds.items() if kind == "head")


def search_mask(importance: dict[str, torch.Tensor], kinds: dict[str, str], costs: Costs,
                budget: float) -> dict[str, torch.Tensor]:
    """Keep-masks (group -> bool (units,)) of greatest summed `importance` (group -> (units,), e.g. the Fisher
    diagonal) whose model costs at most `budget` FLOPs (`costs.of`), with the most important head of every
    head group kept. `kinds`: group -> "head" or "neuron". Raises ValueError when the budget cannot even pay
    for one head per layer, naming the smallest fraction of the model's FLOPs it can reach."""
    forced = {g: int(importance[g].argmax()) for g in importance if kinds[g] == "head" and importance[g].numel()}
    floor = smallest_budget(costs, kinds)
    if budget < floor:
        raise ValueError(f"the FLOPs budget ({budget / costs.dense:.3f} of the model's) is below what one head per "
                         f"layer costs with every FFN neuron removed: at least {floor / costs.dense:.3f}")

    def ranked(kind: str, skip: dict[str, int]):
        rows = [(float(v), costs.unit[g], g, i) for g in importance if kinds[g] == kind
                for i, v in enumerate(importance[g].tolist()) if skip.get(g) != i]
        rows.sort(key=lambda r: -r[0])
        return rows, np.concatenate([[0.0], np.cumsum([r[0] for r in rows])]), \
            np.concatenate([[0.0], np.cumsum([r[1] for r in rows])])
    head_rows, head_gain, head_cost = ranked("head", forced)
    neuron_rows, neuron_gain, neuron_cost = ranked("neuron", {})
    best = None
    for k in range(len(head_rows) + 1):
        left = budget - floor - head_cost[k]
        if left < 0:
            break
        n = int(np.searchsorted(neuron_cost, left, side="right")) - 1
        score = head_gain[k] + neuron_gain[n]
        if best is None or score > best[0]:
            best = (score, k, n)
    _, k, n = best
    keep = {g: torch.zeros(importance[g].numel(), dtype=torch.bool) for g in importance}
    for g, i in forced.items():
        keep[g][i] = True
    for _, _, g, i in head_rows[:k] + neuron_rows[:n]:
        keep[g][i] = True
    return keep


# --- 2. mask rearrangement ----------------------------------------------------------------------------
def block_loss(keep: torch.Tensor, grads: torch.Tensor) -> float:
    """The second-order estimate of the loss increase from removing the units `keep` leaves out, under the
    block of the empirical Fisher information of one group: 1/2 * 1_Z^T (G^T G / N) 1_Z, with G `grads`
    (N examples, units) and Z the removed units."""
    removed = grads[:, ~keep].sum(1)
    return float(0.5 * (removed ** 2).sum() / grads.shape[0])


def rearrange(keep: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """The same number of units kept as `keep` (bool (units,)), chosen under the block-diagonal Fisher
    information of `grads` (N examples, units): each kept unit in turn, least important first (by its own
    squared gradients), joins the removed set, and the set gives back the unit whose return leaves the
    smallest `block_loss`. Each swap can only lower the estimate (giving back the newcomer undoes it)."""
    keep = keep.clone().bool()
    if bool(keep.all()) or not bool(keep.any()):
        return keep
    g = grads.T.double()  # (units, N)
    removed = (~keep).nonzero().squeeze(1).tolist()
    diagonal = (g ** 2).sum(1)
    for candidate in sorted(keep.nonzero().squeeze(1).tolist(), key=lambda i: float(diagonal[i])):
        trial = removed + [candidate]
        vectors = g[trial]
        total = vectors.sum(0)
        back = int(((total - vectors) ** 2).sum(1).argmin())
        del trial[back]
        removed = trial
    out = torch.ones_like(keep)
    out[removed] = False
    return out


# --- 3. mask tuning -----------------------------------------------------------------------------------
class _Stop(Exception):
    """Raised inside a forward pass once the tensors a step needs are captured: the rest is not run."""


@dataclass
class TuningReport:
    """Per group: the reconstruction error on the sample before and after tuning, each relative to the
    error of keeping nothing (1.0: no better than zero; 0.0: exact), and whether the tuned values were kept."""
    before: dict[str, float]
    after: dict[str, float]
    tuned: dict[str, bool]


def _tokens(x: torch.Tensor, attention_mask: torch.Tensor, first_only: bool) -> torch.Tensor:
    """(batch, tokens, features) -> (real tokens, features), or the first token of each sentence."""
    return x[:, 0] if first_only else x[attention_mask.bool()]


@torch.no_grad()
def tune_masks(model: nn.Module, units: PrunableUnits, keep: dict[str, torch.Tensor], batches: list[dict],
               damping: float = 1e-3, progress: Callable[[], None] | None = None
               ) -> tuple[dict[str, torch.Tensor], TuningReport]:
    """Mask values (group -> float (units,): tuned for kept units, 0 for pruned ones) that make each pruned
    layer reproduce the unpruned model's layer on `batches` (model inputs; the sample), and the report.

    Layer by layer, first the attention then the FFN: the pruned model (earlier layers already tuned) runs to
    the output projection; its per-unit outputs A (one column per kept unit: the unit's slice of the projection
    input times its columns of the weight) and the target b = (the unpruned model's projection output plus
    its residual) - bias - (this model's residual) give min_m |A m - b|^2 + lambda |m - 1|^2, lambda = `damping`
    x mean(diag A^T A). Solutions with a value beyond MAX_SCALE, not finite, or no lower error than the
    untuned mask are not used. `progress` is called once per group."""
    layout, was_training = units.layout, model.training
    model.eval()
    layers = layout.layer_list(model)
    first_only_last = reads_first_token(model)
    groups = {(g.layer, g.kind): name for name, g in units.groups.items()}
    live = units.live_layers()
    values = {name: keep[name].float().clone() for name in units.groups}
    targets = _targets(model, layout, layers, batches, first_only_last)
    report = TuningReport({}, {}, {})
    try:
        for position, layer in enumerate(layers):
            for kind in ("head", "neuron"):
                name = groups[(live[position], kind)]
                kept = values[name].nonzero().squeeze(1)
                if len(kept):
                    first_only = first_only_last and position == len(layers) - 1
                    gram, rhs, norm = _normal_equations(model, units, values, layout, layer, kind, kept, batches,
                                                        targets[(position, kind)], first_only)
                    solved, before, after = _solve(gram, rhs, norm, values[name][kept].double(), damping)
                    report.before[name], report.after[name] = before, min(before, after)
                    report.tuned[name] = after < before
                    if after < before:
                        values[name][kept] = solved.float()
                if progress is not None:
                    progress()
    finally:
        model.train(was_training)
    return values, report


def _capture(layout, layer: nn.Module, kind: str, store: dict, stop: bool):
    """Hooks on one sublayer: store["x"], the output projection's input before any mask (per batch); store["r"],
    the residual (the first input of `Layout.residual_input`'s module in this forward); with `stop`, the forward
    ends there (_Stop). Returns the handles."""
    out = layer.get_submodule(layout.attention_output if kind == "head" else layout.ffn_down)
    residual = layer.get_submodule(layout.residual_input(kind))

    def take_residual(module, args):
        store.setdefault("r", args[0])  # DeBERTa's shared query projection runs again on positions: keep the first

    def take_input(module, args):
        store["x"] = args[0]
        if stop:
            raise _Stop
    return [residual.register_forward_pre_hook(take_residual), out.register_forward_pre_hook(take_input, prepend=True)]


def _targets(model, layout, layers, batches, first_only_last) -> dict[tuple[int, str], list[torch.Tensor]]:
    """The unpruned model's output-projection output plus residual at every sublayer, per batch (real tokens,
    or the first token in the last layer of a first-token classifier): one forward pass per batch."""
    stores = {(i, kind): {} for i in range(len(layers)) for kind in ("head", "neuron")}
    handles, out = [], {key: [] for key in stores}
    for (i, kind), store in stores.items():
        handles += _capture(layout, layers[i], kind, store, stop=False)
        projection = layers[i].get_submodule(layout.attention_output if kind == "head" else layout.ffn_down)
        handles.append(projection.register_forward_hook(lambda m, a, o, store=store: store.__setitem__("y", o)))
    try:
        for batch in batches:
            for store in stores.values():
                store.clear()
            model(**batch)
            for (i, kind), store in stores.items():
                first = first_only_last and i == len(layers) - 1
                out[(i, kind)].append(_tokens(store["y"] + store["r"], batch["attention_mask"], first))
    finally:
        for h in handles:
            h.remove()
    return out


def _normal_equations(model, units, values, layout, layer, kind, kept, batches, targets, first_only):
    """(A^T A, A^T b, |b|^2) of one sublayer's least-squares problem (see `tune_masks`), summed over batches,
    in float64."""
    projection = layer.get_submodule(layout.attention_output if kind == "head" else layout.ffn_down)
    weight = projection.weight.detach()
    bias = projection.bias.detach() if projection.bias is not None else torch.zeros(weight.shape[0])
    width = layout.head_size(layer) if kind == "head" else 1
    units_now = weight.shape[1] // width
    w = weight.view(weight.shape[0], units_now, width)[:, kept]  # (hidden, K, width)
    size = len(kept)
    gram, rhs, norm = torch.zeros(size, size, dtype=torch.float64), torch.zeros(size, dtype=torch.float64), 0.0
    store: dict = {}
    handles = _capture(layout, layer, kind, store, stop=True)
    try:
        with ExampleMasks(units, values) as masks:
            for batch, target in zip(batches, targets):
                store.clear()
                masks.set(batch["input_ids"].shape[0])
                try:
                    model(**batch)
                except _Stop:
                    pass
                x = _tokens(store["x"], batch["attention_mask"], first_only).view(-1, units_now, width)[:, kept]
                b = (target - bias - _tokens(store["r"], batch["attention_mask"], first_only)).double()
                if kind == "head":  # each head's output: its context times its columns of the projection
                    per_unit = torch.einsum("nkd,okd->kno", x, w).double()  # (K, tokens, hidden)
                    gram += torch.einsum("kno,jno->kj", per_unit, per_unit)
                    rhs += torch.einsum("kno,no->k", per_unit, b)
                else:  # a neuron's output is its activation times its column: Gram = (a^T a) * (W^T W)
                    a, wk = x.squeeze(-1).double(), w.squeeze(-1).double()
                    gram += (a.T @ a) * (wk.T @ wk)
                    rhs += (a * (b @ wk)).sum(0)
                norm += float((b ** 2).sum())
    finally:
        for h in handles:
            h.remove()
    return gram, rhs, norm


def _solve(gram: torch.Tensor, rhs: torch.Tensor, norm: float, current: torch.Tensor, damping: float):
    """(damped least-squares solution, relative error at `current`, relative error at the solution); the
    error of values m is |A m - b|^2 = m^T G m - 2 m^T c + |b|^2, relative to |b|^2."""
    def error(m):
        return float(m @ gram @ m - 2 * m @ rhs + norm) / max(norm, 1e-30)
    scale = damping * float(gram.diagonal().mean()) + 1e-12
    eye = torch.eye(len(rhs), dtype=gram.dtype)
    solved = torch.linalg.lstsq(gram + scale * eye, (rhs + scale * current).unsqueeze(1)).solution.squeeze(1)
    before = error(current)
    if not bool(torch.isfinite(solved).all()) or float(solved.abs().max()) > MAX_SCALE:
        return current, before, before
    return solved, before, error(solved)


# --- applying the mask ----------------------------------------------------------------------------------
def apply(units: PrunableUnits, values: dict[str, torch.Tensor]) -> dict[str, int]:
    """Fold the mask `values` (group -> (units,), 0 = pruned) into the output projections' weights and remove
    the pruned units: the model then computes without hooks what it computed with these masks. Returns the
    units removed per group (`surgery.remove_units`)."""
    fold_gates(units, values)
    return remove_units(units, {n: v != 0 for n, v in values.items()})


def sample_batches(rows: list[dict], collate, batch_size: int) -> Iterable[dict]:
    """`rows` (tokenized examples) in batches of `batch_size`, padded by `collate`, as torch tensors."""
    return [collate(rows[i:i + batch_size]) for i in range(0, len(rows), batch_size)]
