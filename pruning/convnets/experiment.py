"""A run of resnet.py or mlp.py: the data, the model, the search with the Early-Bird detector on channel masks,
the physical removal (Torch-Pruning), the retraining, and results.json in the text runs' schema.

Phases, each an HF `Trainer.train()` of its own (You et al. 2020's procedure: draw the early-bird ticket, prune it,
retrain the smaller network with a fresh optimizer and schedule):
1. search (`ChannelSearchTrainer`, checkpoints in checkpoints/), stopped at the early bird or the end of
   SEARCH_EPOCHS;
2. prune: evaluate, remove the channels, evaluate; the ticket (the pruned model, the masks, the search record) is
   written to ticket/ before anything else;
3. retrain for RETRAIN_EPOCHS (checkpoints in retrain_checkpoints/).
With MASK_FROM (a finished run of the same script, or a lottery ticket of one) there is no search: the run starts
from the initial weights (REWIND_TO="pretrained": the seed's random init, or PRETRAINED's) or from the source run's
dense weights at its pruning step (REWIND_TO="early_bird": its SNAPSHOT_FILE, written by SAVE_EB_WEIGHTS), removes
the mask's channels at step 0 exactly as after an early bird (`fixed_mask_ticket`), and trains the smaller network
for SEARCH_EPOCHS + RETRAIN_EPOCHS: a removed channel cannot come back, so the mask is held by construction.
The dense baseline (TRAINER = Trainer) trains SEARCH_EPOCHS + RETRAIN_EPOCHS in one phase. A killed run resumes
with --resume=true from the newest complete checkpoint of the phase it was in.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import resource
import shutil
import statistics
import time

import numpy as np
import torch
from transformers import Trainer, TrainingArguments, set_seed

from earlybird import mask_fingerprint, pack_mask, plot_distances
from pruning.convnets import data as data_io
from pruning.convnets.criteria import CHANNEL_CRITERIA, criterion_for
from pruning.run import checkpoint as state_io, schema
from pruning.run.experiment import configure
from pruning.run.pruning_config import REWIND_POINTS, criterion_options
from pruning.settings import ConfigError, fail, trainer_name
from pruning.convnets.models import (TabularMLP, build_image_model, count_parameters, forward_flops, load_model,
                                     save_model)
from pruning.convnets.trainer import ChannelSearchTrainer, EpochOfData
from pruning.convnets.units import ChannelUnits, remove_channels
from pruning.run.trainer import SNAPSHOT_FILE, PruningTrainer

TICKET = "ticket"


def granularity_of(config: dict) -> str:
    """What a unit of this script's runs is: "neurons" (mlp.py: its settings have HIDDEN) or "channels" (resnet.py);
    the `granularity` its masks file records."""
    return "neurons" if "HIDDEN" in config else "channels"


# --- settings ---------------------------------------------------------------------------------------
def check(config: dict) -> None:
    """Every setting alone, before any data is read. Raises ConfigError naming the setting."""
    trainer = config["TRAINER"]
    if not (trainer is Trainer or (isinstance(trainer, type) and issubclass(trainer, PruningTrainer))):
        raise ConfigError(f"TRAINER={trainer!r}: a pruning Trainer (magnitude, slimming, ...) or Trainer (dense)")
    if trainer is not Trainer and trainer.criterion_class.name not in CHANNEL_CRITERIA:
        raise ConfigError(f"TRAINER={trainer_name(trainer)}: no channel variant; choose dense or "
                          f"{', '.join(CHANNEL_CRITERIA)}")
    rate = config["PRUNING_RATE"]
    if not isinstance(rate, float) or not 0 <= rate < 1:
        raise ConfigError(f"PRUNING_RATE={rate!r}: one fraction of the channels in [0, 1) (per-layer rates: not for channels)")
    if config["THRESHOLD"] not in ("global", "layerwise"):
        raise ConfigError(f"THRESHOLD={config['THRESHOLD']!r}: 'global' or 'layerwise'")
    for key in ("SEARCH_EPOCHS", "RETRAIN_EPOCHS"):
        if not config[key] >= 0:
            raise ConfigError(f"{key}={config[key]!r}: must be >= 0")
    if config["SEARCH_EPOCHS"] + config["RETRAIN_EPOCHS"] <= 0:
        raise ConfigError("SEARCH_EPOCHS + RETRAIN_EPOCHS must be > 0")
    if config["EB_WINDOW"] < 2 or not config["EB_EPSILON"] > 0 or config["EB_CHECK_EVERY"] < 0:
        raise ConfigError("EB_WINDOW >= 2, EB_EPSILON > 0 and EB_CHECK_EVERY >= 0 (0 = every epoch)")
    if config["BATCH_SIZE"] < 1 or not config["LEARNING_RATE"] > 0:
        raise ConfigError("BATCH_SIZE >= 1 and LEARNING_RATE > 0")
    if config["OPTIMIZER"] not in ("sgd", "adamw"):
        raise ConfigError(f"OPTIMIZER={config['OPTIMIZER']!r}: 'sgd' (momentum 0.9, You et al.) or 'adamw'")
    if config["RESUME"] and not config["RUN_NAME"]:
        raise ConfigError("RESUME=true needs RUN_NAME: the run to continue")
    check_fixed_mask(config)


def check_fixed_mask(config: dict) -> None:
    """MASK_FROM, REWIND_TO and SAVE_EB_WEIGHTS without the model: the source's masks file exists, is readable and
    holds this script's unit (`granularity_of`), and REWIND_TO="early_bird" finds the source's SNAPSHOT_FILE (the
    model's groups and the snapshot's shapes: `read_fixed_masks`, `check_snapshot`). Raises ConfigError naming
    the setting and the fix."""
    rewind, source = config.get("REWIND_TO", "pretrained"), config.get("MASK_FROM", "")
    dense = config["TRAINER"] is Trainer
    if rewind not in REWIND_POINTS:
        raise ConfigError(f"REWIND_TO={rewind!r}: choose one of {', '.join(REWIND_POINTS)}")
    if config.get("SAVE_EB_WEIGHTS") and dense:
        raise ConfigError("SAVE_EB_WEIGHTS keeps the weights at the pruning step: it needs a pruning Trainer, not "
                          "the dense Trainer")
    if not source:
        return
    if dense:
        raise ConfigError("MASK_FROM trains a fixed mask: it needs a pruning Trainer (magnitude, slimming, ...), "
                          "not the dense Trainer")
    fixed_mask_meta(config)
    snapshot = os.path.join(source, SNAPSHOT_FILE)
    if rewind == "early_bird" and not os.path.isfile(snapshot):
        raise ConfigError(f"REWIND_TO=early_bird needs {snapshot}: run the source with --save_eb_weights=true")


def fixed_mask_meta(config: dict) -> dict:
    """The metadata of MASK_FROM's masks file (`state_io.MASKS_FILE`). Raises ConfigError when the file is
    missing or unreadable, or holds another unit than this script's (a text run's heads or weights, an mlp.py
    run's neurons given to resnet.py)."""
    source, granularity = config["MASK_FROM"], granularity_of(config)
    path = os.path.join(source, state_io.MASKS_FILE)
    if not os.path.isfile(path):
        raise ConfigError(f"MASK_FROM={source}: no {state_io.MASKS_FILE} there; point it at the directory of a "
                          "finished pruning run of this script (runs/NAME) or a lottery ticket of one")
    try:
        meta = state_io.read(path)[1]
    except Exception as e:  # a truncated or foreign file: safetensors' own error, named
        raise ConfigError(f"MASK_FROM={source}: {path} is not a masks file ({type(e).__name__}: {e})") from None
    if meta.get("granularity") != granularity or not isinstance(meta.get("groups"), dict):
        raise ConfigError(f"MASK_FROM={source} holds a {meta.get('granularity')!r} mask; this run prunes "
                          f"{granularity}: give a finished run of the same script (resnet.py: channels, "
                          "mlp.py: neurons)")
    return meta


def read_fixed_masks(config: dict, units: ChannelUnits) -> dict[str, torch.Tensor]:
    """MASK_FROM's keep-masks, checked against this model's channel groups: group -> bool (dense channels,).
    Raises ConfigError (`fixed_mask_meta`'s, and when the groups or their sizes are not this model's: another
    MODEL, WIDTH, HIDDEN or PRUNE_RESIDUAL)."""
    meta = fixed_mask_meta(config)
    groups = {n: [g.size] for n, g in units.groups.items()}
    if meta["groups"] != groups:
        raise ConfigError(f"MASK_FROM={config['MASK_FROM']} holds a mask for another model ({meta.get('model', '?')}: "
                          f"{len(meta['groups'])} groups, {sum(s[0] for s in meta['groups'].values())} units); this "
                          f"model has {len(groups)} groups, {units.total_channels()} units: use the source run's "
                          "MODEL, WIDTH, HIDDEN and PRUNE_RESIDUAL")
    return state_io.read_run_masks(config["MASK_FROM"])[0]


def check_snapshot(path: str, model: torch.nn.Module) -> None:
    """Raises ConfigError unless the weights file at `path` (SNAPSHOT_FILE) holds exactly `model`'s dense
    state_dict names and shapes."""
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    mine = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if shapes != mine:
        wrong = sorted(set(shapes) ^ set(mine)) or sorted(k for k in mine if shapes[k] != mine[k])
        raise ConfigError(f"REWIND_TO=early_bird: {path} holds the weights of another model ({', '.join(wrong[:3])} "
                          "differ); use the source run's MODEL, WIDTH and HIDDEN")


def check_fixed_mask_against_model(config: dict, data, kind: str) -> None:
    """MASK_FROM (and REWIND_TO="early_bird"'s weights) against the model this run builds, before its run
    directory is made. Raises ConfigError."""
    model = build_model(config, data, kind)
    read_fixed_masks(config, ChannelUnits(model, example_inputs(data.dev), residual=config.get("PRUNE_RESIDUAL", True)))
    if config.get("REWIND_TO") == "early_bird":
        check_snapshot(os.path.join(config["MASK_FROM"], SNAPSHOT_FILE), model)


def main(namespace: dict, kind: str) -> dict | None:
    """Entry point of resnet.py (`kind` "image") and mlp.py ("tabular"): bad settings or data exit with status 2,
    one line `error: ...`, before the run directory is made."""
    try:
        config = configure(namespace)
        check(config)
        if kind == "image":
            data = data_io.load_images(config["DATA"], config["DATA_DIR"], config["IMAGE_SIZE"], config["SEED"])
        else:
            data = data_io.load_tabular(config["DATA"], config["DATA_FILE"], config["LABEL_COLUMN"])
        if config.get("MASK_FROM"):
            check_fixed_mask_against_model(config, data, kind)
        run_dir = prepare_run_dir(config)
    except (ConfigError, data_io.DataError) as e:
        fail(e)
    return run(config, data, kind, run_dir, os.path.basename(namespace.get("__file__", "resnet.py")))


def prepare_run_dir(config: dict) -> str:
    name = config["RUN_NAME"] or datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = os.path.join(config["OUT_DIR"], name)
    settings = settings_of(config)
    if os.path.isfile(os.path.join(run_dir, "results.json")):
        raise ConfigError(f"{run_dir} holds a finished run; choose another RUN_NAME")
    record = os.path.join(run_dir, state_io.RUN_CONFIG_FILE)
    if config["RESUME"]:
        if not os.path.isfile(record):
            raise ConfigError(f"--resume=true: {run_dir} has no {state_io.RUN_CONFIG_FILE}; nothing to resume")
        old = json.load(open(record))["config"]
        skip = {"RESUME", "OUT_DIR", "RUN_NAME", "LOG_EVERY", "MEASURE_SPEED"}
        diff = sorted(k for k in settings if k not in skip and old.get(k) != settings[k])
        if diff:
            raise ConfigError(f"--resume=true: {run_dir} was started with other settings ({', '.join(diff)}); "
                              "resume with the same ones")
    elif os.path.isdir(run_dir) and os.listdir(run_dir):
        raise ConfigError(f"{run_dir} exists; continue it with --resume=true or choose another RUN_NAME")
    os.makedirs(run_dir, exist_ok=True)
    schema.write_json(record, {"config": settings, "world_size": 1})
    return run_dir


def settings_of(config: dict) -> dict:
    return {k: (trainer_name(v) if k == "TRAINER" else v) for k, v in config.items()}


# --- model ------------------------------------------------------------------------------------------
def build_model(config: dict, data, kind: str):
    set_seed(config["SEED"])
    names = list(data.label_names)
    if kind == "image":
        return build_image_model(config["MODEL"], len(names), data.channels, config["STEM"], config["WIDTH"],
                                 config["PRETRAINED"], {i: n for i, n in enumerate(names)})
    hidden = [int(h) for h in str(config["HIDDEN"]).split(",") if h.strip()]
    return TabularMLP(data.train.features.shape[1], hidden, len(names), config["DROPOUT"])


def example_inputs(dataset, n: int = 2) -> dict:
    batch = [dataset[i] for i in range(min(n, len(dataset)))]
    key = "pixel_values" if "pixel_values" in batch[0] else "features"
    return {key: torch.stack([b[key] for b in batch])}


# --- training ---------------------------------------------------------------------------------------
def training_args(config: dict, output_dir: str, epochs: float, steps_per_epoch: int) -> TrainingArguments:
    total = max(1, math.ceil(epochs * steps_per_epoch))
    sgd = config["OPTIMIZER"] == "sgd"
    return TrainingArguments(
        output_dir=output_dir, num_train_epochs=epochs, per_device_train_batch_size=config["BATCH_SIZE"],
        per_device_eval_batch_size=256, learning_rate=config["LEARNING_RATE"], weight_decay=config["WEIGHT_DECAY"],
        optim="sgd" if sgd else "adamw_torch", optim_args="momentum=0.9" if sgd else None,
        lr_scheduler_type=config["LR_SCHEDULE"], warmup_steps=int(config["WARMUP_RATIO"] * total),
        max_grad_norm=config["MAX_GRAD_NORM"], seed=config["SEED"], data_seed=config["SEED"],
        save_strategy="steps", save_steps=config["SAVE_EVERY"], logging_steps=config["LOG_EVERY"],
        eval_strategy="steps" if config.get("EVAL_EVERY") else "no", eval_steps=config.get("EVAL_EVERY") or None,
        report_to=[], dataloader_num_workers=0, disable_tqdm=True,
        use_cpu=not torch.cuda.is_available())


def compute_metrics(binary: bool):
    def metrics(pred):
        from sklearn.metrics import f1_score
        predicted = np.asarray(pred.predictions).argmax(-1)
        out = {"accuracy": float((predicted == pred.label_ids).mean())}
        if binary:
            out["f1"] = float(f1_score(pred.label_ids, predicted))
        return out
    return metrics


def last_checkpoint(directory: str, pruned: bool) -> str | None:
    found = state_io.complete_checkpoints(directory, pruned=pruned)
    return found[-1] if found else None


def _metrics(raw: dict) -> dict:
    m = {"accuracy": raw.get("eval_accuracy"), "f1": raw.get("eval_f1"), "loss": raw.get("eval_loss")}
    return m


def run(config: dict, data, kind: str, run_dir: str, script: str) -> dict:
    """Search, prune, retrain (or train dense), then write results.json, masks.safetensors, model/ and
    mask_distance.png into `run_dir`. Returns the results dict."""
    t0 = time.time()
    trainer_cls = config["TRAINER"]
    dense = trainer_cls is Trainer
    model = build_model(config, data, kind)
    example = example_inputs(data.dev)
    dense_params, dense_flops = count_parameters(model), forward_flops(model, {k: v[:1] for k, v in example.items()})
    per_epoch = math.ceil(len(data.train) / config["BATCH_SIZE"])
    binary = len(data.label_names) == 2
    common = dict(train_dataset=data.train, eval_dataset=data.dev, compute_metrics=compute_metrics(binary))
    epoch_cb = EpochOfData(data.train, per_epoch)
    phase_seconds, logs, evals = {}, [], {}
    summary = None
    if dense:
        epochs = config["SEARCH_EPOCHS"] + config["RETRAIN_EPOCHS"]
        ckpts = os.path.join(run_dir, "checkpoints")
        trainer = Trainer(model=model, args=training_args(config, ckpts, epochs, per_epoch), callbacks=[epoch_cb], **common)
        start = time.time()
        trainer.train(resume_from_checkpoint=last_checkpoint(ckpts, pruned=False) if config["RESUME"] else None)
        phase_seconds["train"] = time.time() - start
        logs += trainer.state.log_history
        steps_trained = {"dense": trainer.state.global_step}
    else:
        ticket_dir = os.path.join(run_dir, TICKET)
        fixed = bool(config.get("MASK_FROM"))
        if os.path.isfile(os.path.join(ticket_dir, "ticket.json")):
            model = load_model(ticket_dir).train()
            ticket = json.load(open(os.path.join(ticket_dir, "ticket.json")))
        elif fixed:
            ticket = fixed_mask_ticket(config, model, example, common, per_epoch, run_dir)
            model = ticket.pop("model")
        else:
            ticket = search_and_prune(config, model, example, common, epoch_cb, per_epoch, run_dir)
            model = ticket.pop("model")
        summary, evals, phase_seconds = ticket["summary"], ticket["evals"], dict(ticket["phase_seconds"])
        logs += ticket["log_history"]
        retrain_dir = os.path.join(run_dir, "retrain_checkpoints")
        # a fixed mask trains the whole budget on the smaller network (the text runs' MASK_FROM does the same)
        epochs = config["RETRAIN_EPOCHS"] + (config["SEARCH_EPOCHS"] if fixed else 0)
        trainer = Trainer(model=model, args=training_args(config, retrain_dir, epochs, per_epoch),
                          callbacks=[epoch_cb], **common)
        start = time.time()
        if epochs > 0:
            trainer.train(resume_from_checkpoint=last_checkpoint(retrain_dir, pruned=False) if config["RESUME"] else None)
        phase_seconds["retrain"] = time.time() - start
        logs += trainer.state.log_history
        summary["retrain_steps"] = trainer.state.global_step
        steps_trained = {"search": summary["prune_step"], "retrain": trainer.state.global_step}
    final_eval = trainer.evaluate()
    evals["final"] = _metrics(final_eval)
    prediction = trainer.predict(data.dev)
    model = trainer.model
    final_params = count_parameters(model)
    final_flops = forward_flops(model, {k: v[:1] for k, v in example.items()})
    os.makedirs(os.path.join(run_dir, "model"), exist_ok=True)
    save_model(model, os.path.join(run_dir, "model"))
    speed = None
    if config["MEASURE_SPEED"]:
        reference = build_model(config, data, kind)
        speed = measure_speed(model, reference, data.dev, data.train)
    batch = config["BATCH_SIZE"]
    if dense:
        train_flops = 3 * dense_flops * batch * steps_trained["dense"]
    else:
        train_flops = 3 * batch * (dense_flops * steps_trained["search"] + final_flops * steps_trained["retrain"])
    results = assemble(config, data, script, run_dir, evals, summary, dense_params, final_params, dense_flops,
                       final_flops, train_flops, speed, phase_seconds, logs, prediction, time.time() - t0,
                       sum(steps_trained.values()))
    schema.write(run_dir, results)
    if summary is not None and summary["fixed_mask_from"] is None:
        plot_distances({"channels": summary["distance_history"]}, config["EB_EPSILON"],
                       os.path.join(run_dir, "mask_distance.png"), title=f"{config.get('MODEL', 'mlp')} {summary['criterion']}",
                       eb_step=summary["eb_step"], prune_step=summary["prune_step"])
    if summary is not None:
        shutil.copy(os.path.join(run_dir, TICKET, state_io.MASKS_FILE), os.path.join(run_dir, state_io.MASKS_FILE))
    print_summary(results)
    return results


def search_and_prune(config, model, example, common, epoch_cb, per_epoch, run_dir) -> dict:
    """Phases 1 and 2: the search, the early bird (or the end of the budget), the removal; writes ticket/ (the
    pruned model, masks.safetensors, ticket.json) atomically and returns the ticket (with "model")."""
    units = ChannelUnits(model, example, residual=config.get("PRUNE_RESIDUAL", True))
    criterion = criterion_for(config["TRAINER"], units, criterion_options(config))
    ckpts = os.path.join(run_dir, "checkpoints")
    args = training_args(config, ckpts, config["SEARCH_EPOCHS"], per_epoch)
    total = max(1, math.ceil(config["SEARCH_EPOCHS"] * per_epoch))
    check_every = config["EB_CHECK_EVERY"] or per_epoch
    warmup = args.warmup_steps if config["EB_SKIP_WARMUP"] else 0
    trainer = ChannelSearchTrainer(model=model, args=args, callbacks=[epoch_cb], units=units, criterion=criterion,
                                   rate=config["PRUNING_RATE"], scope=config["THRESHOLD"], check_every=check_every,
                                   window=config["EB_WINDOW"], epsilon=config["EB_EPSILON"],
                                   first_check=warmup + check_every, **common)
    start = time.time()
    if config["SEARCH_EPOCHS"] > 0:
        trainer.train(resume_from_checkpoint=last_checkpoint(ckpts, pruned=True) if config["RESUME"] else None)
    search_seconds = time.time() - start
    found = trainer.eb_step is not None
    history = trainer.detector.history
    checked_last = bool(history) and history[-1]["step"] == trainer.state.global_step
    # The early bird's mask; else the mask at the end of the budget (the last check's, if it was at the end: the
    # accumulated scores were reset there).
    masks = trainer.last_masks if found or checked_last else trainer.current_masks()
    start = time.time()
    before = _metrics(trainer.evaluate())
    criterion.close()
    scores = units.to_original(trainer.last_scores, float("-inf"))
    if config.get("SAVE_EB_WEIGHTS"):  # the dense weights at the pruning step: what REWIND_TO=early_bird starts from
        write_weights(model, os.path.join(run_dir, SNAPSHOT_FILE))
    removed = remove_channels(units, masks)
    after = _metrics(trainer.evaluate())
    prune_seconds = time.time() - start
    prune_step = trainer.state.global_step
    summary = {
        "criterion": criterion.name, "granularity": granularity_of(config), "scope": config["THRESHOLD"],
        "rate": config["PRUNING_RATE"], "head_rate": None,
        "neuron_rate": None, "eb_found": found, "eb_step": trainer.eb_step,
        "eb_epoch": None if not found else trainer.eb_step / per_epoch, "prune_step": prune_step,
        "search_steps_budget": total, "retrain_steps": None, "steps_per_epoch": per_epoch, "fixed_mask_from": None,
        "gradual": None, "detector": {"window": config["EB_WINDOW"], "epsilon": config["EB_EPSILON"],
                                      "check_every": check_every},
        "distance_history": trainer.detector.history, "mask_fingerprint": fingerprint(units, masks),
        "removed_units": removed, "phase_seconds": {"search": search_seconds, "prune": prune_seconds},
        "structure": None}
    ticket = {"summary": summary, "evals": {"before_prune": before, "after_prune": after},
              "phase_seconds": {"search": search_seconds, "prune": prune_seconds},
              "log_history": trainer.state.log_history}
    write_ticket(config, run_dir, model, units, masks, scores, ticket, criterion.name)
    model.train()
    return {**ticket, "model": model}


def fixed_mask_ticket(config, model, example, common, per_epoch, run_dir) -> dict:
    """Phase 2 of a MASK_FROM run, at step 0: the starting weights (`model` as built: REWIND_TO="pretrained"; or the
    source's SNAPSHOT_FILE: "early_bird"), evaluate, remove the mask's channels (`remove_channels`, as after an early
    bird), evaluate; writes ticket/ as `search_and_prune` does (its masks file without scores: none selected this
    mask) and returns the ticket (with "model", the pruned network). Raises ConfigError (`read_fixed_masks`)."""
    units = ChannelUnits(model, example, residual=config.get("PRUNE_RESIDUAL", True))
    masks = read_fixed_masks(config, units)
    source = os.path.abspath(config["MASK_FROM"])
    if config["REWIND_TO"] == "early_bird":
        from safetensors.torch import load_file
        model.load_state_dict(load_file(os.path.join(source, SNAPSHOT_FILE)), strict=True)
    evaluator = Trainer(model=model, args=training_args(config, os.path.join(run_dir, "retrain_checkpoints"), 1,
                                                        per_epoch), **common)
    start = time.time()
    before = _metrics(evaluator.evaluate())
    if config.get("SAVE_EB_WEIGHTS"):
        write_weights(model, os.path.join(run_dir, SNAPSHOT_FILE))
    removed = remove_channels(units, masks)
    after = _metrics(evaluator.evaluate())
    prune_seconds = time.time() - start
    total = units.total_channels()
    summary = {
        "criterion": config["TRAINER"].criterion_class.name, "granularity": granularity_of(config),
        "scope": config["THRESHOLD"], "rate": sum(removed.values()) / total, "head_rate": None, "neuron_rate": None,
        "eb_found": False, "eb_step": None, "eb_epoch": None, "prune_step": 0, "search_steps_budget": 0,
        "retrain_steps": None, "steps_per_epoch": per_epoch, "fixed_mask_from": source, "gradual": None,
        "detector": {"window": config["EB_WINDOW"], "epsilon": config["EB_EPSILON"],
                     "check_every": config["EB_CHECK_EVERY"] or per_epoch},
        "distance_history": [], "mask_fingerprint": fingerprint(units, masks), "removed_units": removed,
        "phase_seconds": {"search": 0.0, "prune": prune_seconds}, "structure": None}
    ticket = {"summary": summary, "evals": {"before_prune": before, "after_prune": after},
              "phase_seconds": {"search": 0.0, "prune": prune_seconds}, "log_history": []}
    write_ticket(config, run_dir, model, units, masks, None, ticket, summary["criterion"],
                 fixed_mask_from=source, rewind_to=config["REWIND_TO"])
    model.train()
    return {**ticket, "model": model}


def fingerprint(units: ChannelUnits, masks: dict[str, torch.Tensor]) -> str:
    """`earlybird.mask_fingerprint` of `masks` (group -> bool (dense channels,)) concatenated in `units.groups`' order:
    the text runs' fingerprint of one flat mask."""
    return mask_fingerprint(pack_mask(torch.cat([masks[n] for n in units.groups])))


def write_weights(model: torch.nn.Module, path: str) -> None:
    """`model`'s state_dict (dense: before any removal) to the safetensors file `path`, atomically."""
    from safetensors.torch import save_file
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, path + ".tmp")
    os.replace(path + ".tmp", path)


def write_ticket(config, run_dir, model, units, masks, scores, ticket, criterion, **extra_meta) -> None:
    """ticket/ of a run, atomically: the pruned `model` (`save_model`), masks.safetensors (keep/ per group in the
    dense numbering; score/ per group unless `scores` is None; meta: granularity, criterion, model, groups and
    `extra_meta`) and ticket.json."""
    tmp = os.path.join(run_dir, TICKET + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    save_model(model, tmp)
    meta = {"granularity": granularity_of(config), "criterion": criterion, "model": config.get("MODEL", "mlp"),
            "groups": {n: [g.size] for n, g in units.groups.items()}, **extra_meta}
    tensors = state_io.pack_masks(masks, "keep/")
    if scores is not None:
        tensors.update({f"score/{n}": s.float() for n, s in scores.items()})
    state_io.write(os.path.join(tmp, state_io.MASKS_FILE), tensors, meta)
    schema.write_json(os.path.join(tmp, "ticket.json"), ticket)
    shutil.rmtree(os.path.join(run_dir, TICKET), ignore_errors=True)
    os.replace(tmp, os.path.join(run_dir, TICKET))


# --- speed ------------------------------------------------------------------------------------------
@torch.no_grad()
def _infer(model, batches):
    for b in batches:
        model(**b)


def measure_speed(model, dense, dev, train, rounds: int = 5, batch1: int = 64, train_batch: int = 32) -> dict:
    """Examples per second at batch 1 and 64, and seconds per training step (SGD), of `model` and the dense
    `dense`, interleaved over `rounds` in this process: medians of the values and of per-round ratios."""
    def collate(items):
        key = "pixel_values" if "pixel_values" in items[0] else "features"
        return {key: torch.stack([i[key] for i in items]),
                "labels": torch.tensor([int(i["labels"]) for i in items])}
    rows = [dev[i] for i in range(len(dev))]
    one = [{k: v for k, v in collate([r]).items() if k != "labels"} for r in rows[:batch1]]
    big = [{k: v for k, v in collate(rows[i:i + 64]).items() if k != "labels"} for i in range(0, len(rows), 64)]
    steps = [collate([train[j] for j in range(i, min(i + train_batch, len(train)))])
             for i in range(0, min(len(train), 5 * train_batch), train_batch)]
    models = {"pruned": model, "dense": dense}
    states = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in models.items()}
    per = {n: {"batch1": [], "batch64": [], "train_step": []} for n in models}
    for _ in range(rounds):
        for name, m in models.items():
            m.eval()
            _infer(m, one[:4])
            start = time.perf_counter()
            _infer(m, one)
            per[name]["batch1"].append(len(one) / (time.perf_counter() - start))
            start = time.perf_counter()
            _infer(m, big)
            per[name]["batch64"].append(len(rows) / (time.perf_counter() - start))
            m.train()
            opt = torch.optim.SGD(m.parameters(), lr=0.0)
            times = []
            for b in steps:
                start = time.perf_counter()
                m(**b).loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                times.append(time.perf_counter() - start)
            per[name]["train_step"].append(statistics.median(times[1:] or times))
    for n, m in models.items():  # BatchNorm statistics moved in the training steps: put them back
        m.load_state_dict(states[n])
        m.eval()
    out = {"threads": torch.get_num_threads(), "rounds": rounds}
    for key in ("batch1", "batch64", "train_step"):
        out[f"{key}_pruned"] = statistics.median(per["pruned"][key])
        out[f"{key}_dense"] = statistics.median(per["dense"][key])
        out[f"{key}_ratio"] = statistics.median(p / d for p, d in zip(per["pruned"][key], per["dense"][key]))
    out["train_step_speedup"] = 1 / out["train_step_ratio"]
    return out


# --- results ----------------------------------------------------------------------------------------
def blank(cls) -> dict:
    """Every key `cls` declares as required, set to None (what a run of this kind does not have)."""
    return {f.name: None for f in dataclasses.fields(cls)
            if f.metadata.get("file", True) and not f.metadata.get("optional")}


def _section(cls, values: dict | None) -> dict | None:
    if values is None:
        return None
    return {**blank(cls), **values}


def assemble(config, data, script, run_dir, evals, summary, dense_params, final_params, dense_flops, final_flops,
             train_flops, speed, phase_seconds, logs, prediction, seconds, steps) -> dict:
    """results.json in `pruning.run.schema`'s layout (keys a channel run has no value for are None)."""
    S = schema
    metrics = {"final": _section(S.Metrics, evals["final"])}
    for stage in ("before_prune", "after_prune"):
        if stage in evals:
            metrics[stage] = _section(S.Metrics, evals[stage])
    binary = len(data.label_names) == 2
    results = blank(S.RunResults)
    pruning = None
    if summary is not None:
        pruning = _section(S.PruningSummary, {**summary, "detector": _section(S.Detector, summary["detector"])})
        pruning["phase_seconds"] = dict(phase_seconds)
    results.update({
        "script": script, "run_dir": run_dir,
        "trainer": "dense" if summary is None else trainer_name(config["TRAINER"]),
        "model": config.get("MODEL", f"mlp {config.get('HIDDEN')}") + f" ({final_params:,} parameters)",
        "model_source": config.get("PRETRAINED") or "config (random init)",
        "task": {"name": data.name, "title": data.name, "metrics": ["accuracy", "f1"] if binary else ["accuracy"],
                 "headline": "accuracy", "label_names": list(data.label_names), "text_columns": [],
                 "dev_sets": ["validation"]},
        "data": data.source, "train_rows": len(data.train), "dev_rows": len(data.dev),
        "config": settings_of(config), "world_size": 1, "optimizer_steps": steps,
        "metrics": _section(S.StageMetrics, metrics),
        "total_params": final_params, "nonzero_params": final_params,
        # A channel run's prunable weights are all the dense model's; what it removed counts as its sparsity.
        "prunable_params": dense_params, "prunable_nonzero": final_params, "sparsity": 1 - final_params / dense_params,
        "parameters": {"dense": _section(S.ParameterSplit, {"total": dense_params}),
                       "final": _section(S.ParameterSplit, {"total": final_params})},
        "train_seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cost": _section(S.Cost, {"train_flops": train_flops, "inference_flops_dense": dense_flops * len(data.dev),
                                  "inference_flops_nonzero": final_flops * len(data.dev)}),
        "speed": _section(S.Speed, speed),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
                     "torch_pruning": _version("torch-pruning")},
        "log_history": logs, "accuracy_timeline": [], "cost_series": [],
        "dev_predictions": {"predicted": np.asarray(prediction.predictions).argmax(-1).tolist(),
                            "label": np.asarray(prediction.label_ids).tolist()},
        "phase_seconds": dict(phase_seconds), "pruning": pruning,
    })
    results["cost_series"] = [_section(S.CostPoint, {**p, "active_params_without_embeddings": p["active_params"]}) for p in cost_points(summary, results, dense_flops, final_flops,
                                                                              config["BATCH_SIZE"], dense_params, final_params)]
    if pruning is None:
        results.pop("pruning")
    return results


def cost_points(summary, results, dense_flops, final_flops, batch, dense_params, final_params) -> list[dict]:
    """The training cost at the start, at the pruning step and at the end (FLOPs so far: 3 x forward FLOPs per
    example trained on; active parameters)."""
    steps = results["optimizer_steps"]
    if summary is None:
        return [{"step": 0, "train_flops": 0.0, "active_params": dense_params},
                {"step": steps, "train_flops": 3 * dense_flops * batch * steps, "active_params": dense_params}]
    p = summary["prune_step"]
    at_prune = 3 * dense_flops * batch * p
    return [{"step": 0, "train_flops": 0.0, "active_params": dense_params},
            {"step": p, "train_flops": at_prune, "active_params": final_params},
            {"step": steps, "train_flops": at_prune + 3 * final_flops * batch * (steps - p), "active_params": final_params}]


def _version(distribution: str) -> str:
    """The installed distribution's version (torch-pruning 1.6.1's module still says 1.6.0)."""
    from importlib.metadata import version
    return version(distribution)


def print_summary(r: dict) -> None:
    m = r["metrics"]
    rows = [("stage", "accuracy", "loss")]
    for stage in ("before_prune", "after_prune", "final"):
        if m.get(stage):
            rows.append((stage, f"{m[stage]['accuracy']:.4f}", f"{m[stage]['loss']:.4f}"))
    print(f"\n{r['script']} {r['trainer']} on {r['task']['name']}: {r['run_dir']}")
    for row in rows:
        print(f"  {row[0]:<14} {row[1]:>9} {row[2]:>9}")
    p = r.get("pruning")
    if p and p.get("fixed_mask_from"):
        print(f"  fixed mask from {p['fixed_mask_from']}: {sum(p['removed_units'].values())} channels removed at step 0")
    elif p:
        print(f"  early bird: {'step ' + str(p['eb_step']) if p['eb_found'] else 'not found'} "
              f"(pruned at step {p['prune_step']} of a {p['search_steps_budget']}-step search), "
              f"{sum(p['removed_units'].values())} channels removed")
    print(f"  parameters {r['parameters']['dense']['total']:,} -> {r['total_params']:,}; forward FLOPs per example "
          f"{r['cost']['inference_flops_dense'] / r['dev_rows']:.3g} -> {r['cost']['inference_flops_nonzero'] / r['dev_rows']:.3g}; "
          f"training FLOPs {r['cost']['train_flops']:.3g}")
    if r.get("speed"):
        s = r["speed"]
        print(f"  speed vs dense (same process, {s['rounds']} rounds, {s['threads']} threads): batch 1 x{s['batch1_ratio']:.2f}, "
              f"batch 64 x{s['batch64_ratio']:.2f}, train step x{s['train_step_speedup']:.2f} faster")
