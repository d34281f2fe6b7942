"""``density``: pod startup at a sustained rate, the shape of the Kubernetes density SLO.

Why it exists: burst and rollout measure vkprovider under one wave of pods; a cluster in use creates them steadily.
Bare module pods are created at R pods/s for T seconds onto the N vnodes, each its own biz; the figures are
create->Running and bound->Running p50/p99. The pods are deleted (uninstalls) before the next scenario.
"""

from __future__ import annotations

import asyncio
import time

from bench.context import Bench
from bench.metrics import percentile
from bench.objects import module_pod
from bench.report import Result, log, target
from bench.watch import PodClock, running, until


async def run(b: Bench) -> Result:
    assert b.provider is not None
    kube, rate, seconds = b.kube, float(b.args.density_rate), float(b.args.density_seconds)
    count = int(rate * seconds)
    result = Result("density", {**b.params, "pods_per_s": rate, "seconds": seconds, "pods": count})
    ns = await b.fresh_namespace(f"bench-density-{int(time.time())}")
    clock = PodClock(kube, ns)
    created_at: dict[str, float] = {}
    failures: list[str] = []

    async def create(i: int) -> None:
        name = f"dens-{i:05d}"
        created_at[f"{ns}/{name}"] = time.monotonic()
        try:
            await kube.create(f"/api/v1/namespaces/{ns}/pods", module_pod(name, f"dens{i}"))
        except Exception as exc:  # reported, not fatal: the figures say how many made it
            failures.append(repr(exc))

    log(f"density: {count} module pods at {rate:g}/s for {seconds:g}s onto {b.bases} vnodes")
    async with running(clock.informer):
        cpu_before = b.component_cpu()
        start = time.monotonic()
        tasks: list[asyncio.Task[None]] = []
        for i in range(count):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(create(i)))
        await asyncio.gather(*tasks)
        sent = time.monotonic() - start
        done = await until(lambda: clock.count_running(set(created_at)) >= count - len(failures),
                           b.args.timeout, "all density pods Running", interval_s=0.5)
        cores = b.cores_used_since(cpu_before, done - start)
    to_running = [clock.running[k] - created_at[k] for k in created_at if k in clock.running]
    bound_to_running = [clock.running[k] - clock.bound[k] for k in created_at
                        if k in clock.running and k in clock.bound]
    result.metrics.update({
        "achieved_pods_per_s": round(count / sent, 2),
        "create_failures": len(failures),
        "create_to_running_p50_s": round(percentile(to_running, 50), 3),
        "create_to_running_p99_s": round(percentile(to_running, 99), 3),
        "bound_to_running_p50_s": round(percentile(bound_to_running, 50), 3),
        "bound_to_running_p99_s": round(percentile(bound_to_running, 99), 3),
        "last_running_after_last_create_s": round(done - start - sent, 2),
        **cores,
    })
    result.targets += [target("create_to_running_p99_s", percentile(to_running, 99), 5.0),
                       target("bound_to_running_p99_s", percentile(bound_to_running, 99), 1.0)]
    log(f"density: {result.metrics}; deleting the pods")
    result.metrics["delete_all_s"] = await b.delete_namespace(ns)
    return result
