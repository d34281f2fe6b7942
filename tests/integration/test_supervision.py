"""A vkprovider whose root task dies stops with exit code 1 and says so on /healthz (issue 28): a process that
limps on with a dead informer or queue stops converging while it looks healthy. A tunnel's task that dies (the
MQTT connection loop) is started again by the supervisor: the tunnel connects again and the process serves on."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.helpers import wait_for
from tests.mqtt_broker import MqttBroker
from vkprovider.app import Provider
from vkprovider.config import load_settings
from vkprovider.tunnels.mqtt import MqttTunnel


def _provider(kube_cluster, env_name, **extra: str) -> Provider:
    return Provider(load_settings({
        "KUBECONFIG": str(kube_cluster.provider_kubeconfig), "ENV": env_name, "CLIENT_ID": f"vkp-{env_name}",
        "HTTP_TUNNEL_LISTEN_PORT": "0", "VKP_HTTP_TUNNEL_HOST": "127.0.0.1", "VKP_METRICS_PORT": "0",
        "VKP_METRICS_HOST": "127.0.0.1", "VKP_PROBE_PORT": "0", "VKP_PROBE_HOST": "127.0.0.1",
        "KUBELET_PROXY_ENABLED": "false", "VKP_ALLOW_UNAUTHENTICATED_BASES": "true", **extra}))


async def test_a_dead_root_task_stops_vkprovider_with_exit_1_and_healthz_503(kube_cluster, env_name) -> None:
    provider = _provider(kube_cluster, env_name)
    try:
        await provider.start()
        probes = f"http://127.0.0.1:{provider._served[0].port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{probes}/healthz") as resp:
                assert resp.status == 200
            roots = set(provider.supervisor.tasks)
            assert {"informer-nodes", "lease-keeper", "module-controller", "node-controller",
                    "release-controller", "event-recorder", "tunnel-http"} <= roots, roots
            provider.supervisor.tasks["module-controller"].cancel()  # the module controller's queues die
            code = await asyncio.wait_for(provider.wait(asyncio.Event()), 10)
            assert code == 1
            async with http.get(f"{probes}/healthz") as resp:
                assert resp.status == 503
                assert "module-controller" in await resp.text()
            async with http.get(f"{probes}/readyz") as resp:
                assert resp.status == 503
    finally:
        await provider.stop()


async def test_a_dead_mqtt_connection_loop_is_started_again_and_vkprovider_serves_on(
        kube_cluster, env_name, mqtt_broker: MqttBroker) -> None:
    provider = _provider(kube_cluster, env_name, ENABLE_MQTT_TUNNEL="true", MQTT_BROKER=mqtt_broker.host,
                         MQTT_PORT=str(mqtt_broker.port), MQTT_USERNAME=mqtt_broker.username,
                         MQTT_PASSWORD=mqtt_broker.password, VKP_MQTT_ALLOW_INSECURE_PASSWORD="true")
    try:
        await provider.start()
        (tunnel,) = [t for t in provider.tunnels if isinstance(t, MqttTunnel)]
        await tunnel.wait_connected(15.0)
        connections = tunnel.connections
        (loop,) = [task for task in asyncio.all_tasks() if task.get_name() == "mqtt-tunnel"]
        loop.cancel()  # the broker connection loop dies (as it would of a bug)
        await wait_for(lambda: tunnel.connected and tunnel.connections > connections, 60.0,
                       what="the mqtt tunnel connected again")
        assert provider.supervisor.failed is None and not provider.supervisor.ended.is_set()
        probes = f"http://127.0.0.1:{provider._served[0].port}"
        async with aiohttp.ClientSession() as http, http.get(f"{probes}/healthz") as resp:
            assert resp.status == 200
    finally:
        await provider.stop()
