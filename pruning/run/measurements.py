"""What a run reports about its model: pruning summary, structure, parameters, FLOPs and speed.

Speed is measured side by side: the pruned model and a dense model of the same architecture take
turns on the same batches, in the same process, so the ratio survives a noisy machine.
"""
from __future__ import annotations

import copy
import statistics
import time

import torch
from torch import nn

from pruning.core.layouts import Layout, layout_of
from pruning.data.loading import MODEL_INPUTS


def sparsity_of(params: dict[str, torch.Tensor]) -> dict:
    """Sparsity counted from the weights themselves (exact zeros), not from the masks."""
    total = sum(p.numel() for p in params.values())
    zeros = sum(int((p == 0).sum()) for p in params.values())
    return {"prunable_params": total, "prunable_nonzero": total - zeros, "sparsity": zeros / total}


def structure(trainer) -> dict | None:
    """Heads kept per layer (original indices) and FFN neurons kept per layer, for heads+neurons runs, in the
    dense model's layer numbering (a removed layer keeps no heads and no neurons); with whole MLPs / layers,
    the dense indices of the layers that kept their MLP / themselves."""
    return structure_of(trainer.units)


def structure_of(units) -> dict | None:
    """`structure` of a `units.PrunableUnits` (None unless heads+neurons)."""
    if not units.structured:
        return None
    heads = [g for g in units.groups.values() if g.kind == "head"]
    neurons = [g for g in units.groups.values() if g.kind == "neuron"]
    out = {"heads_total_per_layer": [g.size for g in heads],
           "heads_kept": [g.origin.tolist() for g in heads],
           "heads_kept_per_layer": [len(g.origin) for g in heads],
           "neurons_total_per_layer": [g.size for g in neurons],
           "neurons_kept_per_layer": [len(g.origin) for g in neurons]}
    for kind in ("mlp", "layer"):
        group = units.whole_group(kind)
        out[f"{kind}s_kept"] = None if group is None else group.origin.tolist()
    return out


def summary(trainer) -> dict:
    """The pruning part of results.json: the settings, the run state's steps (eb_epoch in epochs),
    the detectors' distance history, the evaluations at pruning and the seconds of each phase."""
    run, config = trainer.run_state, trainer.pruning
    saved = run.to_dict()
    spe = run.steps_per_epoch or 1
    out = {"criterion": trainer.criterion.name, "granularity": config.granularity, "scope": config.scope,
           "rate": config.rate if not trainer.units.structured else None,
           "head_rate": config.head_rate if trainer.units.structured else None,
           "neuron_rate": config.neuron_rate if trainer.units.structured else None,
           "mlp_rate": config.mlp_rate if trainer.units.structured else None,
           "layer_rate": config.layer_rate if trainer.units.structured else None,
           "eb_found": run.eb_found, "eb_step": run.eb_step,
           "eb_epoch": run.eb_step / spe if run.eb_step is not None else None,
           "prune_step": run.prune_step, "search_steps_budget": run.search_steps,
           "retrain_steps": run.retrain_steps, "steps_per_epoch": run.steps_per_epoch,
           "fixed_mask_from": run.fixed_mask_from, "gradual": saved["gradual"],
           "detector": {"window": config.window, "epsilon": config.epsilon, "check_every": config.check_every},
           "distance_history": trainer.search.history(),
           "mask_fingerprint": run.mask_fingerprint, "removed_units": run.removed_units,
           "skipped_steps": run.skipped_steps,
           "evals": run.evals, "phase_seconds": saved["phase_seconds"],
           "structure": structure(trainer)}
    prune, stop, seconds = run.prune_step, run.stop_step, run.phase_seconds
    if prune and seconds["search"]:
        out["step_seconds"] = {"search": seconds["search"] / prune,
                               "retrain": seconds["retrain"] / max(1, stop - prune)}
    return out


def _encoder(model: nn.Module) -> tuple[nn.Module, str, Layout | None]:
    """(encoder module, its name in the base model, the family's layout) by `pruning.core.layouts`: e.g.
    DistilBERT's `transformer`; for an architecture without a layout, the base model's `encoder` and None.
    A family whose layer list sits on the base model itself (ModernBERT's `layers`, beside its `final_norm`) has
    the base model as its encoder and the name "": there the encoder is everything but the embeddings."""
    base = getattr(model, "base_model", model)
    try:
        layout = layout_of(model)
    except ValueError:
        return base.encoder, "encoder", None
    name = layout.layers.rsplit(".", 1)[0] if "." in layout.layers else ""
    return (base.get_submodule(name) if name else base), name, layout


def _in_encoder(name: str, encoder_name: str) -> bool:
    """Whether a base-model parameter or module name lies in the encoder (see `_encoder`)."""
    if encoder_name:
        return name.startswith(f"{encoder_name}.")
    return not (name == "embeddings" or name.startswith("embeddings."))


def parameter_split(model: nn.Module) -> dict:
    """Parameters in the embeddings, the encoder, and the rest (pooler + classifier: the 'head')."""
    base = getattr(model, "base_model", model)
    _, name, _ = _encoder(model)
    embeddings = sum(p.numel() for n, p in base.named_parameters() if n.startswith("embeddings."))
    encoder = sum(p.numel() for n, p in base.named_parameters() if _in_encoder(n, name))
    total = sum(p.numel() for p in model.parameters())
    return {"embeddings": embeddings, "encoder": encoder, "head": total - embeddings - encoder, "total": total,
            "without_embeddings": total - embeddings}


def _relative_position_macs(layer: nn.Module, layout: Layout, t: int, macs) -> tuple[int, set[int]]:
    """DeBERTa-v2's disentangled attention beyond the content-to-content scores, for one sentence of t tokens:
    (multiply-adds, ids of the Linears it uses on the relative-position embeddings). Each of c2p and p2c is a
    (t x d) @ (d x 2k) product per head (k = the attention span, `pos_ebd_size`), and the position projections
    (`pos_key_proj` / `pos_query_proj`, or with `share_att_key` the key and query projections) run over the 2k
    relative-position embeddings, once per forward pass (counted once per sentence, as at batch 1).
    (0, set()) for a layer without relative attention (every other family)."""
    attention = layer.get_submodule(layout.attention)
    if not getattr(attention, "relative_attention", False):
        return 0, set()
    span, kinds = 2 * attention.pos_ebd_size, attention.pos_att_type
    width = layout.heads_in(layer) * layout.head_size(layer)
    scores = sum(t * span * width for kind in ("c2p", "p2c") if kind in kinds)
    if attention.share_att_key:
        projections = [attention.query_proj, attention.key_proj] if {"c2p", "p2c"} & set(kinds) else []
    else:
        projections = [getattr(attention, name) for kind, name in (("c2p", "pos_key_proj"), ("p2c", "pos_query_proj"))
                       if kind in kinds]
    position_only = {id(getattr(attention, n)) for n in ("pos_key_proj", "pos_query_proj") if hasattr(attention, n)}
    return scores + sum(span * macs(m) for m in projections), position_only


def forward_flops(model: nn.Module, lengths: list[int], count_zeros: bool = True) -> float:
    """FLOPs of forward passes over sentences of these token lengths: 2 per multiply-add of every
    encoder Linear per token, plus attention scores and their weighted sum (4 * T^2 * heads * head
    size per layer), plus the pooler and classifier once per sentence. DeBERTa-v2's convolution (a Conv1d beside
    the first layer in some checkpoints) counts per token like a Linear; its relative-position
    attention adds its c2p / p2c scores and position projections (`_relative_position_macs`); ModernBERT's
    sliding-window layers are counted at the full T^2, which is what its eager and SDPA attention compute (a
    mask, not a shorter product). `count_zeros=False` counts only nonzero weights (what a sparse kernel would
    need at best)."""
    base = getattr(model, "base_model", model)

    def macs(linear):
        return linear.weight.numel() if count_zeros else int((linear.weight != 0).sum())
    encoder, name, layout = _encoder(model)
    encoder_modules = [m for n, m in base.named_modules() if _in_encoder(n, name)] if not name else \
        list(encoder.modules())
    layers = layout.layer_list(model) if layout else []
    position_only = set().union(*(_relative_position_macs(layer, layout, 1, macs)[1] for layer in layers))
    per_token = sum(macs(m) for m in encoder_modules if isinstance(m, nn.Linear) and id(m) not in position_only)
    per_token += sum(macs(m) for m in encoder_modules if isinstance(m, nn.Conv1d))  # DeBERTa-v2's optional ConvLayer
    elsewhere = {id(m) for m in encoder_modules} | {id(m) for m in base.embeddings.modules()}
    per_sentence = sum(macs(m) for m in model.modules() if isinstance(m, nn.Linear) and id(m) not in elsewhere)
    attention_width = sum(layout.heads_in(layer) * layout.head_size(layer) for layer in layers)
    relative = [sum(_relative_position_macs(layer, layout, t, macs)[0] for layer in layers) for t in lengths]
    return float(sum(2 * t * per_token + 4 * t * t * attention_width + 2 * per_sentence + 2 * r
                     for t, r in zip(lengths, relative)))


def unit_flops(model: nn.Module, lengths: list[int]) -> list[tuple[float, float]]:
    """[(FLOPs of one attention head, FLOPs of one FFN neuron)] of each encoder layer over sentences of these
    token lengths, as `forward_flops` counts them, so removing units lowers `forward_flops` by exactly their sum:
    a head's share of its layer's head projections and attention output projection per token, its attention
    scores and weighted sum (4 * T^2 * head size), and its share of DeBERTa-v2's relative-position terms (all
    linear in the head count); a neuron's row of the up projection (both rows of a gated one) and column of
    the down projection per token. A layer without neurons left has 0.0 for a neuron. Raises ValueError for a
    family without a declared layout."""
    layout = layout_of(model)
    out = []
    for layer in layout.layer_list(model):
        heads, size = layout.heads_in(layer), layout.head_size(layer)
        _, position_only = _relative_position_macs(layer, layout, 1, lambda m: m.weight.numel())
        projections = [layer.get_submodule(p) for p, _ in layout.head_projections_in(layer)]
        per_token = sum(m.weight.numel() for m in projections if id(m) not in position_only)
        per_token += layer.get_submodule(layout.attention_output).weight.numel()
        head = sum(2 * t * per_token / heads + 4 * t * t * size
                   + 2 * _relative_position_macs(layer, layout, t, lambda m: m.weight.numel())[0] / heads
                   for t in lengths)
        neurons = layout.ffn_size_in(layer)
        ffn = layer.get_submodule(layout.ffn_up).weight.numel() + layer.get_submodule(layout.ffn_down).weight.numel()
        out.append((float(head), float(2 * sum(lengths) * ffn / neurons) if neurons else 0.0))
    return out


def dev_predictions(trainer, dataset, task=None) -> dict | None:
    """The prediction (class id, or a regression's value) and the label of every dev example, in the
    dataset's order, for paired tests between runs (McNemar, bootstrap). None (with a warning) if the
    labels do not come back in the dataset's order, i.e. if the sampler's order could not be undone."""
    import numpy as np

    from pruning.data.evaluation import predict_in_order
    from pruning.data.tasks import get
    task = task or get("sst2")
    logits, labels = predict_in_order(trainer, dataset)
    expected = np.asarray(dataset["label"])
    if labels is None or not np.allclose(labels.reshape(-1), expected):
        print("warning: dev predictions could not be put back in the dataset's order; not saved")
        return None
    return {"predicted": task.predictions(logits).tolist(), "label": expected.tolist()}


def _time(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


@torch.no_grad()
def _infer(model, batches):
    for batch in batches:
        model(**batch)


def _train_steps(model, optimizer, batches):
    for batch in batches:
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def measure_speed(model: nn.Module, dev_rows: list[dict], train_rows: list[dict], collate, rounds: int = 3,
                  batch1_sentences: int = 64, train_batch: int = 32, train_steps: int = 5) -> dict:
    """Inference sentences/s at batch 1 and 64, and the time of a training step (forward, backward,
    AdamW), for `model` against a dense model of the same architecture, interleaved over `rounds`.
    Medians of per-round ratios; the thread count is this process's."""
    from transformers import AutoModelForSequenceClassification
    dense = AutoModelForSequenceClassification.from_config(copy.deepcopy(model.config)).to(model.device)
    models = {"pruned": model, "dense": dense}
    device = model.device

    def to_device(batch):
        return {k: v.to(device) for k, v in batch.items()}
    features = [{k: r[k] for k in MODEL_INPUTS if k in r} for r in dev_rows]
    one = [to_device(collate([f])) for f in features[:batch1_sentences]]
    big = [to_device(collate(features[i:i + 64])) for i in range(0, len(features), 64)]
    train = [to_device(collate([{**{k: r[k] for k in MODEL_INPUTS if k in r},
                                 "labels": r["label"]} for r in train_rows[i:i + train_batch]]))
             for i in range(0, min(len(train_rows), train_batch * train_steps), train_batch)]
    was_training = model.training
    states = {name: copy.deepcopy(m.state_dict()) for name, m in models.items()}
    per_round = {name: {"batch1": [], "batch64": [], "train_step": []} for name in models}
    for _ in range(rounds):
        for name, m in models.items():
            m.eval()
            _infer(m, one[:4])  # warm-up
            per_round[name]["batch1"].append(len(one) / sum(_time(lambda: _infer(m, one), 1)))
            per_round[name]["batch64"].append(len(features) / sum(_time(lambda: _infer(m, big), 1)))
            m.train()
            optimizer = torch.optim.AdamW(m.parameters(), lr=1e-12)
            _train_steps(m, optimizer, train[:1])  # warm-up (allocates the optimizer state)
            per_round[name]["train_step"].append(statistics.median(
                _time(lambda: _train_steps(m, optimizer, train[:1]), len(train))))
    model.load_state_dict(states["pruned"])  # the probe's steps must not change the model (lr 1e-12, but exact)
    model.train(was_training)
    out = {"threads": torch.get_num_threads(), "rounds": rounds}
    for key in ("batch1", "batch64", "train_step"):
        out[f"{key}_pruned"] = statistics.median(per_round["pruned"][key])
        out[f"{key}_dense"] = statistics.median(per_round["dense"][key])
        ratios = [p / d for p, d in zip(per_round["pruned"][key], per_round["dense"][key])]
        out[f"{key}_ratio"] = statistics.median(ratios)  # pruned / dense
    out["train_step_speedup"] = 1 / out["train_step_ratio"]
    del dense
    return out


def plot_structure(struct: dict, path, title: str = "") -> None:
    """Which heads survive (layer x head grid) and FFN neurons kept per layer."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = len(struct["heads_kept"])
    heads = max(struct["heads_total_per_layer"])
    grid = torch.zeros(layers, heads)
    for i, kept in enumerate(struct["heads_kept"]):
        grid[i, kept] = 1
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 0.45 * layers + 1.8), dpi=100,
                               gridspec_kw={"width_ratios": [heads, max(4, heads // 2)]})
    a.imshow(grid.numpy(), cmap="Greens", vmin=0, vmax=1.3, aspect="auto")
    a.set_xticks(range(heads))
    a.set_yticks(range(layers))
    a.set_xlabel("head")
    a.set_ylabel("layer")
    a.set_title(f"heads kept, in green ({int(grid.sum())} of {sum(struct['heads_total_per_layer'])})", fontsize=9)
    kept, total = struct["neurons_kept_per_layer"], struct["neurons_total_per_layer"]
    b.barh(range(layers), total, color="#dddddd", label="removed")
    b.barh(range(layers), kept, color="tab:green", label="kept")
    b.set_yticks(range(layers))
    b.invert_yaxis()
    b.set_xlabel("FFN neurons")
    b.set_title(f"FFN neurons kept ({sum(kept):,} of {sum(total):,})", fontsize=9)
    b.legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
