"""``replicas``: one replica with 3R bases, then 3 replicas sharing the same bases and modules, then one SIGKILLed.

Why it exists: replicas split the vnodes by Lease, and each must then cost what its share costs (issue 31): a
replica caches the Nodes and module pods of the vnodes it holds, so the same load spread over 3 replicas must cost
each about a third. One replica registers 3R bases (R: --replica-bases) with --replica-modules modules each (a
DaemonSet per module); its CPU, RSS and watch events are measured over a window, without modules and with them.
Then 2 more replicas start behind the same round-robin endpoint (as a Service) and the vnodes are handed over by
rendezvous, R to each, and the first one restarted (a rolling update: a process keeps the memory it once
used); the same window per replica (targets: CPU and RSS at most 0.45x the single replica's; the
watch events per replica against its share). Then one replica is SIGKILLed: re-own p50/p99/max, Ready flips of
vnodes and pods, installs and uninstalls (targets: none of them). What one vnode and one module pod cost (CPU-ms
per vnode-minute, KB per vnode, KB per module pod, the idle replica's RSS) is what docs/performance.md projects
from. It runs last, on a cluster cleared of the earlier scenarios' modules, bases and vkprovider.
"""

from __future__ import annotations

import asyncio
import math
import signal
import subprocess
import time
from pathlib import Path

from bench import profile
from bench.context import LOGS, Bench
from bench.metrics import exchanges, percentile
from bench.objects import ENV as BENCH_ENV
from bench.objects import module_daemonset
from bench.procstat import cpu_share, sample
from bench.report import Result, log, target
from bench.watch import HolderWatch, ReadyFlips, running, until
from tests.integration.harness import ProviderProcess, SimProcess
from tests.integration.lb import RoundRobin
from tests.promtext import by_label

MB = 1024 * 1024
NAMES = ["replica-a", "replica-b", "replica-c"]
ENV = "benchr"
SETTLE_S = 15.0  # after a change (registration, modules, hand-overs) before a window is measured
WATCH_TYPES = ("ADDED", "MODIFIED", "DELETED")


async def retire_single_replica(b: Bench) -> None:
    """The earlier scenarios' modules, bases and vkprovider go, so the replicas are measured on a cluster that holds
    only their own objects."""
    if b.clock_task is not None:
        b.clock_task.cancel()
        b.clock_task = None
    if b.ns and b.provider is not None:
        log(f"replicas: deleting the earlier module pods ({b.ns}) first")
        await b.delete_namespace(b.ns)
        b.ns = ""
    for proc in (b.sim, b.provider):
        if proc is not None:
            proc.kill()
    b.sim = b.provider = None
    await b.delete_labelled(("/api/v1/nodes", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"),
                            f"virtual-kubelet.koupleless.io/env={BENCH_ENV}")


async def watch_events(proc: ProviderProcess) -> dict[str, float]:
    """Watch events (added, modified, deleted) the replica's informers received so far, by resource."""
    text = await proc.metrics()
    found: dict[str, float] = {}
    for kind in WATCH_TYPES:
        for resource, value in by_label(text, "vkprovider_informer_events_total", "resource", type=kind).items():
            found[resource] = found.get(resource, 0.0) + value
    return found


async def window(procs: dict[str, ProviderProcess], seconds: float) -> dict[str, dict[str, object]]:
    """Per process over ``seconds``: CPU share (of one core), RSS (MiB), watch events per second by resource, and
    its exchanges per second (API requests, heartbeats in, arklet calls: what its CPU is spent on)."""
    live = {n: p for n, p in procs.items() if p.proc is not None and p.proc.poll() is None}
    events0 = {n: await watch_events(p) for n, p in live.items()}
    exchanges0 = {n: exchanges(await p.metrics()) for n, p in live.items()}
    first = {n: sample(p.proc.pid) for n, p in live.items() if p.proc}
    await asyncio.sleep(seconds)
    last = {n: sample(p.proc.pid) for n, p in live.items() if p.proc}
    out: dict[str, dict[str, object]] = {}
    for name, proc in live.items():
        events1 = await watch_events(proc)
        exchanges1 = exchanges(await proc.metrics())
        wall = last[name].wall_s - first[name].wall_s
        rates = {r: round((v - events0[name].get(r, 0.0)) / wall, 2) for r, v in sorted(events1.items())}
        out[name] = {"cpu": round(cpu_share(first[name], last[name]), 4),
                     "rss_mb": round(last[name].rss_bytes / MB, 1),
                     "events_per_s": {r: v for r, v in rates.items() if v},
                     "events_per_s_all": round(sum(rates.values()), 2),
                     "exchanges_per_s": {k: round((v - exchanges0[name].get(k, 0.0)) / wall, 1)
                                         for k, v in exchanges1.items()}}
    return out


def per_exchange(measured: dict[str, object]) -> float | None:
    """CPU-ms per exchange (API request, heartbeat, arklet call, watch event) of one process over a window."""
    rates = measured["exchanges_per_s"]
    total = sum(float(v) for v in rates.values()) if isinstance(rates, dict) else 0.0
    return round(float(measured["cpu"]) * 1000 / total, 3) if total else None  # type: ignore[arg-type]


async def idle_replica(b: Bench, seconds: float = 20.0) -> tuple[float, float]:
    """RSS (MiB) and CPU share of a replica serving an ENV with no bases, over ``seconds`` after it is ready: what a
    replica costs before any vnode (the floor every replica pays)."""
    proc = b.provider_process(f"{ENV}idle", "vkprovider-idle", CLIENT_ID="replica-idle")
    try:
        await proc.start()
        assert proc.proc is not None
        await asyncio.sleep(5)
        first = sample(proc.proc.pid)
        await asyncio.sleep(seconds)
        last = sample(proc.proc.pid)
        return round(last.rss_bytes / MB, 1), round(cpu_share(first, last), 4)
    finally:
        proc.kill()


async def installs_and_uninstalls(sims: list[SimProcess]) -> tuple[int, int]:
    """The install and uninstall calls every simulator has counted."""
    stats = [await s.stats() for s in sims]
    return sum(s.get("installCalls", 0) for s in stats), sum(s.get("uninstallCalls", 0) for s in stats)


async def run(b: Bench) -> Result:
    await retire_single_replica(b)
    kube, per = b.kube, int(b.args.replica_bases)
    total, modules = 3 * per, int(b.args.replica_modules)
    window_s = min(60.0, float(b.args.steady_seconds))
    result = Result("replicas", {**b.params, "replicas": 3, "bases_total": total, "window_s": window_s,
                                 "lease_s": 20, "modules_per_base": modules})
    procs: dict[str, ProviderProcess] = {}
    sims: list[SimProcess] = []
    lb = RoundRobin(lambda: [p.endpoint for p in procs.values() if p.proc and p.proc.poll() is None])
    await lb.start()
    selector = f"virtual-kubelet.koupleless.io/env={ENV}"
    holders = HolderWatch(kube, selector)
    nodes = ReadyFlips(kube, "/api/v1/nodes", selector)
    ns = await b.fresh_namespace(f"bench-replicas-{int(time.time())}")
    pods = ReadyFlips(kube, f"/api/v1/namespaces/{ns}/pods")

    def sim(prefix: str, count: int) -> SimProcess:
        proc = SimProcess(lb.endpoint, "--bases", str(count), "--identity-prefix", prefix, "--base-version",
                          "1.1.1", "--install-latency", "0", "--uninstall-latency", "0", "--heartbeat-interval",
                          str(b.args.heartbeat_interval), "--heartbeat-spread", "1", name=f"sim-{prefix}")
        proc.log_path = LOGS / f"sim-{prefix}.log"
        sims.append(proc)
        return proc

    async def replica(name: str) -> None:
        procs[name] = b.provider_process(ENV, f"vkprovider-{name}", CLIENT_ID=name)
        await procs[name].start()

    def spy(proc: ProviderProcess, seconds: float, name: str) -> tuple[subprocess.Popen[bytes], Path] | None:
        """--profile: py-spy over one replica for the window (``bench/results/<name>-profile.txt``)."""
        if not b.args.profile or proc.proc is None:
            return None
        out = b.results_dir / f"{name}-profile.txt"
        started = profile.start(proc.proc.pid, seconds, out)
        return (started, out) if started is not None else None

    async def unspy(profiled: tuple[subprocess.Popen[bytes], Path] | None) -> None:
        if profiled is not None:
            top = await profile.finish(*profiled)
            result.metrics[f"profile_top_{profiled[1].stem}"] = top[:15]

    def balanced() -> bool:
        counts = holders.counts()
        return len(holders.holder) >= total and all(abs(counts.get(n, 0) - per) <= per * 0.15 for n in NAMES)

    try:
        async with running(holders.informer), running(nodes.informer), running(pods.informer):
            log(f"replicas: one replica, {total} bases")
            await replica(NAMES[0])
            await sim("ra", total).start(timeout_s=300)
            await until(lambda: nodes.count_ready() >= total, b.args.timeout, f"{total} vnodes Ready")
            await asyncio.sleep(SETTLE_S)
            bare = (await window(procs, window_s))[NAMES[0]]
            log(f"replicas: one replica, {total} bases, no modules: {bare}")
            for index in range(modules):
                await kube.create(f"/apis/apps/v1/namespaces/{ns}/daemonsets", module_daemonset(f"module{index}", ENV,
                                                                                   f"biz{index + 1}"))
            await until(lambda: pods.count_ready() >= total * modules, b.args.timeout,
                        f"{total * modules} modules Ready", interval_s=1.0)
            await asyncio.sleep(SETTLE_S)
            profiled = spy(procs[NAMES[0]], window_s, "replicas-one")
            one = (await window(procs, window_s))[NAMES[0]]
            await unspy(profiled)
            log(f"replicas: one replica, {total} bases x {modules} modules: {one}")

            floor, idle_cpu = await idle_replica(b)
            log(f"replicas: a replica of an empty ENV: RSS {floor} MiB, CPU {idle_cpu}")
            log("replicas: 2 more replicas; the vnodes handed over by rendezvous")
            start = time.monotonic()
            for name in NAMES[1:]:
                await replica(name)
            await asyncio.sleep(5)
            joined_rss = [round(sample(procs[n].proc.pid).rss_bytes / MB, 1) for n in NAMES[1:] if procs[n].proc]
            await until(balanced, b.args.timeout, "the vnodes spread over 3 replicas")
            spread_s = time.monotonic() - start
            await until(lambda: pods.count_ready() >= total * modules, b.args.timeout, "every module Ready")
            shrunk_rss = round(sample(procs[NAMES[0]].proc.pid).rss_bytes / MB, 1) if procs[NAMES[0]].proc else 0.0
            # The first replica handed two thirds away, but a Python process keeps the memory it once used: it is
            # restarted (SIGTERM, as a rolling update: its vnodes handed over, then given back), so each of the
            # three is measured as a replica that serves its share from its start.
            log(f"replicas: {NAMES[0]} restarted (RSS {shrunk_rss} MiB after handing two thirds away)")
            restarted = time.monotonic()
            procs[NAMES[0]].kill(signal.SIGTERM)
            await replica(NAMES[0])
            await until(balanced, b.args.timeout, f"{NAMES[0]} given its share back")
            restart_s = time.monotonic() - restarted
            await until(lambda: pods.count_ready() >= total * modules, b.args.timeout, "every module Ready")
            await asyncio.sleep(SETTLE_S)
            spread = holders.counts()
            profiled = spy(procs[NAMES[1]], window_s, "replicas-three")
            three = await window(procs, window_s)
            await unspy(profiled)
            log(f"replicas: spread {spread} in {spread_s:.1f}s; per replica {three}")

            installs0, uninstalls0 = await installs_and_uninstalls(sims)
            nodes.arm()
            pods.arm()
            changes0 = holders.changes
            victim = NAMES[0]
            lost = [k for k, h in holders.holder.items() if h == victim]
            log(f"replicas: SIGKILL {victim} holding {len(lost)} vnodes")
            killed = time.monotonic()
            procs[victim].kill()
            live = set(NAMES) - {victim}
            await until(lambda: all(holders.holder.get(k) in live for k in lost), b.args.timeout,
                        f"the {len(lost)} vnodes of {victim} held again")
            reown = [holders.changed_at[k] - killed for k in lost]
            await asyncio.sleep(30)  # flips and commands after the take-over would show here
            installs, uninstalls = await installs_and_uninstalls(sims)
            installs, uninstalls = installs - installs0, uninstalls - uninstalls0
            after = holders.counts()
    finally:
        for proc in procs.values():
            proc.kill()
        for s_ in sims:
            s_.kill()
        await lb.stop()

    one_cpu, one_rss, bare_rss = float(one["cpu"]), float(one["rss_mb"]), float(bare["rss_mb"])  # type: ignore[arg-type]
    cpu3 = [float(three[n]["cpu"]) for n in NAMES]  # type: ignore[arg-type]
    rss3 = [float(three[n]["rss_mb"]) for n in NAMES]  # type: ignore[arg-type]
    held = [spread.get(n, 0) for n in NAMES]
    events3 = [float(three[n]["events_per_s_all"]) for n in NAMES]  # type: ignore[arg-type]
    one_events = float(one["events_per_s_all"])  # type: ignore[arg-type]
    cpu_ratio = max(cpu3) / one_cpu if one_cpu else math.nan
    rss_ratio = max(rss3) / one_rss if one_rss else math.nan
    result.metrics.update({
        "one_replica_bases": total,
        "one_replica_cpu_share": one_cpu,
        "one_replica_rss_mb": one_rss,
        "one_replica_rss_mb_no_modules": bare_rss,
        "one_replica_cpu_share_no_modules": bare["cpu"],
        "one_replica_watch_events_per_s": one["events_per_s"],
        "idle_replica_rss_mb": floor,
        "idle_replica_cpu_share": idle_cpu,
        "joined_replicas_rss_mb": joined_rss,
        "three_replicas_spread_s": round(spread_s, 2),
        "first_replica_rss_mb_after_handing_over": shrunk_rss,
        "first_replica_restart_s": round(restart_s, 2),
        "held_per_replica": held,
        "cpu_share_per_replica": cpu3,
        "rss_mb_per_replica": rss3,
        "watch_events_per_s_per_replica": [three[n]["events_per_s"] for n in NAMES],
        "watch_events_share_of_one_replica": [round(e / one_events, 3) if one_events else None for e in events3],
        # what the CPU is spent on: exchanges per second and CPU-ms per exchange, one replica against each of three
        "one_replica_exchanges_per_s": one["exchanges_per_s"],
        "exchanges_per_s_per_replica": [three[n]["exchanges_per_s"] for n in NAMES],
        "one_replica_cpu_ms_per_exchange": per_exchange(one),
        "cpu_ms_per_exchange_per_replica": [per_exchange(three[n]) for n in NAMES],
        "cpu_ratio_to_one_replica": round(cpu_ratio, 3),
        "rss_ratio_to_one_replica": round(rss_ratio, 3),
        "rss_above_idle_ratio_to_one_replica": round((max(rss3) - floor) / (one_rss - floor), 3)
        if one_rss > floor else None,
        "cpu_ms_per_vnode_minute": round(one_cpu * 60_000 / total, 3),
        "kb_per_vnode": round((bare_rss - floor) * 1024 / total, 1),
        "kb_per_module_pod": round((one_rss - bare_rss) * 1024 / (total * modules), 1) if modules else None,
        "failover_vnodes": len(lost),
        "reown_p50_s": round(percentile(reown, 50), 2),
        "reown_p99_s": round(percentile(reown, 99), 2),
        "reown_max_s": round(max(reown, default=math.nan), 2),
        "held_after_failover": [after.get(n, 0) for n in NAMES],
        "lease_holder_changes": holders.changes - changes0,
        "vnode_ready_flips": nodes.flips,
        "pod_ready_flips": pods.flips,
        "installs_after_kill": installs,
        "uninstalls_after_kill": uninstalls,
    })
    result.targets += [
        target("cpu_ratio_to_one_replica", cpu_ratio, 0.45),
        target("rss_ratio_to_one_replica", rss_ratio, 0.45),
        target("reown_max_s", max(reown, default=math.nan), 20 + 10),
        target("installs_after_kill", installs, 0),
        target("uninstalls_after_kill", uninstalls, 0),
        target("vnode_ready_flips", nodes.flips, 0),
        target("pod_ready_flips", pods.flips, 0),
    ]
    log(f"replicas: {result.metrics}")
    return result
