"""Kubernetes Events for every biz operation and node transition, posted without ever slowing the caller.

Why it exists: Events are how users see what vkprovider did (``kubectl describe pod``), but a reconcile loop must
never wait on, or fail because of, an Event. :class:`EventRecorder` queues events (bounded; drops with a counter
when full), posts them from background workers, and aggregates repeats of the same (object, reason, message)
within a window by patching ``count`` and ``lastTimestamp`` instead of creating a new Event, like client-go's
event correlator. Events about cluster-scoped objects (Nodes) go to namespace ``default``, as kubelet's do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from prometheus_client import Counter

from vkprovider.core.sanitize import clean
from vkprovider.kube.client import ApiError, Kube

log = logging.getLogger(__name__)

EventType = Literal["Normal", "Warning"]

MAX_MESSAGE_CHARS = 1024
SPAM_BURST = 25
SPAM_REFILL_S = 300.0
DEFAULT_NAMESPACE = "default"

EVENTS_POSTED = Counter(
    "vkprovider_events_posted_total",
    "Kubernetes Events written, by type and action (created a new Event / aggregated into an existing one).",
    ["type", "action"],
)
EVENTS_DROPPED = Counter(
    "vkprovider_events_dropped_total",
    "Kubernetes Events not written, by reason (queue_full, error, no_loop, closed, spam: over the per-object rate, "
    "namespace_gone: its namespace is being deleted or gone).",
    ["reason"],
)
for _t in ("Normal", "Warning"):
    for _a in ("created", "aggregated"):
        EVENTS_POSTED.labels(_t, _a)
for _r in ("queue_full", "error", "no_loop", "closed", "spam", "namespace_gone"):
    EVENTS_DROPPED.labels(_r)


def timestamp(ts: float) -> str:
    """RFC 3339 in UTC with second precision, the format of core/v1 Event timestamps."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def object_reference(obj: Mapping[str, Any]) -> dict[str, str]:
    """The ``involvedObject`` for an object dict (kind, namespace, name, uid, apiVersion, resourceVersion)."""
    meta = obj.get("metadata") or {}
    ref = {
        "kind": obj.get("kind"),
        "apiVersion": obj.get("apiVersion"),
        "namespace": meta.get("namespace"),
        "name": meta.get("name"),
        "uid": meta.get("uid"),
        "resourceVersion": meta.get("resourceVersion"),
    }
    return {k: str(v) for k, v in ref.items() if v}


def event_namespace(ref: Mapping[str, str]) -> str:
    return ref.get("namespace") or DEFAULT_NAMESPACE


def truncate_message(message: str) -> str:
    """One clean line of at most MAX_MESSAGE_CHARS (messages may quote what a base sent)."""
    return clean(message, MAX_MESSAGE_CHARS)


@dataclass(slots=True)
class _Pending:
    ref: dict[str, str]
    type: EventType
    reason: str
    message: str
    at: float


@dataclass(slots=True)
class _Posted:
    namespace: str
    name: str
    count: int
    first: float
    last: float


class EventRecorder:
    """Fire-and-forget Event posting. ``record``/``normal``/``warning`` never block and never raise.

    Events are partitioned over ``workers`` queues by their aggregation key, so repeats of one event are handled
    in order by one worker and can be aggregated without races.
    """

    def __init__(self, kube: Kube, *, reporting_instance: str, component: str = "vkprovider",
                 queue_size: int = 1000, workers: int = 2, aggregate_window_s: float = 600.0,
                 cache_size: int = 4096, clock: Callable[[], float] = time.time) -> None:
        self._kube = kube
        self._component = component
        self._instance = reporting_instance[:128]
        self._window_s = aggregate_window_s
        self._cache_size = cache_size
        self._clock = clock
        n = max(1, workers)
        per_queue = max(1, queue_size // n)
        self._queues: list[asyncio.Queue[_Pending]] = [asyncio.Queue(per_queue) for _ in range(n)]
        self._tasks: list[asyncio.Task[None]] = []
        self._posted: OrderedDict[tuple[str, str, str, str], _Posted] = OrderedDict()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # object -> (tokens, at)
        self._closed = False

    # ---------------------------------------------------------------------------- recording

    def normal(self, obj: Mapping[str, Any], reason: str, message: str) -> None:
        self.record(obj, "Normal", reason, message)

    def warning(self, obj: Mapping[str, Any], reason: str, message: str) -> None:
        self.record(obj, "Warning", reason, message)

    def record(self, obj: Mapping[str, Any], type_: EventType, reason: str, message: str) -> None:
        """Queue an Event about ``obj`` (an object dict with kind/apiVersion/metadata). Never raises."""
        try:
            if self._closed:
                EVENTS_DROPPED.labels("closed").inc()
                return
            if not self._ensure_workers():
                EVENTS_DROPPED.labels("no_loop").inc()
                return
            ref = object_reference(obj)
            now = self._clock()
            if not self._allow(ref, now):
                EVENTS_DROPPED.labels("spam").inc()
                return
            pending = _Pending(ref, type_, reason, truncate_message(message), now)
            queue = self._queues[zlib.crc32(repr(self._key(pending)).encode()) % len(self._queues)]
            queue.put_nowait(pending)
        except asyncio.QueueFull:
            EVENTS_DROPPED.labels("queue_full").inc()
        except Exception:
            EVENTS_DROPPED.labels("error").inc()
            log.exception("could not queue an event")

    def _allow(self, ref: Mapping[str, str], now: float) -> bool:
        """client-go's spam filter: per object a burst of SPAM_BURST Events, then one per SPAM_REFILL_S (a base
        that flaps all day leaves a few Events, not thousands)."""
        key = ref.get("uid") or f"{ref.get('kind')}/{ref.get('namespace')}/{ref.get('name')}"
        tokens, at = self._buckets.pop(key, (float(SPAM_BURST), now))
        tokens = min(float(SPAM_BURST), tokens + (now - at) / SPAM_REFILL_S)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._buckets) > self._cache_size:
            self._buckets.popitem(last=False)
        return allowed

    async def run(self) -> None:
        """Run the posting workers until cancelled (a root task)."""
        if self._ensure_workers():
            await asyncio.gather(*self._tasks)

    async def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every event queued so far has been posted (or dropped)."""
        async with asyncio.timeout(timeout_s):
            for queue in self._queues:
                await queue.join()

    async def close(self, timeout_s: float = 5.0) -> None:
        """Post what is queued (for up to ``timeout_s``), then stop the workers."""
        self._closed = True
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                await self.flush(timeout_s)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    # ---------------------------------------------------------------------------- posting

    def _ensure_workers(self) -> bool:
        if self._tasks:
            return True
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return False
        self._tasks = [asyncio.create_task(self._work(q), name=f"event-recorder-{i}")
                       for i, q in enumerate(self._queues)]
        return True

    @staticmethod
    def _key(p: _Pending) -> tuple[str, str, str, str]:
        ident = p.ref.get("uid") or f"{p.ref.get('kind')}/{p.ref.get('namespace')}/{p.ref.get('name')}"
        return ident, p.type, p.reason, p.message

    async def _work(self, queue: asyncio.Queue[_Pending]) -> None:
        while True:
            pending = await queue.get()
            try:
                await self._post(pending)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, ApiError) and (exc.is_namespace_terminating or exc.is_not_found):
                    # The object's namespace is being deleted or gone (a burst of events queued for pods of a
                    # namespace just deleted): nobody can read them any more. Not an error worth a line each.
                    EVENTS_DROPPED.labels("namespace_gone").inc()
                    log.debug("event %s for %s/%s dropped: %s", pending.reason, pending.ref.get("kind"),
                              pending.ref.get("name"), exc)
                    continue
                EVENTS_DROPPED.labels("error").inc()
                log.warning("could not post event %s for %s/%s: %s", pending.reason,
                            pending.ref.get("kind"), pending.ref.get("name"), exc)
            finally:
                queue.task_done()

    async def _post(self, p: _Pending) -> None:
        key = self._key(p)
        seen = self._posted.get(key)
        if seen is not None and p.at - seen.last < self._window_s:
            try:
                await self._kube.patch(
                    f"/api/v1/namespaces/{seen.namespace}/events/{seen.name}",
                    {"count": seen.count + 1, "lastTimestamp": timestamp(p.at)},
                    kind="merge",
                )
            except ApiError as exc:
                if not exc.is_not_found:
                    raise
                # The Event expired (event TTL) or was deleted: start a new one.
            else:
                seen.count += 1
                seen.last = p.at
                self._posted.move_to_end(key)
                EVENTS_POSTED.labels(p.type, "aggregated").inc()
                return
        namespace = event_namespace(p.ref)
        base = p.ref.get("name") or "unknown"
        for attempt in range(2):
            name = f"{base}.{time.time_ns() + attempt:x}"
            body = self._event_body(p, namespace, name)
            try:
                await self._kube.create(f"/api/v1/namespaces/{namespace}/events", body)
            except ApiError as exc:
                if exc.is_already_exists and attempt == 0:
                    continue
                raise
            break
        self._posted[key] = _Posted(namespace, name, 1, p.at, p.at)
        self._posted.move_to_end(key)
        while len(self._posted) > self._cache_size:
            self._posted.popitem(last=False)
        EVENTS_POSTED.labels(p.type, "created").inc()

    def _event_body(self, p: _Pending, namespace: str, name: str) -> dict[str, Any]:
        ts = timestamp(p.at)
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": p.ref,
            "type": p.type,
            "reason": p.reason,
            "message": p.message,
            "count": 1,
            "firstTimestamp": ts,
            "lastTimestamp": ts,
            "source": {"component": self._component},
            "reportingComponent": self._component,
            "reportingInstance": self._instance,
        }
