"""The pruning mechanism the three criteria share.

- `prunable_parameters`: which weights can be pruned (documented in the README).
- `Criterion`: one small class per pruning criterion; it only scores weights (higher = keep).
- `keep_masks`: scores -> exact-count binary keep-masks (global or layer-wise threshold).
- `EarlyBirdPruning`: a TrainerCallback that feeds the criterion, runs the Early-Bird detector
  every `check_every` optimizer steps, prunes when the bird is found, and keeps pruned weights
  at exactly zero through every later optimizer step.
- `PruningTrainer`: a `transformers.Trainer` that wires that callback in. The training loop is
  HF's own; subclasses only name their criterion.

Why not `torch.nn.utils.prune`: its `weight_orig`/`weight_mask` re-parametrisation changes the
state-dict keys, so HF checkpoints and `from_pretrained` no longer round-trip. Here the weights
stay plain tensors that hold real zeros; the masks live beside them and are saved with every
checkpoint.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Trainer, TrainerCallback

from earlybird import EarlyBirdDetector, mask_fingerprint, pack_mask, unpack_mask

PRUNING_STATE_FILE = "pruning_state.safetensors"
SCOPES = ("global", "layerwise")


# --- what is prunable ----------------------------------------------------------------------------
def prunable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Weights of every nn.Linear inside the encoder, by name.

    That is every Linear under `model.base_model` whose path does not pass through a module named
    `*embeddings*` or `pooler`: attention Q/K/V/output and the FFN intermediate/output layers of
    BERT, RoBERTa and other HF encoders. Embeddings, LayerNorms, biases, the pooler and the
    classification head are never pruned.
    """
    base = getattr(model, "base_model", model)
    in_base = {id(m) for m in base.modules()}
    params = {}
    for name, module in model.named_modules():
        parts = name.split(".")
        if (isinstance(module, nn.Linear) and id(module) in in_base
                and not any("embeddings" in p or p == "pooler" for p in parts)):
            params[f"{name}.weight"] = module.weight
    if not params:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layers inside its base model: nothing to prune")
    return params


def sparsity_of(params: dict[str, torch.Tensor]) -> dict:
    """Sparsity counted from the weights themselves (exact zeros), not from the masks."""
    total = sum(p.numel() for p in params.values())
    zeros = sum(int((p == 0).sum()) for p in params.values())
    return {"prunable_params": total, "prunable_nonzero": total - zeros, "sparsity": zeros / total}


# --- criteria --------------------------------------------------------------------------------------
class Criterion:
    """Scores prunable weights; the lowest-scoring fraction `rate` is pruned."""
    name = "criterion"

    def __init__(self, params: dict[str, nn.Parameter]):
        self.params = params

    def observe(self) -> None:
        """Called after backward and before the optimizer step, while `.grad` holds this step's gradient."""

    def scores(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def reset(self) -> None:
        """Called after each Early-Bird check."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass


class AccumulatedCriterion(Criterion):
    """A per-step score of (w, g), summed over the optimizer steps since the last check.

    A single minibatch gradient is mostly noise; the sum over the steps between two checks is the
    score the detector compares. Subclasses define `step_score`.
    """

    def __init__(self, params: dict[str, nn.Parameter]):
        super().__init__(params)
        self.sums = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
        self.steps = 0

    def step_score(self, w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def observe(self) -> None:
        for name, p in self.params.items():
            if p.grad is not None:
                self.sums[name].add_(self.step_score(p, p.grad))
        self.steps += 1

    def scores(self) -> dict[str, torch.Tensor]:
        if self.steps == 0:
            raise RuntimeError(f"{self.name} scores need at least one optimizer step of gradients")
        return self.sums

    def reset(self) -> None:
        for s in self.sums.values():
            s.zero_()
        self.steps = 0

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**{f"sum/{n}": s for n, s in self.sums.items()}, "steps": torch.tensor(self.steps)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for n, s in self.sums.items():
            s.copy_(state[f"sum/{n}"])
        self.steps = int(state["steps"])


# --- scores -> masks -------------------------------------------------------------------------------
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


def keep_masks(scores: dict[str, torch.Tensor], rate: float, scope: str = "global") -> dict[str, torch.Tensor]:
    """Boolean keep-mask per tensor that prunes round(rate * n) of the lowest-scoring weights.

    global: one threshold over all tensors (the count is exact over the whole set);
    layerwise: the same rate inside each tensor.
    """
    if not 0 <= rate < 1:
        raise ValueError(f"pruning rate must be in [0, 1), got {rate}")
    if scope not in SCOPES:
        raise ValueError(f"unknown threshold scope {scope!r}; choose one of {SCOPES}")
    for name, s in scores.items():
        if not torch.isfinite(s).all():
            raise FloatingPointError(f"training diverged: non-finite importance scores in {name}")
    if scope == "layerwise":
        return {n: _keep_flat(s.detach().flatten().float(), round(rate * s.numel())).view(s.shape)
                for n, s in scores.items()}
    flat = torch.cat([s.detach().flatten().float() for s in scores.values()])
    keep = _keep_flat(flat, round(rate * flat.numel()))
    sizes = [s.numel() for s in scores.values()]
    return {n: m.view(s.shape) for (n, s), m in zip(scores.items(), keep.split(sizes))}


def flat_mask(masks: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([m.flatten() for m in masks.values()])


def assert_same_on_all_ranks(fingerprint: str, what: str) -> None:
    """All processes must hold the same mask: compare fingerprints and stop loudly if they differ."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    prints = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(prints, fingerprint)
    if len(set(prints)) != 1:
        raise RuntimeError(f"ranks computed different {what} masks (fingerprints {prints}); "
                           "their weights or gradients have diverged")


# --- configuration ---------------------------------------------------------------------------------
@dataclass
class PruningConfig:
    rate: float = 0.5               # fraction of prunable weights set to zero
    scope: str = "global"           # "global" threshold over all prunable weights, or "layerwise"
    search_epochs: float = 1.0      # budget for the dense search; prune at its end if no early bird
    retrain_epochs: float = 1.0     # training with the mask held fixed, after pruning
    check_every: int = 50           # optimizer steps between Early-Bird checks
    window: int = 5                 # masks in the detector's FIFO
    epsilon: float = 0.1            # distance below which the mask counts as settled
    skip_warmup: bool = True        # no checks (and no score accumulation) during the LR warm-up
    criterion_options: dict = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.rate, bool) or not isinstance(self.rate, (int, float)) or not 0 <= self.rate < 1:
            raise ValueError(f"pruning rate must be a number in [0, 1), got {self.rate!r} "
                             "(it is the fraction of prunable weights set to zero)")
        if self.scope not in SCOPES:
            raise ValueError(f"unknown threshold scope {self.scope!r}; choose one of {SCOPES}")
        if not self.search_epochs > 0 or not self.retrain_epochs >= 0:
            raise ValueError(f"search_epochs must be > 0 and retrain_epochs >= 0, got "
                             f"{self.search_epochs} and {self.retrain_epochs}")
        if not isinstance(self.check_every, int) or self.check_every < 1:
            raise ValueError(f"check_every must be a positive number of optimizer steps, got {self.check_every!r}")
        EarlyBirdDetector(self.window, self.epsilon)  # validates window and epsilon

    @property
    def total_epochs(self) -> float:
        return self.search_epochs + self.retrain_epochs


# --- the callback that runs search -> prune -> retrain inside one trainer.train() ------------------
def _linear_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


class EarlyBirdPruning(TrainerCallback):
    def __init__(self, trainer: "PruningTrainer", config: PruningConfig, criterion: Criterion):
        self.trainer = trainer
        self.config = config
        self.criterion = criterion
        self.params = criterion.params
        self.detector = EarlyBirdDetector(config.window, config.epsilon)
        self.masks: dict[str, torch.Tensor] | None = None   # set once pruned
        self._mul_masks: list[torch.Tensor] = []            # the masks in the weights' dtype
        self.record = {"phase": "search", "eb_found": None, "eb_step": None, "prune_step": None,
                       "stop_step": None, "search_steps": None, "retrain_steps": None, "first_check_after": 0,
                       "steps_per_epoch": None, "evals": {}, "mask_fingerprint": None,
                       "phase_seconds": {"search": 0.0, "prune": 0.0, "retrain": 0.0}}
        self._clock = None

    # --- helpers
    def _charge_time(self):
        now = time.perf_counter()
        if self._clock is not None:
            phase = self.record["phase"]
            self.record["phase_seconds"][phase] += now - self._clock
        self._clock = now

    def lr_factor(self, step: int, warmup: int, total: int) -> float:
        """Linear warm-up and decay over the whole budget (as the dense run); after pruning, the
        rest decays linearly to zero at the end of the retrain phase."""
        prune, stop = self.record["prune_step"], self.record["stop_step"]
        if prune is None or step <= prune:
            return _linear_factor(step, warmup, total)
        return _linear_factor(prune, warmup, total) * max(0.0, (stop - step) / max(1, stop - prune))

    # --- events
    def on_train_begin(self, args, state, control, **kwargs):
        if abs(args.num_train_epochs - self.config.total_epochs) > 1e-9 or args.max_steps > 0:
            raise ValueError(f"PruningTrainer needs num_train_epochs = search_epochs + retrain_epochs = "
                             f"{self.config.total_epochs} and no max_steps; got num_train_epochs="
                             f"{args.num_train_epochs}, max_steps={args.max_steps}")
        steps_per_epoch = state.max_steps / args.num_train_epochs
        self.record["steps_per_epoch"] = steps_per_epoch
        self.record["search_steps"] = max(1, math.ceil(self.config.search_epochs * steps_per_epoch - 1e-6))
        self.record["retrain_steps"] = state.max_steps - self.record["search_steps"] if \
            self.config.retrain_epochs else 0
        # While the learning rate warms up the weights have hardly moved, so a mask that "settles"
        # there says nothing; the detector starts watching when the warm-up ends.
        self.record["first_check_after"] = args.get_warmup_steps(state.max_steps) if self.config.skip_warmup else 0
        if state.global_step == 0 and not isinstance(self.criterion, AccumulatedCriterion):
            self.detector.set_reference(flat_mask(keep_masks(self.criterion.scores(), self.config.rate,
                                                             self.config.scope)))
        self._clock = time.perf_counter()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.record["phase"] == "search":
            if state.global_step >= self.record["first_check_after"]:  # global_step = steps finished
                self.criterion.observe()
        elif self._mul_masks:  # keep the optimizer's momentum of pruned weights at zero
            grads = [p.grad for p in self.params.values()]
            if all(g is not None for g in grads):
                torch._foreach_mul_(grads, self._mul_masks)

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self._mul_masks:  # whatever the optimizer did, pruned weights are exactly zero again
            self._apply_masks_to_weights()

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        step = state.global_step
        if self.record["phase"] == "search":
            last = step >= self.record["search_steps"]
            due = step % self.config.check_every == 0 and step > self.record["first_check_after"]
            if due or last:
                masks = keep_masks(self.criterion.scores(), self.config.rate, self.config.scope)
                flat = flat_mask(masks)
                fingerprint = mask_fingerprint(pack_mask(flat))
                assert_same_on_all_ranks(fingerprint, f"step-{step}")
                found = self.detector.update(flat, step)
                self.detector.history[-1]["fingerprint"] = fingerprint
                self.criterion.reset()
                if found or last:
                    self._prune(masks, step, found, optimizer)
        if self.record["phase"] == "retrain" and step >= self.record["stop_step"]:
            control.should_training_stop = True
        return control

    def on_save(self, args, state, control, **kwargs):
        self._charge_time()
        if state.is_world_process_zero:
            self.save(os.path.join(args.output_dir, f"checkpoint-{state.global_step}"))

    def on_train_end(self, args, state, control, **kwargs):
        self._charge_time()

    # --- pruning
    def _prune(self, masks, step, found, optimizer):
        self._charge_time()
        self.record["phase"] = "prune"
        self.record["evals"]["before_prune"] = self.trainer.evaluate()
        self._set_masks(masks)
        if optimizer is not None:  # momentum from the dense phase must not push pruned weights back
            opt = getattr(optimizer, "optimizer", optimizer)
            for p, m in zip(self.params.values(), self._mul_masks):
                for value in opt.state.get(p, {}).values():
                    if isinstance(value, torch.Tensor) and value.shape == p.shape:
                        value.mul_(m)
        self._apply_masks_to_weights()
        self.record["evals"]["after_prune"] = self.trainer.evaluate()
        self.record.update(eb_found=found, eb_step=step if found else None, prune_step=step,
                           stop_step=step + self.record["retrain_steps"])
        self._charge_time()
        self.record["phase"] = "retrain"

    def _set_masks(self, masks: dict[str, torch.Tensor]) -> None:
        self.masks = masks
        self._mul_masks = [masks[n].to(device=p.device, dtype=p.dtype) for n, p in self.params.items()]
        fingerprint = mask_fingerprint(pack_mask(flat_mask(masks)))
        assert_same_on_all_ranks(fingerprint, "pruning")
        self.record["mask_fingerprint"] = fingerprint

    @torch.no_grad()
    def _apply_masks_to_weights(self):
        torch._foreach_mul_([p.data for p in self.params.values()], self._mul_masks)

    # --- checkpoints
    def save(self, directory: str) -> None:
        tensors = {f"criterion/{k}": v.contiguous() for k, v in self.criterion.state_dict().items()}
        det = self.detector.state_dict()
        for i, m in enumerate(det.pop("masks")):
            tensors[f"detector/mask/{i}"] = torch.from_numpy(m)
        reference = det.pop("reference")
        if reference is not None:
            tensors["detector/reference"] = torch.from_numpy(reference)
        if self.masks is not None:
            tensors["keep_mask"] = torch.from_numpy(pack_mask(flat_mask(self.masks)))
        meta = {"record": self.record, "detector": det, "config": asdict(self.config),
                "criterion": self.criterion.name, "params": list(self.params)}
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, PRUNING_STATE_FILE + ".tmp")
        save_file(tensors, tmp, metadata={"json": json.dumps(meta)})
        os.replace(tmp, os.path.join(directory, PRUNING_STATE_FILE))  # never a half-written state

    def load(self, directory: str) -> None:
        path = os.path.join(directory, PRUNING_STATE_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint {directory} has no {PRUNING_STATE_FILE}: it was not written by a "
                                    "PruningTrainer, so its masks and detector state are unknown. Resume it with "
                                    "the trainer that wrote it, or start a fresh run.")
        from safetensors import safe_open
        with safe_open(path, "pt") as f:
            meta = json.loads(f.metadata()["json"])
        tensors = load_file(path)
        if meta["criterion"] != self.criterion.name or meta["params"] != list(self.params):
            raise ValueError(f"checkpoint {directory} was written by a {meta['criterion']} run over "
                             f"{len(meta['params'])} tensors; this is a {self.criterion.name} run over "
                             f"{len(self.params)} tensors")
        saved = {k: v for k, v in meta["config"].items()}
        if saved != asdict(self.config):
            raise ValueError(f"checkpoint {directory} used pruning config {saved}, this run uses "
                             f"{asdict(self.config)}; resume with the same settings")
        self.criterion.load_state_dict({k[len("criterion/"):]: v for k, v in tensors.items()
                                        if k.startswith("criterion/")})
        det = meta["detector"]
        det["masks"] = [tensors[f"detector/mask/{i}"].numpy() for i in range(len(
            [k for k in tensors if k.startswith("detector/mask/")]))]
        det["reference"] = tensors["detector/reference"].numpy() if "detector/reference" in tensors else None
        self.detector.load_state_dict(det)
        self.record = meta["record"]
        if "keep_mask" in tensors:
            numel = sum(p.numel() for p in self.params.values())
            flat = unpack_mask(tensors["keep_mask"].numpy(), numel)
            sizes = [p.numel() for p in self.params.values()]
            self._set_masks({n: m.view(p.shape) for (n, p), m in zip(self.params.items(), flat.split(sizes))})

    # --- results
    def summary(self) -> dict:
        r = self.record
        spe = r["steps_per_epoch"] or 1
        return {"criterion": self.criterion.name, "rate": self.config.rate, "scope": self.config.scope,
                "eb_found": r["eb_found"], "eb_step": r["eb_step"],
                "eb_epoch": r["eb_step"] / spe if r["eb_step"] is not None else None,
                "prune_step": r["prune_step"], "search_steps_budget": r["search_steps"],
                "retrain_steps": r["retrain_steps"], "steps_per_epoch": r["steps_per_epoch"],
                "detector": {"window": self.config.window, "epsilon": self.config.epsilon,
                             "check_every": self.config.check_every},
                "distance_history": self.detector.history,
                "mask_fingerprint": r["mask_fingerprint"],
                "evals": r["evals"], "phase_seconds": dict(r["phase_seconds"]),
                **sparsity_of({n: p.detach() for n, p in self.params.items()})}


# --- the Trainer -----------------------------------------------------------------------------------
class PruningTrainer(Trainer):
    """HF Trainer whose one `train()` call runs Early-Bird search, pruning and masked retraining.

    Subclasses set `criterion_class`. Pass `pruning=PruningConfig(...)`; TrainingArguments must
    have num_train_epochs = search_epochs + retrain_epochs and the linear LR schedule.
    """
    criterion_class: type[Criterion] = Criterion

    def __init__(self, *args, pruning: PruningConfig | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if self.args.lr_scheduler_type not in ("linear", "SchedulerType.LINEAR") and \
                getattr(self.args.lr_scheduler_type, "value", None) != "linear":
            raise ValueError("PruningTrainer uses a linear LR schedule that restarts its decay at pruning; "
                             f"got lr_scheduler_type={self.args.lr_scheduler_type}")
        self.pruning = pruning or PruningConfig()
        criterion = self.criterion_class(prunable_parameters(self.model), **self.pruning.criterion_options)
        self.early_bird = EarlyBirdPruning(self, self.pruning, criterion)
        self.add_callback(self.early_bird)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            warmup = self.args.get_warmup_steps(num_training_steps)
            schedule = self.early_bird

            def lr_factor(step):  # a plain function, so LambdaLR's state_dict stays picklable
                return schedule.lr_factor(step, warmup, num_training_steps)
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, lr_factor)
        return self.lr_scheduler

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        if resume_from_checkpoint:
            resume_from_checkpoint = last_checkpoint_with_pruning_state(self.args.output_dir) \
                if resume_from_checkpoint is True else str(resume_from_checkpoint)
            self.early_bird.load(resume_from_checkpoint)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def pruning_summary(self) -> dict:
        return self.early_bird.summary()


def last_checkpoint_with_pruning_state(output_dir: str) -> str:
    """The newest checkpoint-N folder whose pruning state was completely written."""
    steps = []
    if os.path.isdir(output_dir):
        for d in os.listdir(output_dir):
            if d.startswith("checkpoint-") and d.split("-")[-1].isdigit():
                steps.append(int(d.split("-")[-1]))
    for step in sorted(steps, reverse=True):
        path = os.path.join(output_dir, f"checkpoint-{step}")
        if os.path.isfile(os.path.join(path, PRUNING_STATE_FILE)):
            return path
    raise FileNotFoundError(f"no checkpoint with a complete pruning state under {output_dir}; nothing to resume")
