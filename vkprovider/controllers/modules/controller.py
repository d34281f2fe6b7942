"""The module controller: pods bound to a vnode become bizs on its base, and biz states become pod status.

It is the wiring of four rooms, each in its own module:

- ``records``: one record per known pod, created and dropped in one place (``PodIndex.apply``);
- ``basepass``: one pass over a base (key = node name) considers every pod bound to it at once: read, plan,
  commands, finalization, statuses - level-based and fenced (``core.plan``);
- ``commands``: the pod → base direction, biz commands and their answers into the base's ledger;
- ``status``: the base → pod direction, a work queue keyed by pod that writes the status a pass wanted.

Every write goes through the vnode's write port (``controllers.fence``): only the replica holding the vnode's
Lease writes, whatever the caller does. The base's biz facts live in its ``BaseLedger`` (``core.basestate``),
the one place they change. This module turns informer and Lease events into work: which bases to look at again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from vkprovider.config import ModuleSettings
from vkprovider.controllers.bases import BaseRegistry
from vkprovider.controllers.bizlog import BizLog
from vkprovider.controllers.fence import Hold, VnodeWrites
from vkprovider.controllers.modules.basepass import BasePass, plans_alike
from vkprovider.controllers.modules.commands import CommandRunner
from vkprovider.controllers.modules.records import PodIndex, PodRecord
from vkprovider.controllers.modules.status import PodStatusQueue
from vkprovider.controllers.modules.stops import GracefulStops
from vkprovider.controllers.queue import WorkQueue
from vkprovider.core.basestatus import finished_containers
from vkprovider.core.containerconfig import ConfigError, Lookups, Ref, container_references, resolve
from vkprovider.core.model import BizInfo, BizKey, BizSpec
from vkprovider.core.module import is_module_pod, is_terminal, is_terminating
from vkprovider.core.probe import ProbeEvent
from vkprovider.probes import ProbeManager

log = logging.getLogger(__name__)


def _started(pod: Mapping[str, Any]) -> bool:
    """Whether the pod's status already shows it started (Running, or finished): then its start is not timed."""
    return str((pod.get("status") or {}).get("phase") or "Pending") != "Pending"


class ConfigRefs(Protocol):
    """The ConfigMaps and Secrets containers refer to (``kube.refs.RefStore``): reads, and waits for one to appear."""

    async def lookups(self, refs: Iterable[Ref], *, host_ips: tuple[str, ...] = (), pod_ips: tuple[str, ...] = (),
                      allocatable: Mapping[str, str] | None = None) -> Lookups: ...

    def wait_for(self, waiter: str, refs: Iterable[Ref]) -> None: ...

    def forget(self, waiter: str) -> None: ...


class ModuleController:
    """See the module docstring. ``revision_of`` and ``ready_hold`` are the release controller's answers (a pod's
    Deployment revision; why a pod of a batched release must not turn Ready yet)."""

    def __init__(self, cfg: ModuleSettings, registry: BaseRegistry, writes: VnodeWrites, *,
                 clock: Callable[[], float], bizlog: BizLog | None = None,
                 revision_of: Callable[[Mapping[str, Any]], int] = lambda pod: 0,
                 ready_hold: Callable[[Mapping[str, Any]], str | None] = lambda pod: None,
                 refs: ConfigRefs | None = None,
                 allocatable: Callable[[str], Mapping[str, str]] = lambda node: {}) -> None:
        """``refs``: where a container's ConfigMaps and Secrets are read (None: only literal configuration);
        ``allocatable(node)``: the vnode's allocatable (a resourceFieldRef without a limit reads it)."""
        self.cfg = cfg
        self.registry = registry
        self.writes = writes
        self.clock = clock
        self.bizlog = bizlog if bizlog is not None else BizLog(cfg.biz_log_lines)
        self.index = PodIndex(cfg.env)
        self.probes = ProbeManager(on_change=self._probe_changed, on_event=self._probe_event)
        self.statuses = PodStatusQueue(self.index, writes, clock=clock, on_written=self._written)
        self.refs = refs
        self.allocatable = allocatable
        self.configs: dict[str, dict[str, BizSpec]] = {}  # pod key -> container -> the spec last sent (baseline)
        self.commands = CommandRunner(registry, writes, self.bizlog, clock=clock, requeue=self._requeue,
                                      wanting=self.pods_wanting, releasing=self.pods_releasing,
                                      configure=self._configure)
        self.stops = GracefulStops(writes, cfg.url_policy, done=self._requeue)
        self.bases = BasePass(cfg, registry, self.index, writes, self.commands, self.statuses, self.bizlog,
                              self.probes, self.stops, clock=clock, revision_of=revision_of, ready_hold=ready_hold)
        self.queue = WorkQueue("module", self.bases.run, workers=cfg.workers)

    async def run(self) -> None:
        """Both directions' queues until cancelled (a root task); commands under way are cancelled with them."""
        try:
            await asyncio.gather(self.queue.run(), self.statuses.queue.run())
        finally:
            self.commands.cancel_all()
            self.stops.cancel_all()
            await self.probes.close()

    def ready(self) -> bool:
        return self.queue.running and self.statuses.queue.running

    async def start(self) -> None:
        """Start the queues' workers without a root task (tests drive the controller directly)."""
        await self.statuses.start()
        await self.queue.start()

    async def stop(self) -> None:
        self.commands.cancel_all()
        self.stops.cancel_all()
        await self.queue.stop()
        await self.statuses.stop()
        await self.probes.close()

    def _requeue(self, node: str) -> None:
        self.queue.add(node)

    # --- events -----------------------------------------------------------------------------------------
    def on_pod_change(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        change = self.index.apply(key, old, new)
        if change.gone is not None:
            self.stops.forget(key)
            self.configs.pop(key, None)
            if self.refs is not None:
                self.refs.forget(key)
            if change.gone.probed:
                self.probes.forget(key)
        if change.old_node and change.old_node != change.new_node:
            self.queue.add(change.old_node)
        record, node = change.record, change.new_node
        if record is None or node is None or self.writes.hold(node) is Hold.LOST:
            return
        if change.gone is not None:
            self.queue.add(node)  # another pod of the same name: a pass derives everything afresh
        elif change.echo is not None and plans_alike(change.echo.desired):
            return  # the watch shows what this replica wrote: nothing a pass reads has changed
        else:
            self.queue.add(node)
        if change.created and not _started(record.pod):
            record.unstarted_since = self.clock()

    def on_gained(self, node: str) -> None:
        """This replica now holds ``node``: learn the base's bizs before deciding anything (adoption)."""
        view = self.registry.get(node)
        if view is not None:
            view.ledger.forget()
        for record in self.index.on(node):
            record.seeded = False
        self.bases.forget(node)
        self.queue.add(node)

    def on_lost(self, node: str) -> None:
        """Another replica holds ``node`` now: stop every command in flight for it, send no status."""
        self.commands.cancel(node)
        view = self.registry.get(node)
        if view is not None:
            self.writes.release(view.heartbeat)
        for record in self.index.on(node):
            self.statuses.drop(record)
            record.unstarted_since = None
            record.seeded = False
            self.stops.forget(record.key)
            if record.probed:
                self.probes.forget(record.key)
                record.probed = False
        self.bases.forget(node)

    def on_base_changed(self, node: str) -> None:
        """The node controller saw the base's readiness change (pods' Ready follows) or a restart hint."""
        if self.writes.hold(node) is not Hold.LOST:
            self.queue.add(node)

    def on_pushed_bizs(self, node: str, bizs: Sequence[BizInfo]) -> None:
        """A biz list of unknown send time (MQTT: unasked, or the answer of a query that timed out): merged so it
        never undoes a command result newer than the last read (``BaseLedger.apply_untimed``)."""
        view = self.registry.get(node)
        if view is None or self.writes.hold(node) is not Hold.HELD:
            return
        before = dict(view.ledger.bizs or {})
        if view.ledger.apply_untimed(bizs):
            self.bases.log_changes(node, before, view.ledger.bizs or {})
        self.queue.add(node)

    async def _configure(self, node: str, spec: BizSpec) -> tuple[BizSpec, Callable[[str], str]] | ConfigError:
        """The spec an install sends: the container's args and envs resolved as the kubelet resolves them, from the
        newest pod wanting the biz (``core.containerconfig``); or the kubelet's CreateContainerConfigError."""
        pods = self.pods_wanting(node, spec.key)
        if not pods:
            return spec, _same
        pod = pods[-1]
        key = f"{pod['metadata'].get('namespace', '')}/{pod['metadata'].get('name', '')}"
        container = next((c for c in (pod.get("spec") or {}).get("containers") or [] if c.get("name") == spec.name),
                         None)
        if container is None:
            return spec, _same
        view = self.registry.get(node)
        base_ips = (view.heartbeat.ip,) if view is not None else ()
        refs = container_references(str(pod["metadata"].get("namespace") or ""), container)
        if refs and self.refs is None:
            return ConfigError("this vkprovider reads no ConfigMaps or Secrets")
        lookups = await self.refs.lookups(refs, host_ips=base_ips, allocatable=self.allocatable(node)) \
            if self.refs is not None else Lookups(host_ips=base_ips, allocatable=dict(self.allocatable(node)))
        resolved = resolve(pod, container, lookups)
        if isinstance(resolved, ConfigError):
            if self.refs is not None and resolved.waiting_for:
                self.refs.wait_for(key, resolved.waiting_for)
            return resolved
        if self.refs is not None:
            self.refs.forget(key)
        configured = spec.with_config(resolved.args, resolved.envs) if resolved.args or resolved.envs else spec
        self.configs.setdefault(key, {})[spec.name] = configured
        return configured, resolved.redact

    def on_refs_changed(self, waiters: frozenset[str]) -> None:
        """A ConfigMap or Secret that pods wait for appeared or changed: their installs are tried again now."""
        for key in waiters:
            record = self.index.get(key)
            if record is None or record.node is None:
                continue
            view = self.registry.get(record.node)
            if view is not None:
                for spec in record.facts(self.cfg.url_policy).modules.bizs:
                    view.ledger.retry_config(spec.key)
            self.bases.quiet.pop(record.node, None)
            self.queue.add(record.node)

    def _probe_changed(self, pod_key: str) -> None:
        """A probe changed what a pod shows (ready, started, a restart due): a pass over its base."""
        record = self.index.get(pod_key)
        if record is not None and record.node is not None:
            self.bases.quiet.pop(record.node, None)  # what the pass derives from the probes changed
            self.queue.add(record.node)

    def _probe_event(self, pod_key: str, uid: str, container: str, event: ProbeEvent) -> None:
        record = self.index.get(pod_key)
        if record is None or record.uid != uid or record.node is None:
            return
        scope = self.writes.scope(record.node)
        post = scope.warning if event.type == "Warning" else scope.normal
        post(record.pod, event.reason, event.message)

    # --- questions ----------------------------------------------------------------------------------------
    def _module_records(self, node: str) -> list[PodRecord]:
        return [r for r in self.index.on(node) if is_module_pod(r.pod)]

    def pods_on(self, node: str) -> list[dict[str, Any]]:
        """The pods bound to ``node`` (module pods and others)."""
        return [r.pod for r in self.index.on(node)]

    def pods_wanting(self, node: str, key: BizKey) -> list[dict[str, Any]]:
        """The live module pods of ``node`` that want ``key``, oldest first."""
        policy = self.cfg.url_policy
        records = [r for r in self._module_records(node) if not is_terminating(r.pod)
                   and any(s.key == key for s in r.facts(policy).modules.bizs)]
        return [r.pod for r in sorted(records, key=lambda r: (r.facts(policy).order, r.key))]

    def pods_releasing(self, node: str, key: BizKey) -> list[dict[str, Any]]:
        """The terminating module pods of ``node`` that wanted ``key``."""
        return [r.pod for r in self._module_records(node) if is_terminating(r.pod)
                and any(s.key == key for s in r.facts(self.cfg.url_policy).modules.bizs)]

    def baseline_for(self, node: str, cluster: str) -> list[BizSpec] | None:
        """The answer to a base's queryBaseline: None unless this replica holds its vnode (the holder answers)."""
        if self.writes.hold(node) is not Hold.HELD:
            return None
        return self.baseline(node, cluster)

    def baseline(self, node: str, cluster: str) -> list[BizSpec]:
        """The bizs the pods bound to ``node`` want (answer to queryBaseline from a base of ``cluster``): the same
        bizs the controller would install there, VKP_BIZ_NAMESPACE_POLICY included. The base installs them itself,
        so they count as in flight until a read shows them (``BaseLedger.start_baseline``): the controller sends no
        install that would race the base's own (arklet: "conflict, exist unfinished command")."""
        specs: dict[BizKey, BizSpec] = {}
        view = self.registry.get(node)
        superseded = view.ledger.superseded if view is not None else {}
        for record in self._module_records(node):
            pod = record.pod
            if is_terminating(pod) or is_terminal(pod):
                continue
            if self.cfg.namespace_policy.refusal(str(pod["metadata"].get("namespace") or ""), cluster) is not None:
                continue
            finished = finished_containers(pod)
            sent = self.configs.get(record.key, {})
            for spec in record.facts(self.cfg.url_policy).modules.bizs:
                if spec.name not in finished and spec.key not in superseded:
                    specs.setdefault(spec.key, sent.get(spec.name, spec))
        if view is not None and specs:
            view.ledger.start_baseline(specs.values(), self.clock())
            self.queue.add(node)
        return list(specs.values())

    def describe(self, node: str) -> dict[str, Any]:
        """What this replica knows and does for one vnode (the probes listener's /debug/vnodes/<node>)."""
        view = self.registry.get(node)
        now = self.clock()
        ledger = view.ledger if view is not None else None
        keys = sorted(self.index.keys_on(node))
        waiting = [r for r in (self.index.get(k) for k in keys) if r is not None and r.wanted is not None]
        return {
            "node": node,
            "held": self.writes.hold(node) is Hold.HELD,
            "base": None if view is None else {
                "identity": view.heartbeat.identity, "silentForS": round(view.silent_for(now), 1),
                "readiness": view.readiness(now, self.cfg.unreachable_after_s).value},
            "bizs": None if ledger is None or ledger.bizs is None else
            {str(k): b.state.value for k, b in ledger.bizs.items()},
            "inflight": {} if ledger is None else
            {str(k): {"kind": i.kind.value, "forS": round(now - i.started_at, 1)} for k, i in ledger.inflight.items()},
            "failures": {} if ledger is None else
            {str(k): {"attempts": f.attempts, "retryInS": round(f.retry_at - now, 1), "message": f.message}
             for k, f in ledger.failures.items()},
            "readInS": round(self.bases.read_at.get(node, now) + self.cfg.read_interval_s - now, 1),
            "pods": keys,
            "statusWriting": sorted(r.key for r in waiting if self.statuses.queue.active(r.key)),
            "statusWaiting": sorted(r.key for r in waiting if not self.statuses.queue.active(r.key)),
            "commandTasks": self.commands.running(node),
        }

    async def wait_idle(self, node: str) -> None:
        """Test helper: wait until no command task of ``node`` is running."""
        await self.commands.wait_idle(node)

    # --- after a status write -----------------------------------------------------------------------------
    def _written(self, record: PodRecord, desired: dict[str, Any]) -> None:
        """Warnings a pod's status stands for, posted once per pod (after the status that shows them landed)."""
        node = record.node
        if node is None:
            return
        pod = record.pod
        if not is_module_pod(pod):
            conditions = desired.get("conditions") or [{}]
            self._warn_once(record, "NotAModule", str(conditions[0].get("message") or ""))
            return
        modules = record.facts(self.cfg.url_policy).modules
        for problem in modules.problems:
            self._warn_once(record, problem.reason, f"container {problem.container}: {problem.message}")
        if not modules.bizs and not modules.problems:
            self._warn_once(record, "NoBizContainer", desired.get("message") or "")
        for status in desired.get("containerStatuses") or []:
            waiting = (status.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") == "BizNotAllowed":
                self._warn_once(record, "BizNotAllowed", f"container {status['name']}: {waiting.get('message', '')}")
        if desired.get("phase") == "Failed":
            self._warn_once(record, desired.get("reason") or "Failed", desired.get("message") or "")

    def _warn_once(self, record: PodRecord, reason: str, message: str) -> None:
        mark = f"{reason}:{message}"
        if mark in record.warned or record.node is None:
            return
        record.warned.add(mark)
        self.writes.scope(record.node).warning(record.pod, reason, message)


def _same(text: str) -> str:
    return text
