"""The PNG chart of each scenario (``bench/results/<scenario>.png``), drawn from what the scenario recorded.

Why it exists: a table gives the end figures; a chart shows how a run got there (how fast pods turned Running, when
RSS grew, whether CPU at rest is flat), which is what one looks at when a figure moved. Each function takes the
path and the recorded series, so a scenario only records; matplotlib is imported when a chart is drawn (Agg, no
display), never for a run that fails before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.metrics import percentile

MB = 1024 * 1024


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_chart(fig: Any, path: Path) -> None:
    """Lay out, write as PNG and release one figure."""
    plt = pyplot()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def limit(path: Path, creates_per_s: float, patches_per_s: float, timeline: list[tuple[float, int]],
          pods: int) -> None:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.bar(["creates/s", "patches/s"], [creates_per_s, patches_per_s], color="#4c72b0")
    left.set_title("kube-apiserver write throughput (raw asyncio client)")
    right.plot([t for t, _ in timeline], [n for _, n in timeline], color="#dd8452")
    right.set_title(f"scheduler-only: {pods} pods bound on fake nodes")
    right.set_xlabel("seconds since the first Deployment")
    right.set_ylabel("pods bound")
    save_chart(fig, path)


def register(path: Path, timeline: list[tuple[float, int]], bases: int, elapsed: float) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([t for t, _ in timeline], [n for _, n in timeline])
    ax.axhline(bases, color="grey", linestyle=":")
    ax.set_title(f"{bases} bases -> Ready vnodes ({elapsed:.1f}s)")
    ax.set_xlabel("seconds since the simulator started")
    ax.set_ylabel("Ready vnodes")
    save_chart(fig, path)


def burst(path: Path, latencies: list[float], pods: int) -> None:
    plt = pyplot()
    fig, a = plt.subplots(1, 1, figsize=(6, 4))
    a.hist(latencies, bins=50)
    a.set_title(f"{pods} pods: bound -> Running (p50 {percentile(latencies, 50):.2f}s, "
                f"p99 {percentile(latencies, 99):.2f}s)")
    a.set_xlabel("seconds")
    save_chart(fig, path)


def rollout(path: Path, timeline: list[tuple[float, int, int, int]], latencies: list[float], pods: int,
            total: float, scheduler_only_s: float) -> None:
    plt = pyplot()
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4))
    ts = [t for t, *_ in timeline]
    a.plot(ts, [x[1] for x in timeline], label="bound")
    a.plot(ts, [x[2] for x in timeline], label="Running+Ready")
    a.axvline(scheduler_only_s, color="grey", linestyle=":", label="scheduler-only time")
    a.set_title(f"{pods} module pods ({total:.1f}s)")
    a.set_xlabel("seconds since the first Deployment")
    a.legend()
    b.hist(latencies, bins=50)
    b.set_title(f"bound -> Running (p50 {percentile(latencies, 50):.2f}s, "
                f"p99 {percentile(latencies, 99):.2f}s)")
    b.set_xlabel("seconds")
    c.plot([x[2] for x in timeline], [x[3] / MB for x in timeline], ".")
    c.set_title("vkprovider RSS vs running pods")
    c.set_xlabel("running module pods")
    c.set_ylabel("MiB")
    save_chart(fig, path)


def steady(path: Path, timeline: list[tuple[float, float, float]], bases: int) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot([t for t, _, _ in timeline], [c * 100 for _, c, _ in timeline], label="CPU % of one core")
    ax.set_xlabel("seconds")
    ax.set_ylabel("% of one core")
    ax2 = ax.twinx()
    ax2.plot([t for t, _, _ in timeline], [r for _, _, r in timeline], color="#dd8452", label="RSS MiB")
    ax2.set_ylabel("RSS MiB")
    ax.set_title(f"vkprovider at rest with {bases} bases")
    fig.legend(loc="upper right")
    save_chart(fig, path)


def churn(path: Path, timeline: list[tuple[float, int]], pods: int, total: float, installs: int,
          uninstalls: int) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([t for t, _ in timeline], [n for _, n in timeline])
    ax.axhline(pods, color="grey", linestyle=":")
    ax.set_title(f"rolling update of {pods} module pods ({total:.1f}s; {installs} installs, "
                 f"{uninstalls} uninstalls)")
    ax.set_xlabel("seconds since the first patch")
    ax.set_ylabel("pods Running on 0.0.2")
    save_chart(fig, path)
