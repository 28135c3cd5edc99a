"""Prune a fine-tuned sequence classifier in minutes, without retraining (Kwon et al., NeurIPS 2022).

    python prune_finetuned.py --model=runs/NAME --constraint=0.6   # a finished run: its task, data and tokenizer
    python prune_finetuned.py --model=DIR --task=sst2              # a saved model directory (or a Hub id)
    python prune_finetuned.py --help

Fisher information of head and neuron masks over SAMPLE training examples (never the dev set), a mask search
under the FLOPs budget CONSTRAINT, rearrangement within each layer, and least-squares tuning of the kept
units' mask values layer by layer (`pruning.studies.retraining_free`); the pruned units are then physically removed.
With RETRAIN_EPOCHS > 0 a short recovery follows, distilled from the input model (a cheap start for longer recipes).
Writes OUT_DIR/NAME like a training run: results.json (with "post_training": each step's time and how tuning
changed each layer's error), model/ (loads with one call), masks.safetensors, structure.png; compress.py and
report.py read it. Nothing is written until the pruned model is made: a failure leaves OUT_DIR as it was.
"""
from __future__ import annotations

from pruning.settings import preflight

if __name__ == "__main__":  # --help (and a misspelt setting) answered before torch is imported
    preflight(__file__)

import contextlib
import datetime
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from datasets import Dataset, DatasetDict
from transformers import AutoConfig, DataCollatorWithPadding, Trainer, TrainingArguments

from pruning import host, settings
from pruning.core.fisher import ExampleMasks, example_losses, fisher_information
from pruning.core.layouts import layout_of
from pruning.core.pruned_model import as_pruned_model
from pruning.core.units import PrunableUnits, prunable_parameters
from pruning.data import evaluation, loading, models
from pruning.run import distill, experiment, measurements as run_results, model_card, schema
from pruning.run.checkpoint import MASKS_FILE, pack_masks, write as write_state
from pruning.studies import retraining_free as rf

# --- what to prune
MODEL = ""                 # a finished run's directory, a saved model directory, or a Hub id (a fine-tuned classifier)
TOKENIZER = ""             # "" = the run's, or the model directory's own
TASK = ""                  # "" = the run's task (sst2 for a model directory); else as bert.py's TASK
DATA_DIR = ""              # "" = the run's, else as bert.py's DATA_DIR
TEXT_COLUMNS = "text"      # custom tasks: as bert.py's
LABEL_COLUMN = "label"     # custom tasks: as bert.py's
MAX_LENGTH = 128           # tokens kept per example
# --- the method
CONSTRAINT = 0.6           # FLOPs budget: a fraction in (0, 1] of the input model's forward FLOPs on the sample
SAMPLE = 2000              # training examples (seeded, never dev) for the Fisher information and the tuning
BATCH_SIZE = 32            # sentences per batch of those passes
REARRANGE = True           # step 2: rearrange each layer's mask under its block of the Fisher information
TUNE = True                # step 3: tune the kept units' mask values by least squares, layer by layer
DAMPING = 1e-3             # of the least-squares solve, relative to the mean diagonal of its normal equations
SEED = 0                   # draws the sample (and the recovery's subset and order)
# --- optional recovery: a short training of the pruned model, distilled from the input model
RETRAIN_EPOCHS = 0.0       # epochs over RETRAIN_SUBSET train examples after pruning; 0 = none (retraining-free)
RETRAIN_SUBSET = 0         # train examples for the recovery (seeded); 0 = the whole train split
LEARNING_RATE = 2e-5       # recovery: AdamW peak learning rate (linear warm-up over 6% of the steps, then decay)
DISTILL_TEMPERATURE = 2.0  # recovery: softmax temperature of the distillation loss (as bert.py's)
DISTILL_HARDNESS = 1.0     # recovery: weight of the input model's soft labels; 1 - hardness goes to the true labels
# --- output
MEASURE_SPEED = True       # time the pruned model against a dense one of its architecture, side by side (PyTorch)
OUT_DIR = "runs"           # the run directory is created here
RUN_NAME = ""              # "" = prune_finetuned-c<CONSTRAINT>-s<SEED>-<time stamp>


TASK_DEFAULTS = {"TASK": TASK, "DATA_DIR": DATA_DIR, "TEXT_COLUMNS": TEXT_COLUMNS, "LABEL_COLUMN": LABEL_COLUMN}


def check(config: dict) -> dict:
    """Everything about the settings and the input model that can be wrong, before any work: the ranges, the
    model (a classifier head; its labels against the task's), the task's data and the family's layout.
    Returns the resolved inputs (model directory, task settings, input run). Raises ConfigError, DataError or
    ModelError naming the setting and the fix."""
    if not config["MODEL"]:
        raise settings.ConfigError("name the fine-tuned model: --model=runs/NAME (a finished run), a saved model "
                                     "directory, or a Hub id")
    if not 0 < config["CONSTRAINT"] <= 1:
        raise settings.ConfigError(f"--constraint={config['CONSTRAINT']}: a fraction of the model's FLOPs in (0, 1]")
    for key, least in (("SAMPLE", 1), ("BATCH_SIZE", 1), ("MAX_LENGTH", 3)):
        if config[key] < least:
            raise settings.ConfigError(f"--{key.lower()}={config[key]}: must be at least {least}")
    if config["DAMPING"] < 0:
        raise settings.ConfigError(f"--damping={config['DAMPING']}: must be >= 0")
    if config["RETRAIN_EPOCHS"] < 0 or config["RETRAIN_SUBSET"] < 0 or not config["LEARNING_RATE"] > 0:
        raise settings.ConfigError("--retrain_epochs and --retrain_subset must be >= 0 and --learning_rate > 0")
    try:
        distill.check_settings(config["DISTILL_TEMPERATURE"], config["DISTILL_HARDNESS"])
    except ValueError as e:
        raise settings.ConfigError(str(e)) from None
    source, run = config["MODEL"], None
    if (Path(source) / schema.FILE).exists() and (Path(source) / "model" / "config.json").exists():
        run = schema.read(source)
        source = str(Path(source) / "model")
    task_settings = dict(run.config.settings) if run else {}
    for key in ("TASK", "DATA_DIR", "TEXT_COLUMNS", "LABEL_COLUMN"):  # a finished run's own, unless set here
        if config[key] and (not run or config[key] != TASK_DEFAULTS[key]):
            task_settings[key] = config[key]
    task_settings.setdefault("TASK", "sst2")
    path, _ = models.resolve(source, "model", "Set --model to a finished run, a saved model directory or a Hub id")
    saved = AutoConfig.from_pretrained(path)
    if not models.has_classifier_head(saved):
        architectures = ", ".join(saved.architectures or ["no architectures"])
        raise settings.ConfigError(f"MODEL={config['MODEL']!r} has no classifier head ({architectures}): "
                                     "retraining-free pruning keeps a fine-tuned classifier's function; fine-tune it "
                                     "first (python bert.py --trainer=dense ...)")
    try:
        layout_of(saved)
    except ValueError as e:
        raise settings.ConfigError(str(e).replace("granularity 'heads+neurons'", "prune_finetuned.py")) from None
    return {"source": source, "run": run, "settings": task_settings,
            "tokenizer": config["TOKENIZER"] or (run.config.settings.get("TOKENIZER", "") if run else "")}


def load_inputs(config: dict, inputs: dict):
    """(task, model in eval mode, tokenizer, the model's description, the tokenized splits, where the data came
    from): the task's data read strictly, the model with the task's labels (one error when its head does not fit:
    `models.check_head`), and tokenized: the seeded sample ("train"), the dev sets and, with RETRAIN_EPOCHS, the
    recovery's examples ("recovery")."""
    task, datasets, source = loading.load(**loading.run_task(inputs["settings"]))
    tokenizer_name = inputs["tokenizer"] if inputs["tokenizer"] and not Path(inputs["source"], "tokenizer.json").exists() \
        else ""
    model, tokenizer, description = models.load_model_and_tokenizer(
        inputs["source"], tokenizer_name, num_labels=task.num_labels, label_names=task.label_names,
        how_to_fix="Set --model to a finished run, a saved model directory or a Hub id")
    sample = loading.subset(datasets["train"], config["SAMPLE"], config["SEED"])
    splits = {"train": sample, **{s: datasets[s] for s in task.dev_splits}}
    if config["RETRAIN_EPOCHS"]:
        splits["recovery"] = loading.subset(datasets["train"], config["RETRAIN_SUBSET"], config["SEED"] + 1)
    encoded = loading.tokenize(DatasetDict(splits), tokenizer, config["MAX_LENGTH"], task)
    return task, model.eval(), tokenizer, description, encoded, source


def evaluate(model, batches: list[dict], task, masks: dict | None = None, units=None) -> tuple[dict, np.ndarray]:
    """(results.json metrics: the task's metrics and the mean loss, the predictions) of `model` on `batches`,
    with mask values `masks` (group -> (units,)) on `units` when given."""
    logits, labels = [], []
    with torch.no_grad(), ExampleMasks(units, masks) if masks is not None else contextlib.nullcontext() as gates:
        for batch in batches:
            if gates is not None:
                gates.set(batch["input_ids"].shape[0])
            logits.append(model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float())
            labels.append(batch["labels"])
    logits, labels = torch.cat(logits), torch.cat(labels)
    predictions = task.predictions(logits.numpy())
    metrics = {name: None for name in schema.Metrics.__dataclass_fields__ if name != "other_dev_sets"}
    metrics.update(task.score(predictions, labels.numpy()))
    metrics["loss"] = float(example_losses(logits, labels).mean())
    return metrics, predictions


def evaluate_dev_sets(model, dev: dict[str, list[dict]], task, masks: dict | None = None,
                      units=None) -> tuple[dict, np.ndarray]:
    """`evaluate` on the task's first dev set, with the other dev sets (MNLI's mismatched) under
    "other_dev_sets" by their short names; the predictions are the first dev set's."""
    metrics, predicted = evaluate(model, dev[task.dev], task, masks, units)
    others = {evaluation.dev_set_name(s): evaluate(model, dev[s], task, masks, units)[0] for s in task.dev_splits[1:]}
    return ({**metrics, "other_dev_sets": others} if others else metrics), predicted


def prune(config: dict, model, units: PrunableUnits, batches: list[dict], costs: rf.Costs, seconds: dict):
    """Steps 1-3 (`pruning.studies.retraining_free`) on `batches`: (the searched/rearranged keep-mask, the mask values
    to apply, the tuning report or None). Each step's seconds go into `seconds`."""
    started = time.perf_counter()
    with tqdm(total=sum(b["input_ids"].shape[0] for b in batches), desc="fisher", unit="ex") as bar:
        fisher = fisher_information(model, units, batches, progress=bar.update)
    seconds["fisher"] = time.perf_counter() - started
    started = time.perf_counter()
    kinds = {name: g.kind for name, g in units.groups.items()}
    keep = rf.search_mask(fisher.diagonal, kinds, costs, config["CONSTRAINT"] * costs.dense)
    seconds["search"] = time.perf_counter() - started
    if config["REARRANGE"]:
        started = time.perf_counter()
        keep = {name: rf.rearrange(m, fisher.grads[name]) for name, m in tqdm(keep.items(), desc="rearrange")}
        seconds["rearrange"] = time.perf_counter() - started
    values, report = {n: m.float() for n, m in keep.items()}, None
    if config["TUNE"]:
        started = time.perf_counter()
        with tqdm(total=len(units.groups), desc="tune") as bar:
            values, report = rf.tune_masks(model, units, keep, batches, config["DAMPING"], progress=bar.update)
        seconds["tune"] = time.perf_counter() - started
    return keep, values, report, fisher.diagonal


class RecoveryTrainer(Trainer):
    """HF's Trainer whose loss is the distillation loss (`distill.distillation_loss`) against the input model's
    logits, which every training row carries under `distill.LOGITS_COLUMN`."""

    def __init__(self, *args, temperature: float, hardness: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.temperature, self.hardness = temperature, hardness

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        teacher, labels = inputs.pop(distill.LOGITS_COLUMN), inputs.pop("labels")
        outputs = model(**inputs)
        loss = distill.distillation_loss(outputs.logits, teacher, labels, self.temperature, self.hardness)
        return (loss, outputs) if return_outputs else loss


def recover(config: dict, model, rows: list[dict], teacher_logits, collate) -> dict:
    """Train the pruned `model` for RETRAIN_EPOCHS over `rows`, distilled from `teacher_logits` (the input
    model's, (rows, labels)); returns the recovery's record (epochs, examples, optimizer steps, seconds)."""
    started = time.perf_counter()
    train = Dataset.from_list([{**r, distill.LOGITS_COLUMN: t.tolist()} for r, t in zip(rows, teacher_logits)])
    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(output_dir=scratch, num_train_epochs=config["RETRAIN_EPOCHS"],
                                 per_device_train_batch_size=config["BATCH_SIZE"], learning_rate=config["LEARNING_RATE"],
                                 warmup_steps=0.06, weight_decay=0.01, save_strategy="no", report_to=[],  # a float: a ratio
                                 logging_steps=50, seed=config["SEED"], remove_unused_columns=False, use_cpu=True)
        trainer = RecoveryTrainer(model=model, args=args, train_dataset=train, data_collator=collate,
                                  temperature=config["DISTILL_TEMPERATURE"], hardness=config["DISTILL_HARDNESS"])
        steps = trainer.train().global_step
    model.eval()
    return {"epochs": config["RETRAIN_EPOCHS"], "examples": len(rows), "steps": steps,
            "learning_rate": config["LEARNING_RATE"], "temperature": config["DISTILL_TEMPERATURE"],
            "hardness": config["DISTILL_HARDNESS"], "seconds": time.perf_counter() - started}


def run_directory(config: dict) -> Path:
    """OUT_DIR/RUN_NAME (refused when it exists) or a fresh time-stamped name."""
    out = Path(config["OUT_DIR"])
    if config["RUN_NAME"]:
        if (out / config["RUN_NAME"]).exists():
            raise settings.ConfigError(f"{out / config['RUN_NAME']} exists; choose another --run_name or leave it "
                                         "empty for a fresh, time-stamped directory")
        return out / config["RUN_NAME"]
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return out / f"prune_finetuned-c{config['CONSTRAINT']:g}-s{config['SEED']}-{stamp}"


def main(config: dict) -> dict:
    """Check, load, prune (steps 1-3), apply, evaluate and write the run directory; returns results.json's dict."""
    started = time.perf_counter()
    inputs = check(config)
    run_dir = run_directory(config)
    seconds: dict[str, float] = {}
    task, model, tokenizer, description, encoded, source = load_inputs(config, inputs)
    collate = DataCollatorWithPadding(tokenizer)
    rows = loading.model_rows(encoded["train"])
    batches = rf.sample_batches(rows, collate, config["BATCH_SIZE"])
    dev = {s: rf.sample_batches(loading.model_rows(encoded[s]), collate, 64) for s in task.dev_splits}
    units = PrunableUnits(model, "heads+neurons")
    lengths = list(encoded["train"]["length"])
    costs = rf.unit_costs(model, units, lengths)
    least = rf.smallest_budget(costs, {name: g.kind for name, g in units.groups.items()}) / costs.dense
    if config["CONSTRAINT"] < least:  # an impossible budget is refused before any work
        raise settings.ConfigError(f"--constraint={config['CONSTRAINT']:g} is below what one head per layer costs "
                                     f"with every FFN neuron removed: set it to at least {least:.3f}")
    seconds["load"] = time.perf_counter() - started
    dense_split = run_results.parameter_split(model)
    started = time.perf_counter()
    before, _ = evaluate_dev_sets(model, dev, task)
    seconds["evaluate"] = time.perf_counter() - started
    recovery_rows = loading.model_rows(encoded["recovery"]) if config["RETRAIN_EPOCHS"] else []
    teacher_logits = distill.compute_logits(model, recovery_rows, collate) if recovery_rows else None
    keep, values, report, scores = prune(config, model, units, batches, costs, seconds)
    started = time.perf_counter()
    untuned, _ = evaluate_dev_sets(model, dev, task, {n: m.float() for n, m in keep.items()}, units)
    seconds["evaluate"] += time.perf_counter() - started
    started = time.perf_counter()
    removed = rf.apply(units, values)
    seconds["apply"] = time.perf_counter() - started
    final, predicted = evaluate_dev_sets(model, dev, task)
    recovery = None
    if recovery_rows:  # the tuned model's metrics stay in the record; "final" is after the recovery
        recovery = {**recover(config, model, recovery_rows, teacher_logits, collate), "tuned": final}
        seconds["recovery"] = recovery["seconds"]
        final, predicted = evaluate_dev_sets(model, dev, task)
    flops = run_results.forward_flops(model, lengths)
    print(f"FLOPs on the sample: {flops / costs.dense:.3f} of the input model's (constraint {config['CONSTRAINT']:g})")
    speed = None
    if config["MEASURE_SPEED"]:
        speed = run_results.measure_speed(model, loading.model_rows(encoded[task.dev]), encoded["train"].select(
            range(min(160, len(encoded["train"])))).to_list(), collate)
    results = write_run(config, inputs, run_dir, task, model, tokenizer, description, source, encoded, units,
                        {"before_prune": before, "after_prune": untuned, "final": final}, predicted, removed,
                        {"flops_input": costs.dense, "flops_pruned": flops, "report": report, "seconds": seconds,
                         "dense_split": dense_split, "speed": speed, "keep": keep, "scores": scores,
                         "recovery": recovery})
    experiment.print_summary(schema.parse(results), run_dir)
    return results


def write_run(config, inputs, run_dir, task, model, tokenizer, description, source, encoded, units, metrics,
              predicted, removed, extra) -> dict:
    """The run directory, written in a temporary directory beside it and renamed into place: model/ (the
    toolkit's pruned class: one call loads it), results.json, masks.safetensors, structure.png."""
    structure = run_results.structure_of(units)
    as_pruned_model(model, structure["heads_kept"])
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}-", dir=run_dir.parent))
    try:
        model.save_pretrained(work / "model")
        tokenizer.save_pretrained(work / "model")
        write_masks(work, extra["keep"], extra["scores"], description)
        dev = encoded[task.dev]
        lengths, report = list(dev["length"]), extra["report"]
        task_settings = {k: inputs["settings"][k] for k in ("TASK", "DATA_DIR", "TEXT_COLUMNS", "LABEL_COLUMN")
                         if k in inputs["settings"]}  # the task as resolved (a finished run's own)
        run_settings = {**config, **task_settings, "GRANULARITY": "heads+neurons", "TRAINER": "retraining-free"}
        results = {
            "script": Path(sys.argv[0]).name if sys.argv[0].endswith(".py") else "prune_finetuned.py",
            "run_dir": str(run_dir), "trainer": "retraining-free", "model": description,
            # a finished run's own MODEL: what compress.py's --dense=<that run> is checked against
            "model_source": inputs["run"].model_source if inputs["run"] else config["MODEL"],
            "task": experiment.task_record(task), "data": source,
            "train_rows": len(encoded["train"]), "dev_rows": len(dev),
            "truncation": {"strategy": "head", "max_length": config["MAX_LENGTH"],
                           "train": loading.truncated_count(encoded["train"]),
                           "dev": {task.dev: loading.truncated_count(dev)}},
            "test_predictions": None, "config": run_settings, "world_size": 1,
            "optimizer_steps": extra["recovery"]["steps"] if extra["recovery"] else 0,
            "metrics": metrics, "total_params": sum(p.numel() for p in model.parameters()),
            "nonzero_params": sum(int((p != 0).sum()) for p in model.parameters()),
            "parameters": {"dense": extra["dense_split"], "final": run_results.parameter_split(model)},
            **run_results.sparsity_of({n: p.detach() for n, p in prunable_parameters(model).items()}),
            "train_seconds": extra["recovery"]["seconds"] if extra["recovery"] else 0.0, "peak_rss_mb": host.peak_rss_mb(),
            "cost": {"train_flos": None, "dev_tokens": int(sum(lengths)), "mean_train_tokens": None,
                     "train_flops": 0.0, "inference_flops_dense": run_results.forward_flops(model, lengths),
                     "inference_flops_nonzero": run_results.forward_flops(model, lengths, count_zeros=False),
                     "dev_sentences_per_second": None},
            "speed": extra["speed"], "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
            "log_history": [], "accuracy_timeline": [], "cost_series": [], "early_stopping": None,
            "dev_predictions": {"predicted": predicted.tolist(), "label": list(dev["label"])},
            "distillation": None if not extra["recovery"] else {
                "teacher": config["MODEL"], "temperature": config["DISTILL_TEMPERATURE"],
                "hardness": config["DISTILL_HARDNESS"], "cached": False, "seconds": None, "compute_seconds": None,
                "file": None},
            "phase_seconds": {"prune": sum(v for k, v in extra["seconds"].items() if k != "recovery"),
                              **({"retrain": extra["seconds"]["recovery"]} if "recovery" in extra["seconds"] else {})},
            "pruning": pruning_summary(config, structure, removed, extra["seconds"]),
            "post_training": {
                "constraint": config["CONSTRAINT"], "flops_input": extra["flops_input"],
                "flops_pruned": extra["flops_pruned"], "sample": len(encoded["train"]),
                "rearranged": config["REARRANGE"], "tuned": config["TUNE"], "damping": config["DAMPING"],
                "step_seconds": extra["seconds"],
                "tuning": None if report is None else {n: {"before": report.before[n], "after": report.after[n],
                                                          "used": report.tuned[n]} for n in report.before},
                "input_run": str(Path(config["MODEL"])) if inputs["run"] else "", "recovery": extra["recovery"]},
        }
        results = schema.write(work / schema.FILE, results)
        model_card.save(model_card.run_card(schema.parse(results), work / "model", machine=model_card.this_machine(),
                                            command=model_card.command_line(__file__, sys.argv[1:])), work / "model")
        run_results.plot_structure(structure, work / "structure.png", title=f"{description} · retraining-free · "
                                   f"FLOPs {config['CONSTRAINT']:g}")
        os.replace(work, run_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return results


def write_masks(directory: Path, keep: dict, scores: dict, description: str) -> None:
    """masks.safetensors as a training run writes it: the keep-masks over the input model's units and the Fisher
    diagonal they were searched from (a fixed mask for MASK_FROM; lottery.py's tickets)."""
    meta = {"granularity": "heads+neurons", "criterion": "fisher", "model": description,
            "groups": {n: list(m.shape) for n, m in keep.items()}}
    write_state(str(directory / MASKS_FILE), {**pack_masks(keep, "keep/"),
                                               **{f"score/{n}": s.float() for n, s in scores.items()}}, meta)


def pruning_summary(config, structure, removed, seconds) -> dict:
    """results.json's "pruning" section of a retraining-free run: the Fisher criterion at heads+neurons, no
    early bird and no steps, the structure kept and the units removed."""
    heads = sum(structure["heads_total_per_layer"])
    neurons = sum(structure["neurons_total_per_layer"])
    return {"criterion": "fisher", "granularity": "heads+neurons", "scope": "global", "rate": None,
            "head_rate": 1 - sum(structure["heads_kept_per_layer"]) / heads,
            "neuron_rate": 1 - sum(structure["neurons_kept_per_layer"]) / max(1, neurons),
            "eb_found": None, "eb_step": None, "eb_epoch": None, "prune_step": 0, "search_steps_budget": 0,
            "retrain_steps": 0, "steps_per_epoch": None, "fixed_mask_from": None, "gradual": None,
            "detector": {"window": None, "epsilon": None, "check_every": None}, "distance_history": None,
            "mask_fingerprint": None, "removed_units": removed, "phase_seconds": dict(seconds),
            "structure": structure}


if __name__ == "__main__":
    try:
        main(experiment.configure(globals()))
    except (settings.ConfigError, loading.DataError, models.ModelError, FileNotFoundError) as e:
        settings.fail(e)
