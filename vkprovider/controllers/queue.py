"""A keyed work queue, as in controller-runtime: one key is handled by one worker at a time, many in parallel.

Adding a key that is already waiting does nothing; adding one that is being handled re-queues it once after the
handler returns (so no change is lost and no key runs twice at once); ``add_after`` schedules timers, on a shared
grid (``core.grid``). What a handler's outcome means is decided here, in one place (controller-runtime's
``reconcileHandler`` switch):

- it returns None: done (until the key is added again);
- it returns seconds: look at the key again after that long;
- it raises :class:`RequeueAfter`: look again after the delay it carries (e.g. a fenced vnode), no error counted;
- it raises :class:`Drop`: done, and forget the key's backoff (e.g. a vnode another replica holds), no error;
- it raises :class:`Requeue`: retry with the key's backoff, not logged as an error;
- it raises anything else: an error, logged and retried with per-key backoff (``core.backoff``).

Metrics: client-go's ``workqueue_*`` and controller-runtime's ``controller_runtime_*`` names, so existing
controller dashboards work unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from prometheus_client import Counter, Gauge, Histogram

from vkprovider.core.backoff import RECONCILE, Backoff
from vkprovider.core.grid import on_grid

log = logging.getLogger(__name__)

# client-go's workqueue metrics (controller-runtime labels them with name and controller, both the controller's
# name) and controller-runtime's reconcile metrics: the names controller dashboards already use.
_Q = ["name", "controller"]
_BUCKETS = (0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60)
QUEUE_DEPTH = Gauge("workqueue_depth", "Current depth of the workqueue.", _Q)
QUEUE_ADDS = Counter("workqueue_adds_total", "Total number of adds handled by the workqueue.", _Q)
QUEUE_RETRIES = Counter("workqueue_retries_total", "Total number of retries handled by the workqueue.", _Q)
QUEUE_WORK = Histogram("workqueue_work_duration_seconds",
                       "How long in seconds processing an item from the workqueue takes.", _Q, buckets=_BUCKETS)
QUEUE_LATENCY = Histogram("workqueue_queue_duration_seconds",
                          "How long in seconds an item stays in the workqueue before being requested.", _Q,
                          buckets=_BUCKETS)
QUEUE_UNFINISHED = Gauge("workqueue_unfinished_work_seconds",
                         "How many seconds of work has been done that is in progress and hasn't been observed by "
                         "work_duration. Large values indicate stuck threads.", _Q)
QUEUE_LONGEST = Gauge("workqueue_longest_running_processor_seconds",
                      "How many seconds has the longest running processor for the workqueue been running.", _Q)
RECONCILES = Counter("controller_runtime_reconcile_total", "Total number of reconciliations per controller.",
                     ["controller", "result"])
RECONCILE_ERRORS = Counter("controller_runtime_reconcile_errors_total",
                           "Total number of reconciliation errors per controller.", ["controller"])
RECONCILE_TIME = Histogram("controller_runtime_reconcile_time_seconds", "Length of time per reconciliation per "
                           "controller.", ["controller"], buckets=_BUCKETS)
ACTIVE_WORKERS = Gauge("controller_runtime_active_workers", "Number of currently used workers per controller.",
                       ["controller"])
MAX_WORKERS = Gauge("controller_runtime_max_concurrent_reconciles",
                    "Maximum number of concurrent reconciles per controller.", ["controller"])


class Requeue(Exception):
    """Raise from a handler to retry the key with backoff without logging an error."""


class RequeueAfter(Exception):
    """Raise from a handler (or anything it calls) to look at the key again after ``delay_s``; not an error."""

    def __init__(self, delay_s: float, reason: str = "") -> None:
        super().__init__(reason)
        self.delay_s = delay_s


class Drop(Exception):
    """Raise from a handler (or anything it calls) when the key is no longer this process's business: done, its
    backoff forgotten, not an error."""


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
        self._started_at: dict[str, float] = {}  # key being handled -> when
        self._depth = QUEUE_DEPTH.labels(name, name)
        self._adds = QUEUE_ADDS.labels(name, name)
        self._retries = QUEUE_RETRIES.labels(name, name)
        self._work = QUEUE_WORK.labels(name, name)
        self._latency = QUEUE_LATENCY.labels(name, name)
        self._active_workers = ACTIVE_WORKERS.labels(name)
        self._reconcile_time = RECONCILE_TIME.labels(name)
        self._results = {r: RECONCILES.labels(name, r) for r in ("success", "error", "requeue", "requeue_after")}
        self._errors = RECONCILE_ERRORS.labels(name)
        self._depth.set(0)
        MAX_WORKERS.labels(name).set(workers)
        QUEUE_UNFINISHED.labels(name, name).set_function(self._unfinished)
        QUEUE_LONGEST.labels(name, name).set_function(self._longest)

    def _unfinished(self) -> float:
        now = time.monotonic()
        return sum(now - t for t in self._started_at.values())

    def _longest(self) -> float:
        if not self._started_at:
            return 0.0
        return time.monotonic() - min(self._started_at.values())

    def add(self, key: str) -> None:
        if key in self._active:
            self._dirty.add(key)
            return
        if key in self._waiting:
            return
        self._waiting[key] = time.monotonic()
        self._queue.put_nowait(key)
        self._adds.inc()
        self._depth.set(len(self._waiting))

    def add_after(self, key: str, delay_s: float) -> None:
        """Add ``key`` after ``delay_s``, rounded up to the shared timer grid (``core.grid``: the keys due in one
        step come in one wake-up); an earlier timer for the key wins over a later one."""
        if delay_s <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        when = on_grid(loop.time() + delay_s, delay_s)
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

    @property
    def running(self) -> bool:
        """Whether the workers run."""
        return bool(self._tasks) and not any(t.done() for t in self._tasks)

    def active(self, key: str) -> bool:
        """Whether a worker is handling ``key`` now."""
        return key in self._active

    def waiting(self, key: str) -> bool:
        """Whether ``key`` waits for a worker, or for its timer."""
        return key in self._waiting or key in self._timers

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._worker(), name=f"{self.name}-worker-{i}") for i in range(self._workers)
        ]

    async def run(self) -> None:
        """Run the workers until cancelled (a root task: a worker never ends on its own; if one did, so does this)."""
        await self.start()
        try:
            await asyncio.gather(*self._tasks)
        finally:
            await self.stop()

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
            self._depth.set(len(self._waiting))
            self._latency.observe(time.monotonic() - added)
            self._active.add(key)
            started = time.monotonic()
            self._started_at[key] = started
            self._active_workers.inc()
            again: float | None = None
            try:
                again = await self._handler(key)
                self._failures.pop(key, None)
                self._results["success" if again is None else "requeue_after"].inc()
            except asyncio.CancelledError:
                raise
            except RequeueAfter as exc:
                again = exc.delay_s
                self._results["requeue_after"].inc()
            except Drop as exc:
                self._failures.pop(key, None)
                again = None
                self._results["success"].inc()
                log.debug("%s: %s dropped: %s", self.name, key, exc)
            except Exception as exc:
                failures = self._failures.get(key, 0) + 1
                self._failures[key] = failures
                again = self._backoff.delay(failures)
                self._retries.inc()
                if isinstance(exc, Requeue):
                    self._results["requeue"].inc()
                else:
                    self._results["error"].inc()
                    self._errors.inc()
                    log.warning("%s: %s failed (retry %d in %.1fs): %s", self.name, key, failures, again, exc,
                                exc_info=log.isEnabledFor(logging.DEBUG))
            finally:
                took = time.monotonic() - started
                self._work.observe(took)
                self._reconcile_time.observe(took)
                self._started_at.pop(key, None)
                self._active_workers.dec()
                self._active.discard(key)
                self._queue.task_done()
            if key in self._dirty:
                self._dirty.discard(key)
                self.add(key)
            elif again is not None:
                self.add_after(key, again)
