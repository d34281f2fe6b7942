"""The node controller: one virtual Node per live base, kept the way a kubelet keeps its own Node.

Level-based: ``reconcile(node)`` re-reads the base view and the cached Node and writes only differences, and only
for vnodes this replica holds (``LeaseKeeper.may_write``). A base heard for the first time is claimed by creating
its Lease (atomic across replicas), then its Node is created with its status (two writes per new base).

Readiness follows the base like a kubelet's Ready follows the kubelet: a silent base turns Ready to Unknown (the
node-lifecycle controller then taints it unreachable and evicts); a base that says DEACTIVATED (graceful shutdown)
turns Ready to False with reason ``BaseDeactivated`` and a not-ready taint at once; either comes back to True when
the base does. Only after the dead window is a silent base's Node deleted. A Node deleted by hand is recreated
while its base lives. Liveness counts heartbeats heard by this replica and answers of the base's arklet: the
owner probes a base it has not heard for ``VKP_BASE_PROBE_AFTER`` (its heartbeats may be going to another
replica behind the same Service), so a base is Ready as long as it answers, whichever replica it heartbeats to
(the reads: ``controllers.health``).

A takeover never deletes a Node at once (issue 27): the base's silence counts from what this replica saw of its
Node (``BaseRegistry.adopted``), never from this replica's start, and the first reconcile that finds it past the
dead window asks the base first; only a probe that fails (or a base with no tunnel to ask through) lets the Node go.

Memory pressure follows the base's health (``core.resources``): the state of each held vnode is kept here, taken
from its Node's MemoryPressure condition the first time it is looked at after a start or a takeover, so hysteresis
holds across restarts; its changes are Normal Events, as the kubelet's (``NodeHasInsufficientMemory``,
``NodeHasSufficientMemory``). The pressure taint is the node-lifecycle controller's (``core.node``). It is as fresh
as the health answers: ``VKP_BASE_HEALTH_INTERVAL``, or sooner when an MQTT base publishes its health.

A change is written once. Until the informer delivers the event of vkprovider's own last write to a Node (its
resourceVersion, the apiserver's answer), the cache may show the Node as it was before that write: another manager
reacting to the same change (the TTL controller's annotation, the node-lifecycle controller's taint) writes in
between, and its event comes first. A pass that then derives the same metadata patch, or the same status, as the
write still unseen sends nothing (``_Unseen``; at most ``CREATED_TRUST_S``, for a watch that skips events); the
event of that write brings the next look. Anything else is written as usual.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from prometheus_client import Counter, Gauge

from vkprovider.config import NodeSettings
from vkprovider.controllers.bases import BaseRegistry, BaseView, Clock
from vkprovider.controllers.fence import Hold, VnodeScope, VnodeWrites, node_ref
from vkprovider.controllers.health import PROBE_EVERY_S, HealthReads
from vkprovider.controllers.queue import Requeue, WorkQueue
from vkprovider.core import node as vnode
from vkprovider.core import ownership as own
from vkprovider.core import resources
from vkprovider.core.grid import next_tick
from vkprovider.core.node import BaseReadiness
from vkprovider.kube.client import ApiError

log = logging.getLogger(__name__)

NODE_WRITES = Counter("vkprovider_node_writes_total", "Writes to Nodes.", ["kind"])
VNODES = Gauge("vkprovider_vnodes", "Vnodes this replica holds, by readiness.", ["ready"])
HEARTBEAT_AGE = Gauge("vkprovider_base_silence_max_seconds",
                      "The longest time since any held base was last heard (heartbeat or answer).")
for _kind in ("create", "meta", "status", "delete"):
    NODE_WRITES.labels(_kind)
for _ready in ("true", "false", "unknown"):
    VNODES.labels(_ready)

_READY_LABEL = {BaseReadiness.READY: "true", BaseReadiness.DEACTIVATED: "false", BaseReadiness.UNREACHABLE: "unknown"}
HEALTH_BEFORE_CREATE_S = 2.0  # how long a registration waits for the base's resources before creating its Node
CREATED_TRUST_S = 10.0  # how long a Node this replica created stands in for the informer's copy
# Registration is a few API round trips per base: many workers, so 1,000 new bases register concurrently (the kube
# facade bounds the requests in flight).
NODE_WORKERS = 256


@dataclass(slots=True)
class _Unseen:
    """vkprovider's last writes to a Node that the informer has not shown yet: the metadata patch and the status
    (without times) sent, and the resourceVersion of the newest answer (its event shows them all)."""

    version: str
    at: float
    meta: dict[str, Any] | None = None
    status: dict[str, object] | None = None


@dataclass(frozen=True, slots=True)
class _Synced:
    """The inputs of the last pass that found a Node in sync. The same Node object (the informer replaces it on
    every change), heartbeat and health objects (the registry keeps the old ones when a new one is equal) and
    readiness give the same outcome: a heartbeat-paced look at an unchanged base computes nothing."""

    node: Mapping[str, Any]
    heartbeat: object
    health: object
    readiness: BaseReadiness
    pressure: bool

    def holds(self, node: Mapping[str, Any], view: BaseView, readiness: BaseReadiness, pressure: bool) -> bool:
        return (self.node is node and self.heartbeat is view.heartbeat and self.health is view.health
                and self.readiness is readiness and self.pressure is pressure)


def iso_time(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


class VnodeClaims(Protocol):
    """What the node controller asks the Lease keeper besides the hold (the write port asks that)."""

    me: str

    def lease_exists(self, node: str) -> bool: ...

    def live_members(self) -> list[str]: ...

    def held_count(self) -> int: ...

    def held_nodes(self) -> list[str]: ...

    async def claim(self, node: str) -> bool: ...

    async def drop(self, node: str) -> None: ...


class NodeCache(Protocol):
    """The Node informer's cache."""

    def get(self, key: str) -> dict[str, Any] | None: ...

    def items(self) -> Iterable[dict[str, Any]]: ...


class NodeController:
    def __init__(
        self,
        settings: NodeSettings,
        registry: BaseRegistry,
        nodes: NodeCache,
        keeper: VnodeClaims,
        writes: VnodeWrites,
        node_config: vnode.NodeConfig,
        *,
        clock: Clock,
        wall: Callable[[], datetime] | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.nodes = nodes
        self.keeper = keeper
        self.writes = writes
        self.cfg = node_config
        self.clock = clock
        self.wall = wall or (lambda: datetime.now(UTC))
        self.started = clock()
        self.queue = WorkQueue("node", self.reconcile, workers=NODE_WORKERS)
        self._status_written: dict[str, float] = {}
        self._readiness: dict[str, BaseReadiness] = {}
        self._pressure: dict[str, bool] = {}  # memory pressure per held vnode (seeded from its Node)
        self._capacity_said: dict[str, str] = {}  # the unusable max-pods label last said per vnode (said once)
        self.health = HealthReads(settings, registry, writes, clock, answered=self.queue.add,
                                  done=self._health_read_done)
        self._unprobed: set[str] = set()  # taken over, and the base not asked yet: no deletion until it is
        self._synced: dict[str, _Synced] = {}  # what each Node was last found in sync with (no write needed)
        # Nodes this replica created that the informer has not shown yet (node -> (the answer, when)): a
        # reconcile queued during the create (the health answer) must not POST it again (docs/performance.md).
        self._created: dict[str, tuple[dict[str, Any], float]] = {}
        self._unseen: dict[str, _Unseen] = {}  # our writes the cache has not shown yet (module docstring)
        self.on_base_changed: list[Callable[[str], None]] = []

    # --- lifecycle -------------------------------------------------------------------------------
    async def run(self) -> None:
        """Reconcile every cached Node once, then whatever changes, until cancelled (a root task)."""
        for node in self.nodes.items():
            self.queue.add(node["metadata"]["name"])
        try:
            await asyncio.gather(self.queue.run(), self._gauges_forever())
        finally:
            self.health.cancel_all()

    def ready(self) -> bool:
        return self.queue.running

    def on_node_change(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        self._created.pop(key, None)  # the cache has caught up with our create (or the Node is gone)
        unseen = self._unseen.get(key)
        if unseen is not None and (new is None or (new.get("metadata") or {}).get("resourceVersion")
                                   == unseen.version):
            del self._unseen[key]  # our last write shows (events come in order: the earlier ones did too)
        if new is not None:
            if key not in self.registry:
                hb = vnode.heartbeat_from_node(new, self.settings.env)
                if hb is not None:
                    self.registry.known_from_node(hb)
            self.registry.shown(key, vnode.ready_status(new))  # what a takeover will count silence from
        self.queue.add(key)

    def on_gained(self, node: str) -> None:
        """A vnode taken over (a hand-over, a failover, a restart): adoption, not judgement. This replica may
        not have heard the base for a while (its heartbeats went to the replica that held it), so the Node's own
        Ready=True stands as the base's last word until a probe, asked at once, says otherwise; a Node not Ready
        counts the base silent from when this replica first saw it so (``BaseRegistry.adopted``). Whatever the
        silence, the Node is not deleted before that probe has been answered or has failed."""
        self._status_written.pop(node, None)
        self._synced.pop(node, None)
        self._pressure.pop(node, None)  # the previous holder kept the Node's condition: start from it
        current = self.nodes.get(node)
        view = self.registry.get(node)
        if view is None and current is not None:
            hb = vnode.heartbeat_from_node(current, self.settings.env)
            view = self.registry.known_from_node(hb) if hb is not None else None
        if view is not None:
            self.registry.adopted(node, vnode.ready_status(current) if current is not None else None)
            view.health_at = -1e18  # probe now: resources, and whether it is really alive
            self._unprobed.add(node)
        self.queue.add(node)

    def on_lost(self, node: str) -> None:
        self._unprobed.discard(node)
        self.health.cancel(node)
        self._readiness.pop(node, None)
        self._pressure.pop(node, None)
        self._capacity_said.pop(node, None)
        self._status_written.pop(node, None)
        self._synced.pop(node, None)
        self._created.pop(node, None)
        self._unseen.pop(node, None)

    def _notify(self, node: str) -> None:
        for callback in self.on_base_changed:
            callback(node)

    # --- reconcile -------------------------------------------------------------------------------
    async def reconcile(self, node: str) -> float | None:
        view = self.registry.get(node)
        current = self.nodes.get(node)
        now = self.clock()
        if current is None and node in self._created:
            created, at = self._created[node]
            if now - at < CREATED_TRUST_S:
                current = created
            else:
                del self._created[node]
        scope = self.writes.scope(node)
        hold = self.writes.hold(node)
        if hold is Hold.FENCED:
            scope.check()  # held, a renewal late: no writes until it lands, then look again
        if hold is Hold.LOST and not await self._maybe_claim(node, view, current, now):
            return None
        if view is None:
            if current is None:
                return None
            hb = vnode.heartbeat_from_node(current, self.settings.env)
            if hb is None:
                return None
            view = self.registry.known_from_node(hb)
        silent = view.silent_for(now)
        dead_after = self.settings.base_dead_after_s
        if silent > dead_after:
            if node in self._unprobed:  # taken over: ask the base before its Node goes (the probe re-queues)
                self.health.start(node)
                return PROBE_EVERY_S
            await self._delete(scope, current, f"base silent for {int(silent)}s")
            return None
        readiness = view.readiness(now, self.settings.base_unreachable_after_s)
        self.health.maybe(view, now)
        self._track_readiness(scope, view, readiness, current)
        pressure = self._track_pressure(scope, view, readiness, current)
        scope.check()
        synced = self._synced.get(node)
        if current is not None and synced is not None and synced.holds(current, view, readiness, pressure) and not (
                now - self._status_written.get(node, now) >= self.settings.node_status_refresh_s):
            return self._next_look(node, view, readiness, now, silent)  # nothing changed since the last pass
        self._synced.pop(node, None)
        self._say_capacity_problem(scope, view)
        stamp = iso_time(self.wall())
        desired = vnode.node_status(view.heartbeat, view.health, self.cfg, readiness=readiness, silent_for_s=silent,
                                    unreachable_after_s=self.settings.base_unreachable_after_s,
                                    memory_pressure=pressure)
        if current is None:
            if view.health is None and readiness is BaseReadiness.READY:
                # Registering: ask the base for its resources first, so the Node is created with its capacity
                # (one write) instead of created and then patched when the answer comes (two).
                await self.health.read(view.node, HEALTH_BEFORE_CREATE_S)
                # everything may have moved during the wait: derive again
                view, now = self.registry.get(node) or view, self.clock()
                scope.check()
                silent = view.silent_for(now)
                readiness = view.readiness(now, self.settings.base_unreachable_after_s)
                pressure = self._track_pressure(scope, view, readiness, None)
                desired = vnode.node_status(view.heartbeat, view.health, self.cfg, readiness=readiness,
                                            silent_for_s=silent,
                                            unreachable_after_s=self.settings.base_unreachable_after_s,
                                            memory_pressure=pressure)
            current = await self._create(scope, view, vnode.with_times(desired, None, stamp), readiness)
            self._pressure[node] = pressure
            if self.nodes.get(node) is None:
                self._created[node] = (current, self.clock())
            self._status_written[node] = now
        else:
            await self._sync_meta(scope, view, current, readiness, stamp)
            status = current.get("status") or {}
            last = self._status_written.get(node)
            refresh_due = last is not None and now - last >= self.settings.node_status_refresh_s
            if (vnode.status_differs(desired, status) or refresh_due) and not self._written_unseen(
                    node, "status", desired, now):
                body = vnode.with_times(desired, status, stamp)
                answer = await scope.patch_node_status({"status": body})
                NODE_WRITES.labels("status").inc()
                self._status_written[node] = now
                self._sent(node, answer, now, status=desired)
            else:
                if last is None:
                    self._status_written[node] = now
                if current is self.nodes.get(node):  # nothing written: this Node is in sync with this view
                    self._synced[node] = _Synced(current, view.heartbeat, view.health, readiness, pressure)
        return self._next_look(node, view, readiness, now, silent)

    def _next_look(self, node: str, view: BaseView, readiness: BaseReadiness, now: float, silent: float) -> float:
        """When this vnode needs looking at again with no event: a refresh, a silence turning into
        unreachable, a probe, the dead window or the next health read."""
        dead_after = self.settings.base_dead_after_s
        waits = [self.settings.node_status_refresh_s - (now - self._status_written.get(node, now))]
        if readiness is BaseReadiness.READY:
            waits.append(self.settings.base_unreachable_after_s - silent + 0.2)
            waits.append(self.health.probe_after() - silent + 0.2)
        else:
            waits.append(dead_after - silent + 0.5)
            waits.append(PROBE_EVERY_S)
        if not self.health.pending(node):  # a read waiting or under way says when it is done (``_health_read_done``)
            waits.append(self.settings.base_health_interval_s - (now - view.health_at))
        return max(min(waits), 0.2)

    async def _maybe_claim(self, node: str, view: BaseView | None, current: Mapping[str, Any] | None,
                           now: float) -> bool:
        """Take a vnode nobody holds: a base heard for the first time (no Lease yet), or a Node left without a
        Lease (its preferred replica claims it). Held by somebody else: not ours."""
        if self.keeper.lease_exists(node):
            return False
        heard = view is not None and view.last_heard is not None and not view.deactivated
        if not heard:
            if current is None:
                return False
            if own.rendezvous(node, self.keeper.live_members()) != self.keeper.me:
                return False
        if self.keeper.held_count() >= self.settings.max_vnodes:
            log.warning("not registering %s: this replica holds VKP_MAX_VNODES=%d vnodes", node,
                        self.settings.max_vnodes, extra={"node": node})
            return False
        if view is not None and view.health is None and heard:
            self.health.start(view.node)  # the Node is created with the answer: ask while the Lease is written
        try:
            return await self.keeper.claim(node)
        except ApiError as exc:
            raise Requeue(f"claiming the lease of {node} failed: {exc}") from exc

    def _track_readiness(self, scope: VnodeScope, view: BaseView, readiness: BaseReadiness,
                         current: Mapping[str, Any] | None) -> None:
        node = view.node
        before = self._readiness.get(node)
        if before is None:
            # First look after a start or a takeover: compare with what the Node says, so a takeover of a Ready
            # node raises no event and a base that came back while nobody watched does.
            shown = vnode.ready_status(current)
            before = (BaseReadiness.READY if shown == "True" else BaseReadiness.DEACTIVATED if shown == "False"
                      else BaseReadiness.UNREACHABLE if shown == "Unknown" else None)
        self._readiness[node] = readiness
        if before == readiness:
            return
        if before is not None or readiness is not BaseReadiness.READY:
            ref = node_ref(node)
            if readiness is BaseReadiness.READY:
                view.ledger.retry_now()
                scope.normal(ref, "NodeReady", f"base {view.heartbeat.identity} is back")
                log.info("vnode %s Ready: base %s is back", node, view.heartbeat.identity, extra={"node": node})
            else:
                why = ("the base said DEACTIVATED (shutting down)" if readiness is BaseReadiness.DEACTIVATED
                       else f"no heartbeat or answer from the base for more than "
                            f"{self.settings.base_unreachable_after_s:g}s")
                reason = "BaseDeactivated" if readiness is BaseReadiness.DEACTIVATED else "BaseUnreachable"
                scope.warning(ref, "NodeNotReady", f"{reason}: {why}")
                log.info("vnode %s not ready (%s): %s", node, reason, why, extra={"node": node})
        if readiness is BaseReadiness.READY:
            view.ledger.request_read()  # it was away: it may have restarted and lost its bizs
        self._notify(node)

    def _track_pressure(self, scope: VnodeScope, view: BaseView, readiness: BaseReadiness,
                        current: Mapping[str, Any] | None) -> bool:
        """The vnode's memory pressure now (``core.resources.memory_pressure``), from what it was: the last pass's
        state, or after a start or a takeover what its Node says. A base that is not Ready keeps its state (its
        condition shows Unknown meanwhile). The state is remembered only once a Node carries it: with no Node in
        the cache (one being created, or one the cache does not show yet) it is worked out and not kept, so a Node
        that turns out to exist is read, not overruled; ``reconcile`` keeps what a Node it creates says."""
        node = view.node
        before = self._pressure.get(node)
        if before is None:
            before = resources.pressure_shown(current)
        if readiness is not BaseReadiness.READY:
            if current is not None:
                self._pressure[node] = before
            return before
        limits = self.settings.metaspace_pressure
        after = resources.memory_pressure(before, view.health, limits)
        if current is not None:
            self._pressure[node] = after
        if after != before:
            use = resources.describe_use(view.health)
            why = (f"{use}, above VKP_METASPACE_PRESSURE_HIGH={limits.high:g}" if after
                   else f"{use}, below VKP_METASPACE_PRESSURE_LOW={limits.low:g}" if view.health is not None
                   and resources.metaspace_use(view.health) is not None else use)
            scope.normal(node_ref(node), resources.PRESSURE_EVENT[after],
                         f"Node {node} status is now: {resources.PRESSURE_EVENT[after]} ({why})")
            log.info("vnode %s %s memory pressure: %s", node, "under" if after else "no longer under", why,
                     extra={"node": node})
        return after

    def _say_capacity_problem(self, scope: VnodeScope, view: BaseView) -> None:
        """A base whose own max-pods label cannot be used gets a Warning Event once (per value it sends)."""
        capacity = resources.pod_capacity(view.heartbeat, self.cfg.max_pods_by_base, self.cfg.max_pods)
        node = view.node
        if capacity.problem == self._capacity_said.get(node):
            return
        if capacity.problem is None:
            self._capacity_said.pop(node, None)
            return
        self._capacity_said[node] = capacity.problem
        message = f"{capacity.problem}: the vnode's pod capacity is {capacity.pods} ({capacity.source})"
        scope.warning(node_ref(node), "InvalidMaxPods", message)
        log.warning("vnode %s: %s", node, message, extra={"node": node})

    def _health_read_done(self, node: str) -> None:
        """A health read ended, whatever its outcome: look again (the next read's time, or the takeover's question
        answered or failed)."""
        self._unprobed.discard(node)
        self.queue.add(node)

    async def _create(self, scope: VnodeScope, view: BaseView, status: dict[str, object],
                      readiness: BaseReadiness) -> dict[str, Any]:
        body = vnode.new_node(view.heartbeat, self.cfg, status, readiness)
        try:
            created: dict[str, Any] = await scope.create_node(body)
        except ApiError as exc:
            if exc.is_already_exists:
                raise Requeue("node exists but is not cached yet") from exc
            raise
        NODE_WRITES.labels("create").inc()
        log.info("registered vnode %s for base %s", view.node, view.heartbeat.identity, extra={"node": view.node})
        scope.normal(created, "RegisteredNode", f"Node {view.node} registered by vkprovider {self.keeper.me}")
        return created

    async def _sync_meta(self, scope: VnodeScope, view: BaseView, current: dict[str, Any],
                         readiness: BaseReadiness, stamp: str) -> None:
        """Labels, annotations, taints and a missing providerID in one merge patch (resourceVersion-guarded when
        taints change)."""
        md = current.get("metadata") or {}
        spec = current.get("spec") or {}
        labels = vnode.labels_to_patch(md.get("labels") or {}, vnode.node_labels(view.heartbeat, self.cfg))
        ann = vnode.annotations_to_patch(md.get("annotations") or {}, view.heartbeat, self.cfg)
        taints = vnode.taints_to_write(spec.get("taints") or [], self.cfg, readiness, stamp)
        wanted_id = vnode.provider_id(view.heartbeat.identity, self.cfg.env)
        provider_id = vnode.provider_id_to_set(spec.get("providerID"), wanted_id)
        if spec.get("providerID") not in (None, "", wanted_id):
            log.debug("vnode %s keeps its providerID %s (ours would be %s; a providerID is never changed)",
                      view.node, spec["providerID"], wanted_id, extra={"node": view.node})
        if not (labels or ann or taints is not None or provider_id):
            return
        patch: dict[str, Any] = {"metadata": {}}
        if labels:
            patch["metadata"]["labels"] = labels
        if ann:
            patch["metadata"]["annotations"] = ann
        if taints is not None:
            patch["metadata"]["resourceVersion"] = md.get("resourceVersion")
            patch["spec"] = {"taints": taints}
        if provider_id:
            patch.setdefault("spec", {})["providerID"] = provider_id
        sent = {**patch, "metadata": {k: v for k, v in patch["metadata"].items() if k != "resourceVersion"}}
        now = self.clock()
        if self._written_unseen(view.node, "meta", sent, now):
            return
        try:
            answer = await scope.patch_node(patch)
        except ApiError as exc:
            if exc.is_conflict:
                raise Requeue("node changed while updating its taints") from exc
            raise
        NODE_WRITES.labels("meta").inc()
        self._sent(view.node, answer, now, meta=sent)

    def _written_unseen(self, node: str, kind: str, what: Mapping[str, Any], now: float) -> bool:
        """Whether ``what`` (a metadata patch or a status) is what this replica last wrote of that kind and the
        cache has not shown yet (module docstring): then writing it again is the same write twice."""
        unseen = self._unseen.get(node)
        if unseen is None or now - unseen.at >= CREATED_TRUST_S:
            return False
        same = (unseen.meta == what) if kind == "meta" else (
            unseen.status is not None and not vnode.status_differs(dict(what), unseen.status))
        if same:
            log.debug("vnode %s: the %s written at resourceVersion %s is not in the cache yet; not written again",
                      node, kind, unseen.version, extra={"node": node})
        return same

    def _sent(self, node: str, answer: Any, now: float, *, meta: dict[str, Any] | None = None,
              status: dict[str, object] | None = None) -> None:
        """Remember a write the apiserver answered until the informer shows it (``on_node_change``)."""
        version = ((answer or {}).get("metadata") or {}).get("resourceVersion") if isinstance(answer, Mapping) \
            else None
        if not version:
            self._unseen.pop(node, None)
            return
        unseen = self._unseen.get(node)
        if unseen is None or now - unseen.at >= CREATED_TRUST_S:
            unseen = self._unseen[node] = _Unseen(str(version), now)
        unseen.version, unseen.at = str(version), now
        if meta is not None:
            unseen.meta = meta
        if status is not None:
            unseen.status = status

    async def _delete(self, scope: VnodeScope, current: Mapping[str, Any] | None, why: str) -> None:
        scope.check()
        node = scope.node
        log.info("deleting vnode %s: %s", node, why, extra={"node": node})
        if current is not None:
            scope.normal(dict(current), "RemovingNode", f"Node {node}: {why}")
            await scope.delete_node()
            NODE_WRITES.labels("delete").inc()
        await self.keeper.drop(node)
        self.registry.forget(node)
        self._status_written.pop(node, None)
        self._synced.pop(node, None)
        self._created.pop(node, None)
        self._unseen.pop(node, None)
        self._readiness.pop(node, None)
        self._pressure.pop(node, None)
        self._capacity_said.pop(node, None)
        self._notify(node)

    async def _gauges_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(next_tick(loop.time(), 2.0) - loop.time())  # on the grid (``core.grid``)
            counts = {"true": 0, "false": 0, "unknown": 0}
            oldest = 0.0
            now = self.clock()
            for node in self.keeper.held_nodes():
                view = self.registry.get(node)
                if view is None:
                    continue
                counts[_READY_LABEL[view.readiness(now, self.settings.base_unreachable_after_s)]] += 1
                oldest = max(oldest, view.silent_for(now))
            for label, count in counts.items():
                VNODES.labels(label).set(count)
            HEARTBEAT_AGE.set(oldest)
