"""Clocks over the cluster: when each pod was created, bound and Running, when each vnode turned Ready, who holds each
vnode Lease, how often Ready flips; and the waits the scenarios use.

Why it exists: a scenario's latencies are measured from the cluster's own events as a watch shows them (an
``Informer`` per kind, timestamped on arrival with the monotonic clock), the way a user of the cluster would see
them, never from vkprovider's logs or its own view. Waits poll a condition with a bound (``until``), never sleep a
guessed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from vkprovider.kube.client import Kube
from vkprovider.kube.informer import Informer


class PodClock:
    """When each pod of a namespace was first seen, bound to a node, and Running+Ready (monotonic seconds)."""

    def __init__(self, kube: Kube, namespace: str, on_bound: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.on_bound = on_bound  # called once per pod, when it is first seen bound
        self.created: dict[str, float] = {}
        self.bound: dict[str, float] = {}
        self.running: dict[str, float] = {}
        self.version: dict[str, str] = {}
        self.placed: dict[str, tuple[str, str]] = {}  # pod -> (node, biz name)
        self.alive: set[str] = set()
        self.informer = Informer(kube, f"/api/v1/namespaces/{namespace}/pods", on_change=self._seen,
                                 page_size=1000)

    def _seen(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        now = time.monotonic()
        if new is None:
            self.alive.discard(key)
            return
        uid = key
        self.alive.add(uid)
        self.created.setdefault(uid, now)
        if new.get("spec", {}).get("nodeName") and uid not in self.bound:
            self.bound[uid] = now
            if self.on_bound is not None:
                self.on_bound(new)
        status = new.get("status") or {}
        if status.get("phase") == "Running" and any(
                c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []):
            self.running.setdefault(uid, now)
        container = new["spec"]["containers"][0]
        env = (container.get("env") or [{}])[0]
        self.version[uid] = str(env.get("value", ""))
        if new["spec"].get("nodeName"):
            self.placed[uid] = (new["spec"]["nodeName"], str(container.get("name", "")))

    def count_bound(self, keys: set[str] | None = None) -> int:
        return sum(1 for k in (keys or self.alive) if k in self.bound)

    def count_running(self, keys: set[str] | None = None) -> int:
        return sum(1 for k in (keys or self.alive) if k in self.running)

    def stages(self) -> dict[str, list[float]]:
        """When each pod alive now was first seen, bound and Running (``bench.metrics.progress_stalls``' input)."""
        return {stage: [seen[k] for k in self.alive if k in seen]
                for stage, seen in (("created", self.created), ("bound", self.bound), ("running", self.running))}


class NodeWatch:
    def __init__(self, kube: Kube, selector: str) -> None:
        self.ready_at: dict[str, float] = {}
        self.informer = Informer(kube, "/api/v1/nodes", label_selector=selector, on_change=self._seen,
                                 page_size=1000)

    def _seen(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        if new is None:
            self.ready_at.pop(key, None)
            return
        for cond in (new.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "Ready" and cond.get("status") == "True":
                self.ready_at.setdefault(key, time.monotonic())


class HolderWatch:
    """Who holds each vnode Lease, and when each one last changed holder (monotonic seconds)."""

    def __init__(self, kube: Kube, selector: str) -> None:
        self.holder: dict[str, str] = {}
        self.changed_at: dict[str, float] = {}
        self.changes = 0
        self.informer = Informer(kube, "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                                 label_selector=selector, on_change=self._seen, page_size=1000)

    def _seen(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        if new is None:
            self.holder.pop(key, None)
            return
        holder = str((new.get("spec") or {}).get("holderIdentity") or "")
        if self.holder.get(key) != holder:
            if key in self.holder:
                self.changes += 1
            self.holder[key] = holder
            self.changed_at[key] = time.monotonic()

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for holder in self.holder.values():
            found[holder] = found.get(holder, 0) + 1
        return found


class ReadyFlips:
    """Ready=True -> not True transitions of the objects an informer sees (vnodes or pods), counted from ``arm``."""

    def __init__(self, kube: Kube, path: str, selector: str | None = None) -> None:
        self.ready: dict[str, bool] = {}
        self.flips = 0
        self.armed = False
        self.informer = Informer(kube, path, label_selector=selector, on_change=self._seen, page_size=1000)

    def _seen(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        if new is None:
            self.ready.pop(key, None)
            return
        now_ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in (new.get("status") or {}).get("conditions") or [])
        if self.armed and self.ready.get(key) and not now_ready:
            self.flips += 1
        self.ready[key] = now_ready

    def arm(self) -> None:
        self.flips, self.armed = 0, True

    def count_ready(self) -> int:
        return sum(self.ready.values())


@contextlib.asynccontextmanager
async def running(informer: Informer) -> Any:
    task = asyncio.create_task(informer.run())
    try:
        await asyncio.wait_for(informer.synced.wait(), 60)
        yield informer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(predicate: Callable[[], bool], timeout_s: float, what: str,
                tick: Callable[[], None] | None = None, interval_s: float = 0.25) -> float:
    """Wait for ``predicate``; returns the monotonic time it became true; raises after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if tick is not None:
            tick()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout_s:.0f}s")
        await asyncio.sleep(interval_s)
    if tick is not None:
        tick()
    return time.monotonic()


async def gather_limited(jobs: list[Awaitable[Any]], limit: int) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(job: Awaitable[Any]) -> Any:
        async with gate:
            return await job

    return list(await asyncio.gather(*(one(j) for j in jobs)))
