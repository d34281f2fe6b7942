"""The node controller: one virtual Node and one node Lease per live base.

Level-based: ``reconcile(node)`` re-reads the base view and the cached Node and writes only differences. A
silent base first turns Ready to Unknown (so Kubernetes' own node-lifecycle controller taints and evicts), and
only after the dead window is its Node deleted. A Node deleted by hand is recreated while its base lives.
Ownership of a vnode is its Lease: this replica touches only vnodes whose lease it holds or may take over.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import Counter, Gauge

from vkprovider.config import Settings
from vkprovider.controllers.bases import BaseRegistry, BaseView, Clock
from vkprovider.controllers.queue import Requeue, WorkQueue
from vkprovider.core import node as vnode
from vkprovider.kube.client import ApiError, Kube
from vkprovider.kube.events import EventRecorder
from vkprovider.kube.informer import Informer
from vkprovider.tunnels.base import Tunnel, TunnelError

log = logging.getLogger(__name__)

NODE_WRITES = Counter("vkprovider_node_writes_total", "Writes to Nodes and Leases.", ["kind"])
VNODES = Gauge("vkprovider_vnodes", "Vnodes this replica serves, by readiness.", ["ready"])
for _kind in ("create", "labels", "taints", "status", "delete", "lease_create", "lease_renew", "lease_takeover"):
    NODE_WRITES.labels(_kind)


def micro_time(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def iso_time(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(raw: str | None) -> datetime | None:
    if not raw:
        return None
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None


class NodeController:
    def __init__(
        self,
        settings: Settings,
        kube: Kube,
        registry: BaseRegistry,
        nodes: Informer,
        leases: Informer,
        tunnels: Mapping[str, Tunnel],
        events: EventRecorder,
        node_config: vnode.NodeConfig,
        *,
        clock: Clock,
        wall_clock: Any = None,
    ) -> None:
        self.settings = settings
        self.kube = kube
        self.registry = registry
        self.nodes = nodes
        self.leases = leases
        self.tunnels = tunnels
        self.events = events
        self.cfg = node_config
        self.clock = clock
        self.wall = wall_clock or (lambda: datetime.now(UTC))
        self.started = clock()
        self.queue = WorkQueue("node", self.reconcile, workers=max(settings.workers, 4))
        self._status_written: dict[str, float] = {}
        self._health_tasks: dict[str, asyncio.Task[None]] = {}
        self._lease_task: asyncio.Task[None] | None = None
        self.on_node_ready_change: list[Any] = []

    # --- ownership -------------------------------------------------------------------------------
    def owns(self, node: str) -> bool:
        """True if this replica holds the vnode's lease, or nobody validly holds it (so we may take it)."""
        lease = self.leases.get(f"{vnode.LEASE_NAMESPACE}/{node}")
        if lease is None:
            return True
        spec = lease.get("spec") or {}
        if spec.get("holderIdentity") in (None, "", self.settings.client_id):
            return True
        return self._lease_expired(spec)

    def _lease_expired(self, spec: Mapping[str, Any]) -> bool:
        renewed = parse_time(spec.get("renewTime"))
        duration = spec.get("leaseDurationSeconds") or self.settings.node_lease_duration_s
        return renewed is None or renewed + timedelta(seconds=duration) < self.wall()

    def reachable(self, view: BaseView) -> bool:
        return view.silent_for(self.clock()) <= self.settings.base_unreachable_after_s

    # --- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.queue.start()
        for node in self.nodes.items():
            self.queue.add(node["metadata"]["name"])
        self._lease_task = asyncio.create_task(self._renew_leases_forever(), name="lease-renewer")

    async def stop(self) -> None:
        if self._lease_task:
            self._lease_task.cancel()
        for task in self._health_tasks.values():
            task.cancel()
        await self.queue.stop()

    def on_node_change(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        self.queue.add(key)

    # --- reconcile -------------------------------------------------------------------------------
    async def reconcile(self, node: str) -> float | None:
        view = self.registry.get(node)
        current = self.nodes.get(node)
        now = self.clock()
        dead_after = self.settings.base_dead_after_s
        if view is None:
            # A vnode whose base we have not heard from since we started: give it the dead window to speak up.
            if current is None:
                return None
            if not self.owns(node):
                return None
            waited = now - self.started
            if waited < dead_after:
                return dead_after - waited + 0.5
            await self._delete(node, "base not seen since vkprovider started")
            return None
        silent = view.silent_for(now)
        if silent > dead_after:
            if current is not None and self.owns(node):
                await self._delete(node, f"base silent for {int(silent)}s")
            self.registry.forget(node)
            self._notify(node)
            return None
        if not self.owns(node):
            return self.settings.node_lease_renew_s
        reachable = silent <= self.settings.base_unreachable_after_s
        if reachable and view.unreachable_since is not None:
            view.unreachable_since = None
            self._notify(node)
        elif not reachable and view.unreachable_since is None:
            view.unreachable_since = now
            self._notify(node)
        self._maybe_poll_health(view, now)
        hb = view.heartbeat
        if current is None:
            current = await self._create(view)
        else:
            await self._sync_meta(view, current)
        desired = vnode.node_status(hb, view.health, self.cfg, reachable=reachable, silent_for_s=silent)
        status = current.get("status") or {}
        last = self._status_written.get(node)
        refresh_due = last is None or now - last >= self.settings.node_status_refresh_s
        if vnode.status_differs(desired, status) or refresh_due:
            body = vnode.with_times(desired, status, iso_time(self.wall()))
            await self.kube.patch(f"/api/v1/nodes/{node}/status", {"status": body}, kind="strategic")
            NODE_WRITES.labels("status").inc()
            self._status_written[node] = now
            last = now
        await self._ensure_lease(node, current)
        waits = [self.settings.node_status_refresh_s - (now - (last or now))]
        waits.append((self.settings.base_unreachable_after_s if reachable else dead_after) - silent + 0.5)
        return max(min(waits), 0.5)

    def _notify(self, node: str) -> None:
        for callback in self.on_node_ready_change:
            callback(node)

    def _maybe_poll_health(self, view: BaseView, now: float) -> None:
        if now - view.health_at < self.settings.base_health_interval_s or not self.reachable(view):
            return
        task = self._health_tasks.get(view.node)
        if task is not None and not task.done():
            return
        self._health_tasks[view.node] = asyncio.create_task(self._poll_health(view.node), name=f"health-{view.node}")

    async def _poll_health(self, node: str) -> None:
        view = self.registry.get(node)
        if view is None:
            return
        tunnel = self.tunnels.get(view.heartbeat.tunnel)
        if tunnel is None:
            return
        try:
            health = await tunnel.health(view.heartbeat)
        except TunnelError as exc:
            log.info("health of %s failed: %s", node, exc)
            view.health_at = self.clock()
            return
        if self.registry.health(node, health):
            self.queue.add(node)

    async def _create(self, view: BaseView) -> dict[str, Any]:
        body = vnode.new_node(view.heartbeat, self.cfg)
        try:
            created: dict[str, Any] = await self.kube.create("/api/v1/nodes", body)
        except ApiError as exc:
            if exc.is_already_exists:
                raise Requeue("node exists but is not cached yet") from exc
            raise
        NODE_WRITES.labels("create").inc()
        log.info("registered vnode %s for base %s", view.node, view.heartbeat.identity, extra={"node": view.node})
        self.events.normal(created, "RegisteredNode", f"Node {view.node} registered by vkprovider")
        return created

    async def _sync_meta(self, view: BaseView, current: dict[str, Any]) -> None:
        md = current.get("metadata") or {}
        labels = vnode.labels_to_patch(md.get("labels") or {}, vnode.node_labels(view.heartbeat, self.cfg))
        want_ann = vnode.node_annotations(view.heartbeat)
        have_ann = md.get("annotations") or {}
        ann = {k: v for k, v in want_ann.items() if have_ann.get(k) != v}
        if labels or ann:
            patch: dict[str, Any] = {"metadata": {}}
            if labels:
                patch["metadata"]["labels"] = labels
            if ann:
                patch["metadata"]["annotations"] = ann
            await self.kube.patch(f"/api/v1/nodes/{view.node}", patch, kind="merge")
            NODE_WRITES.labels("labels").inc()
        taints = (current.get("spec") or {}).get("taints") or []
        missing = vnode.missing_taints(taints, self.settings.env)
        if missing:
            patch = {"metadata": {"resourceVersion": md.get("resourceVersion")}, "spec": {"taints": taints + missing}}
            try:
                await self.kube.patch(f"/api/v1/nodes/{view.node}", patch, kind="merge")
            except ApiError as exc:
                if exc.is_conflict:
                    raise Requeue("node changed while adding taints") from exc
                raise
            NODE_WRITES.labels("taints").inc()

    async def _delete(self, node: str, why: str) -> None:
        log.info("deleting vnode %s: %s", node, why, extra={"node": node})
        await self.kube.delete(f"/api/v1/nodes/{node}")
        await self.kube.delete(f"/apis/coordination.k8s.io/v1/namespaces/{vnode.LEASE_NAMESPACE}/leases/{node}")
        NODE_WRITES.labels("delete").inc()
        self._status_written.pop(node, None)

    # --- leases ----------------------------------------------------------------------------------
    def _lease_path(self, node: str = "") -> str:
        base = f"/apis/coordination.k8s.io/v1/namespaces/{vnode.LEASE_NAMESPACE}/leases"
        return f"{base}/{node}" if node else base

    async def _ensure_lease(self, node: str, node_obj: Mapping[str, Any]) -> None:
        lease = self.leases.get(f"{vnode.LEASE_NAMESPACE}/{node}")
        now = micro_time(self.wall())
        if lease is None:
            uid = (node_obj.get("metadata") or {}).get("uid", "")
            body = vnode.new_lease(node, uid, self.settings.client_id, self.settings.node_lease_duration_s, now)
            try:
                await self.kube.create(self._lease_path(), body)
                NODE_WRITES.labels("lease_create").inc()
            except ApiError as exc:
                if not exc.is_already_exists:
                    raise
            return
        spec = lease.get("spec") or {}
        if spec.get("holderIdentity") != self.settings.client_id:
            patch = {
                "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                "spec": {"holderIdentity": self.settings.client_id, "acquireTime": now, "renewTime": now,
                         "leaseDurationSeconds": self.settings.node_lease_duration_s,
                         "leaseTransitions": int(spec.get("leaseTransitions") or 0) + 1},
            }
            try:
                await self.kube.patch(self._lease_path(node), patch, kind="merge")
            except ApiError as exc:
                if exc.is_conflict:
                    raise Requeue("lease changed while taking it over") from exc
                raise
            NODE_WRITES.labels("lease_takeover").inc()
            log.info("took over the lease of %s from %r", node, spec.get("holderIdentity"), extra={"node": node})

    async def _renew_leases_forever(self) -> None:
        interval = self.settings.node_lease_renew_s
        limit = asyncio.Semaphore(16)
        while True:
            started = self.clock()
            try:
                await self._renew_all(limit)
            except Exception:
                log.exception("lease renewal round failed")
            await asyncio.sleep(max(interval - (self.clock() - started), 0.1))

    async def _renew_all(self, limit: asyncio.Semaphore) -> None:
        async def renew(node: str) -> None:
            async with limit:
                body = {"spec": {"renewTime": micro_time(self.wall())}}
                try:
                    await self.kube.patch(self._lease_path(node), body, kind="merge")
                    NODE_WRITES.labels("lease_renew").inc()
                except ApiError as exc:
                    if exc.is_not_found:
                        self.queue.add(node)
                    else:
                        log.warning("renewing the lease of %s failed: %s", node, exc)

        ready = 0
        todo = []
        for view in self.registry:
            lease = self.leases.get(f"{vnode.LEASE_NAMESPACE}/{view.node}")
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.settings.client_id:
                continue
            if not self.reachable(view):
                continue
            ready += 1
            todo.append(renew(view.node))
        VNODES.labels("true").set(ready)
        VNODES.labels("false").set(len(self.registry) - ready)
        await asyncio.gather(*todo)
