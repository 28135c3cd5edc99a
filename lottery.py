"""The lottery-ticket study (Prasanna et al., EMNLP 2020, "When BERT Plays the Lottery, All Tickets Are Winning"),
on early-bird tickets (PROCEDURE="early_bird") or by the paper's own procedure (PROCEDURE="to_fraction").

    python lottery.py --train_subset=16000           # MiniLM, heads+neurons, magnitude (and gradient), 3 seeds
    python lottery.py --granularity=weights --pruning_rate=0.5 --out_dir=sweeps/lottery-weights
    python lottery.py --model=bert-base-uncased      # BERT-base (Hub) on all of SST-2: a bigger machine
    python lottery.py --procedure=to_fraction --train_subset=16000 --out_dir=sweeps/lottery-fraction
    python lottery.py --procedure=to_fraction --granularity=weights --train_subset=16000 --out_dir=sweeps/lottery-imp

PROCEDURE="to_fraction", for every seed: the dense model fine-tunes EPOCHS (dense-sSEED); the search
(`pruning.studies.to_fraction.to_fraction_search`, resumable in OUT_DIR/search/sSEED) prunes it, heads by Michel et al.'s
gate importance (STEP of the remaining heads a step, at least one per layer) and MLP_STEP whole MLPs a step,
or (GRANULARITY="weights") STEP of the remaining weights by global magnitude, until its dev score falls below
KEEP_FRACTION of the full model's; the last mask above is the good ticket; random and bad tickets keep its
per-layer counts of heads and MLPs (bad: the units the search removed first); every ticket trains from the
pretrained weights for EPOCHS. lottery.md then adds the ticket sizes, the search curves, layer x head / MLP
survival heatmaps per seed and averaged (and across tasks with OTHER_STUDIES), the overlap of surviving units
between seeds and tasks against chance, and the attention pattern types (Kovaleva et al., `pruning.studies.patterns`)
of good-ticket, pruned and all heads with Fisher's exact test; lottery_fraction.json holds the same numbers.
A ticket that removes whole MLPs trains them removed (the mask's "<layers>.mlps" group gives the run the
whole-MLP unit kind: `pruning.run.trainer.whole_kinds`). (CRITERION only names the PruningTrainer that trains the
fixed masks; COMPARE_WITH is not used.)

PROCEDURE="early_bird", for every seed:
1. the early-bird pipeline (SCRIPT, with SAVE_EB_WEIGHTS) draws the "good" mask with CRITERION, and
   with each COMPARE_WITH criterion (those only to compare which units the criteria keep);
2. from CRITERION's good mask, a "random" and a "bad" ticket keep as many units in every layer
   (bad: the lowest-scoring ones, by the scores the good mask was selected from);
3. every ticket trains with its mask fixed from step 0, from the pretrained weights and from the
   weights at the early-bird step (rewinding), for EPOCHS; the dense model trains EPOCHS too.
Then OUT_DIR/lottery.md holds the dev score (mean ± std over seeds) of every ticket and starting
point beside the dense reference, paired tests, and how stable the kept sets are across seeds and
criteria (Jaccard per layer against chance, heads that always survive); the plots lie beside it.
The score is the task's headline metric (--task, passed to every run with --data_dir, --text_columns,
--label_column and --truncation: SST-2 accuracy by default, CoLA Matthews correlation, STS-B Pearson r,
MRPC/QQP F1, ...), named in lottery.md's title, tables and plot axis.

Each training is one run of SCRIPT in its own process (`pruning.grid.cells`): a finished run is skipped
and a killed one resumes, so the study can be stopped and re-run at any time. Any --key=value that
is not a study setting below goes to every run (see `python bert.py --help`).

SCRIPT=resnet.py or mlp.py (You et al.'s own setting: conv channels; MLP neurons) runs PROCEDURE="early_bird" the
same way: the early-bird run keeps its dense weights at the pruning step (SAVE_EB_WEIGHTS), each ticket is a channel
(neuron) mask that keeps the good mask's count in every channel group (`pruning.studies.tickets`), trained with the
channels removed at step 0 (MASK_FROM) from the initial weights ("pretrained": the seed's init, or PRETRAINED's) or
the early-bird weights (REWIND_TO); GRANULARITY is the script's unit ("channels", "neurons") and is not set, and EPOCHS
is every ticket's and the dense run's whole budget (the early-bird runs keep the script's SEARCH_EPOCHS and
RETRAIN_EPOCHS unless passed on). lottery.md then has the same score tables and paired tests, and the stability of
kept channels per channel group (in the model's order) against chance; the head sections are left out.
PROCEDURE="to_fraction" is refused with a channel script before anything else (`refuse_channel_fraction`): its
search removes heads and whole MLPs of a transformer.
"""
from __future__ import annotations

from pruning.settings import preflight

if __name__ == "__main__":  # --help (and a misspelt setting) answered before torch is imported
    preflight(__file__)

import json
import os
import re
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

from pruning.run import checks, experiment
from pruning.settings import ConfigError, fail, grid_settings, trainer_names
from pruning.studies import heatmaps, patterns, stats, sweep_tables, tickets, to_fraction
from pruning.grid import loop as study_grid  # (`grid` names the survival arrays below)
from pruning.convnets.deploy import SCRIPTS as CHANNEL_SCRIPTS
from pruning.core.units import prunable_parameters
from pruning.grid.cells import check_cells
from pruning.run import checkpoint as state_io, schema
from pruning.run.checkpoint import read_run_masks
from pruning.run.pruning_config import REWIND_POINTS
from pruning.run.schema import RunResults, SchemaError

SCRIPT = "bert.py"                  # the experiment every run uses
PROCEDURE = "early_bird"            # where the good ticket comes from: "early_bird", or "to_fraction" (below)
CRITERION = "magnitude"             # the criterion of the good mask, from which random and bad tickets are built
COMPARE_WITH = "gradient"           # more criteria whose masks are drawn only to compare kept sets; "" = none
GRANULARITY = "heads+neurons"       # or "weights" (unstructured; set --pruning_rate)
SEEDS = "42,43,44"                  # one good mask, random ticket and training per seed (>= 3 for a paired test worth reading)
TICKETS = "good,random,bad"         # the tickets trained
REWINDS = "auto"                    # where a ticket's training starts: "pretrained" and/or "early_bird" weights;
                                    # auto: both for early_bird, pretrained for to_fraction (it has no early bird)
EPOCHS = 1.0                        # training budget of every ticket and of the dense reference
OUT_DIR = "sweeps/lottery"          # one sub-directory per run, tickets/, lottery.md and the plots
# PROCEDURE="to_fraction" (Prasanna et al.'s own): prune each seed's fine-tuned dense model (dense-sSEED) step by
# step until its dev score falls below KEEP_FRACTION of the full model's; the last mask above is the good ticket.
STEP = 0.1                          # share of the remaining heads (weights: of the remaining weights) removed per step
MLP_STEP = 1                        # heads+neurons: whole MLPs removed per step (the lowest importance)
KEEP_FRACTION = 0.9                 # the ticket keeps at least this fraction of the full model's dev score
IMPORTANCE_EXAMPLES = 2048          # train rows (of those the full model trained on) the importance is computed on; 0 = all
IMPORTANCE_ABS = "sum"              # "sum": |sum over batches of dL/dgate| (Michel et al.); "batch": sum of |per batch|
NORMALIZE_HEADS = True              # head importance divided by its L2 norm over each layer's heads (Michel et al.)
PATTERN_SENTENCES = 200             # dev sentences whose attention maps type each head (Kovaleva et al.); 0 = none
OTHER_STUDIES = ""                  # OUT_DIRs of to_fraction studies of other tasks (comma-separated): heatmaps, overlap
SETTINGS = ("SCRIPT", "PROCEDURE", "CRITERION", "COMPARE_WITH", "GRANULARITY", "SEEDS", "TICKETS", "REWINDS", "EPOCHS",
            "OUT_DIR", "STEP", "MLP_STEP", "KEEP_FRACTION", "IMPORTANCE_EXAMPLES", "IMPORTANCE_ABS", "NORMALIZE_HEADS",
            "PATTERN_SENTENCES", "OTHER_STUDIES")
PROCEDURES = ("early_bird", "to_fraction")
# What the study sets for every run itself: passing them would break its design.
STUDY_OWNS = {"--seed": "--seeds", "--trainer": "--criterion", "--mask_from": "--tickets", "--rewind_to": "--rewinds",
              "--save_eb_weights": None, "--run_name": None, "--resume": None}


CHANNEL_UNITS = ("channels", "neurons")  # GRANULARITY of a study of resnet.py / mlp.py (what their masks files say)


def refuse_channel_fraction(script: str) -> None:
    """PROCEDURE="to_fraction" does not take resnet.py / mlp.py (or a copy of either): raises the ConfigError that
    says why and what to use instead."""
    raise ConfigError(f"--script={script} with --procedure=to_fraction: Prasanna et al.'s search removes attention "
                      "heads and whole MLPs of a transformer (bert.py, roberta.py); for channel or neuron tickets "
                      "use --procedure=early_bird")


def channel_script(script: dict) -> bool:
    """Whether a script's namespace is a resnet.py / mlp.py run (or a renamed copy): its settings check is
    `pruning.convnets.experiment.check`."""
    return getattr(script.get("validate"), "__module__", "") == "pruning.convnets.experiment"


def settings(argv: list[str] | None = None) -> tuple[dict, list[str]]:
    """The study's settings and the arguments for every run, checked before any training. Raises ConfigError
    naming the setting (for SCRIPT=resnet.py / mlp.py with PROCEDURE=to_fraction: `refuse_channel_fraction`,
    before anything else)."""
    argv = sys.argv[1:] if argv is None else argv

    def named(key, default):
        return next((a.split("=", 1)[1] for a in reversed(argv) if a.startswith(f"--{key}=")), default)
    if Path(named("script", SCRIPT)).name in CHANNEL_SCRIPTS and named("procedure", PROCEDURE) == "to_fraction":
        refuse_channel_fraction(named("script", SCRIPT))
    config, passed_on, script = grid_settings(globals(), SETTINGS, argv, owned=STUDY_OWNS)
    if config["PROCEDURE"] not in PROCEDURES:
        raise ConfigError(f"--procedure={config['PROCEDURE']}: choose one of {', '.join(PROCEDURES)}")
    fraction = config["PROCEDURE"] == "to_fraction"
    channels = channel_script(script)
    if channels:
        if fraction:  # a renamed copy
            refuse_channel_fraction(config["SCRIPT"])
        if any(a.startswith("--granularity=") for a in argv):
            raise ConfigError(f"--granularity: {Path(config['SCRIPT']).name} prunes channels (resnet.py) or neurons "
                              "(mlp.py), nothing else; leave --granularity out")
        config["GRANULARITY"] = "neurons" if "HIDDEN" in script else "channels"
    if config["REWINDS"] == "auto":
        config["REWINDS"] = "pretrained" if fraction else "pretrained,early_bird"
    split = {k: [t.strip() for t in config[k].split(",") if t.strip()]
             for k in ("COMPARE_WITH", "SEEDS", "TICKETS", "REWINDS", "OTHER_STUDIES")}
    known = trainer_names(script)
    for name in [config["CRITERION"], *split["COMPARE_WITH"]]:
        if name not in known or name == "dense":
            raise ConfigError(f"unknown pruning criterion {name!r}; choose from "
                                         f"{', '.join(n for n in known if n != 'dense')}")
    if not channels:
        study_grid.check_granularity(config["GRANULARITY"])
    for key, allowed in (("TICKETS", tickets.KINDS), ("REWINDS", REWIND_POINTS)):
        wrong = [t for t in split[key] if t not in allowed] or ([] if split[key] else ["(none)"])
        if wrong:
            raise ConfigError(f"--{key.lower()}: {', '.join(wrong)} not understood; give some of "
                                         f"{', '.join(allowed)}, comma-separated")
    seeds = study_grid.seeds(config["SEEDS"])
    if not config["EPOCHS"] > 0:
        raise ConfigError(f"EPOCHS must be > 0, got {config['EPOCHS']}")
    if fraction:
        check_fraction_settings(config, split)
    config.update(split, SEEDS=seeds)
    for _, args, ticket in runs(config, passed_on, seeds[:1]):  # each kind of run's whole configuration
        if ticket is None:  # (a ticket's directory only exists once its source run has finished)
            script.get("validate", checks.validate)(experiment.configure(script, args))  # resnet.py, mlp.py: their own
    return config, passed_on


def check_fraction_settings(config: dict, split: dict) -> None:
    """The to_fraction procedure's own settings. Raises ConfigError naming the setting and the fix."""
    if "early_bird" in split["REWINDS"]:
        raise ConfigError("--rewinds=early_bird: PROCEDURE=to_fraction prunes the fine-tuned model and has no "
                                     "early-bird weights to rewind to; use --rewinds=pretrained")
    if not 0 < config["STEP"] < 1:
        raise ConfigError(f"STEP must be in (0, 1) (a share of the remaining units), got {config['STEP']}")
    if config["MLP_STEP"] < 0:
        raise ConfigError(f"MLP_STEP must be >= 0 whole MLPs, got {config['MLP_STEP']}")
    if not 0 < config["KEEP_FRACTION"] <= 1:
        raise ConfigError(f"KEEP_FRACTION must be in (0, 1], got {config['KEEP_FRACTION']}")
    if config["IMPORTANCE_ABS"] not in to_fraction.ABSOLUTE:
        raise ConfigError(f"IMPORTANCE_ABS={config['IMPORTANCE_ABS']!r}: choose one of "
                                     f"{', '.join(to_fraction.ABSOLUTE)}")
    for key in ("IMPORTANCE_EXAMPLES", "PATTERN_SENTENCES"):
        if config[key] < 0:
            raise ConfigError(f"{key} must be >= 0 (0 = all / none), got {config[key]}")
    for other in split["OTHER_STUDIES"]:
        if not (Path(other) / "tickets").is_dir():
            raise ConfigError(f"--other_studies: {other} holds no tickets/ of a to_fraction study; give "
                                         "the OUT_DIR of a finished one")


def runs(config: dict, passed_on: list[str], seeds: list[int] | None = None):
    """(name, arguments, ticket) of every run, seed by seed in the order they run: the early-bird
    searches (PROCEDURE="early_bird" only), the dense reference (for to_fraction also the full model the
    search prunes), then each ticket ((seed, kind); None for the others) from each starting point."""
    budget = [f"--search_epochs={config['EPOCHS']}", "--retrain_epochs=0"]  # a fixed mask trains search + retrain
    # (resnet.py / mlp.py have no GRANULARITY: their unit is their own)
    granularity = [] if config["GRANULARITY"] in CHANNEL_UNITS else [f"--granularity={config['GRANULARITY']}"]
    searches = [config["CRITERION"], *config["COMPARE_WITH"]] if config["PROCEDURE"] == "early_bird" else []
    for seed in seeds or config["SEEDS"]:
        for trainer in searches:
            yield f"eb-{trainer}-s{seed}", ["--measure_speed=false", *passed_on, f"--trainer={trainer}",
                                            f"--seed={seed}", *granularity, "--save_eb_weights=true"], None
        yield f"dense-s{seed}", ["--measure_speed=false", *passed_on, "--trainer=dense", f"--seed={seed}",
                                 *budget], None
        for kind in config["TICKETS"]:
            for rewind in config["REWINDS"]:
                yield f"{kind}-{rewind}-s{seed}", [
                    "--measure_speed=false", *passed_on, f"--trainer={config['CRITERION']}", f"--seed={seed}",
                    *granularity, f"--mask_from={ticket_dir(config, seed, kind)}", f"--rewind_to={rewind}",
                    *budget], (seed, kind)


def ticket_dir(config: dict, seed: int, kind: str) -> Path:
    """The directory of one seed's ticket of `kind` ("good", "random", "bad"), OUT_DIR/tickets/s{seed}/{kind}:
    its masks, which the ticket's runs train with MASK_FROM."""
    return Path(config["OUT_DIR"]) / "tickets" / f"s{seed}" / kind


def main(argv: list[str] | None = None) -> None:
    """Entry point: the plan of runs (Prasanna et al. 2020's study on early-bird tickets), each seed's tickets
    written from its early-bird run, then lottery.md. Bad settings exit with status 2; failed runs end in
    SystemExit naming them."""
    try:
        config, passed_on = settings(argv)
        plan = list(runs(config, passed_on))
        check_cells(config["SCRIPT"], Path(config["OUT_DIR"]), [(name, args) for name, args, _ in plan])
    except ConfigError as e:
        fail(e)
    out = Path(config["OUT_DIR"])
    ticket_of = {name: ticket for name, _, ticket in plan}
    fraction = config["PROCEDURE"] == "to_fraction"

    def write_ticket(name: str, failed: list[str]) -> bool:  # a ticket's masks, once its source run is done
        if ticket_of[name] is None:
            return True
        seed, kind = ticket_of[name]
        source = out / (f"dense-s{seed}" if fraction else f"eb-{config['CRITERION']}-s{seed}")
        if source.name in failed:
            return False
        if not fraction:
            tickets.write_tickets(source, ticket_dir(config, seed, kind).parent, seed, config["TICKETS"])
            return True
        fraction_tickets(config, seed)
        return True
    failed = study_grid.run_cells(config["SCRIPT"], out, [(name, args) for name, args, _ in plan], "lottery",
                                  write_ticket)
    try:
        write(out, config)
    except (SchemaError, sweep_tables.MixedTasks) as e:  # runs put into OUT_DIR by hand: no report
        study_grid.finish(failed)
        fail(e)
    study_grid.finish(failed)


# --- the to_fraction procedure ----------------------------------------------------------------------
def search_dir(config: dict, seed: int) -> Path:
    """OUT_DIR/search/s{seed}: one seed's to-fraction search (state, curve, plot, attention patterns)."""
    return Path(config["OUT_DIR"]) / "search" / f"s{seed}"


def fraction_tickets(config: dict, seed: int) -> None:
    """Prune seed's fine-tuned dense run (OUT_DIR/dense-s{seed}/model) to KEEP_FRACTION of its dev score
    (`pruning.studies.to_fraction.to_fraction_search`, resumable; a finished search returns at once), write the good,
    random and bad tickets (`tickets.write_ticket_masks`: bad = the units removed first), the search's curve
    plot, and, for heads, the attention pattern of every head (`pruning.studies.patterns`) to search_dir."""
    directory = search_dir(config, seed)
    ticket_root = ticket_dir(config, seed, "good").parent
    done = all((ticket_root / k / state_io.MASKS_FILE).exists() for k in config["TICKETS"])
    structured = config["GRANULARITY"] != "weights"
    wants_patterns = structured and config["PATTERN_SENTENCES"] and not (directory / PATTERNS_FILE).exists()
    if done and not wants_patterns:
        return
    source = Path(config["OUT_DIR"]) / f"dense-s{seed}"
    inputs = to_fraction.load_run(source, config["IMPORTANCE_EXAMPLES"])
    model = inputs.model
    if structured:
        initial = to_fraction.full_structured_mask(model)

        def scores(masks):
            return to_fraction.gate_importance(model, inputs.train, masks, config["IMPORTANCE_ABS"],
                                              config["NORMALIZE_HEADS"])

        def step(masks, s):
            return to_fraction.structured_step(masks, s, config["STEP"], config["MLP_STEP"])
    else:
        initial = {n: torch.ones_like(p, dtype=torch.bool) for n, p in prunable_parameters(model).items()}

        def scores(masks):
            return to_fraction.magnitude_importance(model, masks)

        def step(masks, s):
            return to_fraction.weights_step(masks, s, config["STEP"])
    settings = {k: config[k] for k in ("GRANULARITY", "STEP", "MLP_STEP", "IMPORTANCE_EXAMPLES", "IMPORTANCE_ABS",
                                       "NORMALIZE_HEADS")}
    print(f"to-fraction search, seed {seed}: {inputs.description}, {len(inputs.dev)} dev batches", flush=True)
    result = to_fraction.to_fraction_search(initial, scores, lambda m: to_fraction.dev_score(inputs, m, structured),
                                           step, config["KEEP_FRACTION"], directory,
                                           {**settings, "source": str(source.resolve())})
    to_fraction.plot_curve(result.curve, config["KEEP_FRACTION"], directory / "search_curve.png",
                          f"{inputs.task.title} dev {inputs.task.headline}", f"seed {seed}")
    meta = {"granularity": config["GRANULARITY"], "criterion": "to_fraction", "model": inputs.description,
            "groups": {n: list(m.shape) for n, m in result.ticket.items()}, "source": str(source.resolve()),
            "procedure": "to_fraction", "ticket_iteration": result.ticket_iteration,
            "keep_fraction": config["KEEP_FRACTION"]}
    tickets.write_ticket_masks(result.ticket, result.order, meta, ticket_root, seed, config["TICKETS"])
    if wants_patterns:
        tok = inputs.tokenizer  # the sentence-boundary tokens ([CLS], [SEP]; <s>, </s>), not [UNK]
        boundary = [i for i in (tok.cls_token_id, tok.sep_token_id, tok.bos_token_id, tok.eos_token_id) if i is not None]
        found = patterns.head_patterns(model, sentences(inputs.dev, config["PATTERN_SENTENCES"]), boundary, tok)
        tmp = directory / (PATTERNS_FILE + ".tmp.npz")
        np.savez(tmp, counts=found.counts, example=found.example, tokens=np.array(found.tokens),
                 sentences=found.sentences, **{f"mass_{r}": v for r, v in found.masses.items()})
        os.replace(tmp, directory / PATTERNS_FILE)


PATTERNS_FILE = "patterns.npz"


def sentences(batches: list[dict], n: int) -> list[dict]:
    """The first `n` rows of `batches` (dicts of tensors), as batches."""
    out, left = [], n
    for batch in batches:
        if left <= 0:
            break
        out.append({k: v[:left] for k, v in batch.items()})
        left -= len(batch["input_ids"])
    return out


def read_patterns(path: Path) -> patterns.HeadPatterns:
    """The `patterns.HeadPatterns` that `fraction_tickets` saved to `path`."""
    with np.load(path) as f:
        return patterns.HeadPatterns(f["counts"], {r: f[f"mass_{r}"] for r in patterns.REGIONS}, int(f["sentences"]),
                                     f["example"], [str(t) for t in f["tokens"]])


# --- the report ----------------------------------------------------------------------------------
NAME = re.compile(r"^(?:(?P<kind>good|random|bad)-(?P<rewind>pretrained|early_bird)|eb-(?P<trainer>.+)|dense)"
                  r"-s(?P<seed>\d+)$")


def collect(out: Path) -> dict:
    """The study's finished runs by role: dense[seed], eb[trainer][seed], ticket[(kind, rewind)][seed],
    and their task (a `pruning.run.schema.TaskInfo`). Raises `pruning.studies.sweep_tables.MixedTasks` for runs of several
    tasks (`sweep_tables.load`)."""
    results = sweep_tables.load(out)
    found = {"dense": {}, "eb": {}, "ticket": {}, "task": sweep_tables.task_of(results)}
    for r in results:
        m = NAME.match(Path(r.run_dir).name)
        if not m:
            continue
        seed = int(m["seed"])
        if m["kind"]:
            found["ticket"].setdefault((m["kind"], m["rewind"]), {})[seed] = r
        elif m["trainer"]:
            found["eb"].setdefault(m["trainer"], {})[seed] = r
        else:
            found["dense"][seed] = r
    return found


def score(r: RunResults, stage: str = "final") -> float | None:
    """The run's headline metric on the dev set at `stage` ("final", "before_prune", "after_prune"): a
    fraction (accuracy, F1) or a correlation (Matthews, Pearson); None if not evaluated."""
    return r.score(stage)


def score_markdown(found: dict, config: dict) -> list[str]:
    """The score tables of lottery.md: every ticket from each starting point beside the dense reference
    (mean ± std over seeds), then the early-bird pipeline runs; the headline metric, named."""
    dense, label = found["dense"], schema.dev_metric_label(found["task"])
    if config["PROCEDURE"] == "to_fraction":
        return fraction_score_markdown(found, config)
    channels = config["GRANULARITY"] in CHANNEL_UNITS  # (a channel model has no embeddings: all its parameters)
    start = "initial (REWIND_TO=pretrained: the seed's init)" if channels else "pretrained"
    lines = [f"{label}, mean ± std over seeds (n). Every ticket and the dense reference trained "
             f"{config['EPOCHS']:g} epoch(s); \"before training\": the masked starting weights, not trained.", "",
             f"| ticket | from the {start} weights | from the early-bird weights | early-bird weights, before "
             "training |", "|---|---|---|---|"]
    lines.append(f"| dense (no mask) | {_cell([score(r) for r in dense.values()])} | – | – |")
    for kind in tickets.KINDS:
        pre, eb = found["ticket"].get((kind, "pretrained"), {}), found["ticket"].get((kind, "early_bird"), {})
        if pre or eb:
            lines.append(f"| {kind} | {_cell([score(r) for r in pre.values()])} | "
                         f"{_cell([score(r) for r in eb.values()])} | "
                         f"{_cell([score(r, 'after_prune') for r in eb.values()])} |")
    lines += ["", "The early-bird pipeline itself (search, prune, retrain with the mask; its own budget):", "",
              f"| criterion | final {schema.metric_title(found['task'])} | early bird at step | parameters kept"
              f"{'' if channels else ' (without embeddings)'} |",
              "|---|---|---|---|"]
    for trainer, by_seed in sorted(found["eb"].items()):
        runs_ = list(by_seed.values())
        kept = [r.parameters.final.total / r.parameters.dense.total if channels else
                r.parameters.kept_without_embeddings() for r in runs_]
        steps = ", ".join(str(r.pruning.prune_step) + ("" if r.pruning.eb_found else " (budget)") for r in runs_)
        lines.append(f"| {trainer} | {_cell([score(r) for r in runs_])} | {steps} | {_cell(kept)} |")
    return lines


def paired_markdown(found: dict) -> list[str]:
    """Paired by seed, in the task's headline metric: good against random and bad, random against bad,
    and each ticket against dense."""
    arms = {f"{kind}, {rewind.replace('_', '-')}": by_seed for (kind, rewind), by_seed in found["ticket"].items()}
    pairs = []
    for rewind in REWIND_POINTS:
        label = rewind.replace("_", "-")
        pairs += [(f"good, {label}", f"random, {label}"), (f"good, {label}", f"bad, {label}"),
                  (f"random, {label}", f"bad, {label}")]
    pairs += [(f"good, {label}", f"good, {other}") for label, other in (("early-bird", "pretrained"),)]
    pairs += [(f"{kind}, {rewind.replace('_', '-')}", "dense") for kind in tickets.KINDS for rewind in REWIND_POINTS]
    arms["dense"] = found["dense"]
    task = found["task"]
    mcnemar = ("McNemar's exact test on each seed's dev predictions (right or wrong per example)"
               if task.headline not in stats.REGRESSION_METRICS else
               f"no McNemar test ({task.title} is a regression: no prediction is right or wrong)")
    lines = [f"Paired by seed (the same data order and dropout): the difference in {schema.dev_metric_label(task)} "
             "(mean ± std over seeds) and the paired t-test over seeds (training noise; with 3 seeds only large "
             f"differences reach p < 0.05); {mcnemar}; and a bootstrap over the dev examples of the mean "
             f"difference in {schema.metric_title(task)} (95% interval, p): how much it rests on which examples "
             "the dev set holds.", "",
             "| A / B | seeds | A − B | p (paired t) | McNemar p, each seed | bootstrap 95% interval | "
             "p (bootstrap) |", "|---|---|---|---|---|---|---|"]
    for a, b in pairs:
        if a not in arms or b not in arms:
            continue
        seeds = sorted(set(arms[a]) & set(arms[b]))
        if len(seeds) < 2:
            continue
        cells = stats.paired_cells([score(arms[a][s]) for s in seeds], [score(arms[b][s]) for s in seeds],
                                   [stats.dev_outputs(arms[a][s]) for s in seeds],
                                   [stats.dev_outputs(arms[b][s]) for s in seeds], task.headline)
        lines.append(f"| {a} / {b} | {len(seeds)} | {cells['difference']} | {cells['t']} | {cells['mcnemar']} | "
                     f"{cells['interval']} | {cells['bootstrap']} |")
    return lines if len(lines) > 4 else []


def stability(found: dict) -> dict:
    """Overlap of the early-bird masks between seeds (each criterion) and between criteria (each seed); a resnet.py /
    mlp.py study's per channel group (`tickets.pairwise_overlaps`' unit: "channels", "neurons")."""
    read = {(t, seed): read_run_masks(r.run_dir) for t, by_seed in found["eb"].items() for seed, r in by_seed.items()}
    masks = {key: m for key, (m, _, _) in read.items()}
    unit = next((meta["granularity"] for _, _, meta in read.values() if meta.get("granularity") in CHANNEL_UNITS), None)
    seeds_rows, criteria_rows = [], []
    for t in sorted({t for t, _ in masks}):
        rows = tickets.pairwise_overlaps({s: m for (tt, s), m in masks.items() if tt == t}, unit=unit)
        seeds_rows += [{**row, "criterion": t} for row in rows]
    for seed in sorted({s for _, s in masks}):
        rows = tickets.pairwise_overlaps({t: m for (t, s), m in masks.items() if s == seed}, unit=unit)
        criteria_rows += [{**row, "seed": seed} for row in rows]
    survival = {}
    for t in sorted({t for t, _ in masks}):
        structured = [m for (tt, _), m in sorted(masks.items()) if tt == t and tickets.split_kind(m, "heads")]
        if structured:
            survival[t] = tickets.head_survival(structured)
    return {"seeds": seeds_rows, "criteria": criteria_rows, "survival": survival, "unit": unit,
            "n_seeds": {t: sum(1 for tt, _ in masks if tt == t) for t, _ in masks}}


def stability_markdown(stab: dict, criterion: str) -> list[str]:
    """The stability section of lottery.md: Jaccard index of the kept sets between seeds and between
    criteria, beside chance, per layer, and the heads every seed or no seed kept."""
    lines = ["Which units survive: Jaccard index of the kept sets (mean ± std over pairs), beside the index of "
             "random choices with the same per-layer counts. Between seeds: one criterion, every two seeds. "
             "Between criteria: the same seed.", "",
             "| compared | pairs of | unit | layers | Jaccard | by chance |", "|---|---|---|---|---|---|"]
    for what, rows, key in (("between seeds", stab["seeds"], "criterion"), ("between criteria", stab["criteria"], None)):
        groups: dict = {}
        for row in rows:
            label = row[key] if key else f"{row['a']} / {row['b']}"
            groups.setdefault((label, row["kind"], row["layer"] == "all"), []).append(row)
        for (label, kind, whole), g in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], not kv[0][2])):
            if not whole:
                continue
            lines.append(f"| {what} | {label} | {kind} | all | {stats.mean_std([r['jaccard'] for r in g])} | "
                         f"{stats.mean_std([r['chance'] for r in g])} |")
    lines += [""] + layer_markdown(stab, criterion)
    if stab["survival"]:
        lines += ["", "Heads kept by every seed (\"super-survivors\") and by none, against the number expected if "
                  "each seed kept its per-layer count of heads at random:", "",
                  "| criterion | seeds | heads | kept by every seed | expected by chance | kept by none | "
                  "expected by chance |", "|---|---|---|---|---|---|---|"]
        for t, grid in stab["survival"].items():
            n = stab["n_seeds"][t]
            frac = grid.mean(axis=1)  # each layer's kept fraction (the same for every seed)
            heads = grid.shape[1]
            lines.append(f"| {t} | {n} | {grid.size} | {int((grid == 1).sum())} | "
                         f"{float(sum(heads * f ** n for f in frac)):.1f} | {int((grid == 0).sum())} | "
                         f"{float(sum(heads * (1 - f) ** n for f in frac)):.1f} |")
    return lines


def layer_markdown(stab: dict, criterion: str) -> list[str]:
    """Per layer: Jaccard between seeds (the study's criterion) and between criteria, each with chance."""
    columns = []
    for kind in sorted({r["kind"] for r in stab["seeds"] + stab["criteria"]}):
        columns += [(f"{kind}, between seeds", [r for r in stab["seeds"] if r["kind"] == kind
                                                and r["criterion"] == criterion]),
                    (f"{kind}, between criteria", [r for r in stab["criteria"] if r["kind"] == kind])]
    columns = [(label, rows) for label, rows in columns if rows]
    layers = sorted({r["layer"] for _, rows in columns for r in rows if r["layer"] != "all"})
    if not layers:
        return []
    where = "; a layer: one channel group (mlp.py: one hidden layer), in the model's order" if stab.get("unit") else ""
    lines = [f"Per layer (mean over pairs; between seeds: {criterion}{where}), Jaccard / chance:", "",
             "| layer | " + " | ".join(label for label, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for layer in layers:
        cells = []
        for _, rows in columns:
            at = [r for r in rows if r["layer"] == layer]
            cells.append(f"{np.mean([r['jaccard'] for r in at]):.2f} / {np.mean([r['chance'] for r in at]):.2f}"
                         if at else "–")
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    return lines


def plot_score(found: dict, path: Path) -> None:
    """The dev headline score of every ticket and starting point (dots: seeds, bars: means) against the
    dense mean, to `path`; the axis names the task and metric."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    colors = {"pretrained": "tab:blue", "early_bird": "tab:orange"}
    labels = []
    for i, kind in enumerate(tickets.KINDS):
        for j, rewind in enumerate(REWIND_POINTS):
            values = [score(r) for r in found["ticket"].get((kind, rewind), {}).values()]
            if not values:
                continue
            x = i + (j - 0.5) * 0.3
            ax.scatter([x] * len(values), values, color=colors[rewind], alpha=0.6, s=18,
                       label=f"from {rewind.replace('_', '-')} weights" if rewind not in labels else None)
            labels.append(rewind)
            ax.hlines(statistics.mean(values), x - 0.1, x + 0.1, color=colors[rewind], lw=2)
    dense = [score(r) for r in found["dense"].values()]
    if dense:
        ax.axhline(statistics.mean(dense), color="k", ls="--", lw=1, label="dense, mean")
    ax.set_xticks(range(len(tickets.KINDS)), tickets.KINDS)
    ax.set_ylabel(schema.dev_metric_label(found["task"]))
    ax.set_title("Tickets trained with a fixed mask (dots: seeds, bars: means)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_stability(stab: dict, path: Path) -> None:
    """Per layer: Jaccard between seeds and between criteria, with chance; and the head-survival grids."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    kinds = sorted({r["kind"] for r in stab["seeds"] + stab["criteria"]})
    panels = len(kinds) + len(stab["survival"])
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.6), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for what, rows, style in (("between seeds", stab["seeds"], "-"), ("between criteria", stab["criteria"], "-.")):
            per_layer: dict = {}
            for r in rows:
                if r["kind"] == kind and r["layer"] != "all":
                    per_layer.setdefault(r["layer"], []).append((r["jaccard"], r["chance"]))
            if not per_layer:
                continue
            layers = sorted(per_layer)
            line, = ax.plot(layers, [np.mean([j for j, _ in per_layer[k]]) for k in layers], style, marker="o",
                            label=what)
            ax.plot(layers, [np.mean([c for _, c in per_layer[k]]) for k in layers], ":", color=line.get_color(),
                    label=f"{what}, chance")
        ax.set_xlabel("layer")
        ax.set_ylabel("Jaccard of kept sets")
        ax.set_title(kind)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
    for ax, (t, grid) in zip(axes[0][len(kinds):], stab["survival"].items()):
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(f"{t}: fraction of {stab['n_seeds'][t]} seeds keeping each head", fontsize=9)
        fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fraction_score_markdown(found: dict, config: dict) -> list[str]:
    """The score table of a to_fraction study: each ticket trained from the pretrained weights, the same masked
    weights before training, and (good) the ticket in the fine-tuned weights as the search scored it."""
    label = schema.dev_metric_label(found["task"])
    searched = [c["curve"][c["ticket_iteration"]]["score"] for c in curves(config).values()]
    lines = [f"{label}, mean ± std over seeds (n). Every ticket and the dense (full) model trained "
             f"{config['EPOCHS']:g} epoch(s) from the pretrained weights; the search pruned each seed's full model.",
             "", "| ticket | trained from the pretrained weights | pretrained weights masked, before training | "
             "fine-tuned weights masked (the search) |", "|---|---|---|---|",
             f"| dense (no mask) | {_cell([score(r) for r in found['dense'].values()])} | – | "
             f"{_cell([c['full_score'] for c in curves(config).values()])} |"]
    for kind in tickets.KINDS:
        pre = found["ticket"].get((kind, "pretrained"), {})
        if pre or kind == "good":
            lines.append(f"| {kind} | {_cell([score(r) for r in pre.values()])} | "
                         f"{_cell([score(r, 'after_prune') for r in pre.values()])} | "
                         f"{_cell(searched) if kind == 'good' else '–'} |")
    return lines


def curves(config: dict) -> dict[int, dict]:
    """seed -> the search's saved curve (`to_fraction.CURVE_FILE`: settings, full_score, ticket_iteration, done,
    curve), for the seeds whose search has started."""
    found = {}
    for seed in config["SEEDS"]:
        path = search_dir(config, seed) / to_fraction.CURVE_FILE
        if path.exists():
            found[seed] = json.loads(path.read_text())
    return found


def good_tickets(out: Path) -> dict[int, dict]:
    """seed -> the good ticket's masks in a study directory `out` (tickets/s{seed}/good)."""
    found = {}
    for directory in sorted((out / "tickets").glob("s*/good")):
        if (directory / state_io.MASKS_FILE).exists() and directory.parent.name[1:].isdigit():
            found[int(directory.parent.name[1:])] = read_run_masks(str(directory))[0]
    return found


def fraction_report(out: Path, config: dict, found: dict) -> tuple[list[str], dict]:
    """The to_fraction sections of lottery.md and their figures (lottery_search.png, lottery_survival.png,
    lottery_patterns.png in `out`), and the same numbers for lottery_fraction.json: each seed's ticket size; the
    overlap of surviving units between seeds and with OTHER_STUDIES (other tasks), beside chance; the attention
    pattern types of good-ticket, pruned and all heads with Fisher's test."""
    task = found["task"]
    found_curves = curves(config)
    summary: dict = {"keep_fraction": config["KEEP_FRACTION"], "step": config["STEP"], "mlp_step": config["MLP_STEP"],
                     "granularity": config["GRANULARITY"], "seeds": {}, "overlaps": [], "patterns": {}}
    structured = config["GRANULARITY"] != "weights"
    how = (f"{config['STEP']:g} of the heads left and {config['MLP_STEP']} whole MLP(s) a step, the lowest by Michel "
           f"et al.'s gate importance" if structured else
           f"{config['STEP']:g} of the weights left a step, the smallest by global magnitude, no retraining")
    lines = [f"## Tickets at {config['KEEP_FRACTION']:g} of the full model's {schema.metric_title(task)}", "",
             f"Each seed's fine-tuned dense model, pruned step by step ({how}) until its dev score fell below the "
             "fraction; the ticket is the last mask above it.", ""]
    lines += (["| seed | full | steps to the ticket | heads kept | MLPs kept | ticket's score (of full) | "
               "next step's score |", "|---|---|---|---|---|---|---|"] if structured else
              ["| seed | full | steps to the ticket | weights kept | ticket's score (of full) | next step's score |",
               "|---|---|---|---|---|---|"])
    for seed, c in sorted(found_curves.items()):
        t = c["curve"][c["ticket_iteration"]]
        after = c["curve"][c["ticket_iteration"] + 1] if len(c["curve"]) > c["ticket_iteration"] + 1 else None
        nxt = f"{after['score']:.4f}" if after else ("none left to remove" if c["done"] else "running")
        size = (f"{t['heads']} / {t['heads_total']} | {t['mlps']} / {t['mlps_total']}" if structured else
                f"{t['weights']:,} ({t['weights'] / t['weights_total']:.1%})")
        lines.append(f"| {seed} | {c['full_score']:.4f} | {c['ticket_iteration']} | {size} | {t['score']:.4f} "
                     f"({t['fraction_of_full']:.1%}) | {nxt} |")
        summary["seeds"][seed] = {"full_score": c["full_score"], "ticket_iteration": c["ticket_iteration"], **t}
    if found_curves:
        plot_curves(found_curves, config, out / "lottery_search.png", schema.dev_metric_label(task))
        lines += ["", "![search](lottery_search.png)"]
    goods = good_tickets(out)
    studies = {task.title: goods} if goods else {}
    for other in config["OTHER_STUDIES"]:
        try:
            title = collect(Path(other))["task"].title
        except (SchemaError, sweep_tables.MixedTasks, ValueError):
            title = Path(other).name
        if title in studies:
            title = f"{title} ({other})"
        studies[title] = good_tickets(Path(other))
    rows = heatmaps.overlaps(studies) if studies else []
    summary["overlaps"] = rows
    if rows:
        lines += ["", "Overlap of the surviving units (good tickets): Jaccard index, mean ± std over pairs, beside "
                  "the index of random choices with the same per-layer counts.", "",
                  "| between | a / b | unit | pairs | Jaccard | by chance |", "|---|---|---|---|---|---|"]
        groups: dict = {}
        for r in rows:
            groups.setdefault((r["between"], r["a"], r["b"], r["kind"]), []).append(r)
        for (between, a, b, kind), g in sorted(groups.items()):
            pair = a if between == "seeds" else f"{a} / {b}"
            lines.append(f"| {between} | {pair} | {kind} | {len(g)} | {stats.mean_std([r['jaccard'] for r in g])} | "
                         f"{stats.mean_std([r['chance'] for r in g])} |")
    if structured and studies:
        heatmaps.plot_survival({k: v for k, v in studies.items() if v}, out / "lottery_survival.png")
        lines += ["", "Which heads and MLPs survive (1: in every ticket; per seed and averaged; MLPs: the column on "
                  "the right):", "", "![survival](lottery_survival.png)"]
    if structured:
        lines += pattern_report(out, config, goods, summary)
    return lines, summary


def pattern_report(out: Path, config: dict, goods: dict, summary: dict) -> list[str]:
    """The attention-pattern section: types of good-ticket, pruned and all heads (pooled over seeds) with
    Fisher's exact test, each seed's p, and example maps (lottery_patterns.png, the first seed)."""
    per_seed = {s: read_patterns(search_dir(config, s) / PATTERNS_FILE) for s in sorted(goods)
                if (search_dir(config, s) / PATTERNS_FILE).exists()}
    if not per_seed:
        return []
    kept = {s: heatmaps.grids(goods[s])[0].astype(bool) for s in per_seed}
    pooled = patterns.shares(np.stack([per_seed[s].types() for s in per_seed]), np.stack([kept[s] for s in per_seed]))
    seed_p = {s: {r["type"]: r["p"] for r in patterns.shares(per_seed[s].types(), kept[s])} for s in per_seed}
    summary["patterns"] = {"pooled": pooled, "p_by_seed": seed_p,
                           "sentences": {s: p.sentences for s, p in per_seed.items()}}
    first = next(iter(per_seed))
    patterns.plot_examples(per_seed[first], out / "lottery_patterns.png", kept[first])

    def share(v):
        return "–" if v is None else f"{v:.0%}"
    lines = ["", f"Attention patterns (Kovaleva et al.'s types by the rule in `pruning/studies/patterns.py`; each head's "
             f"most frequent type over {per_seed[first].sentences} dev sentences of the fine-tuned full model), heads "
             f"of {len(per_seed)} seed(s) pooled. p: Fisher's exact test, good-ticket against pruned heads (pooled, "
             "then each seed).", "",
             "| type | good-ticket heads | pruned heads | all heads | good-ticket heads by chance | p | p, each seed |",
             "|---|---|---|---|---|---|---|"]
    for r in pooled:
        p = "–" if r["p"] is None else f"{r['p']:.3g}"
        each = ", ".join("–" if seed_p[s][r["type"]] is None else f"{seed_p[s][r['type']]:.2g}" for s in per_seed)
        lines.append(f"| {r['type']} | {r['kept']} ({share(r['kept_share'])}) | {r['pruned']} "
                     f"({share(r['pruned_share'])}) | {r['all']} ({share(r['all_share'])}) | "
                     f"{r['expected_kept']:.1f} | {p} | {each} |")
    return lines + ["", "![patterns](lottery_patterns.png)"]


def plot_curves(found: dict[int, dict], config: dict, path: Path, label: str) -> None:
    """Every seed's search: the dev score against the fraction of heads (or weights) kept, the threshold, and
    each seed's ticket circled, to `path`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    kind = "heads" if config["GRANULARITY"] != "weights" else "weights"
    fig, ax = plt.subplots(figsize=(6, 4))
    for seed, c in sorted(found.items()):
        x = [p[kind] / p[f"{kind}_total"] for p in c["curve"]]
        line, = ax.plot(x, [p["score"] for p in c["curve"]], marker="o", ms=3, label=f"seed {seed}")
        t = c["curve"][c["ticket_iteration"]]
        ax.scatter([t[kind] / t[f"{kind}_total"]], [t["score"]], s=90, facecolors="none", edgecolors=line.get_color())
        ax.axhline(config["KEEP_FRACTION"] * c["full_score"], color=line.get_color(), ls=":", lw=1)
    ax.set_xlabel(f"fraction of {kind} kept" + (" (MLPs: one more removed each step)" if kind == "heads" else ""))
    ax.set_ylabel(label)
    ax.invert_xaxis()
    ax.set_title(f"Pruning to {config['KEEP_FRACTION']:g} of the full score (circles: tickets; dotted: thresholds)",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(out: Path, config: dict) -> str:
    """lottery.md, lottery_HEADLINE.png (the headline score: lottery_accuracy.png for SST-2) and
    lottery_stability.png in `out`, from the runs that finished. Raises `pruning.studies.sweep_tables.MixedTasks` for
    runs of several tasks."""
    config = {"PROCEDURE": "early_bird", **config}  # settings recorded before PROCEDURE existed
    found = collect(out)
    stab = stability(found)
    extra, summary = fraction_report(out, config, found) if config["PROCEDURE"] == "to_fraction" else ([], None)
    early = summary is None  # the early-bird study's stability sections
    seconds = sum(r.train_seconds or 0 for group in (found["dense"], *found["eb"].values(),
                                                           *found["ticket"].values()) for r in group.values())
    n_runs = len(found["dense"]) + sum(len(g) for g in found["eb"].values()) + sum(len(g) for g in found["ticket"].values())
    source = config["CRITERION"] if config["PROCEDURE"] == "early_bird" else f"to {config['KEEP_FRACTION']:g} of the full score"
    text = "\n".join([f"# Lottery tickets: {source}, {config['GRANULARITY']}, "
                      f"{schema.dev_metric_label(found['task'])}", "",
                      f"{n_runs} runs; their training (`trainer.train()`) took {seconds / 60:.1f} min in all; "
                      "start-up and final evaluations come on top.", "",
                      *score_markdown(found, config), "", *paired_markdown(found), "",
                      *(stability_markdown(stab, config["CRITERION"]) if early else []), "",
                      f"![score](lottery_{found['task'].headline}.png)", "",
                      *(["![stability](lottery_stability.png)", ""] if early else []), *extra, ""])
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "lottery.md.tmp"
    tmp.write_text(text)
    tmp.replace(out / "lottery.md")
    if any(found["ticket"].values()) or found["dense"]:
        plot_score(found, out / f"lottery_{found['task'].headline}.png")
    if stab["seeds"] or stab["criteria"]:
        plot_stability(stab, out / "lottery_stability.png")
    if summary is not None:
        schema.write_json(out / "lottery_fraction.json", summary)
    return text


def _cell(values: list) -> str:
    values = [v for v in values if v is not None]
    return f"{stats.mean_std(values)} ({len(values)})" if values else "–"


if __name__ == "__main__":
    main(sys.argv[1:])
