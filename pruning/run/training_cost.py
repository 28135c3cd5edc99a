"""What a run costs, as it goes: `CostLog` adds to every training log entry the active parameters,
the FLOPs of a forward pass at the mean sentence length, the training FLOPs so far, peak memory so
far and the training seconds so far; to every evaluation during training, the training seconds.

Training FLOPs are counted per optimizer step as 3 x (forward FLOPs per token of the model as it is
during that step) x (real tokens the step trained on): backward costs about twice the forward.
A token's forward FLOPs are those of `results.forward_flops` at the mean sentence length (the
attention term depends on it), divided by that length. Dense kernels multiply pruned zeros too, so
unstructured zeros do not lower them; removed heads and neurons do.

The series lives in `state.log_history` and the running totals in the checkpoint's trainer state,
so a resumed run continues them exactly.
"""
from __future__ import annotations

import time

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from pruning.host import peak_rss_mb
from pruning.run.measurements import forward_flops

COST_KEYS = ("train_seconds", "tokens_trained", "train_flops", "forward_flops_at_mean_length", "active_params",
             "active_params_without_embeddings", "peak_memory_mb")


def active_parameters(model, pruned_zeros: int = 0) -> tuple[int, int]:
    """Parameters the model holds (removed heads and neurons are gone) less `pruned_zeros`, the weights
    an unstructured mask holds at zero; with and without the embeddings. Counted from the mask, not from
    the zeros: a zero-initialised bias is a live parameter."""
    base = getattr(model, "base_model", model)
    embeddings = sum(p.numel() for p in base.embeddings.parameters()) if hasattr(base, "embeddings") else 0
    total = sum(p.numel() for p in model.parameters()) - pruned_zeros
    return total, total - embeddings


def peak_memory_mb() -> float:
    """Peak accelerator memory allocated (GPU runs: torch.cuda.max_memory_allocated), else this
    process's peak resident memory (`pruning.host.peak_rss_mb`); in MB (2**20 bytes)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return peak_rss_mb()


class CostLog(TrainerCallback, ExportableState):
    """The cost time series of a run (see the module docstring). Needs TrainingArguments with
    include_num_input_tokens_seen="non_padding"."""

    def __init__(self, mean_length: float, pruned_zeros=lambda: 0):
        self.mean_length = float(mean_length)
        self.pruned_zeros = pruned_zeros  # () -> weights held at zero by an unstructured mask
        self.train_seconds = self.train_flops = 0.0
        self.tokens = 0
        self.peak_memory = 0.0      # MB: a running maximum, so "peak so far" never falls between logs
        self._mark = None           # perf_counter at the end of the last counted interval
        self._training = False
        self._per_token = (None, 0.0)  # (parameter count it was computed for, forward FLOPs per token)

    # HF stores this in each checkpoint's trainer_state.json; on_train_begin reads it back.
    def state(self) -> dict:
        """The running totals for HF's trainer_state.json (ExportableState): train_seconds (s), train_flops,
        tokens (non-padding tokens trained) and peak_memory (MB)."""
        return {"args": {"mean_length": self.mean_length},
                "attributes": {"train_seconds": self.train_seconds, "train_flops": self.train_flops,
                               "tokens": self.tokens, "peak_memory": self.peak_memory}}

    def forward_flops_per_token(self, model) -> float:
        """Forward FLOPs per token at the mean sentence length (`results.forward_flops` / mean_length),
        recomputed only when the model's parameter count changes."""
        count = sum(p.numel() for p in model.parameters())  # changes exactly when units are removed
        if self._per_token[0] != count:
            self._per_token = (count, forward_flops(model, [self.mean_length]) / self.mean_length)
        return self._per_token[1]

    def on_train_begin(self, args, state, control, **kwargs):
        """Restore the totals of a resumed run (HF's stateful_callbacks) and start the clock. Raises
        ValueError unless include_num_input_tokens_seen="non_padding"."""
        if args.include_num_input_tokens_seen != "non_padding":
            raise ValueError("CostLog needs TrainingArguments(include_num_input_tokens_seen='non_padding')")
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        if self._mark is None and state.global_step > 0 and isinstance(saved, dict):  # a resumed process
            self.__dict__.update(saved["attributes"])  # (a checkpoint from before peak_memory was kept: 0.0)
        elif self._mark is None:
            self.tokens = state.num_input_tokens_seen
        # Continuing in this process (after a structured pruning checkpoint): the time spent writing
        # and reloading it is training time too, so it is charged, not skipped.
        self._charge_time()
        self._training = True

    def _charge_time(self) -> None:
        now = time.perf_counter()
        if self._mark is not None:
            self.train_seconds += now - self._mark
        self._mark = now

    def peak_memory_so_far(self) -> float:
        """The peak memory of the run so far, in MB: the largest reading yet, this process's and (resumed)
        the earlier processes'. One reading alone can fall: Linux reports VmHWM as max(high-water mark,
        current RSS) with the mark updated only at some events."""
        self.peak_memory = max(self.peak_memory, peak_memory_mb())
        return self.peak_memory

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        """Add 3 x new tokens x forward FLOPs per token of the model as this step trained it (before
        on_step_end, where pruning may happen)."""
        new = state.num_input_tokens_seen - self.tokens
        self.train_flops += 3 * new * self.forward_flops_per_token(model)
        self.tokens = state.num_input_tokens_seen

    def on_step_end(self, args, state, control, **kwargs):
        self._charge_time()

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        """Add the cost keys (COST_KEYS) to this step's training-loss log entry."""
        entry = state.log_history[-1] if state.log_history else {}
        if "loss" not in (logs or {}) or entry.get("step") != state.global_step:
            return  # evaluation logs get their time in on_evaluate
        active, without = active_parameters(model, self.pruned_zeros())
        entry.update(train_seconds=self.train_seconds, tokens_trained=self.tokens, train_flops=self.train_flops,
                     forward_flops_at_mean_length=self.forward_flops_per_token(model) * self.mean_length,
                     active_params=active, active_params_without_embeddings=without,
                     peak_memory_mb=self.peak_memory_so_far())

    def on_evaluate(self, args, state, control, **kwargs):
        """Add training seconds and FLOPs so far to an evaluation during training; its time is not charged."""
        if not self._training:
            return  # the evaluation after training
        entry = state.log_history[-1] if state.log_history else {}
        if "eval_loss" in entry:
            entry.update(train_seconds=self.train_seconds, train_flops=self.train_flops)
        self._mark = time.perf_counter()  # evaluation is not training time

    def on_train_end(self, args, state, control, **kwargs):
        self._charge_time()
        self._training = False


def cost_series(log_history: list[dict], headline: str = "accuracy") -> list[dict]:
    """The cost entries of a run's log history, with the dev accuracy and headline metric (`score`) of
    evaluations at the same step."""
    evals = {}
    for e in log_history:
        if "eval_loss" in e:
            evals[e["step"]] = e  # the last evaluation at a step: after pruning, if both
    return [{"step": e["step"], **{k: e[k] for k in COST_KEYS},
             "accuracy": evals.get(e["step"], {}).get("eval_accuracy"),
             "score": evals.get(e["step"], {}).get(f"eval_{headline}")}
            for e in log_history if "active_params" in e]


def accuracy_timeline(log_history: list[dict], headline: str = "accuracy") -> list[dict]:
    """(step, training seconds so far, dev accuracy and the task's headline metric `score`, fractions
    or correlations) of every evaluation during training."""
    return [{"step": e["step"], "train_seconds": e["train_seconds"], "accuracy": e.get("eval_accuracy"),
             "score": e.get(f"eval_{headline}")}
            for e in log_history if "eval_loss" in e and "train_seconds" in e]
