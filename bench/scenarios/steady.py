"""``steady``: idle bases (and the rollout's module pods) -> vkprovider's CPU share, RSS, API writes per node per
minute, and its CPU per network exchange.

Why it exists: most of a cluster's life is at rest, so what vkprovider costs then is paid all the time; issue 17's
targets are its CPU (10 % of a core), RSS (250 MiB) and API writes (6.1 per node per minute). "At rest" starts
once vkprovider has posted no Event for a while: a rollout's Events drain at the recorder's pace for minutes.
"""

from __future__ import annotations

import asyncio
import functools
import time

from bench import charts, metrics
from bench.context import Bench
from bench.procstat import cpu_share, sample
from bench.report import Result, log, target
from tests import promtext

MB = 1024 * 1024


async def events_settled(b: Bench, quiet_s: float = 5.0, timeout_s: float = 300.0) -> float:
    """Wait until vkprovider has posted no Event for ``quiet_s``; returns how long that took."""
    started = time.monotonic()

    async def posted() -> float:
        return promtext.total(await b.provider_metrics(), "vkprovider_events_posted_total")

    last, since = await posted(), time.monotonic()
    while time.monotonic() - since < quiet_s and time.monotonic() - started < timeout_s:
        await asyncio.sleep(1.0)
        now_posted = await posted()
        if now_posted != last:
            last, since = now_posted, time.monotonic()
    return round(time.monotonic() - started, 1)


async def run(b: Bench) -> Result:
    duration = float(b.args.steady_seconds)
    pods = len(b.clock.alive) if b.clock is not None else 0
    result = Result("steady", {**b.params, "module_pods": pods})
    result.metrics["events_drained_after_s"] = await events_settled(b)
    log(f"steady: {b.bases} bases idle for {duration:.0f}s")
    writes0 = metrics.provider_writes(await b.provider_metrics())
    by_kind0 = metrics.apiserver_writes(await b.apiserver_metrics())
    events0 = await b.event_counts()
    profiler = b.start_profile(duration, "steady") if b.args.profile else None
    first = b.provider_sample()
    exchanges0 = metrics.exchanges(await b.provider_metrics())
    cpu_before = b.component_cpu()
    sim_first = sample(b.sim.proc.pid) if b.sim and b.sim.proc else None
    timeline: list[tuple[float, float, float]] = []
    prev = first
    while time.monotonic() - first.wall_s < duration:
        await asyncio.sleep(5)
        cur = b.provider_sample()
        timeline.append((cur.wall_s - first.wall_s, cpu_share(prev, cur), cur.rss_bytes / MB))
        prev = cur
    last = b.provider_sample()
    wall_s = last.wall_s - first.wall_s
    cores = b.cores_used_since(cpu_before, wall_s)
    exchanges1 = metrics.exchanges(await b.provider_metrics())
    per_s = {k: round((exchanges1[k] - exchanges0[k]) / wall_s, 1) for k in exchanges1}
    writes = metrics.provider_writes(await b.provider_metrics()) - writes0
    share = cpu_share(first, last)
    per_node_min = writes / b.bases / (wall_s / 60)
    by_kind = metrics.writes_between(by_kind0, metrics.apiserver_writes(await b.apiserver_metrics()), wall_s / 60,
                                     b.bases)
    result.metrics.update({
        "provider_cpu_share": round(share, 4),
        "provider_rss_mb": round(last.rss_bytes / MB, 1),
        "api_writes": writes,
        "api_writes_per_node_per_min": round(per_node_min, 2),
        "apiserver_writes_per_node_per_min": by_kind,  # every client: where the writes go
        "events": metrics.events_between(events0, await b.event_counts()),
        # Every request sent or received costs the process about the same: CPU per exchange says whether a
        # change made vkprovider do less per exchange or merely fewer exchanges.
        "exchanges_per_s": per_s,
        "provider_cpu_ms_per_exchange": round(1000 * share / max(sum(per_s.values()), 1e-9), 3),
        **cores,
    })
    if sim_first is not None and b.sim and b.sim.proc:
        sim_share = cpu_share(sim_first, sample(b.sim.proc.pid))
        result.metrics["simulator_cpu_share"] = round(sim_share, 4)
        # The simulated bases answer the same exchanges with the same code in every run: vkprovider's CPU over
        # theirs compares runs on a machine whose speed varies (a slower machine raises both alike).
        result.metrics["provider_cpu_per_simulator_cpu"] = round(share / sim_share, 3) if sim_share else None
    if profiler is not None:  # py-spy ran for the whole idle period and has ended by itself
        result.metrics["profile_top"] = await b.finish_profile(profiler, "steady")
    result.targets += [
        target("provider_cpu_share", share, 0.05),  # issue 31's targets (issue 17's: 10 % and 250 MB)
        target("provider_rss_mb", last.rss_bytes / MB, 200),
        target("api_writes_per_node_per_min", per_node_min, 6.1),
    ]
    log(f"steady: {result.metrics}")
    result.chart = functools.partial(charts.steady, timeline=timeline, bases=b.bases)
    return result
