"""MqttTunnel against a real mosquitto with the base simulator (MQTT transport) in-process, no Kubernetes.

Covers heartbeats, every command through the request/response API, commands never retained, a broker restart
(subscriptions restored on both sides), TLS with the right and a wrong CA, a wrong password, hostile payloads
(dropped and counted while the tunnel keeps serving), and one BaseEvents sink fed by HTTP and MQTT at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiomqtt
import orjson
import pytest
from prometheus_client import REGISTRY

from tests.helpers import wait_for
from tests.mqtt_broker import MqttBroker
from vkprovider.config import Settings
from vkprovider.core.model import (
    BaseHealth,
    BaseHeartbeat,
    BaseMetadata,
    BizInfo,
    BizSpec,
    BizState,
    CommandOutcome,
)
from vkprovider.sim import ArkletBehaviour, SimConfig, Simulator
from vkprovider.tunnels.base import Refusal, Tunnel, TunnelError
from vkprovider.tunnels.http_tunnel import HttpTunnel
from vkprovider.tunnels.mqtt_tunnel import MqttTunnel

MAX_PAYLOAD = 8192


class RecordingEvents:
    """A BaseEvents that remembers what tunnels delivered; ``baselines`` says what a base gets on queryBaseline."""

    def __init__(self) -> None:
        self.heartbeats: list[BaseHeartbeat] = []
        self.health_pushes: list[tuple[str, BaseHealth]] = []
        self.biz_pushes: list[tuple[str, list[BizInfo]]] = []
        self.baseline_asked: list[BaseMetadata] = []
        self.baselines: dict[str, list[BizSpec]] = {}

    def on_heartbeat(self, heartbeat: BaseHeartbeat, *, authenticated: bool = False) -> Refusal | None:
        self.heartbeats.append(heartbeat)
        return None

    def address_of(self, identity: str) -> str | None:
        latest = self.latest().get(identity)
        return latest.ip if latest is not None else None

    def on_health(self, identity: str, health: BaseHealth) -> None:
        self.health_pushes.append((identity, health))

    def on_bizs(self, identity: str, bizs: Sequence[BizInfo]) -> None:
        self.biz_pushes.append((identity, list(bizs)))

    def baseline(self, metadata: BaseMetadata) -> list[BizSpec]:
        self.baseline_asked.append(metadata)
        return self.baselines.get(metadata.identity, [])

    def latest(self) -> dict[str, BaseHeartbeat]:
        return {hb.identity: hb for hb in self.heartbeats}


def _settings(broker: MqttBroker, env: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "env": env,
        "client_id": f"test-{uuid.uuid4().hex[:6]}",
        "mqtt_enabled": True,
        "mqtt_broker": broker.host,
        "mqtt_port": broker.port,
        "mqtt_username": broker.username,
        "mqtt_password": broker.password,
        "mqtt_allow_insecure_password": True,  # the plaintext listener (the TLS tests set mqtt_ca_path)
        "mqtt_max_payload_bytes": MAX_PAYLOAD,
        "arklet_query_timeout_s": 2.0,
        "arklet_install_timeout_s": 3.0,
        "http_tunnel_host": "127.0.0.1",
        "http_tunnel_port": 0,
    }
    values.update(overrides)
    return Settings(**values)


def _sim_config(broker: MqttBroker, env: str, **overrides: Any) -> SimConfig:
    values: dict[str, Any] = {
        "bases": 2,
        "tunnel": "mqtt",
        "env": env,
        "identity_prefix": f"m{uuid.uuid4().hex[:4]}",
        "heartbeat_interval_s": 0.5,
        "heartbeat_first_spread_s": 0.1,
        "zones": ("zone-a",),
        "mqtt_broker": broker.host,
        "mqtt_port": broker.port,
        "mqtt_username": broker.username,
        "mqtt_password": broker.password,
        "behaviour": ArkletBehaviour(install_latency_s=0.05, fail_bizs=frozenset({"broken-biz"})),
    }
    values.update(overrides)
    return SimConfig(**values)


class Env:
    def __init__(self, tunnel: MqttTunnel, events: RecordingEvents, sim: Simulator, env: str) -> None:
        self.tunnel = tunnel
        self.events = events
        self.sim = sim
        self.env = env

    async def base(self, identity: str, timeout: float = 10.0) -> BaseHeartbeat:
        return await wait_for(lambda: self.events.latest().get(identity), timeout, what=f"heartbeat of {identity}")

    def identities(self) -> list[str]:
        return sorted(self.sim.bases)


@pytest.fixture(scope="module")
async def mq(mqtt_broker: MqttBroker) -> AsyncIterator[Env]:
    env = f"mq{uuid.uuid4().hex[:6]}"  # ENV is a DNS label (lowercase), as topics and node names need
    events = RecordingEvents()
    tunnel = MqttTunnel(_settings(mqtt_broker, env))
    await tunnel.start(events)
    assert tunnel.connected, tunnel.last_error
    sim = Simulator(_sim_config(mqtt_broker, env))
    await sim.start()
    holder = Env(tunnel, events, sim, env)
    for identity in holder.identities():
        await holder.base(identity)
    yield holder
    await sim.stop()
    await tunnel.stop()


def _dropped(reason: str) -> float:
    return REGISTRY.get_sample_value("vkprovider_mqtt_dropped_total", {"reason": reason}) or 0.0


async def test_heartbeats_arrive_with_mqtt_shape(mq: Env) -> None:
    identity = mq.identities()[0]
    before = len([hb for hb in mq.events.heartbeats if hb.identity == identity])
    await wait_for(lambda: len([hb for hb in mq.events.heartbeats if hb.identity == identity]) >= before + 2,
                   5.0, what="two more heartbeats")
    heartbeat = mq.events.latest()[identity]
    assert heartbeat.tunnel == "mqtt"
    assert heartbeat.port == 0
    assert heartbeat.state == "ACTIVATED"
    assert heartbeat.metadata.cluster_name == "default"
    assert ("topology.kubernetes.io/zone", "zone-a") in heartbeat.labels


async def test_install_query_uninstall_round_trip(mq: Env) -> None:
    base = await mq.base(mq.identities()[0])
    spec = BizSpec("biz-rt", "1.0.0", "file:///tmp/biz-rt.jar")
    result = await mq.tunnel.install_biz(base, spec)
    assert result.outcome is CommandOutcome.SUCCESS, result.message
    assert [b.key for b in result.bizs] == [spec.key]
    assert result.bizs[0].state is BizState.ACTIVATED
    again = await mq.tunnel.install_biz(base, spec)
    assert again.outcome is CommandOutcome.REPEAT
    bizs = await mq.tunnel.query_all_biz(base)
    by_key = {b.key: b for b in bizs}
    assert by_key[spec.key].state is BizState.ACTIVATED
    assert by_key[spec.key].last_record is not None
    assert by_key[spec.key].last_record.reason == "Started"
    gone = await mq.tunnel.uninstall_biz(base, spec.name, spec.version)
    assert gone.outcome is CommandOutcome.SUCCESS, gone.message
    missing = await mq.tunnel.uninstall_biz(base, spec.name, spec.version)
    assert missing.outcome is CommandOutcome.NOT_FOUND
    assert spec.key not in {b.key for b in await mq.tunnel.query_all_biz(base)}
    # answers to our own commands go to the caller, not to the push callbacks
    assert all(identity != base.identity for identity, _ in mq.events.biz_pushes)


async def test_failed_install_and_health(mq: Env) -> None:
    base = await mq.base(mq.identities()[1])
    failed = await mq.tunnel.install_biz(base, BizSpec("broken-biz", "1.0.0", "file:///tmp/broken.jar"))
    assert failed.outcome is CommandOutcome.FAILED
    assert "fail" in failed.message.lower()
    health = await mq.tunnel.health(base)
    assert health.cpu_count == 4
    assert health.memory_max_bytes == 512 * 1024 * 1024
    assert health.master_biz_name == "base"


async def test_concurrent_queries_share_one_answer(mq: Env) -> None:
    base = await mq.base(mq.identities()[0])
    results = await asyncio.gather(*(mq.tunnel.query_all_biz(base) for _ in range(5)),
                                   *(mq.tunnel.health(base) for _ in range(5)))
    assert len(results) == 10
    assert all(isinstance(r, BaseHealth) for r in results[5:])


async def test_parallel_installs_on_many_bases(mq: Env) -> None:
    bases = [await mq.base(identity) for identity in mq.identities()]
    specs = [BizSpec(f"par-{i}", "1.0.0", f"file:///tmp/par-{i}.jar") for i in range(4)]
    results = await asyncio.gather(*(mq.tunnel.install_biz(b, s) for b in bases for s in specs))
    assert all(r.ok for r in results), [r.message for r in results]
    for base in bases:
        arklet = mq.sim.base(base.identity).arklet
        assert {f"par-{i}:1.0.0" for i in range(4)} <= set(arklet.bizs)
        await asyncio.gather(*(mq.tunnel.uninstall_biz(base, s.name, s.version) for s in specs))


async def test_batch_install(mq: Env) -> None:
    base = await mq.base(mq.identities()[1])
    good = BizSpec("batch-ok", "1.0.0", "file:///tmp/batch-ok.jar")
    bad = BizSpec("broken-biz", "2.0.0", "file:///tmp/broken-2.jar")
    results = await mq.tunnel.batch_install_biz(base, [good, bad])
    assert results[good.url].outcome is CommandOutcome.SUCCESS
    assert results[bad.url].outcome is CommandOutcome.FAILED
    assert "batch-ok:1.0.0" in mq.sim.base(base.identity).arklet.bizs
    assert await mq.tunnel.batch_install_biz(base, []) == {}


async def test_config_and_the_fence_reach_arklet_over_mqtt(mq: Env) -> None:
    base = await mq.base(mq.identities()[0])
    spec = BizSpec("fenced-m", "1.0.0", "file:///tmp/fenced-m.jar").with_config(["--a=1"], {"K": "v"})
    assert (await mq.tunnel.install_biz(base, spec, biz_model_version="uid-1")).ok
    arklet = mq.sim.base(base.identity).arklet
    assert (arklet.bizs["fenced-m:1.0.0"].args, arklet.bizs["fenced-m:1.0.0"].envs) == (("--a=1",), {"K": "v"})
    stale = await mq.tunnel.uninstall_biz(base, "fenced-m", "1.0.0", biz_model_version="uid-2")
    assert stale.outcome is CommandOutcome.EXPIRED and "command is expired" in stale.message
    assert "fenced-m:1.0.0" in arklet.bizs
    assert (await mq.tunnel.uninstall_biz(base, "fenced-m", "1.0.0", biz_model_version="uid-1")).ok
    # a batch (the MQTT baseline) carries each biz's config and bizModelVersion too
    batched = BizSpec("batched-m", "1.0.0", "file:///tmp/batched-m.jar").with_config([], {"B": "1"})
    results = await mq.tunnel.batch_install_biz(base, [batched], biz_model_versions={batched.key: "uid-3"})
    assert results[batched.url].ok and arklet.bizs["batched-m:1.0.0"].envs == {"B": "1"}
    assert "batched-m:1.0.0" not in arklet.model_versions  # arklet 1.4.3's batch handler stores none


async def test_a_base_without_batch_answers_is_served_one_by_one(mq: Env, mqtt_broker: MqttBroker) -> None:
    """arklet < 1.4.1 installs a baseline itself and answers with its biz list: twice in a row, and from then on
    the tunnel installs one by one (each biz with its own bizModelVersion)."""
    sim = Simulator(_sim_config(mqtt_broker, mq.env, bases=1,
                                behaviour=ArkletBehaviour(install_latency_s=0.01, batch_install=False)))
    await sim.start()
    try:
        (identity,) = sim.bases
        base = await mq.base(identity)
        arklet = sim.base(identity).arklet
        for round_ in (1, 2):
            spec = BizSpec(f"old-{round_}", "1", f"file:///tmp/old-{round_}.jar")
            results = await mq.tunnel.batch_install_biz(base, [spec])
            assert results[spec.url].ok and results[spec.url].message == "installed from the baseline"
        installs = arklet.install_calls
        last = BizSpec("old-3", "1", "file:///tmp/old-3.jar")
        results = await mq.tunnel.batch_install_biz(base, [last], biz_model_versions={last.key: "uid-3"})
        assert results[last.url].ok and results[last.url].message != "installed from the baseline"
        assert arklet.install_calls == installs + 1 and arklet.model_versions["old-3:1"] == "uid-3"
    finally:
        await sim.stop()


async def test_query_baseline_is_answered(mq: Env) -> None:
    prefix = next(iter(mq.sim.bases)).rsplit("-", 1)[0]
    new_identity = f"{prefix}-{len(mq.sim.bases):04d}"
    spec = BizSpec("baseline-biz", "1.0.0", "file:///tmp/baseline-biz.jar")
    mq.events.baselines[new_identity] = [spec]
    (added,) = await mq.sim.add_bases(1)
    assert added.identity == new_identity
    await wait_for(lambda: any(m.identity == new_identity for m in mq.events.baseline_asked), 5.0,
                   what="queryBaseline")
    await wait_for(lambda: "baseline-biz:1.0.0" in added.arklet.bizs, 5.0, what="baseline installed by the base")
    assert added.arklet.bizs["baseline-biz:1.0.0"].state == "activated"


async def test_commands_to_a_dead_base_time_out(mq: Env) -> None:
    identity = mq.identities()[0]
    base = await mq.base(identity)
    await mq.sim.stop_base(identity)
    try:
        started = time.monotonic()
        with pytest.raises(TunnelError, match="no answer"):
            await mq.tunnel.health(base)
        assert time.monotonic() - started < 5.0
    finally:
        await mq.sim.start_base(identity)
    assert (await mq.tunnel.health(base)).cpu_count == 4


async def test_commands_are_not_retained(mq: Env, mqtt_broker: MqttBroker) -> None:
    base = await mq.base(mq.identities()[0])
    await mq.tunnel.install_biz(base, BizSpec("ret", "1.0.0", "file:///tmp/ret.jar"))
    await mq.tunnel.health(base)
    await mq.tunnel.batch_install_biz(base, [BizSpec("ret2", "1.0.0", "file:///tmp/ret2.jar")])
    env = mq.env.lower()
    seen: list[str] = []
    async with aiomqtt.Client(mqtt_broker.host, mqtt_broker.port, username=mqtt_broker.username,
                              password=mqtt_broker.password) as late:
        await late.subscribe([(f"koupleless_{env}/#", 1)])

        async def collect() -> None:
            async for message in late.messages:
                if message.retain:
                    seen.append(message.topic.value)

        with pytest.raises(TimeoutError):
            await asyncio.wait_for(collect(), 1.0)
    assert seen == [], f"retained messages replayed to a late subscriber: {seen}"


async def test_hostile_payloads_are_dropped_and_counted(mq: Env, mqtt_broker: MqttBroker) -> None:
    env = mq.env.lower()
    heart = f"koupleless_{env}/evil-base/base/heart"
    now = int(time.time() * 1000)
    commanded = mq.identities()[0]
    await mq.tunnel.health(await mq.base(commanded))  # now the tunnel listens to this base's answers
    valid_heartbeat = {
        "baseMetadata": {"identity": "evil-base", "name": "b", "version": "1", "clusterName": "c"},
        "localHostName": "evil", "localIP": "127.0.0.1", "port": 0, "state": "activated",
    }
    cases = [
        ("bad_json", heart, b"{this is not json"),
        ("bad_json", heart, b"[]"),
        ("too_large", heart, b"x" * (MAX_PAYLOAD + 1)),
        ("expired", heart, orjson.dumps({"publishTimestamp": now - 3_600_000, "data": valid_heartbeat})),
        ("invalid", heart, orjson.dumps({"publishTimestamp": now, "data": {"baseMetadata": "nope"}})),
        ("invalid", f"koupleless_{env}/other-id/base/heart",
         orjson.dumps({"publishTimestamp": now, "data": valid_heartbeat})),
        ("invalid", f"koupleless_{env}/{commanded}/base/bizOperation",
         orjson.dumps({"publishTimestamp": now, "data": {"command": "installBiz"}})),
        ("invalid", f"koupleless_{env}/{commanded}/base/simpleBiz",
         orjson.dumps({"publishTimestamp": now, "data": [{"state": "x"}]})),
    ]
    expected: dict[str, float] = {}
    for reason, _, _ in cases:
        expected[reason] = expected.get(reason, _dropped(reason)) + 1
    async with aiomqtt.Client(mqtt_broker.host, mqtt_broker.port, username=mqtt_broker.username,
                              password=mqtt_broker.password) as attacker:
        for _, topic, payload in cases:
            await attacker.publish(topic, payload, qos=1)
        await wait_for(lambda: all(_dropped(r) >= n for r, n in expected.items()), 5.0,
                       what=f"drop counters {expected}")
        assert "evil-base" not in mq.events.latest()
        base = await mq.base(mq.identities()[1])
        assert (await mq.tunnel.health(base)).cpu_count == 4  # still serving

        # A retained message is replayed by the broker to a new subscriber: an old fact, never delivered.
        retained_topic = f"koupleless_{env}/evil-base/base/heart"
        await attacker.publish(retained_topic, orjson.dumps({"publishTimestamp": now, "data": valid_heartbeat}),
                               qos=1, retain=True)
        retained_before = _dropped("retained")
        events = RecordingEvents()
        fresh = MqttTunnel(_settings(mqtt_broker, mq.env))
        await fresh.start(events)
        try:
            await wait_for(lambda: _dropped("retained") >= retained_before + 1, 5.0, what="retained drop")
            assert "evil-base" not in events.latest()
        finally:
            await fresh.stop()
            await attacker.publish(retained_topic, b"", qos=1, retain=True)  # clear the retained message


async def test_broker_restart_restores_subscriptions(mq: Env, mqtt_broker: MqttBroker) -> None:
    base = await mq.base(mq.identities()[1])
    connections = mq.tunnel.connections
    await asyncio.to_thread(mqtt_broker.restart)
    await wait_for(lambda: mq.tunnel.connections > connections and mq.tunnel.connected, 15.0,
                   what="tunnel reconnected")
    await wait_for(lambda: mq.sim.mqtt is not None and mq.sim.mqtt.connected, 15.0, what="sim reconnected")
    count = len(mq.events.heartbeats)
    await wait_for(lambda: len(mq.events.heartbeats) >= count + 2, 5.0, what="heartbeats after the restart")
    spec = BizSpec("after-restart", "1.0.0", "file:///tmp/after-restart.jar")
    result = await mq.tunnel.install_biz(base, spec)
    assert result.ok, result.message
    assert (await mq.tunnel.health(base)).cpu_count == 4


async def test_not_connected_commands_fail_fast(mq: Env, mqtt_broker: MqttBroker) -> None:
    base = await mq.base(mq.identities()[0])
    tunnel = MqttTunnel(_settings(mqtt_broker, mq.env, mqtt_port=1))  # nothing listens on port 1
    await tunnel.start(RecordingEvents())
    try:
        assert not tunnel.connected
        with pytest.raises(TunnelError, match="not connected"):
            await tunnel.install_biz(base, BizSpec("x", "1", "file:///tmp/x.jar"))
    finally:
        await tunnel.stop()


async def test_tls_with_the_right_ca(mq: Env, mqtt_broker: MqttBroker) -> None:
    base = await mq.base(mq.identities()[0])
    tunnel = MqttTunnel(_settings(mqtt_broker, mq.env, mqtt_port=mqtt_broker.tls_port,
                                  mqtt_ca_path=str(mqtt_broker.ca_path)))
    await tunnel.start(RecordingEvents())
    try:
        assert tunnel.connected, tunnel.last_error
        assert (await tunnel.health(base)).cpu_count == 4
    finally:
        await tunnel.stop()


async def test_tls_with_a_wrong_ca_is_refused(mq: Env, mqtt_broker: MqttBroker,
                                              caplog: pytest.LogCaptureFixture) -> None:
    base = await mq.base(mq.identities()[0])
    tunnel = MqttTunnel(_settings(mqtt_broker, mq.env, mqtt_port=mqtt_broker.tls_port,
                                  mqtt_ca_path=str(mqtt_broker.other_ca_path)))
    with caplog.at_level(logging.ERROR, logger="vkprovider.tunnels.mqtt_tunnel"):
        await tunnel.start(RecordingEvents())
    try:
        assert not tunnel.connected
        assert any("TLS handshake failed" in r.getMessage() and "CERTIFICATE_VERIFY_FAILED" in r.getMessage()
                   for r in caplog.records), caplog.text
        with pytest.raises(TunnelError, match="TLS handshake failed"):
            await tunnel.health(base)
    finally:
        await tunnel.stop()


async def test_wrong_password_is_a_clear_error(mq: Env, mqtt_broker: MqttBroker,
                                               caplog: pytest.LogCaptureFixture) -> None:
    base = await mq.base(mq.identities()[0])
    tunnel = MqttTunnel(_settings(mqtt_broker, mq.env, mqtt_password="wrong"))
    with caplog.at_level(logging.ERROR, logger="vkprovider.tunnels.mqtt_tunnel"):
        await tunnel.start(RecordingEvents())
    try:
        assert not tunnel.connected
        assert any("authentication refused" in r.getMessage() and "MQTT_PASSWORD" in r.getMessage()
                   for r in caplog.records), caplog.text
        with pytest.raises(TunnelError, match="authentication refused"):
            await tunnel.install_biz(base, BizSpec("x", "1", "file:///tmp/x.jar"))
    finally:
        await tunnel.stop()


async def test_http_and_mqtt_tunnels_share_one_sink(mqtt_broker: MqttBroker) -> None:
    env = f"both{uuid.uuid4().hex[:6]}"
    secret = uuid.uuid4().hex  # HTTP heartbeats carry per-base tokens (secure by default)
    settings = _settings(mqtt_broker, env, heartbeat_secret=secret)
    events = RecordingEvents()
    http, mqtt = HttpTunnel(settings), MqttTunnel(settings)
    tunnels: dict[str, Tunnel] = {http.name: http, mqtt.name: mqtt}
    for tunnel in tunnels.values():
        await tunnel.start(events)
    http_sim = Simulator(SimConfig(bases=1, endpoint=f"http://127.0.0.1:{http.port}", identity_prefix="h",
                                   heartbeat_interval_s=0.5, heartbeat_first_spread_s=0.1, env=env,
                                   token_secret=secret))
    mqtt_sim = Simulator(_sim_config(mqtt_broker, env, bases=1, identity_prefix="q"))
    await http_sim.start()
    await mqtt_sim.start()
    try:
        await wait_for(lambda: {"h-0000", "q-0000"} <= set(events.latest()), 10.0, what="heartbeats over both tunnels")
        latest = events.latest()
        assert latest["h-0000"].tunnel == "http"
        assert latest["q-0000"].tunnel == "mqtt"
        spec = BizSpec("shared", "1.0.0", "file:///tmp/shared.jar")
        for identity, sim in (("h-0000", http_sim), ("q-0000", mqtt_sim)):
            heartbeat = latest[identity]
            result = await tunnels[heartbeat.tunnel].install_biz(heartbeat, spec)
            assert result.ok, result.message
            assert sim.base(identity).arklet.install_calls == 1
            assert {b.key for b in await tunnels[heartbeat.tunnel].query_all_biz(heartbeat)} == {spec.key}
        # a base is only reachable through its own tunnel
        with pytest.raises(TunnelError):
            await mqtt.health(latest["h-0000"])
    finally:
        await http_sim.stop()
        await mqtt_sim.stop()
        for tunnel in tunnels.values():
            await tunnel.stop()
