"""The sweep: {dense, magnitude, gradient, undecayed} x pruning rates x seeds, then the report.

    python sweep.py                                      # the grid below, full SST-2
    python sweep.py --train_subset=8000 --eb_check_every=10 --out_dir=sweeps/small
    python sweep.py --task=cola --out_dir=sweeps/cola    # another task (bert.py's --task, --data_dir, ...);
                                                         # the report is in its headline metric (CoLA: MCC)
    python sweep.py --granularity=heads+neurons --trainers=dense,activation,magnitude --seeds=1,2,3
                                                         # heads + neurons at HEAD_RATE / NEURON_RATE (bert.py's,
                                                         # or --head_rate=... --neuron_rate=...); RATES unused
    python sweep.py --trainers=dense,magnitude --rates=0.9 --variants=plain,kd,gradual,kd+gradual --seeds=1,2,3
                                                         # the ablation: distillation from the dense cell of the
                                                         # same seed, gradual pruning, both

Every cell is one `python bert.py --run_name=CELL ...` in its own process (the same experiment code,
not a copy; `pruning.grid.cells`). A cell with results.json is skipped, a cell killed midway resumes from
its checkpoint, so the sweep can be stopped and re-run at any time. Any --key=value that is not a sweep setting below
is handed to every cell (see `python bert.py --help`), among them the task: --task, --data_dir,
--text_columns, --label_column, --truncation; every cell's whole configuration is checked before the
first run (an unknown task or truncation fails at once), and a cell on disk made for another task is
refused, so one OUT_DIR holds one task. At the end, `pruning.studies.sweep_tables.write` (what report.py runs) writes
results.csv, results.md and the plots into OUT_DIR, every score in the task's headline metric (SST-2
accuracy, CoLA Matthews correlation, STS-B Pearson r, MRPC/QQP F1, ...), named in every header and axis.
"""
from pruning.settings import preflight

if __name__ == "__main__":  # --help (and a misspelt setting) answered before torch is imported
    preflight(__file__)

from pathlib import Path

from tqdm import tqdm

from pruning import settings
from pruning.grid.cells import check_cells, run_on_ray
from pruning.grid import loop
from pruning.run import checks, experiment, schema
from pruning.studies import sweep_tables

SCRIPT = "bert.py"                              # the experiment each cell runs
TRAINERS = "dense,magnitude,gradient,undecayed" # comma-separated; dense runs once per seed
RATES = "0.3,0.5,0.7,0.9"                       # comma-separated pruning rates (granularity "weights")
GRANULARITY = "weights"                         # or "heads+neurons": one cell per trainer and seed
SEEDS = "42"                                    # comma-separated seeds
VARIANTS = "plain"                              # pruning cells: plain, kd (distil from the dense cell of the same seed), gradual, kd+gradual
GRADUAL = 4                                     # mask updates of the gradual variants (bert.py's GRADUAL_UPDATES)
CLUSTER = ""                                    # "" = cells one after another here; "local" = Ray tasks on this machine; "auto" / "ray://HOST:10001" = an existing Ray cluster
CELL_CPUS = 1.0                                 # with CLUSTER: CPUs each cell reserves (a node runs as many cells at once as it has CPUs / CELL_CPUS)
LOCAL_CPUS = 0                                  # with CLUSTER="local": CPUs of the local cluster (0 = all of this machine's)
OUT_DIR = "sweeps/bert"                         # one sub-directory per cell, plus the report
DENSE_EVAL_EVERY = 50                           # dense runs evaluate this often (the time-to-accuracy curve for B3)
SETTINGS = ("SCRIPT", "TRAINERS", "RATES", "GRANULARITY", "SEEDS", "VARIANTS", "GRADUAL", "OUT_DIR", "DENSE_EVAL_EVERY",
            "CLUSTER", "CELL_CPUS", "LOCAL_CPUS")
VARIANT_NAMES = ("plain", "kd", "gradual", "kd+gradual")
# What the sweep sets for each cell itself: passed on, these would silently override every cell's own.
SWEEP_OWNS = {"--trainer": "--trainers", "--seed": "--seeds", "--pruning_rate": "--rates", "--teacher": "--variants=kd",
              "--gradual_updates": "--gradual and --variants=gradual", "--run_name": None, "--resume": None}


def cells(trainers, rates, seeds, dense_eval_every, granularity="weights", variants=("plain",), gradual=4,
          out=Path("sweeps/bert")):
    """(name, arguments) of every cell; the dense cell of a seed comes first: the kd variants distil from it."""
    structured = granularity != "weights"
    for seed in seeds:
        for trainer in sorted(trainers, key=lambda t: t != "dense"):
            dense = trainer == "dense"
            for variant in (["plain"] if dense else variants):
                for rate in ([None] if dense or structured else rates):
                    tag = "" if variant == "plain" else f"-{variant.replace('+', '-')}"
                    name = f"{trainer}{tag}-s{seed}" if rate is None else f"{trainer}{tag}-r{rate:g}-s{seed}"
                    args = [f"--trainer={trainer}", f"--seed={seed}"]
                    args += [f"--eval_every={dense_eval_every}"] if dense else []
                    args += [f"--granularity={granularity}"] if structured and not dense else []
                    args += [f"--pruning_rate={rate}"] if rate is not None else []
                    args += [f"--teacher={out / f'dense-s{seed}'}"] if "kd" in variant else []
                    args += [f"--gradual_updates={gradual}"] if "gradual" in variant else []
                    yield name, args


def main():
    """Entry point: check every cell's settings, run the grid (locally, or one Ray task per cell with CLUSTER,
    the dense cells first), then write the report (`pruning.studies.sweep_tables.write`). Bad settings exit with status 2;
    failed cells end in SystemExit naming them."""
    try:
        config, passed_on, script = settings.grid_settings(globals(), SETTINGS, owned=SWEEP_OWNS)
    except settings.ConfigError as e:
        settings.fail(e)
    trainer_names = [t.strip() for t in config["TRAINERS"].split(",") if t.strip()]
    for t in trainer_names:
        if t not in settings.trainer_names(script):
            settings.fail(f"unknown trainer {t!r} in --trainers; choose from {', '.join(settings.trainer_names(script))}")
    try:
        loop.check_granularity(config["GRANULARITY"])
        seeds = loop.seeds(config["SEEDS"])
        rates = [float(r) for r in config["RATES"].split(",") if r.strip()]
    except settings.ConfigError as e:
        settings.fail(e)
    except ValueError:
        rates = []
    if not rates:
        settings.fail(f"--rates={config['RATES']!r}: give at least one number, comma-separated")
    if config["DENSE_EVAL_EVERY"] < 1 or config["CELL_CPUS"] <= 0 or config["LOCAL_CPUS"] < 0:
        settings.fail("DENSE_EVAL_EVERY must be >= 1, CELL_CPUS > 0 and LOCAL_CPUS >= 0 (0 = all), got "
                        f"{config['DENSE_EVAL_EVERY']}, {config['CELL_CPUS']} and {config['LOCAL_CPUS']}")
    variants = [v.strip() for v in config["VARIANTS"].split(",") if v.strip()]
    wrong = [v for v in variants if v not in VARIANT_NAMES]
    if wrong or not variants:
        settings.fail(f"--variants={config['VARIANTS']}: give some of {', '.join(VARIANT_NAMES)}, comma-separated")
    if any("kd" in v for v in variants) and "dense" not in trainer_names:
        settings.fail("the kd variants distil from the dense cell of each seed: add dense to --trainers")
    out = Path(config["OUT_DIR"])
    plan = list(cells(trainer_names, rates, seeds, config["DENSE_EVAL_EVERY"], config["GRANULARITY"], variants,
                      config["GRADUAL"], out))
    try:  # every cell's whole configuration, and every cell already on disk made with it: before any run
        for name, args in plan:
            script.get("validate", checks.validate)(experiment.configure(script, [*args, *passed_on]))  # resnet.py, mlp.py: their own
        check_cells(config["SCRIPT"], out, [(n, [*a, *passed_on]) for n, a in plan])
    except settings.ConfigError as e:
        settings.fail(e)
    out.mkdir(parents=True, exist_ok=True)
    failed = []
    if config["CLUSTER"]:  # one Ray task per cell: the dense cells first (they teach the kd cells), then the rest
        waves = [[(n, [*a, *passed_on]) for n, a in plan if "--trainer=dense" in a],
                 [(n, [*a, *passed_on]) for n, a in plan if "--trainer=dense" not in a]]
        with tqdm(total=len(plan), desc="sweep", unit="run") as bar:
            def done(name, ok):
                bar.update()
                if not ok:
                    tqdm.write(f"{name} failed; see {out / (name + '.log')}")
            failed = run_on_ray(config["SCRIPT"], out, waves, config["CLUSTER"], config["CELL_CPUS"],
                                config["LOCAL_CPUS"], done)
    else:
        failed = loop.run_cells(config["SCRIPT"], out, [(n, [*a, *passed_on]) for n, a in plan], "sweep")
    try:
        sweep_tables.write(out)
    except (schema.SchemaError, sweep_tables.MixedTasks) as e:  # runs put into OUT_DIR by hand: no report
        loop.finish(failed)
        settings.fail(e)
    loop.finish(failed)


if __name__ == "__main__":
    main()
