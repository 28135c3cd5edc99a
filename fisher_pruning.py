"""Fisher pruning: the diagonal empirical Fisher information of mask variables on every attention head, FFN neuron,
whole MLP and whole layer (Kwon et al., "A Fast Post-Training Pruning Framework for Transformers", NeurIPS 2022;
Molchanov et al. 2019), gathered during the Early-Bird search from HF's own training steps.

Each training forward multiplies every unit by a per-example gate valued 1 (`pruning.core.fisher.ExampleMasks` for heads
and neurons, `pruning.core.whole_scores.WholeGates` for whole MLPs and layers): the model computes exactly what it
computes without them (x * 1.0), and the backward of HF's step also gives each gate's gradient. With the step's loss
the mean over its N examples, gate row b holds (1/N) dL(x_b)/dm, so a unit's score is

    F_u = 1/|D| sum over the observed examples x of (dL(x)/dm_u)^2

over the steps since the last Early-Bird check (the gradients are read before the optimizer step, not clipped:
they are not model parameters). Whole MLPs score the Fisher information of their own gate, and whole layers that of
theirs, or (FISHER_LAYER_SCORE="block_influence") the layer's block influence, 1 - cos(input, output) averaged over
real tokens (ShortGPT), gathered from the same forwards. Either way a score-based pick never removes the layers in
`pruning.core.units.layer_protection` (the last layer of a first-token classifier: see that module) unless
the rate leaves no other layer.

Evaluation forwards pass through the gates (x * 1) and are not counted. Under DDP each process sums its own examples
and the sums are all-reduced before scoring. Gradient accumulation: N is the step's examples over all its
micro-batches (exact when they are equally large, as HF's are except at an epoch's end).
"""
import torch

from pruning import Criterion, PruningTrainer
from pruning.core.fisher import ExampleMasks
from pruning.core.units import layer_protection
from pruning.core.whole_scores import WholeGates

LAYER_SCORES = ("fisher", "block_influence")


class FisherCriterion(Criterion):
    """Diagonal empirical Fisher information of per-example unit gates (see the module docstring). Scores: group ->
    float32 (live units,), the mean over observed examples of the squared per-example gate gradients. Raises
    ValueError at "weights" granularity or for an unknown `layer_score`."""
    name = "fisher"
    granularities = ("heads+neurons",)
    ranks_at_start = False
    observes = True

    def __init__(self, units, layer_score: str = "fisher"):
        if not units.structured:
            raise ValueError("FisherPruningTrainer gates attention heads and FFN neurons: it needs "
                             "GRANULARITY='heads+neurons'")
        self.check_options(layer_score)
        super().__init__(units)
        self.layer_score = layer_score
        whole = tuple(g.kind for g in units.whole.values())
        self.masks = ExampleMasks(units)
        self.whole = WholeGates(units, whole, block_influence=(layer_score == "block_influence" and "layer" in whole))
        self.step_gates: list[dict[str, torch.Tensor]] = []  # this step's training forwards' gates
        self.sums = {n: torch.zeros(units.live_size(n), dtype=torch.float64) for n in units.groups}
        self.sums.update({n: torch.zeros(len(units.live_layers()), dtype=torch.float64) for n in units.whole})
        self.examples = 0
        self.hook = units.model.register_forward_pre_hook(self._before_forward, with_kwargs=True)

    @classmethod
    def check_options(cls, layer_score: str = "fisher") -> None:
        """Raise ValueError unless `layer_score` is one of LAYER_SCORES."""
        if layer_score not in LAYER_SCORES:
            raise ValueError(f"FISHER_LAYER_SCORE must be one of {', '.join(LAYER_SCORES)}, got {layer_score!r}")

    def _before_forward(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs["inputs_embeds"]
        counted = module.training and torch.is_grad_enabled()
        gates = self.masks.set(ids.shape[0])
        gates.update(self.whole.set(ids.shape[0], kwargs.get("attention_mask") if counted else None))
        if counted:  # evaluation forwards get gates of 1 too, which nothing reads back
            self.step_gates.append(gates)

    @torch.no_grad()
    def observe(self) -> None:
        """Add this step's per-example squared gate gradients to the sums (gates without a gradient add nothing)."""
        n = sum(next(iter(g.values())).shape[0] for g in self.step_gates if g)
        for gates in self.step_gates:
            for name, m in gates.items():
                if m.grad is not None:
                    self.sums[name] += ((m.grad.double() * n) ** 2).sum(0)
        self.examples += n
        self.step_gates = []

    def after_step(self) -> None:
        """Forget this step's gates, counted or not (warm-up steps are not observed)."""
        self.step_gates = []

    def _reduce(self) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            device = next(iter(self.params.values())).device
            sums = list(self.sums.values())
            flat = torch.cat([*sums, torch.tensor([float(self.examples)], dtype=torch.float64)]).to(device)
            torch.distributed.all_reduce(flat)
            flat = flat.cpu()
            for s, total in zip(sums, flat[:-1].split([s.numel() for s in sums])):
                s.copy_(total)
            self.examples = int(flat[-1])

    def scores(self) -> dict[str, torch.Tensor]:
        """The Fisher diagonal of every head and neuron group since the last reset: group -> float32 (live units,).
        Raises RuntimeError before any observed example."""
        self._reduce()
        if self.examples == 0:
            raise RuntimeError("Fisher scores need at least one observed training step")
        return {n: (self.sums[n] / self.examples).float() for n in self.units.groups}

    def whole_scores(self, scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Whole MLPs and layers: their gates' Fisher information (layers: or block influence), in the dense layer
        order, -inf for removed ones; the protected layers score as `layer_protection` says."""
        if not self.units.whole:
            return {}
        live = self.units.live_layers()
        out = {}
        for name, g in self.units.whole.items():
            dense = torch.full((g.size,), float("-inf"))
            if g.kind == "layer" and self.layer_score == "block_influence":
                bi = self.whole.block_influence_scores()
                dense[live] = bi[live]
            else:
                dense[live] = (self.sums[name] / max(self.examples, 1)).float()
            removed = torch.ones(g.size, dtype=torch.bool)
            removed[g.origin] = False
            dense[removed] = float("-inf")
            if g.kind == "layer":
                for layer, value in layer_protection(self.units).items():
                    dense[layer] = value
            out[name] = dense
        return out

    def reset(self) -> None:
        """Zero the sums and the example count (after each Early-Bird check)."""
        for s in self.sums.values():
            s.zero_()
        self.examples = 0
        self.whole.bi_sums.zero_()
        self.whole.bi_tokens = 0

    def close(self) -> None:
        """Remove every hook (the gates are gone; the model is unchanged by them)."""
        self.hook.remove()
        self.masks.__exit__()
        self.whole.remove()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """{"sum/<group>": running sums, "examples": 0-d, "bi_sums", "bi_tokens"}."""
        return {**{f"sum/{n}": s for n, s in self.sums.items()}, "examples": torch.tensor(self.examples),
                "bi_sums": self.whole.bi_sums, "bi_tokens": torch.tensor(self.whole.bi_tokens)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a `state_dict` (shapes must match)."""
        for n, s in self.sums.items():
            s.copy_(state[f"sum/{n}"])
        self.examples = int(state["examples"])
        self.whole.bi_sums.copy_(state["bi_sums"])
        self.whole.bi_tokens = int(state["bi_tokens"])


class FisherPruningTrainer(PruningTrainer):
    """PruningTrainer with the Fisher criterion (option: FISHER_LAYER_SCORE; needs GRANULARITY='heads+neurons')."""
    criterion_class = FisherCriterion
