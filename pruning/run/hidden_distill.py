"""Layer-wise distillation while the pruned model retrains (TinyBERT, Jiao et al. 2020; CoFi, Xia et al. 2022): the
mean squared error between the student's hidden states and the dense teacher's at mapped layers, added to the
logit term of `pruning.run.distill` with weight DISTILL_HIDDEN. The teacher is the dense model (TEACHER), run online
in eval mode (no dropout, no gradient) on the student's batch.

Layer maps (pairs of hidden-state indices: 0 is the embeddings' output, i the output of encoder layer i - 1):
- "fixed": every live student layer to the teacher layer it was (its dense index): student output j + 1 <->
  teacher output d_j + 1, d_j the dense index of the student's j-th live layer. A removed layer has no student
  counterpart and is not matched; the layers after it still are, to their own teacher layer (`fixed_map`).
- "dynamic" (CoFi's layer matching, Section 3.2): every teacher layer's output is matched to the student layer
  whose output is nearest to it in MSE on this batch, recomputed at every step (`dynamic_pairs`); CoFi matches 4 of
  BERT-base's 12 teacher layers, here every teacher layer. No projection is learned: the hidden size is not pruned.
The MSE is averaged over real tokens (attention mask) and features, and over the matched pairs.
"""
from __future__ import annotations

import torch

from pruning.run.distill import load_teacher, teacher_directory
LAYER_MAPS = ("fixed", "dynamic")


def check_settings(weight: float, layer_map: str) -> None:
    """Raise ValueError unless weight >= 0 and layer_map is one of LAYER_MAPS. (Like DISTILL_TEMPERATURE, the weight
    acts only in a run with a TEACHER, so a study may pass it to its plain and distilled runs alike.)"""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
        raise ValueError(f"DISTILL_HIDDEN is the weight of the hidden-state term, >= 0; got {weight!r}")
    if layer_map not in LAYER_MAPS:
        raise ValueError(f"DISTILL_LAYER_MAP must be one of {', '.join(LAYER_MAPS)}, got {layer_map!r}")


def fixed_map(live_layers: list[int]) -> list[tuple[int, int]]:
    """(student hidden-state index, teacher hidden-state index) for each live student layer: (j + 1, d_j + 1), with
    `live_layers` the dense indices of the student's layers in order (e.g. [0, 1, 3] after layer 2 went)."""
    return [(j + 1, d + 1) for j, d in enumerate(live_layers)]


def token_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error of (batch, tokens, features) tensors over real tokens (`mask` (batch, tokens), 1 = real)
    and features: 0-d float32."""
    d = (a.float() - b.float()) ** 2
    if mask is None:
        return d.mean()
    m = mask.to(d.dtype).unsqueeze(-1)
    return (d * m).sum() / (m.sum() * d.shape[-1]).clamp_min(1)


def dynamic_pairs(student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...],
                  mask: torch.Tensor | None) -> list[tuple[int, int]]:
    """CoFi's matching: each teacher layer output (indices 1..) to the student layer output (indices 1..) of least
    `token_mse` on this batch; ties go to the lower student layer."""
    pairs = []
    with torch.no_grad():
        for t in range(1, len(teacher)):
            errors = torch.stack([token_mse(student[s], teacher[t], mask) for s in range(1, len(student))])
            pairs.append((int(errors.argmin()) + 1, t))
    return pairs


def hidden_loss(student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...], mask: torch.Tensor | None,
                live_layers: list[int], layer_map: str) -> torch.Tensor:
    """The mean over the mapped pairs of `token_mse` (0-d float32). `student`, `teacher`: HF's hidden_states tuples
    ((batch, tokens, hidden) each, embeddings first); `live_layers`: the student's layers' dense indices."""
    pairs = fixed_map(live_layers) if layer_map == "fixed" else dynamic_pairs(student, teacher, mask)
    return torch.stack([token_mse(student[s], teacher[t], mask) for s, t in pairs]).mean()


def load_online_teacher(teacher: str, device):
    """The dense teacher for online forwards: TEACHER's model (`distill.teacher_directory`), float32, eval mode, no
    gradients, on `device`; loaded under a forked RNG so that loading it does not move the run's random state."""
    with torch.random.fork_rng(devices=[]):
        model = load_teacher(teacher_directory(teacher)).to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model
