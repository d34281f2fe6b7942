"""``make bench``: vkprovider's speed and cost against this machine's own ceiling.

One run brings up the local control plane (.local/bench-cluster), then runs, in order:

- ``limit``    the ceiling: apiserver write throughput (a raw asyncio client creating and patching ConfigMaps),
               scheduler-only placement (N plain fake Nodes, M Deployments of N replicas: time to all bound), and
               the floors of burst and rollout: the same Deployments (1, then M) with a null kubelet in this
               process that marks each pod Running the moment it is bound (the control plane's time alone);
- ``register`` N simulated bases -> N Ready vnodes: time, API writes per node;
- ``density``  pod startup at a sustained rate (the Kubernetes density SLO's shape): bare module pods created at
               R pods/s for T seconds onto the N vnodes, each its own biz -> create->Running and bound->Running
               p50/p99; then the pods are deleted (uninstalls) before the next scenario;
- ``burst``    one Deployment of N replicas (a module pod per vnode) at once -> p50/p99 bound->Running, and how
               much of it is vkprovider's own (its pod start histogram) and the apiserver's answer to its writes;
               then the pods are deleted;
- ``rollout``  the same M x N Deployments on the vnodes -> all Running: total, ratio to ``limit``'s scheduler-only
               time, p50/p99 bound->Running; vkprovider RSS against running pods (bytes per pod, linearity);
- ``steady``   idle bases: vkprovider CPU share, RSS, API writes per node per minute;
- ``churn``    a rolling update of every module: total time, installs and uninstalls the simulator counted;
- ``replicas`` several replicas behind one round-robin endpoint (as a Service): one replica with R bases, then
               3 replicas with 3R bases and a module on each (R: --replica-bases; CPU and RSS per replica against
               the one replica's), then one replica SIGKILLed: re-own p50/p99/max, Ready flips of vnodes and pods,
               installs, uninstalls.

vkprovider, the simulator and the control plane are separate processes; vkprovider uses the restricted RBAC
identity and its production defaults. The control plane is the tests' and ``make run``'s (localcluster.py): its
controller-manager runs every default controller, and ``limit``'s floors run on that same cluster in the same run, so
floors and scenarios compare on one control plane. Each scenario reports every process's cores (``cores_<name>``)
and its run-queue wait (``runq_wait_<name>``: cores' worth of time it was ready to run but had no CPU), so a reader sees
who uses the machine and who is slowed by the others on it. Results: ``bench/results/<scenario>.json``
(``{"scenario", "params", "metrics", "targets"}``) and ``<scenario>.png``; a table on stdout.
It reports; it never fails ``make test``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.procstat import Sample, cpu_share, runqueue_wait_s, sample
from tests.integration.harness import SEED_TOLERATION, ProviderProcess, SimProcess
from tests.integration.lb import RoundRobin
from vkprovider.kube.client import ApiError, Kube
from vkprovider.kube.informer import Informer

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CLUSTER_DIR = ROOT / ".local" / "bench-cluster"
ENV = "bench"
FAKE_LABEL = "bench.vkprovider.io/fake"
WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")  # their pid files' names
RUNQ = "runq:"  # component_cpu's key prefix for a component's run-queue wait (seconds), next to its CPU seconds
MB = 1024 * 1024
VKPROVIDER_FRAME = re.compile(r"\((?:[^)]*/)?vkprovider/(?!.*site-packages)")

# Control-plane clients get room to run at the machine's speed (defaults: scheduler 50 QPS, controller-manager
# 20 QPS); the same cluster serves every scenario, so the scheduler-only baseline and vkprovider's rollout compare.
CLUSTER_ARGS = [
    "--node-monitor-grace-period", "120s",
    "--controller-manager-arg=--kube-api-qps=500", "--controller-manager-arg=--kube-api-burst=1000",
    "--controller-manager-arg=--concurrent-deployment-syncs=10",
    "--controller-manager-arg=--concurrent-replicaset-syncs=10",
    "--scheduler-arg=--kube-api-qps=500", "--scheduler-arg=--kube-api-burst=1000",
]


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[index]


def histogram_quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float:
    """The q-quantile (0..1) of what a cumulative histogram counted between two reads, interpolated within its
    bucket as Prometheus's histogram_quantile does (the last finite bound when it falls in +Inf)."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return math.nan
    rank = q * counts[-1]
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * ((rank - below) / (count - below) if count > below else 1.0)
        lower, below = bound, count
    return lower


def refused_by_flow_schema(metrics_text: str) -> dict[str, float]:
    """The apiserver's ``apiserver_flowcontrol_rejected_requests_total`` summed by FlowSchema (over its reasons)."""
    out: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith("apiserver_flowcontrol_rejected_requests_total{"):
            schema = re.search(r'flow_schema="([^"]*)"', line)
            key = schema.group(1) if schema else "?"
            out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def refused_between(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What was refused between two reads of :func:`refused_by_flow_schema`, by FlowSchema (none left out)."""
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}


def pin_threads(pid: int, cpus: set[int]) -> None:
    """Every thread of a process onto ``cpus`` (a process's affinity is its threads'; new ones inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(task.name), cpus)


def target(name: str, value: float, limit: float, *, at_most: bool = True,
           floor: float | None = None) -> dict[str, Any]:
    """A target of issue 17. ``floor`` is the same quantity measured in the same run for a kubelet fleet that costs
    nothing (limit's null kubelet fleet): what this machine's control plane allows any kubelet, so a miss whose floor
    misses too is the control plane's, by as much as the floor is past the target."""
    def meets(v: float) -> bool:
        return (v <= limit if at_most else v >= limit) if not math.isnan(v) else False

    row: dict[str, Any] = {"name": name, "value": round(value, 4), "target": f"{'<=' if at_most else '>='} {limit:g}",
                           "pass": meets(value)}
    if floor is not None and not math.isnan(floor):
        row["floor"] = round(floor, 4)
        row["floor_pass"] = meets(floor)
    return row


@dataclass
class Result:
    scenario: str
    params: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    targets: list[dict[str, Any]] = field(default_factory=list)
    chart: Callable[[Path], None] | None = None

    def write(self) -> None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        body = {"scenario": self.scenario, "params": self.params, "metrics": self.metrics, "targets": self.targets}
        (RESULTS / f"{self.scenario}.json").write_text(json.dumps(body, indent=2, default=float) + "\n")
        if self.chart is not None:
            try:
                self.chart(RESULTS / f"{self.scenario}.png")
            except Exception as exc:  # a chart must not lose the numbers
                log(f"chart for {self.scenario} failed: {exc!r}")


# ------------------------------------------------------------------------------------------- watchers


class PodClock:
    """When each pod of a namespace was first seen, bound to a node, and Running+Ready (monotonic seconds)."""

    def __init__(self, kube: Kube, namespace: str, on_bound: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.on_bound = on_bound  # called once per pod, when it is first seen bound
        self.created: dict[str, float] = {}
        self.bound: dict[str, float] = {}
        self.running: dict[str, float] = {}
        self.version: dict[str, str] = {}
        self.placed: dict[str, tuple[str, str]] = {}  # pod -> (node, biz name)
        self.alive: set[str] = set()
        self.informer = Informer(kube, f"/api/v1/namespaces/{namespace}/pods", on_change=self._seen,
                                 page_size=1000)

    def _seen(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        now = time.monotonic()
        if new is None:
            self.alive.discard(key)
            return
        uid = key
        self.alive.add(uid)
        self.created.setdefault(uid, now)
        if new.get("spec", {}).get("nodeName") and uid not in self.bound:
            self.bound[uid] = now
            if self.on_bound is not None:
                self.on_bound(new)
        status = new.get("status") or {}
        if status.get("phase") == "Running" and any(
                c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []):
            self.running.setdefault(uid, now)
        container = new["spec"]["containers"][0]
        env = (container.get("env") or [{}])[0]
        self.version[uid] = str(env.get("value", ""))
        if new["spec"].get("nodeName"):
            self.placed[uid] = (new["spec"]["nodeName"], str(container.get("name", "")))

    def count_bound(self, keys: set[str] | None = None) -> int:
        return sum(1 for k in (keys or self.alive) if k in self.bound)

    def count_running(self, keys: set[str] | None = None) -> int:
        return sum(1 for k in (keys or self.alive) if k in self.running)


class NodeWatch:
    def __init__(self, kube: Kube, selector: str) -> None:
        self.ready_at: dict[str, float] = {}
        self.informer = Informer(kube, "/api/v1/nodes", label_selector=selector, on_change=self._seen,
                                 page_size=1000)

    def _seen(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        if new is None:
            self.ready_at.pop(key, None)
            return
        for cond in (new.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "Ready" and cond.get("status") == "True":
                self.ready_at.setdefault(key, time.monotonic())


class HolderWatch:
    """Who holds each vnode Lease, and when each one last changed holder (monotonic seconds)."""

    def __init__(self, kube: Kube, selector: str) -> None:
        self.holder: dict[str, str] = {}
        self.changed_at: dict[str, float] = {}
        self.changes = 0
        self.informer = Informer(kube, "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                                 label_selector=selector, on_change=self._seen, page_size=1000)

    def _seen(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        if new is None:
            self.holder.pop(key, None)
            return
        holder = str((new.get("spec") or {}).get("holderIdentity") or "")
        if self.holder.get(key) != holder:
            if key in self.holder:
                self.changes += 1
            self.holder[key] = holder
            self.changed_at[key] = time.monotonic()

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for holder in self.holder.values():
            found[holder] = found.get(holder, 0) + 1
        return found


class ReadyFlips:
    """Ready=True -> not True transitions of the objects an informer sees (vnodes or pods), counted from ``arm``."""

    def __init__(self, kube: Kube, path: str, selector: str | None = None) -> None:
        self.ready: dict[str, bool] = {}
        self.flips = 0
        self.armed = False
        self.informer = Informer(kube, path, label_selector=selector, on_change=self._seen, page_size=1000)

    def _seen(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        if new is None:
            self.ready.pop(key, None)
            return
        now_ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in (new.get("status") or {}).get("conditions") or [])
        if self.armed and self.ready.get(key) and not now_ready:
            self.flips += 1
        self.ready[key] = now_ready

    def arm(self) -> None:
        self.flips, self.armed = 0, True

    def count_ready(self) -> int:
        return sum(self.ready.values())


@contextlib.asynccontextmanager
async def running(informer: Informer) -> Any:
    task = asyncio.create_task(informer.run())
    try:
        await asyncio.wait_for(informer.synced.wait(), 60)
        yield informer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(predicate: Callable[[], bool], timeout_s: float, what: str,
                tick: Callable[[], None] | None = None, interval_s: float = 0.25) -> float:
    """Wait for ``predicate``; returns the monotonic time it became true; raises after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if tick is not None:
            tick()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout_s:.0f}s")
        await asyncio.sleep(interval_s)
    if tick is not None:
        tick()
    return time.monotonic()


async def gather_limited(jobs: list[Awaitable[Any]], limit: int) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(job: Awaitable[Any]) -> Any:
        async with gate:
            return await job

    return list(await asyncio.gather(*(one(j) for j in jobs)))


# ------------------------------------------------------------------------------------------- objects


def module_deployment(index: int, replicas: int, version: str, *, fake_nodes: bool) -> dict[str, Any]:
    """samples/module-deployment.yaml, renamed, spread one replica per node, on vnodes of ENV or fake nodes."""
    dep = yaml.safe_load((ROOT / "samples" / "module-deployment.yaml").read_text())
    dep["metadata"] = {"name": f"module-{index}"}
    app = f"module-{index}"
    dep["spec"]["replicas"] = replicas
    dep["spec"]["selector"] = {"matchLabels": {"app": app}}
    template = dep["spec"]["template"]
    template["metadata"]["labels"]["app"] = app
    spec = template["spec"]
    spec["containers"][0]["name"] = f"biz{index}"
    # One jar per biz, as in a real cluster (a jar's manifest names its biz).
    spec["containers"][0]["image"] = spec["containers"][0]["image"].replace("/biz1-", f"/biz{index}-")
    spec["containers"][0]["env"][0]["value"] = version
    spec["topologySpreadConstraints"] = [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                          "whenUnsatisfiable": "DoNotSchedule",
                                          "labelSelector": {"matchLabels": {"app": app}}}]
    if fake_nodes:
        spec.pop("affinity", None)
        spec["nodeSelector"] = {FAKE_LABEL: "true"}
    else:
        spec["tolerations"].append({"key": "schedule.koupleless.io/node-env", "operator": "Equal", "value": ENV,
                                    "effect": "NoExecute"})
        terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        terms["nodeSelectorTerms"][0]["matchExpressions"].append(
            {"key": "virtual-kubelet.koupleless.io/env", "operator": "In", "values": [ENV]})
    return dep


def micro_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def fake_node(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {FAKE_LABEL: "true", "kubernetes.io/hostname": name}}}


def ready_status() -> dict[str, Any]:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {"status": {
        "capacity": {"cpu": "4", "memory": "16Gi", "pods": "200"},
        "allocatable": {"cpu": "4", "memory": "16Gi", "pods": "200"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "Bench", "message": "fake node",
                        "lastHeartbeatTime": now, "lastTransitionTime": now}]}}


# ------------------------------------------------------------------------------------------- the run


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.bases: int = args.bases
        self.modules: int = args.modules
        self.results: list[Result] = []
        self.admin: Kube | None = None
        self.cluster: dict[str, Any] = {}
        self.provider: ProviderProcess | None = None
        self.sim: SimProcess | None = None
        self.scheduler_only_s = math.nan
        self.null_kubelet: dict[str, float] = {}  # limit's floor for burst (null_kubelet_burst)
        self.rss_bases_only = 0
        self.ns = ""
        self.clock: PodClock | None = None
        self.clock_task: asyncio.Task[None] | None = None
        self.params = {"bases": self.bases, "modules_per_base": self.modules, "quick": args.quick,
                       "cpus": os.cpu_count(), "steady_s": args.steady_seconds, "split_cores": args.split_cores}

    # --- cluster and processes

    def cluster_up(self) -> None:
        log("starting the local control plane (cached build) ...")
        self.cluster_down()  # what an interrupted run left: every run starts from an empty cluster
        cmd = [sys.executable, str(ROOT / "hack/controlplane/localcluster.py"), "up", "--dir", str(CLUSTER_DIR),
               "--owner-pid", str(os.getpid()), *CLUSTER_ARGS]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        self.cluster = json.loads((CLUSTER_DIR / "state.json").read_text())

    def cluster_down(self) -> None:
        subprocess.run([sys.executable, str(ROOT / "hack/controlplane/localcluster.py"), "down", "--dir",
                        str(CLUSTER_DIR), "--purge"], check=False, capture_output=True)

    async def provider_writes(self) -> float:
        assert self.provider is not None
        total = 0.0
        for line in (await self.provider.metrics()).splitlines():
            if line.startswith("rest_client_requests_total{") and any(
                    f'method="{m}"' in line for m in WRITE_METHODS):
                total += float(line.rsplit(" ", 1)[1])
        return total

    async def provider_counter(self, series: str) -> float:
        """One series of vkprovider's /metrics, e.g. ``vkprovider_lease_transitions_total{event="lost"}``."""
        assert self.provider is not None
        for line in (await self.provider.metrics()).splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    async def module_reconciles(self) -> float:
        """vkprovider's module reconciles so far (every result)."""
        assert self.provider is not None
        series = r'^controller_runtime_reconcile_total\{controller="module",[^}]*\} (\S+)$'
        return sum(float(n) for n in re.findall(series, await self.provider.metrics(), re.M))

    async def pod_status_writes(self) -> dict[str, float]:
        """vkprovider's pod status writes so far, by the phase written."""
        assert self.provider is not None
        return {phase: float(n) for phase, n in re.findall(
            r'^vkprovider_pod_status_writes_total\{phase="(\w+)"\} (\S+)$', await self.provider.metrics(), re.M)}

    async def provider_histogram(self, name: str, labels: str = "") -> dict[float, float]:
        """One histogram of vkprovider's /metrics as {upper bound: cumulative count} (``labels``: a label filter
        such as ``verb="PATCH"``; the matching series are summed)."""
        assert self.provider is not None
        out: dict[float, float] = {}
        for line in (await self.provider.metrics()).splitlines():
            if line.startswith(name + "_bucket{") and labels in line:
                le = re.search(r'le="([^"]+)"', line)
                if le is not None:
                    bound = math.inf if le.group(1) == "+Inf" else float(le.group(1))
                    out[bound] = out.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
        return out

    async def provider_sum(self, prefix: str, labels: str = "") -> float:
        """The sum of the series of vkprovider's /metrics that start with ``prefix`` and contain ``labels``."""
        assert self.provider is not None
        return sum(float(line.rsplit(" ", 1)[1]) for line in (await self.provider.metrics()).splitlines()
                   if line.startswith(prefix) and labels in line)

    async def provider_mean(self, name: str, labels: str = "") -> tuple[float, float]:
        """(sum, count) of one histogram of vkprovider's /metrics (the matching series summed)."""
        assert self.provider is not None
        total = {"sum": 0.0, "count": 0.0}
        for line in (await self.provider.metrics()).splitlines():
            for part in total:
                if line.startswith(f"{name}_{part}") and labels in line:
                    total[part] += float(line.rsplit(" ", 1)[1])
        return total["sum"], total["count"]

    async def apiserver_writes(self) -> dict[str, float]:
        """Writes the apiserver served, by resource[/subresource] and verb (every client, from its /metrics)."""
        assert self.admin is not None
        text = await self.admin.get("/metrics")
        out: dict[str, float] = {}
        for line in str(text).splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
            if labels.get("verb") not in ("POST", "PUT", "PATCH", "DELETE", "APPLY", "CREATE", "UPDATE"):
                continue
            what = labels.get("resource", "?") + ("/" + labels["subresource"] if labels.get("subresource") else "")
            key = f"{labels['verb']} {what}"
            out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
        return out

    async def apiserver_refused(self) -> dict[str, float]:
        """Requests the apiserver's priority and fairness refused (429), by FlowSchema: whose traffic it turned away
        (``kube-system-service-accounts`` is the controller-manager's, ``kube-scheduler`` the scheduler's)."""
        assert self.admin is not None
        return refused_by_flow_schema(str(await self.admin.get("/metrics")))


    async def event_counts(self) -> dict[str, tuple[str, int]]:
        """Every Event in the cluster: uid -> (who and why, how many times it happened)."""
        assert self.admin is not None
        items, _, _ = await self.admin.list_all("/api/v1/events")
        out = {}
        for e in items:
            who = e.get("reportingComponent") or (e.get("source") or {}).get("component") or "?"
            out[e["metadata"]["uid"]] = (f"{who} {e.get('reason')}", int(e.get("count") or 1))
        return out

    @staticmethod
    def events_between(before: dict[str, tuple[str, int]], after: dict[str, tuple[str, int]]) -> dict[str, int]:
        """Events recorded between two ``event_counts`` readings, by component and reason."""
        out: dict[str, int] = {}
        for uid, (what, count) in after.items():
            new = count - before.get(uid, (what, 0))[1]
            if new > 0:
                out[what] = out.get(what, 0) + new
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    @staticmethod
    def writes_between(before: dict[str, float], after: dict[str, float], minutes: float,
                       nodes: int) -> dict[str, float]:
        """Writes per node per minute by resource and verb between two ``apiserver_writes`` readings."""
        per = {k: (v - before.get(k, 0.0)) / max(nodes, 1) / max(minutes, 1e-9) for k, v in after.items()}
        return {k: round(v, 3) for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if v > 0.0005}

    def provider_sample(self) -> Sample:
        assert self.provider is not None and self.provider.proc is not None
        return sample(self.provider.proc.pid)

    async def fresh_namespace(self, name: str) -> str:
        assert self.admin is not None
        await self.admin.create("/api/v1/namespaces", {"metadata": {"name": name}})
        for _ in range(120):
            with contextlib.suppress(Exception):
                await self.admin.get(f"/api/v1/namespaces/{name}/serviceaccounts/default")
                return name
            await asyncio.sleep(0.25)
        raise TimeoutError(f"namespace {name} has no default ServiceAccount")

    # --- limit

    async def limit(self) -> Result:
        assert self.admin is not None
        kube = self.admin
        writes = 2000 if not self.args.quick else 500
        ns = await self.fresh_namespace(f"bench-limit-{int(time.time())}")
        result = Result("limit", {**self.params, "configmaps": writes, "concurrency": 64})
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

        pods = self.bases * self.modules
        log(f"limit: scheduler-only, {self.bases} fake nodes x {self.modules} Deployments = {pods} pods")
        names = [f"bench-fake-{i:04d}" for i in range(self.bases)]
        await gather_limited([kube.create("/api/v1/nodes", fake_node(n)) for n in names], 64)
        await self.mark_ready(names)
        self.null_kubelet = await self.null_kubelet_run(ns, 1, "burst")
        await self.mark_ready(names)
        self.null_kubelet.update(await self.null_kubelet_run(ns, 1, "fleet_burst", fleet=names))
        result.metrics.update(self.null_kubelet)
        await self.mark_ready(names)
        clock = PodClock(kube, ns)
        timeline: list[tuple[float, int]] = []
        async with running(clock.informer):
            start = time.monotonic()
            for i in range(self.modules):
                await kube.create(f"/apis/apps/v1/namespaces/{ns}/deployments",
                                  module_deployment(i, self.bases, "0.0.1", fake_nodes=True))
            done = await until(lambda: clock.count_bound() >= pods and len(clock.alive) >= pods,
                               self.args.timeout, "all pods bound to fake nodes",
                               tick=lambda: timeline.append((time.monotonic() - start, clock.count_bound())))
        self.scheduler_only_s = done - start
        latencies = [clock.bound[k] - clock.created[k] for k in clock.alive if k in clock.bound]
        result.metrics.update({
            "scheduler_only_s": round(self.scheduler_only_s, 2),
            "scheduler_pods_per_s": round(pods / self.scheduler_only_s, 1),
            "created_to_bound_p50_s": round(percentile(latencies, 50), 3),
            "created_to_bound_p99_s": round(percentile(latencies, 99), 3),
        })
        log("limit: cleaning up (pods on fake nodes are force-deleted: no kubelet will confirm)")
        await self.clear_fake_pods(ns)
        await self.mark_ready(names)
        rollout_floor = await self.null_kubelet_run(ns, self.modules, "rollout")
        self.null_kubelet.update(rollout_floor)
        result.metrics.update(rollout_floor)
        await self.mark_ready(names)
        fleet_floor = await self.null_kubelet_run(ns, self.modules, "fleet_rollout", fleet=names)
        self.null_kubelet.update(fleet_floor)
        result.metrics.update(fleet_floor)
        log(f"limit: {result.metrics}")
        await gather_limited([kube.delete(f"/api/v1/nodes/{n}") for n in names], 64)
        await kube.delete(f"/api/v1/namespaces/{ns}")

        def chart(path: Path) -> None:
            plt = pyplot()
            fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
            left.bar(["creates/s", "patches/s"], [result.metrics["apiserver_creates_per_s"],
                                                  result.metrics["apiserver_patches_per_s"]], color="#4c72b0")
            left.set_title("kube-apiserver write throughput (raw asyncio client)")
            right.plot([t for t, _ in timeline], [n for _, n in timeline], color="#dd8452")
            right.set_title(f"scheduler-only: {pods} pods bound on fake nodes")
            right.set_xlabel("seconds since the first Deployment")
            right.set_ylabel("pods bound")
            save_chart(fig, path)

        result.chart = chart
        return result

    async def clear_fake_pods(self, ns: str) -> None:
        """Remove every Deployment, ReplicaSet and pod of ``ns`` at once (the fake nodes have no kubelet to confirm a
        graceful delete: the pods are force-deleted, their controllers orphaned first so none is recreated)."""
        assert self.admin is not None
        kube = self.admin
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

        deadline = time.monotonic() + self.args.timeout
        while await left():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the fake nodes' Deployments, ReplicaSets and pods of {ns} not gone")
            await asyncio.sleep(0.5)

    async def mark_ready(self, names: list[str]) -> None:
        """The fake nodes Ready with fresh heartbeat times (the node controller keeps them Ready between runs)."""
        assert self.admin is not None
        await gather_limited([self.admin.patch(f"/api/v1/nodes/{n}/status", ready_status(), kind="merge")
                              for n in names], 64)

    async def null_kubelet_run(self, ns: str, deployments: int, prefix: str, *,
                               fleet: list[str] | None = None) -> dict[str, float]:
        """The machine's floor for a scenario of vkprovider's: the same Deployments (each N replicas) on the fake
        nodes, and a null kubelet (this process) that PATCHes each pod Running and Ready the moment its watch shows
        the binding. What that takes is the control plane's and this machine's alone (scheduling, the status writes
        and their watch delivery): what burst (1 Deployment) or rollout (M) measures beyond it is vkprovider's.

        With ``fleet`` (the fake nodes' names) it does the least a fleet of kubelets must: as user vkprovider (the
        same API priority level and rights as vkprovider), it renews a Lease per node every 10 s and posts one
        Event per pod next to its status, as vkprovider does (Lease renewals, BizInstalled)."""
        assert self.admin is not None
        kube, pods = self.admin, self.bases * deployments
        writer = kube if fleet is None else await Kube.connect(str(CLUSTER_DIR / "vkprovider.kubeconfig"),
                                                               max_inflight=64)
        writes: set[asyncio.Task[Any]] = set()
        running_status = {"status": {"phase": "Running", "conditions": [
            {"type": t, "status": "True"} for t in ("Initialized", "ContainersReady", "Ready")]}}

        async def start(pod: dict[str, Any]) -> None:
            md = pod["metadata"]
            await writer.patch(f"/api/v1/namespaces/{md['namespace']}/pods/{md['name']}/status", running_status,
                               kind="strategic")
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

        leases = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
        renewals: asyncio.Task[None] | None = None
        if fleet is not None:
            def lease(name: str) -> dict[str, Any]:
                return {"metadata": {"name": name}, "spec": {"holderIdentity": name, "leaseDurationSeconds": 40,
                                                             "renewTime": micro_now()}}
            await gather_limited([writer.create(leases, lease(n)) for n in fleet], 64)

            async def renew_forever() -> None:
                lane = writer.lane(128)
                period = 10.0 / len(fleet)
                tasks: set[asyncio.Task[Any]] = set()
                while True:
                    for name in fleet:  # one every period: each node's Lease every 10 s, spread out
                        task = asyncio.create_task(lane.patch(f"{leases}/{name}",
                                                              {"spec": {"renewTime": micro_now()}}, kind="merge"))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                        await asyncio.sleep(period)

            renewals = asyncio.create_task(renew_forever())
        log(f"limit: null kubelet{' fleet' if fleet else ''}, {deployments} Deployments x {self.bases} replicas on "
            f"the fake nodes ({prefix})")
        clock = PodClock(kube, ns, on_bound=start_it)
        try:
            async with running(clock.informer):
                start_t = time.monotonic()
                for i in range(deployments):  # names of their own: never one of scheduler-only's still being deleted
                    await kube.create(f"/apis/apps/v1/namespaces/{ns}/deployments",
                                      module_deployment(100 + i, self.bases, "0.0.1", fake_nodes=True))
                done = await until(lambda: len(clock.alive) >= pods and clock.count_running() >= pods,
                                   self.args.timeout, "all null-kubelet pods Running")
        finally:
            if renewals is not None:
                renewals.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewals
        latencies = [clock.running[k] - clock.bound[k] for k in clock.alive if k in clock.running and k in clock.bound]
        await self.clear_fake_pods(ns)
        if fleet is not None:
            await gather_limited([writer.delete(f"{leases}/{n}") for n in fleet], 64)
            await writer.close()
        return {f"null_kubelet_{prefix}_total_s": round(done - start_t, 2),
                f"null_kubelet_{prefix}_bound_to_running_p50_s": round(percentile(latencies, 50), 3),
                f"null_kubelet_{prefix}_bound_to_running_p99_s": round(percentile(latencies, 99), 3)}

    def component_cpu(self) -> dict[str, float]:
        """Cumulative CPU seconds of every process in the run: where the machine's two cores go."""
        pids = {p.stem: int(p.read_text()) for p in (CLUSTER_DIR / "pids").glob("*.pid") if p.stem != "watchdog"}
        if self.provider and self.provider.proc:
            pids["vkprovider"] = self.provider.proc.pid
        if self.sim and self.sim.proc:
            pids["simulator"] = self.sim.proc.pid
        pids["bench"] = os.getpid()
        found = {}
        for name, pid in pids.items():
            try:
                found[name] = sample(pid).cpu_s
                found[RUNQ + name] = runqueue_wait_s(pid)
            except OSError:
                continue
        return found

    @staticmethod
    def cores_used(before: dict[str, float], after: dict[str, float], wall_s: float) -> dict[str, float]:
        """Cores each component used between two `component_cpu` readings (2.0 = the whole machine)."""
        both = [n for n in after if n in before and wall_s > 0]
        used = {f"cores_{n}": round((after[n] - before[n]) / wall_s, 2) for n in both if not n.startswith(RUNQ)}
        used["cores_all"] = round(sum(used.values()), 2)
        # Cores' worth of time each component was ready to run but waited for a CPU: a process that waits as long
        # as it runs does its work at half the speed a free core would give it.
        used |= {f"runq_wait_{n.removeprefix(RUNQ)}": round(max(0.0, after[n] - before[n]) / wall_s, 2)
                 for n in both if n.startswith(RUNQ)}  # a thread that ended took its wait with it: never below 0
        # The control plane's CPU seconds spread over every core: the shortest this scenario could take on this
        # machine had vkprovider and the simulated bases cost nothing (the control plane still serves their
        # writes). A floor above a time target means the control plane, not vkprovider, is what stops it.
        control_plane = sum(after[n] - before[n] for n in CONTROL_PLANE if n in after and n in before)
        used["control_plane_cpu_s"] = round(control_plane, 1)
        used["control_plane_floor_s"] = round(control_plane / (os.cpu_count() or 1), 2)
        return used

    # --- register

    async def register(self) -> Result:
        assert self.admin is not None
        result = Result("register", dict(self.params))
        self.provider = ProviderProcess(
            str(CLUSTER_DIR / "vkprovider.kubeconfig"), ENV, VKP_LOG_LEVEL="INFO",
            VKP_BASE_UNREACHABLE_AFTER="25", VKP_BASE_DEAD_AFTER="600", VKP_BASE_QUERY_INTERVAL="30",
            VKP_ORPHAN_GRACE="30")
        self.provider.log_path = ROOT / ".local" / "bench-logs" / "vkprovider.log"
        self.provider.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.provider.log_path.write_bytes(b"")
        await self.provider.start()
        idle = self.provider_sample()
        writes0 = await self.provider_writes()
        by_kind0 = await self.apiserver_writes()
        events0 = await self.event_counts()
        watch = NodeWatch(self.admin, f"virtual-kubelet.koupleless.io/env={ENV}")
        profiler = self.start_profile(30, "register") if self.args.profile else None
        timeline: list[tuple[float, int]] = []
        async with running(watch.informer):
            cpu_before = {**self.component_cpu(), "simulator": 0.0}
            start = time.monotonic()
            self.sim = SimProcess(self.provider.endpoint, "--bases", str(self.bases), "--identity-prefix", "bench",
                                  "--base-version", "1.1.1", "--install-latency", "0", "--uninstall-latency", "0",
                                  "--heartbeat-interval", str(self.args.heartbeat_interval),
                                  "--heartbeat-spread", "1", name="bench-sim")
            self.sim.log_path = ROOT / ".local" / "bench-logs" / "sim.log"
            await self.sim.start(timeout_s=300)
            log(f"register: simulator up with {self.bases} bases after {time.monotonic() - start:.1f}s")
            done = await until(lambda: len(watch.ready_at) >= self.bases, self.args.timeout, "all vnodes Ready",
                               tick=lambda: timeline.append((time.monotonic() - start, len(watch.ready_at))))
        elapsed = done - start
        cores = self.cores_used(cpu_before, self.component_cpu(), elapsed)
        await asyncio.sleep(2)
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes what it sampled so far on an interrupt
        writes = await self.provider_writes() - writes0
        after = self.provider_sample()
        self.rss_bases_only = after.rss_bytes
        result.metrics.update({
            "time_to_all_ready_s": round(elapsed, 2),
            "api_writes": writes,
            "api_writes_per_node": round(writes / self.bases, 2),
            "provider_rss_idle_mb": round(idle.rss_bytes / MB, 1),
            "provider_rss_mb": round(after.rss_bytes / MB, 1),
            "provider_rss_per_base_kb": round((after.rss_bytes - idle.rss_bytes) / self.bases / 1024, 1),
            "provider_cpu_s": round(after.cpu_s - idle.cpu_s, 2),
            **cores,
        })
        result.metrics["apiserver_writes_per_node"] = {
            k: round(v, 2) for k, v in self.writes_between(by_kind0, await self.apiserver_writes(), 1.0,
                                                                      self.bases).items()}
        result.metrics["events"] = self.events_between(events0, await self.event_counts())
        result.metrics["provider_node_writes"] = {
            kind: float(v) for kind, v in re.findall(r'^vkprovider_node_writes_total\{kind="(\w+)"\} (\S+)$',
                                                    await self.provider.metrics(), re.M)}
        if profiler is not None:
            result.metrics["profile_top"] = await self.finish_profile(profiler, "register")
        result.targets += [target("time_to_all_ready_s", elapsed, 5),  # issue 17's targets
                           target("api_writes_per_node", writes / self.bases, 3.5)]
        log(f"register: {result.metrics}")

        def chart(path: Path) -> None:
            plt = pyplot()
            fig, ax = plt.subplots(figsize=(7, 4))
            ax.plot([t for t, _ in timeline], [n for _, n in timeline])
            ax.axhline(self.bases, color="grey", linestyle=":")
            ax.set_title(f"{self.bases} bases -> Ready vnodes ({elapsed:.1f}s)")
            ax.set_xlabel("seconds since the simulator started")
            ax.set_ylabel("Ready vnodes")
            save_chart(fig, path)

        result.chart = chart
        return result

    # --- density

    async def density(self) -> Result:
        assert self.admin is not None and self.provider is not None
        kube, rate, seconds = self.admin, float(self.args.density_rate), float(self.args.density_seconds)
        count = int(rate * seconds)
        result = Result("density", {**self.params, "pods_per_s": rate, "seconds": seconds, "pods": count})
        ns = await self.fresh_namespace(f"bench-density-{int(time.time())}")
        clock = PodClock(kube, ns)
        created_at: dict[str, float] = {}
        failures: list[str] = []

        async def create(i: int) -> None:
            name = f"dens-{i:05d}"
            pod = {"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": name, "labels": {"module-controller.koupleless.io/component": "module"}},
                   "spec": {"containers": [{"name": f"dens{i}", "image": f"https://repo.example.com/dens{i}-1-ark-biz.jar",
                                            "env": [{"name": "BIZ_VERSION", "value": "1"}]}],
                            "tolerations": [SEED_TOLERATION],
                            "nodeSelector": {"virtual-kubelet.koupleless.io/env": ENV}}}
            created_at[f"{ns}/{name}"] = time.monotonic()
            try:
                await kube.create(f"/api/v1/namespaces/{ns}/pods", pod)
            except Exception as exc:  # reported, not fatal: the figures say how many made it
                failures.append(repr(exc))

        log(f"density: {count} module pods at {rate:g}/s for {seconds:g}s onto {self.bases} vnodes")
        async with running(clock.informer):
            cpu_before = self.component_cpu()
            start = time.monotonic()
            tasks: list[asyncio.Task[None]] = []
            for i in range(count):
                await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
                tasks.append(asyncio.create_task(create(i)))
            await asyncio.gather(*tasks)
            sent = time.monotonic() - start
            done = await until(lambda: clock.count_running(set(created_at)) >= count - len(failures),
                               self.args.timeout, "all density pods Running", interval_s=0.5)
            cores = self.cores_used(cpu_before, self.component_cpu(), done - start)
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
        result.metrics["delete_all_s"] = await self.delete_namespace(ns)
        return result

    async def delete_namespace(self, ns: str) -> float:
        """Delete a namespace and wait until it is gone (its module pods uninstalled); returns the seconds."""
        assert self.admin is not None
        started = time.monotonic()
        await self.admin.delete(f"/api/v1/namespaces/{ns}")
        while True:
            try:
                await self.admin.get(f"/api/v1/namespaces/{ns}")
            except ApiError as exc:
                if exc.is_not_found:
                    return round(time.monotonic() - started, 2)
                raise
            if time.monotonic() - started > self.args.timeout:
                raise TimeoutError(f"namespace {ns} not gone within {self.args.timeout:.0f}s")
            await asyncio.sleep(1)

    async def retire_single_replica(self) -> None:
        """Before the replicas scenario: the earlier scenarios' modules, bases and vkprovider go, so the replicas
        are measured on a cluster that holds only their own objects."""
        assert self.admin is not None
        if self.clock_task is not None:
            self.clock_task.cancel()
            self.clock_task = None
        if self.ns and self.provider is not None:
            log(f"replicas: deleting the earlier module pods ({self.ns}) first")
            await self.delete_namespace(self.ns)
            self.ns = ""
        for proc in (self.sim, self.provider):
            if proc is not None:
                proc.kill()
        self.sim = self.provider = None
        for path in ("/api/v1/nodes", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"):
            listed, _, _ = await self.admin.list_all(
                path, params={"labelSelector": f"virtual-kubelet.koupleless.io/env={ENV}"})
            await gather_limited([self.admin.delete(f"{path}/{o['metadata']['name']}") for o in listed], 32)

    # --- burst

    async def burst(self) -> Result:
        """One Deployment of N replicas, a module pod on every vnode at once: bound->Running p50/p99 (the target is
        at 1,000 pods), split into vkprovider's own part (its pod start histogram: first sight of the pod to the
        answer to its Running write) and the apiserver's answer to vkprovider's PATCHes in the same window."""
        assert self.admin is not None and self.provider is not None
        kube, pods = self.admin, self.bases
        result = Result("burst", {**self.params, "pods": pods, "install_latency_s": 0})
        ns = await self.fresh_namespace(f"bench-burst-{int(time.time())}")
        clock = PodClock(kube, ns)
        log(f"burst: 1 Deployment x {pods} replicas, one module pod per vnode")
        profiler = self.start_profile(30, "burst") if self.args.profile else None
        async with running(clock.informer):
            start0 = await self.provider_histogram("vkprovider_pod_start_duration_seconds")
            refused_by_schema0 = await self.apiserver_refused()
            patch0 = await self.provider_mean("rest_client_request_duration_seconds", 'verb="PATCH"')
            install0 = await self.provider_mean("vkprovider_biz_command_duration_seconds", 'command="install"')
            cpu_before = self.component_cpu()
            start = time.monotonic()
            await kube.create(f"/apis/apps/v1/namespaces/{ns}/deployments",
                              module_deployment(0, pods, "0.0.1", fake_nodes=False))
            done = await until(lambda: len(clock.alive) >= pods and clock.count_running() >= pods,
                               self.args.timeout, "all burst pods Running", interval_s=0.5)
            cores = self.cores_used(cpu_before, self.component_cpu(), done - start)
            start1 = await self.provider_histogram("vkprovider_pod_start_duration_seconds")
            refused_by_schema = refused_between(refused_by_schema0, await self.apiserver_refused())
            patch1 = await self.provider_mean("rest_client_request_duration_seconds", 'verb="PATCH"')
            install1 = await self.provider_mean("vkprovider_biz_command_duration_seconds", 'command="install"')
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes what it sampled so far on an interrupt
            result.metrics["profile_top"] = await self.finish_profile(profiler, "burst")
        latencies = [clock.running[k] - clock.bound[k] for k in clock.alive if k in clock.running and k in clock.bound]
        first_bound = min(clock.bound.values(), default=start)
        last_bound = max(clock.bound.values(), default=start)

        def mean(before: tuple[float, float], after: tuple[float, float]) -> float:
            count = after[1] - before[1]
            return (after[0] - before[0]) / count if count > 0 else math.nan

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
            "provider_patch_answer_mean_s": round(mean(patch0, patch1), 3),
            "install_answer_mean_s": round(mean(install0, install1), 3),
            # the floor limit measured: the same burst on fake nodes with a null kubelet (nan without limit)
            "null_kubelet_bound_to_running_p50_s": self.null_kubelet.get("null_kubelet_burst_bound_to_running_p50_s",
                                                                         math.nan),
            "null_kubelet_bound_to_running_p99_s": self.null_kubelet.get("null_kubelet_burst_bound_to_running_p99_s",
                                                                         math.nan),
            # the same with a kubelet fleet's least API work: a Lease per node every 10 s, one Event per pod
            "null_kubelet_fleet_bound_to_running_p50_s": self.null_kubelet.get(
                "null_kubelet_fleet_burst_bound_to_running_p50_s", math.nan),
            "null_kubelet_fleet_bound_to_running_p99_s": self.null_kubelet.get(
                "null_kubelet_fleet_burst_bound_to_running_p99_s", math.nan),
            "apiserver_refused_by_flow_schema": refused_by_schema,
            **cores,
        })
        result.targets += [target("bound_to_running_p99_s", percentile(latencies, 99), 2.0,
                                  floor=self.null_kubelet.get("null_kubelet_fleet_burst_bound_to_running_p99_s"))]
        log(f"burst: {result.metrics}; deleting the pods")
        result.metrics["delete_all_s"] = await self.delete_namespace(ns)

        def chart(path: Path) -> None:
            plt = pyplot()
            fig, a = plt.subplots(1, 1, figsize=(6, 4))
            a.hist(latencies, bins=50)
            a.set_title(f"{pods} pods: bound -> Running (p50 {percentile(latencies, 50):.2f}s, "
                        f"p99 {percentile(latencies, 99):.2f}s)")
            a.set_xlabel("seconds")
            save_chart(fig, path)

        result.chart = chart
        return result

    # --- rollout

    async def rollout(self) -> Result:
        assert self.admin is not None and self.provider is not None
        kube = self.admin
        pods = self.bases * self.modules
        result = Result("rollout", {**self.params, "pods": pods, "install_latency_s": 0})
        self.ns = await self.fresh_namespace(f"bench-modules-{int(time.time())}")
        self.clock = PodClock(kube, self.ns)
        self.clock_task = asyncio.create_task(self.clock.informer.run())
        await asyncio.wait_for(self.clock.informer.synced.wait(), 60)
        timeline: list[tuple[float, int, int, int]] = []
        start = time.monotonic()

        def tick() -> None:
            rss = self.provider_sample().rss_bytes
            timeline.append((time.monotonic() - start, self.clock.count_bound(), self.clock.count_running(), rss))

        log(f"rollout: {self.modules} Deployments x {self.bases} replicas = {pods} module pods")
        profiler = self.start_profile(300, "rollout") if self.args.profile else None
        installs0 = (await self.sim.stats()).get("installCalls", 0) if self.sim else 0
        cpu_before = self.component_cpu()
        lost_series = 'vkprovider_lease_transitions_total{event="lost"}'
        lost_before = await self.provider_counter(lost_series)
        renew0 = await self.provider_histogram("vkprovider_lease_renew_duration_seconds")
        refused0 = await self.provider_sum("rest_client_requests_total{", 'code="429"')
        by_kind0 = await self.apiserver_writes()
        refused_by_schema0 = await self.apiserver_refused()
        status_writes0 = await self.pod_status_writes()
        reconciles0 = await self.module_reconciles()
        for i in range(self.modules):
            await kube.create(f"/apis/apps/v1/namespaces/{self.ns}/deployments",
                              module_deployment(i, self.bases, "0.0.1", fake_nodes=False))
        done = await until(lambda: len(self.clock.alive) >= pods and self.clock.count_running() >= pods,
                           self.args.timeout, "all module pods Running", tick=tick, interval_s=0.5)
        total = done - start
        cores = self.cores_used(cpu_before, self.component_cpu(), total)
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes what it sampled so far on an interrupt
            result.metrics["profile_top"] = await self.finish_profile(profiler, "rollout")
        latencies = [self.clock.running[k] - self.clock.bound[k] for k in self.clock.alive
                     if k in self.clock.running and k in self.clock.bound]
        stats = await self.sim.stats() if self.sim else {}
        # RSS against running pods: slope = bytes per module pod, r^2 = how linear the growth is
        points = [(n, rss) for _, _, n, rss in timeline if n > 0]
        slope, r2 = math.nan, math.nan
        if len({n for n, _ in points}) >= 3:
            xs, ys = [float(n) for n, _ in points], [float(r) for _, r in points]
            slope = statistics.linear_regression(xs, ys).slope
            r2 = statistics.correlation(xs, ys) ** 2
        await asyncio.sleep(3)
        settled = self.provider_sample().rss_bytes
        per_pod_settled = (settled - self.rss_bases_only) / pods
        leases_lost = await self.provider_counter(lost_series) - lost_before  # one replica: it must lose none
        renew1 = await self.provider_histogram("vkprovider_lease_renew_duration_seconds")
        refused = await self.provider_sum("rest_client_requests_total{", 'code="429"') - refused0
        ratio = total / self.scheduler_only_s if not math.isnan(self.scheduler_only_s) else math.nan
        null_floor = self.null_kubelet.get("null_kubelet_rollout_total_s", math.nan)
        fleet_floor = self.null_kubelet.get("null_kubelet_fleet_rollout_total_s", math.nan)
        status_writes = {phase: n - status_writes0.get(phase, 0.0)
                         for phase, n in (await self.pod_status_writes()).items()}
        result.metrics.update({
            "total_s": round(total, 2),
            "scheduler_only_s": round(self.scheduler_only_s, 2),
            "ratio_to_scheduler_only": round(ratio, 3),
            # limit's floor: the same Deployments with a null kubelet (the control plane's time for this rollout)
            "null_kubelet_rollout_s": null_floor,
            "null_kubelet_ratio_to_scheduler_only": round(null_floor / self.scheduler_only_s, 3),
            # the same with a kubelet fleet's least API work: a Lease per node every 10 s, one Event per pod
            "null_kubelet_fleet_rollout_s": fleet_floor,
            "null_kubelet_fleet_ratio_to_scheduler_only": round(fleet_floor / self.scheduler_only_s, 3),
            "bound_to_running_p50_s": round(percentile(latencies, 50), 3),
            "bound_to_running_p99_s": round(percentile(latencies, 99), 3),
            "bound_to_running_max_s": round(max(latencies, default=math.nan), 3),
            "installs": stats.get("installCalls", 0) - installs0,  # the simulated bases' install calls: one a pod
            "leases_lost": leases_lost,
            # a renewal slower than the renew deadline less the interval (5 s by default) fences its vnode
            "lease_renew_p99_s": round(histogram_quantile(0.99, renew0, renew1), 3),
            # requests the apiserver's priority and fairness turned away (each retried after its Retry-After)
            "provider_requests_refused_429": refused,
            # every client's: a refused pod create or binding is retried with backoff (the rollout stalls meanwhile)
            "apiserver_refused_by_flow_schema": refused_between(refused_by_schema0,
                                                                     await self.apiserver_refused()),
            "provider_rss_mb": round(settled / MB, 1),
            "rss_per_pod_bytes": round(per_pod_settled),
            "rss_slope_bytes_per_pod": round(slope) if not math.isnan(slope) else None,
            "rss_linear_r2": round(r2, 3) if not math.isnan(r2) else None,
            "provider_pod_status_writes_per_pod": round(sum(status_writes.values()) / pods, 2),
            # module reconciles (one looks at every pod of its base) per pod: how often a base was looked at again
            "provider_module_reconciles_per_pod": round((await self.module_reconciles() - reconciles0) / pods, 2),
            "provider_pod_status_writes_per_pod_by_phase": {k: round(v / pods, 2) for k, v in status_writes.items()},
            # every client's writes per module pod: the scheduler's bindings, the controllers', vkprovider's
            "apiserver_writes_per_pod": {
                k: round(v, 2) for k, v in self.writes_between(by_kind0, await self.apiserver_writes(), 1.0,
                                                                          pods).items()},
            **cores,
        })
        result.targets += [
            target("ratio_to_scheduler_only", ratio, 2.0,  # its p99 target is burst's, at 1,000 pods
                   floor=fleet_floor / self.scheduler_only_s),
            target("rss_per_pod_kb", per_pod_settled / 1024, 100),
            target("leases_lost", leases_lost, 0),
        ]
        log(f"rollout: {result.metrics}")

        def chart(path: Path) -> None:
            plt = pyplot()
            fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4))
            ts = [t for t, *_ in timeline]
            a.plot(ts, [x[1] for x in timeline], label="bound")
            a.plot(ts, [x[2] for x in timeline], label="Running+Ready")
            a.axvline(self.scheduler_only_s, color="grey", linestyle=":", label="scheduler-only time")
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

        result.chart = chart
        return result

    # --- steady

    def start_profile(self, duration: float, scenario: str = "steady") -> subprocess.Popen[bytes] | None:
        """py-spy over vkprovider for a scenario (collapsed stacks, sampled 100/s, idle frames left out)."""
        spy = Path(sys.executable).with_name("py-spy")
        if not spy.exists() or self.provider is None or self.provider.proc is None:
            log("profile: py-spy not installed in the virtualenv (pip install py-spy); no profile")
            return None
        out = RESULTS / f"{scenario}-profile.txt"
        out.unlink(missing_ok=True)
        return subprocess.Popen([str(spy), "record", "--pid", str(self.provider.proc.pid), "--duration",
                                 str(int(duration)), "--format", "raw", "--rate", "100",
                                 "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def finish_profile(self, profiler: subprocess.Popen[bytes], scenario: str = "steady") -> list[str]:
        """The functions where vkprovider spent its samples (inclusive share), most first."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(profiler.wait, 120)
        out = RESULTS / f"{scenario}-profile.txt"
        if not out.exists():
            return []
        inclusive: dict[str, int] = {}
        total = 0
        for line in out.read_text(errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not count_text.isdigit():
                continue
            count = int(count_text)
            total += count
            # a frame is "function (path/file.py:line)"; py-spy gives vkprovider's paths relative or absolute
            frames = {f.split(" (", 1)[0] + " " + f.rsplit("/", 1)[-1].split(":", 1)[0].rstrip(")")
                      for f in stack.split(";") if VKPROVIDER_FRAME.search(f)}
            for frame in frames:
                inclusive[frame] = inclusive.get(frame, 0) + count
        top = sorted(inclusive.items(), key=lambda kv: -kv[1])[:25]
        return [f"{100 * n / max(total, 1):.1f}% {frame}" for frame, n in top]

    EXCHANGES = {  # what vkprovider sends or receives, by kind: the series of its /metrics that count them
        "api_requests": "rest_client_requests_total{",
        "heartbeats_in": "vkprovider_heartbeats_total{",
        "arklet_calls": "vkprovider_tunnel_request_duration_seconds_count{",
        "watch_events_in": "vkprovider_informer_events_total{",
    }

    async def exchanges(self) -> dict[str, float]:
        """Cumulative network exchanges of vkprovider by kind (see ``EXCHANGES``)."""
        text = await self.provider.metrics()  # type: ignore[union-attr]
        out = dict.fromkeys(self.EXCHANGES, 0.0)
        for line in text.splitlines():
            for kind, prefix in self.EXCHANGES.items():
                if line.startswith(prefix):
                    out[kind] += float(line.rsplit(" ", 1)[1])
        return out

    async def events_settled(self, quiet_s: float = 5.0, timeout_s: float = 300.0) -> float:
        """Wait until vkprovider has posted no Event for ``quiet_s`` (a rollout's BizInstalled Events drain at
        the recorder's pace for minutes after it): "at rest" starts then. Returns how long that took."""
        started = time.monotonic()

        async def posted() -> float:
            total = 0.0
            for line in (await self.provider.metrics()).splitlines():  # type: ignore[union-attr]
                if line.startswith("vkprovider_events_posted_total{"):
                    total += float(line.rsplit(" ", 1)[1])
            return total

        last, since = await posted(), time.monotonic()
        while time.monotonic() - since < quiet_s and time.monotonic() - started < timeout_s:
            await asyncio.sleep(1.0)
            now_posted = await posted()
            if now_posted != last:
                last, since = now_posted, time.monotonic()
        return round(time.monotonic() - started, 1)

    async def steady(self) -> Result:
        duration = float(self.args.steady_seconds)
        pods = len(self.clock.alive) if self.clock is not None else 0
        result = Result("steady", {**self.params, "module_pods": pods})
        result.metrics["events_drained_after_s"] = await self.events_settled()
        log(f"steady: {self.bases} bases idle for {duration:.0f}s")
        writes0 = await self.provider_writes()
        by_kind0 = await self.apiserver_writes()
        events0 = await self.event_counts()
        profiler = self.start_profile(duration) if self.args.profile else None
        first = self.provider_sample()
        exchanges0 = await self.exchanges()
        cpu_before = self.component_cpu()
        sim_first = sample(self.sim.proc.pid) if self.sim and self.sim.proc else None
        timeline: list[tuple[float, float, float]] = []
        prev = first
        while time.monotonic() - first.wall_s < duration:
            await asyncio.sleep(5)
            cur = self.provider_sample()
            timeline.append((cur.wall_s - first.wall_s, cpu_share(prev, cur), cur.rss_bytes / MB))
            prev = cur
        last = self.provider_sample()
        cores = self.cores_used(cpu_before, self.component_cpu(), last.wall_s - first.wall_s)
        exchanges1 = await self.exchanges()
        per_s = {k: round((exchanges1[k] - exchanges0[k]) / (last.wall_s - first.wall_s), 1) for k in exchanges1}
        writes = await self.provider_writes() - writes0
        share = cpu_share(first, last)
        per_node_min = writes / self.bases / ((last.wall_s - first.wall_s) / 60)
        by_kind = self.writes_between(by_kind0, await self.apiserver_writes(), (last.wall_s - first.wall_s) / 60,
                                      self.bases)
        result.metrics.update({
            "provider_cpu_share": round(share, 4),
            "provider_rss_mb": round(last.rss_bytes / MB, 1),
            "api_writes": writes,
            "api_writes_per_node_per_min": round(per_node_min, 2),
            "apiserver_writes_per_node_per_min": by_kind,  # every client: where the writes go
            "events": self.events_between(events0, await self.event_counts()),
            # Every request sent or received costs the process about the same: CPU per exchange says whether a
            # change made vkprovider do less per exchange or merely fewer exchanges.
            "exchanges_per_s": per_s,
            "provider_cpu_ms_per_exchange": round(1000 * share / max(sum(per_s.values()), 1e-9), 3),
            **cores,
        })
        if sim_first is not None and self.sim and self.sim.proc:
            result.metrics["simulator_cpu_share"] = round(cpu_share(sim_first, sample(self.sim.proc.pid)), 4)
        if profiler is not None:
            result.metrics["profile_top"] = await self.finish_profile(profiler)
        result.targets += [
            target("provider_cpu_share", share, 0.10),  # issue 17's targets
            target("provider_rss_mb", last.rss_bytes / MB, 250),
            target("api_writes_per_node_per_min", per_node_min, 6.1),
        ]
        log(f"steady: {result.metrics}")

        def chart(path: Path) -> None:
            plt = pyplot()
            fig, ax = plt.subplots(figsize=(8, 4))
            ax.plot([t for t, _, _ in timeline], [c * 100 for _, c, _ in timeline], label="CPU % of one core")
            ax.set_xlabel("seconds")
            ax.set_ylabel("% of one core")
            ax2 = ax.twinx()
            ax2.plot([t for t, _, _ in timeline], [r for _, _, r in timeline], color="#dd8452", label="RSS MiB")
            ax2.set_ylabel("RSS MiB")
            ax.set_title(f"vkprovider at rest with {self.bases} bases")
            fig.legend(loc="upper right")
            save_chart(fig, path)

        result.chart = chart
        return result

    # --- churn

    async def churn(self) -> Result:
        assert self.admin is not None and self.sim is not None and self.clock is not None
        kube = self.admin
        clock = self.clock
        pods = self.bases * self.modules
        result = Result("churn", {**self.params, "pods": pods, "from": "0.0.1", "to": "0.0.2"})
        before = await self.sim.stats()
        log(f"churn: rolling update of {self.modules} Deployments ({pods} pods) to 0.0.2")
        timeline: list[tuple[float, int]] = []
        cpu_before = self.component_cpu()
        start = time.monotonic()
        for i in range(self.modules):
            await kube.patch(f"/apis/apps/v1/namespaces/{self.ns}/deployments/module-{i}",
                             {"spec": {"template": {"spec": {"containers": [
                                 {"name": f"biz{i}", "env": [{"name": "BIZ_VERSION", "value": "0.0.2"}]}]}}}})

        def new_running() -> int:
            return sum(1 for k in clock.alive if clock.version.get(k) == "0.0.2" and k in clock.running)

        done = await until(lambda: new_running() >= pods and len(clock.alive) == pods, self.args.timeout,
                           "every module pod on 0.0.2",
                           tick=lambda: timeline.append((time.monotonic() - start, new_running())), interval_s=0.5)
        total = done - start
        cores = self.cores_used(cpu_before, self.component_cpu(), total)
        await asyncio.sleep(3)
        after = await self.sim.stats()
        installs = after["installCalls"] - before["installCalls"]
        uninstalls = after["uninstallCalls"] - before["uninstallCalls"]
        # Every Running pod's biz must be on its base, and nothing else: two replicas the scheduler put on one
        # base share one biz (a base holds one biz per name:version), so compare sets, not counts.
        on_bases = {(f"vnode.{base['identity']}.{ENV}", b["bizName"], b["bizVersion"])
                    for base in await self.sim.bases() for b in base["bizs"]}
        wanted = {(*clock.placed[k], clock.version[k]) for k in clock.alive if k in clock.placed}
        missing, stale = wanted - on_bases, on_bases - wanted
        result.metrics.update({"total_s": round(total, 2), "installs": installs, "uninstalls": uninstalls,
                               "bizs_after": len(on_bases), "pods_sharing_a_biz": pods - len(wanted),
                               "missing_bizs": len(missing), "stale_bizs": len(stale), **cores})
        result.targets += [target("missing_bizs", len(missing), 0), target("stale_bizs", len(stale), 0),
                           target("installs_per_distinct_biz", installs / max(len(wanted), 1), 1.0)]
        log(f"churn: {result.metrics}")

        def chart(path: Path) -> None:
            plt = pyplot()
            fig, ax = plt.subplots(figsize=(7, 4))
            ax.plot([t for t, _ in timeline], [n for _, n in timeline])
            ax.axhline(pods, color="grey", linestyle=":")
            ax.set_title(f"rolling update of {pods} module pods ({total:.1f}s; {installs} installs, "
                         f"{uninstalls} uninstalls)")
            ax.set_xlabel("seconds since the first patch")
            ax.set_ylabel("pods Running on 0.0.2")
            save_chart(fig, path)

        result.chart = chart
        return result

    # --- replicas

    def replica(self, client_id: str, env: str) -> ProviderProcess:
        proc = ProviderProcess(str(CLUSTER_DIR / "vkprovider.kubeconfig"), env, CLIENT_ID=client_id,
                               VKP_LOG_LEVEL="INFO", VKP_BASE_UNREACHABLE_AFTER="25", VKP_BASE_DEAD_AFTER="600",
                               VKP_BASE_QUERY_INTERVAL="30", VKP_ORPHAN_GRACE="30")
        proc.log_path = ROOT / ".local" / "bench-logs" / f"vkprovider-{client_id}.log"
        proc.log_path.parent.mkdir(parents=True, exist_ok=True)
        proc.log_path.write_bytes(b"")
        return proc

    async def window(self, procs: dict[str, ProviderProcess], seconds: float) -> dict[str, tuple[float, float]]:
        """CPU share (of one core) and RSS (MiB) of each process over ``seconds``."""
        first = {n: sample(p.proc.pid) for n, p in procs.items() if p.proc}
        await asyncio.sleep(seconds)
        last = {n: sample(p.proc.pid) for n, p in procs.items() if p.proc}
        return {n: (round(cpu_share(first[n], last[n]), 4), round(last[n].rss_bytes / MB, 1)) for n in first}

    async def replicas(self) -> Result:
        """N bases on one replica, then 3N bases and a module each on 3 replicas, then a replica SIGKILLed."""
        assert self.admin is not None
        await self.retire_single_replica()
        kube, per = self.admin, int(self.args.replica_bases)
        env, names = "benchr", ["replica-a", "replica-b", "replica-c"]
        window_s = min(60.0, float(self.args.steady_seconds))
        result = Result("replicas", {**self.params, "replicas": 3, "bases_total": 3 * per, "window_s": window_s,
                                     "lease_s": 20, "modules_per_base": 1})
        procs: dict[str, ProviderProcess] = {}
        sims: list[SimProcess] = []
        lb = RoundRobin(lambda: [p.endpoint for p in procs.values() if p.proc and p.proc.poll() is None])
        await lb.start()
        selector = f"virtual-kubelet.koupleless.io/env={env}"
        holders = HolderWatch(kube, selector)
        nodes = ReadyFlips(kube, "/api/v1/nodes", selector)
        ns = await self.fresh_namespace(f"bench-replicas-{int(time.time())}")
        pods = ReadyFlips(kube, f"/api/v1/namespaces/{ns}/pods")

        def sim(prefix: str, count: int) -> SimProcess:
            proc = SimProcess(lb.endpoint, "--bases", str(count), "--identity-prefix", prefix, "--base-version",
                              "1.1.1", "--install-latency", "0", "--uninstall-latency", "0", "--heartbeat-interval",
                              str(self.args.heartbeat_interval), "--heartbeat-spread", "1", name=f"sim-{prefix}")
            proc.log_path = ROOT / ".local" / "bench-logs" / f"sim-{prefix}.log"
            sims.append(proc)
            return proc

        try:
            async with running(holders.informer), running(nodes.informer), running(pods.informer):
                log(f"replicas: one replica, {per} bases")
                procs[names[0]] = self.replica(names[0], env)
                await procs[names[0]].start()
                await sim("ra", per).start(timeout_s=300)
                await until(lambda: nodes.count_ready() >= per, self.args.timeout, f"{per} vnodes Ready")
                one = (await self.window(procs, window_s))[names[0]]
                log(f"replicas: one replica at {per} bases: CPU {one[0]:.3f} of a core, RSS {one[1]} MiB")

                log(f"replicas: 3 replicas, {3 * per} bases, a DaemonSet module on each")
                start = time.monotonic()
                for name in names[1:]:
                    procs[name] = self.replica(name, env)
                    await procs[name].start()
                await sim("rb", 2 * per).start(timeout_s=300)
                await until(lambda: nodes.count_ready() >= 3 * per, self.args.timeout, f"{3 * per} vnodes Ready")
                ready_s = time.monotonic() - start
                await until(lambda: len(holders.holder) >= 3 * per and min(
                    holders.counts().get(n, 0) for n in names) >= per * 0.8, self.args.timeout,
                    "leases spread over 3 replicas")
                spread_s = time.monotonic() - start
                await kube.create(f"/apis/apps/v1/namespaces/{ns}/daemonsets", {
                    "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "everywhere"},
                    "spec": {"selector": {"matchLabels": {"app": "everywhere"}}, "template": {
                        "metadata": {"labels": {"app": "everywhere",
                                                "module-controller.koupleless.io/component": "module"}},
                        "spec": {"containers": [{"name": "biz1", "image": "https://repo.example.com/biz1-1-ark-biz.jar",
                                                 "env": [{"name": "BIZ_VERSION", "value": "1"}]}],
                                 "nodeSelector": {"virtual-kubelet.koupleless.io/env": env},
                                 "tolerations": [SEED_TOLERATION]}}}})
                await until(lambda: pods.count_ready() >= 3 * per, self.args.timeout, f"{3 * per} modules Ready",
                            interval_s=1.0)
                modules_s = time.monotonic() - start
                spread = holders.counts()
                three = await self.window(procs, window_s)
                log(f"replicas: spread {spread}; per replica (CPU, RSS MiB) {three}")

                installs0 = sum([(await s.stats()).get("installCalls", 0) for s in sims])
                uninstalls0 = sum([(await s.stats()).get("uninstallCalls", 0) for s in sims])
                nodes.arm()
                pods.arm()
                changes0 = holders.changes
                victim = names[0]
                lost = [k for k, h in holders.holder.items() if h == victim]
                log(f"replicas: SIGKILL {victim} holding {len(lost)} vnodes")
                killed = time.monotonic()
                procs[victim].kill()
                live = set(names) - {victim}
                await until(lambda: all(holders.holder.get(k) in live for k in lost), self.args.timeout,
                            f"the {len(lost)} vnodes of {victim} held again")
                reown = [holders.changed_at[k] - killed for k in lost]
                await asyncio.sleep(30)  # flips and commands after the take-over would show here
                installs = sum([(await s.stats()).get("installCalls", 0) for s in sims]) - installs0
                uninstalls = sum([(await s.stats()).get("uninstallCalls", 0) for s in sims]) - uninstalls0
                after = holders.counts()
        finally:
            for proc in procs.values():
                proc.kill()
            for s_ in sims:
                s_.kill()
            await lb.stop()

        cpu3 = [three[n][0] for n in names]
        rss3 = [three[n][1] for n in names]
        result.metrics.update({
            "one_replica_bases": per,
            "one_replica_cpu_share": one[0],
            "one_replica_rss_mb": one[1],
            "three_replicas_ready_s": round(ready_s, 2),
            "three_replicas_spread_s": round(spread_s, 2),
            "three_replicas_modules_ready_s": round(modules_s, 2),
            "held_per_replica": [spread.get(n, 0) for n in names],
            "cpu_share_per_replica": cpu3,
            "rss_mb_per_replica": rss3,
            "cpu_ratio_to_one_replica": round(max(cpu3) / one[0], 3) if one[0] else None,
            "rss_ratio_to_one_replica": round(max(rss3) / one[1], 3) if one[1] else None,
            "failover_vnodes": len(lost),
            "reown_p50_s": round(percentile(reown, 50), 2),
            "reown_p99_s": round(percentile(reown, 99), 2),
            "reown_max_s": round(max(reown, default=math.nan), 2),
            "held_after_failover": [after.get(n, 0) for n in names],
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

    # --- driver

    async def run(self) -> int:
        wanted = self.args.scenarios.split(",")
        order = ["limit", "register", "density", "burst", "rollout", "steady", "churn", "replicas"]
        needs = {"density": ["register"], "burst": ["register"], "rollout": ["register"], "steady": ["register"],
                 "churn": ["register", "rollout"]}
        todo = [s for s in order if s in wanted or any(s in needs.get(w, []) for w in wanted)]
        if self.args.split_cores:
            pin_threads(os.getpid(), {1})  # vkprovider and the simulator, started from here, inherit CPU 1
        self.cluster_up()
        if self.args.split_cores:
            control_plane = {p.stem: int(p.read_text()) for p in (CLUSTER_DIR / "pids").glob("*.pid")}
            for pid in control_plane.values():
                pin_threads(pid, {0})
            log(f"split cores: the control plane ({', '.join(sorted(control_plane))}) on CPU 0; vkprovider, the "
                "simulator and the bench on CPU 1")
        self.admin = await Kube.connect(str(CLUSTER_DIR / "admin.kubeconfig"), max_inflight=128)
        try:
            for name in todo:
                result = await getattr(self, name)()
                result.write()
                self.results.append(result)
        finally:
            if self.sim:
                self.sim.kill()
            if self.provider:
                self.provider.kill()
            if self.clock_task is not None:
                self.clock_task.cancel()
            await self.admin.close()
            self.cluster_down()
        print_table(self.results)
        return 0


def save_chart(fig: Any, path: Path) -> None:
    """Lay out, write as PNG and release one figure."""
    plt = pyplot()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def print_table(results: list[Result]) -> None:
    rows: list[tuple[str, str, str, str]] = []
    for r in results:
        for t in r.targets:
            floor = ("" if "floor" not in t else
                     f"  (machine's floor {t['floor']:g}: {'within' if t['floor_pass'] else 'past'} the target)")
            rows.append((r.scenario, t["name"], f"{t['value']:g}",
                         f"{t['target']}  {'PASS' if t['pass'] else 'MISS'}{floor}"))
        for k, v in r.metrics.items():
            if not any(t["name"] == k for t in r.targets):
                rows.append((r.scenario, k, str(v), ""))
    header = ("scenario", "metric", "value", "target")
    widths = [max(len(row[i]) for row in [*rows, header]) for i in range(4)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    print(line.format("scenario", "metric", "value", "target"))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line.format(*row))
    print(f"\nresults: {RESULTS}/<scenario>.json and .png")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100 bases, 60 s steady state (about 5 minutes)")
    parser.add_argument("--bases", type=int, default=None, help="simulated bases (1000; --quick: 100)")
    parser.add_argument("--modules", type=int, default=5, help="modules (Deployments) per base (5)")
    parser.add_argument("--steady-seconds", type=float, default=None, help="idle period (300; --quick: 60)")
    parser.add_argument("--heartbeat-interval", type=float, default=12.0, help="base heartbeat period (12 s)")
    parser.add_argument("--scenarios", default="limit,register,density,burst,rollout,steady,churn,replicas")
    parser.add_argument("--replica-bases", type=int, default=334,
                        help="replicas: bases per replica (334: the failover is measured at 1,000 bases; 1,000 per "
                             "replica needs more than this machine's 2 cores: the apiserver's PATCH latency passes "
                             "1 s and lease renewals fall behind)")
    parser.add_argument("--density-rate", type=float, default=20.0, help="density: pods created per second (20)")
    parser.add_argument("--density-seconds", type=float, default=None,
                        help="density: seconds of creating (120; --quick: 30)")
    parser.add_argument("--timeout", type=float, default=900.0, help="per waiting step (s)")
    parser.add_argument("--split-cores", action="store_true",
                        help="the control plane on CPU 0, vkprovider, the simulator and the bench on CPU 1, as in a "
                             "cluster where vkprovider runs on a node of its own: what vkprovider costs the "
                             "control plane's CPU is left out (results in bench/results/split-cores/)")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy-profile vkprovider during register, burst, rollout and steady "
                             "(bench/results/<scenario>-profile.txt; needs py-spy)")
    args = parser.parse_args(argv)
    if args.bases is None:
        args.bases = 100 if args.quick else 1000
    if args.steady_seconds is None:
        args.steady_seconds = 60.0 if args.quick else 300.0
    if args.density_seconds is None:
        args.density_seconds = 30.0 if args.quick else 120.0
    return args


def main(argv: list[str] | None = None) -> int:
    global RESULTS
    args = parse_args(argv)
    if args.split_cores:
        if len(os.sched_getaffinity(0)) < 2 or not {0, 1} <= os.sched_getaffinity(0):
            print("bench: --split-cores needs CPUs 0 and 1", file=sys.stderr)
            return 2
        RESULTS = RESULTS / "split-cores"
    return asyncio.run(Bench(args).run())


if __name__ == "__main__":
    raise SystemExit(main())

