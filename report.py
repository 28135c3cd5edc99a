"""Tables and plots of a sweep directory: results.csv, results.md and the PNGs.

    python report.py sweeps/bert

Heads + neurons runs get their own tables: what each kept and scored, mean ± std over seeds with the
training FLOPs to the end of the run, and how much the criteria agree on which units to keep.
`cost_vs_step.png` overlays every run's dev accuracy, active parameters and training FLOPs by step.
"""
from __future__ import annotations

import csv
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from pruning import state as state_io
from pruning.callbacks import stopping_evaluation
from pruning.experiment import rate_text
from pruning.masks import overlap
from pruning.tickets import split_kind

CRITERIA = ("magnitude", "gradient", "undecayed")
COLUMNS = ["run", "trainer", "variant", "rate", "seed", "sparsity", "acc_before_prune", "acc_after_prune", "acc_final",
           "f1_final", "eb_found", "eb_step", "eb_fraction_of_dense_steps", "optimizer_steps",
           "search_s", "prune_s", "retrain_s", "total_s", "time_vs_dense", "search_retrain_s",
           "dense_s_to_same_acc", "b3_ratio", "peak_rss_mb",
           "prunable_nonzero", "prunable_params", "train_pflos", "inference_gflops_dense",
           "inference_gflops_nonzero", "dev_sentences_per_s"]


def load(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*/results.json"))]


def rows_of(results: list[dict]) -> list[dict]:
    dense = {r["config"]["SEED"]: r for r in results if r["trainer"] == "dense"}
    rows = []
    for r in results:
        seed, p, m, cost = r["config"]["SEED"], r.get("pruning") or {}, r["metrics"], r.get("cost", {})
        base = dense.get(seed)
        total = training_seconds(r)
        rows.append({
            "run": Path(r.get("run_dir", "")).name or f"{r['trainer']}-{seed}", "trainer": r["trainer"],
            "variant": variant_of(r), "correct": correct_on_dev(r),
            "rate": p.get("rate", 0.0), "seed": seed, "sparsity": r["sparsity"],
            "acc_before_prune": (m.get("before_prune") or {}).get("accuracy"),
            "acc_after_prune": (m.get("after_prune") or {}).get("accuracy"),
            "acc_final": m["final"]["accuracy"], "f1_final": m["final"]["f1"],
            "eb_found": p.get("eb_found"), "eb_step": p.get("eb_step"),
            "eb_fraction_of_dense_steps": (p["eb_step"] / base["optimizer_steps"]
                                           if base and p.get("eb_step") is not None else None),
            "optimizer_steps": r["optimizer_steps"],
            "search_s": r["phase_seconds"].get("search"), "prune_s": r["phase_seconds"].get("prune"),
            "retrain_s": r["phase_seconds"].get("retrain"), "total_s": total,
            "time_vs_dense": total / training_seconds(base) if base else None,
            **b3_figures(r, base),
            "peak_rss_mb": r["peak_rss_mb"], "prunable_nonzero": r["prunable_nonzero"],
            "prunable_params": r["prunable_params"], "train_pflos": cost.get("train_flos", 0) / 1e15,
            "inference_gflops_dense": cost.get("inference_flops_dense", 0) / 1e9,
            "inference_gflops_nonzero": cost.get("inference_flops_nonzero", 0) / 1e9,
            "dev_sentences_per_s": cost.get("dev_sentences_per_second"),
        })
    return sorted(rows, key=lambda x: (x["trainer"] != "dense", x["trainer"], x["variant"], x["rate"], x["seed"]))


def variant_of(r: dict) -> str:
    """How a pruning run kept its accuracy: "plain", or distillation ("kd") and/or a gradual schedule."""
    config = r.get("config", {})
    parts = ["kd"] if config.get("TEACHER") else []
    if config.get("GRADUAL_UPDATES"):
        parts.append(f"gradual×{config['GRADUAL_UPDATES']}" + ("+rewarm" if config.get("GRADUAL_REWARM") else ""))
    return " + ".join(parts) or "plain"


def training_seconds(r: dict) -> float:
    """Wall seconds of training, without the dense run's periodic dev evaluations (which only
    draw its accuracy timeline); a pruned run's two evaluations at pruning stay in its prune phase."""
    if r.get("pruning") is None and r.get("accuracy_timeline"):
        return r["accuracy_timeline"][-1]["train_seconds"]
    return sum(r["phase_seconds"].values())


def b3_figures(r: dict, dense: dict | None) -> dict:
    """Search + retrain seconds against the training seconds the dense run needed to first reach this
    run's final accuracy (from its accuracy timeline, evaluation time left out)."""
    if not r.get("pruning") or not dense:
        return {"search_retrain_s": None, "dense_s_to_same_acc": None, "b3_ratio": None}
    spent = r["phase_seconds"]["search"] + r["phase_seconds"]["retrain"]
    target = r["metrics"]["final"]["accuracy"]
    reached = [p["train_seconds"] for p in dense.get("accuracy_timeline", []) if p["accuracy"] >= target]
    dense_s = reached[0] if reached else None
    return {"search_retrain_s": spent, "dense_s_to_same_acc": dense_s,
            "b3_ratio": spent / dense_s if dense_s else None}


def _fmt(x, digits=4):
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def markdown(rows: list[dict]) -> str:
    lines = ["| trainer | rate | seed | sparsity | acc before prune | acc after prune | acc final | F1 final | "
             "EB step | EB / dense steps | steps | search s | prune s | retrain s | total s | time vs dense | "
             "dense s to same acc | B3: (search+retrain) / that | "
             "peak RSS MB | nonzero prunable | train PFLOs | infer GFLOPs dense / nonzero | dev sent/s |",
             "|" + "---|" * 23]
    for r in rows:
        lines.append("| " + " | ".join([
            r["trainer"] + ("" if r["variant"] == "plain" else f" ({r['variant']})"), _fmt(r["rate"], 1), str(r["seed"]), _fmt(r["sparsity"]), _fmt(r["acc_before_prune"]),
            _fmt(r["acc_after_prune"]), _fmt(r["acc_final"]), _fmt(r["f1_final"]),
            _fmt(r["eb_step"]) + ("" if r["eb_found"] in (True, None) else " (none)"),
            _fmt(r["eb_fraction_of_dense_steps"], 3), str(r["optimizer_steps"]), _fmt(r["search_s"], 0),
            _fmt(r["prune_s"], 0), _fmt(r["retrain_s"], 0), _fmt(r["total_s"], 0), _fmt(r["time_vs_dense"], 2),
            (_fmt(r["dense_s_to_same_acc"], 0) if r["dense_s_to_same_acc"] is not None else
             ("never" if r["search_retrain_s"] is not None else "–")), _fmt(r["b3_ratio"], 2),
            _fmt(r["peak_rss_mb"], 0), f"{r['prunable_nonzero']:,} / {r['prunable_params']:,}",
            _fmt(r["train_pflos"], 3), f"{r['inference_gflops_dense']:.1f} / {r['inference_gflops_nonzero']:.1f}",
            _fmt(r["dev_sentences_per_s"], 0)]) + " |")
    groups = defaultdict(list)
    for r in rows:
        groups[(r["trainer"], r["variant"], r["rate"])].append(r)
    if any(len(g) > 1 for g in groups.values()):
        dense = {r["seed"]: r for r in rows if r["trainer"] == "dense"}
        lines += ["", "Mean ± std over seeds; paired by seed with the dense run: the difference, the t-test over "
                  "seeds and a bootstrap over the dev sentences (from the runs' dev predictions):", "",
                  "| trainer | variant | rate | seeds | acc after prune | acc final | F1 final | − dense | "
                  "p (paired t) | p (bootstrap) |", "|---|---|---|---|---|---|---|---|---|---|"]
        for (trainer, variant, rate), g in groups.items():
            lines.append(f"| {trainer} | {variant} | {rate:g} | {len(g)} | {_mean_std([r['acc_after_prune'] for r in g])} | "
                         f"{_mean_std([r['acc_final'] for r in g])} | {_mean_std([r['f1_final'] for r in g])} | "
                         + " | ".join(_paired(g, dense if trainer != "dense" else {})) + " |")
        plain = {(trainer, rate): {r["seed"]: r for r in g} for (trainer, variant, rate), g in groups.items()
                 if variant == "plain"}
        ablation = [(key, g) for key, g in groups.items() if key[1] != "plain" and (key[0], key[2]) in plain]
        if ablation:  # what distillation or the gradual schedule adds to the one-shot run of the same seed
            lines += ["", "Each variant against the one-shot (plain) run of the same trainer, rate and seed:", "",
                      "| trainer | variant | rate | seeds | acc final | − plain | p (paired t) | p (bootstrap) |",
                      "|---|---|---|---|---|---|---|---|"]
            for (trainer, variant, rate), g in ablation:
                lines.append(f"| {trainer} | {variant} | {rate:g} | {len(g)} | {_mean_std([r['acc_final'] for r in g])} | "
                             + " | ".join(_paired(g, plain[(trainer, rate)])) + " |")
    return "\n".join(lines) + "\n"


def _paired(runs: list[dict], reference: dict) -> tuple[str, str, str]:
    """The runs against the reference run of the same seed: accuracy difference (mean ± std), the paired
    t-test over seeds and a bootstrap over the dev sentences."""
    paired = [r for r in runs if r["seed"] in reference]
    if not paired:
        return "–", "–", "–"
    a, b = [r["acc_final"] for r in paired], [reference[r["seed"]]["acc_final"] for r in paired]
    ca, cb = [r["correct"] for r in paired], [reference[r["seed"]]["correct"] for r in paired]
    boot = p_text(bootstrap_difference(ca, cb)) if all(c is not None for c in ca + cb) else "–"
    return _mean_std([x - y for x, y in zip(a, b)]), _fmt(paired_p(a, b), 3), boot


B1_ALLOWED_DROP = {0.5: 0.005, 0.7: 0.010, 0.9: 0.025}  # accuracy the best criterion may lose vs dense


def targets(rows: list[dict]) -> str:
    """B1-B3 read off the rows (means over seeds), each as met or missed with its figure."""
    dense = [r["acc_final"] for r in rows if r["trainer"] == "dense"]
    if not dense:
        return ""
    dense_acc = statistics.mean(dense)
    pruned = [r for r in rows if r["trainer"] != "dense"]
    lines = ["| target | figure | verdict |", "|---|---|---|"]
    for rate, allowed in B1_ALLOWED_DROP.items():
        by_c = defaultdict(list)
        for r in pruned:
            if abs(r["rate"] - rate) < 1e-9:
                by_c[r["trainer"] + ("" if r["variant"] == "plain" else f" ({r['variant']})")].append(r["acc_final"])
        if not by_c:
            continue
        best, accs = max(by_c.items(), key=lambda kv: statistics.mean(kv[1]))
        drop = dense_acc - statistics.mean(accs)
        lines.append(f"| B1 accuracy kept at {rate:.0%} sparsity (≤ {100 * allowed:.1f} points under dense) | "
                     f"best: {best} {statistics.mean(accs):.4f} vs dense {dense_acc:.4f}: {100 * drop:+.2f} points "
                     f"under | {'met' if drop <= allowed else 'missed'} |")
    fractions = [r["eb_fraction_of_dense_steps"] for r in pruned if r["eb_fraction_of_dense_steps"] is not None]
    not_found = sum(1 for r in pruned if r["eb_found"] is False)
    if pruned:
        worst = max(fractions) if fractions else None
        lines.append(f"| B2 early bird within 20% of the dense run's steps | found in {len(fractions)} of {len(pruned)} "
                     f"runs, at {_fmt(min(fractions) if fractions else None, 3)}–{_fmt(worst, 3)} of the dense steps"
                     f"{f'; {not_found} not found' if not_found else ''} | "
                     f"{'met' if not not_found and worst is not None and worst <= 0.2 else 'missed'} |")
    ratios = [r["b3_ratio"] for r in pruned if r["b3_ratio"] is not None]
    never = sum(1 for r in pruned if r["search_retrain_s"] is not None and r["dense_s_to_same_acc"] is None)
    if pruned:
        lines.append(f"| B3 (search + retrain) / dense time to the same accuracy ≤ 0.6 | "
                     f"{_fmt(min(ratios) if ratios else None, 2)}–{_fmt(max(ratios) if ratios else None, 2)} over "
                     f"{len(ratios)} runs{f'; {never} runs beat every dense evaluation' if never else ''} | "
                     f"{'met' if ratios and max(ratios) <= 0.6 else 'missed' if ratios else 'n/a'} |")
    return "\n".join(lines) + "\n"


def plots(results: list[dict], rows: list[dict], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colors = {"magnitude": "tab:blue", "gradient": "tab:orange", "undecayed": "tab:green"}

    # 1. accuracy vs sparsity
    fig, ax = plt.subplots(figsize=(6, 4), dpi=90)
    dense = [r["acc_final"] for r in rows if r["trainer"] == "dense"]
    if dense:
        ax.axhline(statistics.mean(dense), color="black", ls="--", lw=1, label="dense baseline")
    for c in CRITERIA:
        by_rate = defaultdict(list)
        for r in rows:
            if r["trainer"] == c:
                by_rate[r["sparsity"]].append(r)
        if not by_rate:
            continue
        xs = sorted(by_rate)
        ax.plot(xs, [statistics.mean(r["acc_final"] for r in by_rate[x]) for x in xs], "o-", color=colors[c],
                label=f"{c}, after retraining")
        ax.plot(xs, [statistics.mean(r["acc_after_prune"] for r in by_rate[x]) for x in xs], "x:", color=colors[c],
                alpha=0.7, label=f"{c}, right after pruning")
    ax.set_xlabel("sparsity of prunable weights")
    ax.set_ylabel("SST-2 dev accuracy")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_sparsity.png")
    plt.close(fig)

    # 2. mask distance vs step, one panel per criterion, one line per rate
    pruned = [r for r in results if r.get("pruning")]
    if pruned:
        fig, axes = plt.subplots(1, len(CRITERIA), figsize=(12, 3.5), dpi=90, sharey=True)
        for ax, c in zip(axes, CRITERIA):
            for r in sorted((r for r in pruned if r["trainer"] == c), key=lambda r: r["pruning"]["rate"] or 0):
                p = r["pruning"]
                history = p["distance_history"]
                if isinstance(history, dict):  # one history per detector; a sweep plots the weights' (or the first)
                    history = history.get("weights") or next(iter(history.values()))
                hist = [h for h in history if h["max_distance"] is not None]
                line, = ax.plot([h["step"] for h in hist], [h["max_distance"] for h in hist], ".-", lw=1,
                                label=f"rate {p['rate']:g}, seed {r['config']['SEED']}")
                if p["eb_step"] is not None:
                    d = next(h["max_distance"] for h in hist if h["step"] == p["eb_step"])
                    ax.plot([p["eb_step"]], [d], "*", ms=12, color=line.get_color())
            ax.axhline(pruned[0]["pruning"]["detector"]["epsilon"], color="red", ls="--", lw=1, label="epsilon")
            ax.set_title(c)
            ax.set_xlabel("optimizer step")
            ax.set_yscale("symlog", linthresh=1e-3)
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
        axes[0].set_ylabel("max Hamming distance in FIFO (★ = early bird)")
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


def structured_markdown(results: list[dict]) -> str:
    """heads+neurons runs, each beside the dense run of its seed: what was kept, what it costs, what it
    scores; then mean ± std over seeds per criterion, with the paired difference to dense."""
    dense = {r["config"]["SEED"]: r for r in results if r["trainer"] == "dense"}
    runs = sorted((r for r in results if (r.get("pruning") or {}).get("structure")),
                  key=lambda r: (r["trainer"], r["config"]["SEED"]))
    if not runs:
        return ""
    def setting(r):
        p = r["pruning"]
        fixed = f", fixed mask from {Path(p['fixed_mask_from']).name}" if p.get("fixed_mask_from") else ""
        return f"heads {rate_text(p['head_rate'])}, neurons {rate_text(p['neuron_rate'])}{fixed}"

    lines = ["| trainer | setting | seed | EB step | heads kept | FFN neurons kept | params (all / w/o embeddings) vs dense | "
             "acc after prune | acc final | dense acc (same seed) | search s | retrain s | retrain step / search "
             "step (in run) | train-step speed-up (probe) | inference × at batch 1 / 64 | B3 |",
             "|" + "---|" * 16]
    for r in runs:
        p, seed = r["pruning"], r["config"]["SEED"]
        s, par, speed, base = p["structure"], r["parameters"], r.get("speed") or {}, dense.get(seed)
        steps = p.get("step_seconds") or {}
        b3 = b3_figures(r, base)["b3_ratio"]
        lines.append("| " + " | ".join([
            r["trainer"], setting(r), str(seed),
            _fmt(p["eb_step"]) if p["eb_found"] else ("fixed" if p.get("fixed_mask_from") else f"none ({p['prune_step']})"),
            f"{sum(s['heads_kept_per_layer'])} / {sum(s['heads_total_per_layer'])}",
            f"{sum(s['neurons_kept_per_layer']):,} / {sum(s['neurons_total_per_layer']):,}",
            f"{par['final']['total'] / par['dense']['total']:.3f} / "
            f"{par['final']['without_embeddings'] / par['dense']['without_embeddings']:.3f}",
            _fmt(r["metrics"]["after_prune"]["accuracy"]), _fmt(r["metrics"]["final"]["accuracy"]),
            _fmt(base["metrics"]["final"]["accuracy"]) if base else "–",
            _fmt(r["phase_seconds"]["search"], 0), _fmt(r["phase_seconds"]["retrain"], 0),
            _fmt(steps["retrain"] / steps["search"], 2) if steps else "–",
            _fmt(speed.get("train_step_speedup"), 2),
            f"{speed['batch1_ratio']:.2f} / {speed['batch64_ratio']:.2f}" if speed else "–",
            _fmt(b3, 2)]) + " |")
    lines += ["", "| trainer | setting | seeds | acc final | dense acc | paired difference (pruned − dense) | p (paired t) | "
              "training PFLOPs to the end | vs dense | early-stopped |", "|---|---|---|---|---|---|---|---|---|---|"]
    for trainer, label in sorted({(r["trainer"], setting(r)) for r in runs}):
        group = [r for r in runs if (r["trainer"], setting(r)) == (trainer, label) and r["config"]["SEED"] in dense]
        if not group:
            continue
        acc = [r["metrics"]["final"]["accuracy"] for r in group]
        base = [dense[r["config"]["SEED"]]["metrics"]["final"]["accuracy"] for r in group]
        flops = [training_flops(r) for r in group]
        dense_flops = [training_flops(dense[r["config"]["SEED"]]) for r in group]
        ratio = [f / d for f, d in zip(flops, dense_flops) if f and d]
        stopped = [r["config"]["SEED"] for r in group if (r.get("early_stopping") or {}).get("stopped")]
        lines.append(f"| {trainer} | {label} | {', '.join(str(r['config']['SEED']) for r in group)} | "
                     f"{_mean_std(acc)} | {_mean_std(base)} | {_mean_std([a - b for a, b in zip(acc, base)])} | "
                     f"{_fmt(paired_p(acc, base), 3)} | {_mean_std([f / 1e15 if f else None for f in flops])} | "
                     f"{_mean_std(ratio) if ratio else '–'} | "
                     f"{', '.join(map(str, stopped)) if stopped else 'none'} |")
    lines += [""] + criteria_compared(runs)
    agreement = overlap_markdown(runs)
    return "\n".join(lines) + "\n" + ("\n" + agreement if agreement else "")


def paired_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided p-value of the paired t-test (None below 2 pairs, or when every difference is equal)."""
    diffs = [x - y for x, y in zip(a, b)]
    if len(diffs) < 2 or len(set(diffs)) == 1:
        return None
    from scipy.stats import ttest_rel
    return float(ttest_rel(a, b).pvalue)


def correct_on_dev(r: dict):
    """Which dev sentences a run classified correctly (a boolean array in the dataset's order), or None
    for a run from before predictions were saved."""
    import numpy as np
    dev = r.get("dev_predictions")
    return None if not dev else np.asarray(dev["predicted"]) == np.asarray(dev["label"])


def mcnemar_p(a, b) -> float:
    """Exact McNemar test of two classifiers on the same sentences (boolean arrays: correct or not):
    a two-sided binomial test on the sentences exactly one of them gets right."""
    from scipy.stats import binomtest
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    return 1.0 if only_a + only_b == 0 else float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def bootstrap_difference(a: list, b: list, resamples: int = 10_000, seed: int = 0) -> dict:
    """Mean over seeds of accuracy(A) − accuracy(B), paired by seed (a[i], b[i]: correct-on-dev arrays of
    one seed), with a 95% percentile interval and a two-sided p from resampling the dev sentences: the
    same resample for every seed and both arms, so the pairing by sentence is kept. It measures how much
    the difference depends on which sentences the dev set holds; the t-test over seeds measures the
    training noise."""
    import numpy as np
    per_sentence = np.mean([x.astype(float) - y.astype(float) for x, y in zip(a, b)], axis=0)
    rng = np.random.default_rng(seed)
    stats = np.concatenate([per_sentence[rng.integers(0, len(per_sentence), (1000, len(per_sentence)))].mean(axis=1)
                            for _ in range(resamples // 1000)])
    low, high = np.percentile(stats, [2.5, 97.5])
    p = min(1.0, 2 * min(float((stats <= 0).mean()), float((stats >= 0).mean())))
    return {"difference": float(per_sentence.mean()), "low": float(low), "high": float(high), "p": p,
            "resamples": len(stats)}


def p_text(boot: dict) -> str:
    """A bootstrap p for a table: none of the resamples crossed zero reads "< 2/resamples", not 0."""
    return f"< {2 / boot['resamples']:.2g}" if boot["p"] == 0 else f"{boot['p']:.3g}"


def criteria_compared(runs: list[dict]) -> list[str]:
    """Every two criteria at the same rates, paired by seed: accuracy difference and paired t-test."""
    acc = defaultdict(dict)
    for r in runs:
        if not r["pruning"].get("fixed_mask_from"):
            p = r["pruning"]
            acc[(rate_text(p["head_rate"]), rate_text(p["neuron_rate"]))].setdefault(r["trainer"], {})[
                r["config"]["SEED"]] = r["metrics"]["final"]["accuracy"]
    lines = ["| criteria (A / B) | rates (heads, neurons) | seeds | A − B | p (paired t) |", "|---|---|---|---|---|"]
    for rates, by_trainer in sorted(acc.items()):
        names = sorted(by_trainer)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                seeds = sorted(set(by_trainer[a]) & set(by_trainer[b]))
                if len(seeds) < 2:
                    continue
                xa, xb = [by_trainer[a][s] for s in seeds], [by_trainer[b][s] for s in seeds]
                lines.append(f"| {a} / {b} | {rates[0]}, {rates[1]} | {len(seeds)} | "
                             f"{_mean_std([x - y for x, y in zip(xa, xb)])} | {_fmt(paired_p(xa, xb), 3)} |")
    return lines if len(lines) > 2 else []


def early_stopping_replay(results: list[dict], patiences=(2, 3)) -> str:
    """Where early stopping on dev loss would have stopped runs that trained their whole budget with
    evaluations: EarlyStopping changes nothing before it stops, so a run with EARLY_STOPPING_PATIENCE=P is
    this run up to the stop step, and its final model is the one evaluated there. Read off each run's log:
    the stop step, the dev accuracy there and the training FLOPs spent by then (mean over seeds)."""
    rows = defaultdict(list)
    for r in results:
        if (r.get("early_stopping") or {}).get("stopped") or not r.get("cost_series"):
            continue
        prune_step = (r.get("pruning") or {}).get("prune_step")
        after = prune_step if prune_step is not None else -1
        end = r["optimizer_steps"]
        evals = [e for e in r["log_history"] if "eval_loss" in e and after < e["step"] and "train_flops" in e]
        if not evals:
            continue
        full = training_flops(r)
        for patience in patiences:
            at = stopping_evaluation([e["eval_loss"] for e in evals], patience)
            stop = evals[at] if at is not None else None
            rows[(r["trainer"], patience)].append({
                "step": stop["step"] if stop else end,
                "accuracy": stop["eval_accuracy"] if stop else r["metrics"]["final"]["accuracy"],
                "full_accuracy": r["metrics"]["final"]["accuracy"],
                "flops": (stop["train_flops"] if stop else full) / full})
    if not rows:
        return ""
    lines = ["Early stopping on dev loss, read off the runs' evaluations (a run stopped with this patience is the "
             "same run up to its stop; see `report.early_stopping_replay`):", "",
             "| trainer | patience (evaluations) | runs | stop step | acc at stop | acc at the end of the budget | "
             "training FLOPs at stop / full budget |", "|---|---|---|---|---|---|---|"]
    for (trainer, patience), g in sorted(rows.items(), key=lambda kv: (kv[0][0] != "dense", kv[0])):
        lines.append(f"| {trainer} | {patience} | {len(g)} | {', '.join(str(x['step']) for x in g)} | "
                     f"{_mean_std([x['accuracy'] for x in g])} | {_mean_std([x['full_accuracy'] for x in g])} | "
                     f"{_mean_std([x['flops'] for x in g])} |")
    return "\n".join(lines) + "\n"


def training_flops(r: dict) -> float | None:
    """Training FLOPs to the end of the run, as CostLog counted them (None for runs from before it)."""
    if r.get("cost", {}).get("train_flops") is not None:
        return r["cost"]["train_flops"]
    series = r.get("cost_series") or []
    return series[-1]["train_flops"] if series else None


def kept_units(run: dict) -> dict[str, dict]:
    """A heads+neurons run's final keep-masks, split into heads and neurons."""
    masks = state_io.read_run_masks(run["run_dir"])[0]
    return {kind: split_kind(masks, kind) for kind in ("heads", "neurons")}


def overlap_markdown(runs: list[dict]) -> str:
    """Jaccard index of the kept heads and kept neurons between every two criteria, per seed (mean ± std),
    beside the index of random choices with the same per-layer counts."""
    by_key = defaultdict(dict)
    for r in runs:
        if not r["pruning"].get("fixed_mask_from") and Path(r["run_dir"], state_io.MASKS_FILE).exists():
            p = r["pruning"]
            by_key[(r["config"]["SEED"], rate_text(p["head_rate"]), rate_text(p["neuron_rate"]))][r["trainer"]] = r
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
        lines.append(f"| {a} / {b} | {len(v['heads'])} | {_mean_std(v['heads'])} | {_mean_std(v['chance_heads'])} | "
                     f"{_mean_std(v['neurons'])} | {_mean_std(v['chance_neurons'])} |")
    return "\n".join(lines) + "\n"


def plot_cost(results: list[dict], path: Path) -> None:
    """Dev accuracy, active parameters (without embeddings) and cumulative training FLOPs against the step,
    every run overlaid: one colour per trainer, one line per seed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    runs = [r for r in results if r.get("cost_series")]
    if not runs:
        return
    trainers = sorted({r["trainer"] for r in runs}, key=lambda t: (t != "dense", t))
    colors = dict(zip(trainers, ["black", "tab:red", "tab:blue", "tab:orange", "tab:green", "tab:purple",
                                 "tab:brown", "tab:pink", "tab:gray", "tab:olive"]))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), dpi=90)
    seen = set()
    for r in sorted(runs, key=lambda r: (r["trainer"], r["config"]["SEED"])):
        c, label = colors[r["trainer"]], (r["trainer"] if r["trainer"] not in seen else None)
        seen.add(r["trainer"])
        timeline = r.get("accuracy_timeline") or []
        axes[0].plot([t["step"] for t in timeline], [t["accuracy"] for t in timeline], ".-", color=c, lw=1,
                     alpha=0.7, label=label)
        series = r["cost_series"]
        steps = [e["step"] for e in series]
        axes[1].plot(steps, [e["active_params_without_embeddings"] / 1e6 for e in series], color=c, alpha=0.7,
                     label=label)
        axes[2].plot(steps, [e["train_flops"] / 1e15 for e in series], color=c, alpha=0.7, label=label)
    for ax, ylabel in zip(axes, ("SST-2 dev accuracy", "active parameters without embeddings (M)",
                                 "cumulative training PFLOPs")):
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write(out: Path) -> list[dict]:
    out = Path(out)
    results = load(out)
    if not results:
        print(f"no finished runs under {out}")
        return []
    # The sweep's table, targets and plots are about unstructured rates; heads+neurons runs get their own table.
    unstructured = [r for r in results if not (r.get("pruning") or {}).get("structure")]
    rows = rows_of(unstructured)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")  # not the per-sentence predictions
        writer.writeheader()
        writer.writerows(rows)
    structured = structured_markdown(results)
    replay = early_stopping_replay(results)
    (out / "results.md").write_text(markdown(rows) + "\n" + targets(rows)
                                    + ("\n## Heads + neurons\n\n" + structured if structured else "")
                                    + ("\n## Early stopping\n\n" + replay if replay else ""))
    plots(unstructured, rows, out)
    plot_cost(results, out / "cost_vs_step.png")
    print(f"wrote {out / 'results.csv'}, {out / 'results.md'} and plots ({len(rows)} runs)")
    return rows


if __name__ == "__main__":
    write(Path(sys.argv[1] if len(sys.argv) > 1 else "sweeps/bert"))
