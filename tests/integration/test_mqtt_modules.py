"""MQTT-only module scenarios (issue: MQTT tunnel): a broker restart mid-rollout, and MQTT + HTTP bases at once.

The node and module tests in test_nodes.py / test_modules.py already run over both tunnels; these two need a
broker to restart or a second tunnel in the same provider, so they live here.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.integration.harness import SimProcess, wait_until
from tests.integration.test_modules import is_ready, pods_of, rollout_100_with_a_fault, seed_deployment, start
from tests.mqtt_broker import MqttBroker
from vkprovider.kube.client import Kube

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
