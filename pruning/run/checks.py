"""Checks of a run's settings against what they will meet: the model, its tokenizer, the data, the
step budget, and (for a continuation) the run already on disk.

Each check raises `ConfigError` with one line that names the setting and how to fix it. They run
before the run directory is created, so a refused run leaves nothing behind, and they use the
libraries' own arithmetic (HF's warm-up rounding, each architecture's position limit) so that what
they accept is exactly what will train.
"""
from __future__ import annotations

import datetime
import json
import math
import os
from pathlib import Path

from transformers import Trainer

from pruning.data import tasks
from pruning.data.loading import TRUNCATIONS
from pruning.run import distill
from pruning.run.checkpoint import RUN_CONFIG_FILE, check_mask_source, run_checkpoints
from pruning.run.pruning_config import PruningConfig, pruning_config
from pruning.run.trainer import SNAPSHOT_FILE
from pruning.run.trainers import trainers
from pruning.settings import ConfigError, rate_text, text_columns, trainer_name


# Settings that cannot change what a run computes: a continuation (--resume=true, a grid cell run
# again) may differ in them. Everything else must match the recorded configuration.
CONTINUATION_EXEMPT = ("OUT_DIR", "RUN_NAME", "RESUME", "SAVE_EVERY", "LOG_EVERY", "MEASURE_SPEED",
                       "DATALOADER_WORKERS", "REPORT_TO")


# --- what needs no data or model -------------------------------------------------------------------
def validate(config: dict) -> PruningConfig:
    """Every check that needs no data or model. Raises ConfigError with one clear message."""
    name = trainer_name(config["TRAINER"])
    try:
        pruning = pruning_config(config)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if name != "dense":
        criterion = config["TRAINER"].criterion_class
        if pruning.granularity not in criterion.granularities:
            raise ConfigError(f"TRAINER {config['TRAINER'].__name__} prunes {' or '.join(criterion.granularities)}, "
                              f"not {pruning.granularity!r}: set --granularity={criterion.granularities[0]}")
        if pruning.gradual_updates and pruning.granularity not in criterion.rescores:
            can = [n for n, t in trainers().items() if n != "dense" and pruning.granularity in t.criterion_class.rescores]
            raise ConfigError(f"GRADUAL_UPDATES needs scores after pruning, which the {criterion.name} criterion cannot "
                              f"give at granularity {pruning.granularity!r}: use {' or '.join(can) or 'another granularity'}")
        try:  # the criterion's own settings (e.g. UNDECAYED_EPSILON) fail here, not after loading data
            criterion.check_options(**pruning.criterion_options)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if name != "dense" and not pruning.mask_from and pruning.skip_warmup and \
            config["WARMUP_RATIO"] >= pruning.search_epochs / pruning.total_epochs:
        raise ConfigError(f"the LR warm-up ({config['WARMUP_RATIO']:g} of the budget) lasts past the search budget "
                          f"({pruning.search_epochs:g} of {pruning.total_epochs:g} epochs), and the detector starts "
                          "watching when the warm-up ends: shorten WARMUP_RATIO, lengthen SEARCH_EPOCHS, or set "
                          "EB_SKIP_WARMUP=false")
    if config.get("TEACHER"):
        if name == "dense":
            raise ConfigError("TEACHER distils into the retrain phase of a pruning run: it needs a PruningTrainer, "
                              "not the dense Trainer")
        try:
            distill.teacher_directory(config["TEACHER"])
        except FileNotFoundError as e:
            raise ConfigError(str(e)) from None
    if pruning.mask_from:
        if name == "dense":
            raise ConfigError("MASK_FROM trains a fixed mask: it needs a PruningTrainer, not the dense Trainer")
        try:  # the file and its granularity here; the model's shapes when the trainer is built
            check_mask_source(pruning.mask_from, pruning.granularity)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(str(e)) from None
        if pruning.rewind_to == "early_bird" and not os.path.isfile(os.path.join(pruning.mask_from, SNAPSHOT_FILE)):
            raise ConfigError(f"REWIND_TO=early_bird needs {os.path.join(pruning.mask_from, SNAPSHOT_FILE)}: run the "
                              "source with --save_eb_weights=true")
    for key in ("BATCH_SIZE", "MAX_LENGTH", "SAVE_EVERY", "LOG_EVERY"):
        if config[key] < 1:
            raise ConfigError(f"{key} must be >= 1, got {config[key]}")
    if config["EVAL_EVERY"] < 0:
        raise ConfigError(f"EVAL_EVERY must be >= 0 (0 = no evaluation during training), got {config['EVAL_EVERY']}")
    if config["SAVE_EVERY"] % config["LOG_EVERY"]:
        raise ConfigError(f"SAVE_EVERY ({config['SAVE_EVERY']}) must be a multiple of LOG_EVERY ({config['LOG_EVERY']}): "
                          "the loss is checked for NaN at each log, so that no checkpoint holds a diverged model")
    patience, threshold = config.get("EARLY_STOPPING_PATIENCE", 0), config.get("EARLY_STOPPING_THRESHOLD", 0.0)
    if patience < 0 or not threshold >= 0:
        raise ConfigError(f"EARLY_STOPPING_PATIENCE must be >= 0 (0 = off) and EARLY_STOPPING_THRESHOLD >= 0, got "
                          f"{patience} and {threshold}")
    if patience and not config["EVAL_EVERY"]:
        raise ConfigError(f"EARLY_STOPPING_PATIENCE={patience} counts evaluations, but EVAL_EVERY=0 evaluates none "
                          "during training: set --eval_every (e.g. 100)")
    if config["TRAIN_SUBSET"] < 0:
        raise ConfigError(f"TRAIN_SUBSET must be >= 0 (0 = all rows), got {config['TRAIN_SUBSET']}")
    if config.get("HELD_OUT", 0) < 0:
        raise ConfigError(f"HELD_OUT must be >= 0 (0 = train on every sentence), got {config['HELD_OUT']}")
    if not 0 <= config["WARMUP_RATIO"] < 1:
        raise ConfigError(f"WARMUP_RATIO is a fraction of the budget in [0, 1), got {config['WARMUP_RATIO']}")
    if not config["WEIGHT_DECAY"] >= 0:
        raise ConfigError(f"WEIGHT_DECAY must be >= 0, got {config['WEIGHT_DECAY']}")
    if not config["LEARNING_RATE"] > 0:
        raise ConfigError(f"LEARNING_RATE must be > 0, got {config['LEARNING_RATE']}")
    check_task_settings(config)
    check_hardware_settings(config)
    if config["RESUME"] and not config["RUN_NAME"]:
        raise ConfigError("RESUME needs RUN_NAME: the run directory to resume, e.g. --resume=true --run_name=NAME")
    return pruning


# --- hardware and precision ---------------------------------------------------------------------------
PRECISIONS = ("fp32", "bf16", "fp16")


def attention_implementations() -> list[str]:
    """The attention implementations transformers offers by name ("eager" and those registered in
    `AttentionInterface`: sdpa, flash_attention_2/3, flex_attention, ...); whether one is installed and
    supported by the model is checked when the model is built (`models.load_model_and_tokenizer`)."""
    from transformers import AttentionInterface
    return ["eager", *AttentionInterface._global_mapping]


def report_integrations(report_to: str) -> list[str]:
    """REPORT_TO as HF's `report_to` list: "none" -> [], "all" -> ["all"], "a,b" -> ["a", "b"]."""
    names = [n.strip() for n in str(report_to).split(",") if n.strip()]
    return [] if names in ([], ["none"]) else names


def check_hardware_settings(config: dict) -> None:
    """PRECISION, TF32, GRAD_ACCUMULATION, MAX_GRAD_NORM, DATALOADER_WORKERS, ATTENTION and REPORT_TO
    against this machine and this transformers (settings a script lacks take their defaults).
    Raises ConfigError for fp16 or TF32 without CUDA, bf16 on a GPU without it, a negative count or
    norm, an attention implementation or an integration transformers does not offer or that is not installed."""
    import torch
    precision = config.get("PRECISION", "fp32")
    if precision not in PRECISIONS:
        raise ConfigError(f"PRECISION={precision!r}: choose one of {', '.join(PRECISIONS)}")
    cuda = torch.cuda.is_available()
    if precision == "fp16" and not cuda:
        raise ConfigError("PRECISION=fp16 needs a CUDA GPU (its loss scaler and fp16 kernels are CUDA's); on this "
                          "machine use --precision=bf16 (CPU autocast) or fp32")
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"PRECISION=bf16: this GPU ({torch.cuda.get_device_name()}) does not support bfloat16 "
                          "(it needs Ampere or newer): use --precision=fp16 or fp32")
    if config.get("TF32", False):
        from transformers.utils import is_torch_tf32_available
        if not cuda or not is_torch_tf32_available():
            raise ConfigError("TF32=True needs an Ampere or newer CUDA GPU"
                              + ("" if cuda else ", and this machine has none") + ": set --tf32=false")
    for key, least in (("GRAD_ACCUMULATION", 1), ("DATALOADER_WORKERS", 0)):
        value = config.get(key, least)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"{key} must be an integer >= {least}, got {value!r}")
    if not config.get("MAX_GRAD_NORM", 1.0) >= 0:
        raise ConfigError(f"MAX_GRAD_NORM must be >= 0 (0 = no clipping), got {config['MAX_GRAD_NORM']}")
    attention = config.get("ATTENTION", "")
    if attention and attention not in attention_implementations():
        raise ConfigError(f"ATTENTION={attention!r} is not an attention implementation transformers offers: choose "
                          f"one of {', '.join(attention_implementations())}, or \"\" for the model's default")
    from transformers.integrations.integration_utils import (INTEGRATION_TO_CALLBACK,
                                                             get_available_reporting_integrations)
    for name in report_integrations(config.get("REPORT_TO", "none")):
        if name not in INTEGRATION_TO_CALLBACK and name != "all":
            raise ConfigError(f"REPORT_TO={name!r} is not an integration of HF's Trainer: choose from "
                              f"{', '.join(INTEGRATION_TO_CALLBACK)} (comma-separated), or none")
        if name != "all" and name not in get_available_reporting_integrations():
            raise ConfigError(f"REPORT_TO={name!r}: its package is not installed (pip install {name}), or set "
                              "--report_to=none")


# --- the task -----------------------------------------------------------------------------------------
def check_task_settings(config: dict) -> None:
    """TASK, TEXT_COLUMNS, TRUNCATION and PREDICT_TEST on their own (the data is checked as it is read)."""
    task = config.get("TASK", "sst2")
    if not tasks.known(task):
        raise ConfigError(f"unknown TASK {task!r}; choose one of {', '.join(tasks.TASKS)}, or {tasks.CUSTOM!r} "
                          "(any labelled text: DATA_DIR, TEXT_COLUMNS, LABEL_COLUMN)")
    if task.lower() == tasks.CUSTOM:
        if not config.get("DATA_DIR"):
            raise ConfigError("TASK=custom reads DATA_DIR: a folder with train and validation (or dev) files "
                              "(.csv, .tsv, .jsonl, .parquet), or hub:<dataset id>")
        if len(text_columns(config)) not in (1, 2):
            raise ConfigError(f"TEXT_COLUMNS={config.get('TEXT_COLUMNS')!r}: name one text column, or two "
                              "comma-separated for a pair (e.g. --text_columns=premise,hypothesis)")
    truncation = config.get("TRUNCATION", "head")
    if truncation not in TRUNCATIONS:
        raise ConfigError(f"TRUNCATION={truncation!r}: choose one of {', '.join(TRUNCATIONS)}")
    if config.get("PREDICT_TEST") and task.lower() != tasks.CUSTOM and not tasks.get(task).test_splits:
        raise ConfigError(f"PREDICT_TEST: {tasks.get(task).title} has no test set apart from the one it is "
                          "evaluated on; leave it false")


def check_task(config: dict, task, datasets) -> None:
    """The task against its settings once its data is read: head+tail needs one text per example, and
    PREDICT_TEST a test split."""
    if config.get("TRUNCATION") == "head+tail" and task.is_pair:
        raise ConfigError(f"TRUNCATION=head+tail keeps the start and end of one text, but {task.title} has pairs "
                          f"({', '.join(task.text_columns)}): use --truncation=head")
    if config.get("PREDICT_TEST") and not any(s in datasets for s in task.test_splits):
        raise ConfigError(f"PREDICT_TEST: the data holds no test split of {task.title} "
                          f"({', '.join(task.test_splits) or 'none'}); add its test file or leave it false")


def run_directory(config: dict, script: str) -> Path:
    """A directory of this run's own: a fresh name, or RUN_NAME (resumable, never a finished run)."""
    out = Path(config["OUT_DIR"])
    if config["RUN_NAME"]:
        run_dir = out / config["RUN_NAME"]
        if (run_dir / "results.json").exists():
            raise ConfigError(f"{run_dir} already holds a finished run (results.json); choose another RUN_NAME or "
                              "leave it empty for a fresh, time-stamped directory")
        checkpointed = bool(run_checkpoints(run_dir))
        if run_dir.exists() and any(run_dir.iterdir()) and not checkpointed:
            partial = sorted(p.name for p in (run_dir / "checkpoints").glob("checkpoint-*"))
            raise ConfigError(f"{run_dir} holds a run that stopped before its first checkpoint"
                              + (f" was completely written ({', '.join(partial)} is partial: a kill or a full disk)"
                                 if partial else "")
                              + f": there is nothing to resume. Delete it (rm -r {run_dir}) and run again without "
                              "--resume, or choose another RUN_NAME")
        if config["RESUME"] and not checkpointed:
            raise ConfigError(f"--resume: {run_dir} has no checkpoints/ to resume from")
        if not config["RESUME"] and run_dir.exists() and any(run_dir.iterdir()):
            raise ConfigError(f"{run_dir} already holds an unfinished run; resume it with --resume=true, or "
                              "choose another RUN_NAME")
        return run_dir
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"{Path(script).stem}-{trainer_name(config['TRAINER'])}"
    if config["TRAINER"] is not Trainer and config.get("GRANULARITY", "weights") == "weights":
        name += f"-r{rate_text(config['PRUNING_RATE'])}"
    elif config["TRAINER"] is not Trainer:
        name += f"-h{rate_text(config['HEAD_RATE'])}-n{rate_text(config['NEURON_RATE'])}"
        name += "".join(f"-{k[0].lower()}{rate_text(config[k])}" for k in ("MLP_RATE", "LAYER_RATE") if config.get(k))
    base = out / f"{name}-s{config['SEED']}-{stamp}"
    run_dir, n = base, 1
    while run_dir.exists():
        n += 1
        run_dir = Path(f"{base}-{n}")
    return run_dir


# --- the model and tokenizer -----------------------------------------------------------------------
def max_input_length(model) -> tuple[int | None, str]:
    """The longest input (tokens, special tokens included) the model's position embeddings can take,
    and how that follows from its config; (None, "") for models without learned absolute positions
    (rotary or relative positions), whose length the tokenizer limits instead.

    BERT-like embeddings index positions 0..max_position_embeddings-1. RoBERTa-like ones (any
    embeddings with `create_position_ids_from_input_ids`: RoBERTa, XLM-R, CamemBERT, ...) start at
    padding_idx + 1, so they take max_position_embeddings - padding_idx - 1 tokens
    (transformers' `create_position_ids_from_input_ids`)."""
    import torch
    embeddings = getattr(getattr(model, "base_model", model), "embeddings", None)
    positions = getattr(embeddings, "position_embeddings", None)
    if not isinstance(positions, torch.nn.Embedding):
        return None, ""
    n = positions.num_embeddings
    padding_idx = getattr(embeddings, "padding_idx", None)
    if hasattr(embeddings, "create_position_ids_from_input_ids") and padding_idx is not None:
        return n - padding_idx - 1, (f"max_position_embeddings={n}, and {model.config.model_type}'s positions start at "
                                     f"padding_idx + 1 = {padding_idx + 1}")
    return n, f"max_position_embeddings={n}"


def check_model_and_tokenizer(config: dict, model, tokenizer, pair: bool = False) -> None:
    """MAX_LENGTH against the model's positions and the tokenizer's special tokens (those of a pair when
    `pair`), and the tokenizer's padding token (batches are padded). (Its vocabulary against the
    model's: `models.load_model_and_tokenizer`.)"""
    source = config.get("TOKENIZER") or config.get("MODEL")
    if tokenizer.pad_token_id is None:
        raise ConfigError(f"tokenizer {source!r} has no padding token, and batches are padded to their longest "
                          "sentence: use a tokenizer that defines one (e.g. the model's own: --tokenizer=), or add "
                          "\"pad_token\" to its tokenizer_config.json / special_tokens_map.json")
    limit, why = max_input_length(model)
    if limit is not None and config["MAX_LENGTH"] > limit:
        raise ConfigError(f"MAX_LENGTH={config['MAX_LENGTH']} is longer than the model can take: {limit} tokens "
                          f"({why}): set --max_length={limit} or lower")
    special = tokenizer.num_special_tokens_to_add(pair=pair)
    if config["MAX_LENGTH"] <= special + pair:
        raise ConfigError(f"MAX_LENGTH={config['MAX_LENGTH']} leaves no room for text: the tokenizer adds {special} "
                          f"special tokens to every {'pair' if pair else 'sentence'}: set "
                          f"--max_length={special + 1 + pair} or more")


def check_architecture(pruning: PruningConfig, model) -> None:
    """GRANULARITY='heads+neurons' needs an architecture whose heads and FFN neurons `pruning.core.layouts` declares.
    Raises ConfigError naming the model types it knows; "weights" takes any AutoModelForSequenceClassification."""
    if pruning.granularity == "weights":
        return
    from pruning.core.units import encoder_layers
    try:
        encoder_layers(model)
    except ValueError as e:
        raise ConfigError(str(e)) from None


# --- the step budget -------------------------------------------------------------------------------
def planned_steps(train_rows: int, batch_size: int, world_size: int, epochs: float,
                  grad_accumulation: int = 1) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps) as HF's Trainer computes them: the
    dataloader keeps the last, short batch, each process takes `batch_size` rows, an optimizer step
    takes `grad_accumulation` of those micro-batches (the epoch's last step takes what is left), and
    the total is ceil(epochs x steps per epoch) (`Trainer.set_initial_training_values`)."""
    batches = max(1, math.ceil(train_rows / (batch_size * world_size)))
    per_epoch = math.ceil(batches / grad_accumulation)
    return per_epoch, math.ceil(epochs * per_epoch)


def hf_warmup_steps(warmup: float, total_steps: int) -> int:
    """The warm-up steps HF's Trainer takes for `warmup_steps=warmup` (a ratio when below 1, rounded
    up): `TrainingArguments.get_warmup_steps` itself, so the check and the run cannot disagree."""
    from types import SimpleNamespace

    from transformers import TrainingArguments
    return TrainingArguments.get_warmup_steps(SimpleNamespace(warmup_steps=warmup), total_steps)


def check_plan(plan, criterion, gradual=None) -> None:
    """The phase plan (pruning.run.schedule.PhasePlan, with HF's rounded warm-up) against the criterion:
    a criterion that ranks from what it observes (`observes`) must see at least one search step after
    the warm-up, or it has nothing to rank when the search ends. `gradual` is
    (updates, span) of a gradual schedule, whose mask updates must fit the retrain phase."""
    from pruning.run.schedule import gradual_steps
    if getattr(criterion, "observes", False) and plan.first_check_after >= plan.search_steps:
        raise ConfigError(
            f"the {criterion.name} criterion scores the search steps after the LR warm-up, but HF rounds the warm-up "
            f"up to {plan.warmup_steps} optimizer steps (ceil of WARMUP_RATIO x {plan.total_steps} steps) and the search "
            f"budget is {plan.search_steps} steps: no step is left to score. Shorten --warmup_ratio (to at most "
            f"{math.floor(1e4 * (plan.search_steps - 1) / plan.total_steps) / 1e4:g}), lengthen --search_epochs, or set --eb_skip_warmup=false")
    if gradual:
        updates, span = gradual
        try:
            gradual_steps(plan.search_steps, plan.retrain_steps, updates, span)
        except ValueError as e:
            raise ConfigError(str(e)) from None


# --- continuations ---------------------------------------------------------------------------------
def recordable(config: dict) -> dict:
    """The configuration as JSON records it (trainer classes by name, tuples as lists)."""
    return json.loads(json.dumps({k: (trainer_name(v) if k == "TRAINER" else v) for k, v in config.items()},
                                 default=str))


def config_differences(recorded: dict, requested: dict) -> list[str]:
    """`--key: recorded X, requested Y` for every setting that differs, outside CONTINUATION_EXEMPT.
    Settings the record does not hold (a script constant added after the run started) are not compared."""
    return [f"{'processes (world size)' if k == 'WORLD_SIZE' else '--' + k.lower()}: recorded {recorded[k]!r}, "
            f"requested {requested[k]!r}"
            for k in requested if k in recorded and k not in CONTINUATION_EXEMPT and recorded[k] != requested[k]]


def read_run_config(run_dir: Path) -> dict | None:
    """The configuration a run directory was started with (its RUN_CONFIG_FILE, or a finished run's
    results.json), or None for a run from before it was recorded."""
    for name in (RUN_CONFIG_FILE, "results.json"):  # both hold {"config": ..., "world_size": ...}
        path = Path(run_dir) / name
        if path.is_file():
            return json.loads(path.read_text())
    return None


def check_continuation(run_dir: Path, requested: dict, how: str) -> None:
    """Refuse to continue `run_dir` with settings other than those it was started with. `requested`
    is a `recordable` configuration plus "WORLD_SIZE" (processes); `how` says what to do instead."""
    recorded = read_run_config(run_dir)
    if recorded is None:
        return
    recorded = {**recorded["config"], "WORLD_SIZE": recorded.get("world_size", 1)}
    differences = config_differences(recorded, requested)
    if differences:
        raise ConfigError(f"{run_dir} was started with other settings ({'; '.join(differences)}): continuing it would "
                          f"mix two experiments. {how}")
