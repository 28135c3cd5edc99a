"""Iterative pruning by an agent (allocate.py's MODE="iterative"): remove STEP_RATE of what is left at each
step, fine-tune, measure, and stop at the cost budget or the accuracy floor.

Each step k (1, 2, ...) of `IterativePruning.run`:
1. the step's budget: round(STEP_RATE x the heads the model has now) heads and the same share of its
   FFN neurons (`allocation.Budget.of_share`), no layer losing more than MAX_LAYER_RATE of its live units;
2. `allocate(k, model, budget, scores)` spreads it over the layers (allocate.py: a PPO search of its own,
   seeded by the step, with the composite reward on the current weights) and the units with the lowest
   `scores(model)` (magnitude: the group-lasso norm of the current weights) in each layer are removed
   from the model itself (`surgery.remove_units`);
3. `finetune(k, model)` trains it for FINETUNE_STEPS optimizer steps (allocate.py: an HF Trainer);
4. `evaluate(model)` gives the held-out metric and `cost(model)` the measured cost ratio to dense.
The loop stops when the ratio reaches the budget (this step's model is the result), when the metric
falls under the floor (the step before is the result: it was the last at or above the floor), when no
unit can go, or after `max_steps`. Step 0 records the model as it came, before any pruning.

After every step the model's weights (safetensors, a new file per step) and then the state (JSON: every
step's record and the original indices of the units each group kept) are written, each through a temp
file and os.replace, the state last; a killed loop restarts from the last state written, rebuilding the
model from the starting one, and goes on as the uninterrupted loop would, as long as `allocate` and
`finetune` depend only on the step and the model (seeded by the step) and `cost` is cached by structure.

Unit kinds: the structure is kept per `PrunableUnits` group, so a new unit kind (whole MLPs, whole layers)
needs only its groups and its removal (see `allocation.KIND_RULES`).
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pruning.core.surgery import remove_units
from pruning.core.units import PrunableUnits
from pruning.studies.allocation import Budget, masks_for


@dataclass
class IterativeSettings:
    """The loop's settings: the share removed per step, fine-tuning steps between steps, the floor on the
    held-out metric (None: none), the budget on the cost ratio to dense (None: none), the most of a
    layer's live units one step may take, and a cap on the steps."""
    step_rate: float = 0.1
    finetune_steps: int = 50
    accuracy_floor: float | None = None
    cost_budget: float | None = None
    max_rate: float = 0.9
    max_steps: int = 100


def magnitude_scores(model: nn.Module) -> dict[str, torch.Tensor]:
    """The magnitude criterion's unit scores of the live model: group -> the L2 (group-lasso) norm of each
    live head's or neuron's weights, float (live units,) (`PrunableUnits.norm`, as MagnitudeCriterion)."""
    units = PrunableUnits(model, "heads+neurons")
    return units.norm({n: p.detach() for n, p in units.params.items()})


def finetune(model: nn.Module, train_dataset, collator, steps: int, learning_rate: float, batch_size: int,
             seed: int, output_dir: Path, weight_decay: float = 0.0) -> None:
    """Train `model` in place for `steps` optimizer steps with an HF Trainer (AdamW, a constant learning rate,
    no warm-up, nothing saved): the fine-tuning between two pruning steps. `train_dataset`: tokenized rows
    (the model's inputs and "label"), drawn in the order `seed` gives; a fresh optimizer every call (its
    moments would not fit the pruned shapes' history anyway). Leaves the model in eval mode."""
    from transformers import Trainer, TrainingArguments
    args = TrainingArguments(output_dir=str(output_dir), max_steps=steps, per_device_train_batch_size=batch_size,
                             learning_rate=learning_rate, weight_decay=weight_decay, lr_scheduler_type="constant",
                             warmup_steps=0, seed=seed, data_seed=seed, save_strategy="no", logging_strategy="no",
                             report_to="none", disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
                             average_tokens_across_devices=False)
    trainer = Trainer(model=model, args=args, train_dataset=train_dataset, data_collator=collator)
    trainer.model_accepts_loss_kwargs = False
    trainer.train()
    model.eval()


class IterativePruning:
    """The loop of the module docstring on `model` (pruned in place), its state in `directory`
    (iterative.json, step-K.safetensors).

    `allocate(step, model, budget, scores) -> counts` (budget step name -> units removed, `Budget.check`ed);
    `finetune(step, model)`; `evaluate(model) -> float`; `cost(model) -> (ratio to dense, figures dict)`;
    `context`: whatever else the callables depend on (allocate.py: its search settings), JSON-able. Raises
    ValueError when the directory holds a loop with other settings, context or dense model."""

    STATE = "iterative.json"

    def __init__(self, model: nn.Module, directory: Path, settings: IterativeSettings,
                 allocate: Callable, finetune: Callable, evaluate: Callable, cost: Callable,
                 scores: Callable = magnitude_scores, context: dict | None = None):
        self.model, self.dir, self.settings, self.context = model, Path(directory), settings, context or {}
        self.allocate, self.finetune, self.evaluate, self.cost, self.scores = allocate, finetune, evaluate, cost, scores
        self.tracker = PrunableUnits(model, "heads+neurons")  # original indices of the units kept, per group
        self.dense_sizes = {n: g.size for n, g in self.tracker.groups.items()}

    def _meta(self) -> dict:
        return json.loads(json.dumps({"settings": asdict(self.settings), "groups": self.dense_sizes,
                                      "context": self.context}))

    def kept(self) -> dict[str, list[int]]:
        """group -> the original indices of the units the model still has."""
        return {n: g.origin.tolist() for n, g in self.tracker.groups.items()}

    def _restore(self, state: dict) -> None:
        """Rebuild the model of the last step written: remove what it lost, then load its weights."""
        keep = {}
        for name, kept in state["kept"].items():
            mask = torch.zeros(self.dense_sizes[name], dtype=torch.bool)
            mask[kept] = True
            keep[name] = mask
        remove_units(self.tracker, keep)
        self.model.load_state_dict(load_file(str(self.dir / state["model_file"])))

    def _write(self, state: dict, step: int) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"step-{step}.safetensors"
        tmp = self.dir / (name + ".tmp")
        save_file({k: v.detach().contiguous() for k, v in self.model.state_dict().items()}, str(tmp))
        os.replace(tmp, self.dir / name)
        old = state.get("model_file")
        state.update(model_file=name, kept=self.kept())
        tmp = self.dir / (self.STATE + ".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.dir / self.STATE)
        if old and old != name:
            (self.dir / old).unlink(missing_ok=True)

    def _record(self, step: int, extra: dict) -> dict:
        live = {kind: 0 for kind in self.tracker.kinds()}
        for n, g in self.tracker.groups.items():
            live[g.kind] += len(g.origin)
        ratio, figures = self.cost(self.model)
        return {"step": step, "left": live, "metric": float(self.evaluate(self.model)), "cost_ratio": float(ratio),
                "cost": dict(figures), **extra}

    def run(self) -> dict:
        """Run (or resume, or read back) the loop; returns the state: {"steps": [records: step, units "left" by
        kind, held-out "metric", "cost_ratio", "cost" figures, units "removed" by kind, "counts" per budget
        step], "result_step", "result_kept": the original indices each group kept at the result, "stopped":
        why ("budget", "floor", "nothing left to prune", "max_steps"), "seconds": wall time over every
        process}."""
        s = self.settings
        path = self.dir / self.STATE
        if path.exists():
            state = json.loads(path.read_text())
            if state["meta"] != self._meta():
                raise ValueError(f"{self.dir} holds an iterative search with other settings or another model "
                                 f"({state['meta']}); use another OUT_DIR or delete it")
            if state.get("stopped"):
                return state
            self._restore(state)
        else:
            state = {"meta": self._meta(), "steps": [self._record(0, {"removed": {}})]}
            state.update(result_step=0, result_kept=self.kept())
            self._write(state, 0)
        started, before = time.perf_counter(), state.get("seconds", 0.0)
        while not state.get("stopped"):
            state["seconds"] = before + time.perf_counter() - started
            last = state["steps"][-1]
            if s.cost_budget is not None and last["cost_ratio"] <= s.cost_budget:
                state["stopped"] = "budget"
            elif last["step"] >= s.max_steps:
                state["stopped"] = "max_steps"
            if state.get("stopped"):
                self._write(state, last["step"])
                break
            k = last["step"] + 1
            budget = Budget.of_share(PrunableUnits(self.model, "heads+neurons"), s.step_rate, s.max_rate)
            if not any(budget.remove.values()):
                state["stopped"] = "nothing left to prune"
                self._write(state, last["step"])
                break
            scores = self.scores(self.model)
            counts = self.allocate(k, self.model, budget, scores)
            budget.check(counts)
            live_keep = masks_for(counts, scores, budget)
            keep = {}
            for name, g in self.tracker.groups.items():
                mask = torch.zeros(g.size, dtype=torch.bool)
                mask[g.origin[live_keep[name]]] = True
                keep[name] = mask
            remove_units(self.tracker, keep)
            self.finetune(k, self.model)
            record = self._record(k, {"removed": dict(budget.remove), "counts": dict(counts)})
            state["steps"].append(record)
            state["seconds"] = before + time.perf_counter() - started
            if s.accuracy_floor is not None and record["metric"] < s.accuracy_floor:
                state["stopped"] = "floor"  # the result stays the step before, already written
                tmp = self.dir / (self.STATE + ".tmp")
                tmp.write_text(json.dumps(state))
                os.replace(tmp, path)
                break
            state.update(result_step=k, result_kept=self.kept())
            self._write(state, k)
        return state

    def removed_per_step(self, state: dict, budget_steps) -> dict[str, int]:
        """The result's units removed per budget step of the dense model (`Budget.steps`, e.g.
        "layer0.heads"), counted against the dense sizes: what the pipeline's per-layer rates must remove."""
        return {st.name: sum(self.dense_sizes[g] - len(state["result_kept"][g]) for g in st.groups)
                for st in budget_steps}
