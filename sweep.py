"""The sweep: {dense, magnitude, gradient, undecayed} x pruning rates x seeds, then the report.

    python sweep.py                                      # the grid below, full SST-2
    python sweep.py --train_subset=8000 --eb_check_every=10 --out_dir=sweeps/small
    python sweep.py --granularity=heads+neurons --trainers=dense,activation,magnitude --seeds=1,2,3
                                                         # heads + neurons at HEAD_RATE / NEURON_RATE (bert.py's,
                                                         # or --head_rate=... --neuron_rate=...); RATES unused

Every cell is one `python bert.py --run_name=CELL ...` in its own process (the same experiment code,
not a copy; `pruning.cells`). A cell with results.json is skipped, a cell killed midway resumes from
its checkpoint, so the sweep can be stopped and re-run at any time. Any --key=value that is not a sweep setting below
is handed to every cell (see `python bert.py --help`). At the end, report.py writes results.csv,
results.md and the plots into OUT_DIR.
"""
from pathlib import Path

from tqdm import tqdm

import bert  # noqa: F401  (defines every trainer a cell may name)
import report
from pruning import experiment
from pruning.cells import run_cell
from pruning.units import GRANULARITIES

SCRIPT = "bert.py"                              # the experiment each cell runs
TRAINERS = "dense,magnitude,gradient,undecayed" # comma-separated; dense runs once per seed
RATES = "0.3,0.5,0.7,0.9"                       # comma-separated pruning rates (granularity "weights")
GRANULARITY = "weights"                         # or "heads+neurons": one cell per trainer and seed
SEEDS = "42"                                    # comma-separated seeds
OUT_DIR = "sweeps/bert"                         # one sub-directory per cell, plus the report
DENSE_EVAL_EVERY = 50                           # dense runs evaluate this often (the time-to-accuracy curve for B3)
SETTINGS = ("SCRIPT", "TRAINERS", "RATES", "GRANULARITY", "SEEDS", "OUT_DIR", "DENSE_EVAL_EVERY")


def cells(trainers, rates, seeds, dense_eval_every, granularity="weights"):
    structured = granularity != "weights"
    for seed in seeds:
        for trainer in trainers:
            dense = trainer == "dense"
            for rate in ([None] if dense or structured else rates):
                name = f"{trainer}-s{seed}" if rate is None else f"{trainer}-r{rate:g}-s{seed}"
                args = [f"--trainer={trainer}", f"--seed={seed}"]
                args += [f"--eval_every={dense_eval_every}"] if dense else []
                args += [f"--granularity={granularity}"] if structured and not dense else []
                args += [f"--pruning_rate={rate}"] if rate is not None else []
                yield name, args


def main():
    try:
        config, passed_on, _ = experiment.grid_settings(globals(), SETTINGS)
    except experiment.ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    trainers = [t.strip() for t in config["TRAINERS"].split(",") if t.strip()]
    for t in trainers:
        if t not in experiment.trainers():
            raise SystemExit(f"error: unknown trainer {t!r} in --trainers; choose from {', '.join(experiment.trainers())}")
    if config["GRANULARITY"] not in GRANULARITIES:
        raise SystemExit(f"error: unknown --granularity={config['GRANULARITY']}; choose one of {', '.join(GRANULARITIES)}")
    rates = [float(r) for r in config["RATES"].split(",")]
    seeds = [int(s) for s in config["SEEDS"].split(",")]
    out = Path(config["OUT_DIR"])
    grid = list(cells(trainers, rates, seeds, config["DENSE_EVAL_EVERY"], config["GRANULARITY"]))
    out.mkdir(parents=True, exist_ok=True)
    failed = []
    with tqdm(grid, desc="sweep", unit="run") as bar:
        for name, args in bar:
            bar.set_postfix_str(name)
            if not run_cell(config["SCRIPT"], out, name, [*args, *passed_on]):
                failed.append(name)
                tqdm.write(f"{name} failed; see {out / (name + '.log')}")
    report.write(out)
    if failed:
        raise SystemExit(f"{len(failed)} run(s) failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
