"""Two writers on one Deployment (issue 27, item 11): vkprovider's release controller and whatever applies the
user's manifest (``kubectl apply``, Argo CD, Flux), on the real control plane with simulated bases.

vkprovider owns its fields by server-side apply under the field manager ``vkprovider`` (docs/releases.md,
"GitOps"); a GitOps tool is played by ``kubectl apply --server-side --force-conflicts --field-manager=<tool>``,
which is what Argo CD (``ServerSideApply=true``) and Flux send.

- Batched: a release paused after batch 1, then the user's manifest re-applied client-side and server-side: the
  release stays paused at its batch and no pod of the new template appears beyond it; a manifest shaped like the
  old sample (``strategy: {type: RollingUpdate}``), re-applied client-side, makes kubectl drop the rollout bound
  (``$retainKeys``) and vkprovider puts it back at once, level-based; a new template in the manifest during a batch
  is released in batches; everything completes on confirmation.
- Peer: a peer Deployment created by a GitOps tool with ``replicas`` equal to its base count, then its manifest
  without ``replicas`` applied over and over: the field never changes (vkprovider co-owns it); a plain
  ``kubectl apply --server-side`` of another count is refused naming vkprovider; a forced or client-side re-apply
  of another count is undone level-based (measured).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.helpers import figure
from tests.integration.harness import ProviderProcess, SimProcess, is_ready, uninstalls, wait_ready_vnodes, wait_until
from tests.integration.test_releases import TIMING, Timeline, deployment_body, state_of
from vkprovider.core import release as rel
from vkprovider.kube.client import Kube

GITOPS_MANAGER = "argocd-controller"  # the field manager Argo CD's server-side sync uses


@pytest.fixture
async def namespace(admin: Kube) -> AsyncIterator[str]:
    name = "gitops-" + uuid.uuid4().hex[:8]
    await admin.create("/api/v1/namespaces", {"metadata": {"name": name}})
    yield name
    await admin.delete(f"/api/v1/namespaces/{name}")


def version_of(pod: dict[str, Any]) -> str:
    return str(pod["spec"]["containers"][0]["env"][0]["value"])


class PodCounts:
    """Samples the Deployment's live pods all along: the most pods of each version ever seen at once."""

    def __init__(self, admin: Kube, namespace: str, app: str) -> None:
        self.admin = admin
        self.namespace = namespace
        self.app = app
        self.most: dict[str, int] = {}
        self.created: dict[str, set[str]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def reset(self) -> None:
        self.most = {}

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            got = await self.admin.get(f"/api/v1/namespaces/{self.namespace}/pods",
                                       params={"labelSelector": f"app={self.app}"})
            now: dict[str, int] = {}
            for pod in got["items"]:
                self.created.setdefault(version_of(pod), set()).add(pod["metadata"]["name"])
                if not pod["metadata"].get("deletionTimestamp"):
                    now[version_of(pod)] = now.get(version_of(pod), 0) + 1
            for version, count in now.items():
                self.most[version] = max(self.most.get(version, 0), count)
            await asyncio.sleep(0.2)


async def test_a_reapplied_manifest_mid_release_neither_unpauses_nor_widens_the_batch(
        kube_cluster: Any, admin: Kube, namespace: str) -> None:
    env = "g" + uuid.uuid4().hex[:7]
    cluster = f"cluster-{env}"
    name = "gitops"
    path = f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}"
    provider = ProviderProcess(str(kube_cluster.provider_kubeconfig), env, **{**TIMING, "CLIENT_ID": "gitops-b"})
    await provider.start(timeout_s=60)
    sim = SimProcess(provider.endpoint, "--bases", "4", "--identity-prefix", env, "--cluster-name", cluster,
                     "--heartbeat-interval", "2", "--install-latency", "0.3", name=f"sim-{env}")
    await sim.start()
    timeline = Timeline(kube_cluster, namespace, name)
    counts = PodCounts(admin, namespace, name)

    def manifest(version: str, *, strategy: bool = False) -> str:
        """The user's manifest as docs/releases.md asks for it: no strategy, no paused. ``strategy=True``: the
        shape the batched sample had (``strategy: {type: RollingUpdate}``)."""
        body = deployment_body(name, env, cluster, replicas=4, version=version,
                               annotations={rel.BATCHES: "1,50%,100%", rel.CONFIRM: "manual"})
        if strategy:
            body["spec"]["strategy"] = {"type": "RollingUpdate"}
        return json.dumps(body)

    def kubectl_apply(text: str) -> None:
        kube_cluster.kubectl("-n", namespace, "apply", "-f", "-", input=text)

    def gitops_apply(text: str) -> None:
        kube_cluster.kubectl("-n", namespace, "apply", "--server-side", "--force-conflicts",
                             f"--field-manager={GITOPS_MANAGER}", "-f", "-", input=text)

    async def deployment() -> dict[str, Any]:
        return dict(await admin.get(path))

    async def at(version: str, ready: int, phase: rel.Phase, batch: int) -> bool:
        d = await deployment()
        state = state_of(d)
        if state is None or state.phase is not phase or state.batch + 1 != batch:
            return False
        got = await admin.get(f"/api/v1/namespaces/{namespace}/pods", params={"labelSelector": f"app={name}"})
        live = [p for p in got["items"] if not p["metadata"].get("deletionTimestamp")]
        return sum(1 for p in live if version_of(p) == version and is_ready(p)) == ready

    def bound(d: dict[str, Any]) -> object:
        return (d["spec"].get("strategy") or {}).get("rollingUpdate")

    async def holds(what: str, seconds: float, version: str, batch: int, pods: int) -> None:
        """For ``seconds``: paused, waiting at ``batch``, ``pods`` pods of ``version`` (never more)."""
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            d = await deployment()
            state = state_of(d)
            assert d["spec"].get("paused") is True, f"{what}: un-paused"
            assert state is not None and state.phase is rel.Phase.WAITING and state.batch + 1 == batch, \
                f"{what}: {state}"
            assert counts.most.get(version, 0) <= pods, f"{what}: {counts.most}"
            await asyncio.sleep(0.3)

    try:
        await wait_ready_vnodes(admin, env, 4, timeout_s=60)
        kubectl_apply(manifest("1.0.0"))
        await wait_until(lambda: at("1.0.0", 4, rel.Phase.DONE, 3), 90, what="4 pods of 1.0.0 Ready")
        assert bound(await deployment()) == {"maxSurge": 0, "maxUnavailable": 1}
        timeline.show("kubectl apply (1.0.0): 4 pods; the at-rest bound is one batch")
        counts.start()

        # The user's new manifest starts a release: batch 1 (1 pod) moves, then it pauses for confirmation.
        kubectl_apply(manifest("2.0.0"))
        await wait_until(lambda: at("2.0.0", 1, rel.Phase.WAITING, 1), 90, what="batch 1 of 2.0.0 waiting")
        timeline.show("kubectl apply (2.0.0): batch 1 of 3 Ready, paused")
        spec = (await deployment())["spec"]

        # The same manifest again, client-side and as a GitOps tool applies it: nothing changes at all. (The
        # Deployment's generation may go up: it counts annotation changes too, and kubectl rewrites its
        # last-applied-configuration annotation.)
        kubectl_apply(manifest("2.0.0"))
        gitops_apply(manifest("2.0.0"))
        await holds("re-applied", 5, "2.0.0", 1, 1)
        assert (await deployment())["spec"] == spec, "a re-apply of the same manifest changed the spec"
        timeline.show("the manifest re-applied (kubectl apply, and --server-side as Argo CD): nothing moved")

        # The old sample's shape, `strategy: {type: RollingUpdate}`, applied client-side: kubectl's patch carries
        # `$retainKeys` for the strategy and so drops the bound (the apiserver defaults it to 25%). vkprovider puts
        # it back at once, though the release is only waiting; the release stays where it was.
        reapplied = time.monotonic()
        kubectl_apply(manifest("2.0.0", strategy=True))

        async def bound_back() -> bool:
            return bound(await deployment()) == {"maxSurge": 0, "maxUnavailable": 1}

        await wait_until(bound_back, 20, interval_s=0.1, what="the batch's bound back after kubectl apply dropped it")
        restored_s = time.monotonic() - reapplied
        await holds("re-applied with a strategy", 5, "2.0.0", 1, 1)
        most_at_batch_1 = dict(counts.most)
        timeline.show(f"kubectl apply with strategy.type: bound dropped by kubectl, back in {restored_s:.1f}s")

        # Confirmation goes on as usual.
        kube_cluster.kubectl("-n", namespace, "annotate", f"deployment/{name}", f"{rel.CONFIRMED}=2", "--overwrite")
        await wait_until(lambda: at("2.0.0", 2, rel.Phase.WAITING, 2), 90, what="batch 2 of 2.0.0 waiting")
        timeline.show("confirmed: batch 2 of 3 Ready, paused")

        # A new template in the manifest during a batch (the GitOps tool syncs a new commit): released in batches.
        counts.reset()
        gitops_apply(manifest("3.0.0"))
        await wait_until(lambda: at("3.0.0", 1, rel.Phase.WAITING, 1), 90, what="batch 1 of 3.0.0 waiting")
        await holds("a new template mid-release", 3, "3.0.0", 1, 1)
        timeline.show("GitOps sync of 3.0.0 during batch 2: batch 1 of 3 of 3.0.0, paused")
        gitops_apply(manifest("3.0.0"))  # a periodic sync
        await holds("synced again", 3, "3.0.0", 1, 1)
        kube_cluster.kubectl("-n", namespace, "rollout", "resume", f"deployment/{name}")
        await wait_until(lambda: at("3.0.0", 2, rel.Phase.WAITING, 2), 90, what="batch 2 of 3.0.0 waiting")
        assert counts.most.get("3.0.0", 0) <= 2, counts.most
        kube_cluster.kubectl("-n", namespace, "rollout", "resume", f"deployment/{name}")
        await wait_until(lambda: at("3.0.0", 4, rel.Phase.DONE, 3), 90, what="4 pods of 3.0.0")
        timeline.show("resumed twice: 4 pods of 3.0.0")
        d = await deployment()
        assert not d["spec"].get("paused") and bound(d) == {"maxSurge": 0, "maxUnavailable": 1}
        figure(f"gitops batched: re-applies held the pause point; kubectl apply with strategy.type dropped the "
               f"bound, vkprovider restored it in {restored_s:.1f}s; live pods per version at most "
               f"{most_at_batch_1} until batch 1 of 2.0.0 was confirmed, {counts.most} during the 3.0.0 release")
    finally:
        await counts.stop()
        sim.kill()
        provider.kill()
        nodes = await admin.get("/api/v1/nodes", params={"labelSelector": f"virtual-kubelet.koupleless.io/env={env}"})
        for node in nodes["items"]:
            await admin.delete(f"/api/v1/nodes/{node['metadata']['name']}")


def owns_replicas(d: dict[str, Any], manager: str) -> bool:
    """Whether ``manager`` holds ``spec.replicas`` by server-side apply (its Apply entry in managedFields)."""
    for entry in (d.get("metadata") or {}).get("managedFields") or []:
        if entry.get("manager") == manager and entry.get("operation") == "Apply":
            return "f:replicas" in ((entry.get("fieldsV1") or {}).get("f:spec") or {})
    return False


async def test_a_peer_deployment_under_gitops_keeps_its_replicas(
        kube_cluster: Any, admin: Kube, namespace: str) -> None:
    env = "q" + uuid.uuid4().hex[:7]
    cluster = f"cluster-{env}"
    name = "peer"
    path = f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}"
    manager = "kustomize-controller"  # Flux's field manager
    provider = ProviderProcess(str(kube_cluster.provider_kubeconfig), env,
                               **{**TIMING, "CLIENT_ID": "gitops-p", "ENABLE_MODULE_REPLICAS_SYNC_WITH_BASE": "true"})
    await provider.start(timeout_s=60)
    sim = SimProcess(provider.endpoint, "--bases", "3", "--identity-prefix", env, "--cluster-name", cluster,
                     "--heartbeat-interval", "2", "--install-latency", "0.1", name=f"sim-{env}")
    await sim.start()
    timeline = Timeline(kube_cluster, namespace, name)

    def manifest(replicas: int | None) -> str:
        body = deployment_body(name, env, cluster, replicas=replicas or 0, version="1.0.0",
                               labels={rel.STRATEGY_LABEL: "peer"})
        if replicas is None:
            del body["spec"]["replicas"]
        return json.dumps(body)

    def gitops_apply(text: str) -> None:
        kube_cluster.kubectl("-n", namespace, "apply", "--server-side", "--force-conflicts",
                             f"--field-manager={manager}", "-f", "-", input=text)

    async def deployment() -> dict[str, Any]:
        return dict(await admin.get(path))

    async def ready_pods() -> int:
        got = await admin.get(f"/api/v1/namespaces/{namespace}/pods", params={"labelSelector": f"app={name}"})
        return sum(1 for p in got["items"] if is_ready(p) and not p["metadata"].get("deletionTimestamp"))

    async def follows(count: int) -> bool:
        return (await deployment())["spec"]["replicas"] == count and await ready_pods() == count

    async def never_changes(what: str, seconds: float) -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            d = await deployment()
            assert d["spec"]["replicas"] == 3, f"{what}: replicas {d['spec']['replicas']}"
            assert await ready_pods() == 3, f"{what}: {await ready_pods()} Ready pods"
            await asyncio.sleep(0.2)

    async def won_back(what: str) -> tuple[float, float]:
        """Seconds until replicas are 3 again, and until 3 pods are Ready again."""
        t0 = time.monotonic()
        await wait_until(lambda: _replicas_are(deployment, 3), 30, interval_s=0.1, what=f"{what}: replicas 3 again")
        spec_s = time.monotonic() - t0
        await wait_until(lambda: follows(3), 60, interval_s=0.2, what=f"{what}: 3 Ready pods again")
        return spec_s, time.monotonic() - t0

    try:
        await wait_ready_vnodes(admin, env, 3, timeout_s=60)
        # A GitOps repository that pinned replicas at the count it saw: 3.
        gitops_apply(manifest(3))
        await wait_until(lambda: follows(3), 60, what="3 replicas, 3 Ready pods")
        await wait_until(lambda: _owns(deployment, "vkprovider"), 20, what="vkprovider co-owning spec.replicas")
        timeline.show(f"{manager} applied replicas 3 (= 3 Ready bases); vkprovider co-owns the field")

        # The documented GitOps setting: the manifest without replicas, applied server-side. Nothing changes, ever
        # (the GitOps tool gives its share of the field up; vkprovider's share keeps it).
        removed = sum((await uninstalls(sim)).values())
        for _ in range(3):
            gitops_apply(manifest(None))
            await never_changes("the manifest without replicas applied", 2)
        assert not owns_replicas(await deployment(), manager)
        assert sum((await uninstalls(sim)).values()) == removed, "a module was uninstalled meanwhile"
        timeline.show(f"{manager} applied the manifest without replicas, three times: nothing changed")

        # A plain `kubectl apply --server-side` of another count is refused: the field is vkprovider's.
        refused = kube_cluster.kubectl("-n", namespace, "apply", "--server-side", "-f", "-", input=manifest(1),
                                       check=False)
        assert refused.returncode != 0, "kubectl apply --server-side of another count went through"
        assert 'with "vkprovider"' in refused.stderr and ".spec.replicas" in refused.stderr, refused.stderr
        await never_changes("a refused apply", 1)

        # What the documentation tells users not to do: a forced or client-side apply of another count. It
        # takes effect, and vkprovider's count wins again, level-based; the bases lose the module meanwhile.
        before = sum((await uninstalls(sim)).values())
        gitops_apply(manifest(1))
        forced = await won_back("forced apply of replicas 1")
        timeline.show(f"{manager} forced replicas 1: back to 3 in {forced[0]:.1f}s (Ready in {forced[1]:.1f}s)")
        kube_cluster.kubectl("-n", namespace, "apply", "-f", "-", input=manifest(1))
        client_side = await won_back("kubectl apply of replicas 1")
        timeline.show(f"kubectl apply replicas 1: back to 3 in {client_side[0]:.1f}s (Ready in {client_side[1]:.1f}s)")
        lost = sum((await uninstalls(sim)).values()) - before

        # And the documented setting, after all that: still never a change.
        removed = sum((await uninstalls(sim)).values())
        gitops_apply(manifest(None))
        await never_changes("the manifest without replicas applied after the fights", 3)
        assert sum((await uninstalls(sim)).values()) == removed, "a module was uninstalled meanwhile"
        figure(f"gitops peer: manifest without replicas applied 4 times, replicas never changed; forced replicas 1 "
               f"undone in {forced[0]:.1f}s (Ready {forced[1]:.1f}s), client-side in {client_side[0]:.1f}s "
               f"(Ready {client_side[1]:.1f}s); {lost} module uninstalls from those two fights")
    finally:
        sim.kill()
        provider.kill()
        nodes = await admin.get("/api/v1/nodes", params={"labelSelector": f"virtual-kubelet.koupleless.io/env={env}"})
        for node in nodes["items"]:
            await admin.delete(f"/api/v1/nodes/{node['metadata']['name']}")


async def _replicas_are(deployment: Any, count: int) -> bool:
    return bool((await deployment())["spec"]["replicas"] == count)


async def _owns(deployment: Any, manager: str) -> bool:
    return owns_replicas(await deployment(), manager)
