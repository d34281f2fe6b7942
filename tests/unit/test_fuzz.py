"""Fuzzing what bases send (issue 14): 10,000+ cases each against the heartbeat parser and the MQTT message path.

Nothing a base sends may raise anything but the documented refusal: ``WireError`` from the heartbeat parser,
``MessageDropped`` from the MQTT envelope check, and a dropped-and-counted message (never the ``error`` reason,
which counts unexpected exceptions) from the whole MQTT message handler.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vkprovider.config import Settings
from vkprovider.core import wire
from vkprovider.core.model import BaseHealth, BaseHeartbeat, BaseMetadata, BizInfo, BizSpec
from vkprovider.tunnels.base import Refusal
from vkprovider.tunnels.mqtt import MqttTunnel
from vkprovider.tunnels.mqtt.topics import BASE_KINDS, MessageDropped, open_envelope
from vkprovider.tunnels.mqtt.tunnel import MQTT_DROPPED_TOTAL

CASES = 10_000
BATCH = 50  # cases per hypothesis example: the per-example overhead is paid once per batch
GOOD = {"baseMetadata": {"clusterName": "default", "identity": "b-1", "name": "base", "version": "1.0.0"},
        "localHostName": "h", "localIP": "127.0.0.1", "port": 1238, "state": "activated"}

# Values that break parsers most often, drawn cheaply; plus random text, numbers and small nested structures.
INTERESTING = [None, True, False, 0, -1, 1, 65535, 65536, 70000, 2**63 - 1, -(2**63), 1.5, float("inf"), "", " ",
               "x" * 300, "UPPER", "a..b", "-a", "a-", "10.0.0.5", "::1", "fe80::1%eth0", "256.1.1.1", "activated",
               "DEACTIVATED", "\n", "\x00", "\x1b[31m", "\u2028", "é", "🙂", "topology.kubernetes.io/zone",
               "base.koupleless.io/name", [], {}, [1, 2], {"a": 1}, {"\n": None}, {"x" * 70: "y"}]
scalars = (st.sampled_from(INTERESTING) | st.text(max_size=20) | st.integers(-(2**63), 2**63 - 1) | st.floats()
           | st.booleans() | st.none())
json_like = scalars | st.lists(scalars, max_size=3) | st.dictionaries(st.text(max_size=10) | st.sampled_from(
    ["identity", "name", "labels", "baseMetadata", "port"]), scalars, max_size=4)


@st.composite
def heartbeat_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["raw", "json", "mutated", "mutated", "mutated"]))
    if kind == "raw":
        return draw(st.binary(max_size=300))
    if kind == "json":
        return orjson.dumps(draw(json_like), option=orjson.OPT_NON_STR_KEYS)
    body: dict[str, Any] = orjson.loads(orjson.dumps(GOOD))
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(["top", "meta"]))
        target = body if where == "top" else body.setdefault("baseMetadata", {})
        if not isinstance(target, dict):
            break
        key = draw(st.sampled_from(["identity", "name", "version", "clusterName", "localIP", "port", "state",
                                    "labels", "localHostName", "baseMetadata", "extra"]))
        target[key] = draw(json_like)
    return orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)


SEEN: dict[str, int] = {"heartbeats": 0, "envelopes": 0, "messages": 0}


@settings(max_examples=CASES // BATCH, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(st.lists(st.tuples(heartbeat_bodies(), st.sampled_from([None, "dev", "a" * 40])), min_size=BATCH,
                max_size=BATCH))
def test_the_heartbeat_parser_only_ever_refuses_with_a_reason(cases: list[tuple[bytes, str | None]]) -> None:
    for body, env in cases:
        SEEN["heartbeats"] += 1
        try:
            hb = wire.parse_heartbeat(body, env=env)
        except wire.WireError as exc:
            assert exc.reason and len(exc.reason) <= 300 and "\n" not in exc.reason
            continue
        assert hb.identity == hb.identity.lower() and 0 < hb.port <= 65535


payloads = st.one_of(st.binary(max_size=400), json_like.map(lambda v: orjson.dumps(
    {"publishTimestamp": 1_700_000_000_000, "data": v}, option=orjson.OPT_NON_STR_KEYS)),
    json_like.map(lambda v: orjson.dumps(v, option=orjson.OPT_NON_STR_KEYS)))


@settings(max_examples=CASES // BATCH, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(st.lists(st.tuples(payloads, st.booleans()), min_size=BATCH, max_size=BATCH))
def test_the_mqtt_envelope_only_ever_drops_with_a_reason(cases: list[tuple[bytes, bool]]) -> None:
    for payload, retained in cases:
        SEEN["envelopes"] += 1
        try:
            open_envelope(payload, now_ms=1_700_000_000_000, max_age_s=60, max_bytes=200, retained=retained)
        except MessageDropped as exc:
            assert exc.reason in ("too_large", "bad_json", "invalid", "expired", "clock_skew", "retained")


class Sink:
    def __init__(self) -> None:
        self.heartbeats = 0

    def on_heartbeat(self, heartbeat: BaseHeartbeat, *, authenticated: bool = False) -> Refusal | None:
        self.heartbeats += 1
        return None

    def address_of(self, identity: str) -> str | None:
        return None

    def on_health(self, identity: str, health: BaseHealth) -> None:
        pass

    def on_bizs(self, identity: str, bizs: Sequence[BizInfo]) -> None:
        pass

    def baseline(self, metadata: BaseMetadata) -> list[BizSpec] | None:
        return None


@dataclass
class FakeTopic:
    value: str


@dataclass
class FakeMessage:
    topic: FakeTopic
    payload: Any
    retain: bool = False


TUNNEL = MqttTunnel(Settings(env="fz", mqtt_enabled=True), clock_ms=lambda: 1_700_000_000_000)
SINK = Sink()
TUNNEL._events = SINK  # the handler path only, no broker
ERRORS = MQTT_DROPPED_TOTAL.labels("error")


@st.composite
def mqtt_messages(draw: st.DrawFn) -> FakeMessage:
    identity = draw(st.sampled_from(["b-1", "B-1", "", "x/y", "b-2"]))
    kind = draw(st.sampled_from([*BASE_KINDS, "other"]))
    topic = draw(st.sampled_from([f"koupleless_fz/{identity}/base/{kind}", f"koupleless_x/{identity}/base/{kind}",
                                  "garbage", f"koupleless_fz/{identity}/{kind}"]))
    data = draw(json_like | st.just(GOOD) | st.just({"code": "SUCCESS", "data": draw(json_like)}))
    stamp = draw(st.sampled_from([1_700_000_000_000, 0, -1, "x", None]))
    payload = draw(st.sampled_from(["enveloped", "raw"]))
    body = (orjson.dumps({"publishTimestamp": stamp, "data": data}, option=orjson.OPT_NON_STR_KEYS)
            if payload == "enveloped" else draw(st.binary(max_size=200)))
    return FakeMessage(FakeTopic(topic), draw(st.sampled_from([body, body.decode("latin-1"), None, 42])),
                       draw(st.booleans()))


@settings(max_examples=CASES // BATCH, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(st.lists(mqtt_messages(), min_size=BATCH, max_size=BATCH))
def test_the_mqtt_message_path_never_fails_unexpectedly(messages: list[FakeMessage]) -> None:
    for message in messages:
        SEEN["messages"] += 1
        before = ERRORS._value.get()
        TUNNEL._on_message(message)  # type: ignore[arg-type]
        assert ERRORS._value.get() == before, f"an unexpected exception for {message}"


def test_each_fuzzer_ran_its_10000_cases() -> None:
    """Runs after the three above (file order): hypothesis ran every example it was asked for."""
    assert all(n >= CASES for n in SEEN.values()), SEEN
