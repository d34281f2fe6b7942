"""``replicas``: several vkprovider replicas behind one round-robin endpoint (as a Service), and a replica SIGKILLed.

Why it exists: replicas split the vnodes by Lease, so each must cost what one replica with its share costs, and
the loss of one must be invisible to the modules. One replica with R bases, then 3 replicas with 3R bases and a
module on each (R: --replica-bases; CPU and RSS per replica against the one replica's), then one replica
SIGKILLed: re-own p50/p99/max, Ready flips of vnodes and pods, installs and uninstalls (targets: none of them).
It runs last, on a cluster cleared of the earlier scenarios' modules, bases and vkprovider.
"""

from __future__ import annotations

import asyncio
import math
import time

from bench.context import LOGS, Bench
from bench.metrics import percentile
from bench.objects import ENV, module_daemonset
from bench.procstat import cpu_share, sample
from bench.report import Result, log, target
from bench.watch import HolderWatch, ReadyFlips, running, until
from tests.integration.harness import ProviderProcess, SimProcess
from tests.integration.lb import RoundRobin

MB = 1024 * 1024
NAMES = ["replica-a", "replica-b", "replica-c"]


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
                            f"virtual-kubelet.koupleless.io/env={ENV}")


async def window(procs: dict[str, ProviderProcess], seconds: float) -> dict[str, tuple[float, float]]:
    """CPU share (of one core) and RSS (MiB) of each process over ``seconds``."""
    first = {n: sample(p.proc.pid) for n, p in procs.items() if p.proc}
    await asyncio.sleep(seconds)
    last = {n: sample(p.proc.pid) for n, p in procs.items() if p.proc}
    return {n: (round(cpu_share(first[n], last[n]), 4), round(last[n].rss_bytes / MB, 1)) for n in first}


async def installs_and_uninstalls(sims: list[SimProcess]) -> tuple[int, int]:
    """The install and uninstall calls every simulator has counted."""
    stats = [await s.stats() for s in sims]
    return sum(s.get("installCalls", 0) for s in stats), sum(s.get("uninstallCalls", 0) for s in stats)


async def run(b: Bench) -> Result:
    await retire_single_replica(b)
    kube, per = b.kube, int(b.args.replica_bases)
    env = "benchr"
    window_s = min(60.0, float(b.args.steady_seconds))
    result = Result("replicas", {**b.params, "replicas": 3, "bases_total": 3 * per, "window_s": window_s,
                                 "lease_s": 20, "modules_per_base": 1})
    procs: dict[str, ProviderProcess] = {}
    sims: list[SimProcess] = []
    lb = RoundRobin(lambda: [p.endpoint for p in procs.values() if p.proc and p.proc.poll() is None])
    await lb.start()
    selector = f"virtual-kubelet.koupleless.io/env={env}"
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
        procs[name] = b.provider_process(env, f"vkprovider-{name}", CLIENT_ID=name)
        await procs[name].start()

    try:
        async with running(holders.informer), running(nodes.informer), running(pods.informer):
            log(f"replicas: one replica, {per} bases")
            await replica(NAMES[0])
            await sim("ra", per).start(timeout_s=300)
            await until(lambda: nodes.count_ready() >= per, b.args.timeout, f"{per} vnodes Ready")
            one = (await window(procs, window_s))[NAMES[0]]
            log(f"replicas: one replica at {per} bases: CPU {one[0]:.3f} of a core, RSS {one[1]} MiB")

            log(f"replicas: 3 replicas, {3 * per} bases, a DaemonSet module on each")
            start = time.monotonic()
            for name in NAMES[1:]:
                await replica(name)
            await sim("rb", 2 * per).start(timeout_s=300)
            await until(lambda: nodes.count_ready() >= 3 * per, b.args.timeout, f"{3 * per} vnodes Ready")
            ready_s = time.monotonic() - start
            await until(lambda: len(holders.holder) >= 3 * per and min(
                holders.counts().get(n, 0) for n in NAMES) >= per * 0.8, b.args.timeout,
                "leases spread over 3 replicas")
            spread_s = time.monotonic() - start
            await kube.create(f"/apis/apps/v1/namespaces/{ns}/daemonsets", module_daemonset("everywhere", env))
            await until(lambda: pods.count_ready() >= 3 * per, b.args.timeout, f"{3 * per} modules Ready",
                        interval_s=1.0)
            modules_s = time.monotonic() - start
            spread = holders.counts()
            three = await window(procs, window_s)
            log(f"replicas: spread {spread}; per replica (CPU, RSS MiB) {three}")

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

    cpu3 = [three[n][0] for n in NAMES]
    rss3 = [three[n][1] for n in NAMES]
    result.metrics.update({
        "one_replica_bases": per,
        "one_replica_cpu_share": one[0],
        "one_replica_rss_mb": one[1],
        "three_replicas_ready_s": round(ready_s, 2),
        "three_replicas_spread_s": round(spread_s, 2),
        "three_replicas_modules_ready_s": round(modules_s, 2),
        "held_per_replica": [spread.get(n, 0) for n in NAMES],
        "cpu_share_per_replica": cpu3,
        "rss_mb_per_replica": rss3,
        "cpu_ratio_to_one_replica": round(max(cpu3) / one[0], 3) if one[0] else None,
        "rss_ratio_to_one_replica": round(max(rss3) / one[1], 3) if one[1] else None,
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
        target("reown_max_s", max(reown, default=math.nan), 20 + 10),
        target("installs_after_kill", installs, 0),
        target("uninstalls_after_kill", uninstalls, 0),
        target("vnode_ready_flips", nodes.flips, 0),
        target("pod_ready_flips", pods.flips, 0),
    ]
    log(f"replicas: {result.metrics}")
    return result
