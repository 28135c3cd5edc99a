"""Energy per inference from the machine's own counters, or a plain statement that it has none.

The counter is Intel's RAPL (running average power limit) as Linux's powercap exposes it:
/sys/class/powercap/intel-rapl:N/energy_uj, a cumulative count in microjoules per CPU package (AMD Zen CPUs
expose theirs under the same name on recent kernels), wrapping at max_energy_range_uj. It is read directly:
codecarbon and zeus read these same files, and pull in a dozen packages (pandas, pynvml, a web client) for
what is a subtraction here. compress.py runs its variants on the CPU, so NVML (GPU energy) has nothing to
count. A package counter counts everything that runs on the package, the other processes of a shared
machine included: figures are only comparable when the machine is otherwise idle, and a busy round can only
add joules, never remove them (compress.py keeps the least of its rounds).
Nothing is estimated: where no counter can be read, `find_counter` says why and the tables say
"no energy counter".
"""
from __future__ import annotations

from pathlib import Path

POWERCAP = Path("/sys/class/powercap")
NO_COUNTER = "no energy counter"


class RaplCounter:
    """The packages' RAPL energy counters (top-level zones intel-rapl:N only: their subzones, core and
    uncore and dram, are parts of the package's count or outside it, and would count twice).

    `read()` gives the raw counts (microjoules, one per zone); `joules(before, after)` the energy between
    two readings, a counter that wrapped once in between counted as running on from its maximum."""

    def __init__(self, zones: list[Path]):
        self.zones = zones
        self.ranges = [int((z / "max_energy_range_uj").read_text()) for z in zones]
        self.names = [(z / "name").read_text().strip() if (z / "name").exists() else z.name for z in zones]

    def read(self) -> list[int]:
        return [int((z / "energy_uj").read_text()) for z in self.zones]

    def joules(self, before: list[int], after: list[int]) -> float:
        total = 0
        for b, a, top in zip(before, after, self.ranges):
            total += a - b if a >= b else a + top - b  # wrapped past max_energy_range_uj
        return total / 1e6

    def describe(self) -> str:
        return f"RAPL ({', '.join(self.names)})"


def find_counter(root: Path = POWERCAP) -> tuple[RaplCounter | None, str]:
    """(the counter, its description) when `root` has readable RAPL package zones, else (None, why not)."""
    zones = sorted(p for p in Path(root).glob("intel-rapl:*") if p.name.count(":") == 1) if Path(root).is_dir() \
        else []
    if not zones:
        return None, f"{NO_COUNTER} (no RAPL zones under {root})"
    try:
        counter = RaplCounter(zones)
        counter.read()
    except (OSError, ValueError) as e:  # energy_uj is root-only on most kernels since 2020 (CVE-2020-8694)
        return None, f"{NO_COUNTER} (RAPL present but not readable: {e})"
    return counter, counter.describe()


def joules_per_thousand(joules: float, sentences: int) -> float:
    """Joules per 1,000 sentences from the `joules` spent on `sentences` of them. Raises ValueError
    for no sentences."""
    if sentences <= 0:
        raise ValueError(f"energy per sentence needs at least one sentence, got {sentences}")
    return 1000 * joules / sentences
