"""The simulated arklet of one base: a sofa-ark-like biz state machine that answers arklet commands.

This is the part of the simulator that does not care how commands arrive: the HTTP transport
(``http_transport``) and a future MQTT transport both call ``SimArklet.handle(command, body)`` and send the
envelope it returns. It reproduces what vkprovider must cope with on a real base: lowercase biz states with
state records, REPEAT_BIZ / NOT_FOUND_BIZ, the per-name:version "conflict, exist unfinished command" answer,
install latency that does not block other commands, injected failures (auto-uninstalled like sofa-ark), what
happens to the other versions of a biz when a new version starts, and ``health`` figures shaped as arklet's (the
machine's CPU ticks since arklet started with their user/system shares, heap and non-heap in MiB) that move with
the base's ``Usage``.

The fence of arklet 1.4.3 (koupleless/runtime #247, #248: BizOpsPodCoordinator), on unless
``ArkletBehaviour.model_version_fence`` is off (arklet before 1.4.3, e.g. 2.1.6, ignores ``bizModelVersion``):

- a successful ``installBiz`` stores its ``bizModelVersion`` (empty when absent) under the request's name:version,
  replacing any stored one. ``batchInstallBiz`` stores nothing (its handler does not), nor does an
  ``uninstallThenInstall`` that removes other versions (their stored values stay);
- ``uninstallBiz`` (after the "conflict" check) is refused with arklet's own answer,
  ``{"code":"FAILED","message":"can not access biz because the command is expired"}``, when it carries a non-empty
  ``bizModelVersion`` and a different non-empty one is stored; an empty one is always allowed, and so is any when
  nothing (or empty) is stored. A successful uninstall forgets the stored value: unconditionally when it carried
  none, else only if it is the stored one;
- a base restart forgets everything (the map lives in the JVM; a restart is a new ``SimArklet``).

Each biz keeps the ``args`` and ``envs`` it was installed with (``SimBiz.args`` / ``envs``, never in an answer), so
tests can see what vkprovider sent.
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

BIZ_COMMANDS: Final = frozenset({"installBiz", "uninstallBiz", "switchBiz", "batchInstallBiz"})
QUERY_COMMANDS: Final = frozenset({"health", "queryAllBiz"})
ALLOWED_URL_PREFIXES: Final = ("http://", "https://", "file://")
EXPIRED_MESSAGE: Final = "can not access biz because the command is expired"

_BIZ_MODEL_FRAME: Final = "com.alipay.sofa.ark.container.model.BizModel.start(BizModel.java)"

Envelope = dict[str, Any]


class MultiVersionMode(enum.StrEnum):
    """What happens to other versions of a biz when a new version starts (sofa-ark system properties)."""

    ACTIVATE_NEW = "activate-new"  # -Dactivate.new.module=true: new ACTIVATED, old DEACTIVATED (Switched)
    KEEP_OLD = "keep-old"  # sofa-ark default: new one DEACTIVATED until switchBiz
    MULTI = "multi"  # -Dsofa.ark.activate.multi.biz.version.enable=true: all ACTIVATED
    EXCLUSIVE = "exclusive"  # a web biz: a second version cannot start (its context path is taken)


@dataclass(frozen=True, slots=True)
class ArkletBehaviour:
    """Knobs shared by every simulated base."""

    install_latency_s: float = 0.05
    download_latency_s: float = 0.0  # an install fetches its jar this long before the biz shows in queryAllBiz
    uninstall_latency_s: float = 0.01
    failure_rate: float = 0.0
    fail_bizs: frozenset[str] = frozenset()  # names, or name:version, whose installs always fail
    multi_version_mode: MultiVersionMode = MultiVersionMode.ACTIVATE_NEW
    cpu_count: int = 4
    metaspace_max_bytes: int = 512 * 1024 * 1024
    metaspace_committed_bytes: int = 96 * 1024 * 1024
    metaspace_used_bytes: int = 90 * 1024 * 1024
    heap_max_mb: float = 2048.0  # "max heap memory(M)", as arklet says it (MiB)
    master_biz_name: str = "base"
    master_biz_version: str = "1.0.0"
    query_latency_s: float = 0.0  # queryAllBiz takes this long (reads overtaken by command answers)
    fail_uninstall_bizs: frozenset[str] = frozenset()  # uninstalls of these bizs fail (an orphan stays)
    malformed_biz_list: bool = False  # queryAllBiz lists one entry without a version (a list no client can parse)
    model_version_fence: bool = True  # arklet >= 1.4.3: a stale bizModelVersion cannot uninstall (module docstring)
    batch_install: bool = True  # False: no batchInstallBiz (arklet < 2.1.7: CMD_NOT_FOUND; MQTT < 1.4.1: biz list)


#: The simulated JVM's code cache and compressed class space, on top of its Metaspace (its used non-heap).
NON_HEAP_BESIDES_METASPACE: Final = 24 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Usage:
    """What one simulated base uses: the busy fraction of its machine's CPUs and its used heap (``kubectl top
    node``), its used Metaspace (memory pressure; None: ``ArkletBehaviour.metaspace_used_bytes``). The control
    API's ``POST /bases/{identity}/usage`` sets them; committed Metaspace follows the used figure up, as the JVM
    commits Metaspace while it loads classes."""

    cpu: float = 0.05
    heap_used_bytes: int = 256 * 1024 * 1024
    metaspace_used_bytes: int | None = None


@dataclass(slots=True)
class StateRecord:
    change_time_ms: int
    state: str  # lowercase, as arklet sends over HTTP
    reason: str
    message: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {
            "changeTime": self.change_time_ms,
            "state": self.state,
            "reason": self.reason,
            "message": self.message,
        }


@dataclass(slots=True)
class SimBiz:
    name: str
    version: str
    url: str
    state: str = "unresolved"
    records: list[StateRecord] = field(default_factory=list)
    args: tuple[str, ...] = field(default=(), repr=False)  # installBiz args, as received
    envs: dict[str, str] = field(default_factory=dict, repr=False)  # installBiz envs, as received

    def move(self, state: str, reason: str, message: str = "", *, now_ms: int) -> None:
        self.state = state
        self.records.append(StateRecord(now_ms, state, reason, message))

    def to_wire(self) -> dict[str, Any]:
        return {
            "bizName": self.name,
            "bizVersion": self.version,
            "bizState": self.state,
            "mainClass": f"com.example.{self.name.replace('-', '_')}.Application",
            "webContextPath": self.name,
            "bizStateRecords": [record.to_wire() for record in self.records],
        }


def _now_ms() -> int:
    return int(time.time() * 1000)


def _key(name: str, version: str) -> str:
    return f"{name}:{version}"


def _manifest_name(url: str) -> str | None:
    """The simulator's stand-in for the jar manifest's Ark-Biz-Name: an ``arkBizName`` query parameter."""
    from urllib.parse import parse_qs, urlsplit

    try:
        values = parse_qs(urlsplit(url).query).get("arkBizName")
    except ValueError:
        return None
    return values[0] if values else None


def _internal_error(text: str) -> Envelope:
    return {"code": "CMD_PROCESS_INTERNAL_ERROR", "message": f"Internal Error: {text}"}


def _blank(value: object) -> bool:
    return not isinstance(value, str) or not value.strip()


def _model_version(body: Mapping[str, Any]) -> str:
    value = body.get("bizModelVersion")
    return value if isinstance(value, str) else ""


def _args(value: object) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def _envs(value: object) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


class SimArklet:
    """One base's arklet. All state lives here; a JVM restart is a new instance.

    ``handle`` returns the envelope to send back. Counters (``install_calls`` ...) count commands that came
    through a transport; ``install_direct`` (the control API's orphan installs) does not count.
    """

    def __init__(
        self,
        behaviour: ArkletBehaviour,
        *,
        rng: random.Random | None = None,
        clock_ms: Callable[[], int] = _now_ms,
        clock_s: Callable[[], float] = time.monotonic,
        usage: Usage | None = None,
    ) -> None:
        self.behaviour = behaviour
        self._rng = rng or random.Random()
        self._clock_ms = clock_ms
        self._clock_s = clock_s
        self._started = clock_s()  # arklet takes its first CPU ticks when it starts
        self._busy_ms = 0.0  # busy CPU time up to _usage_since
        self._usage_since = self._started
        self.usage = usage or Usage()
        self.bizs: dict[str, SimBiz] = {}
        self._running: dict[str, str] = {}  # name:version -> the command running on it
        self.install_calls = 0
        self.uninstall_calls = 0
        self.batch_calls = 0
        self.calls_by_biz: dict[str, list[int]] = {}  # name:version -> [installs, uninstalls]
        self.model_versions: dict[str, str] = {}  # name:version -> bizModelVersion stored at install (1.4.3)
        self.state = "activated"  # the base itself (masterBizInfo): "deactivated" while shutting down
        self.health_calls = 0

    # --- dispatch ----------------------------------------------------------------------------------------

    async def handle(self, command: str, body: Mapping[str, Any] | None) -> Envelope:
        """Answer one command. ``body`` is None when the request had no body at all."""
        if command == "health":
            return self.health()
        if command == "queryAllBiz":
            snapshot = self.query_all_biz()  # taken when the command arrives, answered after the latency
            if self.behaviour.query_latency_s > 0:
                await asyncio.sleep(self.behaviour.query_latency_s)
            return {"code": "SUCCESS", "data": snapshot}
        if command not in BIZ_COMMANDS or (command == "batchInstallBiz" and not self.behaviour.batch_install):
            return {"code": "CMD_NOT_FOUND", "message": f"Internal Error: command {command} not found"}
        if body is None:
            return _internal_error("request body is empty")
        if command == "installBiz":
            self._count(body, install=True)
            return await self.install(body)
        if command == "uninstallBiz":
            self._count(body, install=False)
            return await self.uninstall(body)
        if command == "switchBiz":
            return self.switch(body)
        return await self.batch_install(body)

    def _count(self, body: Mapping[str, Any], *, install: bool) -> None:
        key = _key(str(body.get("bizName")), str(body.get("bizVersion")))
        counts = self.calls_by_biz.setdefault(key, [0, 0])
        if install:
            self.install_calls += 1
            counts[0] += 1
        else:
            self.uninstall_calls += 1
            counts[1] += 1

    def boot(self) -> None:
        """The JVM starts now: its uptime ("run time(s)") and CPU ticks count from here."""
        self._started = self._usage_since = self._clock_s()
        self._busy_ms = 0.0

    def reset_stats(self) -> None:
        self.install_calls = 0
        self.uninstall_calls = 0
        self.batch_calls = 0
        self.calls_by_biz.clear()

    # --- queries -----------------------------------------------------------------------------------------

    def query_all_biz(self) -> list[dict[str, Any]]:
        """Every biz but the master biz (arklet leaves it out); with ``malformed_biz_list`` plus an entry no client
        can use (no bizVersion)."""
        listed = [biz.to_wire() for biz in self.bizs.values()]
        if self.behaviour.malformed_biz_list:
            listed.append({"bizName": "mystery", "bizState": "activated"})
        return listed

    def set_usage(self, cpu: float | None = None, heap_used_bytes: int | None = None,
                  metaspace_used_bytes: int | None = None) -> Usage:
        """From now on the machine's CPUs are ``cpu`` busy (a fraction), the heap holds ``heap_used_bytes`` and the
        Metaspace ``metaspace_used_bytes`` (None: each stays as it was)."""
        now = self._clock_s()
        self._busy_ms += (now - self._usage_since) * self.usage.cpu * self.behaviour.cpu_count * 1000
        self._usage_since = now
        u = self.usage
        self.usage = Usage(cpu=u.cpu if cpu is None else cpu,
                           heap_used_bytes=u.heap_used_bytes if heap_used_bytes is None else heap_used_bytes,
                           metaspace_used_bytes=u.metaspace_used_bytes if metaspace_used_bytes is None
                           else metaspace_used_bytes)
        return self.usage

    def metaspace_used(self) -> int:
        """The Metaspace this JVM uses now: the control API's figure, else the behaviour's."""
        used = self.usage.metaspace_used_bytes
        return self.behaviour.metaspace_used_bytes if used is None else used

    def _cpu(self) -> dict[str, Any]:
        """Arklet's ``cpu``: whole milliseconds of CPU ticks on every CPU since it started, with the busy share
        split 3:1 between user and system (arklet's CpuIndicator; see core.model.CpuTicks)."""
        b = self.behaviour
        now = self._clock_s()
        total = int((now - self._started) * b.cpu_count * 1000)
        busy = min(total, int(self._busy_ms + (now - self._usage_since) * self.usage.cpu * b.cpu_count * 1000))
        share = 100.0 * busy / total if total else 0.0
        return {"count": b.cpu_count, "type": "simulated", "total used (%)": float(total),
                "user used (%)": share * 0.75, "system used (%)": share * 0.25, "free (%)": 100.0 - share}

    def health(self) -> Envelope:
        self.health_calls += 1
        b = self.behaviour
        mib = 1024.0 * 1024.0
        heap = self.usage.heap_used_bytes
        used = self.metaspace_used()
        return {
            "code": "SUCCESS",
            "data": {
                "healthData": {
                    "jvm": {  # arklet's JvmIndicator: Metaspace in bytes, the rest in MiB as doubles
                        "java max metaspace": b.metaspace_max_bytes,
                        "java committed metaspace": max(b.metaspace_committed_bytes, used),
                        "java used metaspace": used,
                        "max heap memory(M)": b.heap_max_mb,
                        "committed heap memory(M)": max(heap, 512 * 1024 * 1024) / mib,
                        "used heap memory(M)": heap / mib,
                        "used non heap memory(M)": (used + NON_HEAP_BESIDES_METASPACE) / mib,
                        "run time(s)": round(self._clock_s() - self._started, 3),
                    },
                    "cpu": self._cpu(),
                    "masterBizInfo": {
                        "bizName": b.master_biz_name,
                        "bizState": self.state,
                        "bizVersion": b.master_biz_version,
                        "webContextPath": "/",
                    },
                }
            },
        }

    # --- biz commands ------------------------------------------------------------------------------------

    def _conflict(self, command: str, key: str) -> Envelope | None:
        running = self._running.get(key)
        if running is None:
            return None
        return {
            "code": "FAILED",
            "message": f"FAILED:{key} {command} conflict, exist unfinished command({running}) for this biz",
        }

    def _versions_of(self, name: str, *, other_than: str) -> list[SimBiz]:
        return [biz for biz in self.bizs.values() if biz.name == name and biz.version != other_than]

    def _should_fail(self, name: str, version: str) -> bool:
        if name in self.behaviour.fail_bizs or _key(name, version) in self.behaviour.fail_bizs:
            return True
        return self.behaviour.failure_rate > 0 and self._rng.random() < self.behaviour.failure_rate

    async def install(self, body: Mapping[str, Any], *, batch: bool = False) -> Envelope:
        name, version, url = body.get("bizName"), body.get("bizVersion"), body.get("bizUrl")
        for field_name, value in (("bizName", name), ("bizVersion", version), ("bizUrl", url)):
            if _blank(value):
                return _internal_error(f"{field_name} should not be blank")
        assert isinstance(name, str) and isinstance(version, str) and isinstance(url, str)
        key = requested = _key(name, version)
        conflict = self._conflict("installBiz", key)
        if conflict is not None:
            return conflict
        if not url.startswith(ALLOWED_URL_PREFIXES):
            scheme = url.partition(":")[0] if ":" in url else url
            return _internal_error(f"java.net.MalformedURLException: unknown protocol: {scheme[:40]}")
        manifest_name = _manifest_name(url) or name
        if manifest_name != name:
            # The biz identity comes from the jar's manifest, not from the request (arklet keys its lock by
            # the request): the base runs it under the manifest's name.
            key = _key(manifest_name, version)
        if key in self.bizs:
            return {
                "code": "FAILED",
                "data": {"code": "REPEAT_BIZ", "message": f"Biz: {key} has been installed or registered."},
                "message": "install biz not success!",
            }
        if (self.behaviour.multi_version_mode is MultiVersionMode.EXCLUSIVE
                and body.get("installStrategy") != "uninstallThenInstall"
                and self._versions_of(manifest_name, other_than=version)):
            return {
                "code": "FAILED",
                "data": {"code": "FAILED",
                         "message": f"Install Biz: {key} fail: web context path /{manifest_name} is already in use"},
                "message": "install biz not success!",
                "errorStackTrace": "java.lang.IllegalStateException: web context path in use\n\tat "
                                   + _BIZ_MODEL_FRAME,
            }
        name = manifest_name
        self._running[key] = "installBiz"
        started_ms = self._clock_ms()
        try:
            if self.behaviour.download_latency_s > 0:
                await asyncio.sleep(self.behaviour.download_latency_s)  # not registered yet: not in the list
            if body.get("installStrategy") == "uninstallThenInstall":
                for old in self._versions_of(name, other_than=version):
                    await self._stop_and_remove(old)
            biz = SimBiz(name, version, url, args=_args(body.get("args")), envs=_envs(body.get("envs")))
            biz.move("resolved", "Created", now_ms=started_ms)
            self.bizs[key] = biz
            if self.behaviour.install_latency_s > 0:
                await asyncio.sleep(self.behaviour.install_latency_s)
            now_ms = self._clock_ms()
            cost = now_ms - started_ms
            if self._should_fail(name, version):
                return self._fail_install(biz, cost, started_ms)
            self._activate(biz, now_ms)
            if self.behaviour.model_version_fence and not batch:  # InstallBizHandler stores it, batch does not
                self.model_versions[requested] = _model_version(body)
            return {
                "code": "SUCCESS",
                "data": {
                    "bizInfos": [biz.to_wire()],
                    "code": "SUCCESS",
                    "elapsedSpace": cost,
                    "message": f"Install Biz: {key} success, cost: {cost} ms, started at: {started_ms}",
                },
            }
        finally:
            self._running.pop(key, None)

    def _fail_install(self, biz: SimBiz, cost: int, started_ms: int) -> Envelope:
        """A biz whose start throws: recorded broken, then auto-uninstalled (sofa-ark's default)."""
        key = _key(biz.name, biz.version)
        cause = f"java.lang.RuntimeException: simulated start failure of {key}"
        now_ms = self._clock_ms()
        biz.move("broken", "Install Failed", cause, now_ms=now_ms)
        biz.move("stopped", "Stopped", now_ms=now_ms)
        self.bizs.pop(key, None)
        return {
            "code": "FAILED",
            "data": {
                "code": "FAILED",
                "elapsedSpace": cost,
                "message": f"Install Biz: {key} fail, cost: {cost} ms, started at: {started_ms}",
            },
            "message": "install biz not success!",
            "errorStackTrace": f"{cause}\n\tat {_BIZ_MODEL_FRAME}",
        }

    def _activate(self, biz: SimBiz, now_ms: int) -> None:
        others = [b for b in self._versions_of(biz.name, other_than=biz.version) if b.state == "activated"]
        mode = self.behaviour.multi_version_mode
        if mode is MultiVersionMode.KEEP_OLD and others:
            biz.move("deactivated", "Started", f"{biz.name} has another activated version", now_ms=now_ms)
            return
        if mode is MultiVersionMode.ACTIVATE_NEW:
            for old in others:
                old.move("deactivated", "Switched", f"switched to {biz.version}", now_ms=now_ms)
        biz.move("activated", "Started", now_ms=now_ms)

    async def _stop_and_remove(self, biz: SimBiz) -> None:
        biz.move("deactivated", "Killing", now_ms=self._clock_ms())
        if self.behaviour.uninstall_latency_s > 0:
            await asyncio.sleep(self.behaviour.uninstall_latency_s)
        biz.move("stopped", "Stopped", now_ms=self._clock_ms())
        self.bizs.pop(_key(biz.name, biz.version), None)

    async def uninstall(self, body: Mapping[str, Any]) -> Envelope:
        name, version = body.get("bizName"), body.get("bizVersion")
        for field_name, value in (("bizName", name), ("bizVersion", version)):
            if _blank(value):
                return _internal_error(f"{field_name} should not be blank")
        key = _key(str(name), str(version))
        conflict = self._conflict("uninstallBiz", key)
        if conflict is not None:
            return conflict
        owner = _model_version(body)
        if self.behaviour.model_version_fence and owner and self.model_versions.get(key, "") not in ("", owner):
            return {"code": "FAILED", "message": EXPIRED_MESSAGE}
        biz = self.bizs.get(key)
        if biz is None:
            return {
                "code": "FAILED",
                "data": {"code": "NOT_FOUND_BIZ", "message": f"Uninstall biz: {key} not found."},
                "message": "uninstall biz not success!",
            }
        if str(name) in self.behaviour.fail_uninstall_bizs:
            return {
                "code": "FAILED",
                "data": {"code": "FAILED", "message": f"Uninstall biz: {key} failed: biz is busy"},
                "message": "uninstall biz not success!",
            }
        self._running[key] = "uninstallBiz"
        try:
            await self._stop_and_remove(biz)
        finally:
            self._running.pop(key, None)
        if not owner or self.model_versions.get(key) == owner:
            self.model_versions.pop(key, None)
        return {"code": "SUCCESS", "data": {"code": "SUCCESS", "message": f"Uninstall biz: {key} success."}}

    def switch(self, body: Mapping[str, Any]) -> Envelope:
        name, version = body.get("bizName"), body.get("bizVersion")
        if _blank(name) or _blank(version):
            return _internal_error("bizName and bizVersion should not be blank")
        key = _key(str(name), str(version))
        conflict = self._conflict("switchBiz", key)
        if conflict is not None:
            return conflict
        biz = self.bizs.get(key)
        if biz is None:
            return {
                "code": "FAILED",
                "data": {"code": "NOT_FOUND_BIZ", "message": f"Switch biz: {key} not found."},
                "message": "switch biz not success!",
            }
        now_ms = self._clock_ms()
        for other in self._versions_of(biz.name, other_than=biz.version):
            if other.state == "activated":
                other.move("deactivated", "Switched", now_ms=now_ms)
        if biz.state != "activated":
            biz.move("activated", "Switched", now_ms=now_ms)
        return {"code": "SUCCESS", "data": {"code": "SUCCESS", "message": f"Switch biz: {key} is activated."}}

    async def batch_install(self, body: Mapping[str, Any]) -> Envelope:
        biz_list = body.get("bizList")
        if not isinstance(biz_list, list) or not biz_list or not all(isinstance(b, dict) for b in biz_list):
            return _internal_error("bizList should not be empty")
        self.batch_calls += 1
        for item in biz_list:
            self._count(item, install=True)
        started = self._clock_ms()
        answers = await asyncio.gather(*(self.install(item, batch=True) for item in biz_list))
        per_url: dict[str, Any] = {}
        for item, answer in zip(biz_list, answers, strict=True):
            data = answer.get("data") or {}
            per_url[str(item.get("bizUrl"))] = {
                "code": data.get("code", "FAILED"),
                "message": data.get("message", answer.get("message", "")),
                "bizInfos": data.get("bizInfos", []),
            }
        all_ok = all(entry["code"] == "SUCCESS" for entry in per_url.values())
        code = "SUCCESS" if all_ok else "FAILED"
        return {
            "code": code,
            "data": {
                "code": code,
                "message": "batch install biz " + ("success" if all_ok else "failed"),
                "bizUrlToResponse": per_url,
                "elapsedSpace": self._clock_ms() - started,
            },
            **({} if all_ok else {"message": "batch install biz not success!"}),
        }

    async def install_direct(self, name: str, version: str, url: str) -> Envelope:
        """Install without counting it as a vkprovider call (an orphan biz, e.g. installed by hand)."""
        return await self.install({"bizName": name, "bizVersion": version, "bizUrl": url})
