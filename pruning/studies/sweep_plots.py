"""The plots of a sweep directory, drawn by `pruning.studies.sweep_tables.write`: the headline score against sparsity
(`HEADLINE_vs_sparsity.png`: accuracy_vs_sparsity.png for SST-2, matthews_correlation_vs_sparsity.png for
CoLA, ...), the early-bird detector's mask distance by step, where the training time went, and every
run's dev score, active parameters and training FLOPs by step (`cost_vs_step.png`). Score axes name the
task and its headline metric ("CoLA dev Matthews corr.", `pruning.run.schema.dev_metric_label`).

Every criterion found among the runs is drawn (each trainer but "dense"): `criteria_of`.
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from pruning.run.schema import RunResults, TaskInfo, dev_metric_label

# Colours of the first criteria, kept from the plots of earlier sweeps; any other criterion takes the next free one.
KNOWN_COLORS = {"magnitude": "tab:blue", "gradient": "tab:orange", "undecayed": "tab:green"}
MORE_COLORS = ("tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:red", "tab:gray")


def criteria_of(runs: list) -> list[str]:
    """The criteria among runs (`pruning.run.schema.RunResults`, or table rows: dicts with "trainer"): every
    trainer but "dense", sorted by name."""
    return sorted({r["trainer"] if isinstance(r, dict) else r.trainer for r in runs} - {"dense"})


def criterion_colors(criteria: list[str]) -> dict[str, str]:
    """A matplotlib colour per criterion: KNOWN_COLORS for the first criteria, then the next of
    MORE_COLORS, "black" once those run out."""
    spare = iter(MORE_COLORS)
    return {c: KNOWN_COLORS.get(c) or next(spare, "black") for c in criteria}


def score_curves(rows: list[dict]) -> dict[str, dict[str, list[float]]]:
    """Per criterion (`criteria_of`), the points of HEADLINE_vs_sparsity.png: the sparsities its runs
    reached (ascending) and, at each, the mean over runs of the final headline score and of the score
    right after pruning (`pruning.studies.sweep_tables.rows_of` rows)."""
    curves = {}
    for c in criteria_of(rows):
        by_rate = defaultdict(list)
        for r in rows:
            if r["trainer"] == c:
                by_rate[r["sparsity"]].append(r)
        xs = sorted(by_rate)
        curves[c] = {"sparsity": xs,
                     "final": [statistics.mean(r["score_final"] for r in by_rate[x]) for x in xs],
                     "after_prune": [statistics.mean(r["score_after_prune"] for r in by_rate[x]) for x in xs]}
    return curves


def distance_curves(pruned: list[RunResults]) -> dict[str, list[dict]]:
    """Per criterion (`criteria_of`), one line of mask_distance.png per run (by rate): the steps and
    maximum mask distances of the detector's checks (the weights' detector, or the first, when a run
    has several), its label, and the early-bird step and distance (None when none was found)."""
    curves = {}
    for c in criteria_of(pruned):
        curves[c] = []
        for r in sorted((r for r in pruned if r.trainer == c), key=lambda r: r.pruning.rate or 0):
            p = r.pruning
            hist = [h for h in p.distances() if h["max_distance"] is not None]
            eb = p.eb_step
            curves[c].append({"steps": [h["step"] for h in hist], "distances": [h["max_distance"] for h in hist],
                              "label": f"rate {p.rate:g}, seed {r.config.seed}", "eb_step": eb,
                              "eb_distance": None if eb is None else
                              next(h["max_distance"] for h in hist if h["step"] == eb)})
    return curves


def score_plot_name(task: TaskInfo) -> str:
    """The file of the score-against-sparsity plot: "accuracy_vs_sparsity.png", "pearson_vs_sparsity.png", ..."""
    return f"{task.headline}_vs_sparsity.png"


def sweep(results: list[RunResults], rows: list[dict], out: Path, task: TaskInfo) -> None:
    """`score_plot_name(task)`, mask_distance.png and time_breakdown.png of a sweep directory `out`, from
    the unstructured runs' results of `task` and their `pruning.studies.sweep_tables.rows_of` rows: every criterion found."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colors = criterion_colors(criteria_of(rows + results))

    # 1. the headline score vs sparsity
    fig, ax = plt.subplots(figsize=(6, 4), dpi=90)
    dense = [r["score_final"] for r in rows if r["trainer"] == "dense"]
    if dense:
        ax.axhline(statistics.mean(dense), color="black", ls="--", lw=1, label="dense baseline")
    for c, curve in score_curves(rows).items():
        ax.plot(curve["sparsity"], curve["final"], "o-", color=colors[c], label=f"{c}, after retraining")
        ax.plot(curve["sparsity"], curve["after_prune"], "x:", color=colors[c], alpha=0.7,
                label=f"{c}, right after pruning")
    ax.set_xlabel("sparsity of prunable weights")
    ax.set_ylabel(dev_metric_label(task))
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / score_plot_name(task))
    plt.close(fig)

    # 2. mask distance vs step, one panel per criterion, one line per rate
    pruned = [r for r in results if r.pruning]
    if pruned:
        curves = distance_curves(pruned)
        fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.5), dpi=90, sharey=True, squeeze=False)
        for ax, (c, lines) in zip(axes[0], curves.items()):
            for line in lines:
                drawn, = ax.plot(line["steps"], line["distances"], ".-", lw=1, label=line["label"])
                if line["eb_step"] is not None:
                    ax.plot([line["eb_step"]], [line["eb_distance"]], "*", ms=12, color=drawn.get_color())
            ax.axhline(pruned[0].pruning.detector.epsilon, color="red", ls="--", lw=1, label="epsilon")
            ax.set_title(c)
            ax.set_xlabel("optimizer step")
            ax.set_yscale("symlog", linthresh=1e-3)
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
        axes[0][0].set_ylabel("max Hamming distance in FIFO (★ = early bird)")
        fig.tight_layout()
        fig.savefig(out / "mask_distance.png")
        plt.close(fig)

    # 3. where the training time went
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(rows)), 4), dpi=90)
    labels = [f"{r['trainer']} {r['rate']:g}" if r["trainer"] != "dense" else "dense" for r in rows]
    bottom = [0.0] * len(rows)
    for phase, color in (("search_s", "tab:blue"), ("prune_s", "tab:red"), ("retrain_s", "tab:green")):
        vals = [r[phase] if r[phase] is not None else (r["total_s"] if phase == "search_s" else 0.0) for r in rows]
        ax.bar(range(len(rows)), vals, bottom=bottom, color=color,
               label={"search_s": "search (dense: all training)", "prune_s": "pruning + 2 evals",
                      "retrain_s": "retrain"}[phase])
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_xticks(range(len(rows)), labels, fontsize=7, rotation=60)
    ax.set_ylabel("wall seconds")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "time_breakdown.png")
    plt.close(fig)


def cost(results: list[RunResults], path: Path, task: TaskInfo) -> None:
    """The dev headline score of `task` (evaluations during training), active parameters (without
    embeddings) and cumulative training FLOPs against the step, every run overlaid: one colour per
    trainer, one line per seed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    runs = [r for r in results if r.cost_series]
    if not runs:
        return
    trainers = sorted({r.trainer for r in runs}, key=lambda t: (t != "dense", t))
    colors = dict(zip(trainers, ["black", "tab:red", "tab:blue", "tab:orange", "tab:green", "tab:purple",
                                 "tab:brown", "tab:pink", "tab:gray", "tab:olive"]))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), dpi=90)
    seen = set()
    for r in sorted(runs, key=lambda r: (r.trainer, r.config.seed)):
        c, label = colors[r.trainer], (r.trainer if r.trainer not in seen else None)
        seen.add(r.trainer)
        timeline = r.accuracy_timeline
        axes[0].plot([t.step for t in timeline], [t.value() for t in timeline], ".-", color=c, lw=1,
                     alpha=0.7, label=label)
        series = r.cost_series
        steps = [e.step for e in series]
        axes[1].plot(steps, [e.active_params_without_embeddings / 1e6 for e in series], color=c, alpha=0.7,
                     label=label)
        axes[2].plot(steps, [e.train_flops / 1e15 for e in series], color=c, alpha=0.7, label=label)
    for ax, ylabel in zip(axes, (dev_metric_label(task), "active parameters without embeddings (M)",
                                 "cumulative training PFLOPs")):
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
