"""`PruningTrainer`: a `transformers.Trainer` whose `train()` runs Early-Bird search, pruning and
retraining. The training loop is HF's own; the callbacks in `pruning.run.callbacks` do the work and a
subclass only names its criterion:

    class MyPruningTrainer(PruningTrainer):
        criterion_class = MyCriterion

Structured pruning changes tensor shapes, which DDP's gradient buckets and the optimizer cannot
follow mid-loop. So at the pruning step the run writes a checkpoint of the smaller model (optimizer
state of the kept units sliced along) and continues from it through HF's own resume path, exactly
as a run resumed after a kill does: one code path, tested by the kill-and-resume tests.
"""
from __future__ import annotations

import os
import random
from dataclasses import asdict

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler

from pruning.data.evaluation import evaluate_dev_sets
from pruning.run import checkpoint as state_io, hidden_distill
from pruning.run.checkpoint import check_mask_source, read_masks
from pruning.run.callbacks import (EarlyBirdSearch, GradualPruning, KeepPrunedWeightsZero, PhaseClock, PruningActions,
                               RetrainBudget, SavePruningState)
from pruning.core.criterion import Criterion
from pruning.core.masks import assert_same_on_all_ranks, fingerprint
from pruning.core.pruned_model import as_pruned_model
from pruning.core.surgery import remove_units
from pruning.core.units import PrunableUnits, WHOLE_KINDS
from pruning.run.distill import LOGITS_COLUMN, distillation_loss
from pruning.run.measurements import structure_of
from pruning.run.pruning_config import PruningConfig
from pruning.run.run_state import GradualSchedule, RunState
from pruning.run.schedule import PhasePlan, gradual_fractions, gradual_steps

SNAPSHOT_FILE = "weights_at_prune.safetensors"


class ResumeMismatch(ValueError):
    """A checkpoint written by another criterion, granularity or pruning config."""


class PruningTrainer(Trainer):
    """HF Trainer whose one `train()` call runs Early-Bird search, pruning and masked retraining.

    Subclasses set `criterion_class`. Pass `pruning=PruningConfig(...)`; TrainingArguments must
    have num_train_epochs = search_epochs + retrain_epochs and the linear LR schedule (ValueError
    otherwise). The model and settings are checked before HF creates the output directory:
    ValueError from `PrunableUnits` and `PruningConfig.check_model`, and `read_masks`' errors for MASK_FROM.
    """
    criterion_class: type[Criterion] = Criterion

    def __init__(self, model=None, *args, pruning: PruningConfig | None = None, **kwargs):
        # Everything that can be wrong with the model and the pruning settings is checked before HF's
        # Trainer creates the output directory. (Moving the model to a device keeps its Parameter
        # objects, so the units stay valid.)
        self.pruning = pruning or PruningConfig()
        self.units = PrunableUnits(model, self.pruning.granularity, whole_kinds(self.pruning))
        self.pruning.check_model(self.units)
        self._fixed_masks = read_masks(self.pruning.mask_from, self.units) if self.pruning.mask_from else None
        super().__init__(model, *args, **kwargs)
        if getattr(self.args.lr_scheduler_type, "value", self.args.lr_scheduler_type) != "linear":
            raise ValueError("PruningTrainer uses a linear LR schedule that restarts its decay at pruning; "
                             f"got lr_scheduler_type={self.args.lr_scheduler_type}")
        self.criterion = self.criterion_class(self.units, **self.pruning.criterion_options)
        self.masks: dict[str, torch.Tensor] | None = None   # original-space keep-masks, once pruned
        self.scores_at_prune: dict[str, torch.Tensor] | None = None  # original-space scores the mask came from
        self.plan: PhasePlan | None = None
        self.run_state = RunState()
        self.search = EarlyBirdSearch(self, self.pruning.window, self.pruning.epsilon, self.pruning.check_every)
        self.keep_zero = KeepPrunedWeightsZero()
        # The deciding callbacks, then the one that acts on their decision, in this order: a step's
        # operations run as they always have (exact resume compares weights bit for bit).
        for callback in (self.search, GradualPruning(self), PruningActions(self),
                         self.keep_zero, RetrainBudget(self.run_state), PhaseClock(self.run_state),
                         SavePruningState(self)):
            self.add_callback(callback)
        self._restart_at: int | None = None
        self.epoch_draw: tuple[int, torch.Tensor] | None = None   # (epoch, RNG state its data order came from)
        self._resume_draw: tuple[int, torch.Tensor] | None = None  # a checkpoint's epoch_draw, for its epoch

    def _get_train_sampler(self, train_dataset=None):
        """HF's sampler; its length-grouped one replaced by `EpochOrderSampler`, which a mid-epoch resume
        can replay."""
        sampler = super()._get_train_sampler(train_dataset)
        if type(sampler) is LengthGroupedSampler:
            sampler.__class__ = EpochOrderSampler
            sampler.trainer = self
        return sampler

    def epoch_index(self) -> int:
        """The epoch the next training step belongs to (0-based), from the steps finished."""
        per_epoch = self.run_state.steps_per_epoch
        if per_epoch:
            return int(self.state.global_step // per_epoch)
        return int(self.state.epoch or 0)

    # --- schedule ------------------------------------------------------------------------------
    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """The run's LambdaLR over `PhasePlan.lr_factor` (linear decay, restarted at pruning), and the phase
        plan in steps. Raises ValueError unless num_train_epochs = search + retrain epochs and max_steps is
        unset, or (`gradual_steps`) when a gradual schedule does not fit the retrain phase."""
        if abs(self.args.num_train_epochs - self.pruning.total_epochs) > 1e-9 or self.args.max_steps > 0:
            raise ValueError(f"PruningTrainer needs num_train_epochs = search_epochs + retrain_epochs = "
                             f"{self.pruning.total_epochs} and no max_steps; got num_train_epochs="
                             f"{self.args.num_train_epochs}, max_steps={self.args.max_steps}")
        self.plan = PhasePlan.of(num_training_steps, self.args.num_train_epochs, self.pruning.search_epochs,
                                 self.pruning.retrain_epochs, self.args.get_warmup_steps(num_training_steps),
                                 self.pruning.skip_warmup)
        run = self.run_state
        run.steps_per_epoch, run.search_steps = self.plan.steps_per_epoch, self.plan.search_steps
        run.retrain_steps, run.first_check_after = self.plan.retrain_steps, self.plan.first_check_after
        if run.fixed_mask_from:  # a fixed mask trains the whole budget
            run.stop_step = run.retrain_steps = num_training_steps
        if self.pruning.gradual_updates:  # a schedule that cannot fit fails before the first step
            gradual_steps(self.plan.search_steps, self.plan.retrain_steps, self.pruning.gradual_updates,
                          self.pruning.gradual_span)
        if self.lr_scheduler is None:
            plan = self.plan

            def lr_factor(step):  # a plain function, so LambdaLR's state_dict stays picklable
                return plan.lr_factor(step, run.lr_restart_step, run.stop_step, run.lr_peak_step)
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, lr_factor)
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def create_optimizer(self, model=None):
        """HF's optimizer, plus a group for the criterion's extra parameters (weight decay 0) while searching."""
        optimizer = super().create_optimizer(model)
        extra = self.criterion.extra_parameters() if self.run_state.searching else []
        if extra:  # e.g. learnable unit coefficients: trained with the model, never decayed
            optimizer.add_param_group({"params": extra, "weight_decay": 0.0})
        return optimizer

    # --- distillation --------------------------------------------------------------------------
    @property
    def distilling(self) -> bool:
        """The retrain phase learns from the teacher's cached logits (the search phase from the labels)."""
        return self.pruning.distill and self.run_state.retraining

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if LOGITS_COLUMN not in self._signature_columns:  # HF drops dataset columns forward() does not take
            self._signature_columns.append(LOGITS_COLUMN)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """HF's loss, or in a distilling retrain phase `distillation_loss` on the batch's cached teacher logits
        (column LOGITS_COLUMN: float tensor (batch, labels)), which is popped from the inputs either way."""
        teacher = inputs.pop(LOGITS_COLUMN, None)
        if teacher is None or not self.distilling:  # evaluation batches carry no teacher logits
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        hidden = self.pruning.distill_hidden > 0 and bool(self.pruning.teacher)
        outputs = model(**inputs, output_hidden_states=True) if hidden else model(**inputs)
        loss = distillation_loss(outputs.logits, teacher, inputs.get("labels"), self.pruning.distill_temperature,
                                 self.pruning.distill_hardness)
        if hidden:  # layer-wise distillation from the dense model run online (pruning.run.hidden_distill)
            loss = loss + self.pruning.distill_hidden * self._hidden_term(outputs.hidden_states, inputs)
        return (loss, outputs) if return_outputs else loss

    def _hidden_term(self, student, inputs) -> torch.Tensor:
        """`hidden_distill.hidden_loss` of the student's hidden states against the online teacher's on this batch."""
        if getattr(self, "_online_teacher", None) is None:
            self._online_teacher = hidden_distill.load_online_teacher(self.pruning.teacher, student[0].device)
        with torch.no_grad():
            teacher = self._online_teacher(**{k: v for k, v in inputs.items() if k != "labels"},
                                           output_hidden_states=True).hidden_states
        return hidden_distill.hidden_loss(student, teacher, inputs.get("attention_mask"), self.units.live_layers(),
                                          self.pruning.distill_layer_map)

    # --- the gradients the criterion reads ------------------------------------------------------
    def read_gradients(self, observe: bool) -> None:
        """Hand this optimizer step's gradients to the criterion, once per optimizer step (HF's
        on_pre_optimizer_step: after the backward of every micro-batch of the step, the all-reduce and the
        clipping): `criterion.on_gradients()`, then `criterion.observe()` when `observe`. Under fp16 they
        are unscaled first if HF has not done so (`unscale_gradients`). A step whose gradients are not all
        finite, which the fp16 loss scaler skips, adds nothing to any score and is counted in
        `run_state.skipped_steps`."""
        unscale_gradients(self.accelerator, self.optimizer)
        if not gradients_finite(self.model):
            self.run_state.skipped_steps += 1
            return
        self.criterion.on_gradients()
        if observe:
            self.criterion.observe()

    # --- pruning -------------------------------------------------------------------------------
    def select_masks(self, scores: dict[str, torch.Tensor], fraction: float = 1.0) -> dict[str, torch.Tensor]:
        """Original-space keep-masks from live-unit scores at `fraction` of the target rates; units
        already pruned stay pruned and rank first, so each bucket's count is exact. `scores`: group ->
        float tensor of (live units,) or the weight's shape; returns group -> bool tensor (dense units,)."""
        original = self.units.to_original(scores, fill=float("-inf"))
        original.update(self.criterion.whole_scores(original))
        if self.masks is not None and not self.units.structured:
            original = {n: s.masked_fill(~self.masks[n].to(s.device), float("-inf")) for n, s in original.items()}
        config = self.pruning if fraction == 1.0 else self.pruning.scaled(fraction)
        return config.select(self.units, original, self.masks)

    def keep_scores(self, scores: dict[str, torch.Tensor]) -> None:
        """Keep the scores the pruning mask is selected from (original space; removed units -inf)."""
        original = self.units.to_original(scores, fill=float("-inf"))
        original.update(self.criterion.whole_scores(original))
        self.scores_at_prune = {n: s.detach().float().cpu().clone() for n, s in original.items()}

    def prune(self, masks, step: int, found: bool, optimizer, control) -> None:
        """Evaluate, prune to `masks`, evaluate again; the retrain phase starts."""
        run = self.run_state
        run.enter("prune")
        should_log = control.should_log  # evaluate() clears it: this step's training loss would go unlogged
        run.evals["before_prune"] = evaluate_dev_sets(self)
        self.criterion.before_removal(masks)
        if self.pruning.snapshot_path and self.is_world_process_zero():  # the dense function at this step
            _write_weights(self.model, self.pruning.snapshot_path)
        self.criterion.close()
        self._drop_from_optimizer(self.criterion.extra_parameters(), optimizer)
        n = self.pruning.gradual_updates
        if n and self.plan.retrain_steps:  # gradual: the first share of the target now, the rest in updates
            fractions = gradual_fractions(n, self.pruning.gradual_start)
            masks = self.pruning.scaled(fractions[0]).select(self.units, self.scores_at_prune)
            run.gradual = GradualSchedule(gradual_steps(step, self.plan.retrain_steps, n, self.pruning.gradual_span),
                                          fractions)
        self.apply_masks(masks, optimizer)
        run.evals["after_prune"] = evaluate_dev_sets(self)
        control.should_log = should_log
        run.eb_found, run.prune_step, run.lr_restart_step = found, step, step
        run.stop_step = step + self.plan.retrain_steps
        run.enter("retrain")
        if self.units.structured and self.plan.retrain_steps:
            self._restart_from(step, control)

    def update_masks(self, step: int, optimizer, control) -> None:
        """A gradual update: the criterion's current scores select the mask at this update's share of
        the target; what was pruned stays pruned."""
        run = self.run_state
        gradual = run.gradual
        k = gradual.done + 1
        scores = self.criterion.scores()
        self.keep_scores(scores)  # the final mask's scores are those of the last update
        self.criterion.reset()
        run.enter("prune")
        self.apply_masks(self.select_masks(scores, gradual.fractions[k]), optimizer)
        gradual.done = k
        gradual.fingerprints.append(run.mask_fingerprint)
        if self.pruning.gradual_rewarm:
            run.lr_restart_step = step
        run.enter("retrain")
        if self.units.structured:
            self._restart_from(step, control)

    def _restart_from(self, step: int, control) -> None:
        control.should_save = True  # SavePruningState stops the loop once this checkpoint is written
        self._restart_at = step
        self.run_state.restarting = True

    def _drop_from_optimizer(self, params, optimizer) -> None:
        """The criterion's own parameters (slimming coefficients) leave the optimizer and the LR
        schedule, so the checkpoint written at pruning holds only the model's."""
        opt = getattr(optimizer, "optimizer", optimizer)
        ids = {id(p) for p in params}
        if opt is None or not ids:
            return
        drop = [i for i, g in enumerate(opt.param_groups) if any(id(p) in ids for p in g["params"])]
        opt.param_groups[:] = [g for i, g in enumerate(opt.param_groups) if i not in drop]
        for p in params:
            opt.state.pop(p, None)
        for attr in ("base_lrs", "_last_lr"):
            values = getattr(self.lr_scheduler, attr, None)
            if isinstance(values, list):
                setattr(self.lr_scheduler, attr, [v for i, v in enumerate(values) if i not in drop])

    def apply_masks(self, masks: dict[str, torch.Tensor], optimizer=None) -> None:
        """Prune to `masks` (original-space keep-masks: group -> bool tensor of the dense group's shape).
        May be called again with a smaller mask (gradual pruning); what was pruned stays pruned.
        Raises RuntimeError when ranks hold different masks (`assert_same_on_all_ranks`)."""
        if self.masks is not None:
            masks = {n: m & self.masks[n].to(m.device) for n, m in masks.items()}
        print_ = fingerprint(masks)
        assert_same_on_all_ranks(print_, "pruning")
        self.run_state.mask_fingerprint = print_
        self.masks = {n: m.cpu() for n, m in masks.items()}
        if self.units.structured:
            removed = remove_units(self.units, masks, optimizer)
            self.run_state.record_removed(removed)
            return
        self.keep_zero.set(self.units.params, masks)
        opt = getattr(optimizer, "optimizer", optimizer)
        if opt is not None:  # momentum from the dense phase must not push pruned weights back
            for p, m in zip(self.keep_zero.params, self.keep_zero.masks):
                for value in opt.state.get(p, {}).values():
                    if isinstance(value, torch.Tensor) and value.shape == p.shape:
                        value.mul_(m)
        self.keep_zero.apply()

    def pruned_zeros(self) -> int:
        """Weights an unstructured mask holds at zero (structured pruning removes its units instead)."""
        if self.masks is None or self.units.structured:
            return 0
        return sum(int((~m).sum()) for m in self.masks.values())

    def start_from_fixed_mask(self) -> None:
        """Train another run's mask, fixed from step 0 (optionally from that run's early-bird weights).
        Raises FileNotFoundError when REWIND_TO="early_bird" but the source run saved no SNAPSHOT_FILE."""
        source, masks = self.pruning.mask_from, self._fixed_masks
        if self.pruning.rewind_to == "early_bird":
            path = os.path.join(source, SNAPSHOT_FILE)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path} not found: rewinding to the early-bird weights needs a source run "
                                        "made with SAVE_EB_WEIGHTS=True")
            self.model.load_state_dict({k: v.to(self.model.device) for k, v in load_file(path).items()})
        run = self.run_state
        run.evals["before_prune"] = evaluate_dev_sets(self)
        self.criterion.close()
        self.apply_masks(masks)
        run.evals["after_prune"] = evaluate_dev_sets(self)
        run.prune_step, run.fixed_mask_from = 0, os.path.abspath(source)
        run.enter("retrain")  # before training: no time is charged

    # --- the run -------------------------------------------------------------------------------
    def restart_pending(self, step: int) -> bool:
        """True when the run stops at optimizer step `step` to continue on the smaller model from its checkpoint."""
        return self._restart_at == step

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """HF's save_model; a heads+neurons model whose units were removed is first turned into its family's
        pruned class (`pruned_model.as_pruned_model`, with the original indices of the heads and layers kept),
        so the directory loads with `AutoModelForSequenceClassification.from_pretrained(path,
        trust_remote_code=True)`. Checkpoints (`_internal_call`) save the model as it trains; they are read back
        by this trainer's own resume."""
        if not _internal_call and self.units.structured and self.masks is not None:
            kept = structure_of(self.units)
            layers = kept.get("layers_kept")
            as_pruned_model(self.model, [kept["heads_kept"][i] for i in layers] if layers else kept["heads_kept"],
                            layers)
        super().save_model(output_dir, _internal_call)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """HF's train(), then once more from each pruning checkpoint of a structured run (see the module
        docstring). `resume_from_checkpoint=True` takes the last checkpoint with pruning state; raises
        FileNotFoundError / ResumeMismatch as `load_pruning_state` does."""
        checkpoint = None
        # HF draws the length-grouped sampler's order from the global RNG before it restores a
        # checkpoint's RNG. A fresh process resuming a run has the RNG state of this point there, so
        # the evaluations of a fixed mask, and a restart at pruning, must start from it too.
        rng_at_start = _rng_state()
        if resume_from_checkpoint:
            checkpoint = state_io.last_checkpoint_with_pruning_state(self.args.output_dir) \
                if resume_from_checkpoint is True else str(resume_from_checkpoint)
            self.load_pruning_state(checkpoint)
        elif self.pruning.mask_from:
            self.start_from_fixed_mask()
            _set_rng_state(rng_at_start)
        output = super().train(resume_from_checkpoint=checkpoint, **kwargs)
        while self._restart_at is not None:  # structured pruning happened: continue on the smaller model
            checkpoint = os.path.join(self.args.output_dir, f"checkpoint-{self._restart_at}")
            self._restart_at = None
            self.accelerator.wait_for_everyone()  # rank 0 has finished writing the checkpoint
            self.model_wrapped, self.optimizer, self.lr_scheduler = self.model, None, None
            _set_rng_state(rng_at_start)
            output = super().train(resume_from_checkpoint=checkpoint, **kwargs)
        return output

    # --- checkpoints ---------------------------------------------------------------------------
    def save_pruning_state(self, directory: str) -> None:
        """Write the criterion state, the detectors, the keep-masks and the scores at pruning, with the run
        state and config, to `directory`/PRUNING_STATE_FILE (`state.write`: safetensors plus JSON metadata)."""
        tensors = {f"criterion/{k}": v for k, v in self.criterion.state_dict().items()}
        detectors = self.search.state_dict()
        for kind, det in detectors.items():
            for i, m in enumerate(det.pop("masks")):
                tensors[f"detector/{kind}/mask/{i}"] = torch.from_numpy(m)
            reference = det.pop("reference")
            if reference is not None:
                tensors[f"detector/{kind}/reference"] = torch.from_numpy(reference)
        if self.masks is not None:
            tensors.update(state_io.pack_masks(self.masks, "keep/"))
        if self.scores_at_prune is not None:
            tensors.update({f"score/{n}": s for n, s in self.scores_at_prune.items()})
        if self.epoch_draw is not None:
            tensors["sampler/rng_state"] = self.epoch_draw[1]
        meta = {"run_state": self.run_state.to_dict(),
                "sampler_epoch": None if self.epoch_draw is None else self.epoch_draw[0], "detectors": detectors, "config": _config_dict(self.pruning),
                "criterion": self.criterion.name, "granularity": self.units.granularity,
                "groups": {n: list(g.shape) for n, g in self.units.mask_groups.items()}}
        state_io.write(os.path.join(directory, state_io.PRUNING_STATE_FILE), tensors, meta)

    def load_pruning_state(self, directory: str) -> None:
        """Restore what `save_pruning_state` wrote in `directory`, shrinking the model to its masks first.
        Raises FileNotFoundError when there is none, and ResumeMismatch (a ValueError) when it was written
        by another criterion, granularity, set of groups or pruning config."""
        path = os.path.join(directory, state_io.PRUNING_STATE_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint {directory} has no {state_io.PRUNING_STATE_FILE}: it was not written by "
                                    "a PruningTrainer, so its masks and detector state are unknown. Resume it with "
                                    "the trainer that wrote it, or start a fresh run.")
        tensors, meta = state_io.read(path)
        groups = {n: list(g.shape) for n, g in self.units.mask_groups.items()}
        if meta["criterion"] != self.criterion.name or meta["groups"] != groups:
            raise ResumeMismatch(f"checkpoint {directory} was written by a {meta['criterion']} run over "
                             f"{len(meta['groups'])} {meta['granularity']} groups; this is a {self.criterion.name} "
                             f"run over {len(groups)} {self.units.granularity} groups")
        if meta["config"] != _config_dict(self.pruning):
            raise ResumeMismatch(f"checkpoint {directory} used pruning config {meta['config']}, this run uses "
                             f"{_config_dict(self.pruning)}; resume with the same settings")
        self.criterion.load_state_dict({k[len("criterion/"):]: v for k, v in tensors.items()
                                        if k.startswith("criterion/")})
        detectors = meta["detectors"]
        for kind, det in detectors.items():
            det["masks"] = [tensors[f"detector/{kind}/mask/{i}"].numpy()
                            for i in range(sum(k.startswith(f"detector/{kind}/mask/") for k in tensors))]
            ref = tensors.get(f"detector/{kind}/reference")
            det["reference"] = None if ref is None else ref.numpy()
        self.search.load_state_dict(detectors)
        # Checkpoints written before RunState hold the old record dict under "record".
        self.run_state.load(meta["run_state"] if "run_state" in meta else meta["record"])
        scores = {k[len("score/"):]: v for k, v in tensors.items() if k.startswith("score/")}
        self.scores_at_prune = scores or None
        if "sampler/rng_state" in tensors:  # checkpoints before EpochOrderSampler lack it
            self._resume_draw = (meta["sampler_epoch"], tensors["sampler/rng_state"])
        if any(k.startswith("keep/") for k in tensors):
            self.criterion.close()
            removed_before = self.run_state.removed_units
            # The dense model is rebuilt to the checkpoint's shapes before HF loads its weights.
            self.apply_masks(state_io.unpack_masks(tensors, "keep/",
                                                   {n: g.shape for n, g in self.units.mask_groups.items()}))
            self.run_state.removed_units = removed_before

    # --- results -------------------------------------------------------------------------------
    def pruning_summary(self) -> dict:
        """The run's summary dict (`pruning.run.measurements.summary`)."""
        from pruning.run.measurements import summary
        return summary(self)


class EpochOrderSampler(LengthGroupedSampler):
    """HF's `LengthGroupedSampler` that remembers which RNG state each epoch's order was drawn from
    (`PruningTrainer.epoch_draw`, saved with every checkpoint), so a run resumed in the middle of an epoch
    draws the same order.

    HF draws a length-grouped epoch's permutation from the global torch RNG when the epoch starts; a run
    resumed mid-epoch restores the checkpoint's RNG only after skipping the batches already trained, so without
    this it would draw the resumed epoch's order from the RNG of process start and train on other batches
    (any epoch after the first). An uninterrupted run draws exactly as HF's sampler does."""
    trainer: "PruningTrainer"

    def __iter__(self):
        epoch, resume = self.trainer.epoch_index(), self.trainer._resume_draw
        self.trainer._resume_draw = None
        if resume is not None and resume[0] == epoch:  # the epoch a checkpoint was written in: its draw again
            self.generator = torch.Generator()
            self.generator.set_state(resume[1])
            state = resume[1]
        else:
            self.generator, state = None, torch.get_rng_state()
        self.trainer.epoch_draw = (epoch, state.clone())
        return super().__iter__()


@torch.no_grad()
def gradients_finite(model: torch.nn.Module) -> bool:
    """Whether every gradient of `model`'s parameters is finite (parameters without one are left out).
    Under DDP the gradients are all-reduced by then, so every rank answers alike. One host sync."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())


def unscale_gradients(accelerator, optimizer) -> None:
    """Divide the gradients by the fp16 loss scale, unless they are unscaled already this step (HF
    unscales inside its gradient-norm computation: `Trainer._get_grad_norm`, transformers 5.24) or no
    scaler runs (fp32, bf16). Reads torch's GradScaler per-optimizer stage (`torch.amp.grad_scaler.OptState`)."""
    scaler = getattr(accelerator, "scaler", None)
    if scaler is None or not scaler.is_enabled() or optimizer is None:
        return
    from torch.amp.grad_scaler import OptState
    inner = optimizer
    while hasattr(inner, "optimizer"):  # accelerate's AcceleratedOptimizer wraps the torch optimizer
        inner = inner.optimizer
    if scaler._per_optimizer_states[id(inner)]["stage"] is OptState.READY:
        accelerator.unscale_gradients()


def _rng_state() -> tuple:
    return (random.getstate(), np.random.get_state(), torch.random.get_rng_state(),
            torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def _set_rng_state(state: tuple) -> None:
    random.setstate(state[0])
    np.random.set_state(state[1])
    torch.random.set_rng_state(state[2])
    if state[3] is not None:
        torch.cuda.set_rng_state_all(state[3])


def _config_dict(config: PruningConfig) -> dict:
    """The settings a resumed run must share (where to write snapshots may differ)."""
    d = asdict(config)
    d.pop("snapshot_path")
    for key in ("mlp_rate", "layer_rate"):  # absent from checkpoints written before whole MLPs / layers
        if not d[key]:
            d.pop(key)
    if not d["distill_hidden"]:  # absent from checkpoints written before hidden-state distillation (issue 36)
        for key in ("distill_hidden", "distill_layer_map", "teacher"):
            d.pop(key)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def _write_weights(model, path: str) -> None:
    tmp = path + ".tmp"
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, tmp)
    os.replace(tmp, path)


def whole_kinds(config: PruningConfig) -> tuple[str, ...]:
    """The whole unit kinds ("mlp", "layer") a run's units need: those its rates remove, or for a MASK_FROM
    run those its source mask holds (a group named "<layers>.mlps" / "<layers>.layers")."""
    if not config.mask_from:
        return config.whole_kinds
    groups = check_mask_source(config.mask_from, config.granularity)["groups"]
    return tuple(k for k in WHOLE_KINDS if any(n.endswith(f".{k}s") for n in groups))
