"""CPU and memory of a process from /proc (Linux), so the benchmark needs no extra dependency."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sample:
    wall_s: float
    cpu_s: float
    rss_bytes: int


def sample(pid: int) -> Sample:
    """Cumulative user+system CPU seconds and the current RSS of ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14, 15 of proc(5))
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
                break
    return Sample(time.monotonic(), cpu, rss)


def runqueue_wait_s(pid: int) -> float:
    """Seconds ``pid``'s threads have spent runnable but waiting for a CPU (the second field of each thread's
    /proc/<pid>/task/<tid>/schedstat): how much a process was starved by the others on a saturated machine."""
    waited = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                waited += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile, or a kernel without schedstats
    return waited / 1e9


def cpu_share(first: Sample, last: Sample) -> float:
    """Fraction of one core used between two samples."""
    wall = last.wall_s - first.wall_s
    return (last.cpu_s - first.cpu_s) / wall if wall > 0 else 0.0
