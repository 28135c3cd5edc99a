"""Lottery tickets (Prasanna et al. 2020) from a finished pruning run, and how stable kept sets are.

A ticket is a keep-mask (group name -> bool tensor) in a directory that MASK_FROM accepts: "good" is the run's own
early-bird mask; "random" keeps as many units of every group (each layer's heads, each layer's neurons, each
weight tensor; in a resnet.py / mlp.py mask, each channel group's channels or each hidden layer's neurons) at
random places; "bad" keeps the same counts, the lowest-scoring ones by the scores
the good mask was selected from. Each ticket directory links the run's early-bird weights, so
REWIND_TO=early_bird works on it too.
"""
from __future__ import annotations

import os
import shutil
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from pruning.core.masks import overlap
from pruning.core.units import layer_of
from pruning.run import checkpoint as state_io
from pruning.run.trainer import SNAPSHOT_FILE

KINDS = ("good", "random", "bad")


def per_layer_fixed(good: dict[str, torch.Tensor]) -> set[str]:
    """Groups whose kept units a per-layer count already fixes, copied from `good` into random and bad tickets:
    in a to-fraction mask (one with a "<prefix>.mlps" group: `pruning.studies.to_fraction`), the MLPs group (a layer has
    one MLP, so keeping each layer's count of MLPs keeps the same MLPs) and the neurons groups (they follow their
    layer's MLP: all kept or all removed). Empty for any other mask."""
    if not any(n.endswith(".mlps") for n in good):
        return set()
    return {n for n in good if n.endswith((".mlps", ".neurons"))}


def random_mask(good: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Every group keeps as many units as in `good`, chosen uniformly at random (seeded); the groups of
    `per_layer_fixed` are copied (each layer keeps its MLP exactly when the good ticket does)."""
    generator = torch.Generator().manual_seed(seed)
    fixed = per_layer_fixed(good)
    out = {}
    for name in sorted(good):  # a fixed order: the same seed gives the same mask whatever the dict order
        m = good[name]
        if name in fixed:
            out[name] = m.clone()
            continue
        keep = torch.zeros(m.numel(), dtype=torch.bool)
        keep[torch.randperm(m.numel(), generator=generator)[:int(m.sum())]] = True
        out[name] = keep.view(m.shape)
    return {n: out[n] for n in good}


def bad_mask(good: dict[str, torch.Tensor], scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every group keeps as many units as in `good`: its lowest-scoring ones (ties: the first in order); the
    groups of `per_layer_fixed` are copied."""
    if good.keys() != scores.keys() or any(good[n].shape != scores[n].shape for n in good):
        raise ValueError("bad_mask needs one score per unit of the good mask")
    fixed = per_layer_fixed(good)
    out = {}
    for name, m in good.items():
        if name in fixed:
            out[name] = m.clone()
            continue
        order = torch.argsort(scores[name].flatten().float(), stable=True)
        keep = torch.zeros(m.numel(), dtype=torch.bool)
        keep[order[:int(m.sum())]] = True
        out[name] = keep.view(m.shape)
    return out


def write_tickets(run_dir: str | Path, out: str | Path, seed: int, kinds=KINDS) -> dict[str, Path]:
    """Ticket directories out/<kind> from a finished run's masks and scores; returns kind -> directory.

    Existing tickets are kept as they are (a study that is re-run trains the same masks)."""
    run_dir = Path(run_dir)
    good, scores, meta = state_io.read_run_masks(str(run_dir))
    if "bad" in kinds and scores is None:
        raise ValueError(f"{run_dir} has no pruning scores in {state_io.MASKS_FILE} (a fixed-mask run, or one from "
                         "before scores were kept): bad tickets need the scores the mask was selected from")
    snapshot = run_dir / SNAPSHOT_FILE
    return write_ticket_masks(good, scores, {**meta, "source": str(run_dir.resolve())}, out, seed, kinds,
                              snapshot if snapshot.exists() else None)


def write_ticket_masks(good: dict[str, torch.Tensor], scores: dict[str, torch.Tensor] | None, meta: dict,
                       out: str | Path, seed: int, kinds=KINDS, snapshot: Path | None = None) -> dict[str, Path]:
    """Ticket directories out/<kind> (masks file `state.MASKS_FILE`) from a
    good mask and the scores bad tickets take their lowest units by; `snapshot`: weights linked in as
    SNAPSHOT_FILE (REWIND_TO=early_bird). Returns kind -> directory; existing tickets are kept as they are.
    Raises ValueError when "bad" is asked for without scores."""
    out = Path(out)
    if "bad" in kinds and scores is None:
        raise ValueError("bad tickets need the scores the good mask was selected from")
    made = {}
    for kind in kinds:
        ticket = out / kind
        made[kind] = ticket
        if (ticket / state_io.MASKS_FILE).exists():
            continue
        masks = {"good": lambda: good, "random": lambda: random_mask(good, seed),
                 "bad": lambda: bad_mask(good, scores)}[kind]()
        ticket.mkdir(parents=True, exist_ok=True)
        if snapshot is not None and not (ticket / SNAPSHOT_FILE).exists():
            tmp = ticket / (SNAPSHOT_FILE + ".tmp")
            tmp.unlink(missing_ok=True)
            try:  # the early-bird weights are the source run's: a hard link costs no disk
                os.link(snapshot, tmp)
            except OSError:
                shutil.copyfile(snapshot, tmp)
            os.replace(tmp, ticket / SNAPSHOT_FILE)
        # written last: a ticket directory with its masks file is complete
        state_io.write(str(ticket / state_io.MASKS_FILE), state_io.pack_masks(masks, "keep/"),
                       {**meta, "ticket": kind, "ticket_seed": seed})
    return made


# --- stability of kept sets ----------------------------------------------------------------------
def by_layer(masks: dict[str, torch.Tensor]) -> dict[int, dict[str, torch.Tensor]]:
    """Masks grouped by encoder layer (`units.layer_of`; -1 for names without one), layers ascending:
    layer -> {group name -> mask}."""
    layers: dict[int, dict[str, torch.Tensor]] = {}
    for name, m in masks.items():
        layers.setdefault(layer_of(name), {})[name] = m
    return dict(sorted(layers.items()))


def by_position(masks: dict[str, torch.Tensor]) -> dict[int, dict[str, torch.Tensor]]:
    """Every group its own layer, numbered in the masks' order (a channel mask: each group is one layer's channels
    or neurons, in the model's order): position -> {group name -> mask}."""
    return {i: {name: m} for i, (name, m) in enumerate(masks.items())}


def layer_overlaps(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], layers=by_layer) -> dict:
    """`masks.overlap` of two masks over all groups ("all") and over each layer's groups (`layers`: `by_layer`,
    encoder layers; `by_position`, one group a layer). Raises ValueError unless both have the same groups."""
    layers_a, layers_b = layers(a), layers(b)
    return {"all": overlap(a, b), **{layer: overlap(layers_a[layer], layers_b[layer]) for layer in layers_a}}


def pairwise_overlaps(masks: dict, kinds: tuple[str, ...] = ("heads", "neurons", "weights"),
                      unit: str | None = None) -> list[dict]:
    """Jaccard index and its chance level for every two of `masks` (key -> masks), per unit kind.

    A heads+neurons mask is split into its heads and its neurons (overlaps of the two mean different
    things); a weights mask is one kind. `unit` ("channels", "neurons"): the masks are a resnet.py / mlp.py run's,
    one kind named so, each group a layer (`by_position`); `kinds` is then not used. Rows: {"a", "b", "kind",
    "layer" ("all" or an index), "jaccard", "chance"}, Jaccard values fractions in [0, 1]."""
    rows = []
    for key_a, key_b in combinations(sorted(masks), 2):
        for kind in (unit,) if unit else kinds:
            if unit:
                a, b = masks[key_a], masks[key_b]
            else:
                a, b = split_kind(masks[key_a], kind), split_kind(masks[key_b], kind)
            if not a:
                continue
            for layer, o in layer_overlaps(a, b, by_position if unit else by_layer).items():
                rows.append({"a": key_a, "b": key_b, "kind": kind, "layer": layer,
                             "jaccard": o["jaccard"], "chance": o["chance_jaccard"]})
    return rows


def split_kind(masks: dict[str, torch.Tensor], kind: str) -> dict[str, torch.Tensor]:
    """The groups of one unit kind: "heads" / "neurons" / "mlps" (a to-fraction mask's whole MLPs) of a
    structured mask, or "weights"."""
    structured = any(n.endswith((".heads", ".neurons", ".mlps")) for n in masks)
    if kind == "weights":
        return {} if structured else dict(masks)
    return {n: m for n, m in masks.items() if n.endswith("." + kind)}


def head_survival(masks: list[dict[str, torch.Tensor]]) -> np.ndarray:
    """Layers x heads: the fraction of the given heads+neurons masks that keep each head."""
    heads = [[m[n].float().numpy() for n in sorted(split_kind(m, "heads"), key=layer_of)] for m in masks]
    if not heads or not heads[0]:
        raise ValueError("head_survival needs heads+neurons masks")
    return np.mean(np.stack([np.stack(h) for h in heads]), axis=0)
