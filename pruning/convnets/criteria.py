"""The five criteria on channels (conv channels, MLP neurons), one small `pruning.Criterion` subclass each, named
as the text criteria are: a script's TRAINER (MagnitudePruningTrainer, SlimmingPruningTrainer, ...) picks the
criterion of the same `name` here (`CHANNEL_CRITERIA`).

A channel is gated by the BatchNorm after it (scale gamma, shift beta): a gate c on the channel's output
scales exactly (gamma, beta), so dL/dc = gamma * dL/dgamma + beta * dL/dbeta. Coupled channels (a residual
stream, a depthwise pair) sum over every BatchNorm of their group.

- slimming (Liu et al. 2017; You et al. 2020's own criterion): |gamma|, mean over the group's BatchNorms; the
  search adds You et al.'s L1 subgradient lambda * sign(gamma) to every BatchNorm scale's gradient
  (`SLIMMING_L1`, their 1e-4), after backward and before the optimizer step.
- magnitude (filter L1, Li et al. 2017): the mean |w| of the channel's filters (every convolution / Linear whose
  output the channel is); the mean, not the sum, so a global threshold compares layers of different fan-in.
- gradient (first-order Taylor, Molchanov et al. 2019): |sum over BatchNorms of gamma*g_gamma + beta*g_beta|
  per optimizer step, summed over the steps since the last check.
- undecayed (Good et al. 2022): |sum of -(w*g) + epsilon*w^2| over the same (gamma, beta), summed likewise.
- activation: mean |output| of the channel's BatchNorms over batch and positions of training forwards since the
  last check (evaluation forwards are not counted).
"""
from __future__ import annotations

import torch
from torch import nn

from pruning.core.criterion import Criterion


class ChannelCriterion(Criterion):
    """A criterion over `ChannelUnits`: `scores()` returns group -> (live channels,), higher = keep."""
    granularities = ("channels",)

    def __init__(self, units, **options):
        self.units = units
        self.params = units.params

    def _needs_norms(self):
        bare = [n for n, g in self.units.groups.items() if not g.norms]
        if bare:
            raise ValueError(f"the {self.name} criterion reads the BatchNorm after each channel; these groups have "
                             f"none: {', '.join(bare[:3])} (build the model with BatchNorm)")


class MagnitudeChannels(ChannelCriterion):
    name = "magnitude"

    @torch.no_grad()
    def scores(self):
        return {n: self.units.per_channel(g, g.producers, lambda m: m.weight, lambda v, d: v.abs().mean(d))
                / max(len(g.producers), 1) for n, g in self.units.groups.items()}


class SlimmingChannels(ChannelCriterion):
    name = "slimming"
    ranks_at_start = False  # every BatchNorm scale starts at 1

    def __init__(self, units, l1: float = 1e-4):
        super().__init__(units)
        if isinstance(l1, bool) or not isinstance(l1, (int, float)) or not l1 >= 0:
            raise ValueError(f"slimming L1 penalty must be >= 0, got {l1!r}")
        self._needs_norms()
        self.l1 = float(l1)
        self.scales = list(dict.fromkeys(m.module.weight for g in units.groups.values() for m in g.norms))

    @torch.no_grad()
    def on_gradients(self):
        """You et al.'s sparsity step: gamma.grad += l1 * sign(gamma) for every BatchNorm scale."""
        for w in self.scales:
            if w.grad is not None:
                w.grad.add_(torch.sign(w), alpha=self.l1)

    @torch.no_grad()
    def scores(self):
        return {n: self.units.per_channel(g, g.norms, lambda m: m.weight.abs()) / len(g.norms)
                for n, g in self.units.groups.items()}


class AccumulatedChannels(ChannelCriterion):
    """A per-step signed contribution of each channel's (gamma, beta), |summed over its BatchNorms| per step,
    summed over the steps since the last check."""
    ranks_at_start = False
    observes = True

    def __init__(self, units, **options):
        super().__init__(units)
        self._needs_norms()
        self.sums = {n: torch.zeros(g.size) for n, g in units.groups.items()}
        self.steps = 0

    def contribution(self, w, g):
        raise NotImplementedError

    @torch.no_grad()
    def observe(self):
        for n, g in self.units.groups.items():
            def step(m):
                if m.weight.grad is None:
                    return None
                out = self.contribution(m.weight, m.weight.grad)
                if m.bias is not None and m.bias.grad is not None:
                    out = out + self.contribution(m.bias, m.bias.grad)
                return out
            value = self.units.per_channel(g, g.norms, step)
            if value is None:
                return
            self.sums[n][: len(value)] += value.abs().cpu()
        self.steps += 1

    def scores(self):
        if self.steps == 0:
            raise RuntimeError(f"{self.name} scores need at least one optimizer step of gradients")
        return {n: s[: self.units.live_size(n)].clone() for n, s in self.sums.items()}

    def reset(self):
        for s in self.sums.values():
            s.zero_()
        self.steps = 0

    def state_dict(self):
        return {**{f"sum/{n}": s for n, s in self.sums.items()}, "steps": torch.tensor(self.steps)}

    def load_state_dict(self, state):
        for n, s in self.sums.items():
            s.copy_(state[f"sum/{n}"])
        self.steps = int(state["steps"])


class GradientChannels(AccumulatedChannels):
    name = "gradient"

    def contribution(self, w, g):
        return w * g


class UndecayedChannels(AccumulatedChannels):
    name = "undecayed"

    def __init__(self, units, epsilon: float = 0.01):
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not epsilon >= 0:
            raise ValueError(f"undecayed epsilon must be >= 0, got {epsilon!r}")
        super().__init__(units)
        self.epsilon = float(epsilon)

    def contribution(self, w, g):
        return w * (g - self.epsilon * w)   # the negative of -w*g + eps*w^2; the absolute value drops the sign


class ActivationChannels(ChannelCriterion):
    name = "activation"
    ranks_at_start = False
    observes = True

    def __init__(self, units, statistic: str = "mean_abs"):
        super().__init__(units)
        if statistic != "mean_abs":
            raise ValueError(f"the channel activation criterion reads mean |output| only (got {statistic!r}); "
                             "set ACTIVATION_STATISTIC='mean_abs'")
        self._needs_norms()
        self.sums = {n: torch.zeros(g.size, dtype=torch.float64) for n, g in units.groups.items()}
        self.pending = {n: torch.zeros(g.size, dtype=torch.float64) for n, g in units.groups.items()}
        self.batches = 0
        self.pending_batches = 0
        self.handles = []
        for n, g in units.groups.items():
            for m in g.norms:
                self.handles.append(m.module.register_forward_hook(self._hook(n, m)))

    def _hook(self, group, member):
        def hook(module, args, output):
            if not module.training or not torch.is_grad_enabled():
                return
            with torch.no_grad():
                dims = [d for d in range(output.dim()) if d != 1]
                value = output.detach().abs().mean(dims)[member.idxs].double().cpu()
                self.pending[group][: len(value)] += value
                if member is self.units.groups[group].norms[0]:
                    self.pending_batches += 1
        return hook

    def observe(self):
        for n in self.sums:
            self.sums[n] += self.pending[n]
        self.batches += self.pending_batches
        self.after_step()

    def after_step(self):
        for p in self.pending.values():
            p.zero_()
        self.pending_batches = 0

    def scores(self):
        if self.batches == 0:
            raise RuntimeError("activation scores need at least one training batch")
        return {n: (s[: self.units.live_size(n)] / self.batches).float()
                for n, s in self.sums.items()}

    def reset(self):
        for s in self.sums.values():
            s.zero_()
        self.batches = 0

    def close(self):
        for h in self.handles:
            h.remove()
        self.handles = []

    def state_dict(self):
        return {**{f"sum/{n}": s for n, s in self.sums.items()}, "batches": torch.tensor(self.batches)}

    def load_state_dict(self, state):
        for n, s in self.sums.items():
            s.copy_(state[f"sum/{n}"])
        self.batches = int(state["batches"])


CHANNEL_CRITERIA: dict[str, type[ChannelCriterion]] = {c.name: c for c in (
    MagnitudeChannels, SlimmingChannels, GradientChannels, UndecayedChannels, ActivationChannels)}


def criterion_for(trainer_class, units, options: dict) -> ChannelCriterion:
    """The channel criterion named like the script's TRAINER's criterion (`criterion_class.name`); `options` are
    the criterion's own settings (l1, epsilon, statistic) as the text scripts name them."""
    name = trainer_class.criterion_class.name
    if name not in CHANNEL_CRITERIA:
        raise ValueError(f"no channel variant of the {name!r} criterion; choose one of {', '.join(CHANNEL_CRITERIA)}")
    cls = CHANNEL_CRITERIA[name]
    import inspect
    accepted = inspect.signature(cls.__init__).parameters
    return cls(units, **{k: v for k, v in options.items() if k in accepted})


