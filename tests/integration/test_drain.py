"""Bases drained like nodes (issue 30, item 1): `kubectl drain` of a vnode, and vkprovider's own drain when a base
says it is going - both through the Eviction API, so PodDisruptionBudgets hold. Real control plane (with the
disruption controller), simulated bases."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.helpers import figure
from tests.integration.harness import (
    is_ready,
    module_pod,
    pods_of,
    uninstalls,
    wait_ready_vnodes,
    wait_until,
)
from vkprovider.kube.client import Kube


def deployment(env: str, replicas: int) -> dict[str, Any]:
    template = module_pod("x", env, labels={"app": "web"})
    spec = template["spec"]
    spec["affinity"] = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": template["metadata"]["labels"]}, "spec": spec}}}


def pdb(min_available: int) -> dict[str, Any]:
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "web"},
            "spec": {"minAvailable": min_available, "selector": {"matchLabels": {"app": "web"}}}}


async def ready_on(admin: Kube, namespace: str) -> dict[str, str]:
    """Ready pods of the Deployment: name -> node."""
    return {p["metadata"]["name"]: p["spec"]["nodeName"] for p in await pods_of(admin, namespace, "app=web")
            if is_ready(p) and not p["metadata"].get("deletionTimestamp")}


async def pdb_allows(admin: Kube, namespace: str, allowed: int) -> bool:
    status = (await admin.get(f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets/web")).get("status") or {}
    return status.get("disruptionsAllowed") == allowed and status.get("expectedPods") == 2


async def unschedulable(admin: Kube, node: str) -> bool:
    return bool(((await admin.get(f"/api/v1/nodes/{node}")).get("spec") or {}).get("unschedulable"))


async def test_kubectl_drain_of_a_vnode_waits_for_its_pdb_evicts_and_the_cordon_survives_a_restart(
        admin, kube_cluster, env_name, namespace, provider_factory, sim_factory):
    provider = await provider_factory()
    sim = await sim_factory(provider.endpoint, "--bases", "3", "--heartbeat-interval", "2", "--identity-prefix",
                            env_name)
    await wait_ready_vnodes(admin, env_name, 3)
    await admin.create(f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets", pdb(2))
    await admin.create(f"/apis/apps/v1/namespaces/{namespace}/deployments", deployment(env_name, 2))
    placed = await wait_until(lambda: _two(admin, namespace), 60, what="2 pods Ready on 2 bases")
    await wait_until(lambda: pdb_allows(admin, namespace, 0), 60, what="the PDB counting 2 pods, allowing 0")
    victim = sorted(placed.values())[0]

    # The PDB forbids any eviction: drain waits, then gives up at its timeout; nothing moved.
    refused = await asyncio.to_thread(kube_cluster.kubectl, "drain", victim, "--ignore-daemonsets",
                                      "--timeout=15s", check=False, timeout=90)
    assert refused.returncode != 0 and "disruption budget" in (refused.stderr + refused.stdout).lower(), refused
    assert await ready_on(admin, namespace) == placed and await unschedulable(admin, victim)

    # The PDB allows one: drain evicts the pod, its replacement runs on the third base, its biz leaves the victim.
    await admin.patch(f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets/web",
                      {"spec": {"minAvailable": 1}}, kind="merge")
    await wait_until(lambda: pdb_allows(admin, namespace, 1), 60, what="the PDB allowing 1")
    started = time.monotonic()
    drained = await asyncio.to_thread(kube_cluster.kubectl, "drain", victim, "--ignore-daemonsets",
                                      "--timeout=120s", check=False, timeout=180)
    assert drained.returncode == 0, drained.stderr

    async def moved() -> dict[str, str] | None:
        now = await ready_on(admin, namespace)
        return now if len(now) == 2 and victim not in now.values() else None

    after = await wait_until(moved, 90, what="a replacement Ready on another base")
    took = time.monotonic() - started
    base = victim.split(".")[1]
    await wait_until(lambda: _uninstalled_on(sim, base), 60, what="the evicted pod's biz uninstalled on the victim")
    figure("kubectl_drain_to_replacement_ready_s", round(took, 1))
    assert set(after.values()) != set(placed.values())

    # The cordon survives vkprovider's own Node writes and a restart; uncordon makes the base schedulable again.
    provider.kill()
    await provider.start()
    end = time.monotonic() + 10
    while time.monotonic() < end:
        assert await unschedulable(admin, victim)
        await asyncio.sleep(0.5)
    await asyncio.to_thread(kube_cluster.kubectl, "uncordon", victim)
    await wait_until(lambda: _schedulable(admin, victim), 30, what="the vnode schedulable again")


async def test_a_base_that_says_it_is_going_is_drained_before_its_modules_go(
        admin, env_name, namespace, provider_factory, sim_factory):
    """The base says DEACTIVATED (graceful shutdown): vkprovider cordons its vnode and evicts its module pods through
    the Eviction API - the PDB holds (one at a time) - the replacements run on the other bases, and only then are
    the evicted pods' bizs uninstalled on the going base."""
    provider = await provider_factory(VKP_DRAIN_TIMEOUT="120")
    sim = await sim_factory(provider.endpoint, "--bases", "4", "--heartbeat-interval", "2", "--identity-prefix",
                            env_name)
    await wait_ready_vnodes(admin, env_name, 4)
    await admin.create(f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets", pdb(1))
    await admin.create(f"/apis/apps/v1/namespaces/{namespace}/deployments", deployment(env_name, 2))
    placed = await wait_until(lambda: _two(admin, namespace), 60, what="2 pods Ready on 2 bases")
    await wait_until(lambda: pdb_allows(admin, namespace, 1), 60, what="the PDB allowing 1")
    going = sorted(placed.values())[0]
    identity = going.split(".")[1]
    started = time.monotonic()
    await sim.deactivate_base(identity)
    await wait_until(lambda: unschedulable(admin, going), 30, what="the going vnode cordoned")
    cordoned_s = time.monotonic() - started

    async def replaced() -> dict[str, str] | None:
        now = await ready_on(admin, namespace)
        return now if len(now) == 2 and going not in now.values() else None

    await wait_until(replaced, 90, what="a replacement Ready on another base")
    replaced_s = time.monotonic() - started
    await wait_until(lambda: _uninstalled_on(sim, identity), 60, what="the evicted pod's biz uninstalled")
    uninstalled_s = time.monotonic() - started
    events = await admin.get("/api/v1/namespaces/default/events",
                             params={"fieldSelector": f"involvedObject.name={going}"})
    reasons = {e["reason"] for e in events["items"]}
    assert {"DrainStarted", "Drained"} <= reasons, reasons
    figure("drain_on_deactivated", f"cordoned {cordoned_s:.1f}s, replacement Ready {replaced_s:.1f}s, "
                                   f"biz uninstalled {uninstalled_s:.1f}s after the DEACTIVATED heartbeat")
    # The base serves again: vkprovider lifts its own cordon.
    await sim.activate_base(identity)
    await wait_until(lambda: _schedulable(admin, going), 60, what="vkprovider's cordon lifted")


async def _two(admin: Kube, namespace: str) -> dict[str, str] | None:
    now = await ready_on(admin, namespace)
    return now if len(now) == 2 and len(set(now.values())) == 2 else None


async def _uninstalled_on(sim: Any, identity: str) -> bool:
    return any(k.startswith(f"{identity}/biz1") for k in await uninstalls(sim))


async def _schedulable(admin: Kube, node: str) -> bool:
    return not await unschedulable(admin, node)
