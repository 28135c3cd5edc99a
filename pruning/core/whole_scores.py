"""Scores of whole MLPs and whole encoder layers (issue 36): which can go.

- Fisher information of whole-unit gates (Kwon et al., NeurIPS 2022, extended from heads and neurons as Michel et
  al. 2019 and Prasanna et al. 2020 gate whole MLPs): a per-example gate m on each MLP's output (the FFN down
  projection's output, bias included: m = 0 is the MLP removed, `surgery.remove_units`) and on each layer
  (output = input + m * (layer(input) - input), computed as y + (m - 1)(y - x) so that m = 1 gives the
  layer's output bit for bit: m = 0 is the layer removed); the diagonal empirical Fisher
  1/|D| sum_x (dL(x)/dm)^2 at m = 1. `WholeGates` puts the gates on; `pruning.core.fisher.ExampleMasks` those of heads
  and neurons; `gate_fisher` takes every kind in one batched backward per batch.
- Block influence (ShortGPT, Men et al. 2024): BI_l = 1 - cos(x_l, y_l), the cosine of a layer's input and output
  hidden states, averaged over the real tokens; a layer that changes nothing (identity) has BI 0.
- The held-out loss of dropping the layer (`drop_loss`): the mean loss with the layer skipped, minus the full
  model's; the direct measurement that the two estimates above stand in for.

`pruning.core.units.protected_layers`: which layers a score-based pick never removes. Measured on MiniLM fine-tuned on SST-2
(docs/RESULTS.md, issue 36): the classifier reads the last layer's first token, and before the last layer that
token is the same for every sentence (pairwise cosine 0.9999 after layer 4 of 6; 98% of its energy in one
dimension, an attention sink); only the last layer writes the sentence into it. A model without its last layer
therefore starts from a constant input to the classifier and, in the retraining budget, stays at chance.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from torch.nn import functional as F

from pruning.core.fisher import ExampleMasks, FisherInformation, example_losses, frozen
from pruning.core.units import PrunableUnits


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _replace_first(output, value):
    return (value, *output[1:]) if isinstance(output, tuple) else value


def _layer_input(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


class WholeGates:
    """Per-example gates on whole MLPs and whole layers of `units` (those of `kinds`, default the units' whole
    kinds). `set(batch_size)` makes fresh gates of shape (batch_size, live layers) per kind, valued 1, with
    requires_grad, named as the whole groups ("<layers>.mlps", "<layers>.layers"); the hooks read them at the next
    forward. `block_influence`: when True, each forward also adds every layer's summed 1 - cos(input, output) over
    real tokens to `bi_sums` (dense layer order) and the tokens to `bi_tokens`. A context manager: hooks go on exit."""

    def __init__(self, units: PrunableUnits, kinds: tuple[str, ...] | None = None, block_influence: bool = False):
        self.units, self.masks, self.handles, self.attention_mask = units, {}, [], None
        self.kinds = tuple(k for k in (kinds if kinds is not None else tuple(g.kind for g in units.whole.values()))
                           if k in ("mlp", "layer"))
        self.block_influence = block_influence
        live = units.live_layers()
        dense = len(live) if units.whole_group("layer") is None else units.whole_group("layer").size
        self.bi_sums, self.bi_tokens = torch.zeros(dense, dtype=torch.float64), 0
        layout, prefix = units.layout, units.prefix
        modules = units.modules()
        self.live = live
        for j, layer in enumerate(live):
            if "mlp" in self.kinds:
                down = modules[f"{prefix}.{layer}.{layout.ffn_down}"]
                self.handles.append(down.register_forward_hook(self._mlp_hook(j)))
            if "layer" in self.kinds or block_influence:
                module = modules[f"{prefix}.{layer}"]
                store = {}
                self.handles.append(module.register_forward_pre_hook(self._keep_input(store), with_kwargs=True))
                self.handles.append(module.register_forward_hook(self._layer_hook(j, layer, store)))

    def _name(self, kind: str) -> str:
        return f"{self.units.prefix}.{kind}s"

    def _mlp_hook(self, j: int):
        def hook(module, args, output):
            m = self.masks.get(self._name("mlp"))
            if m is None:
                return None
            return output * m[:, j].to(output.device, output.dtype).view(-1, *([1] * (output.dim() - 1)))
        return hook

    @staticmethod
    def _keep_input(store: dict):
        def hook(module, args, kwargs):
            store["x"] = _layer_input(args, kwargs)
        return hook

    def _layer_hook(self, j: int, layer: int, store: dict):
        def hook(module, args, output):
            x, y = store.pop("x"), _first(output)
            if self.block_influence and self.attention_mask is not None:
                with torch.no_grad():
                    real = self.attention_mask.to(y.device).bool()
                    cos = F.cosine_similarity(x.float(), y.float(), dim=-1)[real]
                    self.bi_sums[layer] += float((1 - cos).sum())
                    if j == 0:
                        self.bi_tokens += int(real.sum())
            m = self.masks.get(self._name("layer"))
            if m is None:
                return None
            m = m[:, j].to(y.device, y.dtype).view(-1, *([1] * (y.dim() - 1)))
            return _replace_first(output, y + (m - 1) * (y - x))  # = x + m (y - x); exactly y at m = 1
        return hook

    def set(self, batch_size: int, attention_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Fresh gates for the next forward: whole group name -> (batch_size, live layers), requires_grad.
        `attention_mask` (batch, tokens): the real tokens block influence averages over."""
        self.attention_mask = attention_mask
        self.masks = {self._name(k): torch.ones(batch_size, len(self.live)).requires_grad_(True) for k in self.kinds}
        return self.masks

    def clear(self) -> None:
        """No gates at the next forwards (the hooks pass everything through unchanged)."""
        self.masks, self.attention_mask = {}, None

    def block_influence_scores(self) -> torch.Tensor:
        """Mean block influence per dense layer (float32 (L,)); NaN for layers never seen."""
        if self.bi_tokens == 0:
            return torch.full_like(self.bi_sums, float("nan"), dtype=torch.float32)
        out = (self.bi_sums / self.bi_tokens).float()
        seen = torch.zeros_like(out, dtype=torch.bool)
        seen[self.live] = True
        return out.masked_fill(~seen, float("nan"))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def __enter__(self) -> "WholeGates":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def gate_fisher(model: nn.Module, units: PrunableUnits, batches: Iterable[dict], kinds=("head", "neuron", "mlp", "layer"),
                block_influence: bool = True):
    """The empirical Fisher information of the gates of every kind in `kinds` over `batches` (dicts of model inputs
    with "labels"), in one backward per batch, model in eval mode. Returns (`pruning.core.fisher.FisherInformation` over
    the head and neuron groups and the whole groups "<layers>.mlps" / "<layers>.layers": grads (examples, live
    units), diagonal (live units,)), and the mean block influence per dense layer (float32 (L,), when asked; else
    None). Raises ValueError for a batch without labels."""
    grads: dict[str, list[torch.Tensor]] = {}
    examples = 0
    unit_kinds = [k for k in kinds if k in ("head", "neuron")]
    with frozen(model), ExampleMasks(units) as masks, \
            WholeGates(units, tuple(k for k in kinds if k in ("mlp", "layer")), block_influence) as whole:
        for batch in batches:
            if "labels" not in batch:
                raise ValueError("Fisher information needs labelled examples: a batch has no 'labels'")
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            size = batch["labels"].shape[0]
            variables = {n: m for n, m in masks.set(size).items() if units.groups[n].kind in unit_kinds}
            variables.update(whole.set(size, inputs.get("attention_mask")))
            loss = example_losses(model(**inputs).logits, batch["labels"]).sum()
            for name, g in zip(variables, torch.autograd.grad(loss, list(variables.values()), allow_unused=True)):
                grads.setdefault(name, []).append(torch.zeros_like(variables[name]) if g is None else g.detach().float())
            examples += size
        bi = whole.block_influence_scores() if block_influence else None
    stacked = {name: torch.cat(parts) for name, parts in grads.items()}
    return FisherInformation(stacked, {n: (g ** 2).mean(0) for n, g in stacked.items()}, examples), bi


@torch.no_grad()
def drop_loss(model: nn.Module, units: PrunableUnits, batches: list[dict]) -> torch.Tensor:
    """The held-out loss increase of dropping each live layer alone: mean per-example loss over `batches` with the
    layer skipped (its output replaced by its input) minus the full model's. float32 (dense layers,), NaN for
    layers already removed. Model in eval mode during the call."""
    was_training = model.training
    model.eval()

    def mean_loss():
        total, n = 0.0, 0
        for b in batches:
            inputs = {k: v for k, v in b.items() if k != "labels"}
            total += float(example_losses(model(**inputs).logits, b["labels"]).sum())
            n += b["labels"].shape[0]
        return total / n
    try:
        full = mean_loss()
        live = units.live_layers()
        dense = len(live) if units.whole_group("layer") is None else units.whole_group("layer").size
        out = torch.full((dense,), float("nan"))
        modules = units.modules()
        for layer in live:
            module = modules[f"{units.prefix}.{layer}"]
            store = {}
            handles = [module.register_forward_pre_hook(WholeGates._keep_input(store), with_kwargs=True),
                       module.register_forward_hook(lambda m, a, o: _replace_first(o, store.pop("x")))]
            try:
                out[layer] = mean_loss() - full
            finally:
                for h in handles:
                    h.remove()
    finally:
        model.train(was_training)
    return out
