"""What HF's experiment-tracking integrations (REPORT_TO: TensorBoard, W&B, MLflow, ...) log beyond the loss.

HF's integrations are TrainerCallbacks that log the `logs` dict of every `Trainer.log` call. `ReportScalars`
adds to that dict, for each training log, the cost series (`pruning.run.training_cost.COST_KEYS`, which `CostLog` writes
into the log history) and a pruning run's state: the newest Early-Bird check's largest mask distance per
detector, the share of prunable weights an unstructured mask holds at zero, and the heads and FFN
neurons kept. The log history in results.json is left as it was; no writer of our own is opened.
"""
from __future__ import annotations

import math

from transformers import TrainerCallback
from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

from pruning.run.measurements import structure
from pruning.run.training_cost import COST_KEYS


def pruning_scalars(trainer) -> dict[str, float]:
    """A PruningTrainer's state as scalars: "eb/max_distance/<detector>" (the newest check's, once one ran),
    "pruning/sparsity" (fraction of prunable weights held at zero; weights granularity) or
    "pruning/heads_kept" and "pruning/neurons_kept" (totals over layers; heads+neurons). {} for a dense Trainer."""
    if not hasattr(trainer, "search"):
        return {}
    out = {f"eb/max_distance/{kind}": history[-1]["max_distance"]
           for kind, history in trainer.search.history().items()
           if history and history[-1].get("max_distance") is not None}
    kept = structure(trainer)
    if kept is None:
        total = sum(math.prod(g.shape) for g in trainer.units.groups.values())
        out["pruning/sparsity"] = trainer.pruned_zeros() / total
    else:
        out["pruning/heads_kept"] = sum(kept["heads_kept_per_layer"])
        out["pruning/neurons_kept"] = sum(kept["neurons_kept_per_layer"])
    return out


class ReportScalars(TrainerCallback):
    """Adds to the `logs` of every training log (the dict HF's integrations receive) the cost keys that
    CostLog wrote into the same step's log-history entry, as "cost/<key>", and `pruning_scalars`. It must
    run after CostLog and before the integrations: `report_scalars` places it so."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs:
            return
        entry = state.log_history[-1] if state.log_history else {}
        if entry.get("step") == state.global_step:
            logs.update({f"cost/{k}": entry[k] for k in COST_KEYS if k in entry})
        logs.update(pruning_scalars(self.trainer))


def report_scalars(trainer) -> None:
    """Add `ReportScalars` to `trainer` and move HF's integration callbacks (which HF registers before
    any of ours) to the end of the callback list, after CostLog and ReportScalars, so that they log
    what those add. Call it once the trainer's callbacks are all added."""
    handler = trainer.callback_handler
    handler.add_callback(ReportScalars(trainer))
    integrations = tuple(INTEGRATION_TO_CALLBACK.values())
    handler.callbacks.sort(key=lambda c: isinstance(c, integrations))  # stable: the others keep their order
