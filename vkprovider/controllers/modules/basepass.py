"""One pass over one base: read its bizs, plan against every pod bound to it, start the commands, finalize deleted
pods, and hand each pod's status to the status queue.

A pass is level-based: it starts from what the base and the API say now (the ledger, the pod records), never from
the event that queued it, and it handles every pod of the base at once, so the plan is fenced (``core.plan``). It
runs only for a vnode this replica holds: the first write port check raises otherwise, and the work queue maps the
outcome (``controllers.fence``). Nothing is decided before the base's biz list is known: after a restart or a
takeover the pass reads first, then diffs (adoption, never replay); what a restart lost from memory is read back
from the pods' own statuses (``seed``): a failed install resumes its backoff, ``imageID`` says which jar runs.

An idle base costs a read and a comparison: a pass that found nothing to do records its inputs (``Quiet``), and
the next poll with the same inputs stops after its read (docs/performance.md: planning and status compares of
unchanged pods were a third of the steady CPU at 5,000 pods).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from vkprovider.config import ModuleSettings
from vkprovider.controllers.bases import BaseRegistry, BaseView
from vkprovider.controllers.bizlog import BizLog
from vkprovider.controllers.fence import VnodeScope, VnodeWrites
from vkprovider.controllers.modules.commands import CommandRunner, now_ms
from vkprovider.controllers.modules.records import PodIndex, PodRecord
from vkprovider.controllers.modules.status import PodStatusQueue
from vkprovider.controllers.modules.stops import GracefulStops
from vkprovider.core.backoff import BIZ_INSTALL
from vkprovider.core.basestate import BaseLedger
from vkprovider.core.basestatus import BaseFacts, PodView, base_pod_statuses, finished_containers
from vkprovider.core.model import BizInfo, BizKey, BizState
from vkprovider.core.module import is_module_pod, is_terminal, is_terminating
from vkprovider.core.node import BaseReadiness
from vkprovider.core.plan import PodWant, plan_base
from vkprovider.core.podstatus import (
    REASON_BIZ_DEACTIVATE,
    REASON_INSTALL_FAILED,
    BaseCondition,
    is_ready_status,
    not_a_module_condition,
    second_to_iso,
)
from vkprovider.core.probe import ContainerProbeState
from vkprovider.core.sanitize import MAX_LOG_TEXT, clean
from vkprovider.kube.client import ApiError
from vkprovider.probes import ContainerInput, ProbeManager
from vkprovider.tunnels.base import TunnelError

log = logging.getLogger(__name__)

FULL_PASS_S = 300.0  # a quiet base is planned in full at least this often anyway (facts outside ``Quiet``)

_BASE_CONDITION = {
    BaseReadiness.READY: BaseCondition.READY,
    BaseReadiness.UNREACHABLE: BaseCondition.UNREACHABLE,
    BaseReadiness.DEACTIVATED: BaseCondition.DEACTIVATED,
}


def now_iso() -> str:
    return second_to_iso(int(time.time()))


def _iso_to_ms(text: object) -> int | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Quiet:
    """What a pass read when it found nothing to do: the ledger's version, the base's readiness and heartbeat, the
    module pods (equal tuples compare by identity first) and the current ``FULL_PASS_S`` period. The same inputs
    give the same nothing."""

    ledger: int
    readiness: BaseReadiness
    heartbeat: object
    pods: tuple[dict[str, Any], ...]
    period: int


def plans_alike(written: Mapping[str, Any]) -> bool:
    """Whether a status vkprovider wrote, once the watch shows it, leaves every planning input as it was: not a
    terminal phase and no container terminated ``BizDeactivate`` (the planner reads those from the pod's status).
    The echo of such a write needs no pass over its base: the pass that wrote it already derived its status."""
    if written.get("phase") in ("Failed", "Succeeded"):
        return False
    return not any(((c.get("state") or {}).get("terminated") or {}).get("reason") == REASON_BIZ_DEACTIVATE
                   for c in written.get("containerStatuses") or [])


def _settled(pod: Mapping[str, Any]) -> bool:
    """Ready, or finished: a pod whose status no release hold, install or deadline will change."""
    return is_terminal(pod) or (not is_terminating(pod) and is_ready_status(pod.get("status") or {}))


class BasePass:
    """The per-base reconcile (see the module docstring); ``run(node)`` is the module queue's handler."""

    def __init__(self, cfg: ModuleSettings, registry: BaseRegistry, index: PodIndex, writes: VnodeWrites,
                 commands: CommandRunner, statuses: PodStatusQueue, bizlog: BizLog, probes: ProbeManager,
                 stops: GracefulStops, *,
                 clock: Callable[[], float], revision_of: Callable[[Mapping[str, Any]], int],
                 ready_hold: Callable[[Mapping[str, Any]], str | None]) -> None:
        self._cfg = cfg
        self._registry = registry
        self._index = index
        self._writes = writes
        self._commands = commands
        self._statuses = statuses
        self._bizlog = bizlog
        self._probes = probes
        self._stops = stops
        self._clock = clock
        self._revision_of = revision_of
        self._ready_hold = ready_hold
        self.read_at: dict[str, float] = {}
        self.quiet: dict[str, Quiet] = {}

    def forget(self, node: str) -> None:
        """Start afresh with ``node`` (gained, lost, or its base gone)."""
        self.read_at.pop(node, None)
        self.quiet.pop(node, None)

    async def run(self, node: str) -> float | None:
        scope = self._writes.scope(node)
        scope.check()
        view = self._registry.get(node)
        if view is None:
            self.quiet.pop(node, None)  # a base gone: let go of its pods
            return None  # the node controller knows the base from its Node and re-queues us
        now = self._clock()
        readiness = view.readiness(now, self._cfg.unreachable_after_s)
        ledger = view.ledger
        records = self._index.on(node)
        module_records: list[PodRecord] = []
        for record in records:
            if is_module_pod(record.pod):
                module_records.append(record)
            else:
                self._leave_alone(node, record)
        interval = self._cfg.read_interval_s
        read_due = ledger.read_needed() or now - self.read_at.get(node, -1e18) >= interval
        reachable = readiness is BaseReadiness.READY and self._writes.reaches(view.heartbeat)
        if reachable and (read_due or ledger.bizs is None):
            # Safe while commands run: the ledger keeps a command result newer than the read (see its docstring).
            await self._read(view, now)
        scope.check()
        now = self._clock()
        next_poll = interval * (0.9 + 0.2 * random.random())
        pods = tuple(r.pod for r in module_records)
        quiet = Quiet(ledger.version, readiness, view.heartbeat, pods, int(now // FULL_PASS_S))
        if self.quiet.get(node) == quiet:
            return next_poll  # the last pass found nothing to do and nothing it read has changed since
        self.quiet.pop(node, None)
        queued = self._statuses.queued
        wants: list[PodWant] = []
        refused: dict[str, str] = {}
        probed: dict[str, dict[str, ContainerProbeState]] = {}
        cluster = view.heartbeat.metadata.cluster_name
        for record in module_records:
            pod = record.pod
            facts = record.facts(self._cfg.url_policy)
            self._seed(record, ledger, now)
            refusal = self._cfg.namespace_policy.refusal(str(pod["metadata"].get("namespace") or ""), cluster)
            if refusal is not None:
                refused[record.key] = refusal
            finished = finished_containers(pod)
            bizs = tuple(spec for spec in facts.modules.bizs
                         if spec.name not in finished and spec.key not in ledger.superseded and refusal is None)
            deadline = self._deadline(record, now)
            stopping = deadline is not None and now < deadline and self._stops.stopping(
                record, view.heartbeat.ip, deadline)
            probes = probed[record.key] = self._probe(record, record.shown(now), view, now)
            restart = frozenset(s.key for s in bizs if (p := probes.get(s.name)) is not None and p.restart)
            wants.append(PodWant(record.key, bizs, terminating=is_terminating(pod), terminal=is_terminal(pod),
                                 order=facts.order, deadline=deadline, workload=facts.workload,
                                 revision=self._revision_of(pod), strategy=facts.modules.strategy, stopping=stopping,
                                 restart=restart))
        ledger.expire_baselines(now, self._cfg.baseline_wait_s)
        plan = plan_base(wants, ledger, now=now, orphan_grace_s=self._cfg.orphan_grace_s)
        ledger.planned(plan.wanted, plan.released, plan.orphans)
        if reachable and ledger.bizs is not None:
            if plan.install:
                self._commands.start_installs(view, plan.install, plan.replace)
            for spec in plan.reinstall:
                self._commands.start_reinstall(view, spec, plan.replace.get(spec.key))
            for spec in plan.restart:
                why = next((p.restart for w in wants if spec in w.bizs
                            for name, p in probed.get(w.key, {}).items() if name == spec.name and p.restart), "")
                self._commands.start_restart(view, spec, why or "a probe failed")
        # A base shutting down (DEACTIVATED) still answers arklet: the bizs of pods evicted by its drain are
        # uninstalled there too, so the pods are finalized without waiting for their grace period.
        going = readiness is BaseReadiness.DEACTIVATED and self._writes.reaches(view.heartbeat)
        if (reachable or going) and ledger.bizs is not None:
            for biz_key in plan.uninstall:
                self._commands.start_uninstall(view, biz_key)
        if plan.finalize or plan.force_finalize:
            await asyncio.gather(*(self._finalize(scope, key) for key in plan.finalize),
                                 *(self._force_finalize(scope, view, key) for key in plan.force_finalize))
        recheck = self._statuses_for(view, module_records, readiness, refused, plan.outranked, plan.crash_loop, probed,
                                     now)
        if (recheck is None and plan.is_idle() and not refused and self._statuses.queued == queued
                and ledger.settled() and ledger.version == quiet.ledger and all(map(_settled, pods))
                and not any(self._statuses.busy(r.key) for r in module_records)):
            self.quiet[node] = quiet
        waits = [next_poll]
        if recheck is not None:
            waits.append(recheck + 0.05)
        if plan.wait_s is not None:
            waits.append(plan.wait_s + 0.05)
        return min(waits)

    # --- reading the base -------------------------------------------------------------------------------
    async def _read(self, view: BaseView, now: float) -> None:
        ledger = view.ledger
        token = ledger.begin_read()
        try:
            bizs = await self._writes.reads(view.heartbeat).query_all_biz(view.heartbeat)
        except TunnelError as exc:
            log.info("queryAllBiz of %s failed: %s", view.node, clean(exc, MAX_LOG_TEXT), extra={"node": view.node})
            self.read_at[view.node] = now
            ledger.read_failed(clean(exc, MAX_LOG_TEXT))
            return
        self._registry.answered(view.node)
        self.read_at[view.node] = now
        before = dict(ledger.bizs or {})
        if ledger.apply_read(token, bizs):
            self.log_changes(view.node, before, ledger.bizs or {})

    def log_changes(self, node: str, before: Mapping[BizKey, BizInfo], after: Mapping[BizKey, BizInfo]) -> None:
        for key, info in after.items():
            old = before.get(key)
            if old is None or old.state is not info.state:
                record = info.last_record
                detail = f" ({record.reason}: {record.message})" if record and (record.reason or record.message) else ""
                self._bizlog.add(node, key.name, key.version, f"state {info.state.value}{detail}")
        for key in before:
            if key not in after:
                self._bizlog.add(node, key.name, key.version, "no longer on the base")

    def _seed(self, record: PodRecord, ledger: BaseLedger, now: float) -> None:
        """Read back what the pod's status remembers (a restart or a takeover lost it from memory): failed installs
        resume their backoff, the URL a running biz came from is known."""
        if record.seeded or ledger.bizs is None:
            return
        record.seeded = True
        specs = {s.name: s for s in record.facts(self._cfg.url_policy).modules.bizs}
        for status in (record.pod.get("status") or {}).get("containerStatuses") or []:
            spec = specs.get(str(status.get("name")))
            if spec is None:
                continue
            state = status.get("state") or {}
            waiting = state.get("waiting") or {}
            attempts = int(status.get("restartCount") or 0)
            if waiting.get("reason") == REASON_INSTALL_FAILED and spec.key not in ledger.bizs:
                failed = ((status.get("lastState") or {}).get("terminated") or {}).get("finishedAt")
                ledger.seed_failure(spec.key, max(attempts, 1), str(waiting.get("message") or ""),
                                    now + BIZ_INSTALL.delay(max(attempts, 1)), _iso_to_ms(failed) or now_ms())
            image_id = str(status.get("imageID") or "")
            if "running" in state and image_id:
                ledger.seed_url(spec.key, image_id)

    def _deadline(self, record: PodRecord, now: float) -> float | None:
        """When a terminating pod's grace period ends, measured on the local clock from when it was first seen
        terminating (never comparing the apiserver's deletionTimestamp with this host's clock)."""
        pod = record.pod
        if not is_terminating(pod):
            return None
        if record.terminating_since is None:
            record.terminating_since = now
        grace = pod["metadata"].get("deletionGracePeriodSeconds")
        grace_s = float(grace) if isinstance(grace, int | float) else 30.0
        return record.terminating_since + grace_s

    # --- pods -------------------------------------------------------------------------------------------
    def _leave_alone(self, node: str, record: PodRecord) -> None:
        """A non-module pod bound to a vnode: one clear condition and a Warning, nothing else (marking it Failed
        would make its controller recreate it forever)."""
        if record.not_module_done or is_terminal(record.pod):
            return
        record.not_module_done = True
        patch = not_a_module_condition(record.pod, now_iso())
        if patch is not None:
            self._statuses.want(record, node, patch)

    async def _finalize(self, scope: VnodeScope, key: str) -> None:
        namespace, name = key.split("/", 1)
        record = self._index.get(key)
        body: dict[str, Any] = {"gracePeriodSeconds": 0}
        if record is not None and record.uid:
            body["preconditions"] = {"uid": record.uid}
        try:
            await scope.delete_pod(namespace, name, body)
        except ApiError as exc:
            if not (exc.is_not_found or exc.is_conflict):
                raise

    async def _force_finalize(self, scope: VnodeScope, view: BaseView, key: str) -> None:
        """The grace period is over and the uninstall has not succeeded: remove the pod anyway (a StatefulSet must be
        able to replace it); its biz stays tracked, and its uninstall is retried with backoff."""
        record = self._index.get(key)
        if record is not None:
            leftover = [str(s.key) for s in record.facts(self._cfg.url_policy).modules.bizs
                        if s.key in (view.ledger.bizs or {})]
            message = (f"the grace period ended before {', '.join(leftover) or 'its bizs'} left base {view.node}; "
                       "the pod is removed and the uninstall is retried with backoff")
            scope.warning(record.pod, "BizUninstallTimeout", message)
            log.warning("%s: %s", key, message, extra={"node": view.node, "pod": key})
        await self._finalize(scope, key)

    def _statuses_for(self, view: BaseView, records: list[PodRecord], readiness: BaseReadiness,
                      refused: Mapping[str, str], outranked: frozenset[tuple[str, BizKey]],
                      crash_loop: frozenset[BizKey], probed: Mapping[str, Mapping[str, ContainerProbeState]],
                      now: float) -> float | None:
        """Hand the status each pod of the base should show to the status queue; returns when to look again for
        pods whose first status was deferred (``core.basestatus``)."""
        started = self._commands.install_started
        node = view.node
        views = []
        for record in records:
            facts = record.facts(self._cfg.url_policy)
            shown = record.shown(now)
            views.append(PodView(record.key, shown, facts.modules, facts.workload, facts.order,
                                 refused.get(record.key),
                                 tuple(started.get((node, s.key)) for s in facts.modules.bizs),
                                 probed.get(record.key) or {}))
        base = BaseFacts(view.heartbeat.identity, view.heartbeat.ip, _BASE_CONDITION[readiness])
        plan = base_pod_statuses(views, view.ledger, base, outranked=outranked, now=now, stamp=now_iso(),
                                 hold_of=self._ready_hold, crash_loop=crash_loop)
        for record in records:
            desired = plan.wanted.get(record.key)
            if desired is not None:
                self._statuses.want(record, node, desired)
        return plan.recheck_s

    def _probe(self, record: PodRecord, shown: Mapping[str, Any], view: BaseView,
               now: float) -> dict[str, ContainerProbeState]:
        """Bring the pod's probes up to date with what the base says of its bizs; their verdicts for its status."""
        facts = record.facts(self._cfg.url_policy)
        pod = record.pod
        if not facts.probes or is_terminal(pod):
            if record.probed:
                self._probes.forget(record.key)
                record.probed = False
            return {}
        bizs = view.ledger.bizs or {}
        wall = time.time()
        statuses = {str(c.get("name")): c for c in (shown.get("status") or {}).get("containerStatuses") or []}
        pod_ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in (shown.get("status") or {}).get("conditions") or [])
        inputs: dict[str, ContainerInput] = {}
        for spec in facts.modules.bizs:
            probes = facts.probes.get(spec.name)
            if probes is None:
                continue
            info = bizs.get(spec.key)
            status = statuses.get(spec.name) or {}
            activated_at: float | None = None
            if info is not None and info.state is BizState.ACTIVATED:
                # Since when it runs: its ACTIVATED record, else the start its pod shows (a 2.1.6 base sends records
                # without times; the pod status survives a restart or a takeover), else when this replica saw it.
                # Worked out once per activation: the probes take another value for another start of the biz.
                at_ms = info.time_entered(BizState.ACTIVATED)
                if at_ms is None:
                    at_ms = _iso_to_ms(((status.get("state") or {}).get("running") or {}).get("startedAt"))
                seen = record.activated_seen.get(spec.name)
                if seen is None or seen[0] != at_ms:
                    start = now if at_ms is None else min(now, now - (wall - at_ms / 1000))
                    seen = record.activated_seen[spec.name] = (at_ms, start)
                activated_at = seen[1]
            else:
                record.activated_seen.pop(spec.name, None)
            inputs[spec.name] = ContainerInput(probes, activated_at,
                                               shown_ready=pod_ready and bool(status.get("ready")),
                                               shown_started=bool(status.get("started")))
        self._probes.sync(record.key, record.uid, view.heartbeat.ip, inputs, terminating=is_terminating(pod))
        record.probed = True
        return self._probes.state(record.key)
