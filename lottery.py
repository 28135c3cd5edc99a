"""The lottery-ticket study (Prasanna et al., EMNLP 2020) on early-bird tickets.

    python lottery.py --train_subset=16000           # MiniLM, heads+neurons, magnitude (and gradient), 3 seeds
    python lottery.py --granularity=weights --pruning_rate=0.5 --out_dir=sweeps/lottery-weights
    python lottery.py --model=bert-base-uncased      # BERT-base (Hub) on all of SST-2: a bigger machine

For every seed:
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

Each training is one run of SCRIPT in its own process (`pruning.cells`): a finished run is skipped
and a killed one resumes, so the study can be stopped and re-run at any time. Any --key=value that
is not a study setting below goes to every run (see `python bert.py --help`).
"""
from __future__ import annotations

import re
import statistics
import sys
from pathlib import Path

import numpy as np

from pruning import experiment, stats, tables, tickets
from pruning import grid as study_grid  # (`grid` names the survival arrays below)
from pruning.cells import check_cells
from pruning.config import REWIND_POINTS
from pruning.schema import RunResults, SchemaError
from pruning.state import read_run_masks

SCRIPT = "bert.py"                  # the experiment every run uses
CRITERION = "magnitude"             # the criterion of the good mask, from which random and bad tickets are built
COMPARE_WITH = "gradient"           # more criteria whose masks are drawn only to compare kept sets; "" = none
GRANULARITY = "heads+neurons"       # or "weights" (unstructured; set --pruning_rate)
SEEDS = "42,43,44"                  # one good mask, random ticket and training per seed (>= 3 for a paired test worth reading)
TICKETS = "good,random,bad"         # the tickets trained
REWINDS = "pretrained,early_bird"   # where a ticket's training starts: the pretrained weights, or the early-bird weights
EPOCHS = 1.0                        # training budget of every ticket and of the dense reference
OUT_DIR = "sweeps/lottery"          # one sub-directory per run, tickets/, lottery.md and the plots
SETTINGS = ("SCRIPT", "CRITERION", "COMPARE_WITH", "GRANULARITY", "SEEDS", "TICKETS", "REWINDS", "EPOCHS", "OUT_DIR")
# What the study sets for every run itself: passing them would break its design.
STUDY_OWNS = {"--seed": "--seeds", "--trainer": "--criterion", "--mask_from": "--tickets", "--rewind_to": "--rewinds",
              "--save_eb_weights": None, "--run_name": None, "--resume": None}


def settings(argv: list[str] | None = None) -> tuple[dict, list[str]]:
    """The study's settings and the arguments for every run, checked before any training."""
    config, passed_on, script = experiment.grid_settings(globals(), SETTINGS, argv, owned=STUDY_OWNS)
    split = {k: [t.strip() for t in config[k].split(",") if t.strip()]
             for k in ("COMPARE_WITH", "SEEDS", "TICKETS", "REWINDS")}
    known = experiment.trainers()
    for name in [config["CRITERION"], *split["COMPARE_WITH"]]:
        if name not in known or name == "dense":
            raise experiment.ConfigError(f"unknown pruning criterion {name!r}; choose from "
                                         f"{', '.join(n for n in known if n != 'dense')}")
    study_grid.check_granularity(config["GRANULARITY"])
    for key, allowed in (("TICKETS", tickets.KINDS), ("REWINDS", REWIND_POINTS)):
        wrong = [t for t in split[key] if t not in allowed] or ([] if split[key] else ["(none)"])
        if wrong:
            raise experiment.ConfigError(f"--{key.lower()}: {', '.join(wrong)} not understood; give some of "
                                         f"{', '.join(allowed)}, comma-separated")
    seeds = study_grid.seeds(config["SEEDS"])
    if not config["EPOCHS"] > 0:
        raise experiment.ConfigError(f"EPOCHS must be > 0, got {config['EPOCHS']}")
    config.update(split, SEEDS=seeds)
    for _, args, ticket in runs(config, passed_on, seeds[:1]):  # each kind of run's whole configuration
        if ticket is None:  # (a ticket's directory only exists once its source run has finished)
            experiment.validate(experiment.configure(script, args))
    return config, passed_on


def runs(config: dict, passed_on: list[str], seeds: list[int] | None = None):
    """(name, arguments, ticket) of every run, seed by seed in the order they run: the early-bird
    searches, the dense reference, then each ticket ((seed, kind); None for the others) from each
    starting point."""
    budget = [f"--search_epochs={config['EPOCHS']}", "--retrain_epochs=0"]  # a fixed mask trains search + retrain
    granularity = f"--granularity={config['GRANULARITY']}"
    for seed in seeds or config["SEEDS"]:
        for trainer in [config["CRITERION"], *config["COMPARE_WITH"]]:
            yield f"eb-{trainer}-s{seed}", ["--measure_speed=false", *passed_on, f"--trainer={trainer}",
                                            f"--seed={seed}", granularity, "--save_eb_weights=true"], None
        yield f"dense-s{seed}", ["--measure_speed=false", *passed_on, "--trainer=dense", f"--seed={seed}",
                                 *budget], None
        for kind in config["TICKETS"]:
            for rewind in config["REWINDS"]:
                yield f"{kind}-{rewind}-s{seed}", [
                    "--measure_speed=false", *passed_on, f"--trainer={config['CRITERION']}", f"--seed={seed}",
                    granularity, f"--mask_from={ticket_dir(config, seed, kind)}", f"--rewind_to={rewind}",
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
    except experiment.ConfigError as e:
        experiment.fail(e)
    out = Path(config["OUT_DIR"])
    ticket_of = {name: ticket for name, _, ticket in plan}

    def write_ticket(name: str, failed: list[str]) -> bool:  # a ticket's masks, once its early-bird run is done
        if ticket_of[name] is None:
            return True
        seed, kind = ticket_of[name]
        source = out / f"eb-{config['CRITERION']}-s{seed}"
        if source.name in failed:
            return False
        tickets.write_tickets(source, ticket_dir(config, seed, kind).parent, seed, config["TICKETS"])
        return True
    failed = study_grid.run_cells(config["SCRIPT"], out, [(name, args) for name, args, _ in plan], "lottery",
                                  write_ticket)
    try:
        write(out, config)
    except (SchemaError, tables.MixedTasks) as e:  # runs put into OUT_DIR by hand: no report
        study_grid.finish(failed)
        experiment.fail(e)
    study_grid.finish(failed)


# --- the report ----------------------------------------------------------------------------------
NAME = re.compile(r"^(?:(?P<kind>good|random|bad)-(?P<rewind>pretrained|early_bird)|eb-(?P<trainer>.+)|dense)"
                  r"-s(?P<seed>\d+)$")


def collect(out: Path) -> dict:
    """The study's finished runs by role: dense[seed], eb[trainer][seed], ticket[(kind, rewind)][seed],
    and their task (a `pruning.schema.TaskInfo`). Raises `pruning.tables.MixedTasks` for runs of several
    tasks (`tables.load`)."""
    results = tables.load(out)
    found = {"dense": {}, "eb": {}, "ticket": {}, "task": tables.task_of(results)}
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
    dense, label = found["dense"], tables.dev_metric_label(found["task"])
    lines = [f"{label}, mean ± std over seeds (n). Every ticket and the dense reference trained "
             f"{config['EPOCHS']:g} epoch(s); \"before training\": the masked starting weights, not trained.", "",
             "| ticket | from the pretrained weights | from the early-bird weights | early-bird weights, before "
             "training |", "|---|---|---|---|"]
    lines.append(f"| dense (no mask) | {_cell([score(r) for r in dense.values()])} | – | – |")
    for kind in tickets.KINDS:
        pre, eb = found["ticket"].get((kind, "pretrained"), {}), found["ticket"].get((kind, "early_bird"), {})
        if pre or eb:
            lines.append(f"| {kind} | {_cell([score(r) for r in pre.values()])} | "
                         f"{_cell([score(r) for r in eb.values()])} | "
                         f"{_cell([score(r, 'after_prune') for r in eb.values()])} |")
    lines += ["", "The early-bird pipeline itself (search, prune, retrain with the mask; its own budget):", "",
              f"| criterion | final {tables.metric_title(found['task'])} | early bird at step | parameters kept "
              "(without embeddings) |",
              "|---|---|---|---|"]
    for trainer, by_seed in sorted(found["eb"].items()):
        runs_ = list(by_seed.values())
        kept = [r.parameters.kept_without_embeddings() for r in runs_]
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
    lines = [f"Paired by seed (the same data order and dropout): the difference in {tables.dev_metric_label(task)} "
             "(mean ± std over seeds) and the paired t-test over seeds (training noise; with 3 seeds only large "
             f"differences reach p < 0.05); {mcnemar}; and a bootstrap over the dev examples of the mean "
             f"difference in {tables.metric_title(task)} (95% interval, p): how much it rests on which examples "
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
    """Overlap of the early-bird masks between seeds (each criterion) and between criteria (each seed)."""
    masks = {(t, seed): read_run_masks(r.run_dir)[0] for t, by_seed in found["eb"].items()
             for seed, r in by_seed.items()}
    seeds_rows, criteria_rows = [], []
    for t in sorted({t for t, _ in masks}):
        rows = tickets.pairwise_overlaps({s: m for (tt, s), m in masks.items() if tt == t})
        seeds_rows += [{**row, "criterion": t} for row in rows]
    for seed in sorted({s for _, s in masks}):
        rows = tickets.pairwise_overlaps({t: m for (t, s), m in masks.items() if s == seed})
        criteria_rows += [{**row, "seed": seed} for row in rows]
    survival = {}
    for t in sorted({t for t, _ in masks}):
        structured = [m for (tt, _), m in sorted(masks.items()) if tt == t and tickets.split_kind(m, "heads")]
        if structured:
            survival[t] = tickets.head_survival(structured)
    return {"seeds": seeds_rows, "criteria": criteria_rows, "survival": survival,
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
    lines = [f"Per layer (mean over pairs; between seeds: {criterion}), Jaccard / chance:", "",
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
    ax.set_ylabel(tables.dev_metric_label(found["task"]))
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


def write(out: Path, config: dict) -> str:
    """lottery.md, lottery_HEADLINE.png (the headline score: lottery_accuracy.png for SST-2) and
    lottery_stability.png in `out`, from the runs that finished. Raises `pruning.tables.MixedTasks` for
    runs of several tasks."""
    found = collect(out)
    stab = stability(found)
    seconds = sum(r.train_seconds or 0 for group in (found["dense"], *found["eb"].values(),
                                                           *found["ticket"].values()) for r in group.values())
    n_runs = len(found["dense"]) + sum(len(g) for g in found["eb"].values()) + sum(len(g) for g in found["ticket"].values())
    text = "\n".join([f"# Lottery tickets: {config['CRITERION']}, {config['GRANULARITY']}, "
                      f"{tables.dev_metric_label(found['task'])}", "",
                      f"{n_runs} runs; their training (`trainer.train()`) took {seconds / 60:.1f} min in all; "
                      "start-up and final evaluations come on top.", "",
                      *score_markdown(found, config), "", *paired_markdown(found), "",
                      *stability_markdown(stab, config["CRITERION"]), "",
                      f"![score](lottery_{found['task'].headline}.png)", "", "![stability](lottery_stability.png)", ""])
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "lottery.md.tmp"
    tmp.write_text(text)
    tmp.replace(out / "lottery.md")
    if any(found["ticket"].values()) or found["dense"]:
        plot_score(found, out / f"lottery_{found['task'].headline}.png")
    if stab["seeds"] or stab["criteria"]:
        plot_stability(stab, out / "lottery_stability.png")
    return text


def _cell(values: list) -> str:
    values = [v for v in values if v is not None]
    return f"{stats.mean_std(values)} ({len(values)})" if values else "–"


if __name__ == "__main__":
    main(sys.argv[1:])
