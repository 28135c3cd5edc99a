"""One cell of a grid (sweep.py, lottery.py, allocate.py): one run of an experiment script in its own process.

A cell with results.json is skipped; a cell killed midway resumes from its newest checkpoint; one
killed before its first checkpoint starts again. So a grid can be stopped and re-run at any time.
Either way the cell on disk must have been made with the settings asked for now (`check_cell`):
a grid re-run with another setting is refused instead of keeping the old cells.
`run_on_ray` runs cells as Ray tasks, one per cell, on a local or an existing cluster: the same
cell, so the same skipping and resuming.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

from pruning.grid.processes import run_python
from pruning.run.checkpoint import run_checkpoints


def check_cell(script: str, out: Path, name: str, args: list[str]) -> None:
    """Refuse (pruning.run.checks.ConfigError) a cell whose run on disk, finished or resumable, was made
    with other settings than `args` now ask for: skipping or resuming it would keep another experiment
    under this grid's name. The settings of `python script ... *args` are those the script itself
    would use (its constants, then `args`), compared as `checks.check_continuation` compares them."""
    run_dir = Path(out) / name
    if not ((run_dir / "results.json").exists() or run_checkpoints(run_dir)):
        return  # nothing there that would be kept
    from pruning.run import checks, experiment
    requested = experiment.configure(_script_namespace(script), [f"--out_dir={out}", f"--run_name={name}", *args])
    checks.check_continuation(run_dir, {**checks.recordable(requested), "WORLD_SIZE": 1},
                              f"Run the grid into another --out_dir, or delete {run_dir} to run this cell again.")


def check_cells(script: str, out: Path, cells) -> None:
    """`check_cell` for every (name, args) of a grid, before its first run."""
    for name, args in cells:
        check_cell(script, out, name, args)


def _script_namespace(script: str) -> dict:
    return _run_script(str(Path(script).resolve()))


@functools.lru_cache(maxsize=None)
def _run_script(path: str) -> dict:
    import runpy
    return runpy.run_path(path)  # once per script: its constants and the trainers it defines


def run_cell(script: str, out: Path, name: str, args: list[str], fork: bool = True) -> bool:
    """Run `python script --out_dir=out --run_name=name *args` unless it has finished; its output is
    appended to out/name.log. Returns whether the cell has finished. A finished cell's checkpoints
    are deleted (the final model is in model/; they only take disk space). A cell on disk that was
    made with other settings is refused (`check_cell`), never skipped or resumed. The cell's process
    is forked from the preloaded server of `pruning.grid.processes` (its imports are done once per grid),
    or with `fork=False` started as a new interpreter."""
    run_dir = out / name
    check_cell(script, out, name, args)
    if (run_dir / "results.json").exists():
        return True
    resume = []
    if run_dir.exists():
        if run_checkpoints(run_dir):
            resume = ["--resume=true"]
        else:  # killed (or out of disk) before its first complete checkpoint: nothing to keep
            shutil.rmtree(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    argv = [f"--out_dir={out}", f"--run_name={name}", *args, *resume]
    if fork:
        status = run_python(script, argv, stdout=out / f"{name}.log")
    else:
        with open(out / f"{name}.log", "a") as log:
            status = subprocess.run([sys.executable, script, *argv], stdout=log, stderr=subprocess.STDOUT).returncode
    if status != 0:
        return False
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return True


def run_on_ray(script: str, out: Path, waves: list[list[tuple[str, list[str]]]], address: str = "local",
               cpus_per_cell: float = 1.0, local_cpus: int = 0, on_done=None) -> list[str]:
    """Run the cells as Ray tasks, wave after wave (a wave's cells may need the previous wave's, as a
    distilled cell needs its teacher); returns the names of the cells that failed.

    `address` "local" starts a cluster on this machine (`local_cpus` CPUs, 0 = all); anything else
    ("auto", "ray://host:10001") joins an existing one, whose nodes must hold this repository and its
    environment at the same path and see `out` on a shared filesystem. `on_done(name, ok)` is called
    as cells finish (a progress bar).
    """
    import ray
    repo = str(Path(script).resolve().parent)
    env = {"env_vars": {"PYTHONPATH": repo, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "")}}
    if address == "local":
        ray.init(num_cpus=local_cpus or None, include_dashboard=False, runtime_env=env, log_to_driver=False)
    else:
        ray.init(address=address, runtime_env=env, log_to_driver=False)
    try:
        cell = ray.remote(num_cpus=cpus_per_cell, max_retries=0)(_run_cell_in)
        here, failed = os.getcwd(), []  # relative paths in the arguments mean what they mean here
        for wave in waves:
            pending = {cell.remote(here, script, out, name, args): name for name, args in wave}
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                name = pending.pop(done[0])
                try:
                    ok = ray.get(done[0])
                except ray.exceptions.RayError:  # the worker died: the cell resumes on the next run
                    ok = False
                if not ok:
                    failed.append(name)
                if on_done:
                    on_done(name, ok)
        return failed
    finally:
        ray.shutdown()


def _run_cell_in(cwd: str, script: str, out: Path, name: str, args: list[str]) -> bool:
    os.chdir(cwd)
    return run_cell(script, Path(out), name, args, fork=False)  # a Ray worker is not a script's __main__
