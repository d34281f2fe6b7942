"""``limit``: this machine's ceiling, the floors vkprovider's scenarios are read against.

Why it exists: on two shared cores a slow rollout can be vkprovider's or the control plane's; only the same work
measured without vkprovider tells which. It measures apiserver write throughput (a raw asyncio client creating and
patching ConfigMaps), scheduler-only placement (N plain fake Nodes, M Deployments of N replicas: time to all
bound), and the floors of burst and rollout: the same Deployments (1, then M) with a null kubelet in this process
that marks each pod Running the moment it is bound (the control plane's time alone), then again with the least API
work a fleet of kubelets must do, as user vkprovider: a Lease per node every 10 s on the clock, a kubelet's status
and one Event per pod, and every pod's changes received (kubelets watch their pods). The namespace is gone before
the next scenario starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import time
from typing import Any

from bench import charts
from bench.context import CLUSTER_DIR, Bench
from bench.cores import CONTROL_PLANE
from bench.metrics import control_plane_work, percentile, progress_stalls
from bench.objects import FAKE_LABEL, fake_node, kubelet_status, micro_now, module_deployment, ready_status
from bench.report import Result, log
from bench.watch import PodClock, gather_limited, running, until
from vkprovider.core.module import MODULE_LABEL_VALUE, MODULE_LABELS
from vkprovider.kube.client import Kube

LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"


async def run(b: Bench) -> Result:
    kube = b.kube
    writes = 2000 if not b.args.quick else 500
    ns = await b.fresh_namespace(f"bench-limit-{int(time.time())}")
    result = Result("limit", {**b.params, "configmaps": writes, "concurrency": 64})
    path = f"/api/v1/namespaces/{ns}/configmaps"
    log(f"limit: {writes} ConfigMap creates, then {writes} patches (64 in flight)")
    t0 = time.monotonic()
    await gather_limited([kube.create(path, {"metadata": {"name": f"cm-{i}"}, "data": {"v": "0"}})
                          for i in range(writes)], 64)
    t1 = time.monotonic()
    await gather_limited([kube.patch(f"{path}/cm-{i}", {"data": {"v": "1"}}, kind="merge")
                          for i in range(writes)], 64)
    t2 = time.monotonic()
    result.metrics["apiserver_creates_per_s"] = round(writes / (t1 - t0), 1)
    result.metrics["apiserver_patches_per_s"] = round(writes / (t2 - t1), 1)

    pods = b.bases * b.modules
    log(f"limit: scheduler-only, {b.bases} fake nodes x {b.modules} Deployments = {pods} pods")
    names = [f"bench-fake-{i:04d}" for i in range(b.bases)]
    await gather_limited([kube.create("/api/v1/nodes", fake_node(n)) for n in names], 64)
    await mark_ready(b, names)
    result.metrics["control_plane_settled_s"] = await b.settle_nodes(f"{FAKE_LABEL}=true")
    b.null_kubelet = await null_kubelet_run(b, ns, 1, "burst")
    await mark_ready(b, names)
    b.null_kubelet.update(await null_kubelet_run(b, ns, 1, "fleet_burst", fleet=names))
    result.metrics.update(b.null_kubelet)
    await mark_ready(b, names)
    clock = PodClock(kube, ns)
    timeline: list[tuple[float, int]] = []
    async with running(clock.informer):
        start = time.monotonic()
        for i in range(b.modules):
            await kube.create(f"/apis/apps/v1/namespaces/{ns}/deployments",
                              module_deployment(i, b.bases, "0.0.1", fake_nodes=True))
        done = await until(lambda: clock.count_bound() >= pods and len(clock.alive) >= pods,
                           b.args.timeout, "all pods bound to fake nodes",
                           tick=lambda: timeline.append((time.monotonic() - start, clock.count_bound())))
    b.scheduler_only_s = done - start
    latencies = [clock.bound[k] - clock.created[k] for k in clock.alive if k in clock.bound]
    result.metrics.update({
        "scheduler_only_s": round(b.scheduler_only_s, 2),
        "scheduler_pods_per_s": round(pods / b.scheduler_only_s, 1),
        "created_to_bound_p50_s": round(percentile(latencies, 50), 3),
        "created_to_bound_p99_s": round(percentile(latencies, 99), 3),
    })
    log("limit: cleaning up (pods on fake nodes are force-deleted: no kubelet will confirm)")
    await clear_fake_pods(b, ns)
    await mark_ready(b, names)
    rollout_floor = await null_kubelet_run(b, ns, b.modules, "rollout")
    b.null_kubelet.update(rollout_floor)
    result.metrics.update(rollout_floor)
    await mark_ready(b, names)
    fleet_floor = await null_kubelet_run(b, ns, b.modules, "fleet_rollout", fleet=names)
    b.null_kubelet.update(fleet_floor)
    result.metrics.update(fleet_floor)
    log(f"limit: {result.metrics}")
    await gather_limited([kube.delete(f"/api/v1/nodes/{n}") for n in names], 64)
    # Gone before the next scenario starts: the namespace controller's deletes (2,000 ConfigMaps, the garbage
    # collector's and quota's work on them) would otherwise run during vkprovider's registration and rollout.
    result.metrics["namespace_deleted_s"] = await b.delete_namespace(ns)
    result.chart = functools.partial(charts.limit, creates_per_s=result.metrics["apiserver_creates_per_s"],
                                     patches_per_s=result.metrics["apiserver_patches_per_s"], timeline=timeline,
                                     pods=pods)
    return result


async def clear_fake_pods(b: Bench, ns: str) -> None:
    """Remove every Deployment, ReplicaSet and pod of ``ns`` at once (the fake nodes have no kubelet to confirm a
    graceful delete: the pods are force-deleted, their controllers orphaned first so none is recreated)."""
    kube = b.kube
    for kind in ("deployments", "replicasets"):
        listed, _, _ = await kube.list_all(f"/apis/apps/v1/namespaces/{ns}/{kind}")
        await gather_limited([kube.delete(f"/apis/apps/v1/namespaces/{ns}/{kind}/{o['metadata']['name']}",
                                          propagation_policy="Orphan") for o in listed], 16)
    listed, _, _ = await kube.list_all(f"/api/v1/namespaces/{ns}/pods")
    await gather_limited([kube.delete(f"/api/v1/namespaces/{ns}/pods/{p['metadata']['name']}",
                                      grace_period_s=0) for p in listed], 64)

    async def left() -> int:  # an orphaning delete takes a moment: the next run must not meet these
        counts = [len((await kube.list_all(path))[0]) for path in (
            f"/apis/apps/v1/namespaces/{ns}/deployments", f"/apis/apps/v1/namespaces/{ns}/replicasets",
            f"/api/v1/namespaces/{ns}/pods")]
        return sum(counts)

    deadline = time.monotonic() + b.args.timeout
    while await left():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the fake nodes' Deployments, ReplicaSets and pods of {ns} not gone")
        await asyncio.sleep(0.5)


async def mark_ready(b: Bench, names: list[str]) -> None:
    """The fake nodes Ready with fresh heartbeat times (the node controller keeps them Ready between runs)."""
    await gather_limited([b.kube.patch(f"/api/v1/nodes/{n}/status", ready_status(), kind="merge")
                          for n in names], 64)


async def null_kubelet_run(b: Bench, ns: str, deployments: int, prefix: str, *,
                           fleet: list[str] | None = None) -> dict[str, Any]:
    """The machine's floor for a scenario of vkprovider's: the same Deployments (each N replicas) on the fake
    nodes, and a null kubelet (this process) that PATCHes each pod Running and Ready the moment its watch shows
    the binding. What that takes is the control plane's and this machine's alone (scheduling, the status writes
    and their watch delivery): what burst (1 Deployment) or rollout (M) measures beyond it is vkprovider's.

    With ``fleet`` (the fake nodes' names) it does the least a fleet of kubelets must: as user vkprovider (the
    same API priority level and rights as vkprovider), it renews a Lease per node every 10 s, writes a kubelet's
    status (containers running, addresses: ``kubelet_status``) and posts one Event per pod, as vkprovider does
    (Lease renewals, pod status, BizInstalled), and receives every module pod's changes, as a fleet's kubelets
    do together (vkprovider's pod watch). Until issue 31's fifth stop it did none of the last, wrote a bare
    phase and Ready, and its renewals fell behind under load (73 a second of 100): a floor lighter than a fleet."""
    kube, pods = b.kube, b.bases * deployments
    writer = kube if fleet is None else await Kube.connect(str(CLUSTER_DIR / "vkprovider.kubeconfig"),
                                                           max_inflight=64)
    writes: set[asyncio.Task[Any]] = set()
    running_status = {"status": {"phase": "Running", "conditions": [
        {"type": t, "status": "True"} for t in ("Initialized", "ContainersReady", "Ready")]}}

    async def start(pod: dict[str, Any]) -> None:
        md = pod["metadata"]
        await writer.patch(f"/api/v1/namespaces/{md['namespace']}/pods/{md['name']}/status",
                           running_status if fleet is None else kubelet_status(pod), kind="strategic")
        if fleet is not None:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            await writer.create(f"/api/v1/namespaces/{md['namespace']}/events", {
                "metadata": {"generateName": f"{md['name']}."}, "type": "Normal", "reason": "Started",
                "message": "started by the null kubelet", "firstTimestamp": stamp, "lastTimestamp": stamp,
                "count": 1, "source": {"component": "null-kubelet"}, "involvedObject": {
                    "kind": "Pod", "apiVersion": "v1", "namespace": md["namespace"], "name": md["name"],
                    "uid": md.get("uid")}})

    def start_it(pod: dict[str, Any]) -> None:
        task = asyncio.create_task(start(pod))
        writes.add(task)
        task.add_done_callback(writes.discard)

    fleet_work: list[asyncio.Task[None]] = []
    if fleet is not None:
        def lease(name: str) -> dict[str, Any]:
            return {"metadata": {"name": name}, "spec": {"holderIdentity": name, "leaseDurationSeconds": 40,
                                                         "renewTime": micro_now()}}
        await gather_limited([writer.create(LEASES, lease(n)) for n in fleet], 64)
        fleet_work = [asyncio.create_task(renew_forever(writer, fleet)), asyncio.create_task(watch_pods(writer))]
    log(f"limit: null kubelet{' fleet' if fleet else ''}, {deployments} Deployments x {b.bases} replicas on "
        f"the fake nodes ({prefix})")
    clock = PodClock(kube, ns, on_bound=start_it)
    try:
        async with running(clock.informer):
            work_before = await b.component_metrics(keep_as=f"{prefix}-before")
            start_t = time.monotonic()
            cpu_before = b.component_cpu()
            for i in range(deployments):  # names of their own: never one of scheduler-only's still being deleted
                await kube.create(f"/apis/apps/v1/namespaces/{ns}/deployments",
                                  module_deployment(100 + i, b.bases, "0.0.1", fake_nodes=True))
            done = await until(lambda: len(clock.alive) >= pods and clock.count_running() >= pods,
                               b.args.timeout, "all null-kubelet pods Running")
            cores = b.cores_used_since(cpu_before, done - start_t)
            work = control_plane_work(work_before, await b.component_metrics(keep_as=f"{prefix}-after"))
    finally:
        for task in fleet_work:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    latencies = [clock.running[k] - clock.bound[k] for k in clock.alive if k in clock.running and k in clock.bound]
    stalls = progress_stalls(start_t, clock.stages())
    await clear_fake_pods(b, ns)
    if fleet is not None:
        await gather_limited([writer.delete(f"{LEASES}/{n}") for n in fleet], 64)
        await writer.close()
    return {f"null_kubelet_{prefix}_total_s": round(done - start_t, 2),
            f"null_kubelet_{prefix}_bound_to_running_p50_s": round(percentile(latencies, 50), 3),
            f"null_kubelet_{prefix}_bound_to_running_p99_s": round(percentile(latencies, 99), 3),
            # the control plane's CPU for the same pods with a kubelet that costs nothing (the bench is the null
            # kubelet): read against the control plane's CPU in vkprovider's scenario, it says whether vkprovider
            # makes the control plane work more per pod, or only takes CPU from it
            f"null_kubelet_{prefix}_control_plane_cpu_s": cores["control_plane_cpu_s"],
            f"null_kubelet_{prefix}_control_plane_work": work,
            f"null_kubelet_{prefix}_progress_stalls": stalls,
            **{f"null_kubelet_{prefix}_cores_{name}": cores.get(f"cores_{name}", math.nan)
               for name in (*CONTROL_PLANE, "control_plane", "bench", "all")}}


async def renew_forever(writer: Kube, fleet: list[str]) -> None:
    """Each fake node's Lease renewed every 10 s, one renewal every 10 s / N: spread out, as kubelets do. Each is
    sent on a clock (the i-th at start + i * 10 s / N), so a busy event loop sends late ones at once rather than
    renewing less often than a fleet does."""
    lane = writer.lane(128)
    period = 10.0 / len(fleet)
    tasks: set[asyncio.Task[Any]] = set()
    due = time.monotonic()
    while True:
        for name in fleet:
            task = asyncio.create_task(lane.patch(f"{LEASES}/{name}", {"spec": {"renewTime": micro_now()}},
                                                  kind="merge"))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            due += period
            await asyncio.sleep(max(0.0, due - time.monotonic()))


async def watch_pods(writer: Kube) -> None:
    """What a fleet's kubelets receive together: every module pod's changes, as one watch carries them (each
    kubelet watches the pods bound to it; vkprovider watches the module pods, as this does)."""
    while True:
        async with contextlib.aclosing(writer.watch("/api/v1/pods", params={
                "labelSelector": f"{MODULE_LABELS[0]}={MODULE_LABEL_VALUE}", "resourceVersion": "0",
                "timeoutSeconds": 3600})) as events:
            async for _ in events:
                pass
