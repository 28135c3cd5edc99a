"""Activation-based pruning: units are scored by what they output on the training batches since the last
Early-Bird check, gathered with forward hooks during HF's own training steps (evaluation forwards are
not counted, nor are padding tokens).

- FFN neuron: mean |activation| after GELU over tokens ("mean_abs"), or, with
  ACTIVATION_STATISTIC="apoz", 1 - APoZ: the fraction of tokens where the neuron is active. APoZ
  (Hu et al. 2016) counts zeros after a ReLU; GELU has no exact zeros, so a neuron counts as off where
  its pre-activation is <= 0, i.e. its output lies in GELU's small negative lobe (|GELU| <= 0.17).
- Attention head: mean L2 norm of its context vector (the head's output, before the output
  projection), over tokens. A head's output is what an activation criterion can read; there is no
  zero-based statistic for heads, so "apoz" scores heads by the same norm.
- Single weight ("weights" granularity): |w_ij| * ||x_j||, the weight's magnitude times the RMS over
  tokens of the input feature it multiplies (Wanda, Sun et al. 2024), the activation-aware weight score.

Sums are all-reduced across processes before scoring, so every rank selects the same mask. The hooks
are removed at pruning; they add nothing to the model or its saved weights.
"""
import torch

from pruning import Criterion, PruningTrainer
from pruning.core.surgery import output_slice

STATISTICS = ("mean_abs", "apoz")


class ActivationCriterion(Criterion):
    """Activation criterion: mean |activation| or 1 - APoZ (Hu et al. 2016) per neuron, mean context norm per
    head, Wanda's |w| * ||x|| (Sun et al. 2024) per weight, over real tokens of counted training steps; see
    the module docstring. Raises ValueError for an unknown `statistic`."""
    name = "activation"
    ranks_at_start = False  # nothing is observed before the first training step
    observes = True

    def __init__(self, units, statistic: str = "mean_abs"):
        self.check_options(statistic)
        if statistic == "apoz" and units.layout is not None and units.layout.gated_ffn:
            raise ValueError(f"ACTIVATION_STATISTIC='apoz' counts an FFN neuron off where its GELU input is <= 0, but "
                             f"{units.layout.name}'s FFN is gated (act(x) * gate: the hooks see the product, not x): "
                             "use ACTIVATION_STATISTIC='mean_abs'")
        super().__init__(units)
        self.statistic = statistic
        device = next(iter(self.params.values())).device
        modules = units.modules()
        # Per-unit sums of this step's forwards (`pending`), moved into `sums` by observe() only on the
        # steps whose scores count: hooks run before the trainer knows whether a step counts.
        self.sums, self.pending, self.targets = {}, {}, {}
        # Every statistic is read from the input of a Linear (forward pre-hooks): a weight's own Linear (its
        # input features), or a unit group's output-side Linear (`output_slice`), whose input is the heads'
        # context vectors / the neurons' activations.
        for name, group in units.groups.items():
            if group.kind == "weight":
                target = modules[name.removesuffix(".weight")]
                size = self.params[name].shape[1]
            else:
                s = output_slice(group)
                if s.chunks != 1:  # the hooks read a head's context vector as d consecutive input features
                    raise ValueError(f"{s.module}: the activation criterion needs the output side of {name} "
                                     "unfused (Slice.chunks == 1)")
                target = modules[s.module]
                size = units.live_size(name)
            self.targets[name] = target
            self.sums[name] = torch.zeros(size, dtype=torch.float64, device=device)
            self.pending[name] = torch.zeros(size, dtype=torch.float64, device=device)
        self.tokens = torch.zeros((), dtype=torch.float64, device=device)
        self.pending_tokens = torch.zeros((), dtype=torch.float64, device=device)
        self._token_mask = None
        self.handles = [units.model.register_forward_pre_hook(self._capture_mask, with_kwargs=True)]
        for name, target in self.targets.items():
            self.handles.append(target.register_forward_pre_hook(self._input_hook(name, units.groups[name].kind)))

    @classmethod
    def check_options(cls, statistic: str = "mean_abs") -> None:
        """Raise ValueError unless `statistic` is one of STATISTICS ("mean_abs", "apoz")."""
        if statistic not in STATISTICS:
            raise ValueError(f"activation statistic must be one of {', '.join(STATISTICS)}, got {statistic!r}")

    # --- hooks ---------------------------------------------------------------------------------
    @torch.no_grad()
    def _capture_mask(self, module, args, kwargs):
        if not module.training:
            return
        mask = kwargs.get("attention_mask")
        ids = kwargs.get("input_ids", args[0] if args else None)
        if mask is None:
            mask = torch.ones(ids.shape[:2], device=ids.device)
        self._token_mask = mask.reshape(-1).to(torch.float32)  # (batch * tokens,): 1 = a real token
        self.pending_tokens += self._token_mask.sum()

    def _per_unit_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum over real tokens of (batch, tokens, units) values: one matrix-vector product."""
        flat = values.reshape(-1, values.shape[-1]).float()
        return (self._token_mask @ flat).double()

    def _input_hook(self, name, kind):
        @torch.no_grad()
        def hook(module, args):
            if not module.training or self._token_mask is None:
                return
            x = args[0]  # (batch, tokens, features)
            if kind == "weight":
                stat = x.float().square()
            elif kind == "neuron":
                stat = (x > 0) if self.statistic == "apoz" else x.abs()  # GELU(x) > 0 exactly when x > 0
            else:
                heads = self.pending[name].numel()
                stat = x.reshape(*x.shape[:2], heads, -1).float().norm(dim=-1)
            self.pending[name] += self._per_unit_sum(stat)
        return hook

    # --- lifecycle -----------------------------------------------------------------------------
    @torch.no_grad()
    def observe(self) -> None:
        """Move this step's per-unit sums and token count (gathered by the hooks) into the counted totals."""
        for name, s in self.sums.items():
            s += self.pending[name]
        self.tokens += self.pending_tokens

    def after_step(self) -> None:
        """Zero this step's pending sums, counted or not."""
        for p in self.pending.values():
            p.zero_()
        self.pending_tokens.zero_()

    @torch.no_grad()
    def scores(self) -> dict[str, torch.Tensor]:
        """Per-token means, all-reduced across processes first: group name -> float tensor of (live heads,) /
        (live neurons,), or the weight's shape for |w| * RMS(x). Raises RuntimeError when no token was counted."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            flat = torch.cat([*self.sums.values(), self.tokens.view(1)])
            torch.distributed.all_reduce(flat)
            sizes = [s.numel() for s in self.sums.values()] + [1]
            for s, total in zip([*self.sums.values(), self.tokens], flat.split(sizes)):
                s.copy_(total.view(s.shape))
        if self.tokens == 0:
            raise RuntimeError("activation scores need at least one counted training step")
        mean = {n: (s / self.tokens).float() for n, s in self.sums.items()}
        out = {}
        for name, group in self.units.groups.items():
            if group.kind == "weight":
                out[name] = self.params[name].detach().abs().float() * mean[name].sqrt().to(self.params[name].device)
            else:
                out[name] = mean[name]
        return out

    def reset(self) -> None:
        """Zero the counted sums and token count (after each Early-Bird check)."""
        for s in self.sums.values():
            s.zero_()
        self.tokens.zero_()

    def close(self) -> None:
        """Remove the forward hooks."""
        for h in self.handles:
            h.remove()
        self.handles = []
        self._token_mask = None

    def state_dict(self) -> dict[str, torch.Tensor]:
        """{"sum/<group>": float64 sums of (units,) or (in_features,), "tokens": 0-d float64 token count}."""
        return {**{f"sum/{n}": s for n, s in self.sums.items()}, "tokens": self.tokens}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copy a `state_dict`'s sums and token count into place (shapes must match)."""
        for n, s in self.sums.items():
            s.copy_(state[f"sum/{n}"])
        self.tokens.copy_(state["tokens"])


class ActivationPruningTrainer(PruningTrainer):
    """PruningTrainer with the activation criterion (option: ACTIVATION_STATISTIC)."""
    criterion_class = ActivationCriterion
