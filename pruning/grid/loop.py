"""What the grid scripts (sweep.py, lottery.py, allocate.py) share: their seeds and granularity
settings, read the same way, and the loop that runs their cells one after another.

Each cell is one run of the experiment script in its own process (`pruning.grid.cells.run_cell`: skipped
when finished, resumed when killed, refused when made with other settings).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

from tqdm import tqdm

from pruning.core.units import GRANULARITIES
from pruning.grid.cells import run_cell
from pruning.settings import ConfigError


def seeds(text: str) -> list[int]:
    """SEEDS ("42,43,44") as a list of distinct integers. Raises ConfigError for anything else."""
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds={text!r}: give distinct integers, comma-separated") from None
    if not values or len(set(values)) != len(values):
        raise ConfigError(f"--seeds={text!r}: give distinct integers, comma-separated")
    return values


def check_granularity(granularity: str) -> None:
    """Raises ConfigError unless `granularity` is one the runs know ("weights", "heads+neurons")."""
    if granularity not in GRANULARITIES:
        raise ConfigError(f"unknown --granularity={granularity}; choose one of {', '.join(GRANULARITIES)}")


def run_cells(script: str, out: Path, cells: Iterable[tuple[str, list[str]]], desc: str,
              before: Callable[[str, list[str]], bool] | None = None) -> list[str]:
    """Run every (name, args) cell in order with a progress bar; returns the names of the cells that
    failed (their output is in out/NAME.log). `before(name, failed)` runs first and may skip the cell
    (False), e.g. when a cell it needs has failed. A cell on disk made with other settings raises
    ConfigError (`run_cell`)."""
    failed = []
    with tqdm(list(cells), desc=desc, unit="run") as bar:
        for name, args in bar:
            bar.set_postfix_str(name)
            if before is not None and not before(name, failed):
                continue
            if not run_cell(script, out, name, args):
                failed.append(name)
                tqdm.write(f"{name} failed; see {out / (name + '.log')}")
    return failed


def finish(failed: list[str]) -> None:
    """End a grid whose cells failed: SystemExit naming them (exit status 1)."""
    if failed:
        raise SystemExit(f"{len(failed)} run(s) failed: {', '.join(failed)}")
