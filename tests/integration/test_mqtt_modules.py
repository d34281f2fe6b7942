"""MQTT-only module scenarios (issue: MQTT tunnel): a broker restart mid-rollout, MQTT + HTTP bases at once, and
a biz list that arrives after newer command answers (issue 27).

The node and module tests in test_nodes.py / test_modules.py already run over both tunnels; these need a broker
to restart, a second tunnel in the same provider or MQTT's fire-and-forget answers, so they live here.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.integration.harness import (
    SimProcess,
    installs,
    module_pod,
    uninstalls,
    wait_ready_vnodes,
    wait_until,
)
from tests.integration.test_modules import is_ready, pods_of, rollout_100_with_a_fault, seed_deployment, start
from tests.mqtt_broker import MqttBroker
from vkprovider.kube.client import ApiError, Kube

pytestmark = pytest.mark.parametrize("tunnel", ["mqtt"], indirect=True)


async def test_broker_restart_mid_rollout_installs_each_biz_exactly_once(admin, env_name, namespace,
                                                                         provider_factory, sim_factory,
                                                                         broker: MqttBroker):
    _, sim = await start(provider_factory, sim_factory, env_name, 10, "--install-latency", "0.3")

    async def restart_broker() -> None:
        await asyncio.get_running_loop().run_in_executor(None, broker.restart)

    await rollout_100_with_a_fault(admin, env_name, namespace, sim, restart_broker)


async def test_one_provider_serves_an_mqtt_base_and_an_http_base(admin: Kube, env_name, namespace,
                                                                 provider_factory, sim_factory):
    provider, mqtt_sim = await start(provider_factory, sim_factory, env_name, 1)
    http_sim = SimProcess(provider.endpoint, "--bases", "1", "--heartbeat-interval", "3", "--identity-prefix",
                          f"{env_name}-http", "--base-version", "1.1.1", name="sim-http")
    await http_sim.start()
    try:
        async def two_ready() -> list[str] | None:
            got = await admin.get("/api/v1/nodes",
                                  params={"labelSelector": f"virtual-kubelet.koupleless.io/env={env_name}"})
            names = sorted(n["metadata"]["name"] for n in got["items"]
                           if any(c["type"] == "Ready" and c["status"] == "True"
                                  for c in n["status"].get("conditions", [])))
            return names if len(names) == 2 else None

        names = await wait_until(two_ready, 30, what="an MQTT vnode and an HTTP vnode Ready")
        assert any(f"{env_name}-http" in n for n in names) and any(f"{env_name}-0000" in n for n in names)
        dep = seed_deployment(env_name, replicas=2, version="0.0.1")
        dep["spec"]["template"]["spec"]["topologySpreadConstraints"] = [{
            "maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": dep["spec"]["selector"]["matchLabels"]}}]
        await admin.create(f"/apis/apps/v1/namespaces/{namespace}/deployments", dep)

        async def both_running() -> list[dict[str, Any]] | None:
            pods = await pods_of(admin, namespace)
            return pods if len(pods) == 2 and all(is_ready(p) for p in pods) else None

        pods = await wait_until(both_running, 60, what="one module on each base Running")
        assert sorted(p["spec"]["nodeName"] for p in pods) == names
        for sim in (mqtt_sim, http_sim):
            bases = await sim.bases()
            assert [(z["bizName"], z["bizVersion"]) for z in bases[0]["bizs"]] == [("biz1", "0.0.1")]
            assert (await sim.stats())["installCalls"] == 1

        # deleting the Deployment uninstalls from both, each through its own tunnel
        await admin.delete(f"/apis/apps/v1/namespaces/{namespace}/deployments/{dep['metadata']['name']}",
                           propagation_policy="Foreground")

        async def both_empty() -> bool:
            return not (await mqtt_sim.bases())[0]["bizs"] and not (await http_sim.bases())[0]["bizs"]

        await wait_until(both_empty, 60, what="biz uninstalled from both bases")
    finally:
        http_sim.kill()


async def test_a_biz_list_delivered_after_newer_command_answers_undoes_nothing(admin: Kube, env_name, namespace,
                                                                              provider_factory, sim_factory):
    """Issue 27, item 4: a queryAllBiz answer taken before an install and an uninstall but delivered after both
    (its query timed out meanwhile) used to be merged as a read sent just then: the installed biz vanished from
    vkprovider's view (its pod's Ready regressed, the install was sent again) and the uninstalled one came back
    (uninstalled again). Its publishTimestamp places it before both answers: it must change nothing."""
    _, sim = await start(provider_factory, sim_factory, env_name, 1, VKP_ARKLET_QUERY_TIMEOUT="2")
    await wait_ready_vnodes(admin, env_name, 1)
    identity = (await sim.bases())[0]["identity"]
    pods = f"/api/v1/namespaces/{namespace}/pods"

    async def pod_ready(name: str) -> bool:
        try:
            return is_ready(await admin.get(f"{pods}/{name}"))
        except ApiError as exc:
            if exc.is_not_found:
                return False
            raise

    async def base() -> dict[str, Any]:
        return next(b for b in await sim.bases() if b["identity"] == identity)

    await admin.create(pods, module_pod("old", env_name, biz="bizold"))
    await wait_until(lambda: pod_ready("old"), 60, what="the first module Running")
    await sim.hold_biz_lists(identity)

    async def held() -> bool:
        return bool((await base())["heldBizLists"])

    await wait_until(held, 30, what="a biz list taken (bizold only) and held back")
    await admin.create(pods, module_pod("new", env_name, biz="biznew"))
    await admin.delete(f"{pods}/old")

    async def both_answered() -> bool:
        on_base = sorted(b["bizName"] for b in (await base())["bizs"])
        gone = not any(p["metadata"]["name"] == "old" for p in await pods_of(admin, namespace))
        return on_base == ["biznew"] and gone and await pod_ready("new")

    await wait_until(both_answered, 90, what="biznew installed and Running, bizold uninstalled and its pod gone")
    reads = (await base())["queryCalls"]
    assert await sim.release_biz_lists(identity, count=1) == 1  # the list taken before both, delivered now
    not_ready: list[float] = []

    async def two_more_reads() -> bool:
        if not await pod_ready("new"):
            not_ready.append(time.monotonic())
        return bool((await base())["queryCalls"] >= reads + 2)

    await wait_until(two_more_reads, 60, interval_s=0.2, what="two more reads of the base after the late list")
    assert not_ready == [], "the Running module's Ready regressed after a late biz list"
    key = f"{identity}/{{}}:0.0.1"
    assert ((await installs(sim)).get(key.format("biznew")), (await uninstalls(sim)).get(key.format("bizold"))) == (
        1, 1)  # no second install, no second uninstall
    assert sorted(b["bizName"] for b in (await base())["bizs"]) == ["biznew"]
