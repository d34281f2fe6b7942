"""Arklet's wire format, translated to and from ``core.model`` with no I/O.

Both tunnels (HTTP now, MQTT later) receive the same JSON shapes from arklet: heartbeats, ``health`` and
``queryAllBiz`` answers, and the two-level ``code`` envelope of biz commands. Keeping the translation here,
pure and table-testable, means the tunnels only move bytes and the controllers never see wire casing or
quirks.

Everything a base sends is untrusted: heartbeats are validated strictly (they become Kubernetes node names and
label values) and every failure is a ``WireError`` carrying a short reason fit for a 400 answer or a log line.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from vkprovider.core.model import (
    BaseHealth,
    BaseHeartbeat,
    BaseMetadata,
    BizInfo,
    BizKey,
    BizSpec,
    BizState,
    BizStateRecord,
    CommandOutcome,
    CommandResult,
    CpuTicks,
)
from vkprovider.core.node import identity_refusal
from vkprovider.core.sanitize import clean
from vkprovider.core.staticbizs import parse_patterns

__all__ = [
    "CONFLICT_MARKER",
    "EXPIRED_MARKER",
    "LABEL_PREFIXES",
    "MAX_EXTRA_LABELS",
    "WireError",
    "baseline_response",
    "batch_install_request",
    "decode_envelope",
    "encode_base_metadata",
    "install_request",
    "parse_base_metadata",
    "parse_batch_install_result",
    "parse_biz_list",
    "parse_command_result",
    "parse_health",
    "parse_heartbeat",
    "uninstall_request",
]

CONFLICT_MARKER: Final = "conflict, exist unfinished command"
"""Arklet's top-level message when a command on the same name:version is still running."""

EXPIRED_MARKER: Final = "can not access biz because the command is expired"
"""arklet >= 1.4.3's whole answer to an uninstall whose bizModelVersion is not the biz's (UninstallBizHandler)."""

LABEL_PREFIXES: Final = ("topology.kubernetes.io/", "base.koupleless.io/")
"""The only node-label keys a base may ask for through the ``labels`` heartbeat extension."""

RESERVED_LABELS: Final = frozenset(
    {
        "base.koupleless.io/name",
        "base.koupleless.io/version",
        "base.koupleless.io/cluster-name",
        "base.koupleless.io/host-name",
    }
)
"""Labels vkprovider derives from the metadata itself; the extension map may not override them."""

MAX_EXTRA_LABELS: Final = 16

_LABEL_VALUE_RE: Final = re.compile(r"^(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_LABEL_NAME_RE: Final = re.compile(r"^[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_MAX_LABEL_VALUE: Final = 63
_MAX_HOST_NAME: Final = 253
_KNOWN_BASE_STATES: Final = frozenset({"ACTIVATED", "DEACTIVATED"})


class WireError(ValueError):
    """Something a base (or a client of ours) sent does not fit the protocol.

    ``reason`` is short and safe to return to the sender; ``kind`` is a low-cardinality metric label:
    ``json`` (not JSON / not an object) or ``invalid`` (JSON, but wrong shape or values).
    """

    def __init__(self, reason: str, kind: str = "invalid") -> None:
        reason = clean(reason, 300)  # it may quote what the sender sent: one safe line
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


# --- heartbeat ---------------------------------------------------------------------------------------------


def _check_label_value(value: str, what: str) -> str:
    if not value:
        raise ValueError(f"{what} must not be empty")
    if len(value) > _MAX_LABEL_VALUE:
        raise ValueError(f"{what} longer than {_MAX_LABEL_VALUE} characters")
    if not _LABEL_VALUE_RE.match(value):
        raise ValueError(f"{what} must be alphanumeric, '-', '_' or '.', starting and ending alphanumeric")
    return value


class _MetadataWire(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    identity: str
    name: str
    version: str
    cluster_name: str = Field(alias="clusterName")
    labels: dict[str, str] | None = None
    static_bizs: list[str] | None = Field(None, alias="staticBizs")

    @field_validator("identity")
    @classmethod
    def _identity_fits_a_node_name(cls, value: str) -> str:
        if not value:
            raise ValueError("identity must not be empty")
        if len(value) > _MAX_LABEL_VALUE:
            raise ValueError(f"identity longer than {_MAX_LABEL_VALUE} characters")
        refusal = identity_refusal(value)
        if refusal is not None:
            raise ValueError(refusal)
        return value

    @field_validator("name", "version", "cluster_name")
    @classmethod
    def _fits_a_label_value(cls, value: str, info: ValidationInfo) -> str:
        return _check_label_value(
            value, "clusterName" if info.field_name == "cluster_name" else str(info.field_name)
        )


class _HeartbeatWire(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    base_metadata: _MetadataWire = Field(alias="baseMetadata")
    local_host_name: str = Field("", alias="localHostName")
    local_ip: str = Field(alias="localIP")
    port: int
    state: str = "ACTIVATED"
    labels: dict[str, str] | None = None
    static_bizs: list[str] | None = Field(None, alias="staticBizs")

    @field_validator("local_host_name")
    @classmethod
    def _host_name_is_short(cls, value: str) -> str:
        if len(value) > _MAX_HOST_NAME:
            raise ValueError(f"localHostName longer than {_MAX_HOST_NAME} characters")
        return value

    @field_validator("local_ip")
    @classmethod
    def _is_an_ip(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError("localIP is not an IP address") from None

    @field_validator("port")
    @classmethod
    def _is_a_port(cls, value: int) -> int:
        if not 0 <= value <= 65535:
            raise ValueError("port must be 1..65535")
        return value

    @field_validator("state")
    @classmethod
    def _is_a_base_state(cls, value: str) -> str:
        state = value.upper()
        if state not in _KNOWN_BASE_STATES:
            raise ValueError("state must be 'activated' or 'deactivated'")
        return state


def _reason_from(error: ValidationError) -> str:
    """One short line naming the first offending field, e.g. ``baseMetadata.identity: must not be empty``."""
    first = error.errors(include_url=False, include_context=False, include_input=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    message = first["msg"].removeprefix("Value error, ")
    return f"{where}: {message}"[:200]


def _loads_object(body: bytes | str | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(body, Mapping):
        return body
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise WireError("body is not valid JSON", kind="json") from None
    if not isinstance(decoded, dict):
        raise WireError("body is not a JSON object", kind="json")
    return decoded


def _extra_labels(*maps: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    """Merge the extension label maps (top level wins), keeping only allowed, non-reserved keys."""
    merged: dict[str, str] = {}
    for labels in maps:
        if not labels:
            continue
        for key, value in labels.items():
            if not key.startswith(LABEL_PREFIXES) or key in RESERVED_LABELS:
                continue  # an extension: unknown keys are ignored, never applied
            name = key.partition("/")[2]
            if len(name) > _MAX_LABEL_VALUE or not _LABEL_NAME_RE.match(name):
                raise WireError(f"labels: invalid label key {key[:80]!r}")
            try:
                _check_label_value(value, f"labels[{key}]")
            except ValueError as exc:
                raise WireError(f"labels: {exc}") from None
            merged[key] = value
    if len(merged) > MAX_EXTRA_LABELS:
        raise WireError(f"labels: more than {MAX_EXTRA_LABELS} labels")
    return tuple(sorted(merged.items()))


def _static_bizs(*lists: list[str] | None) -> tuple[str, ...]:
    """The ``staticBizs`` extension (``core.staticbizs``): both lists merged, each entry ``name[:version]``."""
    try:
        patterns = parse_patterns([entry for entries in lists for entry in entries or ()])
    except ValueError as exc:
        raise WireError(f"staticBizs: {exc}"[:200]) from None
    return tuple(str(p) for p in patterns)


def _check_node_name(identity: str, env: str | None) -> None:
    if env is not None:
        refusal = identity_refusal(identity, env)
        if refusal is not None:
            raise WireError(f"baseMetadata.identity: {refusal}")


def parse_heartbeat(
    body: bytes | str | Mapping[str, Any], *, tunnel: str = "http", allow_port_zero: bool = False,
    env: str | None = None,
) -> BaseHeartbeat:
    """Validate one heartbeat body (arklet's lowercase ``state`` or the Go mocks' uppercase).

    ``allow_port_zero`` is for MQTT, where arklet sends ``"port": 0`` because commands do not use HTTP.
    With ``env``, the identity must also make a valid, distinct node name ``vnode.<identity>.<env>``.
    Raises ``WireError`` with a one-line reason.
    """
    raw = _loads_object(body)
    try:
        wire = _HeartbeatWire.model_validate(raw)
    except ValidationError as exc:
        raise WireError(_reason_from(exc)) from None
    _check_node_name(wire.base_metadata.identity, env)
    if wire.port == 0 and not allow_port_zero:
        raise WireError("port: port must be 1..65535")
    meta = wire.base_metadata
    return BaseHeartbeat(
        metadata=BaseMetadata(
            identity=meta.identity, name=meta.name, version=meta.version, cluster_name=meta.cluster_name
        ),
        host_name=wire.local_host_name,
        ip=wire.local_ip,
        port=wire.port,
        state=wire.state,
        labels=_extra_labels(meta.labels, wire.labels),
        tunnel=tunnel,
        static_bizs=_static_bizs(wire.static_bizs, meta.static_bizs),
    )


def parse_base_metadata(body: bytes | str | Mapping[str, Any], *, env: str | None = None) -> BaseMetadata:
    """Validate a bare BaseMetadata object (the body of ``queryBaseline``)."""
    raw = _loads_object(body)
    try:
        meta = _MetadataWire.model_validate(raw)
    except ValidationError as exc:
        raise WireError(_reason_from(exc)) from None
    _check_node_name(meta.identity, env)
    return BaseMetadata(
        identity=meta.identity, name=meta.name, version=meta.version, cluster_name=meta.cluster_name
    )


def encode_base_metadata(metadata: BaseMetadata) -> bytes:
    """BaseMetadata as arklet writes it (keys sorted)."""
    return orjson.dumps(
        {
            "clusterName": metadata.cluster_name,
            "identity": metadata.identity,
            "name": metadata.name,
            "version": metadata.version,
        }
    )


# --- answers to commands -----------------------------------------------------------------------------------


def decode_envelope(body: bytes | str) -> dict[str, Any]:
    """Arklet's answer text → its envelope object ``{"code", "data", "message", "errorStackTrace", ...}``."""
    envelope = _loads_object(body)
    if not isinstance(envelope.get("code"), str):
        raise WireError("answer has no 'code'")
    return dict(envelope)


def _optional_int(value: object) -> int | None:
    """A JSON number as int; ``None`` for missing, negative (arklet's -1 means unknown) or non-numeric."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value < 0:  # arklet: -1 = unknown
        return None
    return int(value)


def _optional_float(value: object) -> float | None:
    """A finite, non-negative JSON number; ``None`` otherwise (arklet's -1 and its -9.5e-7 mean unknown)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return float(value)


def _mib_to_bytes(value: object) -> int | None:
    """Arklet's ``...(M)`` figures are bytes / 1024 / 1024 as a double."""
    mib = _optional_float(value)
    return None if mib is None else round(mib * 1024 * 1024)


def _cpu_ticks(cpu: Mapping[str, Any]) -> CpuTicks | None:
    """Arklet's CPU time since it started (see ``CpuTicks``); None unless all three figures make sense."""
    total = _optional_float(cpu.get("total used (%)"))
    user = _optional_float(cpu.get("user used (%)"))
    system = _optional_float(cpu.get("system used (%)"))
    if total is None or user is None or system is None or user + system > 100.0 + 1e-6:
        return None
    return CpuTicks(total_ms=total, user_pct=user, system_pct=system)


def _optional_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def parse_health(data: object) -> BaseHealth:
    """The ``data`` of a ``health`` answer (``{"healthData": {...}}``, or healthData itself) → BaseHealth.

    Resources: ``cpu.count`` and Metaspace (the vnode's capacity). Usage, for ``kubectl top node``: the machine's
    CPU time since arklet started (``CpuTicks``), the JVM's used heap and non-heap (``used heap memory(M)``,
    ``used non heap memory(M)``) and its ``run time(s)``. A figure that is missing, negative or not a number is
    None, never a guess."""
    if not isinstance(data, Mapping):
        raise WireError("health data is not an object")
    health = data.get("healthData", data)
    if not isinstance(health, Mapping):
        raise WireError("healthData is not an object")
    jvm = health.get("jvm")
    cpu = health.get("cpu")
    master = health.get("masterBizInfo")
    jvm = jvm if isinstance(jvm, Mapping) else {}
    cpu = cpu if isinstance(cpu, Mapping) else {}
    master = master if isinstance(master, Mapping) else {}
    cpu_count = _optional_int(cpu.get("count"))
    return BaseHealth(
        cpu_count=cpu_count if cpu_count else None,
        memory_max_bytes=_optional_int(jvm.get("java max metaspace")),
        memory_committed_bytes=_optional_int(jvm.get("java committed metaspace")),
        memory_used_bytes=_optional_int(jvm.get("java used metaspace")),
        heap_max_bytes=_mib_to_bytes(jvm.get("max heap memory(M)")),
        master_biz_name=_optional_str(master.get("bizName")),
        master_biz_version=_optional_str(master.get("bizVersion")),
        master_biz_state=(_optional_str(master.get("bizState")) or "").upper() or None,
        cpu=_cpu_ticks(cpu),
        heap_used_bytes=_mib_to_bytes(jvm.get("used heap memory(M)")),
        non_heap_used_bytes=_mib_to_bytes(jvm.get("used non heap memory(M)")),
        uptime_s=_optional_float(jvm.get("run time(s)")),
    )


def _change_time_ms(value: object) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return int(value)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return 0


def _record(raw: object) -> BizStateRecord | None:
    if not isinstance(raw, Mapping):
        return None
    reason = raw.get("reason")
    message = raw.get("message")
    return BizStateRecord(
        change_time_ms=_change_time_ms(raw.get("changeTime")),
        state=BizState.parse(raw.get("state")),
        reason=reason if isinstance(reason, str) else "",
        message=message if isinstance(message, str) else "",
    )


def _biz_info(raw: object) -> BizInfo | None:
    """One biz of ``queryAllBiz`` (bizName/bizVersion/bizState) or MQTT ``simpleBiz`` (name/version/state)."""
    if not isinstance(raw, Mapping):
        return None
    name = raw.get("bizName", raw.get("name"))
    version = raw.get("bizVersion", raw.get("version"))
    if not isinstance(name, str) or not name or not isinstance(version, str) or not version:
        return None
    raw_records = raw.get("bizStateRecords")
    records: list[BizStateRecord] = []
    if isinstance(raw_records, list):
        records = [r for r in map(_record, raw_records) if r is not None]
    latest = _record(raw.get("latestStateRecord"))
    if latest is not None:
        records.append(latest)
    return BizInfo(
        name=name,
        version=version,
        state=BizState.parse(raw.get("bizState", raw.get("state"))),
        records=tuple(records),
    )


def parse_biz_list(data: object) -> list[BizInfo]:
    """The ``data`` of ``queryAllBiz`` → BizInfo list. An entry without name or version is an error:
    silently skipping it would make the controller believe the biz is gone and reinstall it."""
    if not isinstance(data, list):
        raise WireError("biz list is not a JSON array")
    bizs: list[BizInfo] = []
    for index, raw in enumerate(data):
        info = _biz_info(raw)
        if info is None:
            raise WireError(f"biz list entry {index} has no bizName/bizVersion")
        bizs.append(info)
    return bizs


def _first_line(text: object) -> str:
    if not isinstance(text, str):
        return ""
    return text.strip().split("\n", 1)[0].strip()


def _bizs_of(data: Mapping[str, Any]) -> tuple[BizInfo, ...]:
    raw = data.get("bizInfos")
    if not isinstance(raw, list):
        return ()
    return tuple(info for info in map(_biz_info, raw) if info is not None)


def _fold(code: object, data: object, message: object, stack: object) -> CommandResult:
    """Fold arklet's outer ``code`` and inner ``data.code`` into one CommandResult."""
    data_map: Mapping[str, Any] = data if isinstance(data, Mapping) else {}
    data_code = data_map.get("code")
    data_message = _optional_str(data_map.get("message"))
    outer_message = _optional_str(message)
    bizs = _bizs_of(data_map)
    if data_code == "REPEAT_BIZ" or code == "REPEAT_BIZ":
        return CommandResult(CommandOutcome.REPEAT, data_message or outer_message or "", bizs)
    if data_code == "NOT_FOUND_BIZ" or code == "NOT_FOUND_BIZ":
        return CommandResult(CommandOutcome.NOT_FOUND, data_message or outer_message or "", bizs)
    if code == "SUCCESS" and data_code in (None, "SUCCESS"):
        return CommandResult(CommandOutcome.SUCCESS, data_message or outer_message or "", bizs)
    if outer_message and CONFLICT_MARKER in outer_message:
        return CommandResult(CommandOutcome.CONFLICT, outer_message, bizs)
    if code == "FAILED" and outer_message and EXPIRED_MARKER in outer_message:
        return CommandResult(CommandOutcome.EXPIRED, outer_message, bizs)
    text = data_message or outer_message or f"arklet answered {code}"
    cause = _first_line(stack)
    if cause and cause not in text:
        text = f"{text} ({cause})"
    return CommandResult(CommandOutcome.FAILED, text, bizs)


def parse_command_result(envelope: Mapping[str, Any]) -> CommandResult:
    """An installBiz / uninstallBiz / switchBiz envelope → CommandResult."""
    return _fold(
        envelope.get("code"), envelope.get("data"), envelope.get("message"), envelope.get("errorStackTrace")
    )


def parse_batch_install_result(
    envelope: Mapping[str, Any], urls: Iterable[str] = ()
) -> dict[str, CommandResult]:
    """A batchInstallBiz envelope → result per biz URL.

    Each ``bizUrlToResponse`` entry is a ClientResponse (``code`` SUCCESS / FAILED / REPEAT_BIZ ...).
    Requested ``urls`` the answer does not mention get the envelope's own result (FAILED unless it says
    SUCCESS).
    """
    data = envelope.get("data")
    per_url = data.get("bizUrlToResponse") if isinstance(data, Mapping) else None
    results: dict[str, CommandResult] = {}
    if isinstance(per_url, Mapping):
        for url, answer in per_url.items():
            if not isinstance(answer, Mapping):
                results[str(url)] = CommandResult(CommandOutcome.FAILED, "malformed batch entry")
                continue
            code = answer.get("code")
            # A ClientResponse has one level: its code is the data-level code.
            results[str(url)] = _fold(
                "SUCCESS" if code == "SUCCESS" else "FAILED", answer, answer.get("message"), None
            )
    missing = [url for url in urls if url not in results]
    if missing:
        overall = parse_command_result(envelope)
        if overall.ok:
            overall = CommandResult(CommandOutcome.FAILED, "batchInstallBiz answer does not mention this biz")
        for url in missing:
            results[url] = CommandResult(overall.outcome, overall.message)
    return results


# --- request bodies ----------------------------------------------------------------------------------------
#
# installBiz input (arklet's InstallBizHandler.Input): bizName, bizVersion, bizUrl, installStrategy, and
# - ``args``: a list of strings, given to the biz's ``main`` (Spring Boot reads ``--name=value`` as properties);
# - ``envs``: a map of strings. arklet hands it to sofa-ark, whose MainMethodRunner drops it (a "TODO: add envs into
#   the tenant of jdk" up to sofa-ark 3.1.11): on a standard JDK the biz cannot see them (docs/protocol.md §B);
# - ``bizModelVersion`` (arklet >= 1.4.3; older arklets ignore it): the owner of this install. arklet stores it with
#   the biz at install, and refuses an uninstall carrying another non-empty value ("can not access biz because the
#   command is expired", CommandOutcome.EXPIRED); an empty value is always allowed. Keys are sent only when they
#   have a value, so a plain biz's bodies are byte for byte those of the Go controller.
# batchInstallBiz (HTTP) and the MQTT baseline take a list of the same inputs. Never log a body: envs and args may
# hold Secret data.


def _install_input(biz: BizSpec, biz_model_version: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {"bizName": biz.name, "bizVersion": biz.version, "bizUrl": biz.url}
    if biz.args:
        body["args"] = list(biz.args)
    if biz.envs:
        body["envs"] = dict(biz.envs)
    if biz_model_version:
        body["bizModelVersion"] = biz_model_version
    return body


def install_request(biz: BizSpec, *, replace_other_versions: bool = False, biz_model_version: str = "") -> bytes:
    """installBiz input; ``replace_other_versions`` asks arklet to uninstall other versions of the biz first."""
    body = _install_input(biz, biz_model_version)
    if replace_other_versions:
        body["installStrategy"] = "uninstallThenInstall"
    return orjson.dumps(body)


def uninstall_request(name: str, version: str, *, biz_model_version: str = "") -> bytes:
    body = {"bizName": name, "bizVersion": version}
    if biz_model_version:
        body["bizModelVersion"] = biz_model_version
    return orjson.dumps(body)


def _inputs(bizs: Sequence[BizSpec], biz_model_versions: Mapping[BizKey, str] | None) -> list[dict[str, Any]]:
    versions = biz_model_versions or {}
    return [_install_input(biz, versions.get(biz.key, "")) for biz in bizs]


def batch_install_request(bizs: Sequence[BizSpec], *,
                          biz_model_versions: Mapping[BizKey, str] | None = None) -> bytes:
    """batchInstallBiz input: one installBiz input per biz (``biz_model_versions`` by name:version)."""
    return orjson.dumps({"bizList": _inputs(bizs, biz_model_versions)})


def baseline_response(bizs: Sequence[BizSpec], *, biz_model_versions: Mapping[BizKey, str] | None = None) -> bytes:
    """The answer to ``queryBaseline``, also the MQTT batch install (``base/baseline``): installBiz inputs
    ``[{"bizName","bizVersion","bizUrl",...}]``."""
    return orjson.dumps(_inputs(bizs, biz_model_versions))
