"""Release strategies on plain Deployments (issue 16), on the real control plane with simulated bases.

- Peer: a Deployment labelled ``strategy=peer`` follows its cluster's Ready bases 0 -> 3 -> 5 -> 2, with two
  vkprovider replicas of which exactly one writes (the apiserver's audit log says who), a 30 s base flap that
  does not scale it down, and the writer stopped half-way (the other one carries on).
- Batched: a 10-base Deployment released in batches ``1,50%,100%`` with manual confirmation: the pause points
  hold, no pod of the old template is created during the release, nothing of the new version is uninstalled,
  vkprovider SIGKILLed mid-batch resumes the same batch, and ``kubectl rollout undo`` is batched the same way.

Each test prints the Deployment as ``kubectl get`` shows it at each step (``RELEASE`` lines), the closing note's
timeline.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.helpers import figure
from tests.integration import audit
from tests.integration.harness import (
    SEED_TOLERATION,
    ProviderProcess,
    SimProcess,
    condition,
    installs,
    is_ready,
    uninstalls,
    wait_until,
)
from tests.integration.lb import RoundRobin
from vkprovider.core import release as rel
from vkprovider.kube.client import Kube

TIMING = {"VKP_LEASE_DURATION": "10", "VKP_LEASE_RENEW_INTERVAL": "3", "VKP_LEASE_RENEW_DEADLINE": "7.5",
          "VKP_BASE_UNREACHABLE_AFTER": "6", "VKP_BASE_DEAD_AFTER": "600", "VKP_BASE_QUERY_INTERVAL": "10"}
SCALE_DOWN_DELAY_S = 40.0
FLAP_S = 30.0


def deployment_body(name: str, env: str, cluster: str, *, replicas: int, version: str,
                    labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None
                    ) -> dict[str, Any]:
    """A module Deployment in the seeds' shape: one instance per base (required anti-affinity)."""
    app = {"app": name, "module-controller.koupleless.io/component": "module"}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": labels or {}, "annotations": annotations or {}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": app},
                "spec": {
                    "containers": [{"name": "biz1", "image": f"https://repo.example.com/biz1-{version}-ark-biz.jar",
                                    "env": [{"name": "BIZ_VERSION", "value": version}]}],
                    "tolerations": [SEED_TOLERATION],
                    "nodeSelector": {"virtual-kubelet.koupleless.io/env": env,
                                     rel.CLUSTER_LABEL: cluster},
                    "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                        {"labelSelector": {"matchLabels": {"app": name}},
                         "topologyKey": "kubernetes.io/hostname"}]}},
                },
            },
        },
    }


class Timeline:
    """``kubectl get`` of the Deployment and its pods at each step, printed as RELEASE lines."""

    def __init__(self, kube_cluster: Any, namespace: str, name: str) -> None:
        self.kube_cluster = kube_cluster
        self.namespace = namespace
        self.name = name
        self.t0 = time.monotonic()

    def show(self, step: str) -> None:
        columns = ("custom-columns=NAME:.metadata.name,REPLICAS:.spec.replicas,READY:.status.readyReplicas,"
                   "UP-TO-DATE:.status.updatedReplicas,PAUSED:.spec.paused,"
                   "MAX-UNAVAILABLE:.spec.strategy.rollingUpdate.maxUnavailable,"
                   "STATE:.metadata.annotations.release\\.koupleless\\.io/state")
        got = self.kube_cluster.kubectl("-n", self.namespace, "get", "deployment", self.name, "-o", columns).stdout
        print(f"RELEASE t={time.monotonic() - self.t0:6.1f}s  {step}")
        for line in got.rstrip().splitlines():
            print(f"RELEASE     {line}")


async def get_deployment(admin: Kube, namespace: str, name: str) -> dict[str, Any]:
    return dict(await admin.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}"))


def state_of(deployment: dict[str, Any]) -> rel.ReleaseState | None:
    return rel.ReleaseState.decode(((deployment.get("metadata") or {}).get("annotations") or {}).get(rel.STATE))


# --- peer ------------------------------------------------------------------------------------------------------

@pytest.fixture
async def namespace(admin: Kube) -> AsyncIterator[str]:
    name = "rel-" + uuid.uuid4().hex[:8]
    await admin.create("/api/v1/namespaces", {"metadata": {"name": name}})
    yield name
    await admin.delete(f"/api/v1/namespaces/{name}")


async def test_peer_deployment_follows_ready_bases_with_one_writer_and_rides_out_a_flap(
        kube_cluster: Any, admin: Kube, namespace: str) -> None:
    env = "p" + uuid.uuid4().hex[:7]
    cluster = f"cluster-{env}"
    replicas: dict[str, ProviderProcess] = {}
    lb = RoundRobin(lambda: [p.endpoint for p in replicas.values() if p.proc is not None and p.proc.poll() is None])
    await lb.start()
    sims: list[SimProcess] = []
    since = datetime.now(UTC)
    path = f"/apis/apps/v1/namespaces/{namespace}/deployments/peer"
    timeline = Timeline(kube_cluster, namespace, "peer")
    try:
        for client_id in ("peer-a", "peer-b"):
            proc = ProviderProcess(str(kube_cluster.provider_kubeconfig), env,
                                   **{**TIMING, "CLIENT_ID": client_id,
                                      "ENABLE_MODULE_REPLICAS_SYNC_WITH_BASE": "true",
                                      "VKP_PEER_SCALE_DOWN_DELAY": str(SCALE_DOWN_DELAY_S)})
            replicas[client_id] = proc
            await proc.start(timeout_s=60)
        await admin.create(f"/apis/apps/v1/namespaces/{namespace}/deployments",
                           deployment_body("peer", env, cluster, replicas=0, version="1.0.0",
                                           labels={rel.STRATEGY_LABEL: "peer"}))

        async def replicas_now() -> int:
            return int((await admin.get(path))["spec"]["replicas"])

        async def ready_pods() -> int:
            got = await admin.get(f"/api/v1/namespaces/{namespace}/pods", params={"labelSelector": "app=peer"})
            return sum(1 for p in got["items"] if is_ready(p) and not p["metadata"].get("deletionTimestamp"))

        async def follows(count: int) -> bool:
            return await replicas_now() == count and await ready_pods() == count

        timeline.show("0 bases in the cluster")
        assert await replicas_now() == 0

        async def start_sim(prefix: str, bases: int) -> SimProcess:
            sim = SimProcess(lb.endpoint, "--bases", str(bases), "--identity-prefix", prefix, "--cluster-name",
                             cluster, "--heartbeat-interval", "2", "--install-latency", "0.05",
                             name=f"sim-{prefix}")
            sims.append(sim)
            await sim.start()
            return sim

        first = await start_sim(f"{env}-a", 3)
        await wait_until(lambda: follows(3), 60, what="3 replicas, 3 Ready pods")
        timeline.show("3 bases Ready")
        second = await start_sim(f"{env}-b", 2)
        await wait_until(lambda: follows(5), 60, what="5 replicas, 5 Ready pods")
        timeline.show("5 bases Ready")

        # A flap: one base is gone for 30 s (its vnode turns NotReady), then back. Replicas never go down.
        flapping = f"{env}-b-0001"
        vnode_name = f"vnode.{flapping}.{env}"
        await second.stop_base(flapping)
        flap_started = time.monotonic()
        lowest = 5
        went_not_ready = False
        while time.monotonic() - flap_started < FLAP_S:
            lowest = min(lowest, await replicas_now())
            node = await admin.get(f"/api/v1/nodes/{vnode_name}")
            went_not_ready = went_not_ready or condition(node, "Ready").get("status") != "True"
            await asyncio.sleep(0.5)
        timeline.show(f"base {flapping} down for {FLAP_S:g}s")
        await second.start_base(flapping)
        assert went_not_ready, "the flapping base's vnode never turned NotReady: the flap tested nothing"
        assert lowest == 5, f"scaled down to {lowest} during a {FLAP_S:g}s flap"
        await wait_until(lambda: follows(5), 60, what="the flapped base's module back")

        # The writer stops (SIGTERM, as in a rolling update); the other replica takes the writing over.
        writes = [w for w in audit.writes(kube_cluster.audit_log, since) if w.resource == "deployments" and w.ok]
        writers = {w.replica for w in writes}
        assert len(writers) == 1, f"deployment writes from {writers}"
        first_writer = writers.pop()
        replicas.pop(first_writer).kill(signal.SIGTERM)
        handover = datetime.now(UTC)

        # Three bases stop for good: down to 2, but only after the scale-down delay.
        for identity in (f"{env}-b-0000", f"{env}-b-0001", f"{env}-a-0002"):
            await (second if "-b-" in identity else first).stop_base(identity)
        stopped = time.monotonic()

        async def not_ready_count() -> bool:
            got = await admin.get("/api/v1/nodes", params={"labelSelector": f"{rel.CLUSTER_LABEL}={cluster}"})
            return sum(1 for n in got["items"] if condition(n, "Ready").get("status") != "True") == 3

        await wait_until(not_ready_count, 30, what="3 vnodes NotReady")
        seen_down = time.monotonic()
        timeline.show("3 bases stopped: vnodes NotReady, replicas held for the delay")
        assert await replicas_now() == 5
        await wait_until(lambda: follows(2), SCALE_DOWN_DELAY_S + 45, interval_s=0.5, what="2 replicas")
        scaled = time.monotonic()
        timeline.show("scaled down to the 2 Ready bases")
        assert scaled - seen_down >= SCALE_DOWN_DELAY_S - 8, (scaled - seen_down, scaled - stopped)
        after = [w for w in audit.writes(kube_cluster.audit_log, handover) if w.resource == "deployments" and w.ok]
        assert {w.replica for w in after} == {next(iter(replicas))}, "the remaining replica took the writing over"
        scale_writes = [w for w in audit.writes(kube_cluster.audit_log, since) if w.resource == "deployments"]
        figure(f"peer: {len(scale_writes)} Deployment writes for 0->3->5->2, by {first_writer} then "
              f"{next(iter(replicas))}; flap lowest={lowest}; scale-down {scaled - seen_down:.1f}s after the bases "
              f"were NotReady (delay {SCALE_DOWN_DELAY_S:g}s)")
    finally:
        for sim in sims:
            sim.kill()
        for proc in replicas.values():
            proc.kill()
        await lb.stop()
        nodes = await admin.get("/api/v1/nodes", params={"labelSelector": f"virtual-kubelet.koupleless.io/env={env}"})
        for node in nodes["items"]:
            await admin.delete(f"/api/v1/nodes/{node['metadata']['name']}")


# --- batched ---------------------------------------------------------------------------------------------------

class Watch:
    """Samples pods all along: every pod ever seen, by template hash, and when it was created."""

    def __init__(self, admin: Kube, namespace: str) -> None:
        self.admin = admin
        self.namespace = namespace
        self.pods: dict[str, dict[str, Any]] = {}
        self.samples: list[tuple[float, int, int]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            got = await self.admin.get(f"/api/v1/namespaces/{self.namespace}/pods",
                                       params={"labelSelector": "app=batched"})
            for pod in got["items"]:
                self.pods[pod["metadata"]["name"]] = pod
            await asyncio.sleep(0.25)


async def test_batched_release_with_confirmation_restart_and_rollback(
        kube_cluster: Any, admin: Kube, namespace: str) -> None:
    env = "b" + uuid.uuid4().hex[:7]
    cluster = f"cluster-{env}"
    provider = ProviderProcess(str(kube_cluster.provider_kubeconfig), env, **{**TIMING, "CLIENT_ID": "batcher"})
    await provider.start(timeout_s=60)
    # Installs take a while, so that a batch is still moving when vkprovider is killed.
    sim = SimProcess(provider.endpoint, "--bases", "10", "--identity-prefix", env, "--cluster-name", cluster,
                     "--heartbeat-interval", "2", "--install-latency", "1.5", name=f"sim-{env}")
    await sim.start()
    timeline = Timeline(kube_cluster, namespace, "batched")
    watch = Watch(admin, namespace)
    try:
        await admin.create(f"/apis/apps/v1/namespaces/{namespace}/deployments",
                           deployment_body("batched", env, cluster, replicas=10, version="1.0.0",
                                           annotations={rel.BATCHES: "1,50%,100%", rel.CONFIRM: "manual"}))

        async def snapshot() -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
            d = await get_deployment(admin, namespace, "batched")
            got = await admin.get(f"/api/v1/namespaces/{namespace}/pods", params={"labelSelector": "app=batched"})
            by_version: dict[str, list[dict[str, Any]]] = {}
            for pod in got["items"]:
                if pod["metadata"].get("deletionTimestamp"):
                    continue
                version = pod["spec"]["containers"][0]["env"][0]["value"]
                by_version.setdefault(version, []).append(pod)
            return d, by_version

        async def at(version: str, ready: int, *, old: str | None = None, old_ready: int | None = None,
                     phase: rel.Phase | None = None, batch: int | None = None) -> bool:
            d, pods = await snapshot()
            state = state_of(d)
            if phase is not None and (state is None or state.phase is not phase):
                return False
            if batch is not None and (state is None or state.batch + 1 != batch):
                return False
            if sum(1 for p in pods.get(version, []) if is_ready(p)) != ready:
                return False
            return old is None or sum(1 for p in pods.get(old, []) if is_ready(p)) == old_ready

        await wait_until(lambda: at("1.0.0", 10, phase=rel.Phase.DONE), 90, what="10 pods of 1.0.0 Ready")
        d = await get_deployment(admin, namespace, "batched")
        assert d["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}, "the at-rest bound"
        timeline.show("10 pods of 1.0.0; the at-rest bound is one batch")
        watch.start()
        old_hash = d["metadata"]["annotations"].get("deployment.kubernetes.io/revision")
        assert old_hash == "1"
        release_started = datetime.now(UTC)

        # A new template: batch 1 (1 pod) moves, then the Deployment is paused and waits for confirmation.
        kube_cluster.kubectl("-n", namespace, "patch", "deployment/batched", "-p", json.dumps(
            {"spec": {"template": {"spec": {"containers": [
                {"name": "biz1", "image": "https://repo.example.com/biz1-2.0.0-ark-biz.jar",
                 "env": [{"name": "BIZ_VERSION", "value": "2.0.0"}]}]}}}}))
        await wait_until(lambda: at("2.0.0", 1, old="1.0.0", old_ready=9, phase=rel.Phase.WAITING, batch=1), 90,
                         what="batch 1 Ready and waiting")
        timeline.show("batch 1 of 3 Ready: paused, waiting for confirmation")
        d, pods = await snapshot()
        assert d["spec"]["paused"] is True
        # The pause point holds: nothing moves for a while.
        hold_until = time.monotonic() + 8
        while time.monotonic() < hold_until:
            d, pods = await snapshot()
            assert len(pods.get("2.0.0", [])) == 1 and len(pods.get("1.0.0", [])) == 9, \
                {v: len(p) for v, p in pods.items()}
            await asyncio.sleep(0.5)

        # Confirm batch 2; kill vkprovider while it moves; the restarted one finishes the same batch, no more.
        kube_cluster.kubectl("-n", namespace, "annotate", "deployment/batched", f"{rel.CONFIRMED}=2", "--overwrite")

        async def moving_batch_2() -> bool:
            d, pods = await snapshot()
            state = state_of(d)
            return bool(state and state.batch + 1 == 2 and state.phase is rel.Phase.MOVING
                        and len(pods.get("2.0.0", [])) > 1)

        await wait_until(moving_batch_2, 60, interval_s=0.1, what="batch 2 moving")
        port = provider.http_port
        provider.kill(signal.SIGKILL)
        d, pods = await snapshot()
        killed_with = sum(1 for p in pods.get("2.0.0", []) if is_ready(p))
        timeline.show(f"vkprovider SIGKILLed while batch 2 moves ({killed_with} new pods Ready)")
        assert killed_with < 5
        provider = ProviderProcess(str(kube_cluster.provider_kubeconfig), env,
                                   **{**TIMING, "CLIENT_ID": "batcher", "HTTP_TUNNEL_LISTEN_PORT": str(port)})
        await provider.start(timeout_s=60)
        await wait_until(lambda: at("2.0.0", 5, old="1.0.0", old_ready=5, phase=rel.Phase.WAITING, batch=2), 120,
                         what="batch 2 Ready and waiting after the restart")
        timeline.show("restarted: batch 2 of 3 finished (5 of 10), paused again")
        hold_until = time.monotonic() + 5
        while time.monotonic() < hold_until:
            d, pods = await snapshot()
            assert len(pods.get("2.0.0", [])) == 5 and len(pods.get("1.0.0", [])) == 5
            await asyncio.sleep(0.5)

        # `kubectl rollout resume` confirms the last batch.
        kube_cluster.kubectl("-n", namespace, "rollout", "resume", "deployment/batched")
        await wait_until(lambda: at("2.0.0", 10, phase=rel.Phase.DONE), 120, what="all 10 on 2.0.0")
        timeline.show("batch 3 of 3 done: 10 pods of 2.0.0")
        d, pods = await snapshot()
        assert "1.0.0" not in pods
        assert d["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
        assert not d["spec"].get("paused")

        # No pod of the old template was created once the release began; nothing of 2.0.0 was uninstalled.
        await watch.stop()
        late_old = [name for name, pod in watch.pods.items()
                    if pod["spec"]["containers"][0]["env"][0]["value"] == "1.0.0"
                    and datetime.fromisoformat(pod["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
                    >= release_started.replace(microsecond=0)]
        assert late_old == [], f"pods of the old template created during the release: {late_old}"
        removed = await uninstalls(sim)
        assert not any(key.endswith("biz1:2.0.0") for key in removed), removed
        failed = [name for name, pod in watch.pods.items() if (pod.get("status") or {}).get("phase") == "Failed"]
        assert failed == [], failed
        events = await admin.get(f"/api/v1/namespaces/{namespace}/events",
                                 params={"fieldSelector": "involvedObject.kind=Deployment"})
        reasons = [e["reason"] for e in sorted(events["items"], key=lambda e: e.get("lastTimestamp") or "")]
        assert {"ReleaseStarted", "BatchReady", "BatchStarted", "ReleaseCompleted"} <= set(reasons), reasons

        # A rollback is a new template, released the same way. (`kubectl rollout undo` copies the old
        # ReplicaSet's annotations back, including the state of that template's last release: not fooled.)
        kube_cluster.kubectl("-n", namespace, "rollout", "undo", "deployment/batched")
        await wait_until(lambda: at("1.0.0", 1, old="2.0.0", old_ready=9, phase=rel.Phase.WAITING, batch=1), 90,
                         what="rollback: batch 1 Ready and waiting")
        timeline.show("rollout undo: batch 1 of 3 back on 1.0.0, paused")
        kube_cluster.kubectl("-n", namespace, "rollout", "resume", "deployment/batched")
        await wait_until(lambda: at("1.0.0", 5, old="2.0.0", old_ready=5, phase=rel.Phase.WAITING, batch=2), 90,
                         what="rollback: batch 2 Ready and waiting")
        timeline.show("rollout undo: batch 2 of 3, paused")
        kube_cluster.kubectl("-n", namespace, "rollout", "resume", "deployment/batched")
        await wait_until(lambda: at("1.0.0", 10, phase=rel.Phase.DONE), 90, what="rolled back to 1.0.0")
        timeline.show("rolled back to 1.0.0, batch by batch")
        seen = ["1/3 Waiting", "2/3 Waiting", "3/3 Done"]
        print("FIGURE batched: pause points held (8 s at batch 1, 5 s at batch 2), 0 old-template pods created, "
              f"0 uninstalls of 2.0.0, SIGKILL at {killed_with}/5 resumed batch 2; rollback phases {seen}")
        print("RELEASE events: " + json.dumps(reasons))
    finally:
        await watch.stop()
        sim.kill()
        provider.kill()
        nodes = await admin.get("/api/v1/nodes", params={"labelSelector": f"virtual-kubelet.koupleless.io/env={env}"})
        for node in nodes["items"]:
            await admin.delete(f"/api/v1/nodes/{node['metadata']['name']}")


async def test_a_replacement_of_an_old_pod_never_deactivates_the_new_version(
        kube_cluster: Any, admin: Kube, namespace: str) -> None:
    """BizDeactivate and a ReplicaSet's replacement pod: during a rolling update the old ReplicaSet replaces a
    pod it lost; the replacement lands on the base where the Deployment's new version runs. It is not installed
    (a base installs only the newest revision of a workload's biz), so 2.0.0 stays active: no ping-pong."""
    env = "d" + uuid.uuid4().hex[:7]
    cluster = f"cluster-{env}"
    provider = ProviderProcess(str(kube_cluster.provider_kubeconfig), env, **{**TIMING, "CLIENT_ID": "deact"})
    await provider.start(timeout_s=60)
    sim = SimProcess(provider.endpoint, "--bases", "1", "--identity-prefix", env, "--cluster-name", cluster,
                     "--heartbeat-interval", "2", name=f"sim-{env}")
    await sim.start()
    identity = f"{env}-0000"
    try:
        body = deployment_body("deact", env, cluster, replicas=1, version="1.0.0")
        del body["spec"]["template"]["spec"]["affinity"]  # both revisions on the one base
        # The new pod stays unavailable for a while after Ready, so the old ReplicaSet is kept meanwhile.
        body["spec"]["minReadySeconds"] = 25
        body["spec"]["strategy"] = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
        await admin.create(f"/apis/apps/v1/namespaces/{namespace}/deployments", body)

        async def pods() -> dict[str, list[dict[str, Any]]]:
            got = await admin.get(f"/api/v1/namespaces/{namespace}/pods", params={"labelSelector": "app=deact"})
            out: dict[str, list[dict[str, Any]]] = {}
            for pod in got["items"]:
                if not pod["metadata"].get("deletionTimestamp"):
                    out.setdefault(pod["spec"]["containers"][0]["env"][0]["value"], []).append(pod)
            return out

        async def ready(version: str) -> bool:
            return any(is_ready(p) for p in (await pods()).get(version, []))

        await wait_until(lambda: ready("1.0.0"), 60, what="1.0.0 Ready")
        kube_cluster.kubectl("-n", namespace, "patch", "deployment/deact", "-p", json.dumps(
            {"spec": {"template": {"spec": {"containers": [
                {"name": "biz1", "image": "https://repo.example.com/biz1-2.0.0-ark-biz.jar",
                 "env": [{"name": "BIZ_VERSION", "value": "2.0.0"}]}]}}}}))
        await wait_until(lambda: ready("2.0.0"), 60, what="2.0.0 Ready (1.0.0 deactivated by the install)")
        old = (await pods())["1.0.0"]
        assert len(old) == 1 and not is_ready(old[0])
        assert old[0]["status"]["phase"] == "Running", old[0]["status"]  # replaced in a rollout: not Failed
        # The old ReplicaSet loses its pod and replaces it; the replacement lands on the same base.
        await admin.delete(f"/api/v1/namespaces/{namespace}/pods/{old[0]['metadata']['name']}")

        async def replacement() -> dict[str, Any] | None:
            found = [p for p in (await pods()).get("1.0.0", []) if p["metadata"]["uid"] != old[0]["metadata"]["uid"]
                     and (p.get("status") or {}).get("conditions")]
            return found[0] if found else None

        placed = await wait_until(replacement, 30, what="the old ReplicaSet's replacement pod with a status")
        # For a while (until the new pod is available and the old ReplicaSet goes), 2.0.0 stays active.
        until = time.monotonic() + 8
        while time.monotonic() < until:
            assert await ready("2.0.0"), "the new version was deactivated"
            base = next(b for b in await sim.bases() if b["identity"] == identity)
            bizs = {f"{b['bizName']}:{b['bizVersion']}": b["bizState"] for b in base["bizs"]}
            assert str(bizs.get("biz1:2.0.0")).upper() == "ACTIVATED", bizs
            await asyncio.sleep(0.5)
        counted = await installs(sim)
        assert counted.get(f"{identity}/biz1:1.0.0") == 1, counted  # never installed again
        assert counted.get(f"{identity}/biz1:2.0.0") == 1, counted
        assert placed["status"].get("reason") == "BizSuperseded", placed["status"]
        figure(f"no ping-pong: replacement {placed['metadata']['name']} reason="
              f"{placed['status'].get('reason')}; installs {counted}")
        await wait_until(lambda: pods_are(pods, {"2.0.0": 1}), 90, what="the rollout to finish")
    finally:
        sim.kill()
        provider.kill()
        nodes = await admin.get("/api/v1/nodes", params={"labelSelector": f"virtual-kubelet.koupleless.io/env={env}"})
        for node in nodes["items"]:
            await admin.delete(f"/api/v1/nodes/{node['metadata']['name']}")


async def pods_are(pods: Any, counts: dict[str, int]) -> bool:
    got = await pods()
    return {v: len(p) for v, p in got.items()} == counts and all(is_ready(p) for ps in got.values() for p in ps)
