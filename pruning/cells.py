"""One cell of a grid (sweep.py, lottery.py): one run of an experiment script in its own process.

A cell with results.json is skipped; a cell killed midway resumes from its newest checkpoint; one
killed before its first checkpoint starts again. So a grid can be stopped and re-run at any time.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def run_cell(script: str, out: Path, name: str, args: list[str]) -> bool:
    """Run `python script --out_dir=out --run_name=name *args` unless it has finished; its output is
    appended to out/name.log. Returns whether the cell has finished. A finished cell's checkpoints
    are deleted (the final model is in model/; they only take disk space)."""
    run_dir = out / name
    if (run_dir / "results.json").exists():
        return True
    resume = []
    if run_dir.exists():
        if any((run_dir / "checkpoints").glob("checkpoint-*")):
            resume = ["--resume=true"]
        else:  # killed before its first checkpoint: nothing to keep
            shutil.rmtree(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, script, f"--out_dir={out}", f"--run_name={name}", *args, *resume]
    with open(out / f"{name}.log", "a") as log:
        if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
            return False
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return True
