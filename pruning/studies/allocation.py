"""Per-layer pruning rates chosen by a reinforcement-learning agent (AMC, He et al. 2018), for allocate.py.

The budget is a number of units of each kind to remove (heads, FFN neurons, or weights), the same
for every allocation compared. An episode walks the prunable groups layer by layer (heads+neurons:
each layer's heads, then its neurons) and the agent proposes a rate for each; as in AMC, every
proposal is clipped to what the groups still to come can absorb, and the last group of a kind takes
exactly the rest, so any action sequence meets the budget exactly. All layers of BERT and RoBERTa
are equally wide, so an exact count of heads and neurons is also an exact budget of parameters and
of FLOPs.

The reward is computed once, at the end of an episode, by a callable given the counts: in
allocate.py, the task's headline metric (or minus the loss) on held-out train examples of the
early-bird weights pruned to those counts by the criterion's scores, with no fine-tuning (`SliceReward`);
cost-aware, that metric with the candidate's measured cost beside the dense model's, weighted or under a
hard budget (`CompositeReward`, the costs from `pruning.deploy.inference_cost`). The iterative mode's steps
(`Budget.of_share`) are budgets of the same kind over the live model (`pruning.studies.iterative`).
"""
from __future__ import annotations

import copy
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from pruning.core import masks as mask_ops
from pruning.core.surgery import remove_units
from pruning.core.units import PrunableUnits
from pruning.data.loading import MODEL_INPUTS

# What each unit kind allows. A new kind is one entry here, its groups in `pruning.core.units.PrunableUnits` and its
# removal in `pruning.core.surgery.remove_units`; the budget, the environment (its observation has one flag per kind)
# and the iterative mode follow from this table.
#   keeps_one: each group keeps at least one of its units (a layer's last head or neuron stays);
#   per_layer_rounding: `Budget.of` counts a uniform rate per layer, as the pipeline rounds it (heads);
#   whole: one unit per layer, all in one group over the layers (`PrunableUnits.whole`): a layer's step removes
#   its MLP or the layer itself, or not (MAX_LAYER_RATE does not apply). The pipeline picks these by score at a
#   uniform rate, so the uniform allocation of a whole kind is that pick (`Budget.uniform` with the scores).
KIND_RULES = {"head": {"keeps_one": True, "per_layer_rounding": True, "whole": False},
              "neuron": {"keeps_one": True, "per_layer_rounding": False, "whole": False},
              "weight": {"keeps_one": False, "per_layer_rounding": False, "whole": False},
              "mlp": {"keeps_one": False, "per_layer_rounding": False, "whole": True},
              "layer": {"keeps_one": False, "per_layer_rounding": False, "whole": True}}
KINDS = tuple(KIND_RULES)


@dataclass(frozen=True)
class Step:
    """One layer's units of one kind, whose count the agent sets (the pipeline's per-layer rate)."""
    name: str                 # "layer0.heads"
    kind: str
    layer: int
    size: int                 # units in the dense model
    most: int                 # the most units it may lose (heads and neurons: one always stays)
    groups: tuple[str, ...]   # the unit groups it spans (weights: the layer's tensors, ranked together; whole kinds:
                              # the one group over the layers, of which this step is element `layer`)


class Budget:
    """The groups in the order an episode visits them, and how many units of each kind go."""

    def __init__(self, steps: list[Step], remove: dict[str, int], max_rate: float):
        self.steps, self.remove, self.max_rate = steps, dict(remove), max_rate
        self.total = {k: sum(s.size for s in steps if s.kind == k) for k in remove}
        for kind, n in self.remove.items():
            most = sum(s.most for s in steps if s.kind == kind)
            if not 0 <= n <= most:
                raise ValueError(f"the budget removes {n} {kind}s, but with at most {max_rate:g} of each layer (and one "
                                 f"unit kept) only {most} can go: lower the rate or raise MAX_LAYER_RATE")

    @staticmethod
    def _steps(units: PrunableUnits, max_rate: float) -> list[Step]:
        """One step per (layer, kind), layers in order, kinds in KINDS order; sizes are the units the model
        has now (a fresh `PrunableUnits` of a pruned model: its live units). A whole kind (`units.whole`) has a
        step of size 1 in each live layer; a layer 0 the family always keeps (`Layout.first_layer_stays`) may
        lose nothing."""
        if not 0 < max_rate < 1:
            raise ValueError(f"MAX_LAYER_RATE must lie in (0, 1), got {max_rate}")
        spans: dict[tuple[int, str], list] = {}
        for g in units.groups.values():
            spans.setdefault((g.layer, g.kind), []).append(g)
        steps = []
        for g in units.whole.values():
            for layer in g.origin.tolist():
                most = 0 if g.kind == "layer" and layer == 0 and units.layout.first_layer_stays else 1
                steps.append(Step(f"layer{layer}.{g.kind}s", g.kind, layer, 1, most, (g.name,)))
        for (layer, kind), groups in sorted(spans.items(), key=lambda kv: (kv[0][0], KINDS.index(kv[0][1]))):
            if layer < 0:
                raise ValueError(f"{groups[0].name} is not inside an encoder layer: per-layer rates cannot cover it")
            size = sum(units.live_size(g.name) for g in groups)
            keep_one = len(groups) if KIND_RULES[kind]["keeps_one"] else 0
            steps.append(Step(f"layer{layer}.{kind}s", kind, layer, size,
                              min(size - keep_one, math.floor(max_rate * size)), tuple(g.name for g in groups)))
        return sorted(steps, key=lambda s: (s.layer, KINDS.index(s.kind)))

    @classmethod
    def of(cls, units: PrunableUnits, rates: dict[str, float], max_rate: float) -> "Budget":
        """The budget that uniform `rates` (by kind) give: heads are counted per layer as the pipeline
        rounds them (round(rate x heads) in each layer); neurons and weights as one global count.
        Raises ValueError for max_rate outside (0, 1), a group outside the encoder layers, per-layer
        `rates`, or a budget the layers cannot absorb at max_rate."""
        steps = cls._steps(units, max_rate)
        remove = {}
        for kind in units.kinds():
            sizes = [s.size for s in steps if s.kind == kind]
            rate = rates[kind]
            if isinstance(rate, (tuple, list)):
                raise ValueError(f"the budget needs one {kind} rate for the whole model, got per-layer rates {rate}")
            remove[kind] = (sum(round(rate * n) for n in sizes) if KIND_RULES[kind]["per_layer_rounding"]
                            else round(rate * sum(sizes)))
        return cls(steps, remove, max_rate)

    @classmethod
    def of_share(cls, units: PrunableUnits, share: float, max_rate: float) -> "Budget":
        """The iterative mode's step: round(share x the units of each kind the model has now), one count
        per kind over the whole model (no per-layer rounding), at most what the layers can give at
        max_rate of their live units (less only when the model is nearly all pruned). `units`: a fresh
        `PrunableUnits` of the live model. Raises ValueError for share or max_rate outside (0, 1)."""
        if not 0 < share < 1:
            raise ValueError(f"STEP_RATE must lie in (0, 1), got {share}")
        steps = cls._steps(units, max_rate)
        remove = {}
        for kind in units.kinds():
            kind_steps = [s for s in steps if s.kind == kind]
            remove[kind] = min(round(share * sum(s.size for s in kind_steps)), sum(s.most for s in kind_steps))
        return cls(steps, remove, max_rate)

    def kind_steps(self, kind: str) -> list[Step]:
        """The steps of one unit kind (a KINDS entry), in episode order."""
        return [s for s in self.steps if s.kind == kind]

    def uniform(self, scores: dict[str, torch.Tensor] | None = None) -> dict[str, int]:
        """The same rate in every layer, up to one unit: the budget split in proportion to the sizes
        (largest remainders first, ties to the earlier layer). A whole kind's uniform allocation is what the
        pipeline removes at its uniform rate, the lowest-scoring MLPs or layers (`whole_pick`): its steps are
        there only when `scores` (group -> float tensor, the whole groups' included) are given."""
        counts = {}
        for kind, n in self.remove.items():
            steps = self.kind_steps(kind)
            if KIND_RULES[kind]["whole"]:
                if scores is not None:
                    counts.update(self.whole_pick(kind, scores))
                continue
            shares = [n * s.size / self.total[kind] for s in steps]
            base = [math.floor(x) for x in shares]
            for i in sorted(range(len(steps)), key=lambda i: (base[i] - shares[i], i))[: n - sum(base)]:
                base[i] += 1
            counts.update({s.name: min(c, s.most) for s, c in zip(steps, base)})
        return counts

    def whole_pick(self, kind: str, scores: dict[str, torch.Tensor]) -> dict[str, int]:
        """The steps of a whole kind ("mlp" or "layer") as the pipeline sets them at the budget's uniform rate:
        its `remove[kind]` lowest-scoring MLPs or layers (`masks.select` over the one group, ties to the
        earlier layer), 1 for those and 0 for the rest. `scores`: whole group -> float tensor (layers,), -inf
        for removed ones (a layer 0 the family keeps scores the largest float32: `PrunableUnits.whole_scores`)."""
        steps = self.kind_steps(kind)
        (group,) = steps[0].groups
        size = scores[group].numel()
        keep = mask_ops.select({group: scores[group]}, self.remove[kind] / size, "global")[group]
        return {s.name: int(not bool(keep[s.layer])) for s in steps}

    def rates(self, counts: dict[str, int]) -> dict[str, tuple[float, ...]]:
        """Per-layer rates, by kind, that make the pipeline remove exactly `counts` (round(rate x size)); a
        whole kind's are 0.0 or 1.0 per layer (its MLP or the layer kept or removed; a layer removed before
        has none). Kinds with no step in `counts` are left out."""
        out = {}
        for kind in self.remove:
            if not any(s.name in counts for s in self.kind_steps(kind)):
                continue
            rates = []
            for s in self.kind_steps(kind):
                r = counts[s.name] / s.size
                assert round(r * s.size) == counts[s.name]
                rates.append(r)
            out[kind] = tuple(rates)
        return out

    def check(self, counts: dict[str, int]) -> None:
        """Raise AssertionError unless `counts` (step name -> units removed) remove exactly the budget of each
        kind, with every step within [0, its `most`]."""
        for kind, n in self.remove.items():
            got = sum(counts[s.name] for s in self.kind_steps(kind))
            if got != n or any(not 0 <= counts[s.name] <= s.most for s in self.kind_steps(kind)):
                raise AssertionError(f"{kind} counts {[counts[s.name] for s in self.kind_steps(kind)]} break the "
                                     f"budget of {n}")


def proposed_rate(action: float, base: float, max_rate: float) -> float:
    """Action 0 is the uniform rate; -1 keeps the whole group, +1 removes MAX_LAYER_RATE of it."""
    a = float(np.clip(np.nan_to_num(action, nan=0.0), -1.0, 1.0))
    return base + a * (max_rate - base) if a >= 0 else base * (1 + a)


class AllocationEnv(gym.Env):
    """One episode = one allocation of the budget over the groups; the reward comes at its end.

    Observation of the group to set (all in [0, 1]; 9 + len(kinds) values): its layer, its kind (one flag
    per KINDS entry; the whole kinds' flags only where the budget has them), its size, the budget of its
    kind still to remove, the least and most it may lose, the uniform rate, the share of it the
    global threshold would prune (for a whole kind: whether the pipeline's pick removes it), and the
    previous action.
    """
    metadata = {"render_modes": []}

    def __init__(self, budget: Budget, reward: Callable[[dict[str, int]], float],
                 global_rates: dict[str, float] | None = None):
        self.budget, self.reward_fn = budget, reward
        self.global_rates = global_rates or {}
        self.layers = max(s.layer for s in budget.steps) + 1
        self.biggest = max(s.size for s in budget.steps)
        self.kinds = tuple(k for k in KINDS if not KIND_RULES[k]["whole"] or k in budget.remove)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (9 + len(self.kinds),), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), dtype=np.float32)
        self.history: list[dict] = []   # every finished episode: counts, reward, seconds
        self._t, self._counts, self._last = 0, {}, 0.0

    def _bounds(self) -> tuple[int, int]:
        step = self.budget.steps[self._t]
        left = self.budget.remove[step.kind] - self._done(step.kind)
        later = sum(s.most for s in self.budget.steps[self._t + 1:] if s.kind == step.kind)
        return max(0, left - later), min(step.most, left)

    def _done(self, kind: str) -> int:
        return sum(self._counts.get(s.name, 0) for s in self.budget.kind_steps(kind))

    def _observation(self) -> np.ndarray:
        step = self.budget.steps[min(self._t, len(self.budget.steps) - 1)]
        lo, hi = self._bounds() if self._t < len(self.budget.steps) else (0, 0)
        done = self._done(step.kind)
        remove = max(self.budget.remove[step.kind], 1)
        obs = [step.layer / max(self.layers - 1, 1), *(float(step.kind == k) for k in self.kinds),
               step.size / self.biggest, (self.budget.remove[step.kind] - done) / remove, lo / step.size,
               hi / step.size, self.budget.remove[step.kind] / self.budget.total[step.kind],
               self.global_rates.get(step.name, 0.0), (self._last + 1) / 2, self._t / len(self.budget.steps)]
        return np.clip(np.asarray(obs, dtype=np.float32), 0.0, 1.0)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start an episode at the first step (gymnasium's reset): (observation float32 (9 + len(kinds),), {})."""
        super().reset(seed=seed)
        self._t, self._counts, self._last = 0, {}, 0.0
        return self._observation(), {}

    def step(self, action):
        """Set the current step's count from `action` (shape (1,), in [-1, 1]: `proposed_rate`, clipped to
        what the later steps can absorb); gymnasium's (observation, reward, terminated, truncated, info).
        The reward (0 until the last step) comes from the reward callable, once per episode: a float, or
        a dict with "reward" and whatever else the episode's history entry should keep (`CompositeReward`:
        the metric, the measured cost, whether it is within the budget)."""
        step = self.budget.steps[self._t]
        a = float(np.asarray(action, dtype=np.float64).reshape(-1)[0])
        base = self.budget.remove[step.kind] / self.budget.total[step.kind]
        lo, hi = self._bounds()
        self._counts[step.name] = int(np.clip(round(proposed_rate(a, base, self.budget.max_rate) * step.size), lo, hi))
        self._last = float(np.clip(np.nan_to_num(a), -1, 1))
        self._t += 1
        if self._t < len(self.budget.steps):
            return self._observation(), 0.0, False, False, {}
        self.budget.check(self._counts)
        started = time.perf_counter()
        out = self.reward_fn(dict(self._counts))
        extra = dict(out) if isinstance(out, dict) else {"reward": out}
        reward = float(extra.pop("reward"))
        self.history.append({"counts": dict(self._counts), "reward": reward, **extra,
                             "seconds": time.perf_counter() - started})
        return self._observation(), reward, True, False, {"counts": dict(self._counts)}


# --- the reward ------------------------------------------------------------------------------------
def masks_for(counts: dict[str, int], scores: dict[str, torch.Tensor], budget: Budget) -> dict[str, torch.Tensor]:
    """Keep-masks that remove the `counts` lowest-scoring units of each step, ranked over its
    groups together, as the pipeline ranks a per-layer rate (ties by position); a whole kind's step
    removes its layer's MLP or the layer when its count is 1. `scores`: group -> float tensor of the group's
    shape; returns group -> bool tensor of that shape (`masks.select`), the whole groups' not yet carried
    down to the heads and neurons (`PrunableUnits.compose`)."""
    out = {}
    for step in budget.steps:
        if KIND_RULES[step.kind]["whole"]:
            (group,) = step.groups
            keep = out.setdefault(group, torch.isfinite(scores[group]))  # removed before: stays removed
            keep[step.layer] = bool(keep[step.layer]) and counts[step.name] == 0
            continue
        out.update(mask_ops.select({g: scores[g] for g in step.groups}, counts[step.name] / step.size, "global",
                                   min_keep=int(KIND_RULES[step.kind]["keeps_one"])))
    return out


def global_rates(scores: dict[str, torch.Tensor], budget: Budget) -> dict[str, float]:
    """The share of each step that one global threshold over its kind would prune at the budget
    (heads: the uniform share, as the pipeline always ranks heads within each layer)."""
    rates, uniform = {}, budget.uniform(scores)
    for kind, n in budget.remove.items():
        steps = budget.kind_steps(kind)
        if kind == "head" or KIND_RULES[kind]["whole"]:  # as the pipeline picks them
            rates.update({s.name: uniform[s.name] / s.size for s in steps})
            continue
        keep = mask_ops.select({g: scores[g] for s in steps for g in s.groups}, n / budget.total[kind], "global",
                               min_keep=int(KIND_RULES[kind]["keeps_one"]))
        rates.update({s.name: 1 - sum(int(keep[g].sum()) for g in s.groups) / s.size for s in steps})
    return rates


class SliceReward:
    """The task's headline metric (or minus the mean loss) on fixed examples of `model` pruned to the given
    counts by `scores`, without training: whole units removed (heads+neurons) or weights zeroed.

    `batches`: dicts of the model's inputs (`pruning.data.loading.MODEL_INPUTS` it has: input_ids, attention_mask
    and a pair's token_type_ids, (batch, tokens)) and labels (batch,): class ids, or floats for a
    regression. `task`: a `pruning.data.tasks.Task` (None: SST-2). `metric`: "metric" (the task's headline,
    `Task.headline`, over all the examples at once: F1 and correlations are not means of batches; a
    correlation undefined for constant predictions counts as 0) or "loss" (minus the mean
    cross-entropy in nats, or for a regression minus the mean squared error). Raises ValueError for
    another metric."""

    METRICS = ("metric", "loss")

    def __init__(self, model: nn.Module, granularity: str, scores: dict[str, torch.Tensor], budget: Budget,
                 batches: list[dict[str, torch.Tensor]], metric: str = "metric", task=None):
        from pruning.data.tasks import TASKS
        if metric not in self.METRICS:
            raise ValueError(f"unknown reward {metric!r}; choose metric (the task's headline) or loss")
        self.model, self.granularity, self.scores, self.budget = model.eval(), granularity, scores, budget
        self.batches, self.metric, self.task = batches, metric, task or TASKS["sst2"]
        self.calls = 0

    @property
    def name(self) -> str:
        """What the reward is, for reports: the headline metric's standard name, or "loss" / "MSE loss"."""
        if self.metric == "loss":
            return "MSE loss" if self.task.is_regression else "loss"
        return self.task.headline

    @torch.inference_mode()
    def evaluate(self, model: nn.Module) -> float:
        """The headline metric of `model` on the fixed batches (a fraction, or a correlation in [-1, 1]), or
        minus its mean loss per example (cross-entropy in nats; a regression's squared error)."""
        predictions, labels, loss, n = [], [], 0.0, 0
        for batch in self.batches:
            logits = model(**{k: batch[k] for k in MODEL_INPUTS if k in batch}).logits.float()
            if self.task.is_regression:
                loss += float(nn.functional.mse_loss(logits.reshape(-1), batch["labels"].float(), reduction="sum"))
            else:
                loss += float(nn.functional.cross_entropy(logits, batch["labels"], reduction="sum"))
            predictions.append(logits.numpy())
            labels.append(batch["labels"].numpy())
            n += len(batch["labels"])
        if self.metric == "loss":
            return -loss / n
        value = self.task.score(self.task.predictions(np.concatenate(predictions)), np.concatenate(labels))
        return float(np.nan_to_num(value[self.task.headline], nan=0.0))

    def pruned(self, counts: dict[str, int]) -> nn.Module:
        """A deep copy of the model pruned to `counts` (step name -> units removed) by `masks_for`: units
        removed (`remove_units`; whole MLPs and layers carried down to their units first) or weights zeroed."""
        masks = masks_for(counts, self.scores, self.budget)
        model = copy.deepcopy(self.model)
        whole = tuple(k for k in self.budget.remove if KIND_RULES[k]["whole"])
        units = PrunableUnits(model, self.granularity, whole)
        if units.structured:
            remove_units(units, units.compose(masks))
        else:
            with torch.no_grad():
                for name, p in units.params.items():
                    p.mul_(masks[name].to(p.device, p.dtype))
        return model

    def __call__(self, counts: dict[str, int]) -> float:
        """`evaluate` of the model pruned to `counts` (step name -> units removed)."""
        self.calls += 1
        return self.evaluate(self.pruned(counts))


def batches_of(rows: list[dict], collate, batch_size: int = 128) -> list[dict[str, torch.Tensor]]:
    """Fixed batches of tokenized rows (`pruning.data.loading.model_rows`: the model's inputs and "labels"),
    sorted by length so that little is padded: the inputs padded by `collate` to (batch, longest), and
    labels (batch,) (int64 class ids, or float32 for a regression)."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    out = []
    for i in range(0, len(order), batch_size):
        chunk = [rows[j] for j in order[i:i + batch_size]]
        batch = collate([{k: r[k] for k in MODEL_INPUTS if k in r} for r in chunk])
        batch["labels"] = torch.tensor([r["labels"] for r in chunk])
        out.append(batch)
    return out


# --- the search ------------------------------------------------------------------------------------
@dataclass
class AgentSettings:
    """PPO settings of the search (stable-baselines3): episodes, rollout length in episodes, seed, learning
    rate, epochs per update and the initial log standard deviation of the Gaussian policy."""
    episodes: int = 400              # allocations tried in all
    episodes_per_update: int = 8     # PPO rollout: this many episodes, then an update
    seed: int = 0
    learning_rate: float = 3e-4
    n_epochs: int = 10
    log_std_init: float = -1.0       # initial exploration: std 0.37 around the uniform allocation


class Search:
    """PPO (stable-baselines3) on an AllocationEnv, checkpointed after every update in `directory`
    (agent.zip, search.json: the episodes so far and the random states), so a killed search resumes
    where its last update ended and then goes on exactly as it would have."""

    AGENT, STATE = "agent.zip", "search.json"

    def __init__(self, env: AllocationEnv, directory: Path, settings: AgentSettings):
        self.env, self.dir, self.settings = env, Path(directory), settings
        if settings.episodes < 1 or settings.episodes_per_update < 1:
            raise ValueError("EPISODES and EPISODES_PER_UPDATE must be >= 1")

    @property
    def episode_length(self) -> int:
        """Actions per episode: one per budget step."""
        return len(self.env.budget.steps)

    def _meta(self) -> dict:
        """What a resumed search must share, as it reads back from JSON (tuples become lists)."""
        return json.loads(json.dumps({"settings": asdict(self.settings), "remove": self.env.budget.remove,
                                      "steps": [asdict(s) for s in self.env.budget.steps]}))

    def run(self, progress: Callable[[int], None] | None = None) -> list[dict]:
        """Train PPO until `settings.episodes` episodes are done, resuming from `directory` when it holds a
        search; return the env's episode history ({"counts", "reward", "seconds"} each). `progress` is
        called with the number of episodes done after each. Raises ValueError when the saved search had
        other settings or another budget."""
        from stable_baselines3 import PPO
        from stable_baselines3.common.callbacks import BaseCallback
        from stable_baselines3.common.logger import Logger
        from stable_baselines3.common.vec_env import DummyVecEnv

        s = self.settings
        vec = DummyVecEnv([lambda: self.env])
        n_steps = s.episodes_per_update * self.episode_length
        state_path, agent_path = self.dir / self.STATE, self.dir / self.AGENT
        if state_path.exists() and agent_path.exists():
            state = json.loads(state_path.read_text())
            if state["meta"] != self._meta():
                raise ValueError(f"{self.dir} holds a search with other settings or another budget ({state['meta']}); "
                                 "use another OUT_DIR or delete it")
            agent = PPO.load(str(agent_path), env=vec, device="cpu")
            self.env.history[:] = state["history"]
            self._before = state["seconds"]
            _set_random_state(state["random"])  # after load: PPO's setup re-seeds
        else:
            self._before = 0.0
            agent = PPO("MlpPolicy", vec, n_steps=n_steps, batch_size=n_steps, n_epochs=s.n_epochs, gamma=1.0,
                        gae_lambda=1.0, learning_rate=s.learning_rate, seed=s.seed, device="cpu", verbose=0,
                        policy_kwargs={"net_arch": [64, 64], "log_std_init": s.log_std_init})
        agent.set_logger(Logger(folder=None, output_formats=[]))  # SB3's default logger leaves an SB3-* folder in /tmp
        search = self

        class Checkpoint(BaseCallback):
            """After each update (the next rollout's start), and at the end, save the agent and the episodes."""
            def _on_rollout_start(self) -> None:
                if self.num_timesteps:
                    search._save(agent)

            def _on_step(self) -> bool:
                if progress and self.locals["dones"][0]:
                    progress(len(search.env.history))
                return True

        self._started = time.perf_counter()
        done = len(self.env.history) * self.episode_length
        todo = s.episodes * self.episode_length - done
        if todo > 0:
            agent.learn(total_timesteps=todo, callback=Checkpoint(), reset_num_timesteps=False, progress_bar=False)
            self._save(agent)
        self.agent = agent
        return self.env.history

    def _save(self, agent) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / (self.AGENT + ".tmp.zip")
        agent.save(str(tmp))
        os.replace(tmp, self.dir / self.AGENT)
        state = {"meta": self._meta(), "history": self.env.history, "random": _random_state(),
                 "seconds": self.seconds}
        tmp = self.dir / (self.STATE + ".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.dir / self.STATE)

    @property
    def seconds(self) -> float:
        """Wall time of the search so far, over every process that worked on it."""
        return self._before + time.perf_counter() - self._started

    def policy_counts(self) -> dict[str, int]:
        """The allocation of the trained policy's mean actions (no exploration)."""
        obs, _ = self.env.reset()
        history = list(self.env.history)
        for _ in range(self.episode_length):
            action, _ = self.agent.predict(obs, deterministic=True)
            obs, _, done, _, info = self.env.step(action)
        self.env.history[:] = history  # not one of the search's episodes
        return info["counts"]


def _random_state() -> dict:
    return {"torch": torch.get_rng_state().tolist(), "numpy": _jsonable(np.random.get_state()),
            "python": _jsonable(random.getstate())}


def _set_random_state(state: dict) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _jsonable(x):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (tuple, list)):
        return [_jsonable(v) for v in x]
    return x


@torch.inference_mode()
def inference_speeds(models: dict[str, nn.Module], batches: list[dict[str, torch.Tensor]], rounds: int = 3) -> dict:
    """Examples/s of each model over the same batches (`batches_of`: the model's inputs, pairs' segment
    ids included), the models interleaved in every round (the first model is the reference: ratios are
    medians of per-round ratios to it)."""
    per_round: dict[str, list[float]] = {name: [] for name in models}
    sentences = sum(len(b["input_ids"]) for b in batches)
    inputs = [{k: b[k] for k in MODEL_INPUTS if k in b} for b in batches]
    for _ in range(rounds):
        for name, model in models.items():
            model(**inputs[0])  # warm-up
            started = time.perf_counter()
            for b in inputs:
                model(**b)
            per_round[name].append(sentences / (time.perf_counter() - started))
    reference = next(iter(models))
    out: dict = {"rounds": rounds, "threads": torch.get_num_threads()}
    for name, values in per_round.items():
        out[name] = {"per_second": float(np.median(values)),
                     "ratio": float(np.median([v / r for v, r in zip(values, per_round[reference])]))}
    return out


def best(history: list[dict]) -> dict:
    """The episode with the highest reward (the earliest of equals) among those within the cost budget
    (entries without "within_budget" count as within: a reward without a budget). Raises ValueError when
    no episode is within it."""
    allowed = [(i, h) for i, h in enumerate(history) if h.get("within_budget", True)]
    if not allowed:
        raise ValueError(f"none of the {len(history)} allocations tried is within LATENCY_BUDGET: raise it, or "
                         "raise the rates (HEAD_RATE, NEURON_RATE) so that the budget removes more")
    return max(allowed, key=lambda kv: (kv[1]["reward"], -kv[0]))[1]


# --- the cost-aware reward ---------------------------------------------------------------------------
OVER_BUDGET = 2.0  # an over-budget candidate's reward: metric - OVER_BUDGET - (ratio - budget)


class CompositeReward:
    """The held-out metric of a candidate with its measured cost (AMC, He et al. 2018): called with counts
    (step name -> units removed), it prunes a copy (`prune`, e.g. `SliceReward.pruned`), scores it
    (`metric`, e.g. `SliceReward.evaluate`) and reads its cost (`costs`, a `pruning.deploy.inference_cost.CostCache`:
    each structure measured once) as a ratio to `dense` (`inference_cost.cost_ratio` of `cost`: "latency",
    "throughput" or "memory"; < 1 is cheaper than dense).

    - weighted sum: reward = metric - weight x ratio (weight in metric units per dense cost: 0.05 trades
      5 points of accuracy for the dense model's whole latency, i.e. 1 point for 20% of it);
    - hard budget (`budget`, a ratio: AMC's resource-constrained mode): a candidate whose ratio exceeds it is
      flagged "within_budget": False and never chosen (`best` skips it). The agent's action cannot be
      clipped to a measured cost before the candidate exists, so it is penalised instead: its reward is
      metric - OVER_BUDGET - (ratio - budget), under every in-budget candidate's for metrics in [-1, 1] at
      weight x ratio < 1, and lower the further over.
    Returns {"reward", "metric", "cost_ratio", "within_budget", "cost": the measured figures} (AllocationEnv
    keeps them in the episode's history). Raises ValueError for a negative weight or a budget <= 0."""

    def __init__(self, prune: Callable[[dict[str, int]], nn.Module], metric: Callable[[nn.Module], float],
                 costs: Callable[[nn.Module], dict], dense: dict, cost: str = "latency", weight: float = 0.0,
                 budget: float | None = None):
        from pruning.deploy.inference_cost import COSTS
        if cost not in COSTS:
            raise ValueError(f"unknown cost {cost!r}; choose one of {', '.join(COSTS)}")
        if weight < 0 or (budget is not None and budget <= 0):
            raise ValueError(f"COST_WEIGHT must be >= 0 and LATENCY_BUDGET > 0; got {weight} and {budget}")
        self.prune, self.metric, self.costs, self.dense = prune, metric, costs, dense
        self.cost, self.weight, self.budget = cost, weight, budget
        self.calls = 0

    def of_model(self, model: nn.Module) -> dict:
        """The reward's parts for a model already pruned (see the class docstring)."""
        from pruning.deploy.inference_cost import cost_ratio
        value = float(self.metric(model))
        measured = self.costs(model)
        ratio = cost_ratio(measured, self.dense, self.cost)
        within = self.budget is None or ratio <= self.budget
        reward = value - self.weight * ratio if within else value - OVER_BUDGET - (ratio - self.budget)
        return {"reward": reward, "metric": value, "cost_ratio": ratio, "within_budget": within,
                "cost": dict(measured)}

    def __call__(self, counts: dict[str, int]) -> dict:
        self.calls += 1
        return self.of_model(self.prune(counts))
