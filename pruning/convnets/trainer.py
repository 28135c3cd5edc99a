"""The search phase of a channel early-bird run: an HF Trainer whose callbacks decide and whose trainer acts.

`ChannelSearchTrainer` trains the dense network; `EarlyBirdChannels` (a TrainerCallback) hands each optimizer
step's gradients to the criterion (slimming's L1 step from the first step, as You et al. train; scores only
after the warm-up), and every `check_every` steps builds the keep-mask the criterion would prune at `rate`
(global threshold or one per group), pushes it into `earlybird.EarlyBirdDetector` (You et al.: normalized
Hamming distance of the newest mask to each of the last `window` - 1, all below `epsilon`) and, when it is
settled, stops the search. The trainer then owns the mask; the experiment removes the channels and retrains.

Every HF checkpoint gets `pruning_state.safetensors` beside it (criterion sums, detector FIFO and history, the
epoch), so a killed search resumes through HF's own `resume_from_checkpoint` and finds the same early bird.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from transformers import Trainer, TrainerCallback

from earlybird import EarlyBirdDetector
from pruning.core.masks import select
from pruning.run import checkpoint as state_io


class EpochOfData(TrainerCallback):
    """Tells the train set which epoch it is (its augmentation draws depend on it), from the steps done, so a
    run resumed mid-epoch draws as the uninterrupted one did."""

    def __init__(self, dataset, steps_per_epoch: int):
        self.dataset, self.steps_per_epoch = dataset, max(1, steps_per_epoch)

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.epoch = state.global_step // self.steps_per_epoch


class EarlyBirdChannels(TrainerCallback):
    """Decides: feeds the criterion, checks the mask every `check_every` steps after `first_check`, stops the
    search when the detector is settled."""

    def __init__(self, trainer: "ChannelSearchTrainer"):
        self.t = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        t = self.t
        t.criterion.on_gradients()
        if state.global_step >= t.first_check - t.check_every or not t.criterion.observes:
            t.criterion.observe()

    def on_step_end(self, args, state, control, **kwargs):
        t, step = self.t, state.global_step
        t.criterion.after_step()
        if step < t.first_check or (step - t.first_check) % t.check_every:
            return
        masks = t.current_masks()
        t.criterion.reset()
        t.last_masks = masks
        if t.detector.update(torch.cat([masks[n] for n in t.units.groups]), step):
            t.eb_step = t.detector.found_step
            control.should_training_stop = True


class ChannelSearchTrainer(Trainer):
    """HF Trainer for the dense search with the Early-Bird detector on channel masks. `units`: ChannelUnits;
    `criterion`: a ChannelCriterion; `rate`: fraction of channels to prune; `scope`: "global" (one threshold over
    all groups, You et al.'s) or "layerwise" (the rate in each group); `first_check`: the first step checked
    (the warm-up's end)."""

    def __init__(self, *args, units, criterion, rate: float, scope: str, check_every: int, window: int,
                 epsilon: float, first_check: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.units, self.criterion, self.rate, self.scope = units, criterion, rate, scope
        self.check_every, self.first_check = max(1, check_every), max(1, first_check)
        self.detector = EarlyBirdDetector(window, epsilon)
        self.eb_step: int | None = None
        self.last_masks: dict[str, torch.Tensor] | None = None
        self.last_scores: dict[str, torch.Tensor] | None = None   # the scores last_masks came from
        self.add_callback(EarlyBirdChannels(self))

    def current_masks(self) -> dict[str, torch.Tensor]:
        """The keep-masks the criterion's current scores select at `rate` (one channel of each group stays)."""
        scores = {n: s.detach().float().cpu() for n, s in self.criterion.scores().items()}
        self.last_scores = scores
        return select(scores, self.rate, self.scope, min_keep=1, layers=self.units.layers())

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
        path = os.path.join(self.args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        self.save_search_state(path)

    def save_search_state(self, directory: str) -> None:
        tensors = {f"criterion/{k}": v.detach().cpu() for k, v in self.criterion.state_dict().items()}
        det = self.detector
        for i, m in enumerate(det.masks):
            tensors[f"detector/mask/{i}"] = torch.from_numpy(np.asarray(m))
        meta = {"criterion": self.criterion.name, "numel": det.numel, "history": det.history,
                "found_step": det.found_step, "groups": {n: g.size for n, g in self.units.groups.items()}}
        state_io.write(os.path.join(directory, state_io.PRUNING_STATE_FILE), tensors, meta)

    def load_search_state(self, directory: str) -> None:
        tensors, meta = state_io.read(os.path.join(directory, state_io.PRUNING_STATE_FILE))
        groups = {n: g.size for n, g in self.units.groups.items()}
        if meta["criterion"] != self.criterion.name or meta["groups"] != groups:
            raise ValueError(f"checkpoint {directory} was written by a {meta['criterion']} run over other channel "
                             "groups; resume with the same settings")
        self.criterion.load_state_dict({k[len("criterion/"):]: v for k, v in tensors.items()
                                        if k.startswith("criterion/")})
        det = self.detector
        det.numel, det.history, det.found_step = meta["numel"], meta["history"], meta["found_step"]
        det.masks.clear()
        for i in range(sum(k.startswith("detector/mask/") for k in tensors)):
            det.masks.append(tensors[f"detector/mask/{i}"].numpy())

    def train(self, resume_from_checkpoint=None, **kwargs):
        if resume_from_checkpoint:
            self.load_search_state(resume_from_checkpoint)
            if self.detector.found_step is not None:  # saved at the early-bird step itself: nothing to train
                from earlybird import unpack_mask
                self._load_from_checkpoint(resume_from_checkpoint)
                self.eb_step = self.detector.found_step
                flat = unpack_mask(self.detector.masks[-1], self.detector.numel)
                sizes = [g.size for g in self.units.groups.values()]
                self.last_masks = dict(zip(self.units.groups, flat.split(sizes)))
                return None
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
