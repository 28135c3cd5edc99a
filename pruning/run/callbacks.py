"""The TrainerCallbacks of a pruning run, one job each. `PruningTrainer` wires them together.

- `EarlyBirdSearch`: feeds the criterion during the search, runs the Early-Bird checks, and decides to
  prune when the bird is found or the search budget ends.
- `GradualPruning`: after the early bird, decides the mask updates of a gradual schedule (and feeds the
  scores they need).
- `PruningActions`: the trainer's own: carries out the decision of the step (prune, or update the mask).
- `KeepPrunedWeightsZero`: after unstructured pruning, masks gradients and weights every step.
- `RetrainBudget`: stops training when the retrain phase has had its steps.
- `PhaseClock`: wall time per phase (search / prune / retrain).
- `SavePruningState`: writes the pruning state beside every HF checkpoint.
- `EarlyStopping`: stops on validation loss (the dense baseline, or a pruning run's retrain phase).

Callbacks decide; the trainer acts: a decision is left on the run state (`RunState.decide`) and
`PruningActions`, registered right after the deciding callbacks, has the trainer carry it out in the
same `on_step_end`, before any later callback runs.
"""
from __future__ import annotations

import os

import torch
from transformers import TrainerCallback

from earlybird import EarlyBirdDetector, mask_fingerprint, pack_mask
from pruning.core.masks import assert_same_on_all_ranks, flat_mask
from pruning.run.run_state import GradualSchedule, Prune, RunState, UpdateMask

DETECTOR_OF_KIND = {"weight": "weights", "head": "heads", "neuron": "neurons", "mlp": "mlps", "layer": "layers"}


class EarlyBirdSearch(TrainerCallback):
    """One detector per unit kind (weights; or heads and neurons, and whole MLPs / layers when their rates are
    set). The bird is found at the first check
    where every detector's masks are settled (You et al. 2020's test, applied to each detector).

    During the search: on_pre_optimizer_step feeds the criterion, on_optimizer_step ends its step, and
    on_step_end runs the checks due (`PhasePlan.check_due`: every `check_every` optimizer steps after
    the warm-up, and at the end of the search budget) and decides when to prune."""

    def __init__(self, trainer, window: int, epsilon: float, check_every: int):
        self.trainer = trainer
        self.check_every = check_every
        kinds = trainer.units.kinds()
        self.detectors = {DETECTOR_OF_KIND[k]: EarlyBirdDetector(window, epsilon) for k in kinds}
        self.kind_groups = {DETECTOR_OF_KIND[k]: [n for n, g in trainer.units.mask_groups.items() if g.kind == k]
                            for k in kinds}

    @property
    def active(self) -> bool:
        """True while the run is in its search phase."""
        return self.trainer.run_state.searching

    def masks_now(self) -> dict[str, torch.Tensor]:
        """The keep-masks the criterion's current scores select (`trainer.select_masks`): group -> bool tensor
        of the dense group's shape."""
        return self.trainer.select_masks(self.trainer.criterion.scores())

    def on_train_begin(self, args, state, control, **kwargs):
        """At step 0 of a criterion that ranks before training, set each detector's reference mask."""
        criterion = self.trainer.criterion
        if self.active and state.global_step == 0 and criterion.ranks_at_start:
            masks = self.masks_now()  # the mask of the starting weights: how far the mask drifts from it
            for kind, det in self.detectors.items():
                det.set_reference(flat_mask({n: masks[n] for n in self.kind_groups[kind]}))

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        """Once per optimizer step (after every micro-batch's backward and the clipping): the step's
        gradients to the criterion (`PruningTrainer.read_gradients`), observed once `plan.first_check_after`
        steps are finished."""
        if self.active:  # global_step = steps finished
            self.trainer.read_gradients(observe=state.global_step >= self.trainer.plan.first_check_after)

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.active:
            self.trainer.criterion.after_step()

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        """At a due check: select masks from the scores, feed each detector its kind's flat mask, reset the
        criterion; decide `Prune` when every detector settled or the search budget (steps) is spent.
        Raises RuntimeError when ranks selected different masks."""
        step, plan = state.global_step, self.trainer.plan
        if not self.active or not plan.check_due(step, self.check_every):
            return control
        scores = self.trainer.criterion.scores()
        masks = self.trainer.select_masks(scores)
        for kind, det in self.detectors.items():
            flat = flat_mask({n: masks[n] for n in self.kind_groups[kind]})
            print_ = mask_fingerprint(pack_mask(flat))
            assert_same_on_all_ranks(print_, f"step-{step} {kind}")
            det.update(flat, step)
            det.history[-1]["fingerprint"] = print_
        found = all(det.settled for det in self.detectors.values())  # all of them, at this same check
        prune_now = found or step >= plan.search_steps
        if prune_now:  # kept before reset() clears them: the lottery study's "bad" tickets rank by them
            self.trainer.keep_scores(scores)
        self.trainer.criterion.reset()
        if prune_now:
            self.trainer.run_state.decide(Prune(masks, found))
        return control

    def state_dict(self) -> dict:
        """Each detector's `state_dict`, by detector name ("weights"; or "heads", "neurons")."""
        return {k: d.state_dict() for k, d in self.detectors.items()}

    def load_state_dict(self, state: dict) -> None:
        """Restore each detector from `state_dict`'s entry (ValueError if window or epsilon differ)."""
        for k, d in self.detectors.items():
            d.load_state_dict(state[k])

    def history(self) -> dict[str, list]:
        """Each detector's check history (list of {"step", "distances", "max_distance", ...}), by detector name."""
        return {k: d.history for k, d in self.detectors.items()}


class GradualPruning(TrainerCallback):
    """Raises the pruned share to the target at the steps of the gradual schedule (the run state's
    `gradual`, set at pruning). Until the last update an accumulating criterion keeps observing the
    retrain phase's gradients, so each update ranks by the scores since the one before."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.run, self.criterion = trainer.run_state, trainer.criterion

    def pending(self) -> GradualSchedule | None:
        """The gradual schedule while mask updates are still to come in the retrain phase, else None."""
        return self.run.gradual_pending()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.pending():
            self.trainer.read_gradients(observe=True)

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.pending():
            self.criterion.after_step()

    def on_step_end(self, args, state, control, **kwargs):
        """Decide `UpdateMask` at the step of the schedule's next update."""
        gradual = self.pending()
        if gradual and state.global_step == gradual.next_step:
            self.run.decide(UpdateMask())
        return control


class PruningActions(TrainerCallback):
    """Has the trainer carry out the decision the callbacks before it left on the run state at this
    step: `Prune` calls `trainer.prune`, `UpdateMask` calls `trainer.update_masks`."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        decision = self.trainer.run_state.take_decision()
        if isinstance(decision, Prune):
            self.trainer.prune(decision.masks, state.global_step, decision.found, optimizer, control)
        elif isinstance(decision, UpdateMask):
            self.trainer.update_masks(state.global_step, optimizer, control)
        return control


class KeepPrunedWeightsZero(TrainerCallback):
    """Unstructured pruning leaves zeros in dense tensors; keep them exactly zero.

    The pruned positions of the gradient are zeroed before every optimizer step (so AdamW's moments
    for them stay zero), and the weights are multiplied by the mask after every step."""

    def __init__(self):
        self.params, self.masks = [], []

    def set(self, params: dict[str, torch.nn.Parameter], masks: dict[str, torch.Tensor]) -> None:
        """Hold the masks (bool, each of its parameter's shape) cast to their parameter's device and dtype."""
        self.params = list(params.values())
        self.masks = [masks[n].to(device=p.device, dtype=p.dtype) for n, p in params.items()]

    @torch.no_grad()
    def apply(self) -> None:
        """Multiply the weights by their masks in place (a no-op before `set`)."""
        if self.masks:
            torch._foreach_mul_([p.data for p in self.params], self.masks)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        """Zero the pruned positions of the gradients (when every parameter has one)."""
        grads = [p.grad for p in self.params]
        if self.masks and all(g is not None for g in grads):
            torch._foreach_mul_(grads, self.masks)

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.apply()  # whatever the optimizer did, pruned weights are exactly zero again


class RetrainBudget(TrainerCallback):
    """Stops training at on_step_end once the retrain phase has had its steps (`RunState.retrain_budget_spent`)."""
    def __init__(self, run: RunState):
        self.run = run

    def on_step_end(self, args, state, control, **kwargs):
        if self.run.retrain_budget_spent(state.global_step):
            control.should_training_stop = True
        return control


class PhaseClock(TrainerCallback):
    """Charges wall time to the run state's phase when training starts, at every save and at the end
    (phase changes charge themselves: `RunState.enter`)."""

    def __init__(self, run: RunState):
        self.run = run

    def on_train_begin(self, args, state, control, **kwargs):
        self.run.start_clock()

    def on_save(self, args, state, control, **kwargs):
        self.run.charge()

    def on_train_end(self, args, state, control, **kwargs):
        self.run.charge()


class SavePruningState(TrainerCallback):
    """At every on_save (rank 0) writes the trainer's pruning state into the checkpoint-N folder HF just
    wrote; at a structured run's pruning checkpoint it then stops the loop, which continues from it."""
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


def stopping_evaluation(losses: list[float], patience: int, threshold: float = 0.0) -> int | None:
    """Index of the evaluation at which training stops: the `patience`-th in a row that does not lower
    the best loss so far by more than `threshold`; None while patience lasts."""
    best, waited = None, 0
    for i, loss in enumerate(losses):
        if best is None or loss < best - threshold:
            best, waited = loss, 0
        else:
            waited += 1
            if waited >= patience:
                return i
    return None


class EarlyStopping(TrainerCallback):
    """Stops training when the dev loss has not improved for `patience` evaluations.

    It watches the evaluations of the dense baseline, or of a pruning run's retrain phase only (the
    dense search phase is another model; `run` is the PruningTrainer's `run_state`). The decision is
    read from the log history each time, so a resumed run decides as the uninterrupted one would.
    HF's EarlyStoppingCallback compares with the best metric of the whole run, which for a pruning run
    is the dense model's, and keeps its counter in state that a resumed run does not restore by default.
    The model at the stop is kept: choosing the best checkpoint by dev loss would select on the set
    the final accuracy is reported on.
    """

    def __init__(self, patience: int, threshold: float = 0.0, run: RunState | None = None):
        self.patience, self.threshold, self.run = patience, threshold, run
        self.stop: dict | None = None
        self._training = False

    def on_train_begin(self, args, state, control, **kwargs):
        self._training = True

    def on_train_end(self, args, state, control, **kwargs):
        self._training = False

    def watched(self, log_history: list[dict]) -> list[dict]:
        """The evaluations (log entries with "eval_loss") that count: all for a dense run; for a pruning run
        only those after its pruning step, none before the retrain phase."""
        after = -1
        if self.run is not None:
            if not self.run.retraining:
                return []
            after = self.run.prune_step  # its two evaluations at pruning are not retrain evaluations
        return [e for e in log_history if "eval_loss" in e and e["step"] > after]

    def on_evaluate(self, args, state, control, **kwargs):
        """During training, stop (and fill `self.stop`) once `stopping_evaluation` says so."""
        if not self._training or self.stop is not None:
            return control
        evals = self.watched(state.log_history)
        at = stopping_evaluation([e["eval_loss"] for e in evals], self.patience, self.threshold)
        if at is not None:
            best = min(evals[:at + 1], key=lambda e: e["eval_loss"])
            self.stop = {"step": evals[at]["step"], "phase": self.run.phase if self.run else "dense",
                         "best_step": best["step"], "best_loss": best["eval_loss"], "loss": evals[at]["eval_loss"],
                         "reason": f"dev loss did not improve on {best['eval_loss']:.4f} (step {best['step']}) "
                                   f"by more than {self.threshold:g} for {self.patience} evaluations"}
            print(f"early stopping at step {self.stop['step']}: {self.stop['reason']}", flush=True)
            control.should_training_stop = True
        return control
