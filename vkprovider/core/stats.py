"""A vnode's resource usage as a kubelet shows it: ``/metrics/resource`` (what metrics-server reads for ``kubectl top
node``) and ``/stats/summary``, from the last ``health`` answers of its base. Pure: the kubelet API serves these.

Only what arklet measures, never a made-up number:

- CPU: ``node_cpu_usage_seconds_total`` is a counter, and arklet's ``cpu`` figures already are one: the machine's
  CPU ticks since arklet started, with the user and system shares of them (``core.model.CpuTicks``). Busy CPU time
  = ticks x (user % + system %) / 100, rounded to the millisecond (the ticks are whole milliseconds; the rounding
  keeps a counter that did not move from going down by a float's last bit, which metrics-server would refuse as
  "unexpected decrease"). Nothing is integrated in vkprovider: the counter lives in the base, so it stays the same
  across a vkprovider restart or a hand-over to another replica, and starts again from 0 only when the base
  restarts (metrics-server then skips one window, as after a node reboot). The machine is arklet's: in a container
  /proc/stat counts the host's CPUs, as ``cpu.count`` (the vnode's CPU capacity) does.
- Memory: ``node_memory_working_set_bytes`` = the JVM's used heap + used non-heap (Metaspace, code cache,
  compressed class space), as arklet's MemoryMXBean figures give them; the used Metaspace stands in for non-heap
  when a base does not send it. Off-heap buffers and thread stacks are not measured by arklet and not counted.
- Time: each figure carries the time its answer arrived (``Reading.at``), not the time of the scrape, so a scrape
  served from the same answer twice gives metrics-server the same point (it keeps it once), and the CPU rate is
  exactly the busy time between two answers over the time between them.
- Module pods: arklet measures nothing per biz (every biz shares the base's JVM), so no ``container_*`` or
  ``pod_*`` series and no pod in the summary: ``kubectl top pod`` has no figures for module pods, and says so.

A base that did not send CPU or memory gets no node series and ``resource_scrape_error 1``: metrics-server leaves
the vnode out rather than show half a figure.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from vkprovider.core.model import BaseHealth

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_HELP = {
    "node_cpu_usage_seconds_total": ("counter", "[STABLE] Cumulative cpu time consumed by the node in core-seconds"),
    "node_memory_working_set_bytes": ("gauge", "[STABLE] Current working set of the node in bytes"),
    "scrape_error": ("gauge", "[ALPHA] 1 if there was an error while getting container metrics, 0 otherwise"),
    "resource_scrape_error": ("gauge",
                              "[STABLE] 1 if there was an error while getting container metrics, 0 otherwise"),
}


@dataclass(frozen=True, slots=True)
class Reading:
    """One ``health`` answer of a base and when it arrived (wall clock, seconds since the epoch)."""

    at: float
    health: BaseHealth


def cpu_seconds(health: BaseHealth) -> float | None:
    """The machine's busy CPU time since arklet started, in core-seconds (see the module docstring)."""
    ticks = health.cpu
    if ticks is None:
        return None
    return round(ticks.total_ms * (ticks.user_pct + ticks.system_pct) / 100.0) / 1000.0


def working_set_bytes(health: BaseHealth) -> int | None:
    """The JVM's used heap + used non-heap (the used Metaspace when non-heap is not sent); None without heap."""
    if health.heap_used_bytes is None:
        return None
    rest = health.non_heap_used_bytes if health.non_heap_used_bytes is not None else health.memory_used_bytes
    return health.heap_used_bytes + (rest or 0)


def usage_nano_cores(latest: Reading, earlier: Reading | None) -> int | None:
    """The CPU rate between two answers (the kubelet's ``usageNanoCores``); None without two usable ones."""
    if earlier is None or latest.at <= earlier.at:
        return None
    now, before = cpu_seconds(latest.health), cpu_seconds(earlier.health)
    if now is None or before is None or now < before:  # a restarted base counts from 0 again
        return None
    return round((now - before) / (latest.at - earlier.at) * 1e9)


def refresh_due(latest: Reading | None, now: float, max_age_s: float) -> bool:
    """Whether a scrape should ask the base again before answering: no answer yet, or one older than ``max_age_s``."""
    return latest is None or now - latest.at > max_age_s


def _number(value: float | int) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


def resource_metrics(latest: Reading | None) -> str:
    """The kubelet's ``/metrics/resource`` text for one vnode (Prometheus text format 0.0.4)."""
    lines: list[str] = []

    def series(name: str, value: float | int, at: float | None) -> None:
        kind, text = _HELP[name]
        lines.extend((f"# HELP {name} {text}", f"# TYPE {name} {kind}"))
        lines.append(f"{name} {_number(value)}" + (f" {round(at * 1000)}" if at is not None else ""))

    complete = False
    if latest is not None:
        cpu, memory = cpu_seconds(latest.health), working_set_bytes(latest.health)
        if cpu is not None and memory is not None:
            series("node_cpu_usage_seconds_total", cpu, latest.at)
            series("node_memory_working_set_bytes", memory, latest.at)
            complete = True
    series("scrape_error", 0 if complete else 1, None)
    series("resource_scrape_error", 0 if complete else 1, None)
    return "\n".join(lines) + "\n"


def _time(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def stats_summary(node: str, latest: Reading, earlier: Reading | None) -> dict[str, Any]:
    """The kubelet's ``/stats/summary`` (stats/v1alpha1 ``Summary``) for one vnode: node CPU and memory only."""
    health = latest.health
    stats: dict[str, Any] = {
        "nodeName": node,
        "systemContainers": [],
        "startTime": _time(latest.at - health.uptime_s) if health.uptime_s is not None else None,
    }
    cpu = cpu_seconds(health)
    if cpu is not None:
        stats["cpu"] = {"time": _time(latest.at), "usageCoreNanoSeconds": round(cpu * 1e9)}
        rate = usage_nano_cores(latest, earlier)
        if rate is not None:
            stats["cpu"]["usageNanoCores"] = rate
    memory = working_set_bytes(health)
    if memory is not None:
        stats["memory"] = {"time": _time(latest.at), "workingSetBytes": memory}
    return {"node": stats, "pods": []}
