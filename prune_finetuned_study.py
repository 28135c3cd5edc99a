"""Retraining-free pruning across FLOPs constraints and seeds: the table of Kwon et al. (2022, Table 2's shape).

    python prune_finetuned_study.py --inputs=runs/dense-s42,runs/dense-s43,runs/dense-s44
    python prune_finetuned_study.py --inputs=... --constraints=0.9,0.75,0.6,0.5 --out_dir=sweeps/retraining-free

Runs prune_finetuned.py once per (input run, constraint), each in its own process into OUT_DIR/<input>-c<constraint>
(a cell with results.json is skipped, so the study can be stopped and re-run), then writes OUT_DIR/table.md and
OUT_DIR/study.json: per constraint, the input models' headline metric, the searched mask without tuning and the
tuned model (mean ± std over the inputs, which are seeds), the tuned model against its input (paired t-test over
seeds, McNemar per seed, a bootstrap over dev sentences), the FLOPs reached, and the seconds of each step.
Any other --key=value goes to every prune_finetuned.py run.
"""
from __future__ import annotations

from pruning.settings import preflight

if __name__ == "__main__":  # --help (and a misspelt setting) answered before torch is imported
    preflight(__file__)

import statistics
import sys
from pathlib import Path

from pruning import settings
from pruning.grid.processes import run_python
from pruning.run import schema
from pruning.studies import stats

INPUTS = ""                         # comma-separated finished runs (fine-tuned models): one per seed
CONSTRAINTS = "0.9,0.75,0.6,0.5"    # FLOPs budgets, fractions of each input model's
OUT_DIR = "sweeps/retraining-free"  # one directory per (input, constraint), and the table
SCRIPT = "prune_finetuned.py"       # the pruning script each cell runs

SETTINGS = ("INPUTS", "CONSTRAINTS", "OUT_DIR", "SCRIPT")
STEPS = ("load", "fisher", "search", "rearrange", "tune", "apply", "evaluate")


def cells(config: dict) -> list[tuple[Path, float, str]]:
    """(input run, constraint, cell name) for every pair; raises ConfigError for an input that is not a finished
    run or a constraint outside (0, 1]."""
    inputs = [Path(p) for p in config["INPUTS"].split(",") if p]
    if not inputs:
        raise settings.ConfigError("name the fine-tuned runs: --inputs=runs/A,runs/B,runs/C (one per seed)")
    for run in inputs:
        if not (run / schema.FILE).exists():
            raise settings.ConfigError(f"--inputs: {run} is not a finished run (no {schema.FILE})")
    try:
        constraints = [float(c) for c in config["CONSTRAINTS"].split(",") if c]
    except ValueError:
        raise settings.ConfigError(f"--constraints={config['CONSTRAINTS']!r}: comma-separated numbers") from None
    if not constraints or not all(0 < c <= 1 for c in constraints):
        raise settings.ConfigError(f"--constraints={config['CONSTRAINTS']!r}: fractions in (0, 1]")
    return [(run, c, f"{run.name}-c{c:g}") for c in constraints for run in inputs]


def run_cells(config: dict, passed_on: list[str]) -> None:
    """Each cell's prune_finetuned.py run, forked from `pruning.grid.processes`' preloaded server; finished cells are
    skipped. Raises SystemExit naming the log of a cell that failed."""
    out = Path(config["OUT_DIR"])
    out.mkdir(parents=True, exist_ok=True)
    for run, constraint, name in cells(config):
        if (out / name / schema.FILE).exists():
            continue
        print(f"{name} ...", flush=True)
        status = run_python(config["SCRIPT"], [f"--model={run}", f"--constraint={constraint}", f"--out_dir={out}",
                                               f"--run_name={name}", *passed_on], stdout=out / f"{name}.log")
        if status != 0:
            raise SystemExit(f"{name} failed (exit status {status}); see {out / f'{name}.log'}")


def table(config: dict) -> dict:
    """study.json's content: one row per constraint (see the module docstring)."""
    out, rows = Path(config["OUT_DIR"]), []
    by_constraint: dict[float, list] = {}
    for run, constraint, name in cells(config):
        by_constraint.setdefault(constraint, []).append((schema.read(run), schema.read(out / name)))
    for constraint, pairs in by_constraint.items():
        headline = pairs[0][1].headline
        inputs = [p.metrics.value(headline, "before_prune") for _, p in pairs]
        untuned = [p.metrics.value(headline, "after_prune") for _, p in pairs]
        tuned = [p.score() for _, p in pairs]
        post = [p.post_training for _, p in pairs]
        cells_ = stats.paired_cells(tuned, inputs, [stats.dev_outputs(p) for _, p in pairs],
                                    [stats.dev_outputs(r) for r, _ in pairs], headline)
        rows.append({"constraint": constraint, "headline": headline, "seeds": len(pairs),
                     "input": stats.summary(inputs), "untuned": stats.summary(untuned), "tuned": stats.summary(tuned),
                     "tuned_minus_input": stats.summary([t - i for t, i in zip(tuned, inputs)]),
                     "untuned_minus_input": stats.summary([u - i for u, i in zip(untuned, inputs)]),
                     "paired": cells_, "t_untuned": stats.paired_p(untuned, inputs),
                     "flops": stats.summary([p.flops_pruned / p.flops_input for p in post]),
                     "seconds": {s: statistics.mean(p.step_seconds.get(s, 0.0) for p in post) for s in STEPS},
                     "runs": [str(out / name) for _, _, name in cells(config) if name.endswith(f"-c{constraint:g}")]})
    return {"inputs": config["INPUTS"].split(","), "rows": rows}


def markdown(study: dict) -> str:
    """table.md: the study's rows (headline metric x 100)."""
    def pct(s, signed=False):
        if s["mean"] is None:
            return stats.MISSING
        sign = "+" if signed and s["mean"] >= 0 else ""
        return f"{sign}{100 * s['mean']:.2f}" + (f" ± {100 * s['std']:.2f}" if s["std"] is not None else "")
    head = study["rows"][0]["headline"] if study["rows"] else "accuracy"
    lines = [f"| FLOPs constraint | FLOPs reached | input {head} | mask, no tuning | Δ | tuned | Δ | t-test p (tuned) | "
             "McNemar p per seed | bootstrap 95% interval | seconds: Fisher / search / rearrange / tune |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in study["rows"]:
        s = r["seconds"]
        lines.append(f"| {r['constraint']:g} | {r['flops']['mean']:.3f} | {pct(r['input'])} | {pct(r['untuned'])} | "
                     f"{pct(r['untuned_minus_input'], True)} | {pct(r['tuned'])} | {pct(r['tuned_minus_input'], True)} | "
                     f"{r['paired']['t']} | {r['paired']['mcnemar']} | {r['paired']['interval']} | "
                     f"{s['fisher']:.0f} / {s['search']:.1f} / {s['rearrange']:.1f} / {s['tune']:.0f} |")
    return "\n".join(lines) + "\n"


def main(config: dict, passed_on: list[str]) -> None:
    run_cells(config, passed_on)
    study = table(config)
    out = Path(config["OUT_DIR"])
    schema.write_json(out / "study.json", study)
    (out / "table.md").write_text(markdown(study))
    print(markdown(study))


if __name__ == "__main__":
    try:
        own = [a for a in sys.argv[1:] if a.split("=")[0] in {f"--{k.lower()}" for k in SETTINGS} or a in ("-h", "--help")]
        study_settings = settings.configure({**{k: globals()[k] for k in SETTINGS}, "__file__": __file__}, own)
        cells(study_settings)
        main(study_settings, [a for a in sys.argv[1:] if a not in own])
    except (settings.ConfigError, schema.SchemaError) as e:
        settings.fail(e)
