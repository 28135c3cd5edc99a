"""One experiment, shared by bert.py and roberta.py: data and model, one `trainer.train()` (search -> prune ->
retrain), results. `run` reads as its phases (`place_run`, `load_inputs`, `check_step_plan`, `attach_teacher`,
`make_trainer`, `announce`, `train`, `evaluate`, `collect_results`, `add_pruning_results`), each a function of its
own. The configuration comes from `pruning.settings` (the script's constants and the command line; `configure`
below also turns a trainer's name into its class), its checks from `pruning.run.checks`: everything that can be
wrong with the input is refused before the run directory is created, and a run never writes into a directory that
holds another run's results.
"""
from __future__ import annotations

import datetime
import errno
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import transformers
from datasets import DatasetDict
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments, set_seed

from earlybird import plot_distances
from pruning import settings
from pruning.core.units import prunable_parameters
from pruning.data import evaluation, loading, models, tasks
from pruning.data.tasks import METRIC_TITLES, Task
from pruning.host import peak_rss_mb
from pruning.run import checks, distill, measurements, model_card, schema, trainers
from pruning.run.callbacks import EarlyStopping
from pruning.run.checkpoint import run_checkpoints, write_masks
from pruning.run.checks import RUN_CONFIG_FILE, run_directory, validate
from pruning.run.pruning_config import PruningConfig, describe
from pruning.run.schedule import PhasePlan
from pruning.run.schema import write_json
from pruning.run.tracking import report_scalars
from pruning.run.trainer import PruningTrainer, ResumeMismatch, SNAPSHOT_FILE
from pruning.run.training_cost import CostLog, accuracy_timeline, cost_series
from pruning.settings import ConfigError, fail, text_columns, trainer_name

MODEL_HINT = ("Set --model to a local checkpoint directory, or build the architecture from a config with random "
              "init: --model=configs/roberta-base.json --tokenizer=../shared/roberta-base-tokenizer")


# --- metrics and callbacks -------------------------------------------------------------------------
class StopOnDivergence(TrainerCallback):
    """A NaN/inf loss or weight ends the run before it is saved over the last good checkpoint.

    The loss is checked at every log (on_log); the weights at every step that is about to be
    checkpointed (on_step_end with control.should_save: the step's update may have broken them after
    its loss was computed). Either raises FloatingPointError."""

    @staticmethod
    def _stop(what, state, args):
        raise FloatingPointError(
            f"training diverged: {what} by step {state.global_step}; stopped without saving. The last good "
            f"checkpoint (if any) is in {args.output_dir}. Lower LEARNING_RATE or check the data.")

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self._stop(f"the loss became {loss}", state, args)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if control.should_save and model is not None and \
                not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            self._stop("the weights became non-finite", state, args)


# --- the run ---------------------------------------------------------------------------------------
def _distributed_main_process() -> tuple[bool, int]:
    from accelerate import PartialState
    state = PartialState(cpu=not torch.cuda.is_available())  # without cpu=True, torchrun on CPU trains each rank alone
    return state.is_main_process, state.num_processes


def _broadcast(obj):
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]
    return obj


def build_trainer(config: dict, pruning: PruningConfig, model, tokenizer, encoded, output_dir, callbacks=(),
                  task: Task | None = None):
    """The configured Trainer (dense or pruning) over the tokenized train split and the task's dev sets:
    it evaluates on the first (`Task.dev`); `evaluation.evaluate_dev_sets` adds the others (MNLI's
    mismatched) to every stage's evaluation."""
    task = task or tasks.get("sst2")
    precision = config.get("PRECISION", "fp32")
    args = TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=pruning.total_epochs,  # the dense baseline gets the same total budget
        per_device_train_batch_size=config["BATCH_SIZE"], per_device_eval_batch_size=128,
        learning_rate=config["LEARNING_RATE"], weight_decay=config["WEIGHT_DECAY"],
        warmup_steps=config["WARMUP_RATIO"], lr_scheduler_type="linear",
        optim="adamw_torch_fused",  # one fused kernel: ~7x faster optimizer step than the foreach AdamW on CPU
        train_sampling_strategy="group_by_length", length_column_name="length",
        seed=config["SEED"], data_seed=config["SEED"],
        logging_steps=config["LOG_EVERY"], logging_nan_inf_filter=False,
        save_strategy="steps", save_steps=config["SAVE_EVERY"], save_total_limit=2,
        eval_strategy="steps" if config["EVAL_EVERY"] else "no", eval_steps=config["EVAL_EVERY"] or None,
        report_to=checks.report_integrations(config.get("REPORT_TO", "none")) or "none", disable_tqdm=False,
        # Hardware and precision (the hardware-and-precision block of bert.py); defaults are HF's own.
        bf16=precision == "bf16", fp16=precision == "fp16",
        gradient_accumulation_steps=config.get("GRAD_ACCUMULATION", 1), max_grad_norm=config.get("MAX_GRAD_NORM", 1.0),
        # None leaves PyTorch's TF32 setting alone; False under COMPILE stops HF from turning TF32 on itself.
        tf32=True if config.get("TF32") else (False if config.get("COMPILE") else None),
        torch_compile=bool(config.get("COMPILE", False)),
        # transformers 5 scales the loss by the world size when averaging tokens across devices,
        # which doubles a sequence classifier's loss and gradients under DDP.
        average_tokens_across_devices=False,
        include_num_input_tokens_seen="non_padding",  # the real tokens each step trains on: CostLog's FLOPs
        dataloader_num_workers=config.get("DATALOADER_WORKERS", 0), dataloader_pin_memory=torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(),
    )
    trainer_kwargs = dict(model=model, args=args, train_dataset=encoded["train"],
                          eval_dataset=encoded[task.dev], processing_class=tokenizer,
                          data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=evaluation.metric_function(task),
                          callbacks=[StopOnDivergence(), *callbacks])
    if issubclass(config["TRAINER"], PruningTrainer):
        trainer_kwargs["pruning"] = pruning
    trainer = config["TRAINER"](**trainer_kwargs)
    # A classifier's loss is the mean over its micro-batch. HF takes a model whose forward() has **kwargs
    # (BERT, RoBERTa) to normalise by num_items_in_batch itself and then skips the division by the
    # accumulation steps; their classification loss ignores it, so with GRAD_ACCUMULATION=k the gradients
    # came out k times those of one batch k times larger. Off: HF divides each micro-batch's mean by k.
    trainer.model_accepts_loss_kwargs = False
    trainer.other_dev_sets = {evaluation.dev_set_name(s): encoded[s] for s in task.dev_splits[1:]}
    if config.get("EARLY_STOPPING_PATIENCE", 0):  # a pruning run watches its retrain phase only
        trainer.add_callback(EarlyStopping(config["EARLY_STOPPING_PATIENCE"], config["EARLY_STOPPING_THRESHOLD"],
                                           getattr(trainer, "run_state", None)))
    if args.report_to:  # the cost series and the pruning scalars reach HF's integrations (TensorBoard, ...)
        report_scalars(trainer)
    return trainer


def early_stopping_of(trainer) -> EarlyStopping | None:
    """The trainer's EarlyStopping callback, or None when it has none."""
    return next((c for c in trainer.callback_handler.callbacks if isinstance(c, EarlyStopping)), None)


@dataclass
class Place:
    """Where a run writes and who writes: its directory, whether this is the main process, how many processes, and
    the settings a continuation must match."""
    run_dir: Path
    is_main: bool
    world: int
    started_with: dict


@dataclass
class Inputs:
    """What a run trains on: the task, its data (read, subset and tokenized), the model and its tokenizer."""
    task: Task
    data_source: str
    model: object
    tokenizer: object
    model_description: str
    train_rows: object
    encoded: object
    truncation: dict

    @property
    def dev(self):
        return self.encoded[self.task.dev]


def run(config: dict, script: str, callbacks: tuple = ()) -> dict | None:
    """Run the experiment; return the results dict (on the main process) and write the run directory.

    `callbacks` are extra TrainerCallbacks (the tests use one to SIGKILL a run at a chosen step). Every check runs
    before the first training step; each phase below is a function of its own.
    """
    pruning = validate(config)
    place = place_run(config, script)
    inputs = load_inputs(config, pruning)
    check_step_plan(config, pruning, inputs, place.world)
    teacher = attach_teacher(config, inputs)
    dense_split = measurements.parameter_split(inputs.model)
    trainer, cost = make_trainer(config, pruning, inputs, place, callbacks)
    announce(config, pruning, inputs, place, script)
    train_seconds = train(trainer, config, place)
    outcome = evaluate(trainer, config, inputs, place)
    if not place.is_main:
        return None
    results = collect_results(config, script, trainer, inputs, place, outcome, cost, dense_split, train_seconds,
                              teacher)
    if isinstance(trainer, PruningTrainer):
        add_pruning_results(results, trainer, pruning, inputs, place, teacher)
    else:  # periodic dev evaluations (EVAL_EVERY) are not training time
        results["phase_seconds"] = {"train": cost.train_seconds}
    results = schema.write(place.run_dir / schema.FILE, results)  # declared in pruning.run.schema; refuses an undeclared key
    print_summary(schema.parse(results), place.run_dir)
    return results


def place_run(config: dict, script: str) -> Place:
    """The run directory (named on the main process, broadcast to the others) and, for RESUME, the check that the
    run on disk is the same experiment (before any loading). Raises ConfigError as `checks.check_continuation`."""
    is_main, world = _distributed_main_process()
    run_dir = Path(_broadcast(str(run_directory(config, script)) if is_main else None))
    started_with = {"config": checks.recordable(config), "world_size": world}
    if config["RESUME"]:
        checks.check_continuation(run_dir, {**started_with["config"], "WORLD_SIZE": world},
                                  "Resume with the recorded settings, or start a new run under another RUN_NAME.")
    return Place(run_dir, is_main, world, started_with)


def load_inputs(config: dict, pruning: PruningConfig) -> Inputs:
    """Model names first (seconds), then the data, then the model itself, each checked as it comes: all of it fails
    before any training. Raises ConfigError, DataError or ModelError naming the setting to change."""
    models.resolve(config["MODEL"], "model", MODEL_HINT)
    task, datasets, data_source = loading.load(config["TASK"], config["DATA_DIR"], text_columns(config),
                                               config["LABEL_COLUMN"], with_test=config["PREDICT_TEST"])
    checks.check_task(config, task, datasets)
    set_seed(config["SEED"])  # before building the model, so a random init is reproducible
    model, tokenizer, model_description = models.load_model_and_tokenizer(
        config["MODEL"], config["TOKENIZER"], num_labels=task.num_labels, how_to_fix=MODEL_HINT,
        attention=config.get("ATTENTION", ""), label_names=task.label_names)
    checks.check_model_and_tokenizer(config, model, tokenizer, task.is_pair)
    checks.check_architecture(pruning, model)
    trainable, _ = loading.hold_out(datasets["train"], config.get("HELD_OUT", 0))
    if config["TRAIN_SUBSET"] > len(trainable):
        raise ConfigError(f"TRAIN_SUBSET={config['TRAIN_SUBSET']} asks for more examples than the {len(trainable):,} "
                          f"there are to train on{' after HELD_OUT' if config.get('HELD_OUT') else ''}: set "
                          f"--train_subset={len(trainable)} or lower (0 = all)")
    train_rows = loading.subset(trainable, config["TRAIN_SUBSET"], config["SEED"])
    try:
        encoded = loading.tokenize(DatasetDict(train=train_rows, **{s: datasets[s] for s in datasets if s != "train"}),
                                   tokenizer, config["MAX_LENGTH"], task, config["TRUNCATION"])
    except ValueError as e:  # head+tail with a slow tokenizer
        raise ConfigError(str(e)) from None
    truncation = {"strategy": config["TRUNCATION"], "max_length": config["MAX_LENGTH"],
                  "train": loading.truncated_count(encoded["train"]),
                  "dev": {evaluation.dev_set_name(s): loading.truncated_count(encoded[s]) for s in task.dev_splits}}
    return Inputs(task, data_source, model, tokenizer, model_description, train_rows, encoded, truncation)


def check_step_plan(config: dict, pruning: PruningConfig, inputs: Inputs, world: int) -> None:
    """The step plan against the criterion (`checks.check_plan`): a pruning run that searches needs steps to score
    in. Nothing to check for the dense baseline or a fixed mask. Raises ConfigError."""
    if config["TRAINER"] is Trainer or pruning.mask_from:
        return
    _, total = checks.planned_steps(len(inputs.train_rows), config["BATCH_SIZE"], world, pruning.total_epochs,
                                    config.get("GRAD_ACCUMULATION", 1))
    plan = PhasePlan.of(total, pruning.total_epochs, pruning.search_epochs, pruning.retrain_epochs,
                        checks.hf_warmup_steps(config["WARMUP_RATIO"], total), pruning.skip_warmup)
    checks.check_plan(plan, config["TRAINER"].criterion_class,
                      (pruning.gradual_updates, pruning.gradual_span) if pruning.gradual_updates else None)


def attach_teacher(config: dict, inputs: Inputs) -> dict | None:
    """With TEACHER: the teacher's logits for every train sentence, computed once, cached under OUT_DIR and added
    to the train set as a column; returns what results.json records of it (None without a teacher)."""
    if not config.get("TEACHER"):
        return None
    encoded = inputs.encoded
    try:
        logits, teacher = distill.cached_logits(config["TEACHER"], encoded["train"].to_list(),
                                                DataCollatorWithPadding(inputs.tokenizer),
                                                Path(config["OUT_DIR"]) / "teacher_logits",
                                                inputs.model.config.vocab_size)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    encoded["train"] = encoded["train"].add_column(distill.LOGITS_COLUMN, logits.tolist())
    teacher.update(teacher=os.path.abspath(config["TEACHER"]), temperature=config["DISTILL_TEMPERATURE"],
                   hardness=config["DISTILL_HARDNESS"])
    return teacher


def make_trainer(config: dict, pruning: PruningConfig, inputs: Inputs, place: Place, callbacks: tuple):
    """The run's trainer and its cost log. Settings that need the model (a head rate that empties a layer, an
    unsupported architecture, a fixed mask for another model) are checked by PruningTrainer before it creates any
    directory; they raise ConfigError."""
    if config.get("SAVE_EB_WEIGHTS"):
        pruning.snapshot_path = str(place.run_dir / SNAPSHOT_FILE)
    cost = CostLog(mean_length=float(np.mean(inputs.encoded["train"]["length"])))
    try:
        trainer = build_trainer(config, pruning, inputs.model, inputs.tokenizer, inputs.encoded,
                                place.run_dir / "checkpoints", (cost, *callbacks), inputs.task)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if isinstance(trainer, PruningTrainer):
        cost.pruned_zeros = trainer.pruned_zeros
    return trainer, cost


def announce(config: dict, pruning: PruningConfig, inputs: Inputs, place: Place, script: str) -> None:
    """On the main process: create the run directory, record what a continuation must match (RUN_CONFIG_FILE, once)
    and print what is about to run."""
    if not place.is_main:
        return
    run_dir, task, encoded, truncation = place.run_dir, inputs.task, inputs.encoded, inputs.truncation
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / RUN_CONFIG_FILE).exists():
        write_json(run_dir / RUN_CONFIG_FILE, {**place.started_with, "script": Path(script).name})
    name = trainer_name(config["TRAINER"])
    print(f"run directory: {run_dir}\nmodel: {inputs.model_description}\ntask: {task.title} ({task.headline})\n"
          f"data: {inputs.data_source} ({len(inputs.train_rows):,} train / "
          + " + ".join(f"{len(encoded[s]):,}" for s in task.dev_splits) + " dev examples; truncated to "
          f"{config['MAX_LENGTH']} tokens ({config['TRUNCATION']}): {truncation['train']:,} train / "
          f"{sum(truncation['dev'].values()):,} dev)\ntrainer: {name}"
          + (f", {describe(pruning)}" if name != "dense" else ""), flush=True)


def train(trainer, config: dict, place: Place) -> float:
    """`trainer.train()`, resumed from the newest complete checkpoint with RESUME (HF's own pick for a dense run is
    the newest folder, complete or not). A run that fails before its first complete checkpoint leaves nothing
    that blocks its name. Returns this process's training seconds (its share, when resumed)."""
    started = time.perf_counter()
    resume = None
    if config["RESUME"]:
        resume = True if isinstance(trainer, PruningTrainer) else run_checkpoints(place.run_dir)[-1]
    try:
        trainer.train(resume_from_checkpoint=resume)
    except BaseException:
        if place.is_main and not run_checkpoints(place.run_dir):
            shutil.rmtree(place.run_dir, ignore_errors=True)
        raise
    return time.perf_counter() - started


def evaluate(trainer, config: dict, inputs: Inputs, place: Place) -> dict:
    """After training: every dev set, the dev predictions (on every rank: predict() gathers), the test predictions
    (PREDICT_TEST), the speed against a dense model (MEASURE_SPEED, pruned runs only: a dense run would time itself
    against itself), and the model saved to run_dir/model (on every rank: HF decides which one writes; heads+neurons
    runs save with their per-layer shapes)."""
    task, encoded, dev = inputs.task, inputs.encoded, inputs.dev
    final = evaluation.evaluate_dev_sets(trainer)
    dev_predictions = measurements.dev_predictions(trainer, dev, task)
    test_predictions = (evaluation.write_test_predictions(trainer, task, encoded, place.run_dir / "predictions")
                        if config["PREDICT_TEST"] and place.is_main else None)
    speed = None
    if place.is_main and isinstance(trainer, PruningTrainer) and config.get("MEASURE_SPEED", False):
        speed = measurements.measure_speed(inputs.model, loading.model_rows(dev),
                                          encoded["train"].select(range(min(160, len(encoded["train"])))).to_list(),
                                          DataCollatorWithPadding(inputs.tokenizer))
    trainer.save_model(str(place.run_dir / "model"))
    return {"final": final, "dev_predictions": dev_predictions, "test_predictions": test_predictions, "speed": speed}


def _metrics_of(evals: dict, task: Task) -> dict:
    return evaluation.stage_metrics(evals, task, tuple(evaluation.dev_set_name(s) for s in task.dev_splits[1:]))


def collect_results(config: dict, script: str, trainer, inputs: Inputs, place: Place, outcome: dict, cost: CostLog,
                    dense_split: dict, train_seconds: float, teacher: dict | None) -> dict:
    """The results dict of any run (the pruning summary is added by `add_pruning_results`), as results.json declares
    it (`pruning.run.schema`)."""
    model, task, dev, final = inputs.model, inputs.task, inputs.dev, outcome["final"]
    params = prunable_parameters(model)
    lengths = dev["length"]
    return {
        "script": Path(script).name, "run_dir": str(place.run_dir), "trainer": trainer_name(config["TRAINER"]),
        "model": inputs.model_description, "model_source": config["MODEL"],
        "task": task_record(task), "data": inputs.data_source, "train_rows": len(inputs.train_rows),
        "dev_rows": len(dev), "truncation": inputs.truncation, "test_predictions": outcome["test_predictions"],
        "config": {k: (trainer_name(v) if k == "TRAINER" else v) for k, v in config.items()},
        "world_size": place.world, "optimizer_steps": trainer.state.global_step,
        "metrics": {"final": _metrics_of(final, task)},
        "total_params": sum(p.numel() for p in model.parameters()),
        "nonzero_params": sum(int((p != 0).sum()) for p in model.parameters()),
        "parameters": {"dense": dense_split, "final": measurements.parameter_split(model)},
        **measurements.sparsity_of({n: p.detach() for n, p in params.items()}),
        "train_seconds": train_seconds, "peak_rss_mb": peak_rss_mb(),
        "cost": {"train_flos": float(trainer.state.total_flos), "dev_tokens": int(sum(lengths)),
                 "mean_train_tokens": cost.mean_length, "train_flops": cost.train_flops,
                 "inference_flops_dense": measurements.forward_flops(model, lengths),
                 "inference_flops_nonzero": measurements.forward_flops(model, lengths, count_zeros=False),
                 "dev_sentences_per_second": final.get("eval_samples_per_second")},
        "speed": outcome["speed"],
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "log_history": trainer.state.log_history,
        "accuracy_timeline": accuracy_timeline(trainer.state.log_history, task.headline),
        "cost_series": cost_series(trainer.state.log_history, task.headline),
        "early_stopping": early_stopping_summary(trainer),
        "dev_predictions": outcome["dev_predictions"], "distillation": teacher,
    }


def add_pruning_results(results: dict, trainer: PruningTrainer, pruning: PruningConfig, inputs: Inputs,
                        place: Place, teacher: dict | None) -> None:
    """A pruning run's additions to `results`: the metrics before and after pruning, the pruning summary and phase
    times (the teacher's forward passes charged to every run that uses them), masks.safetensors, the detector's
    distance plot and the structure plot."""
    summary = trainer.pruning_summary()
    evals = summary.pop("evals")
    task, run_dir = inputs.task, place.run_dir
    results["metrics"] = {"before_prune": _metrics_of(evals.get("before_prune", {}), task),
                          "after_prune": _metrics_of(evals.get("after_prune", {}), task),
                          "final": results["metrics"]["final"]}
    results["pruning"] = summary
    results["phase_seconds"] = summary["phase_seconds"]
    if teacher:
        results["phase_seconds"]["teacher"] = teacher["compute_seconds"]
    write_masks(trainer, str(run_dir), inputs.model_description)
    title = f"{inputs.model_description} · {summary['criterion']} · {describe(pruning)}"
    if not summary["fixed_mask_from"]:
        plot_distances(summary["distance_history"], summary["detector"]["epsilon"], run_dir / "mask_distance.png",
                       title=title, eb_step=summary["eb_step"], prune_step=summary["prune_step"])
    if summary["structure"]:
        measurements.plot_structure(summary["structure"], run_dir / "structure.png", title=title)


def early_stopping_summary(trainer) -> dict | None:
    """results.json's "early_stopping": the stopper's patience (evaluations) and threshold, whether it
    stopped and, if so, its `stop` record; None without an EarlyStopping callback."""
    stopper = early_stopping_of(trainer)
    if stopper is None:
        return None
    return {"patience": stopper.patience, "threshold": stopper.threshold, "stopped": stopper.stop is not None,
            **(stopper.stop or {})}


def task_record(task: Task) -> dict:
    """results.json's "task": what a reader needs to report the run without the task's declaration."""
    return {"name": task.name, "title": task.title, "metrics": list(task.metrics), "headline": task.headline,
            "label_names": None if task.label_names is None else list(task.label_names),
            "text_columns": list(task.text_columns), "dev_sets": [evaluation.dev_set_name(s) for s in task.dev_splits]}


def print_summary(results: schema.RunResults, run_dir: Path) -> None:
    """Print the run's summary on stdout: the task's metrics (x100) by stage and dev set, truncation, the early bird, what was kept,
    early stopping, speed, seconds by phase and peak RSS (MB), and where results.json is."""
    def pct(x):
        return "   -  " if x is None else f"{100 * x:6.2f}"
    names = results.task.metrics
    columns = [(None, name) for name in names]  # (dev set, metric): MNLI adds its mismatched set
    columns += [(other, name) for other in results.task.dev_sets[1:] for name in names]
    title = {n: METRIC_TITLES[n] for n in names}
    rows = [("stage", *(title[n] + (f" ({d})" if d else "") for d, n in columns))]
    for stage, label in (("before_prune", "dense, at pruning"), ("after_prune", "pruned, no retrain"),
                         ("final", "final")):
        m = getattr(results.metrics, stage)
        if m is not None:
            rows.append((label, *(pct(m.on(d).value(n)) for d, n in columns)))
    print(f"\n== {results.model} · {results.task.title} · {results.trainer} ==")
    width = max(8, *(len(c) for c in rows[0][1:]))
    for r in rows:
        print(f"  {r[0]:<22} " + " ".join(f"{c:>{width}}" for c in r[1:]))
    t = results.truncation
    if t and (t.train or any(t.dev.values())):
        print(f"  truncated to {t.max_length} tokens ({t.strategy}): {t.train:,} train and "
              f"{sum(t.dev.values()):,} dev examples")
    if results.test_predictions:
        print("  test predictions: " + ", ".join(results.test_predictions.values()))
    p = results.pruning
    if p and p.fixed_mask_from:
        print(f"  fixed mask from {p.fixed_mask_from}, trained from step 0")
    elif results.post_training:
        post = results.post_training
        print(f"  retraining-free (Fisher, {'rearranged, ' if post.rearranged else ''}"
              f"{'tuned' if post.tuned else 'not tuned'}): FLOPs {post.flops_pruned / post.flops_input:.3f} of the "
              f"input model's (constraint {post.constraint:g}), {post.sample:,} train examples")
    elif p:
        eb = (f"found at step {p.eb_step} (epoch {p.eb_epoch:.2f})" if p.eb_found
              else f"NOT found within {p.search_steps_budget} steps; pruned at the end of the search budget")
        print(f"  early bird: {eb}")
    if p and p.structure:
        s, dense, final = p.structure, results.parameters.dense, results.parameters.final
        print(f"  heads kept per layer: {s.heads_kept_per_layer} of {s.heads_total_per_layer[0]}; "
              f"FFN neurons kept per layer: {s.neurons_kept_per_layer} of {s.neurons_total_per_layer[0]}")
        print(f"  parameters: {final.total:,} of {dense.total:,} ({final.total / dense.total:.3f}); "
              f"without embeddings {final.without_embeddings:,} of {dense.without_embeddings:,} "
              f"({final.without_embeddings / dense.without_embeddings:.3f})")
    elif p:
        rate = p.rate
        target = f"target {100 * rate:.2f}%" if isinstance(rate, (int, float)) else f"per-layer rates {rate}"
        print(f"  sparsity of prunable weights: {100 * results.sparsity:.2f}% ({target}), nonzero "
              f"{results.prunable_nonzero:,} of {results.prunable_params:,}")
    stop = results.early_stopping
    if stop and stop.stopped:
        print(f"  early stopping: stopped at step {stop.step} ({stop.phase} phase): {stop.reason}")
    elif stop:
        print(f"  early stopping: not triggered (patience {stop.patience} evaluations)")
    speed = results.speed
    if speed:
        print(f"  speed vs a dense model, side by side: inference {speed.batch64_ratio:.2f}x sentences/s at batch 64, "
              f"{speed.batch1_ratio:.2f}x at batch 1; a training step {speed.train_step_speedup:.2f}x faster")
    print("  time: " + ", ".join(f"{k} {v:.0f}s" for k, v in results.phase_seconds.items())
          + f"; peak RSS {results.peak_rss_mb:.0f} MB")
    print(f"  results: {run_dir / schema.FILE}\n")


def configure(namespace: dict, argv: list[str] | None = None) -> dict:
    """A script's configuration (`pruning.settings.configure`: constants, `--key=value`, `--help`) with TRAINER as
    a class (`pruning.run.trainers.resolve`: a registered name imports its criterion module only now). Raises
    ConfigError as those do."""
    return trainers.resolve(settings.configure(namespace, argv))


def main(namespace: dict, argv: list[str] | None = None, callbacks: tuple = ()) -> None:
    """Entry point of bert.py / roberta.py: one clear line on bad input instead of a traceback."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        config = configure(namespace, argv)
        script = namespace.get("__file__", "script.py")
        results = run(config, script, callbacks)
        if results is not None:  # the main process, results.json written: the model card of model/
            model_card.write_run_card(results["run_dir"], results, machine=model_card.this_machine(),
                                      command=model_card.command_line(script, sys.argv[1:] if argv is None else argv))
    except (ConfigError, loading.DataError, models.ModelError, FileNotFoundError, ResumeMismatch) as e:
        fail(e)
    except FloatingPointError as e:  # training diverged
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(3) from None
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        print("error: the disk is full (no space left on device while writing the run's files): free some space or "
              "set --out_dir to another disk, then run again; a run stopped before its first complete checkpoint "
              "leaves nothing behind, a later one resumes with --run_name=NAME --resume=true", file=sys.stderr)
        raise SystemExit(1) from None
