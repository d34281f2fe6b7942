"""One benchmark run's shared state: the local control plane, the admin client, vkprovider and the simulator as
separate processes, and what one scenario leaves for the next (limit's floors, the rollout's module pods).

Why it exists: the scenarios run in order on one cluster and build on each other (register starts vkprovider and
the bases that density, burst, rollout, steady and churn use; limit measures the floors burst and rollout are read
against; churn updates the rollout's Deployments). Each scenario module is a function of this state; what they
all do the same way (start vkprovider with the bench's settings, read its /metrics, make or delete a namespace,
count Events, sample every process's CPU) is done here once. Every run starts from an empty cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench import cores, profile
from bench.procstat import Sample, sample
from bench.report import RESULTS, Result, log
from bench.watch import PodClock, gather_limited
from tests import promtext
from tests.integration.harness import ProviderProcess, SimProcess
from vkprovider.kube.client import ApiError, Kube

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_DIR = ROOT / ".local" / "bench-cluster"
LOGS = ROOT / ".local" / "bench-logs"

# Control-plane clients get room to run at the machine's speed (defaults: scheduler 50 QPS, controller-manager
# 20 QPS); the same cluster serves every scenario, so the scheduler-only baseline and vkprovider's rollout compare.
CLUSTER_ARGS = [
    "--node-monitor-grace-period", "120s",
    "--controller-manager-arg=--kube-api-qps=500", "--controller-manager-arg=--kube-api-burst=1000",
    "--controller-manager-arg=--concurrent-deployment-syncs=10",
    "--controller-manager-arg=--concurrent-replicaset-syncs=10",
    "--scheduler-arg=--kube-api-qps=500", "--scheduler-arg=--kube-api-burst=1000",
]


# Where each control-plane component serves its /metrics (``component_metrics``): its port's name in state.json.
METRICS_PORTS = {"kube-apiserver": "apiserver", "kube-scheduler": "scheduler",
                 "kube-controller-manager": "controller_manager"}
TTL_ANNOTATION = "node.alpha.kubernetes.io/ttl"  # the controller-manager's ttlcontroller's, on every node
NODE_QUEUES = ("ttlcontroller", "node_lifecycle_controller", "daemonset-node-updates")  # its work queues of nodes


class Bench:
    def __init__(self, args: argparse.Namespace, results: Path = RESULTS) -> None:
        self.args = args
        self.results_dir = results
        self.bases: int = args.bases
        self.modules: int = args.modules
        self.results: list[Result] = []
        self.admin: Kube | None = None
        self.cluster: dict[str, Any] = {}
        self.provider: ProviderProcess | None = None
        self.sim: SimProcess | None = None
        self.scheduler_only_s = math.nan
        self.null_kubelet: dict[str, Any] = {}  # limit's floors for burst and rollout (null_kubelet_*)
        self.rss_bases_only = 0
        self.ns = ""  # the rollout's namespace: its module pods stay for steady and churn
        self.clock: PodClock | None = None
        self.clock_task: asyncio.Task[None] | None = None
        self.params = {"bases": self.bases, "modules_per_base": self.modules, "quick": args.quick,
                       "cpus": os.cpu_count(), "steady_s": args.steady_seconds, "split_cores": args.split_cores}

    @property
    def kube(self) -> Kube:
        """The admin client (the cluster is up)."""
        assert self.admin is not None
        return self.admin

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

    async def connect(self) -> None:
        self.admin = await Kube.connect(str(CLUSTER_DIR / "admin.kubeconfig"), max_inflight=128)

    async def close(self) -> None:
        """Stop what the run started (vkprovider, the simulator, the clock's watch, the cluster)."""
        if self.sim:
            self.sim.kill()
        if self.provider:
            self.provider.kill()
        if self.clock_task is not None:
            self.clock_task.cancel()
        if self.admin is not None:
            await self.admin.close()
        self.cluster_down()

    def provider_process(self, env: str, log_name: str, **overrides: str) -> ProviderProcess:
        """vkprovider as the bench runs it: the restricted RBAC identity, its production defaults but for the
        base liveness and orphan settings below, its log in .local/bench-logs/<log_name>.log (emptied)."""
        proc = ProviderProcess(str(CLUSTER_DIR / "vkprovider.kubeconfig"), env, VKP_LOG_LEVEL="INFO",
                               VKP_BASE_UNREACHABLE_AFTER="25", VKP_BASE_DEAD_AFTER="600",
                               VKP_BASE_QUERY_INTERVAL="30", VKP_ORPHAN_GRACE="30", **overrides)
        proc.log_path = LOGS / f"{log_name}.log"
        proc.log_path.parent.mkdir(parents=True, exist_ok=True)
        proc.log_path.write_bytes(b"")
        return proc

    def provider_sample(self) -> Sample:
        assert self.provider is not None and self.provider.proc is not None
        return sample(self.provider.proc.pid)

    def component_cpu(self) -> dict[str, float]:
        """Cumulative CPU seconds (and run-queue wait) of every process in the run: where the machine's cores go."""
        pids = cores.control_plane_pids(CLUSTER_DIR)
        if self.provider and self.provider.proc:
            pids["vkprovider"] = self.provider.proc.pid
        if self.sim and self.sim.proc:
            pids["simulator"] = self.sim.proc.pid
        pids["bench"] = os.getpid()
        return cores.component_cpu(pids)

    def cores_used_since(self, before: dict[str, float], wall_s: float) -> dict[str, float]:
        """Cores each process used since ``before`` (a ``component_cpu`` reading), ``wall_s`` seconds ago."""
        return cores.cores_used(before, self.component_cpu(), wall_s)

    # --- what the cluster and vkprovider say

    async def provider_metrics(self) -> str:
        """vkprovider's /metrics (Prometheus text)."""
        assert self.provider is not None
        return await self.provider.metrics()

    async def apiserver_metrics(self) -> str:
        """The apiserver's /metrics (Prometheus text)."""
        return str(await self.kube.get("/metrics"))

    async def component_metrics(self, keep_as: str = "", only: tuple[str, ...] = tuple(METRICS_PORTS)
                                ) -> dict[str, str]:
        """The control-plane components' /metrics (Prometheus text) by name (``only`` those named), read as admin;
        with ``keep_as`` each is also written to .local/bench-logs/metrics/<keep_as>-<name>.txt for a reader to
        compare runs."""
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE  # the scheduler and controller-manager serve self-signed, on loopback
        tls.load_cert_chain(str(CLUSTER_DIR / "pki" / "admin.crt"), str(CLUSTER_DIR / "pki" / "admin.key"))
        out = {}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls)) as http:
            for name in only:
                port = self.cluster["ports"][METRICS_PORTS[name]]
                async with http.get(f"https://127.0.0.1:{port}/metrics") as resp:
                    resp.raise_for_status()
                    out[name] = await resp.text()
        if keep_as:
            (LOGS / "metrics").mkdir(parents=True, exist_ok=True)
            for name, text in out.items():
                (LOGS / "metrics" / f"{keep_as}-{name}.txt").write_text(text)
        return out

    async def settle_nodes(self, selector: str) -> float:
        """Wait until the controller-manager is done with nodes just registered, so the next scenario does not pay
        for them: every node of ``selector`` carries the TTL annotation (``TTL_ANNOTATION``) and its node work
        queues (``NODE_QUEUES``) are empty. Its ttlcontroller annotates every node anew each time the cluster's
        size crosses a step (a few nodes keep an older step's value until they next change: the value is not
        waited for), and its node lifecycle controller reads and patches their taints: at 1,000 new vnodes about
        1,300 node PATCHes and 600 GETs that ran into the rollout until issue 31's fifth stop. Returns the
        seconds it took."""
        start = time.monotonic()
        while True:
            nodes, _, _ = await self.kube.list_all("/api/v1/nodes", params={"labelSelector": selector})
            ttls = {(n["metadata"].get("annotations") or {}).get(TTL_ANNOTATION) for n in nodes}
            kcm = (await self.component_metrics(only=("kube-controller-manager",)))["kube-controller-manager"]
            queued = promtext.by_label(kcm, "workqueue_depth", "name")
            depth = sum(queued.get(queue, 0.0) for queue in NODE_QUEUES)
            if nodes and None not in ttls and depth == 0:
                return round(time.monotonic() - start, 2)
            if time.monotonic() - start > self.args.timeout:
                raise TimeoutError(f"the controller-manager not done with the nodes of {selector}: TTL annotations "
                                   f"{sorted(map(str, ttls))}, {depth:g} nodes queued")
            await asyncio.sleep(1)

    async def event_counts(self) -> dict[str, tuple[str, int]]:
        """Every Event in the cluster: uid -> (who and why, how many times it happened)."""
        items, _, _ = await self.kube.list_all("/api/v1/events")
        out = {}
        for e in items:
            who = e.get("reportingComponent") or (e.get("source") or {}).get("component") or "?"
            out[e["metadata"]["uid"]] = (f"{who} {e.get('reason')}", int(e.get("count") or 1))
        return out

    # --- namespaces

    async def fresh_namespace(self, name: str) -> str:
        await self.kube.create("/api/v1/namespaces", {"metadata": {"name": name}})
        for _ in range(120):
            with contextlib.suppress(Exception):
                await self.kube.get(f"/api/v1/namespaces/{name}/serviceaccounts/default")
                return name
            await asyncio.sleep(0.25)
        raise TimeoutError(f"namespace {name} has no default ServiceAccount")

    async def delete_namespace(self, ns: str) -> float:
        """Delete a namespace and wait until it is gone (its module pods uninstalled); returns the seconds."""
        started = time.monotonic()
        await self.kube.delete(f"/api/v1/namespaces/{ns}")
        while True:
            try:
                await self.kube.get(f"/api/v1/namespaces/{ns}")
            except ApiError as exc:
                if exc.is_not_found:
                    return round(time.monotonic() - started, 2)
                raise
            if time.monotonic() - started > self.args.timeout:
                raise TimeoutError(f"namespace {ns} not gone within {self.args.timeout:.0f}s")
            await asyncio.sleep(1)

    async def delete_labelled(self, paths: tuple[str, ...], selector: str, limit: int = 32) -> None:
        """Delete every object under ``paths`` that matches the label ``selector``."""
        for path in paths:
            listed, _, _ = await self.kube.list_all(path, params={"labelSelector": selector})
            await gather_limited([self.kube.delete(f"{path}/{o['metadata']['name']}") for o in listed], limit)

    # --- --profile

    def start_profile(self, duration: float, scenario: str) -> subprocess.Popen[bytes] | None:
        """py-spy over vkprovider for ``duration`` (``bench/results/<scenario>-profile.txt``), or None."""
        pid = self.provider.proc.pid if self.provider is not None and self.provider.proc is not None else None
        return profile.start(pid, duration, self.results_dir / f"{scenario}-profile.txt")

    async def finish_profile(self, profiler: subprocess.Popen[bytes], scenario: str) -> list[str]:
        return await profile.finish(profiler, self.results_dir / f"{scenario}-profile.txt")
