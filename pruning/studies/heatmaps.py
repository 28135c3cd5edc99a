"""Which heads and MLPs survive in to-fraction tickets, in the form of Prasanna et al. 2020's figures: layer x head
survival (and MLP survival per layer) for every seed, averaged over seeds, and over tasks when studies of several
tasks are given; and the overlap of the surviving sets between seeds and between tasks (Jaccard index beside the
index of random choices with the same per-layer counts: `pruning.core.masks.overlap`).

A study here is {seed: mask} for one task, with masks in `pruning.studies.to_fraction`'s structured format (heads groups,
neurons groups, "<prefix>.mlps") or unstructured (weights: no heatmap, overlap only).
"""
from __future__ import annotations

from itertools import combinations, product
from pathlib import Path

import numpy as np
import torch

from pruning.core.masks import overlap
from pruning.studies.to_fraction import head_names, is_mlp_group


def grids(mask: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """(heads (L, H) of 0/1, mlps (L,) of 0/1) of one structured mask (heads groups in layer order). Raises
    ValueError for a mask without heads groups."""
    heads = head_names(mask)
    if not heads:
        raise ValueError("survival grids need a structured (heads) mask")
    mlps = [n for n in mask if is_mlp_group(n)]
    grid = np.stack([mask[n].float().numpy() for n in heads])
    mlp = mask[mlps[0]].float().numpy() if mlps else np.ones(len(heads))
    return grid, mlp


def mean_grids(masks: list[dict[str, torch.Tensor]]) -> tuple[np.ndarray, np.ndarray]:
    """The fraction of `masks` keeping each head (L, H) and each MLP (L,)."""
    pairs = [grids(m) for m in masks]
    return np.mean([h for h, _ in pairs], 0), np.mean([m for _, m in pairs], 0)


def plot_survival(studies: dict[str, dict[int, dict[str, torch.Tensor]]], path: str | Path) -> None:
    """Heatmaps to `path` (PNG): a row per study (task) with a panel per seed (kept: 1, pruned: 0) and one of the
    mean over its seeds; with several studies, a last row with the mean over tasks (each task's seed mean
    averaged). In every panel the heads form L rows x H columns and the MLP of each layer is the column right of
    them (after a gap). Mean panels print each cell's value."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [(label, {f"seed {s}": grids(m) for s, m in sorted(by_seed.items())}) for label, by_seed in studies.items()]
    means = {label: mean_grids(list(by_seed.values())) for label, by_seed in studies.items()}
    columns = max(len(panels) for _, panels in rows) + 1
    n_rows = len(rows) + (len(studies) > 1)
    fig, axes = plt.subplots(n_rows, columns, figsize=(2.6 * columns, 2.4 * n_rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")

    def draw(ax, heads, mlps, title, values):
        L, H = heads.shape
        image = np.full((L, H + 2), np.nan)
        image[:, :H], image[:, H + 1] = heads, mlps
        ax.axis("on")
        ax.imshow(image, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks([*range(H), H + 1], [*(str(h) for h in range(H)), "MLP"], fontsize=6)
        ax.set_yticks(range(L), [str(i) for i in range(L)], fontsize=6)
        ax.set_title(title, fontsize=8)
        if values:
            for (i, j), v in np.ndenumerate(image):
                if not np.isnan(v):
                    ax.text(j, i, f"{v:.1f}".lstrip("0") if v < 1 else "1", ha="center", va="center", fontsize=5,
                            color="w" if v < 0.5 else "k")
    for r, (label, panels) in enumerate(rows):
        for c, (title, (heads, mlps)) in enumerate(panels.items()):
            draw(axes[r, c], heads, mlps, f"{label}, {title}", False)
        heads, mlps = means[label]
        draw(axes[r, columns - 1], heads, mlps, f"{label}, mean of {len(panels)} seeds", True)
    if len(studies) > 1:
        heads = np.mean([h for h, _ in means.values()], 0)
        mlps = np.mean([m for _, m in means.values()], 0)
        draw(axes[-1, 0], heads, mlps, f"mean over {len(studies)} tasks", True)
    for ax in axes[:, 0]:
        ax.set_ylabel("layer", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def kinds_of(mask: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """A mask split into the unit kinds compared separately: "heads" and "mlps" of a structured mask (neurons
    follow the MLPs), or "weights"."""
    if head_names(mask):
        return {"heads": {n: mask[n] for n in head_names(mask)},
                "mlps": {n: m for n, m in mask.items() if is_mlp_group(n)}}
    return {"weights": dict(mask)}


def overlaps(studies: dict[str, dict[int, dict[str, torch.Tensor]]]) -> list[dict]:
    """Jaccard index of the surviving units, with its chance level, for every two seeds of a study ("between
    seeds", a = b = the study) and every seed of one study against every seed of another ("between tasks").
    Rows: {"between", "a", "b", "seed_a", "seed_b", "kind", "jaccard", "chance"}; an empty kind (a weights
    mask's "mlps") is left out."""
    rows = []
    labels = sorted(studies)
    pairs = [(("seeds", la, la), sa, sb) for la in labels for sa, sb in combinations(sorted(studies[la]), 2)]
    pairs += [(("tasks", la, lb), sa, sb) for la, lb in combinations(labels, 2)
              for sa, sb in product(sorted(studies[la]), sorted(studies[lb]))]
    for (between, la, lb), sa, sb in pairs:
        ka, kb = kinds_of(studies[la][sa]), kinds_of(studies[lb][sb])
        for kind in ka:
            if not ka[kind] or kind not in kb:
                continue
            o = overlap(ka[kind], kb[kind])
            rows.append({"between": between, "a": la, "b": lb, "seed_a": sa, "seed_b": sb, "kind": kind,
                         "jaccard": o["jaccard"], "chance": o["chance_jaccard"]})
    return rows
