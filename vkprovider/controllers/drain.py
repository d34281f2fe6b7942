"""The drain controller: a vnode whose base is going is cordoned and its module pods are evicted, PodDisruptionBudgets
holding, before the base takes them down (the steps: ``core.drain``).

A base is going when it says so (a DEACTIVATED heartbeat or health answer: its readiness in the registry) or, with
VKP_BASE_POD_SELECTOR set, when the base's own pod in this cluster (selected by that label selector, matched to the
base by pod IP) begins terminating. Level-based: ``reconcile(node)`` re-reads the base, the Node and the pods; it
runs for a vnode this replica holds (its writes go through the vnode's write port) and is queued when the base's
readiness changes, the Node changes, or a pod of the vnode changes. Events: ``DrainStarted``, ``Evicted``,
``EvictionBlocked`` (a PodDisruptionBudget refused it; asked again), ``Drained``, ``DrainTimeout``,
``DrainCancelled`` (the base stayed; vkprovider's cordon is lifted).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import Counter

from vkprovider.controllers.bases import BaseRegistry
from vkprovider.controllers.fence import Hold, VnodeScope, VnodeWrites, node_ref
from vkprovider.controllers.queue import WorkQueue
from vkprovider.core.drain import CORDONED_BY, DrainPod, DrainState, drain_step
from vkprovider.core.module import is_module_pod, is_terminal, is_terminating, pod_key
from vkprovider.core.node import BaseReadiness
from vkprovider.kube.client import ApiError

log = logging.getLogger(__name__)

EVICTIONS = Counter("vkprovider_drain_evictions_total", "Evictions of module pods from vnodes being drained.",
                    ["result"])
for _result in ("evicted", "blocked", "gone", "failed"):
    EVICTIONS.labels(_result)


class NodeCache(Protocol):
    def get(self, key: str) -> dict[str, Any] | None: ...


@dataclass
class _Drain:
    started_at: float
    why: str
    refused_at: dict[str, float]
    reported: DrainState = DrainState.DRAINING


class DrainController:
    """See the module docstring. ``pods_on(node)`` gives the pods bound to a vnode (the module controller's)."""

    def __init__(self, registry: BaseRegistry, nodes: NodeCache, writes: VnodeWrites, *,
                 pods_on: Callable[[str], Iterable[Mapping[str, Any]]], clock: Callable[[], float],
                 unreachable_after_s: float, timeout_s: float, workers: int = 16) -> None:
        self._registry = registry
        self._nodes = nodes
        self._writes = writes
        self._pods_on = pods_on
        self._clock = clock
        self._unreachable_after_s = unreachable_after_s
        self._timeout_s = timeout_s
        self._drains: dict[str, _Drain] = {}
        self._base_pod_going: dict[str, str] = {}  # node -> why (its base's pod is terminating)
        self.queue = WorkQueue("drain", self.reconcile, workers=workers)

    async def run(self) -> None:
        await self.queue.run()

    # --- events -----------------------------------------------------------------------------------------
    def on_base_changed(self, node: str) -> None:
        self.queue.add(node)

    def on_node_change(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        if key in self._drains or _cordoned_by_us(new):
            self.queue.add(key)

    def on_pod_change(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        node = str(((new or old or {}).get("spec") or {}).get("nodeName") or "")
        if node in self._drains:
            self.queue.add(node)

    def base_pod_going(self, node: str, why: str | None) -> None:
        """The base's own pod began terminating (``why``), or that is over (None)."""
        if why is None:
            self._base_pod_going.pop(node, None)
        else:
            self._base_pod_going[node] = why
        self.queue.add(node)

    def on_lost(self, node: str) -> None:
        self._drains.pop(node, None)

    def draining(self, node: str) -> bool:
        return node in self._drains

    # --- reconcile --------------------------------------------------------------------------------------
    def _going(self, node: str) -> str | None:
        why = self._base_pod_going.get(node)
        if why is not None:
            return why
        view = self._registry.get(node)
        if view is not None and view.readiness(self._clock(), self._unreachable_after_s) is BaseReadiness.DEACTIVATED:
            return f"base {view.heartbeat.identity} said DEACTIVATED (shutting down)"
        return None

    async def reconcile(self, node: str) -> float | None:
        if self._writes.hold(node) is Hold.LOST:
            self._drains.pop(node, None)
            return None
        scope = self._writes.scope(node)
        scope.check()
        current = self._nodes.get(node)
        if current is None:
            self._drains.pop(node, None)
            return None
        now = self._clock()
        why = self._going(node)
        drain = self._drains.get(node)
        if why is not None and drain is None:
            drain = self._drains[node] = _Drain(now, why, {})
            log.info("draining vnode %s: %s", node, why, extra={"node": node})
            scope.normal(node_ref(node), "DrainStarted", f"{why}: cordoning the vnode and evicting its module pods "
                         f"(PodDisruptionBudgets hold; at most {self._timeout_s:g}s)")
        pods = [p for p in self._pods_on(node) if is_module_pod(p)]
        step = drain_step(going=why is not None, cordoned=bool((current.get("spec") or {}).get("unschedulable")),
                          cordoned_by_us=_cordoned_by_us(current),
                          pods=tuple(_drain_pod(p, drain) for p in pods),
                          started_at=drain.started_at if drain is not None else None, now=now,
                          timeout_s=self._timeout_s)
        if step.cordon:
            await scope.patch_node({"metadata": {"annotations": {CORDONED_BY: "true"}},
                                    "spec": {"unschedulable": True}})
        if step.uncordon:
            await scope.patch_node({"metadata": {"annotations": {CORDONED_BY: None}}, "spec": {"unschedulable": None}})
            scope.normal(node_ref(node), "DrainCancelled", "the base is serving again: the vnode is uncordoned")
        if step.state is DrainState.IDLE:
            self._drains.pop(node, None)
            return None
        assert drain is not None
        by_key = {pod_key(p): p for p in pods}
        for key in step.evict:
            pod = by_key.get(key)
            if pod is not None:
                await self._evict(scope, pod, drain, now)
        if step.state is not drain.reported and step.state in (DrainState.DRAINED, DrainState.TIMED_OUT):
            drain.reported = step.state
            if step.state is DrainState.DRAINED:
                scope.normal(node_ref(node), "Drained",
                             f"every module pod left the vnode in {now - drain.started_at:.1f}s")
            else:
                left = ", ".join(sorted(by_key)) or "-"
                scope.warning(node_ref(node), "DrainTimeout",
                              f"the drain stopped after {self._timeout_s:g}s; still on the vnode: {left}")
        return step.wait_s

    async def _evict(self, scope: VnodeScope, pod: Mapping[str, Any], drain: _Drain, now: float) -> None:
        md = pod.get("metadata") or {}
        key = pod_key(pod)
        try:
            await scope.evict_pod(str(md.get("namespace")), str(md.get("name")))
        except ApiError as exc:
            if exc.is_not_found:
                EVICTIONS.labels("gone").inc()
                return
            if exc.is_too_many_requests:  # a PodDisruptionBudget (or the apiserver's own limits)
                EVICTIONS.labels("blocked").inc()
                first = key not in drain.refused_at
                drain.refused_at[key] = now
                if first:
                    scope.warning(dict(pod), "EvictionBlocked", f"evicting it from {scope.node} would violate its "
                                  f"PodDisruptionBudget; asked again until the drain ends ({exc.message})")
                return
            EVICTIONS.labels("failed").inc()
            raise
        drain.refused_at.pop(key, None)
        EVICTIONS.labels("evicted").inc()
        scope.normal(dict(pod), "Evicted", f"evicted from {scope.node}: {drain.why}")


class BasePodWatch:
    """Turns the bases' own pods (VKP_BASE_POD_SELECTOR) into drain triggers: a base pod that begins terminating
    drains the vnode of the base heartbeating from its pod IP."""

    def __init__(self, registry: BaseRegistry, drain: DrainController) -> None:
        self._registry = registry
        self._drain = drain

    def on_pod_change(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        if new is None:
            return  # gone: the base went with it; its drain (if any) runs on until the base is back or its vnode goes
        ip = str((new.get("status") or {}).get("podIP") or "")
        if not ip:
            return
        going = is_terminating(new)
        for view in self._registry:
            if view.heartbeat.ip == ip:
                self._drain.base_pod_going(view.node, f"its base's pod {key} is terminating" if going else None)


def _cordoned_by_us(node: Mapping[str, Any] | None) -> bool:
    return bool((((node or {}).get("metadata") or {}).get("annotations") or {}).get(CORDONED_BY))


def _drain_pod(pod: Mapping[str, Any], drain: _Drain | None) -> DrainPod:
    key = pod_key(pod)
    owners = (pod.get("metadata") or {}).get("ownerReferences") or []
    daemon = any(o.get("kind") == "DaemonSet" and o.get("controller") for o in owners)
    unmanaged = not any(o.get("controller") for o in owners)
    return DrainPod(key, terminating=is_terminating(pod), terminal=is_terminal(pod), daemon=daemon,
                    unmanaged=unmanaged, refused_at=drain.refused_at.get(key) if drain is not None else None)

