"""Tables and plots of a sweep directory: results.csv, results.md and the PNGs.

    python report.py sweeps/bert                     # the directory of the sweep (or --sweep_dir=sweeps/bert)
    python report.py --sweep_dir=sweeps/bert --plots=false
    python report.py --help                          # every setting, its default and meaning

One row per run and mean ± std over seeds, paired by seed with the dense run (the statistics are
`pruning.stats`); heads + neurons runs get their own tables (`pruning.tables`). The plots
(`pruning.plots`) draw every criterion found among the runs; `cost_vs_step.png` overlays every run's
dev accuracy, active parameters and training FLOPs by step. sweep.py writes the same at its end.
"""
import sys
from pathlib import Path

from pruning import experiment, schema, tables

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
    except experiment.ConfigError as e:
        experiment.fail(e)
    except ValueError:
        experiment.fail(f"--patiences={config['PATIENCES']!r}: expected whole numbers >= 1, comma-separated")
    if not Path(config["SWEEP_DIR"]).is_dir() or any(p < 1 for p in patiences):
        experiment.fail(f"--sweep_dir={config['SWEEP_DIR']} must be a sweep directory (sweep.py's OUT_DIR) and "
                        f"--patiences whole numbers >= 1, comma-separated; got {config['PATIENCES']!r}")
    try:
        tables.write(Path(config["SWEEP_DIR"]), patiences, config["PLOTS"])
    except schema.SchemaError as e:  # a results.json of a newer schema version, or malformed: it names the file
        experiment.fail(e)
