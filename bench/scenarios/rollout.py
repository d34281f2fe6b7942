"""``rollout``: M Deployments of N replicas on the N vnodes -> all Running, against limit's scheduler-only time.

Why it exists: a rollout of every module is the heaviest thing a cluster asks of vkprovider; issue 17's targets are
its ratio to the scheduler's own time for the same pods (within 2x), vkprovider's RSS per module pod and no Lease
lost on the way. It also records the work behind the time (status writes and module reconciles per pod, every
client's writes per pod, requests refused by the apiserver) and vkprovider's RSS against running pods (bytes per
pod, how linear). Its module pods stay for steady and churn (``Bench.ns``, ``Bench.clock``).
"""

from __future__ import annotations

import asyncio
import functools
import math
import signal
import statistics
import time
from dataclasses import dataclass

from bench import charts, metrics
from bench.context import Bench
from bench.metrics import histogram_quantile, percentile, refused_between, refused_by_flow_schema
from bench.objects import module_deployment
from bench.report import Result, log, target
from bench.watch import PodClock, until
from tests import promtext

MB = 1024 * 1024
RENEW = "vkprovider_lease_renew_duration_seconds"


@dataclass(frozen=True)
class Counted:
    """What vkprovider's /metrics counted so far of what a rollout is read against (read before and after)."""

    leases_lost: float
    renewals: dict[float, float]  # the Lease renewal histogram: {upper bound: cumulative count}
    refused_429: float
    status_writes: dict[str, float]  # by the phase written
    module_reconciles: float
    node_writes: dict[str, float]  # by kind (create, meta, status, delete)

    @classmethod
    async def read(cls, b: Bench) -> Counted:
        text = await b.provider_metrics()
        return cls(promtext.total(text, "vkprovider_lease_transitions_total", event="lost"),
                   metrics.histogram(text, RENEW), promtext.total(text, "rest_client_requests_total", code="429"),
                   promtext.by_label(text, "vkprovider_pod_status_writes_total", "phase"),
                   metrics.module_reconciles(text), promtext.by_label(text, "vkprovider_node_writes_total", "kind"))


async def run(b: Bench) -> Result:
    assert b.provider is not None
    kube = b.kube
    pods = b.bases * b.modules
    result = Result("rollout", {**b.params, "pods": pods, "install_latency_s": 0})
    b.ns = await b.fresh_namespace(f"bench-modules-{int(time.time())}")
    clock = b.clock = PodClock(kube, b.ns)
    b.clock_task = asyncio.create_task(clock.informer.run())
    await asyncio.wait_for(clock.informer.synced.wait(), 60)
    timeline: list[tuple[float, int, int, int]] = []
    start = time.monotonic()

    def tick() -> None:
        rss = b.provider_sample().rss_bytes
        timeline.append((time.monotonic() - start, clock.count_bound(), clock.count_running(), rss))

    log(f"rollout: {b.modules} Deployments x {b.bases} replicas = {pods} module pods")
    profiler = b.start_profile(300, "rollout") if b.args.profile else None
    installs0 = (await b.sim.stats()).get("installCalls", 0) if b.sim else 0
    work_before = await b.component_metrics(keep_as="rollout-before")
    cpu_before = b.component_cpu()
    before = await Counted.read(b)
    by_kind0 = metrics.apiserver_writes(await b.apiserver_metrics())
    refused_by_schema0 = refused_by_flow_schema(await b.apiserver_metrics())
    for i in range(b.modules):
        await kube.create(f"/apis/apps/v1/namespaces/{b.ns}/deployments",
                          module_deployment(i, b.bases, "0.0.1", fake_nodes=False))
    done = await until(lambda: len(clock.alive) >= pods and clock.count_running() >= pods,
                       b.args.timeout, "all module pods Running", tick=tick, interval_s=0.5)
    total = done - start
    cores = b.cores_used_since(cpu_before, total)
    work = metrics.control_plane_work(work_before, await b.component_metrics(keep_as="rollout-after"))
    if profiler is not None:
        profiler.send_signal(signal.SIGINT)  # py-spy writes what it sampled so far on an interrupt
        result.metrics["profile_top"] = await b.finish_profile(profiler, "rollout")
    latencies = [clock.running[k] - clock.bound[k] for k in clock.alive if k in clock.running and k in clock.bound]
    stalls = metrics.progress_stalls(start, clock.stages())
    fleet_stalls = b.null_kubelet.get("null_kubelet_fleet_rollout_progress_stalls", {})
    stats = await b.sim.stats() if b.sim else {}
    # RSS against running pods: slope = bytes per module pod, r^2 = how linear the growth is
    points = [(n, rss) for _, _, n, rss in timeline if n > 0]
    slope, r2 = math.nan, math.nan
    if len({n for n, _ in points}) >= 3:
        xs, ys = [float(n) for n, _ in points], [float(r) for _, r in points]
        slope = statistics.linear_regression(xs, ys).slope
        r2 = statistics.correlation(xs, ys) ** 2
    await asyncio.sleep(3)
    settled = b.provider_sample().rss_bytes
    per_pod_settled = (settled - b.rss_bases_only) / pods
    after = await Counted.read(b)
    leases_lost = after.leases_lost - before.leases_lost  # one replica: it must lose none
    refused = after.refused_429 - before.refused_429
    ratio = total / b.scheduler_only_s if not math.isnan(b.scheduler_only_s) else math.nan
    null_floor = b.null_kubelet.get("null_kubelet_rollout_total_s", math.nan)
    fleet_floor = b.null_kubelet.get("null_kubelet_fleet_rollout_total_s", math.nan)
    status_writes = {phase: n - before.status_writes.get(phase, 0.0) for phase, n in after.status_writes.items()}
    result.metrics.update({
        "total_s": round(total, 2),
        "scheduler_only_s": round(b.scheduler_only_s, 2),
        "ratio_to_scheduler_only": round(ratio, 3),
        # limit's floor: the same Deployments with a null kubelet (the control plane's time for this rollout)
        "null_kubelet_rollout_s": null_floor,
        "null_kubelet_ratio_to_scheduler_only": round(null_floor / b.scheduler_only_s, 3),
        # the same with a kubelet fleet's least API work: a Lease per node every 10 s, one Event per pod
        "null_kubelet_fleet_rollout_s": fleet_floor,
        "null_kubelet_fleet_ratio_to_scheduler_only": round(fleet_floor / b.scheduler_only_s, 3),
        "ratio_to_kubelet_fleet_floor": round(total / fleet_floor, 3),
        # the control plane's CPU for these pods against the same pods with the kubelet fleet: above 1 is work
        # vkprovider's rollout makes the control plane do that a fleet does not (or its longer time's background)
        "control_plane_cpu_ratio_to_kubelet_fleet": round(
            cores["control_plane_cpu_s"] / b.null_kubelet.get("null_kubelet_fleet_rollout_control_plane_cpu_s",
                                                              math.nan), 3),
        # the cores the control plane had in the fleet's run over those it had here: the time ratio is this times
        # control_plane_cpu_ratio_to_kubelet_fleet (its CPU seconds = its cores x the time), so it says how much of
        # the ratio is the CPU vkprovider and the simulated bases took from it, and how much more work it did here
        "control_plane_cores_ratio_kubelet_fleet_to_rollout": round(
            b.null_kubelet.get("null_kubelet_fleet_rollout_cores_control_plane", math.nan)
            / cores["cores_control_plane"], 3),
        # what the control plane did (allocations, watch events sent, refusals, attempts) against the same with
        # the kubelet fleet: counts that do not depend on the shared cores' speed
        "control_plane_work": work,
        "kubelet_fleet_control_plane_work": b.null_kubelet.get("null_kubelet_fleet_rollout_control_plane_work", {}),
        # pauses of 0.5 s or more in which no pod was created, bound or Running (and none of the three): what
        # the run spent waiting with nothing moving, against the same of the kubelet fleet's run
        "progress_stalls": stalls,
        "kubelet_fleet_progress_stalls": fleet_stalls,
        "bound_to_running_p50_s": round(percentile(latencies, 50), 3),
        "bound_to_running_p99_s": round(percentile(latencies, 99), 3),
        "bound_to_running_max_s": round(max(latencies, default=math.nan), 3),
        "installs": stats.get("installCalls", 0) - installs0,  # the simulated bases' install calls: one a pod
        "leases_lost": leases_lost,
        # a renewal slower than the renew deadline less the interval (5 s by default) fences its vnode
        "lease_renew_p99_s": round(histogram_quantile(0.99, before.renewals, after.renewals), 3),
        # requests the apiserver's priority and fairness turned away (each retried after its Retry-After)
        "provider_requests_refused_429": refused,
        # every client's: a refused pod create or binding is retried with backoff (the rollout stalls meanwhile)
        "apiserver_refused_by_flow_schema": refused_between(refused_by_schema0,
                                                            refused_by_flow_schema(await b.apiserver_metrics())),
        "provider_rss_mb": round(settled / MB, 1),
        "rss_per_pod_bytes": round(per_pod_settled),
        "rss_slope_bytes_per_pod": round(slope) if not math.isnan(slope) else None,
        "rss_linear_r2": round(r2, 3) if not math.isnan(r2) else None,
        "provider_pod_status_writes_per_pod": round(sum(status_writes.values()) / pods, 2),
        # module reconciles (one looks at every pod of its base) per pod: how often a base was looked at again
        "provider_module_reconciles_per_pod": round((after.module_reconciles - before.module_reconciles) / pods, 2),
        "provider_node_writes": {kind: n - before.node_writes.get(kind, 0.0) for kind, n in after.node_writes.items()},
        "provider_pod_status_writes_per_pod_by_phase": {k: round(v / pods, 2) for k, v in status_writes.items()},
        # every client's writes per module pod: the scheduler's bindings, the controllers', vkprovider's
        "apiserver_writes_per_pod": {
            k: round(v, 2) for k, v in metrics.writes_between(
                by_kind0, metrics.apiserver_writes(await b.apiserver_metrics()), 1.0, pods).items()},
        **cores,
    })
    result.targets += [
        target("ratio_to_scheduler_only", ratio, 2.0,  # its p99 target is burst's, at 1,000 pods
               floor=fleet_floor / b.scheduler_only_s),
        # issue 31's: within a quarter of a kubelet fleet that costs nothing, measured in the same run
        target("ratio_to_kubelet_fleet_floor", total / fleet_floor, 1.25),
        target("rss_per_pod_kb", per_pod_settled / 1024, 100),
        target("leases_lost", leases_lost, 0),
    ]
    log(f"rollout: {result.metrics}")
    result.chart = functools.partial(charts.rollout, timeline=timeline, latencies=latencies, pods=pods, total=total,
                                     scheduler_only_s=b.scheduler_only_s)
    return result
