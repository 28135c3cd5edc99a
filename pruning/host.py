"""Facts of the machine a process runs on, with the standard library only: the CPU's name and this process's peak
memory. Used by training runs (their cost log), deployments (a variant's fresh process) and model cards alike.
"""
from __future__ import annotations

import platform
import resource
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM), in MB (2**20 bytes). Not ru_maxrss: Linux carries that
    over from the parent across fork and exec, so a child would report at least its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: the best there is
