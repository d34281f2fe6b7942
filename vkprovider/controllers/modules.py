"""The module controller: pods bound to a vnode become bizs on its base, and biz states become pod status.

One reconcile handles one base (key = node name) and considers every pod bound to it at once, so the plan is
level-based and fenced (see ``core.plan``). Commands run as background tasks, bounded per base by the tunnel;
their results update the base view and re-queue the base. Pod status is computed by ``core.podstatus`` and
written only when it changes.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter

from vkprovider.config import Settings
from vkprovider.controllers.bases import BaseRegistry, BaseView, Clock
from vkprovider.controllers.queue import WorkQueue
from vkprovider.core.model import BizInfo, BizKey, BizSpec, BizState, BizStateRecord, CommandOutcome, CommandResult
from vkprovider.core.module import (
    is_module_pod,
    is_terminal,
    is_terminating,
    pod_key,
    pod_modules,
    workload_of,
)
from vkprovider.core.node import is_vnode_name
from vkprovider.core.plan import PodWant, plan_base
from vkprovider.core.podstatus import (
    OpFacts,
    OpState,
    not_a_module_status,
    pod_status,
    status_changed,
    status_patch,
)
from vkprovider.kube.client import ApiError, Kube
from vkprovider.kube.events import EventRecorder
from vkprovider.kube.informer import Informer
from vkprovider.tunnels.base import Tunnel, TunnelError

log = logging.getLogger(__name__)

BIZ_COMMANDS = Counter("vkprovider_biz_commands_total", "Biz commands sent to bases.", ["command", "outcome"])
POD_STATUS_WRITES = Counter("vkprovider_pod_status_writes_total", "Pod status writes.", ["phase"])
for _cmd in ("install", "uninstall"):
    for _outcome in ("SUCCESS", "FAILED", "REPEAT_BIZ", "NOT_FOUND_BIZ", "CONFLICT", "ERROR"):
        BIZ_COMMANDS.labels(_cmd, _outcome)
for _phase in ("Pending", "Running", "Failed"):
    POD_STATUS_WRITES.labels(_phase)


#: How long a new pod's first "ContainerCreating" status waits for its install (a fast one writes Running once).
PENDING_WRITE_DEFER_S = 1.0


#: How long a sent status is trusted to show up in the watch before an unchanged cache makes it be sent again.
STATUS_ECHO_WAIT_S = 10.0


@dataclass
class _SentStatus:
    desired: dict[str, Any]
    at: float
    written_rv: str | None = None


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ModuleController:
    def __init__(
        self,
        settings: Settings,
        kube: Kube,
        registry: BaseRegistry,
        pods: Informer,
        tunnels: Mapping[str, Tunnel],
        events: EventRecorder,
        *,
        owns: Callable[[str], bool],
        reachable: Callable[[BaseView], bool],
        clock: Clock,
    ) -> None:
        self.settings = settings
        self.kube = kube
        self.registry = registry
        self.pods = pods
        self._install_started: dict[tuple[str, BizKey], float] = {}
        self.tunnels = tunnels
        self.events = events
        self.owns = owns
        self.reachable = reachable
        self.clock = clock
        self.queue = WorkQueue("module", self.reconcile, workers=max(settings.workers, 4))
        self.pods_by_node: dict[str, set[str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._schemes = settings.url_schemes
        self._hosts = settings.url_hosts
        self._warned: dict[str, str] = {}
        # Status writes run off the reconcile path (a worker never waits for the apiserver), at most one per pod
        # at a time; the newest wanted status replaces one still waiting. `_status_sent` remembers the last status
        # sent until the watch shows the write (the resourceVersion the PATCH answered), so reconciles in between
        # do not send it again.
        self._status_next: dict[str, tuple[str, dict[str, Any], dict[str, Any], Any]] = {}
        self._status_busy: set[str] = set()
        self._status_sent: dict[str, _SentStatus] = {}

    async def start(self) -> None:
        await self.queue.start()
        for view in self.registry:
            self.queue.add(view.node)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.queue.stop()

    # --- informer hooks ---------------------------------------------------------------------------
    def on_pod_change(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        old_node = ((old or {}).get("spec") or {}).get("nodeName")
        new_node = ((new or {}).get("spec") or {}).get("nodeName")
        if old_node and old_node != new_node:
            members = self.pods_by_node.get(old_node)
            if members is not None:
                members.discard(key)
                if not members:
                    del self.pods_by_node[old_node]
            self.queue.add(old_node)
        if new_node and is_vnode_name(new_node, self.settings.env):
            self.pods_by_node.setdefault(new_node, set()).add(key)
            self.queue.add(new_node)
        sent = self._status_sent.get(key)
        if sent is not None and (new is None or sent.written_rv == (new.get("metadata") or {}).get("resourceVersion")):
            del self._status_sent[key]  # the cache now shows what was written (or the pod is gone)
        if new is None:
            self._warned.pop(((old or {}).get("metadata") or {}).get("uid", ""), None)

    def pods_on(self, node: str) -> list[dict[str, Any]]:
        found = []
        for key in self.pods_by_node.get(node, ()):
            pod = self.pods.get(key)
            if pod is not None:
                found.append(pod)
        return found

    def baseline(self, node: str) -> list[BizSpec]:
        """The bizs the pods bound to ``node`` want (answer to queryBaseline)."""
        specs: dict[BizKey, BizSpec] = {}
        for pod in self.pods_on(node):
            if is_module_pod(pod) and not is_terminating(pod) and not is_terminal(pod):
                for spec in pod_modules(pod, self._schemes, self._hosts).bizs:
                    specs.setdefault(spec.key, spec)
        return list(specs.values())

    # --- reconcile ---------------------------------------------------------------------------------
    async def reconcile(self, node: str) -> float | None:
        view = self.registry.get(node)
        if view is None or not self.owns(node) or not self.reachable(view):
            return None  # the node controller re-queues us when the base is (back) in our hands
        tunnel = self.tunnels.get(view.heartbeat.tunnel)
        if tunnel is None:
            return None
        now = self.clock()
        if view.bizs is None or view.bizs_stale or now - view.bizs_at >= self.settings.base_bizs_interval_s:
            if view.inflight and view.bizs is not None and not view.bizs_stale:
                pass  # a refresh while commands run would race them; the command results refresh the view
            else:
                bizs = await tunnel.query_all_biz(view.heartbeat)
                self.registry.bizs(node, bizs)
        present = view.bizs or {}
        view.superseded = {old: new for old, new in view.superseded.items() if new in present and old not in present}
        pods = self.pods_on(node)
        wants: list[PodWant] = []
        modules_of: dict[str, Any] = {}
        for pod in pods:
            key = pod_key(pod)
            if not is_module_pod(pod):
                await self._reject_non_module(pod)
                continue
            modules = pod_modules(pod, self._schemes, self._hosts)
            modules_of[key] = modules
            # A version another one replaced on this base is not wanted here any more: its pod fails BizDeactivate.
            still_wanted = tuple(spec for spec in modules.bizs if spec.key not in view.superseded)
            wants.append(PodWant(key, still_wanted, terminating=is_terminating(pod), terminal=is_terminal(pod)))
        plan = plan_base(
            wants,
            view.bizs,
            inflight=view.inflight,
            retry_after=view.retry_after,
            orphan_since=view.orphan_since,
            now=now,
            orphan_grace_s=self.settings.module_orphan_grace_s,
            known=view.known,
        )
        view.orphan_since = dict(plan.orphans)
        view.known = (view.known & set(view.bizs or ())) | set(plan.wanted)
        if plan.install:
            self._start_installs(view, tunnel, plan.install, pods)
        for biz_key in plan.uninstall:
            self._start_uninstall(view, tunnel, biz_key)
        if plan.finalize:
            await asyncio.gather(*(self._finalize(pod_name) for pod_name in plan.finalize))
        recheck = self._write_statuses(view, pods, modules_of)
        waits = [self.settings.base_bizs_interval_s * (0.9 + 0.2 * random.random())]
        if recheck is not None:
            waits.append(recheck + 0.05)
        if plan.wait_s is not None:
            waits.append(plan.wait_s + 0.05)
        return min(waits)

    async def _reject_non_module(self, pod: dict[str, Any]) -> None:
        if is_terminal(pod):
            return
        if is_terminating(pod):
            await self._finalize(pod_key(pod))
            return
        md = pod["metadata"]
        status = not_a_module_status(pod, now_iso())
        await self.kube.patch(f"/api/v1/namespaces/{md['namespace']}/pods/{md['name']}/status",
                              {"status": status}, kind="strategic")
        POD_STATUS_WRITES.labels("Failed").inc()
        self.events.warning(pod, "NotAModule", status["message"])

    async def _finalize(self, key: str) -> None:
        namespace, name = key.split("/", 1)
        pod = self.pods.get(key)
        uid = ((pod or {}).get("metadata") or {}).get("uid")
        body: dict[str, Any] = {"gracePeriodSeconds": 0}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            await self.kube.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}", body=body)
        except ApiError as exc:
            if not (exc.is_not_found or exc.is_conflict):
                raise

    def _write_statuses(
        self, view: BaseView, pods: Sequence[dict[str, Any]], modules_of: Mapping[str, Any]
    ) -> float | None:
        """Send the status of every pod on the base whose status changed (written in the background).

        A pod seen for the first time while its installs are under way gets no "ContainerCreating" status for
        the first ``PENDING_WRITE_DEFER_S``: a fast install goes straight to Running with one write instead of
        two. Returns when to look again for such deferred pods (None when there are none).
        """
        bizs: dict[BizKey, BizInfo] = dict(view.bizs or {})
        for old, new in view.superseded.items():
            record = BizStateRecord(int(time.time() * 1000), BizState.DEACTIVATED, "Switched",
                                    f"replaced by {new} (installStrategy uninstallThenInstall)")
            bizs.setdefault(old, BizInfo(old.name, old.version, BizState.DEACTIVATED, (record,)))
        stamp = now_iso()
        now = self.clock()
        recheck: float | None = None
        active = {b.name: b.key for b in bizs.values() if b.state is BizState.ACTIVATED}
        workloads_wanting: dict[BizKey, set[str]] = {}
        for pod in pods:
            modules = modules_of.get(pod_key(pod))
            workload = workload_of(pod)
            if modules is None or workload is None or is_terminating(pod) or is_terminal(pod):
                continue
            for spec in modules.bizs:
                workloads_wanting.setdefault(spec.key, set()).add(workload)
        for pod in pods:
            key = pod_key(pod)
            modules = modules_of.get(key)
            if modules is None or is_terminating(pod) or is_terminal(pod):
                continue
            ops = {spec.key: view.ops[spec.key] for spec in modules.bizs if spec.key in view.ops}
            workload = workload_of(pod)
            replaced = frozenset(
                spec.name
                for spec in modules.bizs
                if workload is not None
                and spec.name in active
                and active[spec.name] != spec.key
                and workload in workloads_wanting.get(active[spec.name], ())
            )
            desired = pod_status(pod, modules, bizs, ops, base_ip=view.heartbeat.ip, now_iso=stamp,
                                 replaced_in_rollout=replaced)
            if not status_changed(desired, pod.get("status")):
                self._status_sent.pop(key, None)
                continue
            sent = self._status_sent.get(key)
            if sent is not None and now - sent.at < STATUS_ECHO_WAIT_S and not status_changed(desired, sent.desired):
                continue  # already sent; the watch has not shown it yet
            if desired["phase"] == "Pending" and not (pod.get("status") or {}).get("conditions"):
                started = [self._install_started.get((view.node, spec.key)) for spec in modules.bizs]
                if started and all(t is not None and now - t < PENDING_WRITE_DEFER_S for t in started):
                    due = max(t for t in started if t is not None) + PENDING_WRITE_DEFER_S - now
                    recheck = due if recheck is None else min(recheck, due)
                    continue
            self._status_sent[key] = _SentStatus(desired, now)
            self._send_status(view.node, key, pod, desired, modules)
        return recheck

    def _send_status(self, node: str, key: str, pod: dict[str, Any], desired: dict[str, Any], modules: Any) -> None:
        self._status_next[key] = (node, pod, desired, modules)
        if key not in self._status_busy:
            self._status_busy.add(key)
            self._spawn(self._status_writer(key), f"status-{key}")

    async def _status_writer(self, key: str) -> None:
        """Write the pod's wanted status until none is waiting; a failure hands the pod back to its node."""
        try:
            while (item := self._status_next.pop(key, None)) is not None:
                node, pod, desired, modules = item
                try:
                    written_rv = await self._write_status(pod, desired, modules)
                    sent = self._status_sent.get(key)
                    if sent is not None and sent.desired is desired:
                        if written_rv is None:
                            del self._status_sent[key]
                        else:
                            sent.written_rv = written_rv
                except Exception as exc:
                    self._status_sent.pop(key, None)
                    if not isinstance(exc, ApiError):
                        log.exception("status write of %s crashed", key)
                    else:
                        log.warning("status write of %s failed: %s; retrying", key, exc, extra={"node": node})
                    self.queue.add_after(node, 1.0)
        finally:
            self._status_busy.discard(key)

    async def _write_status(self, pod: dict[str, Any], desired: dict[str, Any], modules: Any) -> str | None:
        """PATCH the pod's status; returns the resourceVersion written (None when the pod is gone)."""
        md = pod["metadata"]
        try:
            answer = await self.kube.patch(f"/api/v1/namespaces/{md['namespace']}/pods/{md['name']}/status",
                                           {"status": status_patch(desired)}, kind="strategic")
        except ApiError as exc:
            if exc.is_not_found:
                return None
            raise
        POD_STATUS_WRITES.labels(desired["phase"]).inc()
        for problem in modules.problems:
            self._warn_once(pod, problem.reason, f"container {problem.container}: {problem.message}")
        if desired["phase"] == "Failed":
            self._warn_once(pod, desired.get("reason") or "Failed", desired.get("message") or "")
        written = ((answer or {}).get("metadata") or {}).get("resourceVersion") if isinstance(answer, dict) else None
        return str(written) if written else None

    def _warn_once(self, pod: dict[str, Any], reason: str, message: str) -> None:
        uid = pod["metadata"].get("uid", "")
        mark = f"{reason}:{message}"
        if self._warned.get(uid) == mark:
            return
        self._warned[uid] = mark
        self.events.warning(pod, reason, message)

    # --- commands ---------------------------------------------------------------------------------
    def _spawn(self, coro: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _pods_wanting(self, node: str, key: BizKey) -> list[dict[str, Any]]:
        wanting = []
        for pod in self.pods_on(node):
            if not is_module_pod(pod) or is_terminating(pod):
                continue
            if any(s.key == key for s in pod_modules(pod, self._schemes, self._hosts).bizs):
                wanting.append(pod)
        return wanting

    def _start_installs(self, view: BaseView, tunnel: Tunnel, specs: Sequence[BizSpec], pods: Sequence[Any]) -> None:
        now = self.clock()
        for spec in specs:
            view.inflight.add(spec.key)
            view.ops[spec.key] = OpFacts(OpState.INSTALLING, f"installing {spec.key}")
            self._install_started[(view.node, spec.key)] = now
        if len(specs) > 1:
            self._spawn(self._batch_install(view.node, tunnel, list(specs)), f"batch-install-{view.node}")
        else:
            self._spawn(self._install(view.node, tunnel, specs[0]), f"install-{view.node}-{specs[0].key}")

    async def _install(self, node: str, tunnel: Tunnel, spec: BizSpec) -> None:
        view = self.registry.get(node)
        if view is None:
            return
        try:
            result = await tunnel.install_biz(view.heartbeat, spec)
            others = [k for k in (view.bizs or {}) if k.name == spec.name and k != spec.key]
            if result.outcome is CommandOutcome.FAILED and others:
                # Some bases cannot run two versions side by side (a web biz's context path is taken): replace the
                # old version, as the seeds' batch-update contract expects (its pod then fails BizDeactivate).
                BIZ_COMMANDS.labels("install", result.outcome.value).inc()
                log.info("install of %s on %s failed next to %s (%s); retrying with uninstallThenInstall",
                         spec.key, node, ", ".join(map(str, others)), result.message,
                         extra={"node": node, "biz": str(spec.key)})
                result = await tunnel.install_biz(view.heartbeat, spec, replace_other_versions=True)
                if result.ok:
                    for old in others:
                        view.superseded[old] = spec.key
                        if view.bizs is not None:
                            view.bizs.pop(old, None)
        except TunnelError as exc:
            result = CommandResult(CommandOutcome.FAILED, f"base unreachable: {exc}")
            BIZ_COMMANDS.labels("install", "ERROR").inc()
        except Exception as exc:
            log.exception("install of %s on %s crashed", spec.key, node)
            result = CommandResult(CommandOutcome.FAILED, f"internal error: {exc}")
        else:
            BIZ_COMMANDS.labels("install", result.outcome.value).inc()
        self._install_done(node, spec, result)

    async def _batch_install(self, node: str, tunnel: Tunnel, specs: list[BizSpec]) -> None:
        view = self.registry.get(node)
        if view is None:
            return
        try:
            results = await tunnel.batch_install_biz(view.heartbeat, specs)
        except TunnelError as exc:
            results = {s.url: CommandResult(CommandOutcome.FAILED, f"base unreachable: {exc}") for s in specs}
        except Exception as exc:
            log.exception("batch install on %s crashed", node)
            results = {s.url: CommandResult(CommandOutcome.FAILED, f"internal error: {exc}") for s in specs}
        for spec in specs:
            missing = CommandResult(CommandOutcome.FAILED, "no answer for this biz in the batch")
            result = results.get(spec.url) or missing
            BIZ_COMMANDS.labels("install", result.outcome.value).inc()
            self._install_done(node, spec, result)

    def _install_done(self, node: str, spec: BizSpec, result: CommandResult) -> None:
        view = self.registry.get(node)
        if view is None:
            return
        view.inflight.discard(spec.key)
        self._install_started.pop((node, spec.key), None)
        if result.ok or result.outcome is CommandOutcome.REPEAT:
            view.ops.pop(spec.key, None)
            view.retry_after.pop(spec.key, None)
            view.failures.pop(spec.key, None)
            merged = False
            if view.bizs is not None and result.ok:
                for biz in result.bizs:
                    if biz.key == spec.key:
                        view.bizs[biz.key] = biz
                        merged = True
            if not merged:
                view.bizs_stale = True
            for pod in self._pods_wanting(node, spec.key):
                self.events.normal(pod, "BizInstalled", f"biz {spec.key} installed on {node}")
        else:
            failures = view.failures.get(spec.key, 0) + 1
            view.failures[spec.key] = failures
            delay = min(2.0 * 2 ** (failures - 1), 300.0)
            view.retry_after[spec.key] = self.clock() + delay
            message = result.message or result.outcome.value
            view.ops[spec.key] = OpFacts(OpState.INSTALL_FAILED, message)
            view.bizs_stale = True
            log.warning("install of %s on %s failed (%s), retry in %.0fs", spec.key, node, message, delay,
                        extra={"node": node, "biz": str(spec.key)})
            for pod in self._pods_wanting(node, spec.key):
                self.events.warning(pod, "BizInstallFailed", f"biz {spec.key}: {message}")
        self.queue.add(node)

    def _start_uninstall(self, view: BaseView, tunnel: Tunnel, key: BizKey) -> None:
        view.inflight.add(key)
        self._spawn(self._uninstall(view.node, tunnel, key), f"uninstall-{view.node}-{key}")

    async def _uninstall(self, node: str, tunnel: Tunnel, key: BizKey) -> None:
        view = self.registry.get(node)
        if view is None:
            return
        try:
            result = await tunnel.uninstall_biz(view.heartbeat, key.name, key.version)
            BIZ_COMMANDS.labels("uninstall", result.outcome.value).inc()
        except TunnelError as exc:
            result = CommandResult(CommandOutcome.FAILED, f"base unreachable: {exc}")
            BIZ_COMMANDS.labels("uninstall", "ERROR").inc()
        except Exception as exc:
            log.exception("uninstall of %s on %s crashed", key, node)
            result = CommandResult(CommandOutcome.FAILED, f"internal error: {exc}")
        view = self.registry.get(node)
        if view is None:
            return
        view.inflight.discard(key)
        if result.ok or result.outcome is CommandOutcome.NOT_FOUND:
            if view.bizs is not None:
                view.bizs.pop(key, None)
            view.orphan_since.pop(key, None)
            log.info("uninstalled %s from %s", key, node, extra={"node": node, "biz": str(key)})
            self.queue.add(node)
        else:
            view.bizs_stale = True
            log.warning("uninstall of %s on %s failed: %s", key, node, result.message,
                        extra={"node": node, "biz": str(key)})
            self.queue.add_after(node, 2.0)
