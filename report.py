"""Tables and plots of a sweep directory: results.csv, results.md and the PNGs.

    python report.py sweeps/bert                     # the directory of the sweep (or --sweep_dir=sweeps/bert)
    python report.py --sweep_dir=sweeps/bert --plots=false
    python report.py --help                          # every setting, its default and meaning

One row per run and mean ± std over seeds, paired by seed with the dense run (the statistics are
`pruning.studies.stats`); heads + neurons runs get their own tables (`pruning.studies.sweep_tables`). Every score is the
task's headline metric, read from the runs' results.json and named in every header and axis (SST-2
accuracy, MRPC and QQP F1, CoLA Matthews correlation, STS-B Pearson r; the task's other metrics get
columns of their own). The plots (`pruning.studies.sweep_plots`) draw every criterion found among the runs:
HEADLINE_vs_sparsity.png (accuracy_vs_sparsity.png for SST-2), mask_distance.png, time_breakdown.png,
and cost_vs_step.png, every run's dev score, active parameters and training FLOPs by step. A directory
whose runs are of several tasks is refused, naming them (one table per task: report each task's runs
from a directory of their own). sweep.py writes the same at its end.
"""
from pruning.settings import preflight

if __name__ == "__main__":  # --help (and a misspelt setting) answered before torch is imported
    preflight(__file__)

import sys
from pathlib import Path

from pruning import settings
from pruning.run import experiment, schema
from pruning.studies import sweep_tables

SWEEP_DIR = "sweeps/bert"      # the sweep directory: one sub-directory per run, each with its results.json
PATIENCES = "2,3"              # early-stopping patiences (evaluations) to replay on runs that trained their whole budget
PLOTS = True                   # draw the PNGs beside results.md (false: the tables only)

if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv and not argv[0].startswith("-"):   # `python report.py sweeps/bert`: the directory, without its --key
        argv = [f"--sweep_dir={argv[0]}", *argv[1:]]
    try:
        config = experiment.configure(globals(), argv)
        patiences = tuple(int(p) for p in config["PATIENCES"].split(",") if p.strip())
    except settings.ConfigError as e:
        settings.fail(e)
    except ValueError:
        settings.fail(f"--patiences={config['PATIENCES']!r}: expected whole numbers >= 1, comma-separated")
    if not Path(config["SWEEP_DIR"]).is_dir() or any(p < 1 for p in patiences):
        settings.fail(f"--sweep_dir={config['SWEEP_DIR']} must be a sweep directory (sweep.py's OUT_DIR) and "
                        f"--patiences whole numbers >= 1, comma-separated; got {config['PATIENCES']!r}")
    try:
        sweep_tables.write(Path(config["SWEEP_DIR"]), patiences, config["PLOTS"])
    except (schema.SchemaError, sweep_tables.MixedTasks) as e:  # a results.json too new or malformed, or runs of two tasks
        settings.fail(e)
