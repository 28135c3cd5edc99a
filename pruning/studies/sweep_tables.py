"""The tables of a sweep directory (results.csv, results.md), read off its runs' results.json;
`write` also draws the plots (`pruning.studies.sweep_plots`). report.py and sweep.py call `write`.

One row per unstructured run, mean ± std over seeds with paired tests against the dense run of the
same seed (and of each variant against the one-shot run), the targets B1-B3. Heads + neurons runs get
their own tables: what each kept and scored, mean ± std over seeds with the training FLOPs to the end
of the run, and how much the criteria agree on which units to keep. The statistics are `pruning.studies.stats`.

Every score is the task's headline metric (`RunResults.score`: SST-2 accuracy, CoLA Matthews
correlation, STS-B Pearson r, ...), and every column and axis names it (`metric_title`,
`dev_metric_label`); the task's other metrics (and MNLI's mismatched dev set) get columns of their
own. A sweep directory holds one task's runs: `load` refuses a directory that mixes tasks
(`MixedTasks`, naming them), since a mean, a paired test or a target over two tasks' runs means nothing,
and sweep.py never writes two tasks into one OUT_DIR (a cell made with another TASK is refused).
"""
from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from pathlib import Path

from pruning.core.masks import overlap
from pruning.data.tasks import CUSTOM, METRIC_TITLES
from pruning.run import checkpoint as state_io
from pruning.run.callbacks import stopping_evaluation
from pruning.run.schema import FILE as RESULTS_FILE, RunResults, TaskInfo, dev_metric_label, metric_title, read as read_results
from pruning.settings import rate_text
from pruning.studies import sweep_plots
from pruning.studies.stats import dev_outputs, fmt, mean_std, paired_cells
from pruning.studies.tickets import split_kind

# results.csv; "score_*" are the headline metric's, renamed after it in the file (`csv_columns`).
COLUMNS = ["run", "trainer", "variant", "rate", "seed", "sparsity", "score_before_prune", "score_after_prune",
           "score_final", "eb_found", "eb_step", "eb_fraction_of_dense_steps", "optimizer_steps",
           "search_s", "prune_s", "retrain_s", "total_s", "time_vs_dense", "search_retrain_s",
           "dense_s_to_same_score", "b3_ratio", "peak_rss_mb",
           "prunable_nonzero", "prunable_params", "train_pflos", "inference_gflops_dense",
           "inference_gflops_nonzero", "dev_sentences_per_s"]


class MixedTasks(ValueError):
    """A sweep directory holding runs of more than one task."""


def task_key(r: RunResults) -> str:
    """What says two runs are of the same task: its title, and for a custom task also its data."""
    return r.task.title if r.task.name != CUSTOM else f"{r.task.title} ({r.data or r.config.data_dir})"


def load(out: Path) -> list[RunResults]:
    """Every finished run under a sweep directory: the out/*/results.json, by directory name
    (`pruning.run.schema.read`: a file of a newer schema version is a SchemaError naming it). Raises
    MixedTasks (a ValueError) naming each task found and its runs when they are of more than one task."""
    results = [read_results(p) for p in sorted(out.glob(f"*/{RESULTS_FILE}"))]
    by_task = defaultdict(list)
    for r in results:
        by_task[task_key(r)].append(Path(r.source).parent.name)
    if len(by_task) > 1:
        found = "; ".join(f"{task}: {', '.join(runs)}" for task, runs in sorted(by_task.items()))
        raise MixedTasks(f"{out} holds runs of {len(by_task)} tasks ({found}); a table pools one task's runs: "
                         "move each task's runs into a directory of its own and report each")
    return results


def task_of(results: list[RunResults]) -> TaskInfo:
    """The task of `load`ed runs (one task); SST-2 when there are none."""
    return results[0].task if results else TaskInfo()


def extra_scores(task: TaskInfo) -> list[tuple[str, str | None]]:
    """(metric, dev set) of the final figures reported beside the headline: the task's other metrics on
    its first dev set (None), then the headline on each other dev set (MNLI: "mismatched")."""
    return [(m, None) for m in task.metrics[1:]] + [(task.headline, d) for d in task.dev_sets[1:]]


def extra_name(metric: str, dev_set: str | None) -> str:
    """An `extra_scores` figure's key in a row and column in results.csv: "f1_final", "accuracy_final_mismatched"."""
    return f"{metric}_final" + (f"_{dev_set}" if dev_set else "")


def extra_title(metric: str, dev_set: str | None) -> str:
    """An `extra_scores` figure's column header in results.md: "F1 final", "accuracy final (mismatched)"."""
    return f"{METRIC_TITLES.get(metric, metric)} final" + (f" ({dev_set})" if dev_set else "")


def csv_columns(task: TaskInfo) -> tuple[list[str], dict[str, str]]:
    """results.csv's header for the task and the row keys renamed in it: the "score_*" columns named
    after the headline ("accuracy_final", "matthews_correlation_final"), the `extra_scores` after them."""
    renamed = {f"score_{stage}": f"{task.headline}_{stage}" for stage in ("before_prune", "after_prune", "final")}
    columns = [renamed.get(c, c) for c in COLUMNS]
    at = columns.index(renamed["score_final"]) + 1
    return columns[:at] + [extra_name(*e) for e in extra_scores(task)] + columns[at:], renamed


def rows_of(results: list[RunResults]) -> list[dict]:
    """One table row per run (dicts, sorted dense first, then by trainer, variant, rate, seed), each
    compared with the dense run of its seed: "score_*" the headline metric by stage (a fraction, or a
    correlation), the `extra_scores` by `extra_name`, "dev" the dev outputs (`pruning.studies.stats.dev_outputs`),
    times in seconds, training in PFLOs (HF's total_flos / 1e15), inference in GFLOPs, peak RSS in MB."""
    dense = {r.config.seed: r for r in results if r.trainer == "dense"}
    rows = []
    for r in results:
        seed, p, m, cost = r.config.seed, r.pruning, r.metrics, r.cost
        base = dense.get(seed)
        total = training_seconds(r)
        rows.append({
            "run": Path(r.run_dir or "").name or f"{r.trainer}-{seed}", "trainer": r.trainer,
            "variant": variant_of(r), "dev": dev_outputs(r),
            "rate": p.rate if p else 0.0, "seed": seed, "sparsity": r.sparsity,
            "score_before_prune": r.score("before_prune"), "score_after_prune": r.score("after_prune"),
            "score_final": r.score(),
            **{extra_name(e, d): m.final.on(d).value(e) for e, d in extra_scores(r.task)},
            "eb_found": p.eb_found if p else None, "eb_step": p.eb_step if p else None,
            "eb_fraction_of_dense_steps": (p.eb_step / base.optimizer_steps
                                           if base and p and p.eb_step is not None else None),
            "optimizer_steps": r.optimizer_steps,
            "search_s": r.phase_seconds.get("search"), "prune_s": r.phase_seconds.get("prune"),
            "retrain_s": r.phase_seconds.get("retrain"), "total_s": total,
            "time_vs_dense": total / training_seconds(base) if base else None,
            **b3_figures(r, base),
            "peak_rss_mb": r.peak_rss_mb, "prunable_nonzero": r.prunable_nonzero,
            "prunable_params": r.prunable_params, "train_pflos": (cost.train_flos or 0) / 1e15,
            "inference_gflops_dense": (cost.inference_flops_dense or 0) / 1e9,
            "inference_gflops_nonzero": (cost.inference_flops_nonzero or 0) / 1e9,
            "dev_sentences_per_s": cost.dev_sentences_per_second,
        })
    return sorted(rows, key=lambda x: (x["trainer"] != "dense", x["trainer"], x["variant"], x["rate"], x["seed"]))


def variant_of(r: RunResults) -> str:
    """How a pruning run kept its accuracy: "plain", or distillation ("kd") and/or a gradual schedule."""
    config = r.config
    parts = ["kd"] if config.teacher else []
    if config.gradual_updates:
        parts.append(f"gradual×{config.gradual_updates}" + ("+rewarm" if config.gradual_rewarm else ""))
    return " + ".join(parts) or "plain"


def training_seconds(r: RunResults) -> float:
    """Wall seconds of training, without the dense run's periodic dev evaluations (which only
    draw its accuracy timeline); a pruned run's two evaluations at pruning stay in its prune phase."""
    if r.pruning is None and r.accuracy_timeline:
        return r.accuracy_timeline[-1].train_seconds
    return sum(r.phase_seconds.values())


def b3_figures(r: RunResults, dense: RunResults | None) -> dict:
    """Search + retrain seconds against the training seconds the dense run needed to first reach this
    run's final headline score (from its evaluations during training, evaluation time left out)."""
    if not r.pruning or not dense:
        return {"search_retrain_s": None, "dense_s_to_same_score": None, "b3_ratio": None}
    spent = r.phase_seconds["search"] + r.phase_seconds["retrain"]
    target = r.score()
    reached = [p.train_seconds for p in dense.accuracy_timeline if p.value() is not None and p.value() >= target]
    dense_s = reached[0] if reached else None
    return {"search_retrain_s": spent, "dense_s_to_same_score": dense_s,
            "b3_ratio": spent / dense_s if dense_s else None}


def markdown(rows: list[dict], task: TaskInfo) -> str:
    """The runs table of report.md from `rows_of` rows of `task`'s runs, one Markdown line per row ("–":
    nothing to show); every score is the headline metric, named in the headers."""
    t, extras = metric_title(task), extra_scores(task)
    lines = [f"| trainer | rate | seed | sparsity | {t} before prune | {t} after prune | {t} final | "
             + "".join(f"{extra_title(*e)} | " for e in extras)
             + f"EB step | EB / dense steps | steps | search s | prune s | retrain s | total s | time vs dense | "
             f"dense s to same {t} | B3: (search+retrain) / that | "
             "peak RSS MB | nonzero prunable | train PFLOs | infer GFLOPs dense / nonzero | dev sent/s |",
             "|" + "---|" * (22 + len(extras))]
    for r in rows:
        lines.append("| " + " | ".join([
            r["trainer"] + ("" if r["variant"] == "plain" else f" ({r['variant']})"), fmt(r["rate"], 1), str(r["seed"]),
            fmt(r["sparsity"]), fmt(r["score_before_prune"]), fmt(r["score_after_prune"]), fmt(r["score_final"]),
            *(fmt(r[extra_name(*e)]) for e in extras),
            fmt(r["eb_step"]) + ("" if r["eb_found"] in (True, None) else " (none)"),
            fmt(r["eb_fraction_of_dense_steps"], 3), str(r["optimizer_steps"]), fmt(r["search_s"], 0),
            fmt(r["prune_s"], 0), fmt(r["retrain_s"], 0), fmt(r["total_s"], 0), fmt(r["time_vs_dense"], 2),
            (fmt(r["dense_s_to_same_score"], 0) if r["dense_s_to_same_score"] is not None else
             ("never" if r["search_retrain_s"] is not None else "–")), fmt(r["b3_ratio"], 2),
            fmt(r["peak_rss_mb"], 0), f"{r['prunable_nonzero']:,} / {r['prunable_params']:,}",
            fmt(r["train_pflos"], 3), f"{r['inference_gflops_dense']:.1f} / {r['inference_gflops_nonzero']:.1f}",
            fmt(r["dev_sentences_per_s"], 0)]) + " |")
    groups = defaultdict(list)
    for r in rows:
        groups[(r["trainer"], r["variant"], r["rate"])].append(r)
    if any(len(g) > 1 for g in groups.values()):
        dense = {r["seed"]: r for r in rows if r["trainer"] == "dense"}
        lines += ["", f"Mean ± std over seeds; paired by seed with the dense run: the difference in {t}, the t-test "
                  "over seeds and a bootstrap over the dev examples (from the runs' dev predictions):", "",
                  f"| trainer | variant | rate | seeds | {t} after prune | {t} final | "
                  + "".join(f"{extra_title(*e)} | " for e in extras) + "− dense | p (paired t) | p (bootstrap) |",
                  "|" + "---|" * (10 + len(extras))]
        for (trainer, variant, rate), g in groups.items():
            lines.append(f"| {trainer} | {variant} | {rate:g} | {len(g)} | {mean_std([r['score_after_prune'] for r in g])} | "
                         f"{mean_std([r['score_final'] for r in g])} | "
                         + "".join(f"{mean_std([r[extra_name(*e)] for r in g])} | " for e in extras)
                         + " | ".join(_paired(g, dense if trainer != "dense" else {}, task.headline)) + " |")
        plain = {(trainer, rate): {r["seed"]: r for r in g} for (trainer, variant, rate), g in groups.items()
                 if variant == "plain"}
        ablation = [(key, g) for key, g in groups.items() if key[1] != "plain" and (key[0], key[2]) in plain]
        if ablation:  # what distillation or the gradual schedule adds to the one-shot run of the same seed
            lines += ["", "Each variant against the one-shot (plain) run of the same trainer, rate and seed:", "",
                      f"| trainer | variant | rate | seeds | {t} final | − plain | p (paired t) | p (bootstrap) |",
                      "|---|---|---|---|---|---|---|---|"]
            for (trainer, variant, rate), g in ablation:
                lines.append(f"| {trainer} | {variant} | {rate:g} | {len(g)} | {mean_std([r['score_final'] for r in g])} | "
                             + " | ".join(_paired(g, plain[(trainer, rate)], task.headline)) + " |")
    return "\n".join(lines) + "\n"


def _paired(runs: list[dict], reference: dict, metric: str) -> tuple[str, str, str]:
    """The runs against the reference run of the same seed in the headline `metric`: the difference
    (mean ± std), the paired t-test over seeds and a bootstrap over the dev examples."""
    paired = [r for r in runs if r["seed"] in reference]
    if not paired:
        return "–", "–", "–"
    cells = paired_cells([r["score_final"] for r in paired], [reference[r["seed"]]["score_final"] for r in paired],
                         [r["dev"] for r in paired], [reference[r["seed"]]["dev"] for r in paired], metric)
    return cells["difference"], cells["t"], cells["bootstrap"]


B1_ALLOWED_DROP = {0.5: 0.005, 0.7: 0.010, 0.9: 0.025}  # headline score the best criterion may lose vs dense (0.01 = 1 point)


def targets(rows: list[dict], task: TaskInfo) -> str:
    """B1-B3 read off the rows (means over seeds) of `task`'s runs, each as met or missed with its figure.
    B1 and B3 are in the task's headline metric; a point is 0.01 of it (GLUE reports every metric × 100)."""
    dense = [r["score_final"] for r in rows if r["trainer"] == "dense"]
    if not dense:
        return ""
    t = metric_title(task)
    dense_score = statistics.mean(dense)
    pruned = [r for r in rows if r["trainer"] != "dense"]
    lines = [f"Targets in dev {t} (the headline metric of {task.title}); a point is 0.01 of {t}.", "",
             "| target | figure | verdict |", "|---|---|---|"]
    for rate, allowed in B1_ALLOWED_DROP.items():
        by_c = defaultdict(list)
        for r in pruned:
            if abs(r["rate"] - rate) < 1e-9:
                by_c[r["trainer"] + ("" if r["variant"] == "plain" else f" ({r['variant']})")].append(r["score_final"])
        if not by_c:
            continue
        best, scores = max(by_c.items(), key=lambda kv: statistics.mean(kv[1]))
        drop = dense_score - statistics.mean(scores)
        lines.append(f"| B1 {t} kept at {rate:.0%} sparsity (≤ {100 * allowed:.1f} points under dense) | "
                     f"best: {best} {statistics.mean(scores):.4f} vs dense {dense_score:.4f}: {100 * drop:+.2f} points "
                     f"under | {'met' if drop <= allowed else 'missed'} |")
    fractions = [r["eb_fraction_of_dense_steps"] for r in pruned if r["eb_fraction_of_dense_steps"] is not None]
    not_found = sum(1 for r in pruned if r["eb_found"] is False)
    if pruned:
        worst = max(fractions) if fractions else None
        lines.append(f"| B2 early bird within 20% of the dense run's steps | found in {len(fractions)} of {len(pruned)} "
                     f"runs, at {fmt(min(fractions) if fractions else None, 3)}–{fmt(worst, 3)} of the dense steps"
                     f"{f'; {not_found} not found' if not_found else ''} | "
                     f"{'met' if not not_found and worst is not None and worst <= 0.2 else 'missed'} |")
    ratios = [r["b3_ratio"] for r in pruned if r["b3_ratio"] is not None]
    never = sum(1 for r in pruned if r["search_retrain_s"] is not None and r["dense_s_to_same_score"] is None)
    if pruned:
        lines.append(f"| B3 (search + retrain) / dense time to the same {t} ≤ 0.6 | "
                     f"{fmt(min(ratios) if ratios else None, 2)}–{fmt(max(ratios) if ratios else None, 2)} over "
                     f"{len(ratios)} runs{f'; {never} runs beat every dense evaluation' if never else ''} | "
                     f"{'met' if ratios and max(ratios) <= 0.6 else 'missed' if ratios else 'n/a'} |")
    return "\n".join(lines) + "\n"


def structured_markdown(results: list[RunResults]) -> str:
    """heads+neurons runs (of one task), each beside the dense run of its seed: what was kept, what it
    costs, what it scores (the headline metric); then mean ± std over seeds per criterion, with the paired
    difference to dense."""
    t = metric_title(task_of(results))
    dense = {r.config.seed: r for r in results if r.trainer == "dense"}
    runs = sorted((r for r in results if r.pruning and r.pruning.structure),
                  key=lambda r: (r.trainer, r.config.seed))
    if not runs:
        return ""
    def setting(r):
        p = r.pruning
        fixed = f", fixed mask from {Path(p.fixed_mask_from).name}" if p.fixed_mask_from else ""
        return f"heads {rate_text(p.head_rate)}, neurons {rate_text(p.neuron_rate)}{fixed}"

    lines = ["| trainer | setting | seed | EB step | heads kept | FFN neurons kept | params (all / w/o embeddings) vs dense | "
             f"{t} after prune | {t} final | dense {t} (same seed) | search s | retrain s | retrain step / search "
             "step (in run) | train-step speed-up (probe) | inference × at batch 1 / 64 | B3 |",
             "|" + "---|" * 16]
    for r in runs:
        p, seed = r.pruning, r.config.seed
        s, par, speed, base = p.structure, r.parameters, r.speed, dense.get(seed)
        steps = p.step_seconds or {}
        b3 = b3_figures(r, base)["b3_ratio"]
        lines.append("| " + " | ".join([
            r.trainer, setting(r), str(seed),
            fmt(p.eb_step) if p.eb_found else ("fixed" if p.fixed_mask_from else f"none ({p.prune_step})"),
            f"{sum(s.heads_kept_per_layer)} / {sum(s.heads_total_per_layer)}",
            f"{sum(s.neurons_kept_per_layer):,} / {sum(s.neurons_total_per_layer):,}",
            f"{par.final.total / par.dense.total:.3f} / {par.kept_without_embeddings():.3f}",
            fmt(r.score("after_prune")), fmt(r.score()), fmt(base.score()) if base else "–",
            fmt(r.phase_seconds["search"], 0), fmt(r.phase_seconds["retrain"], 0),
            fmt(steps["retrain"] / steps["search"], 2) if steps else "–",
            fmt(speed.train_step_speedup if speed else None, 2),
            f"{speed.batch1_ratio:.2f} / {speed.batch64_ratio:.2f}" if speed else "–",
            fmt(b3, 2)]) + " |")
    lines += ["", f"| trainer | setting | seeds | {t} final | dense {t} | paired difference (pruned − dense) | p (paired t) | "
              "training PFLOPs to the end | vs dense | early-stopped |", "|---|---|---|---|---|---|---|---|---|---|"]
    for trainer, label in sorted({(r.trainer, setting(r)) for r in runs}):
        group = [r for r in runs if (r.trainer, setting(r)) == (trainer, label) and r.config.seed in dense]
        if not group:
            continue
        score = [r.score() for r in group]
        base = [dense[r.config.seed].score() for r in group]
        flops = [training_flops(r) for r in group]
        dense_flops = [training_flops(dense[r.config.seed]) for r in group]
        ratio = [f / d for f, d in zip(flops, dense_flops) if f and d]
        stopped = [r.config.seed for r in group if r.early_stopping and r.early_stopping.stopped]
        paired = paired_cells(score, base)
        lines.append(f"| {trainer} | {label} | {', '.join(str(r.config.seed) for r in group)} | "
                     f"{mean_std(score)} | {mean_std(base)} | {paired['difference']} | "
                     f"{paired['t']} | {mean_std([f / 1e15 if f else None for f in flops])} | "
                     f"{mean_std(ratio) if ratio else '–'} | "
                     f"{', '.join(map(str, stopped)) if stopped else 'none'} |")
    lines += [""] + criteria_compared(runs)
    agreement = overlap_markdown(runs)
    return "\n".join(lines) + "\n" + ("\n" + agreement if agreement else "")


def criteria_compared(runs: list[RunResults]) -> list[str]:
    """Every two criteria at the same rates, paired by seed: the difference in the headline metric and
    the paired t-test."""
    score = defaultdict(dict)
    for r in runs:
        if not r.pruning.fixed_mask_from:
            p = r.pruning
            score[(rate_text(p.head_rate), rate_text(p.neuron_rate))].setdefault(r.trainer, {})[
                r.config.seed] = r.score()
    lines = ["| criteria (A / B) | rates (heads, neurons) | seeds | A − B | p (paired t) |", "|---|---|---|---|---|"]
    for rates, by_trainer in sorted(score.items()):
        names = sorted(by_trainer)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                seeds = sorted(set(by_trainer[a]) & set(by_trainer[b]))
                if len(seeds) < 2:
                    continue
                paired = paired_cells([by_trainer[a][s] for s in seeds], [by_trainer[b][s] for s in seeds])
                lines.append(f"| {a} / {b} | {rates[0]}, {rates[1]} | {len(seeds)} | "
                             f"{paired['difference']} | {paired['t']} |")
    return lines if len(lines) > 2 else []


def early_stopping_replay(results: list[RunResults], patiences=(2, 3)) -> str:
    """Where early stopping on dev loss would have stopped runs that trained their whole budget with
    evaluations: EarlyStopping changes nothing before it stops, so a run with EARLY_STOPPING_PATIENCE=P is
    this run up to the stop step, and its final model is the one evaluated there. Read off each run's log:
    the stop step, the headline score there and the training FLOPs spent by then (mean over seeds)."""
    t = metric_title(task_of(results))
    rows = defaultdict(list)
    for r in results:
        if (r.early_stopping and r.early_stopping.stopped) or not r.cost_series:
            continue
        prune_step = r.pruning.prune_step if r.pruning else None
        after = prune_step if prune_step is not None else -1
        end = r.optimizer_steps
        evals = [e for e in r.log_history if "eval_loss" in e and after < e["step"] and "train_flops" in e]
        if not evals:
            continue
        full = training_flops(r)
        for patience in patiences:
            at = stopping_evaluation([e["eval_loss"] for e in evals], patience)
            stop = evals[at] if at is not None else None
            rows[(r.trainer, patience)].append({
                "step": stop["step"] if stop else end,
                "score": stop[f"eval_{r.headline}"] if stop else r.score(),
                "full_score": r.score(),
                "flops": (stop["train_flops"] if stop else full) / full})
    if not rows:
        return ""
    lines = ["Early stopping on dev loss, read off the runs' evaluations (a run stopped with this patience is the "
             "same run up to its stop; see `pruning.studies.sweep_tables.early_stopping_replay`):", "",
             f"| trainer | patience (evaluations) | runs | stop step | {t} at stop | {t} at the end of the budget | "
             "training FLOPs at stop / full budget |", "|---|---|---|---|---|---|---|"]
    for (trainer, patience), g in sorted(rows.items(), key=lambda kv: (kv[0][0] != "dense", kv[0])):
        lines.append(f"| {trainer} | {patience} | {len(g)} | {', '.join(str(x['step']) for x in g)} | "
                     f"{mean_std([x['score'] for x in g])} | {mean_std([x['full_score'] for x in g])} | "
                     f"{mean_std([x['flops'] for x in g])} |")
    return "\n".join(lines) + "\n"


def training_flops(r: RunResults) -> float | None:
    """Training FLOPs to the end of the run, as CostLog counted them (None for runs from before it)."""
    if r.cost.train_flops is not None:
        return r.cost.train_flops
    return r.cost_series[-1].train_flops if r.cost_series else None


def kept_units(run: RunResults) -> dict[str, dict]:
    """A heads+neurons run's final keep-masks, split into heads and neurons."""
    masks = state_io.read_run_masks(run.run_dir)[0]
    return {kind: split_kind(masks, kind) for kind in ("heads", "neurons")}


def overlap_markdown(runs: list[RunResults]) -> str:
    """Jaccard index of the kept heads and kept neurons between every two criteria, per seed (mean ± std),
    beside the index of random choices with the same per-layer counts."""
    by_key = defaultdict(dict)
    for r in runs:
        if not r.pruning.fixed_mask_from and Path(r.run_dir, state_io.MASKS_FILE).exists():
            p = r.pruning
            by_key[(r.config.seed, rate_text(p.head_rate), rate_text(p.neuron_rate))][r.trainer] = r
    pairs = defaultdict(lambda: {"heads": [], "neurons": [], "chance_heads": [], "chance_neurons": []})
    for group in by_key.values():
        names = sorted(group)
        masks = {n: kept_units(group[n]) for n in names}
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                for kind in ("heads", "neurons"):
                    o = overlap(masks[a][kind], masks[b][kind])
                    pairs[(a, b)][kind].append(o["jaccard"])
                    pairs[(a, b)][f"chance_{kind}"].append(o["chance_jaccard"])
    if not pairs:
        return ""
    lines = ["Which units the criteria keep: Jaccard index of the kept sets between two criteria on the same seed "
             "(mean ± std over seeds); chance = random choices with the same per-layer counts.", "",
             "| criteria | seeds | heads | heads by chance | neurons | neurons by chance |", "|---|---|---|---|---|---|"]
    for (a, b), v in sorted(pairs.items()):
        lines.append(f"| {a} / {b} | {len(v['heads'])} | {mean_std(v['heads'])} | {mean_std(v['chance_heads'])} | "
                     f"{mean_std(v['neurons'])} | {mean_std(v['chance_neurons'])} |")
    return "\n".join(lines) + "\n"


def write(out: Path, patiences: tuple[int, ...] = (2, 3), plots: bool = True) -> list[dict]:
    """Write results.csv, results.md and (with `plots`) the PNGs of `pruning.studies.sweep_plots` into the sweep
    directory `out`, from every out/*/results.json; `patiences`: the early-stopping replay's. Every
    score is the task's headline metric, named in results.md's headings and in results.csv's columns
    (`csv_columns`). Returns the rows of the unstructured runs (an empty list, after saying so, when no
    run has finished). Raises MixedTasks when the runs are of several tasks (`load`), SchemaError for a
    results.json it cannot read."""
    out = Path(out)
    results = load(out)
    if not results:
        print(f"no finished runs under {out}")
        return []
    # The sweep's table, targets and plots are about unstructured rates; heads+neurons runs get their own table.
    unstructured = [r for r in results if not (r.pruning and r.pruning.structure)]
    rows = rows_of(unstructured)
    task = task_of(results)
    columns, renamed = csv_columns(task)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")  # not the per-example predictions
        writer.writeheader()
        writer.writerows({renamed.get(k, k): v for k, v in row.items()} for row in rows)
    structured = structured_markdown(results)
    replay = early_stopping_replay(results, patiences)
    (out / "results.md").write_text(f"Task: {task.title}. Every score below is {dev_metric_label(task)}, the task's "
                                    f"headline metric ({task.headline}), unless its column names another.\n\n"
                                    + markdown(rows, task) + "\n" + targets(rows, task)
                                    + ("\n## Heads + neurons\n\n" + structured if structured else "")
                                    + ("\n## Early stopping\n\n" + replay if replay else ""))
    if plots:
        sweep_plots.sweep(unstructured, rows, out, task)
        sweep_plots.cost(results, out / "cost_vs_step.png", task)
    print(f"wrote {out / 'results.csv'}, {out / 'results.md'}{' and plots' if plots else ''} ({len(rows)} runs)")
    return rows

