"""Self-attention patterns of heads (Kovaleva et al., EMNLP 2019, "Revealing the Dark Secrets of BERT"), and
whether the heads a ticket keeps have other patterns than those it prunes (Prasanna et al. 2020, section 6).

Kovaleva et al. sorted attention maps into five types by hand and with a CNN trained on their labelled maps; those
labels are not available here, so a map's type comes from a stated rule on the attention mass in four regions.
For one head on one sentence, with A the n x n attention map over the real tokens (each row sums to 1),
"special" the key positions holding the tokenizer's special tokens ([CLS], [SEP]; <s>, </s>), "band" the keys j
with |i - j| <= 1 (the previous and next token and the token itself) and "segment" the token type ids (a pair's two
sentences; a model without them, or a single sentence, has one segment), five disjoint regions of each row:
- V: special keys outside the band (attention to [CLS] / [SEP]);
- D: band keys that are not special (the previous / next token or itself);
- B: keys of the query's own segment, outside the band, not special;
- X: keys of the other segment, outside the band, not special;
- A: special keys inside the band (the first word's previous token is [CLS]: neither clearly vertical nor
  diagonal, so counted as neither).
Each region's mass is the mean over the query rows of the sentence's non-special tokens (all rows if there are
none) of the row's attention in it; V + D + B + X + A = 1. The rule, checked in this order (`Thresholds`, defaults
in brackets):
1. vertical: V >= dominant (0.5) and D < minor (0.2);
2. diagonal: D >= dominant and V < minor;
3. vertical+diagonal: V >= minor, D >= minor and V + D >= combined (0.6);
4. block: the input is a pair, D + B >= block (0.6), B >= minor and D + B >= block_ratio (4) x X: attention stays
   inside the query's own sentence and spreads beyond its neighbours;
5. heterogeneous: anything else.
So block needs pairs: on single-sentence tasks (SST-2) attention spread across the sentence is heterogeneous.
Each dev sentence's map is classified on its own (per sentence, not on an averaged map); a head's type is its
most frequent one over the sentences (ties: the first in TYPES), and its share of each type is kept.
Maps come from the model run with attn_implementation="eager" and output_attentions=True.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

TYPES = ("vertical", "diagonal", "vertical+diagonal", "block", "heterogeneous")
REGIONS = ("V", "D", "B", "X", "A")


@dataclass(frozen=True)
class Thresholds:
    """The rule's thresholds on attention mass (fractions of a query row's attention, averaged over rows)."""
    dominant: float = 0.5
    minor: float = 0.2
    combined: float = 0.6
    block: float = 0.6
    block_ratio: float = 4.0


def region_masses(attention: torch.Tensor, special: torch.Tensor, segments: torch.Tensor) -> dict[str, torch.Tensor]:
    """The masses V, D, B, X, A of the module docstring for every head of one sentence.

    attention: (heads, n, n) over the sentence's real tokens (rows sum to 1); special: (n,) bool; segments: (n,)
    ints. Returns region -> float tensor (heads,)."""
    n = attention.shape[-1]
    idx = torch.arange(n)
    special = special.bool()
    band = (idx[:, None] - idx[None, :]).abs() <= 1
    same = segments[:, None] == segments[None, :]
    key_special = special[None, :].expand(n, n)
    rows = ~special if bool((~special).any()) else torch.ones(n, dtype=torch.bool)
    a = attention.float()[:, rows]
    regions = {"V": key_special & ~band, "D": band & ~key_special, "B": same & ~band & ~key_special,
               "X": ~same & ~band & ~key_special, "A": band & key_special}
    return {r: (a * m[rows]).sum(-1).mean(-1) for r, m in regions.items()}


def classify(masses: dict[str, float], pair: bool, t: Thresholds = Thresholds()) -> str:
    """The type (one of TYPES) of a map with region masses `masses` (V, D, B, X: floats; A is not used) by the
    module docstring's rule; `pair`: the input is a sentence pair (only then can a map be "block")."""
    v, d, b, x = (float(masses[r]) for r in ("V", "D", "B", "X"))
    if v >= t.dominant and d < t.minor:
        return "vertical"
    if d >= t.dominant and v < t.minor:
        return "diagonal"
    if v >= t.minor and d >= t.minor and v + d >= t.combined:
        return "vertical+diagonal"
    if pair and d + b >= t.block and b >= t.minor and d + b >= t.block_ratio * x:
        return "block"
    return "heterogeneous"


def classify_map(attention: torch.Tensor, special: torch.Tensor, segments: torch.Tensor | None = None,
                 t: Thresholds = Thresholds()) -> str:
    """The type of one head's map (n, n) on one sentence; `segments` None = one segment."""
    segments = torch.zeros(attention.shape[-1], dtype=torch.long) if segments is None else segments
    m = region_masses(attention[None], special, segments)
    return classify({r: v[0] for r, v in m.items()}, bool(len(segments.unique()) > 1), t)


@dataclass
class HeadPatterns:
    """Pattern statistics of every head over a set of sentences. `counts`: (L, H, len(TYPES)) sentences of each
    type; `masses`: region -> (L, H) mean mass over sentences; `sentences`: how many; `example`: (L, H, n, n) the
    maps of the first sentence, with its `tokens` (for plots)."""
    counts: np.ndarray
    masses: dict[str, np.ndarray]
    sentences: int
    example: np.ndarray
    tokens: list[str]

    def types(self) -> np.ndarray:
        """(L, H) index into TYPES of each head's most frequent type (ties: the first in TYPES)."""
        return self.counts.argmax(-1)


@torch.no_grad()
def head_patterns(model: nn.Module, batches, special_ids: list[int], tokenizer=None,
                  t: Thresholds = Thresholds()) -> HeadPatterns:
    """Classify every head's map on every sentence of `batches` (dicts with input_ids, attention_mask and
    optionally token_type_ids; labels are ignored). The model must run eager attention (`attn_implementation=
    "eager"`: SDPA returns no maps); raises ValueError when it returns none. `special_ids`: the ids of the
    special tokens of region V (lottery.py: [CLS] and [SEP], or <s> and </s>); `tokenizer` only names the example
    sentence's tokens."""
    model.eval()
    device = next(model.parameters()).device
    counts = masses = example = None
    tokens: list[str] = []
    sentences = 0
    special_set = torch.tensor(sorted(set(special_ids)))
    for batch in batches:
        inputs = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        out = model(**inputs, output_attentions=True)
        if not out.attentions or out.attentions[0] is None:
            raise ValueError("the model returned no attention maps: load it with attn_implementation='eager'")
        att = torch.stack([a.float().cpu() for a in out.attentions], 1)  # (B, L, H, n, n)
        if counts is None:
            L, H = att.shape[1], att.shape[2]
            counts = np.zeros((L, H, len(TYPES)), dtype=np.int64)
            masses = {r: np.zeros((L, H)) for r in REGIONS}
        ids = batch["input_ids"].cpu()
        mask = batch["attention_mask"].cpu().bool()
        segs = batch.get("token_type_ids")
        for b in range(att.shape[0]):
            real = mask[b]
            ids_b = ids[b][real]
            special = torch.isin(ids_b, special_set)
            seg = segs[b].cpu()[real] if segs is not None else torch.zeros(len(ids_b), dtype=torch.long)
            pair = bool(len(seg.unique()) > 1)
            a = att[b][:, :, real][:, :, :, real]  # (L, H, n, n)
            L, H, n = a.shape[0], a.shape[1], a.shape[-1]
            m = region_masses(a.reshape(L * H, n, n), special, seg)
            for r in REGIONS:
                masses[r] += m[r].view(L, H).numpy()
            for li in range(L):
                for h in range(H):
                    kind = classify({r: m[r][li * H + h] for r in REGIONS}, pair, t)
                    counts[li, h, TYPES.index(kind)] += 1
            if example is None:
                example = a.numpy()
                tokens = tokenizer.convert_ids_to_tokens(ids_b.tolist()) if tokenizer is not None else \
                    [str(i) for i in ids_b.tolist()]
            sentences += 1
    if not sentences:
        raise ValueError("head_patterns needs at least one sentence")
    return HeadPatterns(counts, {r: v / sentences for r, v in masses.items()}, sentences, example, tokens)


def shares(types: np.ndarray, kept: np.ndarray) -> list[dict]:
    """Per type: how many heads of each group have it, their shares, and Fisher's exact test (scipy, two-sided;
    the hypergeometric test of drawing the kept heads at random from all heads) of whether kept heads have it more
    or less often than pruned ones.

    types: (L, H) indices into TYPES (or several seeds stacked: any shape); kept: bool of the same shape.
    Rows: {"type", "kept", "pruned", "all" (counts), "kept_share", "pruned_share", "all_share",
    "expected_kept" (kept heads x all share: the count by chance), "p"}. A group with no heads has share None."""
    from scipy.stats import fisher_exact
    types, kept = np.asarray(types).ravel(), np.asarray(kept, dtype=bool).ravel()
    if types.shape != kept.shape:
        raise ValueError("shares needs one kept flag per head")
    n_kept, n_pruned, n_all = int(kept.sum()), int((~kept).sum()), kept.size
    rows = []
    for i, name in enumerate(TYPES):
        is_t = types == i
        k, p, a = int((is_t & kept).sum()), int((is_t & ~kept).sum()), int(is_t.sum())
        pv = float(fisher_exact([[k, n_kept - k], [p, n_pruned - p]])[1]) if n_kept and n_pruned else None
        rows.append({"type": name, "kept": k, "pruned": p, "all": a,
                     "kept_share": k / n_kept if n_kept else None, "pruned_share": p / n_pruned if n_pruned else None,
                     "all_share": a / n_all, "expected_kept": n_kept * a / n_all, "p": pv})
    return rows


def plot_examples(patterns: HeadPatterns, path: str | Path, kept: np.ndarray | None = None) -> None:
    """One example map per type found (the head with the largest share of sentences of that type, on the first
    sentence), with the tokens on the axes and the head's layer, index, share and whether `kept` (L, H) keeps it,
    to `path` (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    frac = patterns.counts / patterns.counts.sum(-1, keepdims=True)
    found = [(i, name) for i, name in enumerate(TYPES) if (patterns.types() == i).any()]
    if not found:
        return
    fig, axes = plt.subplots(1, len(found), figsize=(3.4 * len(found), 3.6), squeeze=False)
    n = len(patterns.tokens)
    for ax, (i, name) in zip(axes[0], found):
        score = np.where(patterns.types() == i, frac[..., i], -1)
        li, h = np.unravel_index(score.argmax(), score.shape)
        ax.imshow(patterns.example[li, h], cmap="Blues", vmin=0)
        status = "" if kept is None else (", kept" if kept[li, h] else ", pruned")
        ax.set_title(f"{name}\nlayer {li}, head {h} ({frac[li, h, i]:.0%}{status})", fontsize=8)
        if n <= 30:
            ax.set_xticks(range(n), patterns.tokens, rotation=90, fontsize=5)
            ax.set_yticks(range(n), patterns.tokens, fontsize=5)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
