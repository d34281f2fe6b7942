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


def thread_waits_s(pid: int) -> dict[int, float]:
    """Seconds each live thread of ``pid`` has spent runnable but waiting for a CPU (the second field of its
    /proc/<pid>/task/<tid>/schedstat), by thread id. Each value only grows; a thread that ends takes its own with
    it, so a sum over threads can go back when one ends."""
    waits: dict[int, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                waits[int(tid)] = int(f.read().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile, or a kernel without schedstats
    return waits


def runqueue_wait_s(pid: int) -> float:
    """Seconds ``pid``'s live threads have spent runnable but waiting for a CPU: how much a process was starved by
    the others on a saturated machine. The bench's components keep their threads for their lifetime; a delta that
    a thread's end made negative is read as no wait (`bench.cores.cores_used`)."""
    return sum(thread_waits_s(pid).values())


def cpu_share(first: Sample, last: Sample) -> float:
    """Fraction of one core used between two samples."""
    wall = last.wall_s - first.wall_s
    return (last.cpu_s - first.cpu_s) / wall if wall > 0 else 0.0
