"""Whose CPU a scenario used: every process's cores, its run-queue wait, and the control plane's floor; and pinning
processes to cores for ``--split-cores``.

Why it exists: on two shared cores a scenario's time depends on who else wants the CPU. Each scenario reports every
process's cores (``cores_<name>``) and how long it was ready to run but had no CPU (``runq_wait_<name>``), so a
reader sees who uses the machine and who is slowed by the others on it; ``--split-cores`` gives the control plane
a core of its own to take that out. The rules: waiting is not using (``cores_all`` sums CPU only), and a wait that a
thread's end made go back is no wait.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

from bench.procstat import runqueue_wait_s, sample

CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")  # their pid files' names
RUNQ = "runq:"  # component_cpu's key prefix for a component's run-queue wait (seconds), next to its CPU seconds


def control_plane_pids(cluster_dir: Path) -> dict[str, int]:
    """The local control plane's processes by name, from its pid files (its watchdog left out)."""
    return {p.stem: int(p.read_text()) for p in (cluster_dir / "pids").glob("*.pid") if p.stem != "watchdog"}


def component_cpu(pids: dict[str, int]) -> dict[str, float]:
    """Cumulative CPU seconds and run-queue wait (``RUNQ`` + name) of every process named: where the cores go."""
    found = {}
    for name, pid in pids.items():
        try:
            found[name] = sample(pid).cpu_s
            found[RUNQ + name] = runqueue_wait_s(pid)
        except OSError:
            continue
    return found


def cores_used(before: dict[str, float], after: dict[str, float], wall_s: float) -> dict[str, float]:
    """Cores each component used between two `component_cpu` readings (2.0 = the whole machine)."""
    both = [n for n in after if n in before and wall_s > 0]
    used = {f"cores_{n}": round((after[n] - before[n]) / wall_s, 2) for n in both if not n.startswith(RUNQ)}
    used["cores_all"] = round(sum(used.values()), 2)
    # Cores' worth of time each component was ready to run but waited for a CPU: a process that waits as long
    # as it runs does its work at half the speed a free core would give it.
    used |= {f"runq_wait_{n.removeprefix(RUNQ)}": round(max(0.0, after[n] - before[n]) / wall_s, 2)
             for n in both if n.startswith(RUNQ)}  # a thread that ended took its wait with it: never below 0
    # The control plane's CPU seconds spread over every core: the shortest this scenario could take on this
    # machine had vkprovider and the simulated bases cost nothing (the control plane still serves their
    # writes). A floor above a time target means the control plane, not vkprovider, is what stops it.
    control_plane = sum(after[n] - before[n] for n in CONTROL_PLANE if n in after and n in before)
    used["control_plane_cpu_s"] = round(control_plane, 1)
    used["cores_control_plane"] = round(control_plane / wall_s, 2) if wall_s > 0 else math.nan
    used["control_plane_floor_s"] = round(control_plane / (os.cpu_count() or 1), 2)
    return used


def pin_threads(pid: int, cpus: set[int]) -> None:
    """Every thread of a process onto ``cpus`` (a process's affinity is its threads'; new ones inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(task.name), cpus)
