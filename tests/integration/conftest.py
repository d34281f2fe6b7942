"""Fixtures for integration tests: the admin API client, a unique env per test, vkprovider and simulators.

``tunnel`` says how the simulated bases reach vkprovider: ``http`` (the default) or ``mqtt`` through the
session's real mosquitto (TLS with certificate verification and a password, as in production). A test module
runs over both by ``pytestmark = pytest.mark.parametrize("tunnel", TUNNELS, indirect=True)``; the provider and
simulator factories then configure themselves, so the test body does not change with the tunnel.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import aiomqtt
import orjson
import pytest

from tests.integration.harness import TEST_SECRET, ProviderProcess, SimProcess
from tests.mqtt_broker import MqttBroker
from vkprovider.core.credentials import base_token
from vkprovider.kube.client import Kube

TUNNELS = ["http", "mqtt"]


@pytest.fixture(scope="session")
async def admin(kube_cluster: Any) -> AsyncIterator[Kube]:
    kube = await Kube.connect(str(kube_cluster.admin_kubeconfig))
    yield kube
    await kube.close()


@pytest.fixture
def env_name() -> str:
    """A fresh vkprovider env per test: vnodes are vnode.<id>.<env>, so tests never see each other's nodes."""
    return "t" + uuid.uuid4().hex[:8]


@pytest.fixture
def tunnel(request: pytest.FixtureRequest) -> str:
    """The tunnel the bases of this test use; ``http`` unless parametrized indirectly."""
    return str(getattr(request, "param", "http"))


@pytest.fixture
def broker(request: pytest.FixtureRequest, tunnel: str) -> MqttBroker | None:
    """The session's mosquitto when this test runs over MQTT (started only then)."""
    if tunnel != "mqtt":
        return None
    value: MqttBroker = request.getfixturevalue("mqtt_broker")
    return value


def provider_mqtt_env(broker: MqttBroker) -> dict[str, str]:
    """The Go controller's MQTT variables for the session broker (TLS listener, CA-verified, password)."""
    return {"ENABLE_MQTT_TUNNEL": "true", "MQTT_BROKER": "127.0.0.1", "MQTT_PORT": str(broker.tls_port),
            "MQTT_USERNAME": broker.username, "MQTT_PASSWORD": broker.password, "MQTT_CA_PATH": str(broker.ca_path)}


def sim_mqtt_args(broker: MqttBroker, env: str) -> list[str]:
    return ["--tunnel", "mqtt", "--env", env, "--mqtt-broker", "127.0.0.1", "--mqtt-port", str(broker.tls_port),
            "--mqtt-username", broker.username, "--mqtt-password", broker.password, "--mqtt-ca", str(broker.ca_path)]


@pytest.fixture
async def provider_factory(kube_cluster: Any, env_name: str, admin: Kube,
                           broker: MqttBroker | None) -> AsyncIterator[Callable[..., Awaitable[ProviderProcess]]]:
    started: list[ProviderProcess] = []

    async def start(**overrides: str) -> ProviderProcess:
        env = {**(provider_mqtt_env(broker) if broker else {}), **overrides}
        proc = ProviderProcess(str(kube_cluster.provider_kubeconfig), env_name, **env)
        started.append(proc)
        await proc.start()
        return proc

    yield start
    for proc in started:
        proc.kill()
    selector = f"virtual-kubelet.koupleless.io/env={env_name}"
    nodes = await admin.get("/api/v1/nodes", params={"labelSelector": selector})
    for node in nodes.get("items", []):
        await admin.delete(f"/api/v1/nodes/{node['metadata']['name']}")


@pytest.fixture
async def sim_factory(env_name: str,
                      broker: MqttBroker | None) -> AsyncIterator[Callable[..., Awaitable[SimProcess]]]:
    started: list[SimProcess] = []

    async def start(endpoint: str, *args: str) -> SimProcess:
        sim = SimProcess(endpoint, *args, *(sim_mqtt_args(broker, env_name) if broker else []))
        started.append(sim)
        await sim.start()
        return sim

    yield start
    for sim in started:
        sim.kill()


HeartbeatSender = Callable[[ProviderProcess, str, bytes], Awaitable[int | None]]


@pytest.fixture
async def send_heartbeat(env_name: str, broker: MqttBroker | None) -> AsyncIterator[HeartbeatSender]:
    """Send one raw heartbeat body the way this test's tunnel carries it.

    HTTP: POST /heartbeat, returns the status code. MQTT: the body becomes the ``data`` of arklet's envelope
    (or, when it is not JSON, the whole payload), published on ``koupleless_<env>/<identity>/base/heart``;
    returns None (MQTT has no answer: the tunnel drops bad messages and counts them).
    """
    async with aiohttp.ClientSession() as http:
        if broker is None:
            async def post(provider: ProviderProcess, identity: str, body: bytes) -> int | None:
                headers = {"Content-Type": "application/json",
                           "Authorization": f"Bearer {base_token(TEST_SECRET.encode(), identity)}"}
                async with http.post(provider.endpoint + "/heartbeat", data=body, headers=headers) as resp:
                    return resp.status

            yield post
            return
        async with aiomqtt.Client("127.0.0.1", broker.port, username=broker.username,
                                  password=broker.password, identifier=f"test-{uuid.uuid4().hex[:8]}") as client:
            async def publish(provider: ProviderProcess, identity: str, body: bytes) -> int | None:
                try:
                    payload = orjson.dumps({"publishTimestamp": int(time.time() * 1000),
                                            "data": orjson.loads(body)})
                except orjson.JSONDecodeError:
                    payload = body
                await client.publish(f"koupleless_{env_name}/{identity}/base/heart", payload, qos=1)
                return None

            yield publish

