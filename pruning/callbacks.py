"""The TrainerCallbacks of a pruning run, one job each. `PruningTrainer` wires them together.

- `EarlyBirdSearch`: feeds the criterion during the search, runs the Early-Bird checks, and asks the
  trainer to prune when the bird is found or the search budget ends.
- `KeepPrunedWeightsZero`: after unstructured pruning, masks gradients and weights every step.
- `RetrainBudget`: stops training when the retrain phase has had its steps.
- `PhaseClock`: wall time per phase (search / prune / retrain).
- `SavePruningState`: writes the pruning state beside every HF checkpoint.
"""
from __future__ import annotations

import os
import time

import torch
from transformers import TrainerCallback

from earlybird import EarlyBirdDetector, mask_fingerprint, pack_mask
from pruning.masks import assert_same_on_all_ranks, flat_mask

DETECTOR_OF_KIND = {"weight": "weights", "head": "heads", "neuron": "neurons"}


class EarlyBirdSearch(TrainerCallback):
    """One detector per unit kind (weights; or heads and neurons). The bird is found at the first check
    where every detector's masks are settled."""

    def __init__(self, trainer, window: int, epsilon: float, check_every: int):
        self.trainer = trainer
        self.check_every = check_every
        kinds = trainer.units.kinds()
        self.detectors = {DETECTOR_OF_KIND[k]: EarlyBirdDetector(window, epsilon) for k in kinds}
        self.kind_groups = {DETECTOR_OF_KIND[k]: [n for n, g in trainer.units.groups.items() if g.kind == k]
                            for k in kinds}

    @property
    def active(self) -> bool:
        return self.trainer.record["phase"] == "search"

    def masks_now(self) -> dict[str, torch.Tensor]:
        return self.trainer.select_masks(self.trainer.criterion.scores())

    def on_train_begin(self, args, state, control, **kwargs):
        criterion = self.trainer.criterion
        if self.active and state.global_step == 0 and criterion.ranks_at_start:
            masks = self.masks_now()  # the mask of the starting weights: how far the mask drifts from it
            for kind, det in self.detectors.items():
                det.set_reference(flat_mask({n: masks[n] for n in self.kind_groups[kind]}))

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.active:
            self.trainer.criterion.on_gradients()
            if state.global_step >= self.trainer.plan.first_check_after:  # global_step = steps finished
                self.trainer.criterion.observe()

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.active:
            self.trainer.criterion.after_step()

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        step, plan = state.global_step, self.trainer.plan
        if not self.active or not plan.check_due(step, self.check_every):
            return control
        masks = self.masks_now()
        for kind, det in self.detectors.items():
            flat = flat_mask({n: masks[n] for n in self.kind_groups[kind]})
            print_ = mask_fingerprint(pack_mask(flat))
            assert_same_on_all_ranks(print_, f"step-{step} {kind}")
            det.update(flat, step)
            det.history[-1]["fingerprint"] = print_
        self.trainer.criterion.reset()
        found = all(det.settled for det in self.detectors.values())  # all of them, at this same check
        if found or step >= plan.search_steps:
            self.trainer.prune(masks, step, found, optimizer, control)
        return control

    def state_dict(self) -> dict:
        return {k: d.state_dict() for k, d in self.detectors.items()}

    def load_state_dict(self, state: dict) -> None:
        for k, d in self.detectors.items():
            d.load_state_dict(state[k])

    def history(self) -> dict[str, list]:
        return {k: d.history for k, d in self.detectors.items()}


class KeepPrunedWeightsZero(TrainerCallback):
    """Unstructured pruning leaves zeros in dense tensors; keep them exactly zero.

    The pruned positions of the gradient are zeroed before every optimizer step (so AdamW's moments
    for them stay zero), and the weights are multiplied by the mask after every step."""

    def __init__(self):
        self.params, self.masks = [], []

    def set(self, params: dict[str, torch.nn.Parameter], masks: dict[str, torch.Tensor]) -> None:
        self.params = list(params.values())
        self.masks = [masks[n].to(device=p.device, dtype=p.dtype) for n, p in params.items()]

    @torch.no_grad()
    def apply(self) -> None:
        if self.masks:
            torch._foreach_mul_([p.data for p in self.params], self.masks)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        grads = [p.grad for p in self.params]
        if self.masks and all(g is not None for g in grads):
            torch._foreach_mul_(grads, self.masks)

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.apply()  # whatever the optimizer did, pruned weights are exactly zero again


class RetrainBudget(TrainerCallback):
    def __init__(self, record: dict):
        self.record = record

    def on_step_end(self, args, state, control, **kwargs):
        stop = self.record["stop_step"]
        if self.record["phase"] == "retrain" and stop is not None and state.global_step >= stop:
            control.should_training_stop = True
        return control


class PhaseClock(TrainerCallback):
    """Charges wall time to the phase the run is in (the record's "phase")."""

    def __init__(self, record: dict):
        self.record, self._last = record, None

    def charge(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            # Writing the pruning checkpoint and continuing from it is part of pruning, not retraining.
            phase = "prune" if self.record.get("restarting") else self.record["phase"]
            self.record["phase_seconds"][phase] += now - self._last
        self._last = now

    def on_train_begin(self, args, state, control, **kwargs):
        if self._last is not None:  # the continuation of a structured run after its pruning checkpoint
            self.charge()
        self._last = time.perf_counter()
        self.record["restarting"] = False

    def on_save(self, args, state, control, **kwargs):
        self.charge()

    def on_train_end(self, args, state, control, **kwargs):
        self.charge()


class SavePruningState(TrainerCallback):
    def __init__(self, trainer):
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.trainer.save_pruning_state(os.path.join(args.output_dir, f"checkpoint-{state.global_step}"))
        if self.trainer.restart_pending(state.global_step):
            # Stop only once this checkpoint is written (the run continues from it); with the flag set
            # in on_step_end instead, the continued loop ran no steps (transformers 5.24).
            control.should_training_stop = True
        return control
