"""Scores -> exact-count keep-masks, and mask bookkeeping shared by every granularity.

A rate is either one number (the fraction of units removed) or one number per encoder layer. Units
are ranked inside *buckets*: one bucket over all groups (global threshold), one per group
(layer-wise: each tensor, or each layer's heads), or one per layer when rates are given per layer.
Each bucket removes exactly round(rate * size) units; ties at the threshold are broken by position.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from earlybird import mask_fingerprint, pack_mask
from pruning.core.units import layer_of

SCOPES = ("global", "layerwise")
Rate = float | Sequence[float]


def kth_smallest(x: torch.Tensor, k: int, sample_size: int = 200_000) -> torch.Tensor:
    """Exactly `x.kthvalue(k).values` for a flat tensor, but several times faster on large x.

    A fixed-seed sample brackets the k-th value; only the few elements inside the bracket are
    selected from. If the bracket misses (it is 10 standard errors wide), fall back to kthvalue.
    """
    n = x.numel()
    if n <= 4 * sample_size:
        return x.kthvalue(k).values
    index = torch.randint(n, (sample_size,), generator=torch.Generator().manual_seed(0)).to(x.device)
    sample = x[index].float()
    q, margin = k / n, 10 * math.sqrt(0.25 / sample_size)
    bounds = torch.tensor([max(0.0, q - margin), min(1.0, q + margin)], device=x.device)
    lo, hi = torch.quantile(sample, bounds).to(x.dtype)
    below = int((x < lo).sum())
    inside = x[(x >= lo) & (x <= hi)]
    if below < k <= below + inside.numel():
        return inside.kthvalue(k - below).values
    return x.kthvalue(k).values


def _keep_flat(scores: torch.Tensor, n_prune: int) -> torch.Tensor:
    """Keep-mask that prunes exactly the `n_prune` lowest scores (ties broken by position)."""
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if n_prune == 0:
        return keep
    threshold = kth_smallest(scores, n_prune)
    prune = scores < threshold
    missing = n_prune - int(prune.sum())
    if missing > 0:  # ties at the threshold: take the first ones so the count is exact and deterministic
        tied = (scores == threshold).nonzero().squeeze(1)[:missing]
        prune[tied] = True
    return keep & ~prune


def check_rate(rate: Rate, what: str = "pruning rate") -> None:
    """Raise ValueError unless `rate` is a number in [0, 1) or a list / tuple of such numbers (one per
    encoder layer); bools are refused. `what` names the rate in the message."""
    values = list(rate) if isinstance(rate, (list, tuple)) else [rate]
    for r in values:
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r < 1:
            raise ValueError(f"{what} must be a number in [0, 1) (or one such number per layer), got {rate!r}")


def buckets(groups: dict[str, tuple[int, int]], rate: Rate, scope: str) -> list[tuple[list[str], float]]:
    """[(group names, rate)] ranked together. `groups` maps name -> (layer, size). Raises ValueError
    for an unknown scope, or per-layer rates that are not exactly one per encoder layer 0..L-1."""
    if scope not in SCOPES:
        raise ValueError(f"unknown threshold scope {scope!r}; choose one of {SCOPES}")
    if isinstance(rate, (list, tuple)):
        layers = sorted({layer for layer, _ in groups.values()})
        if -1 in layers or layers != list(range(len(rate))):
            raise ValueError(f"{len(rate)} per-layer rates given, but the model's prunable groups are in layers "
                             f"{layers}: give exactly one rate per encoder layer")
        if scope == "layerwise":
            return [([n], rate[layer]) for n, (layer, _) in groups.items()]
        return [([n for n, (lay, _) in groups.items() if lay == layer], rate[layer]) for layer in layers]
    if scope == "layerwise":
        return [([n], rate) for n in groups]
    return [(list(groups), rate)]


def select(scores: dict[str, torch.Tensor], rate: Rate, scope: str = "global", min_keep: int = 0,
           layers: dict[str, int] | None = None) -> dict[str, torch.Tensor]:
    """Boolean keep-mask per group removing exactly round(rate * n) units of each bucket.

    `scores`: group name -> float tensor of the group's shape ((heads,), (neurons,) or the weight's
    shape); -inf marks units already removed. Returns group -> bool tensor of the same shape (True:
    keep). `min_keep` units of every group are kept whatever their score (at least one head per
    layer); `layers` gives each group's encoder layer (needed for per-layer rates). Raises ValueError
    for a bad rate or scope (`check_rate`, `buckets`) and FloatingPointError for NaN or +inf scores.
    """
    check_rate(rate)
    for name, s in scores.items():  # -inf is allowed: it marks units already removed
        if bool(torch.isnan(s).any()) or bool(torch.isposinf(s).any()):
            raise FloatingPointError(f"training diverged: non-finite importance scores in {name}")
    layers = layers or {n: -1 for n in scores}
    keep = {}
    for names, r in buckets({n: (layers[n], scores[n].numel()) for n in scores}, rate, scope):
        flats = []
        for n in names:
            flat = scores[n].detach().flatten().float()
            if min_keep:
                flat = flat.clone()
                flat[flat.topk(min(min_keep, flat.numel())).indices] = float("inf")
            flats.append(flat)
        flat = torch.cat(flats)
        reserved = int((flat == float("inf")).sum())
        n_prune = min(round(r * flat.numel()), flat.numel() - reserved)
        kept = _keep_flat(flat, n_prune)
        for n, m in zip(names, kept.split([scores[n].numel() for n in names])):
            keep[n] = m.view(scores[n].shape)
    return {n: keep[n] for n in scores}


def keep_masks(scores: dict[str, torch.Tensor], rate: Rate, scope: str = "global") -> dict[str, torch.Tensor]:
    """Keep-masks over weight tensors: global (one threshold over all) or layer-wise (each tensor).
    `scores`: weight name -> tensor of the weight's shape; returns bool masks of the same shapes."""
    return select(scores, rate, scope, layers={n: layer_of(n) for n in scores})


def flat_mask(masks: dict[str, torch.Tensor]) -> torch.Tensor:
    """The groups' masks flattened and concatenated in dict order: a 1-D tensor of sum(numel) entries."""
    return torch.cat([m.flatten() for m in masks.values()])


def fingerprint(masks: dict[str, torch.Tensor]) -> str:
    """16 hex digits of SHA-256 over the bit-packed `flat_mask` (earlybird.mask_fingerprint): equal masks
    in the same group order give equal fingerprints."""
    return mask_fingerprint(pack_mask(flat_mask(masks)))


def assert_same_on_all_ranks(fingerprint: str, what: str) -> None:
    """All processes must hold the same mask: compare fingerprints (torch.distributed.all_gather_object)
    and raise RuntimeError if they differ. A no-op outside a distributed run."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    prints = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(prints, fingerprint)
    if len(set(prints)) != 1:
        raise RuntimeError(f"ranks computed different {what} masks (fingerprints {prints}); "
                           "their weights or gradients have diverged")


def overlap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict:
    """How alike two keep-masks over the same groups are: the Jaccard index of the kept sets, and the
    index two masks would have by chance if each group's kept units were drawn at random with the same
    counts (expected intersection: sum over groups of kept_a * kept_b / size). Jaccard values are
    fractions in [0, 1]. Raises ValueError unless both have the same groups and shapes."""
    if a.keys() != b.keys() or any(a[n].shape != b[n].shape for n in a):
        raise ValueError("overlap needs two masks over the same groups and shapes")
    both = sum(int((a[n].bool() & b[n].bool()).sum()) for n in a)
    kept_a, kept_b = (sum(int(m[n].sum()) for n in a) for m in (a, b))
    chance = sum(int(a[n].sum()) * int(b[n].sum()) / a[n].numel() for n in a)
    union = kept_a + kept_b - both
    return {"jaccard": both / union if union else 1.0, "shared": both, "kept": (kept_a, kept_b),
            "chance_jaccard": chance / (kept_a + kept_b - chance) if kept_a + kept_b - chance else 1.0}
