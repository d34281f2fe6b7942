"""Bases as first-class nodes (issue 30, items 2 and 3), on the real control plane with the scheduler's own verdicts:
a pod capacity per base that the scheduler fills and no more ("Too many pods"), and metaspace pressure that turns
a vnode's MemoryPressure True (the node-lifecycle controller taints it memory-pressure:NoSchedule, so the scheduler
places no new module pods there) and clears it below the low mark, with hysteresis that a restart keeps."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests import promtext
from tests.helpers import figure
from tests.integration.conftest import TUNNELS
from tests.integration.harness import condition, is_ready, module_pod, pods_of, wait_ready_vnodes, wait_until
from vkprovider.kube.client import Kube

PRESSURE_TAINT = "node.kubernetes.io/memory-pressure"


async def vnode_of(admin: Kube, name: str) -> dict[str, Any]:
    return dict(await admin.get(f"/api/v1/nodes/{name}"))


def taint_keys(node: dict[str, Any]) -> set[tuple[str, str]]:
    return {(t["key"], t["effect"]) for t in node["spec"].get("taints") or []}


def scheduled_message(pod: dict[str, Any]) -> str:
    cond = condition(pod, "PodScheduled")
    return str(cond.get("message", "")) if cond.get("status") == "False" else ""


async def test_each_base_gets_its_own_pod_capacity_and_the_scheduler_fills_it_and_no_more(
        admin, env_name, namespace, provider_factory, sim_factory):
    """Capacity from the base's own label first, then VKP_NODE_MAX_PODS_BY_BASE, then VKP_NODE_MAX_PODS. A
    Deployment with more replicas than two small bases hold: exactly their capacities are bound to them, the rest
    stays Pending with the scheduler's "Too many pods"."""
    provider = await provider_factory(VKP_NODE_MAX_PODS="50",
                                      VKP_NODE_MAX_PODS_BY_BASE="small:1.0.0=2;small=40;labelled=9")
    await sim_factory(provider.endpoint, "--bases", "1", "--heartbeat-interval", "3", "--base-name", "small",
                      "--identity-prefix", f"{env_name}-small")
    await sim_factory(provider.endpoint, "--bases", "1", "--heartbeat-interval", "3", "--base-name", "labelled",
                      "--max-pods", "3", "--identity-prefix", f"{env_name}-labelled")
    await sim_factory(provider.endpoint, "--bases", "1", "--heartbeat-interval", "3", "--base-name", "big",
                      "--identity-prefix", f"{env_name}-big")
    nodes = {n["metadata"]["labels"]["base.koupleless.io/name"]: n
             for n in await wait_ready_vnodes(admin, env_name, 3)}
    capacity = {name: (n["status"]["capacity"]["pods"], n["status"]["allocatable"]["pods"])
                for name, n in nodes.items()}
    assert capacity == {"small": ("2", "2"), "labelled": ("3", "3"), "big": ("50", "50")}, capacity
    assert nodes["labelled"]["metadata"]["labels"]["base.koupleless.io/max-pods"] == "3"

    template = module_pod("x", env_name, labels={"app": "fill"})
    template["spec"]["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "base.koupleless.io/name", "operator": "In", "values": ["small", "labelled"]}]}]}}}
    await admin.create(f"/apis/apps/v1/namespaces/{namespace}/deployments", {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "fill"},
        "spec": {"replicas": 7, "selector": {"matchLabels": {"app": "fill"}},
                 "template": {"metadata": {"labels": template["metadata"]["labels"]}, "spec": template["spec"]}}})
    names = {n["metadata"]["name"]: base for base, n in nodes.items()}

    async def filled() -> dict[str, Any] | None:
        pods = await pods_of(admin, namespace, "app=fill")
        bound: dict[str, int] = {}
        pending = []
        for pod in pods:
            node = pod["spec"].get("nodeName")
            if node:
                bound[names[node]] = bound.get(names[node], 0) + 1
            elif "Too many pods" in scheduled_message(pod):
                pending.append(pod)
        done = len(pods) == 7 and bound == {"small": 2, "labelled": 3} and len(pending) == 2
        return {"bound": bound, "pending": pending} if done else None

    placed = await wait_until(filled, 60, what="2 pods on small, 3 on labelled, 2 Pending: Too many pods")
    figure("capacity_pending_message", scheduled_message(placed["pending"][0])[:160])

    async def running() -> bool:
        return sum(is_ready(p) for p in await pods_of(admin, namespace, "app=fill")) == 5

    await wait_until(running, 60, what="the 5 placed module pods Running")


pressure_tunnels = pytest.mark.parametrize("tunnel", TUNNELS, indirect=True)


@pressure_tunnels
async def test_metaspace_pressure_taints_the_vnode_keeps_its_pods_and_clears_below_the_low_mark(
        admin, env_name, namespace, provider_factory, sim_factory, tunnel):
    """Metaspace 480 of 512 MiB (0.94 > VKP_METASPACE_PRESSURE_HIGH 0.9): MemoryPressure True with the kubelet's
    reason, the memory-pressure:NoSchedule taint (the node-lifecycle controller's), a module pod already there keeps
    running, a new one is not scheduled there. 440 MiB (0.86, between the marks) changes nothing, not even across a
    restart of vkprovider. 300 MiB (0.59 < 0.8): False again, the taint goes, the waiting pod is scheduled."""
    provider = await provider_factory(VKP_BASE_HEALTH_INTERVAL="2")
    sim = await sim_factory(provider.endpoint, "--bases", "2", "--heartbeat-interval", "3",
                            "--identity-prefix", env_name)
    await wait_ready_vnodes(admin, env_name, 2)
    hot, cool = sorted(b["identity"] for b in await sim.bases())
    hot_node, cool_node = f"vnode.{hot}.{env_name}", f"vnode.{cool}.{env_name}"
    pods = f"/api/v1/namespaces/{namespace}/pods"
    await admin.create(pods, module_pod("before", env_name, node=hot_node))

    async def health_reads(count: int) -> None:
        """Wait until vkprovider has read the hot base's health ``count`` more times."""
        async def calls() -> int:
            return int(next(b for b in await sim.bases() if b["identity"] == hot)["healthCalls"])

        target = await calls() + count
        await wait_until(lambda: _at_least(calls, target), 30, what=f"{count} more health reads")

    async def writes_for(change: Any) -> dict[str, float]:
        """The Node writes a change of pressure costs, once it shows and vkprovider has read the base twice more
        (anything answering the node-lifecycle controller's taint would have been written by then)."""
        before = await node_writes(provider)
        await change()
        await health_reads(2)
        after = await node_writes(provider)
        return {kind: after.get(kind, 0.0) - before.get(kind, 0.0) for kind in after.keys() | before.keys()
                if after.get(kind, 0.0) != before.get(kind, 0.0)}

    async def ready_pod(name: str) -> bool:
        return is_ready(await admin.get(f"{pods}/{name}"))

    await wait_until(lambda: ready_pod("before"), 40, what="a module pod Running on the base")
    assert condition(await vnode_of(admin, hot_node), "MemoryPressure")["reason"] == "KubeletHasSufficientMemory"

    started: float = 0.0  # when the change was made
    node: dict[str, Any] = {}  # the Node that shows it the change was made, the Node that shows it
    seen: dict[str, float] = {}

    async def pressed() -> dict[str, Any] | None:
        node = await vnode_of(admin, hot_node)
        if condition(node, "MemoryPressure").get("status") == "True":
            seen.setdefault("condition", time.monotonic() - started)
        if (PRESSURE_TAINT, "NoSchedule") in taint_keys(node):
            seen.setdefault("taint", time.monotonic() - started)
        return node if len(seen) == 2 else None

    async def press() -> None:
        nonlocal started, node
        started = time.monotonic()
        await sim.set_usage(hot, metaspace_mib=480)
        node = await wait_until(pressed, 30, interval_s=0.1, what="MemoryPressure True and the memory-pressure taint")

    # One status write per change, and nothing else: the taint is the node-lifecycle controller's, never answered.
    assert await writes_for(press) == {"status": 1.0}
    cond = condition(node, "MemoryPressure")
    assert (cond["reason"], cond["message"]) == ("KubeletHasInsufficientMemory",
                                                 "kubelet has insufficient memory available"), cond
    figure(f"pressure_set_to_condition_s_{tunnel}", round(seen["condition"], 2))
    figure(f"pressure_set_to_taint_s_{tunnel}", round(seen["taint"], 2))
    cool_now = await vnode_of(admin, cool_node)
    assert condition(cool_now, "MemoryPressure")["status"] == "False"
    assert (PRESSURE_TAINT, "NoSchedule") not in taint_keys(cool_now)

    async def said() -> list[str]:
        got = await admin.get("/api/v1/namespaces/default/events", params={
            "fieldSelector": f"involvedObject.name={hot_node},reason=NodeHasInsufficientMemory"})
        return [e["message"] for e in got["items"] if "metaspace 94% used (480Mi of 512Mi)" in e["message"]]

    await wait_until(said, 20, what="the NodeHasInsufficientMemory Event with the figures")

    # NoSchedule: the pod already there stays, a new one pinned there is refused by the scheduler.
    await admin.create(pods, module_pod("after", env_name, node=hot_node))

    async def refused() -> str | None:
        # The scheduler of Kubernetes 1.37 no longer names the taint ("had untolerated taint(s)"); the hot node's
        # only taint a module pod does not tolerate is memory-pressure, and the pod is scheduled once it goes.
        message = scheduled_message(await admin.get(f"{pods}/after"))
        return message if "untolerated taint" in message else None

    figure(f"pressure_refusal_{tunnel}", (await wait_until(refused, 30, what="the scheduler refusing"))[:160])
    assert await ready_pod("before")

    await sim.set_usage(hot, metaspace_mib=440)  # between the marks: nothing changes
    await health_reads(2)
    node = await vnode_of(admin, hot_node)
    assert condition(node, "MemoryPressure")["status"] == "True" and (PRESSURE_TAINT, "NoSchedule") in \
        taint_keys(node)
    provider.kill()  # and a new process starts from what the Node says
    await provider.start()
    await health_reads(2)
    node = await vnode_of(admin, hot_node)
    assert condition(node, "MemoryPressure")["status"] == "True", condition(node, "MemoryPressure")
    assert (PRESSURE_TAINT, "NoSchedule") in taint_keys(node)

    cleared: dict[str, float] = {}

    async def released() -> dict[str, Any] | None:
        node = await vnode_of(admin, hot_node)
        if condition(node, "MemoryPressure").get("status") == "False":
            cleared.setdefault("condition", time.monotonic() - started)
        if (PRESSURE_TAINT, "NoSchedule") not in taint_keys(node):
            cleared.setdefault("taint", time.monotonic() - started)
        return node if len(cleared) == 2 else None

    async def release() -> None:
        nonlocal started, node
        started = time.monotonic()
        await sim.set_usage(hot, metaspace_mib=300)
        node = await wait_until(released, 30, interval_s=0.1, what="MemoryPressure False and the taint gone")

    assert await writes_for(release) == {"status": 1.0}
    assert condition(node, "MemoryPressure")["reason"] == "KubeletHasSufficientMemory"
    figure(f"pressure_clear_to_condition_s_{tunnel}", round(cleared["condition"], 2))
    figure(f"pressure_clear_to_taint_gone_s_{tunnel}", round(cleared["taint"], 2))
    await wait_until(lambda: ready_pod("after"), 40, what="the waiting pod scheduled and Running")
    assert await ready_pod("before")


async def node_writes(provider: Any) -> dict[str, float]:
    return promtext.by_label(await provider.metrics(), "vkprovider_node_writes_total", "kind")


async def _at_least(value: Any, target: int) -> bool:
    return bool(await value() >= target)
