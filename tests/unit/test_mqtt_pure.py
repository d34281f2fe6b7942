"""The MQTT tunnel's pure parts: topics, the ``{publishTimestamp, data}`` envelope checks, TLS settings, error
descriptions, and the simulator's arklet casing. No broker needed."""

from __future__ import annotations

import ssl
from pathlib import Path

import orjson
import pytest
from aiomqtt import MqttError
from aiomqtt.exceptions import MqttConnectError
from hypothesis import given
from hypothesis import strategies as st

from tests.mqtt_broker import make_ca
from vkprovider.config import Settings
from vkprovider.sim.arklet import SimBiz
from vkprovider.sim.mqtt_transport import mqtt_output, simple_biz
from vkprovider.tunnels.mqtt.connection import build_tls_context, describe_connect_error
from vkprovider.tunnels.mqtt.topics import (
    BASE_KINDS,
    DROP_REASONS,
    MessageDropped,
    answer_subscriptions,
    baseline_topic,
    command_topic,
    open_envelope,
    parse_topic,
    subscriptions,
)

NOW = 1_700_000_000_000


def _envelope(data: object, stamp: object = NOW) -> bytes:
    return orjson.dumps({"publishTimestamp": stamp, "data": data})


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("koupleless_dev/10.0.0.5/base/heart", ("10.0.0.5", "heart")),
        ("koupleless_dev/sim-0001/base/batchInstallBizResponse", ("sim-0001", "batchInstallBizResponse")),
        ("koupleless_dev/sim-0001/base/simpleBiz", ("sim-0001", "simpleBiz")),
        ("koupleless_prod/sim-0001/base/heart", None),  # another env
        ("koupleless_dev/sim-0001/base/baseline", None),  # what we publish, not what bases send
        ("koupleless_dev/sim-0001/installBiz", None),  # a command
        ("koupleless_dev//base/heart", None),
        ("koupleless_dev/a/b/base/heart", None),
        ("koupleless_dev/sim-0001/base/heartbeat", None),
    ],
)
def test_parse_topic(topic: str, expected: tuple[str, str] | None) -> None:
    assert parse_topic(topic, "dev") == expected


def test_topics_follow_arklet_and_lowercase_the_env() -> None:
    assert command_topic("Dev", "sim-1", "installBiz") == "koupleless_dev/sim-1/installBiz"
    assert baseline_topic("DEV", "sim-1") == "koupleless_dev/sim-1/base/baseline"
    # Every replica hears heartbeats and baseline requests of every base ...
    subs = subscriptions("Dev")
    assert subs == ["koupleless_dev/+/base/heart", "koupleless_dev/+/base/queryBaseline"]
    # ... and only the replica commanding a base subscribes to its answers.
    answers = answer_subscriptions("Dev", "b-1")
    assert answers == [f"koupleless_dev/b-1/base/{k}" for k in ("health", "simpleBiz", "biz", "bizOperation",
                                                                "batchInstallBizResponse")]
    # every subscription is parsed back by parse_topic (with a concrete identity)
    for sub in subs + answers:
        assert parse_topic(sub.replace("+", "b-1"), "dev") is not None
    assert set(BASE_KINDS) == {t.rsplit("/", 1)[1] for t in subs + answers}


def test_open_envelope_returns_data() -> None:
    assert open_envelope(_envelope({"a": 1}), now_ms=NOW + 500, max_age_s=60, max_bytes=1024) == {"a": 1}
    assert open_envelope(_envelope([1, 2]), now_ms=NOW, max_age_s=60, max_bytes=1024) == [1, 2]


@pytest.mark.parametrize(
    ("payload", "now", "reason"),
    [
        (b"x" * 2000, NOW, "too_large"),
        (b"{not json", NOW, "bad_json"),
        (b"[1, 2]", NOW, "bad_json"),
        (orjson.dumps({"publishTimestamp": NOW}), NOW, "bad_json"),
        (_envelope({}, stamp="1700000000000"), NOW, "invalid"),
        (_envelope({}, stamp=True), NOW, "invalid"),
        (_envelope({}, stamp=1.5), NOW, "invalid"),
        (_envelope({}), NOW + 61_000, "expired"),
        (_envelope({}), NOW - 61_000, "clock_skew"),
    ],
)
def test_open_envelope_drops(payload: bytes, now: int, reason: str) -> None:
    with pytest.raises(MessageDropped) as caught:
        open_envelope(payload, now_ms=now, max_age_s=60, max_bytes=1024)
    assert caught.value.reason == reason
    assert reason in DROP_REASONS


def test_open_envelope_age_window_is_configurable() -> None:
    old = _envelope({"x": 1}, stamp=NOW - 3_600_000)
    assert open_envelope(old, now_ms=NOW, max_age_s=7200, max_bytes=1024) == {"x": 1}
    assert open_envelope(old, now_ms=NOW, max_age_s=0, max_bytes=1024) == {"x": 1}  # 0 disables the check
    with pytest.raises(MessageDropped, match="expired"):
        open_envelope(old, now_ms=NOW, max_age_s=10, max_bytes=1024)


def test_retained_messages_are_dropped_even_when_fresh() -> None:
    with pytest.raises(MessageDropped) as caught:
        open_envelope(_envelope({}), now_ms=NOW, max_age_s=60, max_bytes=1024, retained=True)
    assert caught.value.reason == "retained"


@given(st.binary(max_size=300))
def test_open_envelope_never_fails_otherwise(payload: bytes) -> None:
    try:
        open_envelope(payload, now_ms=NOW, max_age_s=60, max_bytes=200)
    except MessageDropped as dropped:
        assert dropped.reason in DROP_REASONS


def test_tls_context_verifies_the_broker(tmp_path: Path) -> None:
    assert build_tls_context(Settings(mqtt_ca_path=None)) is None
    ca_path, _, _ = make_ca(tmp_path, "unit-ca")
    context = build_tls_context(Settings(mqtt_ca_path=str(ca_path)))
    assert context is not None
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname is True
    with pytest.raises((FileNotFoundError, ssl.SSLError)):
        build_tls_context(Settings(mqtt_ca_path=str(tmp_path / "missing.crt")))


def test_connect_errors_name_the_setting_to_check() -> None:
    assert describe_connect_error(MqttConnectError(5)).startswith("authentication refused")
    assert describe_connect_error(MqttConnectError(4)).startswith("authentication refused")
    tls = MqttError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate")
    assert describe_connect_error(tls).startswith("TLS handshake failed")
    assert "MQTT_CA_PATH" in describe_connect_error(tls)
    assert describe_connect_error(MqttError("[Errno 111] Connection refused")).startswith("cannot connect")


def test_sim_answers_use_arklet_mqtt_casing() -> None:
    biz = SimBiz("biz1", "1.0.0", "file:///tmp/biz1.jar")
    biz.move("resolved", "Created", now_ms=1)
    biz.move("activated", "Started", now_ms=2)
    output = mqtt_output({
        "code": "SUCCESS",
        "data": {"code": "SUCCESS", "bizInfos": [biz.to_wire()]},
        "errorStackTrace": "only over HTTP",
    })
    info = output["data"]["bizInfos"][0]
    assert info["bizState"] == "ACTIVATED"
    assert [r["state"] for r in info["bizStateRecords"]] == ["RESOLVED", "ACTIVATED"]
    assert "errorStackTrace" not in output
    simple = simple_biz(biz)
    assert simple["state"] == "activated"  # SimpleBizInfo.state is arklet's lowercase getBizState()
    assert simple["latestStateRecord"]["state"] == "ACTIVATED"
    assert (simple["name"], simple["version"]) == ("biz1", "1.0.0")
