"""Checks of a run's settings against what they will meet: the model, its tokenizer, the data, the
step budget, and (for a continuation) the run already on disk.

Each check raises `ConfigError` with one line that names the setting and how to fix it. They run
before the run directory is created, so a refused run leaves nothing behind, and they use the
libraries' own arithmetic (HF's warm-up rounding, each architecture's position limit) so that what
they accept is exactly what will train.
"""
from __future__ import annotations

import json
import math
from pathlib import Path


class ConfigError(ValueError):
    """Bad configuration; the message names the setting and how to fix it."""


# Settings that cannot change what a run computes: a continuation (--resume=true, a grid cell run
# again) may differ in them. Everything else must match the recorded configuration.
CONTINUATION_EXEMPT = ("OUT_DIR", "RUN_NAME", "RESUME", "SAVE_EVERY", "LOG_EVERY", "MEASURE_SPEED")
RUN_CONFIG_FILE = "run_config.json"  # in the run directory, from its start: what a continuation is compared with


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


def check_model_and_tokenizer(config: dict, model, tokenizer) -> None:
    """MAX_LENGTH against the model's positions and the tokenizer's special tokens, and the tokenizer's
    padding token (batches are padded). (Its vocabulary against the model's: `models.load_model_and_tokenizer`.)"""
    source = config.get("TOKENIZER") or config.get("MODEL")
    if tokenizer.pad_token_id is None:
        raise ConfigError(f"tokenizer {source!r} has no padding token, and batches are padded to their longest "
                          "sentence: use a tokenizer that defines one (e.g. the model's own: --tokenizer=), or add "
                          "\"pad_token\" to its tokenizer_config.json / special_tokens_map.json")
    limit, why = max_input_length(model)
    if limit is not None and config["MAX_LENGTH"] > limit:
        raise ConfigError(f"MAX_LENGTH={config['MAX_LENGTH']} is longer than the model can take: {limit} tokens "
                          f"({why}): set --max_length={limit} or lower")
    special = tokenizer.num_special_tokens_to_add(pair=False)
    if config["MAX_LENGTH"] <= special:
        raise ConfigError(f"MAX_LENGTH={config['MAX_LENGTH']} leaves no room for text: the tokenizer adds {special} "
                          f"special tokens to every sentence: set --max_length={special + 1} or more")


# --- the step budget -------------------------------------------------------------------------------
def planned_steps(train_rows: int, batch_size: int, world_size: int, epochs: float) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps) as HF's Trainer computes them: the
    dataloader keeps the last, short batch, each process takes `batch_size` rows, and the total is
    ceil(epochs x steps per epoch) (`Trainer.set_initial_training_values`)."""
    per_epoch = max(1, math.ceil(train_rows / (batch_size * world_size)))
    return per_epoch, math.ceil(epochs * per_epoch)


def hf_warmup_steps(warmup: float, total_steps: int) -> int:
    """The warm-up steps HF's Trainer takes for `warmup_steps=warmup` (a ratio when below 1, rounded
    up): `TrainingArguments.get_warmup_steps` itself, so the check and the run cannot disagree."""
    from types import SimpleNamespace

    from transformers import TrainingArguments
    return TrainingArguments.get_warmup_steps(SimpleNamespace(warmup_steps=warmup), total_steps)


def check_plan(plan, criterion, gradual=None) -> None:
    """The phase plan (pruning.schedule.PhasePlan, with HF's rounded warm-up) against the criterion:
    a criterion that ranks from what it observes (`observes`) must see at least one search step after
    the warm-up, or it has nothing to rank when the search ends. `gradual` is
    (updates, span) of a gradual schedule, whose mask updates must fit the retrain phase."""
    from pruning.schedule import gradual_steps
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
def recordable(config: dict, trainer_name) -> dict:
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
