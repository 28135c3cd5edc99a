"""One training run: `PruningTrainer` and its callbacks, the pruning settings (`pruning_config`) and the checks of
every setting (`checks`), the step plan and learning-rate policy (`schedule`), distillation (`distill`), the run's
state and what each checkpoint saves of it (`run_state`, `checkpoint`), the training cost log (`training_cost`)
and what the tracking integrations log (`tracking`), the trainer registry (`trainers`), the experiment's phases
(`experiment`), the end-of-run measurements (`measurements`), results.json's versioned layout (`schema`) and the
model card of what a run saves (`model_card`).

May import: `pruning.settings`, `pruning.core`, `pruning.data`, and `earlybird`; never deploy, studies or grid.
"""
