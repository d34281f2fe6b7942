"""``burst``: one Deployment of N replicas, a module pod on every vnode at once -> bound->Running p50/p99.

Why it exists: issue 17's latency target (p99 bound->Running within 2 s at 1,000 pods) is a burst's. Beside the
latency it splits the time into vkprovider's own part (its pod start histogram: first sight of the pod to the
answer to its Running write), the apiserver's answer to vkprovider's PATCHes and the base's to an install in the
same window, and reads limit's null kubelet floors next to it: a miss whose floor misses too is the control
plane's. The pods are deleted before the next scenario.
"""

from __future__ import annotations

import functools
import math
import signal
import time

from bench import charts, metrics
from bench.context import Bench
from bench.metrics import histogram_quantile, mean_between, percentile, refused_between, refused_by_flow_schema
from bench.objects import module_deployment
from bench.report import Result, log, target
from bench.watch import PodClock, running, until

POD_START = "vkprovider_pod_start_duration_seconds"
PATCH_ANSWER = ("rest_client_request_duration_seconds", {"verb": "PATCH"})
INSTALL_ANSWER = ("vkprovider_biz_command_duration_seconds", {"command": "install"})


async def run(b: Bench) -> Result:
    assert b.provider is not None
    kube, pods = b.kube, b.bases
    result = Result("burst", {**b.params, "pods": pods, "install_latency_s": 0})
    ns = await b.fresh_namespace(f"bench-burst-{int(time.time())}")
    clock = PodClock(kube, ns)
    log(f"burst: 1 Deployment x {pods} replicas, one module pod per vnode")
    profiler = b.start_profile(30, "burst") if b.args.profile else None
    async with running(clock.informer):
        start0 = metrics.histogram(await b.provider_metrics(), POD_START)
        refused_by_schema0 = refused_by_flow_schema(await b.apiserver_metrics())
        patch0 = metrics.sum_and_count(await b.provider_metrics(), PATCH_ANSWER[0], **PATCH_ANSWER[1])
        install0 = metrics.sum_and_count(await b.provider_metrics(), INSTALL_ANSWER[0], **INSTALL_ANSWER[1])
        cpu_before = b.component_cpu()
        start = time.monotonic()
        await kube.create(f"/apis/apps/v1/namespaces/{ns}/deployments",
                          module_deployment(0, pods, "0.0.1", fake_nodes=False))
        done = await until(lambda: len(clock.alive) >= pods and clock.count_running() >= pods,
                           b.args.timeout, "all burst pods Running", interval_s=0.5)
        cores = b.cores_used_since(cpu_before, done - start)
        start1 = metrics.histogram(await b.provider_metrics(), POD_START)
        refused_by_schema = refused_between(refused_by_schema0, refused_by_flow_schema(await b.apiserver_metrics()))
        patch1 = metrics.sum_and_count(await b.provider_metrics(), PATCH_ANSWER[0], **PATCH_ANSWER[1])
        install1 = metrics.sum_and_count(await b.provider_metrics(), INSTALL_ANSWER[0], **INSTALL_ANSWER[1])
    if profiler is not None:
        profiler.send_signal(signal.SIGINT)  # py-spy writes what it sampled so far on an interrupt
        result.metrics["profile_top"] = await b.finish_profile(profiler, "burst")
    latencies = [clock.running[k] - clock.bound[k] for k in clock.alive if k in clock.running and k in clock.bound]
    first_bound = min(clock.bound.values(), default=start)
    last_bound = max(clock.bound.values(), default=start)
    floor = b.null_kubelet.get
    result.metrics.update({
        "total_s": round(done - start, 2),
        "binding_s": round(last_bound - first_bound, 2),  # the scheduler's pace: first to last pod bound
        "bound_to_running_p50_s": round(percentile(latencies, 50), 3),
        "bound_to_running_p99_s": round(percentile(latencies, 99), 3),
        "bound_to_running_max_s": round(max(latencies, default=math.nan), 3),
        # vkprovider's own part: first sight -> Running write answered (histogram buckets, interpolated)
        "provider_pod_start_p50_s": round(histogram_quantile(0.5, start0, start1), 3),
        "provider_pod_start_p99_s": round(histogram_quantile(0.99, start0, start1), 3),
        # in that: the apiserver's answer to a PATCH (status and Lease renewals) and the base's to an install
        "provider_patch_answer_mean_s": round(mean_between(patch0, patch1), 3),
        "install_answer_mean_s": round(mean_between(install0, install1), 3),
        # the floor limit measured: the same burst on fake nodes with a null kubelet (nan without limit)
        "null_kubelet_bound_to_running_p50_s": floor("null_kubelet_burst_bound_to_running_p50_s", math.nan),
        "null_kubelet_bound_to_running_p99_s": floor("null_kubelet_burst_bound_to_running_p99_s", math.nan),
        # the same with a kubelet fleet's least API work: a Lease per node every 10 s, one Event per pod
        "null_kubelet_fleet_bound_to_running_p50_s": floor("null_kubelet_fleet_burst_bound_to_running_p50_s",
                                                           math.nan),
        "null_kubelet_fleet_bound_to_running_p99_s": floor("null_kubelet_fleet_burst_bound_to_running_p99_s",
                                                           math.nan),
        "apiserver_refused_by_flow_schema": refused_by_schema,
        **cores,
    })
    result.targets += [target("bound_to_running_p99_s", percentile(latencies, 99), 2.0,
                              floor=b.null_kubelet.get("null_kubelet_fleet_burst_bound_to_running_p99_s"))]
    log(f"burst: {result.metrics}; deleting the pods")
    result.metrics["delete_all_s"] = await b.delete_namespace(ns)
    result.chart = functools.partial(charts.burst, latencies=latencies, pods=pods)
    return result
