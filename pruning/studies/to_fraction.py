"""Pruning to a fraction of the full model's score (Prasanna et al., EMNLP 2020, "When BERT Plays the Lottery,
All Tickets Are Winning"): importance of heads and whole MLPs from gates on their outputs, the iterative search
that removes a step of them at a time until the dev score falls below KEEP_FRACTION of the full model's, and its
unstructured counterpart, iterative global magnitude pruning.

Units and masks. A structured to-fraction mask is a dict group name -> bool tensor (True = kept):
- "<prefix>.<i>.heads", shape (H,): layer i's attention heads;
- "<prefix>.<i>.neurons", shape (I,): layer i's FFN neurons, all True, or all False where layer i's MLP is removed;
- "<prefix>.mlps", shape (L,): True where layer i's MLP is kept;
with <prefix> = `Layout.layers_prefix(model)` ("bert.encoder.layer" for a BERT classifier). An unstructured mask is
weight name -> bool tensor of the weight's shape over `pruning.core.units.prunable_parameters`.

Importance (Michel et al., NeurIPS 2019, "Are Sixteen Heads Really Better than One?", section 4.1): a gate xi_h = 1
multiplies head h's output (its context vector, the input columns of the attention output projection:
`pruning.core.surgery.UnitGates`), and a gate xi_m = 1 multiplies layer m's whole MLP output (the FFN down projection's
output, bias included, before dropout, the residual and LayerNorm: `MlpGates`). I_u = |sum over batches of dL/dxi_u|
(L: the batch's mean task loss, model in eval mode, so no dropout). Michel et al.'s code sums |dL/dxi| per batch
instead (`absolute="batch"`); they also divide head importance by its L2 norm over each layer's heads, which
Prasanna et al. kept (`normalize_heads`); MLP importance is ranked raw (one MLP per layer: a per-layer norm would make
them all 1). Removed units are gated at 0 (masking, not physical removal), and their importance is -inf.
Importance is computed on train rows (lottery.py: IMPORTANCE_EXAMPLES of those the full model trained on), so the
dev set only decides where the search stops.

Unstructured (weights): iterative magnitude pruning, each step removing STEP of the remaining prunable weights
with the smallest |w| over all tensors (global), with the same stopping rule. There is no retraining and no
rewinding between steps: the search prunes the fine-tuned weights as the structured search prunes the fine-tuned
heads and MLPs (both tickets are found the same way, then trained from the pretrained weights), and retraining
after each of the ~15-25 steps would cost as many fine-tuning runs (on this project's CPUs, many times the rest of
the study). Without retraining the magnitudes never change, so step k's mask is exactly one-shot global magnitude
pruning at sparsity 1 - (1 - STEP)^k (up to rounding). Frankle & Carbin's IMP retrains between steps, which
lets a model recover and be pruned further: the sparsity reached here is likely below what IMP with retraining
would reach at the same KEEP_FRACTION.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from pruning.core.surgery import UnitGates
from pruning.core.units import PrunableUnits, prunable_parameters
from pruning.run import checkpoint as state_io

STATE_FILE = "search_state.safetensors"
CURVE_FILE = "search_curve.json"
ABSOLUTE = ("sum", "batch")


def mlp_group(prefix: str) -> str:
    """The name of the whole-MLP group: "<prefix>.mlps", e.g. "bert.encoder.layer.mlps"."""
    return f"{prefix}.mlps"


def is_mlp_group(name: str) -> bool:
    """True for the whole-MLP group of a to-fraction mask."""
    return name.endswith(".mlps")


def full_structured_mask(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every head, neuron and MLP of `model` kept, in the module docstring's format: heads and neurons groups
    in layer order (the order `PrunableUnits` gives), then "<prefix>.mlps". Raises ValueError (from
    `PrunableUnits`) for an architecture without a layout in `pruning.core.layouts`."""
    units = PrunableUnits(model, "heads+neurons")
    masks = {n: torch.ones(g.shape, dtype=torch.bool) for n, g in units.groups.items()}
    prefix = units.layout.layers_prefix(model)
    masks[mlp_group(prefix)] = torch.ones(len(units.layout.layer_list(model)), dtype=torch.bool)
    return masks


def mlp_name(masks: dict[str, torch.Tensor]) -> str:
    """The whole-MLP group of a structured mask. Raises KeyError when it has none."""
    names = [n for n in masks if is_mlp_group(n)]
    if len(names) != 1:
        raise KeyError("a to-fraction mask holds exactly one '<prefix>.mlps' group")
    return names[0]


def head_names(masks: dict[str, torch.Tensor]) -> list[str]:
    """The heads groups of a mask, in its order (layer order)."""
    return [n for n in masks if n.endswith(".heads")]


def with_neurons_following_mlps(masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The mask with each layer's neurons group set to its MLP's state: all True where the MLP is kept, all
    False where it is removed (the contract of the module docstring)."""
    mlps = masks[mlp_name(masks)]
    out = dict(masks)
    neurons = [n for n in masks if n.endswith(".neurons")]
    for i, name in enumerate(neurons):
        out[name] = torch.full_like(masks[name], bool(mlps[i]))
    return out


class MlpGates:
    """Multiplies layer i's whole MLP output (the FFN down projection's output, bias included) by gates[i], with a
    forward hook on that Linear; the output goes on to dropout, the residual and LayerNorm, so a gate of 0 removes
    the MLP. `gates`: tensor (L,), read at every forward. `remove()` takes the hooks off."""

    def __init__(self, model: nn.Module, gates: torch.Tensor):
        units = PrunableUnits(model, "heads+neurons")
        layout = units.layout
        self.gates, self.handles = gates, []
        for i, layer in enumerate(layout.layer_list(model)):
            self.handles.append(layer.get_submodule(layout.ffn_down).register_forward_hook(self._scale(i)))

    def _scale(self, i):
        def hook(module, args, output):
            return output * self.gates[i].to(output.dtype)
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


class StructuredGates:
    """Head gates (`UnitGates`, neurons at 1) and MLP gates (`MlpGates`) on `model`, set from a structured mask
    (module docstring): 1 for kept units, 0 for removed ones. `grad=True` makes the head and MLP gates leaf
    tensors that collect dL/dxi. Use as a context manager; the hooks come off at exit."""

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor], grad: bool = False):
        self.units = PrunableUnits(model, "heads+neurons")
        device = next(model.parameters()).device
        self.gates = {}
        for name, g in self.units.groups.items():
            if g.kind == "head":
                self.gates[name] = masks[name].to(device, torch.float32).clone().requires_grad_(grad)
            else:
                self.gates[name] = torch.ones(g.size, device=device)
        self.mlp = masks[mlp_name(masks)].to(device, torch.float32).clone().requires_grad_(grad)
        self._heads = UnitGates(self.units, self.gates)
        self._mlps = MlpGates(model, self.mlp)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._heads.remove()
        self._mlps.remove()


def gate_importance(model: nn.Module, batches: Iterable[dict], masks: dict[str, torch.Tensor],
                    absolute: str = "sum", normalize_heads: bool = True) -> dict[str, torch.Tensor]:
    """Michel et al.'s importance of every head and whole MLP under `masks` (module docstring).

    `batches`: dicts of model inputs with "labels" (the model's own loss is used). Returns every group of the
    mask: heads groups -> float tensor (H,), the mlps group -> (L,), and each neurons group -> (I,) its layer's
    MLP score (neurons go with their MLP); removed units get -inf. `absolute`: "sum"
    (|sum over batches|) or "batch" (sum over batches of |per batch|). Raises ValueError for another `absolute`
    or when no batch came."""
    if absolute not in ABSOLUTE:
        raise ValueError(f"absolute must be one of {ABSOLUTE}, got {absolute!r}")
    model.eval()
    heads = head_names(masks)
    mlp = mlp_name(masks)
    totals = {n: torch.zeros(masks[n].shape) for n in (*heads, mlp)}
    seen = 0
    with StructuredGates(model, masks, grad=True) as gates:
        leaves = {**{n: gates.gates[n] for n in heads}, mlp: gates.mlp}
        for batch in batches:
            device = next(model.parameters()).device
            loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
            grads = torch.autograd.grad(loss, list(leaves.values()))
            for (n, _), g in zip(leaves.items(), grads):
                g = g.detach().float().cpu()
                totals[n] += g.abs() if absolute == "batch" else g
            seen += 1
    if not seen:
        raise ValueError("gate_importance needs at least one batch")
    scores = {n: t.abs() for n, t in totals.items()}
    if normalize_heads:
        for n in heads:
            kept = masks[n].bool()
            norm = scores[n][kept].norm()
            scores[n] = scores[n] / (norm + 1e-20)
    neurons = [n for n in masks if n.endswith(".neurons")]
    for i, n in enumerate(neurons):  # a neuron is removed with its MLP: it ranks as its MLP
        scores[n] = scores[mlp][i].expand(masks[n].shape).clone()
    return {n: scores[n].masked_fill(~masks[n].bool(), float("-inf")) for n in masks}


def magnitude_importance(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """|w| of every prunable weight (`pruning.core.units.prunable_parameters`), -inf where `masks` removed it."""
    params = prunable_parameters(model)
    return {n: params[n].detach().abs().float().cpu().masked_fill(~masks[n].bool(), float("-inf")) for n in masks}


# --- one step of each search --------------------------------------------------------------------------
def heads_to_remove(remaining: int, step: float) -> int:
    """Heads one iteration removes: round(step * remaining), at least 1 (Python's round: halves to even)."""
    return max(1, round(step * remaining))


def structured_step(masks: dict[str, torch.Tensor], scores: dict[str, torch.Tensor], step: float,
                    mlp_step: int) -> dict[str, torch.Tensor]:
    """The mask after one iteration: `heads_to_remove(kept heads, step)` heads with the lowest scores, ranked
    over all layers, never the last head of a layer (so fewer when only last heads are left); and the `mlp_step`
    kept MLPs with the lowest scores (fewer when fewer are left). Ties: the first in layer, then head order.
    Neurons follow their MLP (`with_neurons_following_mlps`). `scores` as `gate_importance` returns them."""
    heads = head_names(masks)
    out = {n: m.clone() for n, m in masks.items()}
    candidates = [(float(scores[n][h]), li, h) for li, n in enumerate(heads) for h in range(masks[n].numel())
                  if bool(masks[n][h])]
    left = {n: int(masks[n].sum()) for n in heads}
    quota = heads_to_remove(len(candidates), step)
    for _, li, h in sorted(candidates, key=lambda c: (c[0], c[1], c[2])):
        if quota == 0:
            break
        n = heads[li]
        if left[n] > 1:
            out[n][h] = False
            left[n] -= 1
            quota -= 1
    mlp = mlp_name(masks)
    kept = [(float(scores[mlp][i]), i) for i in range(masks[mlp].numel()) if bool(masks[mlp][i])]
    for _, i in sorted(kept)[:mlp_step]:
        out[mlp][i] = False
    return with_neurons_following_mlps(out)


def weights_step(masks: dict[str, torch.Tensor], scores: dict[str, torch.Tensor], step: float) -> dict[str, torch.Tensor]:
    """The mask after one iteration of global magnitude pruning: max(1, round(step * kept)) of the kept weights
    with the lowest `scores` (|w|) over all tensors are removed. Ties: the first in tensor order, then position."""
    names = list(masks)
    flat_keep = torch.cat([masks[n].flatten() for n in names])
    flat = torch.cat([scores[n].flatten().float() for n in names]).masked_fill(~flat_keep, float("inf"))
    kept = int(flat_keep.sum())
    n_remove = min(kept, max(1, round(step * kept))) if kept else 0
    if n_remove:
        order = torch.argsort(flat, stable=True)[:n_remove]
        flat_keep = flat_keep.clone()
        flat_keep[order] = False
    out, at = {}, 0
    for n in names:
        size = masks[n].numel()
        out[n] = flat_keep[at:at + size].view(masks[n].shape)
        at += size
    return out


def counts(masks: dict[str, torch.Tensor]) -> dict[str, int]:
    """What a mask keeps: {"heads", "heads_total", "mlps", "mlps_total"} for a structured mask, {"weights",
    "weights_total"} for an unstructured one."""
    if any(is_mlp_group(n) for n in masks):
        heads = head_names(masks)
        mlp = masks[mlp_name(masks)]
        return {"heads": sum(int(masks[n].sum()) for n in heads), "heads_total": sum(masks[n].numel() for n in heads),
                "mlps": int(mlp.sum()), "mlps_total": mlp.numel()}
    return {"weights": sum(int(m.sum()) for m in masks.values()), "weights_total": sum(m.numel() for m in masks.values())}


# --- the search ---------------------------------------------------------------------------------------
@dataclass
class SearchResult:
    """What a to-fraction search found. `ticket`: the last mask whose dev score kept >= keep_fraction of the full
    model's (the full mask when the first step already fell below); `ticket_iteration`: its iteration (0 = full);
    `curve`: one point per evaluated mask (iteration, score, fraction of the full score, counts, meets);
    `order`: group -> float tensor of the group's shape, the removal order (lower = removed earlier; units never
    removed rank after all removed ones, by their last importance): the scores bad tickets are drawn from;
    `full_score`: the full model's dev score; `final`: the last mask evaluated (the first below the fraction, or the
    last one when nothing was left to remove)."""
    ticket: dict[str, torch.Tensor]
    ticket_iteration: int
    curve: list[dict]
    order: dict[str, torch.Tensor]
    full_score: float
    final: dict[str, torch.Tensor]


def to_fraction_search(initial: dict[str, torch.Tensor], importance: Callable[[dict], dict],
                       evaluate: Callable[[dict], float], step: Callable[[dict, dict], dict], keep_fraction: float,
                       state_dir: str | Path, settings: dict, max_iterations: int = 1000) -> SearchResult:
    """Prune iteratively until the dev score falls below `keep_fraction` of the full model's (Prasanna et al.).

    Iteration k (k = 1, 2, ...): scores = importance(current mask) (recomputed on the full, fine-tuned model with
    the current mask applied); new = step(current, scores); score = evaluate(new). The search stops at the first
    mask scoring below keep_fraction * evaluate(initial), or when a step removes nothing (or after
    `max_iterations`); the ticket is the last mask that kept the fraction. `importance` and `evaluate` are
    injected (lottery.py passes `gate_importance` / `magnitude_importance` and the task's dev metric; the tests a
    hand-made curve). `evaluate` returns the task's headline metric (higher is better).

    Resumable: after the full model's evaluation and after every iteration, the state (current and ticket masks,
    removal order, curve, `settings`) is written to state_dir/STATE_FILE atomically (temp file + os.replace),
    and the curve to state_dir/CURVE_FILE. A rerun with the same `settings` and mask groups continues from the
    last written iteration (a finished search returns at once); another `settings` raises ValueError naming the
    file. Raises ValueError for keep_fraction outside (0, 1] and for a full score <= 0 (a fraction of it means
    nothing: Matthews or Pearson at or below chance)."""
    if not 0 < keep_fraction <= 1:
        raise ValueError(f"KEEP_FRACTION must be in (0, 1], got {keep_fraction}")
    state_dir = Path(state_dir)
    path = state_dir / STATE_FILE
    settings = {**settings, "keep_fraction": keep_fraction}
    groups = {n: list(m.shape) for n, m in initial.items()}
    if path.exists():
        st = _read_state(path, groups, settings)
    else:
        full = float(evaluate(initial))
        if not full > 0:
            raise ValueError(f"the full model's dev score is {full:.4g}: a fraction of it is no threshold. Train the "
                             "full model longer (or on more data) before pruning it to a fraction")
        st = {"iteration": 0, "done": False, "ticket_iteration": 0, "full_score": full, "sequence": 0,
              "current": {n: m.clone().bool() for n, m in initial.items()},
              "ticket": {n: m.clone().bool() for n, m in initial.items()},
              "order": {n: torch.full(m.shape, -1, dtype=torch.int32) for n, m in initial.items()},
              "curve": [_point(0, full, full, initial, keep_fraction)]}
        _write_state(path, st, groups, settings)
    while not st["done"]:
        if st["iteration"] >= max_iterations:
            st["done"] = True
            _write_state(path, st, groups, settings)
            break
        current = st["current"]
        scores = importance(current)
        new = step(current, scores)
        removed = {n: current[n] & ~new[n] for n in current}
        if not any(bool(r.any()) for r in removed.values()):
            st["done"] = True  # nothing left to remove
            st["last_scores"] = scores
            _write_state(path, st, groups, settings)
            break
        score = float(evaluate(new))
        k = st["iteration"] + 1
        _record_order(st, removed, scores)
        point = _point(k, score, st["full_score"], new, keep_fraction)
        st["curve"].append(point)
        st["iteration"], st["current"], st["last_scores"] = k, new, scores
        if point["meets"]:
            st["ticket"], st["ticket_iteration"] = new, k
        else:
            st["done"] = True
        _write_state(path, st, groups, settings)
    order = _final_order(st)
    return SearchResult(st["ticket"], st["ticket_iteration"], st["curve"], order, st["full_score"], st["current"])


def _point(k: int, score: float, full: float, masks: dict, keep_fraction: float) -> dict:
    return {"iteration": k, "score": score, "fraction_of_full": score / full, **counts(masks),
            "meets": score >= keep_fraction * full}


def _flat(tensors: dict, names: list[str]) -> torch.Tensor:
    return torch.cat([tensors[n].flatten() for n in names])


def _unflat(flat: torch.Tensor, like: dict) -> dict:
    out, at = {}, 0
    for n, t in like.items():
        out[n] = flat[at:at + t.numel()].view(t.shape)
        at += t.numel()
    return out


def _record_order(st: dict, removed: dict, scores: dict) -> None:
    """Give the units removed in this iteration the next sequence numbers, lowest importance first (ties: group
    order, then position)."""
    names = list(removed)
    gone = _flat(removed, names)
    index = gone.nonzero().flatten()
    ranked = index[torch.argsort(_flat(scores, names).double()[index], stable=True)]
    order = _flat(st["order"], names).clone()
    order[ranked] = torch.arange(st["sequence"], st["sequence"] + len(ranked), dtype=order.dtype)
    st["order"] = _unflat(order, st["order"])
    st["sequence"] += len(ranked)


def _final_order(st: dict) -> dict[str, torch.Tensor]:
    """The removal order as floats, with the survivors ranked after every removed unit, by their last importance
    (position order before any importance was computed)."""
    names = list(st["order"])
    order = _flat(st["order"], names).double()
    index = (order < 0).nonzero().flatten()
    last = st.get("last_scores")
    if last:
        index = index[torch.argsort(_flat(last, names).double()[index], stable=True)]
    order[index] = torch.arange(st["sequence"], st["sequence"] + len(index), dtype=order.dtype)
    return _unflat(order, st["order"])


def _write_state(path: Path, st: dict, groups: dict, settings: dict) -> None:
    tensors = {**state_io.pack_masks(st["current"], "current/"), **state_io.pack_masks(st["ticket"], "ticket/"),
               **{f"order/{n}": o for n, o in st["order"].items()}}
    if st.get("last_scores"):
        tensors.update({f"last/{n}": s.float() for n, s in st["last_scores"].items()})
    meta = {"groups": groups, "settings": settings, "iteration": st["iteration"], "done": st["done"],
            "ticket_iteration": st["ticket_iteration"], "full_score": st["full_score"], "sequence": st["sequence"],
            "curve": st["curve"]}
    state_io.write(str(path), tensors, meta)
    tmp = path.parent / (CURVE_FILE + ".tmp")
    tmp.write_text(json.dumps({"settings": settings, "full_score": st["full_score"],
                               "ticket_iteration": st["ticket_iteration"], "done": st["done"],
                               "curve": st["curve"]}, indent=1))
    os.replace(tmp, path.parent / CURVE_FILE)


def _read_state(path: Path, groups: dict, settings: dict) -> dict:
    tensors, meta = state_io.read(str(path))
    if meta["groups"] != groups or meta["settings"] != json.loads(json.dumps(settings)):
        raise ValueError(f"{path} holds a search made with other settings or another model ({meta['settings']}); "
                         f"this one asks for {settings}. Delete {path.parent} to search again, or use another OUT_DIR")
    shapes = {n: tuple(s) for n, s in groups.items()}
    last = {n: tensors[f"last/{n}"] for n in shapes if f"last/{n}" in tensors}
    return {"iteration": meta["iteration"], "done": meta["done"], "ticket_iteration": meta["ticket_iteration"],
            "full_score": meta["full_score"], "sequence": meta["sequence"], "curve": meta["curve"],
            "current": state_io.unpack_masks(tensors, "current/", shapes),
            "ticket": state_io.unpack_masks(tensors, "ticket/", shapes),
            "order": {n: tensors[f"order/{n}"] for n in shapes}, "last_scores": last if len(last) == len(shapes) else None}


def plot_curve(curve: list[dict], keep_fraction: float, path: str | Path, metric_label: str, title: str = "") -> None:
    """The search's curve to `path` (PNG, matplotlib): the dev score against the fraction of heads and of MLPs
    kept (structured), or of weights kept (unstructured), the threshold keep_fraction x full score, and the
    ticket (the last point that meets it) circled."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    structured = "heads" in curve[0]
    kinds = ("heads", "mlps") if structured else ("weights",)
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.6 * len(kinds), 3.6), squeeze=False)
    full = curve[0]["score"]
    ticket = max((p for p in curve if p["meets"]), key=lambda p: p["iteration"])
    for ax, kind in zip(axes[0], kinds):
        x = [p[kind] / p[f"{kind}_total"] for p in curve]
        ax.plot(x, [p["score"] for p in curve], marker="o", ms=3)
        ax.axhline(keep_fraction * full, color="tab:red", ls="--", lw=1, label=f"{keep_fraction:g} x full")
        ax.scatter([ticket[kind] / ticket[f"{kind}_total"]], [ticket["score"]], s=90, facecolors="none",
                   edgecolors="k", label=f"ticket (iteration {ticket['iteration']})")
        ax.set_xlabel(f"fraction of {kind} kept")
        ax.set_ylabel(metric_label)
        ax.invert_xaxis()
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- a finished run as the search's input ----------------------------------------------------------------
@dataclass
class RunInputs:
    """What a to-fraction search needs from a finished (dense, fine-tuned) run: its model (eval mode, eager
    attention), tokenizer and task, and the batches (dicts of tensors with "labels") of its dev set (`dev`, the
    first dev split, in file order) and of the train rows importance is computed on (`train`). `dev_labels`:
    (n,) in the order of `dev`."""
    model: nn.Module
    tokenizer: object
    task: object
    dev: list[dict]
    dev_labels: "np.ndarray"
    train: list[dict]
    description: str


def load_run(run_dir: str | Path, importance_examples: int, batch_size: int = 32) -> RunInputs:
    """The model saved in `run_dir`/model (AutoModelForSequenceClassification, attn_implementation="eager") and
    the data its results.json names (`pruning.data.loading.load` with the run's TASK, DATA_DIR, ...; tokenized with its
    MAX_LENGTH and TRUNCATION). Importance rows: the first `importance_examples` of the rows the run trained on
    (`loading.subset(train, TRAIN_SUBSET, SEED)` after HELD_OUT; 0 = all of them). Raises FileNotFoundError when the
    run has no results.json or model, and `pruning.data.loading.DataError` as `loading.load` does."""
    import numpy as np
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    from datasets import DatasetDict
    from pruning.data import loading
    from pruning.run import schema

    run_dir = Path(run_dir)
    results = schema.read(run_dir / "results.json")
    config = results.raw["config"]
    model = AutoModelForSequenceClassification.from_pretrained(str(run_dir / "model"), attn_implementation="eager")
    tokenizer = AutoTokenizer.from_pretrained(str(run_dir / "model"))
    task, datasets, _ = loading.load(**loading.run_task(config))
    trainable, _ = loading.hold_out(datasets["train"], config.get("HELD_OUT", 0) or 0)
    train = loading.subset(trainable, config.get("TRAIN_SUBSET", 0) or 0, config["SEED"])
    if importance_examples and importance_examples < len(train):
        train = train.select(range(importance_examples))
    encoded = loading.tokenize(DatasetDict(train=train, dev=datasets[task.dev]), tokenizer, config["MAX_LENGTH"],
                            task, config.get("TRUNCATION", "head"))
    collate = DataCollatorWithPadding(tokenizer)

    def batches(ds, by_length: bool) -> list[dict]:
        rows = [{k: r[k] for k in (*loading.MODEL_INPUTS, "label") if k in r} for r in ds.to_list()]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"])) if by_length else range(len(rows))
        rows = [rows[i] for i in order]
        return [collate(rows[i:i + batch_size]) for i in range(0, len(rows), batch_size)]
    model.eval()
    return RunInputs(model, tokenizer, task, batches(encoded["dev"], False), np.asarray(encoded["dev"]["label"]),
                     batches(encoded["train"], True), results.model or str(run_dir))


@torch.no_grad()
def dev_score(inputs: RunInputs, masks: dict[str, torch.Tensor], structured: bool) -> float:
    """The task's headline metric on the dev set with `masks` applied: gates for a structured mask
    (`StructuredGates`), zeroed weights for an unstructured one (`masked_weights`)."""
    import numpy as np
    model = inputs.model
    model.eval()
    device = next(model.parameters()).device
    context = StructuredGates(model, masks) if structured else masked_weights(model, masks)
    logits = []
    with context:
        for batch in inputs.dev:
            logits.append(model(**{k: v.to(device) for k, v in batch.items() if k != "labels"}).logits.float().cpu())
    predictions = inputs.task.predictions(torch.cat(logits).numpy())
    return float(inputs.task.score(predictions, np.asarray(inputs.dev_labels))[inputs.task.headline])


class masked_weights:
    """Context manager: the prunable weights of `model` multiplied by `masks` (weight name -> bool tensor), the
    originals put back at exit."""

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor]):
        self.params, self.masks, self.saved = prunable_parameters(model), masks, {}

    def __enter__(self):
        with torch.no_grad():
            for n, m in self.masks.items():
                p = self.params[n]
                self.saved[n] = p.detach().clone()
                p.mul_(m.to(p.device, p.dtype))
        return self

    def __exit__(self, *exc):
        with torch.no_grad():
            for n, w in self.saved.items():
                self.params[n].copy_(w)
