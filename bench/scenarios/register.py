"""``register``: N simulated bases -> N Ready vnodes: the time, vkprovider's API writes per node, its RSS per base.

Why it exists: a fleet's first contact (a restart of every base, or vkprovider's own) is the largest burst of work
vkprovider gets, and issue 17 set its targets (all Ready within 5 s at 1,000 bases, at most 3.5 writes a node). It
starts the vkprovider and the simulator the later scenarios use.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import time

from bench import charts, metrics
from bench.context import LOGS, Bench
from bench.objects import ENV
from bench.report import Result, log, target
from bench.watch import NodeWatch, running, until
from tests import promtext
from tests.integration.harness import SimProcess

MB = 1024 * 1024


async def run(b: Bench) -> Result:
    result = Result("register", dict(b.params))
    b.provider = provider = b.provider_process(ENV, "vkprovider")
    await provider.start()
    idle = b.provider_sample()
    writes0 = metrics.provider_writes(await b.provider_metrics())
    by_kind0 = metrics.apiserver_writes(await b.apiserver_metrics())
    events0 = await b.event_counts()
    watch = NodeWatch(b.kube, f"virtual-kubelet.koupleless.io/env={ENV}")
    profiler = b.start_profile(30, "register") if b.args.profile else None
    timeline: list[tuple[float, int]] = []
    async with running(watch.informer):
        cpu_before = {**b.component_cpu(), "simulator": 0.0}
        start = time.monotonic()
        b.sim = SimProcess(provider.endpoint, "--bases", str(b.bases), "--identity-prefix", "bench",
                           "--base-version", "1.1.1", "--install-latency", "0", "--uninstall-latency", "0",
                           "--heartbeat-interval", str(b.args.heartbeat_interval),
                           "--heartbeat-spread", "1", name="bench-sim")
        b.sim.log_path = LOGS / "sim.log"
        await b.sim.start(timeout_s=300)
        log(f"register: simulator up with {b.bases} bases after {time.monotonic() - start:.1f}s")
        done = await until(lambda: len(watch.ready_at) >= b.bases, b.args.timeout, "all vnodes Ready",
                           tick=lambda: timeline.append((time.monotonic() - start, len(watch.ready_at))))
    elapsed = done - start
    cores = b.cores_used_since(cpu_before, elapsed)
    await asyncio.sleep(2)
    if profiler is not None:
        profiler.send_signal(signal.SIGINT)  # py-spy writes what it sampled so far on an interrupt
    writes = metrics.provider_writes(await b.provider_metrics()) - writes0
    after = b.provider_sample()
    b.rss_bases_only = after.rss_bytes
    result.metrics.update({
        "time_to_all_ready_s": round(elapsed, 2),
        "api_writes": writes,
        "api_writes_per_node": round(writes / b.bases, 2),
        "provider_rss_idle_mb": round(idle.rss_bytes / MB, 1),
        "provider_rss_mb": round(after.rss_bytes / MB, 1),
        "provider_rss_per_base_kb": round((after.rss_bytes - idle.rss_bytes) / b.bases / 1024, 1),
        "provider_cpu_s": round(after.cpu_s - idle.cpu_s, 2),
        **cores,
    })
    by_kind = metrics.apiserver_writes(await b.apiserver_metrics())
    result.metrics["apiserver_writes_per_node"] = {
        k: round(v, 2) for k, v in metrics.writes_between(by_kind0, by_kind, 1.0, b.bases).items()}
    result.metrics["events"] = metrics.events_between(events0, await b.event_counts())
    result.metrics["provider_node_writes"] = promtext.by_label(await b.provider_metrics(),
                                                               "vkprovider_node_writes_total", "kind")
    if profiler is not None:
        result.metrics["profile_top"] = await b.finish_profile(profiler, "register")
    # the controller-manager's share of registration (TTL annotations, taint passes): done before the rollout
    result.metrics["control_plane_settled_s"] = await b.settle_nodes(f"virtual-kubelet.koupleless.io/env={ENV}")
    result.targets += [target("time_to_all_ready_s", elapsed, 5),  # issue 17's targets
                       target("api_writes_per_node", writes / b.bases, 3.5)]
    log(f"register: {result.metrics}")
    result.chart = functools.partial(charts.register, timeline=timeline, bases=b.bases, elapsed=elapsed)
    return result
