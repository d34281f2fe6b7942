"""``churn``: a rolling update of every module (rollout's Deployments, 0.0.1 -> 0.0.2): the total time, and the
installs and uninstalls the simulated bases counted.

Why it exists: an update is where a module controller loses or doubles work: a biz left behind on a base, a new
one missing, one installed twice. The targets are correctness ones: afterwards every Running pod's biz is on its
base and nothing else is (compared as sets: two replicas the scheduler put on one base share one biz), with one
install per distinct biz.
"""

from __future__ import annotations

import asyncio
import functools
import time

from bench import charts
from bench.context import Bench
from bench.objects import ENV
from bench.report import Result, log, target
from bench.watch import until


async def run(b: Bench) -> Result:
    assert b.sim is not None and b.clock is not None
    kube, clock, sim = b.kube, b.clock, b.sim
    pods = b.bases * b.modules
    result = Result("churn", {**b.params, "pods": pods, "from": "0.0.1", "to": "0.0.2"})
    before = await sim.stats()
    log(f"churn: rolling update of {b.modules} Deployments ({pods} pods) to 0.0.2")
    timeline: list[tuple[float, int]] = []
    cpu_before = b.component_cpu()
    start = time.monotonic()
    for i in range(b.modules):
        await kube.patch(f"/apis/apps/v1/namespaces/{b.ns}/deployments/module-{i}",
                         {"spec": {"template": {"spec": {"containers": [
                             {"name": f"biz{i}", "env": [{"name": "BIZ_VERSION", "value": "0.0.2"}]}]}}}})

    def new_running() -> int:
        return sum(1 for k in clock.alive if clock.version.get(k) == "0.0.2" and k in clock.running)

    done = await until(lambda: new_running() >= pods and len(clock.alive) == pods, b.args.timeout,
                       "every module pod on 0.0.2",
                       tick=lambda: timeline.append((time.monotonic() - start, new_running())), interval_s=0.5)
    total = done - start
    cores = b.cores_used_since(cpu_before, total)
    await asyncio.sleep(3)
    after = await sim.stats()
    installs = after["installCalls"] - before["installCalls"]
    uninstalls = after["uninstallCalls"] - before["uninstallCalls"]
    # Every Running pod's biz must be on its base, and nothing else: two replicas the scheduler put on one
    # base share one biz (a base holds one biz per name:version), so compare sets, not counts.
    on_bases = {(f"vnode.{base['identity']}.{ENV}", z["bizName"], z["bizVersion"])
                for base in await sim.bases() for z in base["bizs"]}
    wanted = {(*clock.placed[k], clock.version[k]) for k in clock.alive if k in clock.placed}
    missing, stale = wanted - on_bases, on_bases - wanted
    result.metrics.update({"total_s": round(total, 2), "installs": installs, "uninstalls": uninstalls,
                           "bizs_after": len(on_bases), "pods_sharing_a_biz": pods - len(wanted),
                           "missing_bizs": len(missing), "stale_bizs": len(stale), **cores})
    result.targets += [target("missing_bizs", len(missing), 0), target("stale_bizs", len(stale), 0),
                       target("installs_per_distinct_biz", installs / max(len(wanted), 1), 1.0)]
    log(f"churn: {result.metrics}")
    result.chart = functools.partial(charts.churn, timeline=timeline, pods=pods, total=total, installs=installs,
                                     uninstalls=uninstalls)
    return result
