"""A keyed work queue, as in controller-runtime: one key is handled by one worker at a time, many in parallel.

Adding a key that is already waiting does nothing; adding one that is being handled re-queues it once after the
handler returns (so no change is lost and no key runs twice at once). A handler that raises is retried with
per-key exponential backoff; ``add_after`` schedules timers. Metrics use the ``workqueue_*`` names.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from prometheus_client import Counter, Gauge, Histogram

from vkprovider.core.backoff import RECONCILE, Backoff

log = logging.getLogger(__name__)

QUEUE_DEPTH = Gauge("workqueue_depth", "Keys waiting in the queue.", ["name"])
QUEUE_ADDS = Counter("workqueue_adds_total", "Keys added to the queue.", ["name"])
QUEUE_RETRIES = Counter("workqueue_retries_total", "Keys re-queued after a failed handler.", ["name"])
QUEUE_WORK = Histogram(
    "workqueue_work_duration_seconds",
    "How long handling one key takes.",
    ["name"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60),
)
QUEUE_LATENCY = Histogram(
    "workqueue_queue_duration_seconds",
    "How long a key waits before a worker takes it.",
    ["name"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60),
)


class Requeue(Exception):
    """Raise from a handler to retry the key with backoff without logging an error."""


class WorkQueue:
    def __init__(
        self,
        name: str,
        handler: Callable[[str], Awaitable[float | None]],
        *,
        workers: int = 8,
        backoff: Backoff = RECONCILE,
    ) -> None:
        """``handler(key)`` returns None, or seconds after which the key should be looked at again."""
        self.name = name
        self._handler = handler
        self._workers = workers
        self._backoff = backoff
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._waiting: dict[str, float] = {}
        self._active: set[str] = set()
        self._dirty: set[str] = set()
        self._failures: dict[str, int] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: list[asyncio.Task[None]] = []
        for metric in (QUEUE_ADDS, QUEUE_RETRIES):
            metric.labels(name)
        QUEUE_DEPTH.labels(name).set(0)

    def add(self, key: str) -> None:
        if key in self._active:
            self._dirty.add(key)
            return
        if key in self._waiting:
            return
        self._waiting[key] = time.monotonic()
        self._queue.put_nowait(key)
        QUEUE_ADDS.labels(self.name).inc()
        QUEUE_DEPTH.labels(self.name).set(len(self._waiting))

    def add_after(self, key: str, delay_s: float) -> None:
        """Add ``key`` after ``delay_s``; an earlier timer for the key wins over a later one."""
        if delay_s <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + delay_s
        old = self._timers.get(key)
        if old is not None and not old.cancelled() and old.when() <= when:
            return
        if old is not None:
            old.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def _fire(self, key: str) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def forget(self, key: str) -> None:
        self._failures.pop(key, None)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def __len__(self) -> int:
        return len(self._waiting)

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._worker(), name=f"{self.name}-worker-{i}") for i in range(self._workers)
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    async def _worker(self) -> None:
        while True:
            key = await self._queue.get()
            added = self._waiting.pop(key, time.monotonic())
            QUEUE_DEPTH.labels(self.name).set(len(self._waiting))
            QUEUE_LATENCY.labels(self.name).observe(time.monotonic() - added)
            self._active.add(key)
            started = time.monotonic()
            again: float | None = None
            try:
                again = await self._handler(key)
                self._failures.pop(key, None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures = self._failures.get(key, 0) + 1
                self._failures[key] = failures
                again = self._backoff.delay(failures)
                QUEUE_RETRIES.labels(self.name).inc()
                if not isinstance(exc, Requeue):
                    log.warning("%s: %s failed (retry %d in %.1fs): %s", self.name, key, failures, again, exc,
                                exc_info=log.isEnabledFor(logging.DEBUG))
            finally:
                QUEUE_WORK.labels(self.name).observe(time.monotonic() - started)
                self._active.discard(key)
                self._queue.task_done()
            if key in self._dirty:
                self._dirty.discard(key)
                self.add(key)
            elif again is not None:
                self.add_after(key, again)
