"""core.wire: arklet's wire shapes (from the protocol reference) to model values, and every rejection path."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from vkprovider.core import wire
from vkprovider.core.model import BizSpec, BizState, CommandOutcome

REAL_HEARTBEAT: dict[str, Any] = {
    "baseMetadata": {
        "clusterName": "default",
        "identity": "10.0.0.5",
        "name": "TO_BE_IMPLEMENTED",
        "version": "1.0.0",
    },
    "localHostName": "myhost",
    "localIP": "10.0.0.5",
    "port": 1238,
    "state": "activated",
}


def _heartbeat(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(REAL_HEARTBEAT)
    for dotted, value in changes.items():
        target = body
        *path, last = dotted.split("__")
        for part in path:
            target = target[part]
        if value is _DELETE:
            del target[last]
        else:
            target[last] = value
    return body


_DELETE = object()


# --- heartbeats that parse --------------------------------------------------------------------------------


def test_real_arklet_heartbeat_bytes() -> None:
    raw = (
        b'{"baseMetadata":{"clusterName":"default","identity":"10.0.0.5","name":"TO_BE_IMPLEMENTED",'
        b'"version":"1.0.0"},"localHostName":"myhost","localIP":"10.0.0.5","port":1238,"state":"activated"}'
    )
    hb = wire.parse_heartbeat(raw)
    assert hb.identity == "10.0.0.5"
    assert (hb.metadata.name, hb.metadata.version, hb.metadata.cluster_name) == (
        "TO_BE_IMPLEMENTED",
        "1.0.0",
        "default",
    )
    assert (hb.host_name, hb.ip, hb.port, hb.state, hb.tunnel, hb.labels) == (
        "myhost",
        "10.0.0.5",
        1238,
        "ACTIVATED",
        "http",
        (),
    )


@pytest.mark.parametrize(
    ("changes", "check"),
    [
        ({"state": "ACTIVATED"}, lambda hb: hb.state == "ACTIVATED"),  # the Go mocks' casing
        ({"state": "Deactivated"}, lambda hb: hb.state == "DEACTIVATED"),
        ({"state": _DELETE}, lambda hb: hb.state == "ACTIVATED"),
        ({"localHostName": _DELETE}, lambda hb: hb.host_name == ""),
        ({"baseMetadata__identity": "unknown-3f2a"}, lambda hb: hb.identity == "unknown-3f2a"),
        ({"baseMetadata__identity": "base-a.zone1"}, lambda hb: hb.identity == "base-a.zone1"),
        ({"localIP": "::1"}, lambda hb: hb.ip == "::1"),
        ({"port": 65535}, lambda hb: hb.port == 65535),
        ({"extra": {"anything": [1, 2]}}, lambda hb: hb.identity == "10.0.0.5"),  # unknown keys tolerated
        ({"baseMetadata__version": "1.0.0-SNAPSHOT"}, lambda hb: hb.metadata.version == "1.0.0-SNAPSHOT"),
    ],
)
def test_heartbeat_variants_accepted(changes: dict[str, Any], check: Any) -> None:
    assert check(wire.parse_heartbeat(orjson.dumps(_heartbeat(**changes))))


def test_heartbeat_labels_extension_filters_and_merges() -> None:
    body = _heartbeat(
        labels={
            "topology.kubernetes.io/zone": "zone-a",
            "evil.io/x": "y",
            "base.koupleless.io/name": "spoof",
        },
        baseMetadata__labels={"base.koupleless.io/stack": "java", "topology.kubernetes.io/zone": "ignored"},
    )
    hb = wire.parse_heartbeat(body)
    assert hb.labels == (("base.koupleless.io/stack", "java"), ("topology.kubernetes.io/zone", "zone-a"))


def test_heartbeat_mqtt_port_zero_allowed_only_when_asked() -> None:
    body = _heartbeat(port=0)
    with pytest.raises(wire.WireError, match="port"):
        wire.parse_heartbeat(body)
    assert wire.parse_heartbeat(body, tunnel="mqtt", allow_port_zero=True).tunnel == "mqtt"


# --- heartbeats that are rejected -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "kind", "reason_part"),
    [
        (b"", "json", "not valid JSON"),
        (b"not json", "json", "not valid JSON"),
        (b"\xff\xfe\x00", "json", "not valid JSON"),
        (b"[1, 2]", "json", "not a JSON object"),
        (b'"text"', "json", "not a JSON object"),
        (b"null", "json", "not a JSON object"),
        (orjson.dumps(_heartbeat(baseMetadata=_DELETE)), "invalid", "baseMetadata"),
        (orjson.dumps(_heartbeat(baseMetadata="x")), "invalid", "baseMetadata"),
        (orjson.dumps(_heartbeat(baseMetadata__identity=_DELETE)), "invalid", "baseMetadata.identity"),
        (orjson.dumps(_heartbeat(baseMetadata__identity="")), "invalid", "identity must not be empty"),
        (orjson.dumps(_heartbeat(baseMetadata__identity="a/b")), "invalid", "identity"),
        (orjson.dumps(_heartbeat(baseMetadata__identity="a_b")), "invalid", "DNS-1123"),
        (orjson.dumps(_heartbeat(baseMetadata__identity="-ab")), "invalid", "identity"),
        (orjson.dumps(_heartbeat(baseMetadata__identity="a" * 64)), "invalid", "longer than 63"),
        # Identities that differ only in case would fold onto one node: refused, never lowercased.
        (orjson.dumps(_heartbeat(baseMetadata__identity="SPOOF-0000")), "invalid", "must be lowercase"),
        (orjson.dumps(_heartbeat(baseMetadata__identity="Base-A.Zone1")), "invalid", "must be lowercase"),
        # a..b would make the invalid node name vnode.a..b.<env> (a 422 retried forever).
        (orjson.dumps(_heartbeat(baseMetadata__identity="a..b")), "invalid", "DNS-1123"),
        (orjson.dumps(_heartbeat(baseMetadata__identity="-a")), "invalid", "DNS-1123"),
        (orjson.dumps(_heartbeat(baseMetadata__identity="fe80::1")), "invalid", "DNS-1123"),
        (orjson.dumps(_heartbeat(baseMetadata__identity=5)), "invalid", "baseMetadata.identity"),
        (orjson.dumps(_heartbeat(baseMetadata__name="")), "invalid", "name must not be empty"),
        (orjson.dumps(_heartbeat(baseMetadata__name="has space")), "invalid", "baseMetadata.name"),
        (orjson.dumps(_heartbeat(baseMetadata__version=None)), "invalid", "baseMetadata.version"),
        (orjson.dumps(_heartbeat(baseMetadata__clusterName="")), "invalid", "clusterName must not be empty"),
        (orjson.dumps(_heartbeat(localIP="10.0.0.256")), "invalid", "localIP is not an IP"),
        (orjson.dumps(_heartbeat(localIP=_DELETE)), "invalid", "localIP"),
        (orjson.dumps(_heartbeat(port=_DELETE)), "invalid", "port"),
        (orjson.dumps(_heartbeat(port=0)), "invalid", "port must be 1..65535"),
        (orjson.dumps(_heartbeat(port=65536)), "invalid", "port must be 1..65535"),
        (orjson.dumps(_heartbeat(port=-1)), "invalid", "port"),
        (orjson.dumps(_heartbeat(port="1238")), "invalid", "port"),
        (orjson.dumps(_heartbeat(port=True)), "invalid", "port"),
        (orjson.dumps(_heartbeat(port=1238.5)), "invalid", "port"),
        (orjson.dumps(_heartbeat(state="exploded")), "invalid", "state"),
        (orjson.dumps(_heartbeat(localHostName="h" * 300)), "invalid", "localHostName"),
        (orjson.dumps(_heartbeat(labels={"topology.kubernetes.io/zone": "bad value!"})), "invalid", "labels"),
        (orjson.dumps(_heartbeat(labels={"topology.kubernetes.io/": "a"})), "invalid", "label key"),
        (orjson.dumps(_heartbeat(labels={"base.koupleless.io/stack": 1})), "invalid", "labels"),
        (orjson.dumps(_heartbeat(labels=["x"])), "invalid", "labels"),
        (
            orjson.dumps(_heartbeat(labels={f"base.koupleless.io/l{i}": "v" for i in range(17)})),
            "invalid",
            "more than 16",
        ),
    ],
)
def test_heartbeat_rejections(body: bytes, kind: str, reason_part: str) -> None:
    with pytest.raises(wire.WireError) as caught:
        wire.parse_heartbeat(body)
    assert caught.value.kind == kind
    assert reason_part in caught.value.reason
    assert len(caught.value.reason) <= 200


def test_base_metadata_for_query_baseline() -> None:
    meta = wire.parse_base_metadata(orjson.dumps(REAL_HEARTBEAT["baseMetadata"]))
    assert (meta.identity, meta.cluster_name) == ("10.0.0.5", "default")
    assert orjson.loads(wire.encode_base_metadata(meta)) == REAL_HEARTBEAT["baseMetadata"]
    with pytest.raises(wire.WireError, match="identity"):
        wire.parse_base_metadata(b'{"name":"a","version":"1","clusterName":"c"}')


# --- health -----------------------------------------------------------------------------------------------

HEALTH_DATA = {
    "healthData": {
        "jvm": {
            "java max metaspace": 536870912,
            "java committed metaspace": 100663296,
            "java used metaspace": 94371840.0,
            "java max memory": 123,
        },
        "cpu": {"count": 8, "total used (%)": 12.5},
        "masterBizInfo": {
            "bizName": "base",
            "bizState": "ACTIVATED",
            "bizVersion": "1.0.0",
            "webContextPath": "/",
        },
    }
}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (HEALTH_DATA, (8, 536870912, 100663296, 94371840, "base", "1.0.0")),
        (
            {"healthData": {"jvm": {"java max metaspace": -1}, "cpu": {"count": 2}}},
            (2, None, None, None, None, None),
        ),
        (
            HEALTH_DATA["healthData"],
            (8, 536870912, 100663296, 94371840, "base", "1.0.0"),
        ),  # healthData itself
        ({"healthData": {"jvm": "x", "cpu": None}}, (None, None, None, None, None, None)),
        (
            {"healthData": {"cpu": {"count": "8"}, "jvm": {"java max metaspace": True}}},
            (None, None, None, None, None, None),
        ),
        ({"healthData": {"cpu": {"count": 0}}}, (None, None, None, None, None, None)),
    ],
)
def test_parse_health(data: Any, expected: tuple[Any, ...]) -> None:
    h = wire.parse_health(data)
    assert (
        h.cpu_count,
        h.memory_max_bytes,
        h.memory_committed_bytes,
        h.memory_used_bytes,
        h.master_biz_name,
        h.master_biz_version,
    ) == expected


@pytest.mark.parametrize("data", [None, [], "x", {"healthData": 5}])
def test_parse_health_rejects(data: Any) -> None:
    with pytest.raises(wire.WireError):
        wire.parse_health(data)


# --- queryAllBiz ------------------------------------------------------------------------------------------


def test_parse_biz_list_http_shape() -> None:
    data = [
        {
            "bizName": "biz1",
            "bizVersion": "0.0.1",
            "bizState": "activated",
            "mainClass": "x",
            "webContextPath": "b",
            "bizStateRecords": [
                {"changeTime": 1700000000000, "state": "resolved", "reason": "Created", "message": ""},
                {"changeTime": 1700000001000, "state": "activated", "reason": "Started"},
                "garbage",
            ],
        },
        {"bizName": "biz2", "bizVersion": "1", "bizState": "DEACTIVATED"},
        {"bizName": "biz3", "bizVersion": "1", "bizState": "weird"},
    ]
    bizs = wire.parse_biz_list(data)
    assert [(b.name, b.version, b.state) for b in bizs] == [
        ("biz1", "0.0.1", BizState.ACTIVATED),
        ("biz2", "1", BizState.DEACTIVATED),
        ("biz3", "1", BizState.UNKNOWN),
    ]
    assert [(r.state, r.reason) for r in bizs[0].records] == [
        (BizState.RESOLVED, "Created"),
        (BizState.ACTIVATED, "Started"),
    ]
    assert bizs[0].last_record is not None and bizs[0].last_record.change_time_ms == 1700000001000
    assert bizs[1].records == ()


def test_parse_biz_list_mqtt_simple_biz_shape() -> None:
    data = [
        {
            "name": "biz1",
            "version": "1",
            "state": "ACTIVATED",
            "latestStateRecord": {"changeTime": "1700000000000", "state": "ACTIVATED", "reason": "Started"},
        }
    ]
    (biz,) = wire.parse_biz_list(data)
    assert (biz.name, biz.state, biz.records[0].change_time_ms) == ("biz1", BizState.ACTIVATED, 1700000000000)


@pytest.mark.parametrize(
    "data",
    [None, {}, "x", [{"bizName": "a"}], [{"bizVersion": "1"}], [5], [{"bizName": "", "bizVersion": "1"}]],
)
def test_parse_biz_list_rejects(data: Any) -> None:
    with pytest.raises(wire.WireError):
        wire.parse_biz_list(data)


def test_parse_biz_list_empty() -> None:
    assert wire.parse_biz_list([]) == []


# --- command envelopes ------------------------------------------------------------------------------------

INSTALL_OK = {
    "code": "SUCCESS",
    "data": {
        "bizInfos": [{"bizName": "biz1", "bizVersion": "1", "bizState": "activated"}],
        "code": "SUCCESS",
        "elapsedSpace": 1092,
        "message": "Install Biz: biz1:1 success, cost: 1092 ms",
    },
}


@pytest.mark.parametrize(
    ("envelope", "outcome", "message_part"),
    [
        (INSTALL_OK, CommandOutcome.SUCCESS, "success, cost"),
        (
            {"code": "SUCCESS", "data": {"code": "SUCCESS", "message": "Uninstall biz: n:v success."}},
            CommandOutcome.SUCCESS,
            "Uninstall biz",
        ),
        ({"code": "SUCCESS"}, CommandOutcome.SUCCESS, ""),
        (
            {
                "code": "FAILED",
                "data": {"code": "REPEAT_BIZ", "message": "Biz: n:v has been installed or registered."},
                "message": "install biz not success!",
            },
            CommandOutcome.REPEAT,
            "has been installed",
        ),
        (
            {
                "code": "FAILED",
                "data": {"code": "NOT_FOUND_BIZ", "message": "Uninstall biz: n:v not found."},
                "message": "uninstall biz not success!",
            },
            CommandOutcome.NOT_FOUND,
            "not found",
        ),
        (
            {
                "code": "FAILED",
                "message": "FAILED:n:v installBiz conflict, exist unfinished command(installBiz) for "
                "this biz",
            },
            CommandOutcome.CONFLICT,
            "exist unfinished command(installBiz)",
        ),
        (
            {"code": "CMD_PROCESS_INTERNAL_ERROR", "message": "Internal Error: bizUrl should not be blank"},
            CommandOutcome.FAILED,
            "bizUrl should not be blank",
        ),
        (
            {
                "code": "FAILED",
                "data": {"code": "FAILED", "message": "Install Biz: n:v fail, cost: 3 ms"},
                "message": "install biz not success!",
                "errorStackTrace": "java.lang.RuntimeException: boom\n\tat x.y",
            },
            CommandOutcome.FAILED,
            "Install Biz: n:v fail, cost: 3 ms (java.lang.RuntimeException: boom)",
        ),
        ({"code": "FAILED", "message": "install biz not success!"}, CommandOutcome.FAILED, "not success"),
        ({"code": "CMD_NOT_FOUND"}, CommandOutcome.FAILED, "arklet answered CMD_NOT_FOUND"),
        (
            {"code": "SUCCESS", "data": {"code": "ILLEGAL_STATE_BIZ", "message": "illegal"}},
            CommandOutcome.FAILED,
            "illegal",
        ),
        ({"code": "SUCCESS", "data": "weird"}, CommandOutcome.SUCCESS, ""),
    ],
)
def test_parse_command_result(envelope: dict[str, Any], outcome: CommandOutcome, message_part: str) -> None:
    result = wire.parse_command_result(envelope)
    assert result.outcome is outcome
    assert message_part in result.message


def test_install_success_carries_biz_infos() -> None:
    result = wire.parse_command_result(INSTALL_OK)
    assert result.ok and [(b.name, b.state) for b in result.bizs] == [("biz1", BizState.ACTIVATED)]


def test_decode_envelope() -> None:
    assert wire.decode_envelope(b'{"code":"SUCCESS","data":[]}')["data"] == []
    for bad in (b"", b"<html>", b"[]", b'{"data":1}', b'{"code":5}'):
        with pytest.raises(wire.WireError):
            wire.decode_envelope(bad)


def test_parse_batch_install_result() -> None:
    envelope = {
        "code": "FAILED",
        "data": {
            "code": "FAILED",
            "bizUrlToResponse": {
                "file:///a.jar": {"code": "SUCCESS", "message": "Install Biz: a:1 success", "bizInfos": []},
                "file:///b.jar": {
                    "code": "REPEAT_BIZ",
                    "message": "Biz: b:1 has been installed or registered.",
                },
                "file:///c.jar": {"code": "FAILED", "message": "Install Biz: c:1 fail"},
                "file:///d.jar": "garbage",
            },
        },
        "message": "batch install biz not success!",
    }
    results = wire.parse_batch_install_result(envelope, ["file:///a.jar", "file:///e.jar"])
    assert {url: r.outcome for url, r in results.items()} == {
        "file:///a.jar": CommandOutcome.SUCCESS,
        "file:///b.jar": CommandOutcome.REPEAT,
        "file:///c.jar": CommandOutcome.FAILED,
        "file:///d.jar": CommandOutcome.FAILED,
        "file:///e.jar": CommandOutcome.FAILED,
    }
    assert "c:1 fail" in results["file:///c.jar"].message
    assert "not success" in results["file:///e.jar"].message


def test_parse_batch_install_whole_call_failed() -> None:
    envelope = {
        "code": "CMD_PROCESS_INTERNAL_ERROR",
        "message": "Internal Error: bizList should not be empty",
    }
    results = wire.parse_batch_install_result(envelope, ["u1"])
    assert results["u1"].outcome is CommandOutcome.FAILED and "bizList" in results["u1"].message
    # SUCCESS overall but silent about a requested URL is still not a success for that URL
    assert not wire.parse_batch_install_result({"code": "SUCCESS", "data": {}}, ["u2"])["u2"].ok


def test_request_bodies() -> None:
    spec = BizSpec("biz1", "0.0.1", "file:///tmp/biz1.jar")
    assert orjson.loads(wire.install_request(spec)) == {
        "bizName": "biz1",
        "bizVersion": "0.0.1",
        "bizUrl": "file:///tmp/biz1.jar",
    }
    assert orjson.loads(wire.uninstall_request("biz1", "0.0.1")) == {"bizName": "biz1", "bizVersion": "0.0.1"}
    assert orjson.loads(wire.batch_install_request([spec, spec])) == {
        "bizList": [orjson.loads(wire.install_request(spec))] * 2
    }
    assert orjson.loads(wire.baseline_response([spec])) == [orjson.loads(wire.install_request(spec))]


def test_identity_must_fit_the_node_name_of_its_env() -> None:
    """vnode.<identity>.<env> is also the kubernetes.io/hostname label value: at most 63 characters."""
    fits = "a" * (63 - len("vnode.") - len(".dev") )
    assert wire.parse_heartbeat(_heartbeat(baseMetadata__identity=fits), env="dev").identity == fits
    with pytest.raises(wire.WireError, match="identity too long"):
        wire.parse_heartbeat(_heartbeat(baseMetadata__identity=fits + "b"), env="dev")
    with pytest.raises(wire.WireError, match="identity too long"):
        wire.parse_base_metadata(_heartbeat(baseMetadata__identity=fits + "b")["baseMetadata"], env="dev")


@pytest.mark.parametrize(
    ("jvm", "heap"),
    [
        ({"max heap memory(M)": 6028.0}, 6028 * 1024 * 1024),  # a real base (docs/protocol.md): MiB, a float
        ({"max heap memory(M)": 0.5}, 512 * 1024),
        ({"max heap memory(M)": -1}, None),
        ({"max heap memory(M)": "6028"}, None),
        ({"max heap memory(M)": float("inf")}, None),
        ({}, None),
    ],
)
def test_parse_health_reads_the_max_heap_in_mib(jvm: dict[str, Any], heap: int | None) -> None:
    """The vnode's memory when the base has no max metaspace (-1, the JVM's default) is its max heap."""
    assert wire.parse_health({"healthData": {"jvm": jvm}}).heap_max_bytes == heap
