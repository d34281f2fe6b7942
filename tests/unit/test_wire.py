"""core.wire: arklet's wire shapes (from the protocol reference) to model values, and every rejection path."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from vkprovider.core import wire
from vkprovider.core.model import BizSpec, BizState, CommandOutcome, CpuTicks

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


def test_heartbeat_static_bizs_extension_merges() -> None:
    """``staticBizs`` (a vkprovider extension): the bizs the base ships, at the top level or in baseMetadata."""
    assert wire.parse_heartbeat(_heartbeat()).static_bizs == ()
    hb = wire.parse_heartbeat(_heartbeat(staticBizs=["a:1.0", "b"], baseMetadata__staticBizs=["b", "c:2"]))
    assert hb.static_bizs == ("a:1.0", "b", "c:2")


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
        (orjson.dumps(_heartbeat(staticBizs="a:1")), "invalid", "staticBizs"),
        (orjson.dumps(_heartbeat(staticBizs=[":1"])), "invalid", "staticBizs"),
        (orjson.dumps(_heartbeat(baseMetadata__staticBizs=[1])), "invalid", "staticBizs"),
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
        # arklet 1.4.3 UninstallBizHandler: Output.ofFailed("can not access biz because the command is expired")
        (
            {"code": "FAILED", "message": "can not access biz because the command is expired"},
            CommandOutcome.EXPIRED,
            "command is expired",
        ),
        (  # the same answer over MQTT: bizOperation's response
            {"baseIdentity": "b", "code": "FAILED", "message": "can not access biz because the command is expired"},
            CommandOutcome.EXPIRED,
            "command is expired",
        ),
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


# (case, install_request kwargs, spec fields, expected body) - arklet's InstallBizHandler.Input
CONFIGURED = [
    ("plain: the Go controller's body", {}, {}, {}),
    ("args and envs", {}, {"args": ("--a=1", "b"), "envs": (("X", "1"), ("Y", ""))},
     {"args": ["--a=1", "b"], "envs": {"X": "1", "Y": ""}}),
    ("the fence", {"biz_model_version": "3f1e-uid"}, {}, {"bizModelVersion": "3f1e-uid"}),
    ("an empty fence is left out (arklet treats absent and empty alike)", {"biz_model_version": ""}, {}, {}),
    ("all, with the strategy", {"biz_model_version": "u", "replace_other_versions": True},
     {"args": ("x",), "envs": (("E", "v"),)},
     {"args": ["x"], "envs": {"E": "v"}, "bizModelVersion": "u", "installStrategy": "uninstallThenInstall"}),
]


@pytest.mark.parametrize(("case", "kwargs", "fields", "extra"), CONFIGURED, ids=[c[0] for c in CONFIGURED])
def test_install_bodies_carry_args_envs_and_the_fence(case: str, kwargs: dict[str, Any], fields: dict[str, Any],
                                                      extra: dict[str, Any]) -> None:
    spec = BizSpec("biz1", "0.0.1", "file:///tmp/biz1.jar", **fields)
    base = {"bizName": "biz1", "bizVersion": "0.0.1", "bizUrl": "file:///tmp/biz1.jar"}
    assert orjson.loads(wire.install_request(spec, **kwargs)) == {**base, **extra}


def test_uninstall_and_batch_bodies_carry_the_fence_per_biz() -> None:
    assert orjson.loads(wire.uninstall_request("biz1", "0.0.1", biz_model_version="u1")) == {
        "bizName": "biz1", "bizVersion": "0.0.1", "bizModelVersion": "u1"}
    assert orjson.loads(wire.uninstall_request("biz1", "0.0.1", biz_model_version="")) == {
        "bizName": "biz1", "bizVersion": "0.0.1"}  # the orphan clean-up: always allowed
    a = BizSpec("a", "1", "file:///a.jar", args=("--x",), envs=(("K", "v"),))
    b = BizSpec("b", "1", "file:///b.jar")
    versions = {a.key: "uid-a"}
    expected = [{"bizName": "a", "bizVersion": "1", "bizUrl": "file:///a.jar", "args": ["--x"], "envs": {"K": "v"},
                 "bizModelVersion": "uid-a"},
                {"bizName": "b", "bizVersion": "1", "bizUrl": "file:///b.jar"}]
    assert orjson.loads(wire.batch_install_request([a, b], biz_model_versions=versions)) == {"bizList": expected}
    assert orjson.loads(wire.baseline_response([a, b], biz_model_versions=versions)) == expected  # MQTT batch
    assert orjson.loads(wire.baseline_response([b])) == [expected[1]]  # queryBaseline answer


def test_identity_must_fit_the_node_name_of_its_env() -> None:
    """vnode.<identity>.<env> is also the kubernetes.io/hostname label value: at most 63 characters."""
    fits = "a" * (63 - len("vnode.") - len(".dev") )
    assert wire.parse_heartbeat(_heartbeat(baseMetadata__identity=fits), env="dev").identity == fits
    with pytest.raises(wire.WireError, match="identity too long"):
        wire.parse_heartbeat(_heartbeat(baseMetadata__identity=fits + "b"), env="dev")
    with pytest.raises(wire.WireError, match="identity too long"):
        wire.parse_base_metadata(_heartbeat(baseMetadata__identity=fits + "b")["baseMetadata"], env="dev")


#: The ``jvm`` and ``cpu`` of a real base's health answer (koupleless 2.1.11, docs/protocol.md), verbatim.
REAL_HEALTH = {"healthData": {
    "jvm": {"java max metaspace": -1, "java committed metaspace": 56623104, "java used metaspace": 56125448,
            "max memory(M)": 6028.0, "max heap memory(M)": 6028.0, "used heap memory(M)": 101.3,
            "total memory(M)": 152.0, "free memory(M)": 49.2, "committed heap memory(M)": 152.0,
            "init heap memory(M)": 380.0, "max non heap memory(M)": -9.5367431640625E-7,
            "used non heap memory(M)": 73.1, "committed non heap memory(M)": 75.06, "init non heap memory(M)": 7.3125,
            "loaded class count": 11599, "unload class count": 2, "total class count": 11601,
            "java version": "17.0.15", "java home": "/usr/lib/jvm/java-17-openjdk-amd64", "run time(s)": 14.89},
    "cpu": {"count": 2, "total used (%)": 18360.0, "type": "AMD EPYC", "user used (%)": 2.5, "free (%)": 96.6,
            "system used (%)": 0.8},
    "masterBizInfo": {"bizName": "base", "bizState": "activated", "bizVersion": "1.0.0", "webContextPath": "/"}}}


@pytest.mark.parametrize(
    ("jvm", "cpu", "expected"),  # expected: (cpu ticks, heap used, non-heap used, uptime)
    [
        (REAL_HEALTH["healthData"]["jvm"], REAL_HEALTH["healthData"]["cpu"],
         (CpuTicks(18360.0, 2.5, 0.8), round(101.3 * 1048576), round(73.1 * 1048576), 14.89)),
        ({}, {"count": 2}, (None, None, None, None)),  # an arklet that sends none of it (the simulator before)
        ({"used heap memory(M)": -1, "used non heap memory(M)": "73", "run time(s)": True}, {},
         (None, None, None, None)),
        ({"used heap memory(M)": 0.5}, {"total used (%)": 7.5}, (None, 524288, None, None)),  # no shares: no CPU
        ({}, {"total used (%)": 100, "user used (%)": 80, "system used (%)": 30}, (None, None, None, None)),  # >100%
        ({}, {"total used (%)": -1, "user used (%)": 1, "system used (%)": 1}, (None, None, None, None)),
        ({}, {"total used (%)": 0, "user used (%)": 0, "system used (%)": 0}, (CpuTicks(0, 0, 0), None, None, None)),
        ({"used heap memory(M)": float("nan")}, {"total used (%)": float("inf"), "user used (%)": 1,
                                                  "system used (%)": 1}, (None, None, None, None)),
    ],
)
def test_parse_health_usage(jvm: Any, cpu: Any, expected: tuple[Any, ...]) -> None:
    """What kubectl top node shows: arklet's CPU ticks since it started with their user/system shares, the JVM's
    used heap and non-heap in bytes (arklet sends MiB as doubles) and its run time; anything else is None."""
    h = wire.parse_health({"healthData": {"jvm": jvm, "cpu": cpu}})
    assert (h.cpu, h.heap_used_bytes, h.non_heap_used_bytes, h.uptime_s) == expected


def test_usage_figures_do_not_make_an_answer_differ():
    """A health answer that differs only in what the base uses changes nothing the Node shows (equality)."""
    first = wire.parse_health(REAL_HEALTH)
    busier = copy.deepcopy(REAL_HEALTH)
    busier["healthData"]["cpu"].update({"total used (%)": 20000.0, "user used (%)": 9.0})
    busier["healthData"]["jvm"]["used heap memory(M)"] = 500.0
    second = wire.parse_health(busier)
    assert second == first and second.cpu != first.cpu and second.heap_used_bytes != first.heap_used_bytes


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
