"""The module controller: pods bound to a vnode become bizs on its base, and biz states become pod status.

One reconcile handles one base (key = node name) and considers every pod bound to it at once, so the plan is
level-based and fenced (``core.plan``). Only the replica holding the vnode's Lease reconciles it, and every
write (a command to the base, a pod status, a pod deletion) is preceded by ``may_write(node)``: a replica that
lost the Lease, or stalled past its renew deadline, writes nothing more for the vnode.

State: each base's biz facts live in its ``BaseLedger`` (``core.basestate``), the one place they change; reads of
the base and command results are merged there by sequence number, so an install that finishes while a read is on
the wire is never lost. Everything a decision needs after a restart is read again from the base (its biz list)
and from the pods' own statuses: a container vkprovider once reported as terminated ``BizDeactivate`` is
finished (its version was superseded; it is never installed again for that pod), a container waiting
``BizInstallFailed`` with a ``restartCount`` resumes its backoff, and ``imageID`` says which jar URL runs.

Commands run as background tasks, bounded per base by the tunnel; their results go into the ledger and re-queue
the base. Pod status is computed by ``core.podstatus`` and written off the reconcile path (one writer per pod,
newest status wins), only when it changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import Counter, Histogram

from vkprovider.config import Settings
from vkprovider.controllers.bases import BaseRegistry, BaseView, Clock
from vkprovider.controllers.bizlog import BizLog
from vkprovider.controllers.ownership import FENCED_RETRY_S
from vkprovider.controllers.queue import WorkQueue
from vkprovider.core.backoff import BIZ_INSTALL, STATUS_WRITE
from vkprovider.core.basestate import BaseLedger, CommandKind, Inflight
from vkprovider.core.model import BizInfo, BizKey, BizSpec, BizState, BizStateRecord, CommandOutcome, CommandResult
from vkprovider.core.module import (
    PodModules,
    is_module_pod,
    is_terminal,
    is_terminating,
    pod_key,
    pod_modules,
    workload_of,
)
from vkprovider.core.node import BaseReadiness, is_vnode_name
from vkprovider.core.plan import PodWant, Replace, plan_base
from vkprovider.core.podstatus import (
    REASON_BIZ_DEACTIVATE,
    REASON_INSTALL_FAILED,
    BaseCondition,
    OpFacts,
    OpState,
    is_ready_status,
    not_a_module_condition,
    pod_status,
    second_to_iso,
    status_changed,
    status_patch,
    with_base_not_ready,
    with_ready_held,
)
from vkprovider.core.release import HOLD_REASON
from vkprovider.core.sanitize import MAX_LOG_TEXT, clean
from vkprovider.kube.client import ApiError, Kube
from vkprovider.kube.events import EventRecorder
from vkprovider.tunnels.base import Tunnel, TunnelError

log = logging.getLogger(__name__)

BIZ_COMMANDS = Counter("vkprovider_biz_commands_total", "Biz commands sent to bases.", ["command", "outcome"])
BIZ_COMMAND_SECONDS = Histogram(
    "vkprovider_biz_command_duration_seconds",
    "Time from sending a biz command to its answer, by command.",
    ["command"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
POD_STATUS_WRITES = Counter("vkprovider_pod_status_writes_total", "Pod status writes.", ["phase"])
POD_START_SECONDS = Histogram(
    "vkprovider_pod_start_duration_seconds",
    "Time from this replica first seeing a module pod, not yet started, on a vnode it holds to the answer to the "
    "write of its first Running status (the kubelet's kubelet_pod_start_duration_seconds, for modules).",
    buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 20, 30, 60, 120, 300),
)
for _cmd in ("install", "uninstall", "reinstall"):
    BIZ_COMMAND_SECONDS.labels(_cmd)
    for _outcome in ("SUCCESS", "FAILED", "REPEAT_BIZ", "NOT_FOUND_BIZ", "CONFLICT", "ERROR"):
        BIZ_COMMANDS.labels(_cmd, _outcome)
for _phase in ("Pending", "Running", "Failed"):
    POD_STATUS_WRITES.labels(_phase)

#: How long a new pod's first "ContainerCreating" status waits for its install (a fast one writes Running once).
PENDING_WRITE_DEFER_S = 1.0
#: How long a status, once its write was answered, is trusted to show up in the watch before an unchanged cache makes
#: it be sent again.
STATUS_ECHO_WAIT_S = 10.0

_BASE_CONDITION = {
    BaseReadiness.READY: BaseCondition.READY,
    BaseReadiness.UNREACHABLE: BaseCondition.UNREACHABLE,
    BaseReadiness.DEACTIVATED: BaseCondition.DEACTIVATED,
}


@dataclass
class _SentStatus:
    """A status sent for a pod, until the watch shows it. Trusted while its write is under way (a rollout's PATCHes
    can wait seconds for a client slot and the apiserver), then for ``STATUS_ECHO_WAIT_S`` after the answer."""

    desired: dict[str, Any]
    written_rv: str | None = None
    answered_at: float | None = None

    def trusted(self, now: float) -> bool:
        return self.answered_at is None or now - self.answered_at < STATUS_ECHO_WAIT_S


def now_iso() -> str:
    return second_to_iso(int(time.time()))


def _now_ms() -> int:
    return int(time.time() * 1000)


def _iso_to_ms(text: object) -> int | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None


def _order(pod: Mapping[str, Any]) -> str:
    md = pod.get("metadata") or {}
    return f"{md.get('creationTimestamp', '')}/{md.get('name', '')}"


def _started(pod: Mapping[str, Any]) -> bool:
    """Whether the pod's status already shows it started (Running, or finished): then its start is not timed."""
    return str((pod.get("status") or {}).get("phase") or "Pending") != "Pending"


def _finished_containers(pod: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Containers this pod's status shows as terminated BizDeactivate (name -> the state shown): their version
    was superseded on the base, so the pod never gets that biz again (restart-safe: read from the API, like a
    container that exited under restartPolicy Never)."""
    done: dict[str, Mapping[str, Any]] = {}
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        state = status.get("state") or {}
        terminated = state.get("terminated") or {}
        if terminated.get("reason") == REASON_BIZ_DEACTIVATE:
            done[str(status.get("name"))] = state
    return done


FULL_PASS_S = 300.0  # a quiet base is planned in full at least this often anyway (facts outside ``_Quiet``)


@dataclass(frozen=True, slots=True)
class _Quiet:
    """What a module reconcile read when it found nothing to do: the ledger's version, the base's readiness and
    heartbeat, the module pods (the informer replaces a pod object on every change; equal tuples compare by
    identity first) and the current ``FULL_PASS_S`` period. The same inputs give the same nothing, so the next
    poll of an idle base reads its bizs and stops there (issue 17: planning and status compares of unchanged
    pods were a third of vkprovider's steady CPU with 5,000 pods)."""

    ledger: int
    readiness: BaseReadiness
    heartbeat: object
    pods: tuple[dict[str, Any], ...]
    period: int


@dataclass(frozen=True, slots=True)
class _PodFacts:
    """What a pod object says that stays true until the object changes (the informer replaces a pod object on
    every change, never edits one): its bizs, workload and order. Worked out once per object, not on every
    reconcile of its base (issue 17: parsing the same pods again was a tenth of a rollout's CPU)."""

    pod: Mapping[str, Any]  # the object these are the facts of
    modules: PodModules
    workload: str | None
    order: str


def _plans_alike(written: Mapping[str, Any]) -> bool:
    """Whether a status vkprovider wrote, once the watch shows it, leaves every planning input as it was: not a
    terminal phase and no container terminated ``BizDeactivate`` (the planner reads those from the pod's status).
    The echo of such a write needs no pass over its base: the pass that wrote it already derived its status from
    it (``_as_last_written``). One reconcile in four of a rollout was such an echo (issue 17)."""
    if written.get("phase") in ("Failed", "Succeeded"):
        return False
    return not any(((c.get("state") or {}).get("terminated") or {}).get("reason") == REASON_BIZ_DEACTIVATE
                   for c in written.get("containerStatuses") or [])


def _settled(pod: Mapping[str, Any]) -> bool:
    """Ready, or finished: a pod whose status no release hold, install or deadline will change."""
    return is_terminal(pod) or (not is_terminating(pod) and is_ready_status(pod.get("status") or {}))


class ModuleController:
    def __init__(
        self,
        settings: Settings,
        kube: Kube,
        registry: BaseRegistry,
        pods: Any,
        tunnels: Mapping[str, Tunnel],
        events: EventRecorder,
        *,
        may_write: Callable[[str], bool],
        clock: Clock,
        fenced: Callable[[str], bool] | None = None,
        bizlog: BizLog | None = None,
        revision_of: Callable[[Mapping[str, Any]], int] | None = None,
        ready_hold: Callable[[Mapping[str, Any]], str | None] | None = None,
    ) -> None:
        """``revision_of`` and ``ready_hold`` are the release controller's answers (a pod's Deployment revision;
        why a pod of a batched release must not turn Ready yet); without them every pod has revision 0 and none
        is held."""
        self.settings = settings
        self.kube = kube
        self.registry = registry
        self.pods = pods
        self.tunnels = tunnels
        self.events = events
        self.may_write = may_write
        self.fenced = fenced or (lambda node: False)
        self.clock = clock
        self.bizlog = bizlog if bizlog is not None else BizLog(settings.biz_log_lines)
        self.revision_of = revision_of or (lambda pod: 0)
        self.ready_hold = ready_hold or (lambda pod: None)
        self.queue = WorkQueue("module", self.reconcile, workers=max(settings.workers, 32))
        self.pods_by_node: dict[str, set[str]] = {}
        self._tasks: dict[str, set[asyncio.Task[None]]] = {}  # node -> its command tasks
        self._other_tasks: set[asyncio.Task[None]] = set()
        self._policy = settings.url_policy
        self._namespaces = settings.namespace_policy
        self._warned: dict[str, set[str]] = {}  # pod uid -> warnings already posted
        self._terminating_since: dict[str, float] = {}  # pod uid -> when first seen terminating (local clock)
        self._seeded: dict[str, set[str]] = {}  # node -> pod uids whose status was read back into the ledger
        self._install_started: dict[tuple[str, BizKey], float] = {}
        self._read_at: dict[str, float] = {}
        self._not_module_done: set[str] = set()
        self._unstarted_since: dict[str, float] = {}  # pod key -> when first seen on a held vnode, not yet started
        # Status writes run off the reconcile path (a worker never waits for the apiserver), at most one per pod
        # at a time; the newest wanted status replaces one still waiting. `_status_sent` remembers the last status
        # sent until the watch shows the write (the resourceVersion the PATCH answered), so reconciles in between
        # do not send it again.
        self._status_next: dict[str, tuple[str, dict[str, Any], dict[str, Any], PodModules]] = {}
        self._status_busy: set[str] = set()
        self._status_sent: dict[str, _SentStatus] = {}
        self._statuses_queued = 0  # status writes queued so far (a pass that queued one is not quiet)
        # node -> the inputs of its last pass when that pass had nothing to do (see ``_Quiet``)
        self._quiet: dict[str, _Quiet] = {}
        self._pod_facts: dict[str, _PodFacts] = {}  # pod key -> the facts of its object (see ``_facts``)

    async def start(self) -> None:
        await self.queue.start()

    async def stop(self) -> None:
        for tasks in list(self._tasks.values()):
            for task in list(tasks):
                task.cancel()
        for task in list(self._other_tasks):
            task.cancel()
        await self.queue.stop()

    # --- hooks ----------------------------------------------------------------------------------------
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
        old_uid = ((old or {}).get("metadata") or {}).get("uid")
        replaced = old is not None and new is not None and old_uid != (new.get("metadata") or {}).get("uid")
        if replaced:
            # Another pod of the same name (a StatefulSet's, a re-created bare pod): nothing meant for the old one
            # may reach it, and nothing it showed is this one's.
            self._forget_pod(key, old)
        sent = self._status_sent.get(key)
        echo = (sent is not None and new is not None and old_node == new_node
                and sent.written_rv == (new.get("metadata") or {}).get("resourceVersion"))
        if sent is not None and (new is None or echo):
            del self._status_sent[key]  # the cache now shows what was written (or the pod is gone)
        if new_node and is_vnode_name(new_node, self.settings.env):
            self.pods_by_node.setdefault(new_node, set()).add(key)
            if (self.may_write(new_node) or self.fenced(new_node)) and not (
                    echo and sent is not None and _plans_alike(sent.desired)):
                self.queue.add(new_node)
                if old_node != new_node and new is not None and not _started(new):
                    self._unstarted_since.setdefault(key, self.clock())
        if new is None:
            self._forget_pod(key, old)

    def _forget_pod(self, key: str, old: dict[str, Any] | None) -> None:
        """A pod object is gone (deleted, or replaced by another pod of the same name): drop what was kept for it,
        a status write waiting for it included."""
        self._status_next.pop(key, None)
        self._status_sent.pop(key, None)
        self._pod_facts.pop(key, None)
        self._unstarted_since.pop(key, None)
        md = (old or {}).get("metadata") or {}
        uid = md.get("uid", "")
        self._warned.pop(uid, None)
        self._terminating_since.pop(uid, None)
        self._not_module_done.discard(uid)
        old_node = ((old or {}).get("spec") or {}).get("nodeName")
        if old_node:
            self._seeded.get(old_node, set()).discard(uid)

    def on_gained(self, node: str) -> None:
        """This replica now holds ``node``: learn the base's bizs before deciding anything (adoption)."""
        view = self.registry.get(node)
        if view is not None:
            view.ledger.forget()
        self._seeded.pop(node, None)
        self._read_at.pop(node, None)
        self._quiet.pop(node, None)
        self.queue.add(node)

    def on_lost(self, node: str) -> None:
        """Another replica holds ``node`` now: stop every command in flight for it, send no status."""
        for task in self._tasks.pop(node, set()):
            task.cancel()
        view = self.registry.get(node)
        if view is not None:
            tunnel = self.tunnels.get(view.heartbeat.tunnel)
            if tunnel is not None:
                tunnel.release(view.heartbeat)
        for key in list(self.pods_by_node.get(node, ())):
            self._status_next.pop(key, None)
            self._status_sent.pop(key, None)
            self._unstarted_since.pop(key, None)
        self._seeded.pop(node, None)
        self._quiet.pop(node, None)

    def on_base_changed(self, node: str) -> None:
        """The node controller saw the base's readiness change (pods' Ready follows) or a restart hint."""
        if self.may_write(node) or self.fenced(node):
            self.queue.add(node)

    def _facts(self, pod: dict[str, Any]) -> _PodFacts:
        key = pod_key(pod)
        facts = self._pod_facts.get(key)
        if facts is None or facts.pod is not pod:
            facts = self._pod_facts[key] = _PodFacts(pod, pod_modules(pod, self._policy), workload_of(pod),
                                                     _order(pod))
        return facts

    def pods_on(self, node: str) -> list[dict[str, Any]]:
        found = []
        for key in self.pods_by_node.get(node, ()):
            pod = self.pods.get(key)
            if pod is not None:
                found.append(pod)
        return found

    def baseline(self, node: str, cluster: str) -> list[BizSpec]:
        """The bizs the pods bound to ``node`` want (answer to queryBaseline from a base of ``cluster``): the same
        bizs the controller would install there, VKP_BIZ_NAMESPACE_POLICY included. The base installs them
        itself, so they count as in flight until a read shows them (``BaseLedger.start_baseline``): the
        controller sends no install that would race the base's own (arklet: "conflict, exist unfinished
        command")."""
        specs: dict[BizKey, BizSpec] = {}
        view = self.registry.get(node)
        superseded = view.ledger.superseded if view is not None else {}
        for pod in self.pods_on(node):
            if is_module_pod(pod) and not is_terminating(pod) and not is_terminal(pod):
                namespace = str((pod.get("metadata") or {}).get("namespace") or "")
                if self._namespaces.refusal(namespace, cluster) is not None:
                    continue
                finished = _finished_containers(pod)
                for spec in self._facts(pod).modules.bizs:
                    if spec.name not in finished and spec.key not in superseded:
                        specs.setdefault(spec.key, spec)
        if view is not None and specs:
            view.ledger.start_baseline(specs.values(), self.clock())
            self.queue.add(node)
        return list(specs.values())

    def describe(self, node: str) -> dict[str, Any]:
        """What this replica knows and does for one vnode (the probes listener's /debug/vnodes/<node>)."""
        view = self.registry.get(node)
        now = self.clock()
        ledger = view.ledger if view is not None else None
        pods = self.pods_by_node.get(node, set())
        return {
            "node": node,
            "held": self.may_write(node),
            "base": None if view is None else {
                "identity": view.heartbeat.identity, "silentForS": round(view.silent_for(now), 1),
                "readiness": view.readiness(now, self.settings.base_unreachable_after_s).value},
            "bizs": None if ledger is None or ledger.bizs is None else
            {str(k): b.state.value for k, b in ledger.bizs.items()},
            "inflight": {} if ledger is None else
            {str(k): {"kind": i.kind.value, "forS": round(now - i.started_at, 1)} for k, i in ledger.inflight.items()},
            "failures": {} if ledger is None else
            {str(k): {"attempts": f.attempts, "retryInS": round(f.retry_at - now, 1), "message": f.message}
             for k, f in ledger.failures.items()},
            "readInS": round(self._read_at.get(node, now) + self.settings.base_bizs_interval_s - now, 1),
            "pods": sorted(pods),
            "statusWriting": sorted(k for k in pods if k in self._status_busy),
            "statusWaiting": sorted(k for k in pods if k in self._status_next),
            "commandTasks": len(self._tasks.get(node, ())),
        }

    # --- reconcile ---------------------------------------------------------------------------------
    async def reconcile(self, node: str) -> float | None:
        if not self.may_write(node):
            # Lost: the lease keeper re-queues us when the vnode is back in our hands. Fenced (still held, a
            # renewal late): nobody will, so look again shortly.
            return FENCED_RETRY_S if self.fenced(node) else None
        view = self.registry.get(node)
        if view is None:
            self._quiet.pop(node, None)  # a base gone: let go of its pods
            return None  # the node controller knows the base from its Node and re-queues us
        tunnel = self.tunnels.get(view.heartbeat.tunnel)
        now = self.clock()
        readiness = view.readiness(now, self.settings.base_unreachable_after_s)
        ledger = view.ledger
        pods = self.pods_on(node)
        module_pods: list[dict[str, Any]] = []
        for pod in pods:
            if is_module_pod(pod):
                module_pods.append(pod)
            else:
                self._leave_alone(node, pod)
        interval = self.settings.base_bizs_interval_s
        read_due = ledger.read_needed() or now - self._read_at.get(node, -1e18) >= interval
        if readiness is BaseReadiness.READY and tunnel is not None and (read_due or ledger.bizs is None):
            # Safe while commands run: the ledger keeps a command result newer than the read (see its docstring).
            await self._read(view, tunnel, now)
        if not self.may_write(node):
            return FENCED_RETRY_S if self.fenced(node) else None
        now = self.clock()
        next_poll = interval * (0.9 + 0.2 * random.random())
        quiet = _Quiet(ledger.version, readiness, view.heartbeat, tuple(module_pods), int(now // FULL_PASS_S))
        if self._quiet.get(node) == quiet:
            return next_poll  # the last pass found nothing to do and nothing it read has changed since
        self._quiet.pop(node, None)
        queued = self._statuses_queued
        modules_of: dict[str, PodModules] = {}
        wants: list[PodWant] = []
        refused: dict[str, str] = {}
        cluster = view.heartbeat.metadata.cluster_name
        for pod in module_pods:
            key = pod_key(pod)
            md = pod.get("metadata") or {}
            facts = self._facts(pod)
            modules = facts.modules
            modules_of[key] = modules
            self._seed(node, ledger, pod, modules, now)
            refusal = self._namespaces.refusal(str(md.get("namespace") or ""), cluster)
            if refusal is not None:
                refused[key] = refusal
            finished = _finished_containers(pod)
            bizs = tuple(
                spec for spec in modules.bizs
                if spec.name not in finished and spec.key not in ledger.superseded and refusal is None
            )
            wants.append(PodWant(key, bizs, terminating=is_terminating(pod), terminal=is_terminal(pod),
                                 order=facts.order, deadline=self._deadline(pod, now), workload=facts.workload,
                                 revision=self.revision_of(pod), strategy=modules.strategy))
        ledger.expire_baselines(now, self.settings.arklet_install_timeout_s)
        plan = plan_base(wants, ledger, now=now, orphan_grace_s=self.settings.module_orphan_grace_s)
        ledger.planned(plan.wanted, plan.released, plan.orphans)
        if readiness is BaseReadiness.READY and tunnel is not None and ledger.bizs is not None:
            if plan.install:
                self._start_installs(view, tunnel, plan.install, plan.replace)
            for spec in plan.reinstall:
                self._start_reinstall(view, tunnel, spec, plan.replace.get(spec.key))
            for biz_key in plan.uninstall:
                self._start_uninstall(view, tunnel, biz_key)
        if plan.finalize or plan.force_finalize:
            await asyncio.gather(*(self._finalize(node, key) for key in plan.finalize),
                                 *(self._force_finalize(node, view, key) for key in plan.force_finalize))
        recheck = self._write_statuses(view, module_pods, modules_of, readiness, refused, plan.outranked)
        if (recheck is None and plan.is_idle() and not refused and self._statuses_queued == queued
                and ledger.settled() and ledger.version == quiet.ledger and all(map(_settled, module_pods))
                and not any(pod_key(p) in self._status_busy for p in module_pods)):
            self._quiet[node] = quiet
        waits = [next_poll]
        if recheck is not None:
            waits.append(recheck + 0.05)
        if plan.wait_s is not None:
            waits.append(plan.wait_s + 0.05)
        return min(waits)

    async def _read(self, view: BaseView, tunnel: Tunnel, now: float) -> None:
        ledger = view.ledger
        token = ledger.begin_read()
        try:
            bizs = await tunnel.query_all_biz(view.heartbeat)
        except TunnelError as exc:
            log.info("queryAllBiz of %s failed: %s", view.node, clean(exc, MAX_LOG_TEXT), extra={"node": view.node})
            self._read_at[view.node] = now
            ledger.read_failed(clean(exc, MAX_LOG_TEXT))
            return
        self.registry.answered(view.node)
        self._read_at[view.node] = now
        before = dict(ledger.bizs or {})
        if ledger.apply_read(token, bizs):
            self._log_changes(view.node, before, ledger.bizs or {})

    def on_pushed_bizs(self, node: str, bizs: Sequence[BizInfo]) -> None:
        """A biz list of unknown send time (MQTT: unasked, or the answer of a query that timed out): merged so it
        never undoes a command result newer than the last read (``BaseLedger.apply_untimed``)."""
        view = self.registry.get(node)
        if view is None or not self.may_write(node):
            return
        before = dict(view.ledger.bizs or {})
        if view.ledger.apply_untimed(bizs):
            self._log_changes(node, before, view.ledger.bizs or {})
        self.queue.add(node)

    def _log_changes(self, node: str, before: Mapping[BizKey, BizInfo], after: Mapping[BizKey, BizInfo]) -> None:
        for key, info in after.items():
            old = before.get(key)
            if old is None or old.state is not info.state:
                record = info.last_record
                detail = f" ({record.reason}: {record.message})" if record and (record.reason or record.message) else ""
                self.bizlog.add(node, key.name, key.version, f"state {info.state.value}{detail}")
        for key in before:
            if key not in after:
                self.bizlog.add(node, key.name, key.version, "no longer on the base")

    def _deadline(self, pod: Mapping[str, Any], now: float) -> float | None:
        """When a terminating pod's grace period ends, measured on the local clock from when it was first seen
        terminating (never comparing the apiserver's deletionTimestamp with this host's clock)."""
        if not is_terminating(pod):
            return None
        md = pod.get("metadata") or {}
        uid = str(md.get("uid") or pod_key(pod))
        since = self._terminating_since.setdefault(uid, now)
        grace = md.get("deletionGracePeriodSeconds")
        grace_s = float(grace) if isinstance(grace, int | float) else 30.0
        return since + grace_s

    def _seed(self, node: str, ledger: BaseLedger, pod: Mapping[str, Any], modules: PodModules, now: float) -> None:
        """Read back what the pod's status remembers (a restart or a takeover lost it from memory): failed
        installs resume their backoff, the URL a running biz came from is known."""
        uid = str((pod.get("metadata") or {}).get("uid") or "")
        seeded = self._seeded.setdefault(node, set())
        if uid in seeded or ledger.bizs is None:
            return
        seeded.add(uid)
        specs = {s.name: s for s in modules.bizs}
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            spec = specs.get(str(status.get("name")))
            if spec is None:
                continue
            state = status.get("state") or {}
            waiting = state.get("waiting") or {}
            attempts = int(status.get("restartCount") or 0)
            if waiting.get("reason") == REASON_INSTALL_FAILED and spec.key not in ledger.bizs:
                failed = ((status.get("lastState") or {}).get("terminated") or {}).get("finishedAt")
                ledger.seed_failure(spec.key, max(attempts, 1), str(waiting.get("message") or ""),
                                    now + BIZ_INSTALL.delay(max(attempts, 1)), _iso_to_ms(failed) or _now_ms())
            image_id = str(status.get("imageID") or "")
            if "running" in state and image_id:
                ledger.seed_url(spec.key, image_id)

    def _leave_alone(self, node: str, pod: dict[str, Any]) -> None:
        """A non-module pod bound to a vnode: one clear condition and a Warning, nothing else (marking it Failed
        would make its controller recreate it forever)."""
        md = pod.get("metadata") or {}
        uid = str(md.get("uid") or "")
        if uid in self._not_module_done or is_terminal(pod):
            return
        patch = not_a_module_condition(pod, now_iso())
        self._not_module_done.add(uid)
        if patch is None:
            return
        self._spawn_other(self._write_not_module(node, pod, patch), f"not-a-module-{pod_key(pod)}")

    async def _write_not_module(self, node: str, pod: dict[str, Any], patch: dict[str, Any]) -> None:
        md = pod["metadata"]
        if not self.may_write(node):
            self._not_module_done.discard(str(md.get("uid") or ""))
            return
        try:
            await self.kube.patch(f"/api/v1/namespaces/{md['namespace']}/pods/{md['name']}/status",
                                  {"status": patch}, kind="strategic")
        except ApiError as exc:
            if not exc.is_not_found:
                self._not_module_done.discard(str(md.get("uid") or ""))
                log.warning("marking non-module pod %s failed: %s", pod_key(pod), exc, extra={"node": node})
            return
        self.events.warning(pod, "NotAModule", patch["conditions"][0]["message"])

    async def _finalize(self, node: str, key: str) -> None:
        if not self.may_write(node):
            return
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

    async def _force_finalize(self, node: str, view: BaseView, key: str) -> None:
        """The grace period is over and the uninstall has not succeeded: remove the pod anyway (a StatefulSet
        must be able to replace it); its biz stays tracked, and its uninstall is retried with backoff."""
        pod = self.pods.get(key)
        if pod is not None and self.may_write(node):
            leftover = [str(s.key) for s in self._facts(pod).modules.bizs if s.key in (view.ledger.bizs or {})]
            message = (f"the grace period ended before {', '.join(leftover) or 'its bizs'} left base {node}; "
                       "the pod is removed and the uninstall is retried with backoff")
            self.events.warning(pod, "BizUninstallTimeout", message)
            log.warning("%s: %s", key, message, extra={"node": node, "pod": key})
        await self._finalize(node, key)

    # --- pod status -------------------------------------------------------------------------------
    def _write_statuses(
        self,
        view: BaseView,
        pods: Sequence[dict[str, Any]],
        modules_of: Mapping[str, PodModules],
        readiness: BaseReadiness,
        refused: Mapping[str, str],
        outranked: frozenset[tuple[str, BizKey]] = frozenset(),
    ) -> float | None:
        """Send the status of every pod on the base whose status changed (written in the background).

        A pod seen for the first time while its installs are under way gets no "ContainerCreating" status for
        the first ``PENDING_WRITE_DEFER_S``: a fast install goes straight to Running with one write instead of
        two. Returns when to look again for such deferred pods (None when there are none).
        """
        ledger = view.ledger
        base = _BASE_CONDITION[readiness]
        base_message = (f"base {view.heartbeat.identity} is unreachable" if base is BaseCondition.UNREACHABLE
                        else f"base {view.heartbeat.identity} is shutting down (DEACTIVATED)")
        stamp = now_iso()
        now = self.clock()
        recheck: float | None = None
        known = ledger.bizs
        bizs: dict[BizKey, BizInfo] = dict(known or {})
        for old, new in ledger.superseded.items():
            record = BizStateRecord(0, BizState.DEACTIVATED, "Switched",
                                    f"replaced by {new} (installStrategy uninstallThenInstall)")
            bizs.setdefault(old, BizInfo(old.name, old.version, BizState.DEACTIVATED, (record,)))
        active = {b.name: b.key for b in bizs.values() if b.state is BizState.ACTIVATED}
        workloads_wanting: dict[BizKey, set[str]] = {}
        newest_url: dict[BizKey, tuple[str, str]] = {}
        for pod in pods:
            modules = modules_of.get(pod_key(pod))
            if modules is None or is_terminating(pod) or is_terminal(pod):
                continue
            facts = self._facts(pod)
            workload, order = facts.workload, facts.order
            for spec in modules.bizs:
                if workload is not None:
                    workloads_wanting.setdefault(spec.key, set()).add(workload)
                if spec.key not in newest_url or newest_url[spec.key][0] < order:
                    newest_url[spec.key] = (order, spec.url)
        for pod in pods:
            key = pod_key(pod)
            modules = modules_of.get(key)
            if modules is None or is_terminating(pod) or is_terminal(pod):
                continue
            shown = self._as_last_written(key, pod, now)
            current = shown.get("status") or {}
            if known is None:
                if base is BaseCondition.READY:
                    if ledger.read_error is None or current.get("containerStatuses"):
                        continue  # nothing known yet: say nothing rather than something wrong
                    # The base's biz list cannot be read: a pod that never started says what it waits for.
                    waiting = OpFacts(OpState.INSTALLING, f"waiting for base {view.heartbeat.identity}'s biz list: "
                                      f"{ledger.read_error}")
                    desired = pod_status(shown, modules, {}, {s.key: waiting for s in modules.bizs},
                                         base_ip=view.heartbeat.ip, now_iso=stamp)
                    self._queue_status(view.node, key, pod, desired, modules, now)
                    continue
                not_ready = with_base_not_ready(current, base, base_message, stamp)
                if not_ready is not None:
                    self._queue_status(view.node, key, pod, not_ready, modules, now)
                continue
            finished = _finished_containers(shown)
            pod_bizs = bizs
            ops: dict[BizKey, OpFacts] = {}
            installed = ledger.installed_urls
            for spec in modules.bizs:
                if spec.name in finished:
                    continue
                url = installed.get(spec.key)
                newest = newest_url.get(spec.key)
                if (url is not None and url != spec.url and spec.key in bizs and newest is not None
                        and newest[1] != spec.url):
                    # Another (newer) pod's jar URL runs under this name:version: this container is replaced.
                    record = BizStateRecord(0, BizState.DEACTIVATED, "Switched", f"{spec.key} now runs from {url}")
                    pod_bizs = {**pod_bizs, spec.key: BizInfo(spec.name, spec.version, BizState.DEACTIVATED,
                                                               (record,))}
                    continue
                if (key, spec.key) in outranked and spec.key not in bizs:
                    ops[spec.key] = OpFacts(OpState.OUTRANKED, f"a newer revision of this pod's workload has "
                                            f"{spec.name} on the base; {spec.key} is not installed over it")
                    continue
                ops[spec.key] = self._op_facts(ledger, spec, refused.get(key), url)
            workload = self._facts(pod).workload
            pod_active = {b.name: b.key for b in pod_bizs.values() if b.state is BizState.ACTIVATED} or active
            replaced = frozenset(
                spec.name
                for spec in modules.bizs
                if workload is not None
                and spec.name in pod_active
                and pod_active[spec.name] != spec.key
                and workload in workloads_wanting.get(pod_active[spec.name], ())
            ) | frozenset(
                spec.name for spec in modules.bizs
                if spec.name in finished and workload is not None
                and any(workload in workloads_wanting.get(k, ()) for k in bizs if k.name == spec.name)
            ) | frozenset(
                spec.name for spec in modules.bizs
                if workload is not None and spec.key in installed and installed[spec.key] != spec.url
                and workload in workloads_wanting.get(spec.key, ())
            )
            desired = pod_status(shown, modules, pod_bizs, ops, base_ip=view.heartbeat.ip, now_iso=stamp,
                                 replaced_in_rollout=replaced, base=base, base_message=base_message,
                                 finished=finished)
            if is_ready_status(desired):
                hold = self.ready_hold(pod)
                if hold is not None:
                    desired = with_ready_held(desired, current, HOLD_REASON, hold, stamp)
            # Nothing written by vkprovider yet (the scheduler's PodScheduled condition aside): defer a Pending.
            if desired["phase"] == "Pending" and not current.get("containerStatuses") and base is BaseCondition.READY:
                started = [self._install_started.get((view.node, spec.key)) for spec in modules.bizs]
                if started and all(t is not None and now - t < PENDING_WRITE_DEFER_S for t in started):
                    due = max(t for t in started if t is not None) + PENDING_WRITE_DEFER_S - now
                    recheck = due if recheck is None else min(recheck, due)
                    continue
            self._queue_status(view.node, key, pod, desired, modules, now)
        return recheck

    def _as_last_written(self, key: str, pod: dict[str, Any], now: float) -> dict[str, Any]:
        """The pod with the status last sent for it, while the watch has not shown that write yet.

        Under load the cache shows a write seconds after it was answered. A status derived from the older one
        takes what it keeps from the status shown (start time, a container's start, transition times) afresh from
        the clock, differs from the one sent, and would be sent again every second until the echo arrives.
        """
        sent = self._status_sent.get(key)
        if sent is None or not sent.trusted(now):
            return pod
        return {**pod, "status": {**(pod.get("status") or {}), **sent.desired}}

    def _op_facts(self, ledger: BaseLedger, spec: BizSpec, refused: str | None, url: str | None) -> OpFacts:
        if refused is not None:
            return OpFacts(OpState.IDLE, refused=refused)
        failure = ledger.failures.get(spec.key)
        inflight = ledger.inflight.get(spec.key)
        if inflight is not None and inflight.kind is not CommandKind.UNINSTALL:
            attempts = failure.attempts if failure is not None else 0
            return OpFacts(OpState.INSTALLING, f"installing {spec.key}", attempts=attempts, installed_url=url)
        if failure is not None and failure.busy:
            return OpFacts(OpState.INSTALLING, f"installing {spec.key} (the base is busy with it)",
                           attempts=failure.attempts, installed_url=url)
        if failure is not None and failure.kind is not CommandKind.UNINSTALL:
            message = f"{failure.message} (attempt {failure.attempts}, retried with backoff)"
            return OpFacts(OpState.INSTALL_FAILED, message, attempts=failure.attempts,
                           failed_at_ms=failure.at_ms, installed_url=url)
        return OpFacts(OpState.IDLE, installed_url=url)

    def _queue_status(self, node: str, key: str, pod: dict[str, Any], desired: dict[str, Any],
                      modules: PodModules, now: float) -> None:
        if not status_changed(desired, pod.get("status")):
            self._status_sent.pop(key, None)
            return
        sent = self._status_sent.get(key)
        if sent is not None and sent.trusted(now) and not status_changed(desired, sent.desired):
            return  # already sent; the watch has not shown it yet
        self._status_sent[key] = _SentStatus(desired)
        self._status_next[key] = (node, pod, desired, modules)
        self._statuses_queued += 1
        if key not in self._status_busy:
            self._status_busy.add(key)
            self._spawn_other(self._status_writer(key), f"status-{key}")

    async def _status_writer(self, key: str) -> None:
        """Write the pod's wanted status until none is waiting; a failure is retried with backoff."""
        failures = 0
        try:
            while (item := self._status_next.pop(key, None)) is not None:
                node, pod, desired, modules = item
                if not self.may_write(node):
                    self._status_sent.pop(key, None)
                    if self.fenced(node):  # held, a renewal late: nobody else will look again, so look soon
                        self.queue.add_after(node, FENCED_RETRY_S)
                    continue
                try:
                    written_rv = await self._write_status(pod, desired, modules)
                    failures = 0
                    sent = self._status_sent.get(key)
                    if sent is not None and sent.desired is desired:
                        if written_rv is None:
                            del self._status_sent[key]
                        else:
                            sent.written_rv, sent.answered_at = written_rv, self.clock()
                except Exception as exc:
                    failures += 1
                    if not isinstance(exc, ApiError):
                        log.exception("status write of %s crashed", key)
                    else:
                        log.warning("status write of %s failed (attempt %d): %s", key, failures, exc,
                                    extra={"node": node})
                    if key not in self._status_next:
                        self._status_next[key] = item  # try again, unless something newer is waiting
                    await asyncio.sleep(STATUS_WRITE.delay(failures))
        finally:
            self._status_busy.discard(key)

    async def _write_status(self, pod: dict[str, Any], desired: dict[str, Any], modules: PodModules) -> str | None:
        """PATCH the pod's status; returns the resourceVersion written (None when the pod is gone)."""
        md = pod["metadata"]
        # The pod's uid rides along as a precondition: a write meant for a pod that was deleted meanwhile never
        # lands on a new pod of the same name (a StatefulSet's, a re-created bare pod).
        body = {"metadata": {"uid": md.get("uid")}, "status": status_patch(desired)} if md.get("uid") else {
            "status": status_patch(desired)}
        try:
            answer = await self.kube.patch(f"/api/v1/namespaces/{md['namespace']}/pods/{md['name']}/status",
                                           body, kind="strategic")
        except ApiError as exc:
            if exc.is_not_found or exc.is_other_object:
                return None
            raise
        POD_STATUS_WRITES.labels(desired["phase"]).inc()
        if desired["phase"] == "Running":
            since = self._unstarted_since.pop(pod_key(pod), None)
            if since is not None:
                POD_START_SECONDS.observe(self.clock() - since)
        for problem in modules.problems:
            self._warn_once(pod, problem.reason, f"container {problem.container}: {problem.message}")
        if not modules.bizs and not modules.problems:
            self._warn_once(pod, "NoBizContainer", desired.get("message") or "")
        for status in desired.get("containerStatuses") or []:
            waiting = (status.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") == "BizNotAllowed":
                self._warn_once(pod, "BizNotAllowed", f"container {status['name']}: {waiting.get('message', '')}")
        if desired["phase"] == "Failed":
            self._warn_once(pod, desired.get("reason") or "Failed", desired.get("message") or "")
        written = ((answer or {}).get("metadata") or {}).get("resourceVersion") if isinstance(answer, dict) else None
        return str(written) if written else None

    def _warn_once(self, pod: dict[str, Any], reason: str, message: str) -> None:
        uid = pod["metadata"].get("uid", "")
        mark = f"{reason}:{message}"
        done = self._warned.setdefault(uid, set())
        if mark in done:
            return
        done.add(mark)
        self.events.warning(pod, reason, message)

    # --- commands ---------------------------------------------------------------------------------
    def _spawn(self, node: str, coro: Any, name: str, started: Mapping[BizKey, Inflight]) -> None:
        """Run a command task; when it ends, a command of ``started`` it did not finish (it returned early because
        the vnode was fenced or lost, or it was cancelled) is abandoned in the ledger, so it is decided again."""
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        tasks = self._tasks.setdefault(node, set())
        tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            tasks.discard(t)
            if not tasks and self._tasks.get(node) is tasks:
                del self._tasks[node]
            view = self.registry.get(node)
            if view is None:
                return
            abandoned = [key for key, inflight in started.items() if view.ledger.abandon(key, inflight)]
            if abandoned:
                log.info("%s on %s ended without an answer for %s; deciding again", name, node,
                         ", ".join(map(str, abandoned)))
                self.queue.add(node)

        task.add_done_callback(done)

    def _spawn_other(self, coro: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        self._other_tasks.add(task)
        task.add_done_callback(self._other_tasks.discard)

    def _pods_wanting(self, node: str, key: BizKey) -> list[dict[str, Any]]:
        wanting = []
        for pod in self.pods_on(node):
            if not is_module_pod(pod) or is_terminating(pod):
                continue
            if any(s.key == key for s in self._facts(pod).modules.bizs):
                wanting.append(pod)
        return wanting

    def _pod_names(self, node: str, key: BizKey) -> str:
        return ",".join(pod_key(p) for p in self._pods_wanting(node, key)) or "-"

    def _start_installs(self, view: BaseView, tunnel: Tunnel, specs: Sequence[BizSpec],
                        replace: Mapping[BizKey, Replace]) -> None:
        now = self.clock()
        started = {spec.key: view.ledger.start(spec.key, CommandKind.INSTALL, spec, now) for spec in specs}
        for spec in specs:
            self._install_started[(view.node, spec.key)] = now
            self.bizlog.add(view.node, spec.name, spec.version, f"installing from {spec.url}")
        # A batch answers per jar URL: bizs that share a URL (only a simulator allows that) go one by one, and so do
        # bizs with another version on the base (an install that may have to make room, see ``core.plan``).
        urls = [spec.url for spec in specs]
        present = {k.name for k in view.ledger.bizs or {}}
        batch = [spec for spec in specs if urls.count(spec.url) == 1 and spec.name not in present]
        single = [spec for spec in specs if spec not in batch]
        if len(batch) > 1:
            self._spawn(view.node, self._batch_install(view.node, tunnel, batch), f"batch-install-{view.node}",
                        {spec.key: started[spec.key] for spec in batch})
        else:
            single += batch
        for spec in single:
            self._spawn(view.node, self._install(view.node, tunnel, spec, replace=replace.get(spec.key)),
                        f"install-{view.node}-{spec.key}", {spec.key: started[spec.key]})

    async def _install(self, node: str, tunnel: Tunnel, spec: BizSpec, *, kind: str = "install",
                       replace: Replace | None = None) -> None:
        """Install ``spec``; ``replace`` says whether (and when) it may make room with uninstallThenInstall (the
        planner allows it only over versions that older pods of the same workload want, see ``core.plan``)."""
        view = self.registry.get(node)
        if view is None or not self.may_write(node):
            return
        started = time.perf_counter()
        replaced: list[BizKey] = []
        try:
            others = [k for k in (view.ledger.bizs or {}) if k.name == spec.name and k != spec.key]
            first = replace is Replace.FIRST and bool(others)
            result = await tunnel.install_biz(view.heartbeat, spec, replace_other_versions=first)
            if first and result.ok:
                replaced = others
            elif (result.outcome is CommandOutcome.FAILED and others and replace is Replace.ON_FAILURE
                  and self.may_write(node)):
                # Some bases cannot run two versions side by side (a web biz's context path is taken): replace the
                # older version of the same workload (its pod then fails BizDeactivate); if this install fails
                # too, the planner installs the old version back (``core.plan``).
                BIZ_COMMANDS.labels(kind, result.outcome.value).inc()
                self.bizlog.add(node, spec.name, spec.version,
                                f"install failed next to {', '.join(map(str, others))} ({result.message}); "
                                "retrying with installStrategy uninstallThenInstall")
                result = await tunnel.install_biz(view.heartbeat, spec, replace_other_versions=True)
                if result.ok:
                    replaced = others
        except TunnelError as exc:
            result = CommandResult(CommandOutcome.FAILED, f"base unreachable: {exc}")
            BIZ_COMMANDS.labels(kind, "ERROR").inc()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("install of %s on %s crashed", spec.key, node)
            result = CommandResult(CommandOutcome.FAILED, f"internal error: {exc}")
        else:
            BIZ_COMMANDS.labels(kind, result.outcome.value).inc()
        BIZ_COMMAND_SECONDS.labels(kind).observe(time.perf_counter() - started)
        self._install_done(node, spec, result, time.perf_counter() - started, replaced)

    async def _batch_install(self, node: str, tunnel: Tunnel, specs: list[BizSpec]) -> None:
        view = self.registry.get(node)
        if view is None or not self.may_write(node):
            return
        started = time.perf_counter()
        try:
            results = await tunnel.batch_install_biz(view.heartbeat, specs)
        except TunnelError as exc:
            results = {s.url: CommandResult(CommandOutcome.FAILED, f"base unreachable: {exc}") for s in specs}
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("batch install on %s crashed", node)
            results = {s.url: CommandResult(CommandOutcome.FAILED, f"internal error: {exc}") for s in specs}
        took = time.perf_counter() - started
        for spec in specs:
            missing = CommandResult(CommandOutcome.FAILED, "no answer for this biz in the batch")
            result = results.get(spec.url) or missing
            BIZ_COMMANDS.labels("install", result.outcome.value).inc()
            BIZ_COMMAND_SECONDS.labels("install").observe(took)
            self._install_done(node, spec, result, took, [])

    def _install_done(self, node: str, spec: BizSpec, result: CommandResult, took_s: float,
                      replaced: Sequence[BizKey]) -> None:
        view = self.registry.get(node)
        self._install_started.pop((node, spec.key), None)
        if view is None:
            return
        if result.outcome is not CommandOutcome.FAILED or result.bizs:
            self.registry.answered(node)
        ok = result.ok or result.outcome is CommandOutcome.REPEAT
        busy = result.outcome is CommandOutcome.CONFLICT  # the base runs another command on it (its baseline)
        mismatch = next((b for b in result.bizs if b.name != spec.name), None) if ok else None
        pods = self._pods_wanting(node, spec.key)
        names = ",".join(pod_key(p) for p in pods) or "-"
        context = {"node": node, "biz": str(spec.key), "pod": names}
        message = clean(result.message or result.outcome.value)
        if mismatch is not None:
            ok = False
            message = (f"the jar's biz is named {mismatch.name!r}, not {spec.name!r}: name the container "
                       f"{mismatch.name!r} (the container name must be the biz name)")
            for pod in pods:
                self.events.warning(pod, "BizNameMismatch", f"container {spec.name}: {message}")
        view.ledger.finish_install(spec, ok=ok, reported=result.bizs, message=message, now=self.clock(),
                                   at_ms=_now_ms(), replaced=replaced, busy=busy)
        if ok:
            extra = f", replacing {', '.join(map(str, replaced))}" if replaced else ""
            log.info("installed %s on %s for %s in %.2fs%s", spec.key, node, names, took_s, extra, extra=context)
            self.bizlog.add(node, spec.name, spec.version, f"installed in {took_s:.2f}s: {message}{extra}")
            reported = next((b for b in result.bizs if b.key == spec.key), None)
            if reported is not None:
                self.bizlog.add(node, spec.name, spec.version, f"state {reported.state.value}")
            for pod in pods:
                self.events.normal(pod, "BizInstalled", f"biz {spec.key} installed on {node} in {took_s:.1f}s")
            if any(k.name == spec.name and k != spec.key for k in (view.ledger.bizs or {})):
                view.ledger.request_read()  # another version's state may have changed (BizDeactivate)
        elif busy:
            log.info("install of %s on %s: the base is running another command on it (%s); reading it again",
                     spec.key, node, clean(message, MAX_LOG_TEXT), extra=context)
        else:
            failure = view.ledger.failures.get(spec.key)
            delay = (failure.retry_at - self.clock()) if failure is not None else 0.0
            log.warning("install of %s on %s for %s failed after %.2fs (%s), retry in %.0fs", spec.key, node, names,
                        took_s, clean(message, MAX_LOG_TEXT), delay, extra=context)
            self.bizlog.add(node, spec.name, spec.version, f"install failed after {took_s:.2f}s: {message}")
            for pod in pods:
                self.events.warning(pod, "BizInstallFailed", f"biz {spec.key}: {message}")
        self.queue.add(node)

    def _start_reinstall(self, view: BaseView, tunnel: Tunnel, spec: BizSpec, replace: Replace | None) -> None:
        started = view.ledger.start(spec.key, CommandKind.REINSTALL, spec, self.clock())
        self.bizlog.add(view.node, spec.name, spec.version,
                        f"reinstalling from {spec.url} (was {view.ledger.installed_urls.get(spec.key)})")
        self._spawn(view.node, self._reinstall(view.node, tunnel, spec, replace), f"reinstall-{view.node}-{spec.key}",
                    {spec.key: started})

    async def _reinstall(self, node: str, tunnel: Tunnel, spec: BizSpec, replace: Replace | None) -> None:
        """Same name:version from another jar URL: uninstall, then install (arklet keys bizs by name:version)."""
        view = self.registry.get(node)
        if view is None or not self.may_write(node):
            return
        try:
            result = await tunnel.uninstall_biz(view.heartbeat, spec.name, spec.version)
        except TunnelError as exc:
            result = CommandResult(CommandOutcome.FAILED, f"base unreachable: {exc}")
        if not (result.ok or result.outcome is CommandOutcome.NOT_FOUND):
            BIZ_COMMANDS.labels("reinstall", result.outcome.value).inc()
            self._install_done(node, spec, CommandResult(CommandOutcome.FAILED,
                                                         f"uninstalling the old jar failed: {result.message}"),
                               0.0, [])
            return
        if not self.may_write(node):
            return
        await self._install(node, tunnel, spec, kind="reinstall", replace=replace)

    def _start_uninstall(self, view: BaseView, tunnel: Tunnel, key: BizKey) -> None:
        started = view.ledger.start(key, CommandKind.UNINSTALL, None, self.clock())
        self.bizlog.add(view.node, key.name, key.version, "uninstalling")
        self._spawn(view.node, self._uninstall(view.node, tunnel, key), f"uninstall-{view.node}-{key}",
                    {key: started})

    async def _uninstall(self, node: str, tunnel: Tunnel, key: BizKey) -> None:
        view = self.registry.get(node)
        if view is None or not self.may_write(node):
            return
        started = time.perf_counter()
        try:
            result = await tunnel.uninstall_biz(view.heartbeat, key.name, key.version)
            BIZ_COMMANDS.labels("uninstall", result.outcome.value).inc()
        except TunnelError as exc:
            result = CommandResult(CommandOutcome.FAILED, f"base unreachable: {exc}")
            BIZ_COMMANDS.labels("uninstall", "ERROR").inc()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("uninstall of %s on %s crashed", key, node)
            result = CommandResult(CommandOutcome.FAILED, f"internal error: {exc}")
        took = time.perf_counter() - started
        BIZ_COMMAND_SECONDS.labels("uninstall").observe(took)
        view = self.registry.get(node)
        if view is None:
            return
        ok = result.ok or result.outcome is CommandOutcome.NOT_FOUND
        if result.outcome is not CommandOutcome.FAILED:
            self.registry.answered(node)
        view.ledger.finish_uninstall(key, ok=ok, message=clean(result.message), now=self.clock(), at_ms=_now_ms())
        context = {"node": node, "biz": str(key)}
        if ok:
            log.info("uninstalled %s from %s in %.2fs", key, node, took, extra=context)
            self.bizlog.add(node, key.name, key.version, f"uninstalled in {took:.2f}s")
            self._event_for_uninstall(node, key)
        else:
            failure = view.ledger.failures.get(key)
            delay = (failure.retry_at - self.clock()) if failure is not None else 0.0
            log.warning("uninstall of %s from %s failed after %.2fs: %s; retry in %.0fs", key, node, took,
                        clean(result.message, MAX_LOG_TEXT), delay, extra=context)
            self.bizlog.add(node, key.name, key.version, f"uninstall failed: {clean(result.message)}")
            node_ref = {"kind": "Node", "apiVersion": "v1", "metadata": {"name": node}}
            self.events.warning(node_ref, "BizUninstallFailed",
                                f"uninstall of {key} failed: {clean(result.message)}; retrying in {delay:.0f}s")
        self.queue.add(node)

    def _event_for_uninstall(self, node: str, key: BizKey) -> None:
        terminating = [p for p in self.pods_on(node) if is_terminating(p)
                       and any(s.key == key for s in self._facts(p).modules.bizs)]
        for pod in terminating:
            self.events.normal(pod, "BizUninstalled", f"biz {key} uninstalled from {node}")
        if not terminating:
            node_ref = {"kind": "Node", "apiVersion": "v1", "metadata": {"name": node}}
            self.events.normal(node_ref, "OrphanBizUninstalled", f"biz {key}, which no pod wanted, was uninstalled")

    async def wait_idle(self, node: str) -> None:
        """Test helper: wait until no command task of ``node`` is running."""
        while self._tasks.get(node):
            with contextlib.suppress(Exception):
                await asyncio.gather(*self._tasks.get(node, set()), return_exceptions=True)
