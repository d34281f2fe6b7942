"""Biz commands, the pod → base direction: install, batch install, reinstall and uninstall, their answers into the
ledger, with Events, logs, the biz log and metrics.

A pass over a base (``basepass``) decides the commands (``core.plan``); this runner starts each one in the
ledger (so it is in flight before it is sent) and sends it in a background task, bounded per base by the tunnel.
Every command goes through the vnode's write port, which sends it only while this replica holds the vnode
(``controllers.fence``); a command that ends without an answer - not sent because the vnode was fenced or lost,
cancelled when the vnode went to another replica - is abandoned in the ledger, which then reads the base again
before anything is decided (it may have run). Every answer re-queues the base.

Install strategy (``core.plan``'s ``Replace``): ``FIRST`` sends ``uninstallThenInstall`` when another version
of the name is on the base; ``ON_FAILURE`` sends ``installOnly`` and, if that fails next to another version,
``uninstallThenInstall`` once more. The planner allows either only over versions that older pods of the same
workload want.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any

from prometheus_client import Counter, Histogram

from vkprovider.controllers.bases import BaseRegistry, BaseView
from vkprovider.controllers.bizlog import BizLog
from vkprovider.controllers.fence import Fenced, Lost, VnodeScope, VnodeWrites, node_ref
from vkprovider.controllers.queue import Drop
from vkprovider.core.basestate import CommandKind, Inflight
from vkprovider.core.containerconfig import ConfigError
from vkprovider.core.model import BizKey, BizSpec, CommandOutcome, CommandResult
from vkprovider.core.plan import Replace
from vkprovider.core.sanitize import MAX_LOG_TEXT, clean
from vkprovider.tunnels.base import TunnelError

log = logging.getLogger(__name__)

BIZ_COMMANDS = Counter("vkprovider_biz_commands_total", "Biz commands sent to bases.", ["command", "outcome"])
BIZ_COMMAND_SECONDS = Histogram(
    "vkprovider_biz_command_duration_seconds",
    "Time from sending a biz command to its answer, by command.",
    ["command"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
for _cmd in ("install", "uninstall", "reinstall"):
    BIZ_COMMAND_SECONDS.labels(_cmd)
    for _outcome in ("SUCCESS", "FAILED", "REPEAT_BIZ", "NOT_FOUND_BIZ", "CONFLICT", "EXPIRED", "ERROR"):
        BIZ_COMMANDS.labels(_cmd, _outcome)

#: The pods of a vnode that want a biz (not terminating), as Event subjects.
PodsWanting = Callable[[str, BizKey], list[dict[str, Any]]]
#: The spec to send for a biz of a vnode, with its container's args and envs (``containerconfig.resolve``), and
#: what redacts Secret values from the base's answers; or why the container cannot be configured now.
Configure = Callable[[str, BizSpec], Awaitable["tuple[BizSpec, Callable[[str], str]] | ConfigError"]]
#: The pods of a vnode that are terminating and wanted a biz.
PodsReleasing = Callable[[str, BizKey], list[dict[str, Any]]]


def now_ms() -> int:
    return int(time.time() * 1000)


def _unsent(exc: BaseException) -> bool:
    """The command was never sent: the vnode was not held, or no tunnel reaches the base."""
    return isinstance(exc, (Fenced, Lost, Drop))


class CommandRunner:
    """See the module docstring. ``requeue(node)`` queues a pass over the base after an answer."""

    def __init__(self, registry: BaseRegistry, writes: VnodeWrites, bizlog: BizLog, *,
                 clock: Callable[[], float], requeue: Callable[[str], None], wanting: PodsWanting,
                 releasing: PodsReleasing, configure: Configure | None = None) -> None:
        """``wanting(node, key)``: the live pods of the vnode wanting a biz, oldest first (the newest one's uid is
        the bizModelVersion an install sends); ``releasing(node, key)``: its terminating pods that wanted it."""
        self._registry = registry
        self._writes = writes
        self._bizlog = bizlog
        self._clock = clock
        self._requeue = requeue
        self._wanting = wanting
        self._releasing = releasing
        self._configure = configure
        self._tasks: dict[str, set[asyncio.Task[None]]] = {}  # node -> its command tasks
        self.install_started: dict[tuple[str, BizKey], float] = {}

    def running(self, node: str) -> int:
        return len(self._tasks.get(node, ()))

    def cancel(self, node: str) -> None:
        """The vnode went to another replica: stop every command under way for it."""
        for task in self._tasks.pop(node, set()):
            task.cancel()

    def cancel_all(self) -> None:
        for node in list(self._tasks):
            self.cancel(node)

    async def wait_idle(self, node: str) -> None:
        """Wait until no command task of ``node`` is running (tests, shutdown)."""
        while self._tasks.get(node):
            with contextlib.suppress(Exception):
                await asyncio.gather(*self._tasks.get(node, set()), return_exceptions=True)

    def _spawn(self, node: str, coro: Coroutine[Any, Any, None], name: str,
               started: Mapping[BizKey, Inflight]) -> None:
        """Run a command task; a command of ``started`` it did not finish is abandoned in the ledger when it ends."""
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        tasks = self._tasks.setdefault(node, set())
        tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            tasks.discard(t)
            if not tasks and self._tasks.get(node) is tasks:
                del self._tasks[node]
            if not t.cancelled() and t.exception() is not None and not _unsent(t.exception()):  # type: ignore[arg-type]
                log.error("%s crashed: %r", name, t.exception(), extra={"node": node})
            view = self._registry.get(node)
            if view is None:
                return
            abandoned = [key for key, inflight in started.items() if view.ledger.abandon(key, inflight)]
            if abandoned:
                log.info("%s on %s ended without an answer for %s; deciding again", name, node,
                         ", ".join(map(str, abandoned)))
                self._requeue(node)

        task.add_done_callback(done)

    def _names(self, node: str, key: BizKey) -> tuple[list[dict[str, Any]], str]:
        pods = self._wanting(node, key)
        return pods, ",".join(_key(p) for p in pods) or "-"

    # --- install -----------------------------------------------------------------------------------------
    def start_installs(self, view: BaseView, specs: Sequence[BizSpec], replace: Mapping[BizKey, Replace]) -> None:
        now = self._clock()
        started = {spec.key: view.ledger.start(spec.key, CommandKind.INSTALL, spec, now) for spec in specs}
        for spec in specs:
            self.install_started[(view.node, spec.key)] = now
            self._bizlog.add(view.node, spec.name, spec.version, f"installing from {spec.url}")
        # A batch answers per jar URL: bizs that share a URL (only a simulator allows that) go one by one, and so do
        # bizs with another version on the base (an install that may have to make room, see ``core.plan``).
        urls = [spec.url for spec in specs]
        present = {k.name for k in view.ledger.bizs or {}}
        batch = [spec for spec in specs if urls.count(spec.url) == 1 and spec.name not in present]
        single = [spec for spec in specs if spec not in batch]
        if len(batch) > 1:
            self._spawn(view.node, self._batch_install(view.node, batch), f"batch-install-{view.node}",
                        {spec.key: started[spec.key] for spec in batch})
        else:
            single += batch
        for spec in single:
            self._spawn(view.node, self._install(view.node, spec, replace=replace.get(spec.key)),
                        f"install-{view.node}-{spec.key}", {spec.key: started[spec.key]})

    async def _install(self, node: str, spec: BizSpec, *, kind: str = "install",
                       replace: Replace | None = None) -> None:
        view = self._registry.get(node)
        if view is None:
            return
        scope = self._writes.scope(node)
        configured = await self._configured(scope, spec)
        if configured is None:
            return
        spec, redact = configured
        started = time.perf_counter()
        replaced: list[BizKey] = []
        try:
            others = [k for k in (view.ledger.bizs or {}) if k.name == spec.name and k != spec.key]
            first = replace is Replace.FIRST and bool(others)
            owner = self._owner(node, spec.key)
            result = await scope.install_biz(view.heartbeat, spec, replace=first, owner=owner)
            if first and result.ok:
                replaced = others
            elif result.outcome is CommandOutcome.FAILED and others and replace is Replace.ON_FAILURE:
                # Some bases cannot run two versions side by side (a web biz's context path is taken): replace the
                # older version of the same workload (its pod then fails BizDeactivate); if this install fails
                # too, the planner installs the old version back (``core.plan``).
                BIZ_COMMANDS.labels(kind, result.outcome.value).inc()
                self._bizlog.add(node, spec.name, spec.version,
                                 f"install failed next to {', '.join(map(str, others))} ({result.message}); "
                                 "retrying with installStrategy uninstallThenInstall")
                result = await scope.install_biz(view.heartbeat, spec, replace=True, owner=owner)
                if result.ok:
                    replaced = others
        except TunnelError as exc:
            result = CommandResult(CommandOutcome.FAILED, f"base unreachable: {exc}")
            BIZ_COMMANDS.labels(kind, "ERROR").inc()
        else:
            BIZ_COMMANDS.labels(kind, result.outcome.value).inc()
        BIZ_COMMAND_SECONDS.labels(kind).observe(time.perf_counter() - started)
        result = CommandResult(result.outcome, redact(result.message), result.bizs)
        self._install_done(scope, spec, result, time.perf_counter() - started, replaced, owner)

    async def _configured(self, scope: VnodeScope, spec: BizSpec) -> tuple[BizSpec, Callable[[str], str]] | None:
        """The spec with its container's configuration; None when it cannot be made (recorded, reported, and
        retried when what it waits for appears, or after a backoff step)."""
        if self._configure is None:
            return spec, _same
        made = await self._configure(scope.node, spec)
        if not isinstance(made, ConfigError):
            return made
        view = self._registry.get(scope.node)
        self.install_started.pop((scope.node, spec.key), None)
        if view is not None:
            view.ledger.finish_install(spec, ok=False, message=made.message, now=self._clock(), at_ms=now_ms(),
                                       config=True)
        for pod in self._wanting(scope.node, spec.key):
            scope.warning(pod, "Failed", f"Error: {made.message}")
        self._requeue(scope.node)
        return None

    def _owner(self, node: str, key: BizKey) -> str:
        """The bizModelVersion an install of ``key`` sends: the uid of the newest pod wanting it (arklet >= 1.4.3
        refuses a later uninstall carrying another pod's uid, so a stale uninstall never removes what a newer pod
        installed)."""
        pods = self._wanting(node, key)
        return str((pods[-1].get("metadata") or {}).get("uid") or "") if pods else ""

    async def _batch_install(self, node: str, specs: list[BizSpec]) -> None:
        view = self._registry.get(node)
        if view is None:
            return
        scope = self._writes.scope(node)
        configured = [made for made in [await self._configured(scope, spec) for spec in specs] if made is not None]
        specs = [spec for spec, _ in configured]
        redactors = {spec.key: redact for spec, redact in configured}
        if not specs:
            return
        started = time.perf_counter()
        owners = {spec.key: self._owner(node, spec.key) for spec in specs}
        try:
            results = await scope.batch_install_biz(view.heartbeat, specs, owners=owners)
        except TunnelError as exc:
            results = {s.url: CommandResult(CommandOutcome.FAILED, f"base unreachable: {exc}") for s in specs}
        took = time.perf_counter() - started
        for spec in specs:
            missing = CommandResult(CommandOutcome.FAILED, "no answer for this biz in the batch")
            result = results.get(spec.url) or missing
            result = CommandResult(result.outcome, redactors[spec.key](result.message), result.bizs)
            BIZ_COMMANDS.labels("install", result.outcome.value).inc()
            BIZ_COMMAND_SECONDS.labels("install").observe(took)
            self._install_done(scope, spec, result, took, [], owners.get(spec.key, ""))

    def _install_done(self, scope: VnodeScope, spec: BizSpec, result: CommandResult, took_s: float,
                      replaced: Sequence[BizKey], owner: str = "") -> None:
        node = scope.node
        view = self._registry.get(node)
        self.install_started.pop((node, spec.key), None)
        if view is None:
            return
        if result.outcome is not CommandOutcome.FAILED or result.bizs:
            self._registry.answered(node)
        ok = result.ok or result.outcome is CommandOutcome.REPEAT
        busy = result.outcome is CommandOutcome.CONFLICT  # the base runs another command on it (its baseline)
        mismatch = next((b for b in result.bizs if b.name != spec.name), None) if ok else None
        pods, names = self._names(node, spec.key)
        context = {"node": node, "biz": str(spec.key), "pod": names}
        message = clean(result.message or result.outcome.value)
        if mismatch is not None:
            ok = False
            message = (f"the jar's biz is named {mismatch.name!r}, not {spec.name!r}: name the container "
                       f"{mismatch.name!r} (the container name must be the biz name)")
            for pod in pods:
                scope.warning(pod, "BizNameMismatch", f"container {spec.name}: {message}")
        view.ledger.finish_install(spec, ok=ok, reported=result.bizs, message=message, now=self._clock(),
                                   at_ms=now_ms(), replaced=replaced, busy=busy, owner=owner)
        if ok:
            extra = f", replacing {', '.join(map(str, replaced))}" if replaced else ""
            log.info("installed %s on %s for %s in %.2fs%s", spec.key, node, names, took_s, extra, extra=context)
            self._bizlog.add(node, spec.name, spec.version, f"installed in {took_s:.2f}s: {message}{extra}")
            reported = next((b for b in result.bizs if b.key == spec.key), None)
            if reported is not None:
                self._bizlog.add(node, spec.name, spec.version, f"state {reported.state.value}")
            for pod in pods:
                scope.normal(pod, "BizInstalled", f"biz {spec.key} installed on {node} in {took_s:.1f}s")
            if any(k.name == spec.name and k != spec.key for k in (view.ledger.bizs or {})):
                view.ledger.request_read()  # another version's state may have changed (BizDeactivate)
        elif busy:
            log.info("install of %s on %s: the base is running another command on it (%s); reading it again",
                     spec.key, node, clean(message, MAX_LOG_TEXT), extra=context)
        else:
            failure = view.ledger.failures.get(spec.key)
            delay = (failure.retry_at - self._clock()) if failure is not None else 0.0
            log.warning("install of %s on %s for %s failed after %.2fs (%s), retry in %.0fs", spec.key, node, names,
                        took_s, clean(message, MAX_LOG_TEXT), delay, extra=context)
            self._bizlog.add(node, spec.name, spec.version, f"install failed after {took_s:.2f}s: {message}")
            for pod in pods:
                scope.warning(pod, "BizInstallFailed", f"biz {spec.key}: {message}")
        self._requeue(node)

    # --- restart (a failed liveness or startup probe) ---
    def start_restart(self, view: BaseView, spec: BizSpec, why: str) -> None:
        """Reinstall ``spec`` because its container's probe asked for it (the kubelet restarts the container)."""
        view.ledger.restart_started(spec.key, why, self._clock(), now_ms())
        started = view.ledger.start(spec.key, CommandKind.REINSTALL, spec, self._clock())
        self._bizlog.add(view.node, spec.name, spec.version, f"restarting: {why}")
        log.info("restarting %s on %s: %s", spec.key, view.node, why, extra={"node": view.node,
                                                                              "biz": str(spec.key)})
        self._spawn(view.node, self._reinstall(view.node, spec, None), f"restart-{view.node}-{spec.key}",
                    {spec.key: started})

    # --- reinstall ---------------------------------------------------------------------------------------
    def start_reinstall(self, view: BaseView, spec: BizSpec, replace: Replace | None) -> None:
        started = view.ledger.start(spec.key, CommandKind.REINSTALL, spec, self._clock())
        self._bizlog.add(view.node, spec.name, spec.version,
                         f"reinstalling from {spec.url} (was {view.ledger.installed_urls.get(spec.key)})")
        self._spawn(view.node, self._reinstall(view.node, spec, replace), f"reinstall-{view.node}-{spec.key}",
                    {spec.key: started})

    async def _reinstall(self, node: str, spec: BizSpec, replace: Replace | None) -> None:
        """Same name:version from another jar URL: uninstall, then install (arklet keys bizs by name:version)."""
        view = self._registry.get(node)
        if view is None:
            return
        scope = self._writes.scope(node)
        try:
            result = await scope.uninstall_biz(view.heartbeat, spec.name, spec.version,
                                               owner=view.ledger.owner(spec.key))
        except TunnelError as exc:
            result = CommandResult(CommandOutcome.FAILED, f"base unreachable: {exc}")
        if not (result.ok or result.outcome is CommandOutcome.NOT_FOUND):
            BIZ_COMMANDS.labels("reinstall", result.outcome.value).inc()
            failed = CommandResult(CommandOutcome.FAILED, f"uninstalling the old jar failed: {result.message}")
            self._install_done(scope, spec, failed, 0.0, [])
            return
        await self._install(node, spec, kind="reinstall", replace=replace)

    def _uninstall_owner(self, view: BaseView, key: BizKey) -> str:
        """The bizModelVersion an uninstall sends: what this process installed it with, else the uid of the one
        deleted pod releasing it; empty for a biz no pod owns (an orphan: always allowed)."""
        owner = view.ledger.owner(key)
        if owner:
            return owner
        releasing = self._releasing(view.node, key)
        return str((releasing[0].get("metadata") or {}).get("uid") or "") if len(releasing) == 1 else ""

    # --- uninstall ---------------------------------------------------------------------------------------
    def start_uninstall(self, view: BaseView, key: BizKey) -> None:
        started = view.ledger.start(key, CommandKind.UNINSTALL, None, self._clock())
        self._bizlog.add(view.node, key.name, key.version, "uninstalling")
        self._spawn(view.node, self._uninstall(view.node, key), f"uninstall-{view.node}-{key}", {key: started})

    async def _uninstall(self, node: str, key: BizKey) -> None:
        view = self._registry.get(node)
        if view is None:
            return
        scope = self._writes.scope(node)
        started = time.perf_counter()
        try:
            result = await scope.uninstall_biz(view.heartbeat, key.name, key.version,
                                               owner=self._uninstall_owner(view, key))
            BIZ_COMMANDS.labels("uninstall", result.outcome.value).inc()
        except TunnelError as exc:
            result = CommandResult(CommandOutcome.FAILED, f"base unreachable: {exc}")
            BIZ_COMMANDS.labels("uninstall", "ERROR").inc()
        took = time.perf_counter() - started
        BIZ_COMMAND_SECONDS.labels("uninstall").observe(took)
        view = self._registry.get(node)
        if view is None:
            return
        ok = result.ok or result.outcome is CommandOutcome.NOT_FOUND
        expired = result.outcome is CommandOutcome.EXPIRED
        if result.outcome is not CommandOutcome.FAILED:
            self._registry.answered(node)
        view.ledger.finish_uninstall(key, ok=ok, message=clean(result.message), now=self._clock(), at_ms=now_ms(),
                                     expired=expired)
        context = {"node": node, "biz": str(key)}
        if ok:
            log.info("uninstalled %s from %s in %.2fs", key, node, took, extra=context)
            self._bizlog.add(node, key.name, key.version, f"uninstalled in {took:.2f}s")
            releasing = self._releasing(node, key)
            for pod in releasing:
                scope.normal(pod, "BizUninstalled", f"biz {key} uninstalled from {node}")
            if not releasing:
                scope.normal(node_ref(node), "OrphanBizUninstalled",
                             f"biz {key}, which no pod wanted, was uninstalled")
        elif expired:
            log.info("uninstall of %s from %s refused: another pod's install owns it now (%s); reading the base "
                     "again", key, node, clean(result.message, MAX_LOG_TEXT), extra=context)
            self._bizlog.add(node, key.name, key.version, "uninstall refused as expired: read the base again")
        else:
            failure = view.ledger.failures.get(key)
            delay = (failure.retry_at - self._clock()) if failure is not None else 0.0
            log.warning("uninstall of %s from %s failed after %.2fs: %s; retry in %.0fs", key, node, took,
                        clean(result.message, MAX_LOG_TEXT), delay, extra=context)
            self._bizlog.add(node, key.name, key.version, f"uninstall failed: {clean(result.message)}")
            scope.warning(node_ref(node), "BizUninstallFailed",
                          f"uninstall of {key} failed: {clean(result.message)}; retrying in {delay:.0f}s")
        self._requeue(node)


def _same(text: str) -> str:
    return text


def _key(pod: Mapping[str, Any]) -> str:
    md = pod.get("metadata") or {}
    return f"{md.get('namespace', '')}/{md.get('name', '')}"
