"""The schedule of every probed container: which check runs when, at most so many at once, and what changed.

Why it exists: with 1,000 module pods that each have a 10 s readiness probe, vkprovider runs 100 checks a second.
A task (and a timer) per probe would cost memory and wake-ups for nothing; here one heap of due times, one loop
timer armed for the earliest (rounded up to a ``batch_s`` slice, 0.25 s: the checks due in one slice start together,
so one wake-up hands them out and their I/O overlaps) and a pool of at most ``max_concurrent`` runner tasks do all
of it (what that saves: docs/performance.md, "Measured reasons in the code").
The rules of each probe (delays, thresholds, gating, restarts) are
``core.prober``'s; this module only feeds them and runs the checks (``probes.check``).

API (all calls from the event loop's thread; none of them blocks):

- ``sync(pod_key, uid, pod_ip, containers, terminating=...)``: what the controller knows of a pod after a pass over
  its base: per container a :class:`ContainerInput` (its parsed probes, since when its biz is ACTIVATED in
  ``time.monotonic()`` seconds or None, and the ready/started its pod status shows). A new ``uid`` is a new pod:
  every probe of the old one is dropped. Returns whether the pod's shown state (ready, started, restart) changed,
  so the caller recomputes that status now;
- ``forget(pod_key)``: the pod is gone (deleted, or no longer this replica's): its checks stop, results in flight
  are dropped;
- ``state(pod_key)``: ``{container: ContainerProbeState}``; empty for a pod never synced;
- ``on_change(pod_key)`` (constructor): called when a check changed what the pod's status shows (ready, started,
  a restart due), never for a check that changed nothing (a failure below the threshold, a repeated success);
- ``on_event(pod_key, uid, container, ProbeEvent)`` (constructor, optional): kubelet's Events for the pod's
  containers: Unhealthy / ProbeWarning per check, Killing when a restart becomes due, and, once per container
  and pod uid, UnsupportedProbe for each probe that is not run (exec, unresolvable);
- ``close()``: stop the timer and the runners, close the HTTP session.

Rules: a check whose container restarted, whose pod was forgotten or replaced, or whose probe may no longer run
(the pod is being deleted, a restart is due) while it was in flight does not count. A check that raises (a bug, not
a failed probe) is logged and skipped, as kubelet throws away a prober error. A callback that raises is logged.
Exec probes are never run: the container behaves as if it had no such probe (readiness follows ACTIVATED).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

from prometheus_client import Counter, Histogram

from vkprovider.core.grid import round_up
from vkprovider.core.probe import (
    REASON_UNSUPPORTED,
    ContainerProbes,
    ProbeHandler,
    ProbeKind,
)
from vkprovider.core.prober import (
    ContainerProber,
    ContainerProbeState,
    Outcome,
    ProbeEvent,
    ProbeTracker,
)
from vkprovider.probes.check import Prober

log = logging.getLogger(__name__)

DEFAULT_MAX_CONCURRENT: Final = 64
#: Checks due within this much of one another run together: one loop wake-up hands out a batch, and their I/O
#: overlaps (a check may run up to this much late; kubelet's own start jitter is a whole period).
DEFAULT_BATCH_S: Final = 0.25

PROBE_CHECKS = Counter(
    "vkprovider_probe_checks_total",
    "Probe checks of module containers run, by probe (startup, readiness, liveness) and result (success, warning, "
    "failure; error: the check itself broke and was not counted).",
    ["probe", "result"],
)
PROBE_CHECK_SECONDS = Histogram(
    "vkprovider_probe_check_seconds",
    "How long a probe check took, by probe.",
    ["probe"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0),
)
for _kind in ProbeKind:
    PROBE_CHECK_SECONDS.labels(_kind.value)
    for _result in ("success", "warning", "failure", "error"):
        PROBE_CHECKS.labels(_kind.value, _result)

Check = Callable[[ProbeHandler, str, float], Awaitable[Outcome]]
OnChange = Callable[[str], None]
OnEvent = Callable[[str, str, str, ProbeEvent], None]


@dataclass(frozen=True, slots=True)
class ContainerInput:
    """What the controller knows of one container at a sync.

    ``activated_at``: ``time.monotonic()`` seconds since which its biz is ACTIVATED (a new value is a new
    container: the biz was installed again), None when it is not ACTIVATED. ``shown_ready`` / ``shown_started``:
    what the pod's current status shows (ready only counts when the pod's Ready is True); used only for a
    container first seen after it had run a while (a takeover), until its own probes have results.
    """

    probes: ContainerProbes
    activated_at: float | None = None
    shown_ready: bool = False
    shown_started: bool = False


@dataclass(eq=False, slots=True)
class _Slot:
    """One probe of one container in the schedule."""

    pod_key: str
    pod: _Pod
    prober: ContainerProber
    kind: ProbeKind
    tracker: ProbeTracker
    token: int = 0  # the heap entry that is current; older ones are stale
    queued: float | None = None  # the due time of the current heap entry
    in_flight: bool = False
    epoch: int = 0  # the tracker's epoch when the check in flight was handed out
    dead: bool = False


@dataclass(eq=False, slots=True)
class _Pod:
    uid: str
    pod_ip: str
    probers: dict[str, ContainerProber] = field(default_factory=dict)
    slots: dict[tuple[str, ProbeKind], _Slot] = field(default_factory=dict)
    shown: dict[str, tuple[bool, bool, str | None]] = field(default_factory=dict)


class ProbeManager:
    """Every probe of every module pod this replica runs. ``start`` is implicit: the first ``sync`` arms it."""

    def __init__(self, *, on_change: OnChange, on_event: OnEvent | None = None,
                 max_concurrent: int = DEFAULT_MAX_CONCURRENT, check: Check | None = None,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None,
                 batch_s: float = DEFAULT_BATCH_S) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self._batch_s = max(0.0, batch_s)
        self._on_change = on_change
        self._on_event = on_event
        self._max_concurrent = max_concurrent
        self._prober: Prober | None = None
        self._check: Check = check if check is not None else self._default_check
        self._clock = clock
        self._rng = rng or random.Random()
        self._pods: dict[str, _Pod] = {}
        self._heap: list[tuple[float, int, _Slot, int]] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._queue: asyncio.Queue[_Slot] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._running = 0
        self._idle: asyncio.Event | None = None
        self._closed = False
        self.checks_run = 0

    # --- the API

    def sync(self, pod_key: str, uid: str, pod_ip: str, containers: Mapping[str, ContainerInput], *,
             terminating: bool = False) -> bool:
        """Bring the pod's probes up to date; True when its shown state changed (see the module docstring)."""
        if self._closed:
            return False
        now = self._clock()
        pod = self._pods.get(pod_key)
        if pod is None or pod.uid != uid:
            if pod is not None:
                self._drop(pod)
            pod = _Pod(uid, pod_ip)
            self._pods[pod_key] = pod
        pod.pod_ip = pod_ip
        for name in [n for n in pod.probers if n not in containers]:
            self._drop_container(pod, name)
        for name, given in containers.items():
            prober = pod.probers.get(name)
            if prober is None or prober.probes != given.probes:
                if prober is not None:
                    self._drop_container(pod, name)
                prober = ContainerProber(given.probes)
                pod.probers[name] = prober
                for problem in given.probes.problems:
                    self._emit(pod_key, pod.uid, name, ProbeEvent("Warning", REASON_UNSUPPORTED, problem))
            if terminating:
                prober.begin_termination()
            prober.observe(given.activated_at, now, shown_ready=given.shown_ready,
                           shown_started=given.shown_started, spread=self._rng.random())
            self._schedule(pod_key, pod, prober)
        changed = False
        for name, prober in pod.probers.items():
            shown = prober.view().shown
            if pod.shown.get(name) != shown:
                pod.shown[name] = shown
                changed = True
        self._arm()
        return changed

    def forget(self, pod_key: str) -> None:
        """The pod is gone: stop its checks; results in flight are dropped."""
        pod = self._pods.pop(pod_key, None)
        if pod is not None:
            self._drop(pod)

    def state(self, pod_key: str) -> dict[str, ContainerProbeState]:
        pod = self._pods.get(pod_key)
        return {} if pod is None else {name: prober.view() for name, prober in pod.probers.items()}

    def pods(self) -> int:
        return len(self._pods)

    async def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        workers, self._workers = self._workers, []
        for task in workers:
            task.cancel()
        if workers:
            await asyncio.gather(*workers, return_exceptions=True)
        for pod in self._pods.values():
            self._drop(pod)
        self._pods.clear()
        self._heap.clear()
        if self._prober is not None:
            await self._prober.close()

    async def settle(self) -> None:
        """Run every check due at ``clock()`` (and what they make due) and return when none is queued or running:
        for tests with a fake clock, and for benchmarks."""
        while True:
            self._fire()
            if self._idle is None or self._idle.is_set():
                return
            await self._idle.wait()

    # --- scheduling

    def _schedule(self, pod_key: str, pod: _Pod, prober: ContainerProber) -> None:
        for kind, due in prober.runnable():
            slot = pod.slots.get((prober.name, kind))
            if slot is None:
                slot = _Slot(pod_key, pod, prober, kind, prober.trackers[kind])
                pod.slots[(prober.name, kind)] = slot
            if slot.in_flight or slot.queued == due:
                continue
            slot.token += 1
            slot.queued = due
            heapq.heappush(self._heap, (due, next(self._seq), slot, slot.token))

    def _arm(self) -> None:
        """Keep one loop timer, at the earliest due time."""
        if self._closed:
            return
        while self._heap and (self._heap[0][2].dead or self._heap[0][2].token != self._heap[0][3]):
            heapq.heappop(self._heap)  # stale entries at the top would wake the loop for nothing
        if not self._heap:
            return
        when = self._heap[0][0]
        when = round_up(when, self._batch_s)  # one wake-up for every check due in the slice (``core.grid``)
        if self._timer is not None and self._timer_at is not None and self._timer_at <= when:
            return
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer_at = when
        self._timer = loop.call_later(max(0.0, when - self._clock()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self._fire()

    def _fire(self) -> None:
        """Hand every check that is due to the runners."""
        now = self._clock()
        while self._heap and self._heap[0][0] <= now:
            _, _, slot, token = heapq.heappop(self._heap)
            if slot.dead or token != slot.token:
                continue
            slot.queued = None
            if not slot.prober.may_run(slot.kind):
                continue  # gated since it was scheduled (a restart is due, the pod is being deleted)
            slot.in_flight = True
            slot.epoch = slot.tracker.epoch
            self._enqueue(slot)
        self._arm()

    def _enqueue(self, slot: _Slot) -> None:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._idle = asyncio.Event()
            self._idle.set()
        assert self._idle is not None
        self._idle.clear()
        self._queue.put_nowait(slot)
        busy = self._running + self._queue.qsize()
        if len(self._workers) < self._max_concurrent and busy > len(self._workers):
            self._workers.append(asyncio.create_task(self._runner(), name="probe-runner"))

    async def _runner(self) -> None:
        assert self._queue is not None and self._idle is not None
        while True:
            slot = await self._queue.get()
            self._running += 1
            outcome: Outcome | None = None
            epoch = slot.epoch
            started = time.monotonic()
            try:
                if not slot.dead:
                    spec = slot.tracker.spec
                    async with asyncio.timeout(spec.timeout_s + 5.0):  # the check keeps its own timeout
                        outcome = await self._check(spec.handler, slot.pod.pod_ip, float(spec.timeout_s))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("probe check of %s container %s (%s) broke", slot.pod_key, slot.prober.name,
                              slot.kind.value)
            finally:
                self._running -= 1
            PROBE_CHECK_SECONDS.labels(slot.kind.value).observe(time.monotonic() - started)
            self._complete(slot, epoch, outcome)
            if self._queue.empty() and self._running == 0:
                self._idle.set()

    def _complete(self, slot: _Slot, epoch: int, outcome: Outcome | None) -> None:
        slot.in_flight = False
        if slot.dead:
            return
        now = self._clock()
        prober, tracker = slot.prober, slot.tracker
        if tracker.epoch != epoch:
            pass  # a new container since the check started: it does not count
        elif outcome is None:
            PROBE_CHECKS.labels(slot.kind.value, "error").inc()
            tracker.skip(now)
        else:
            self.checks_run += 1
            PROBE_CHECKS.labels(slot.kind.value, outcome.result.value).inc()
            for event in prober.record(slot.kind, outcome, now):
                self._emit(slot.pod_key, slot.pod.uid, prober.name, event)
        self._schedule(slot.pod_key, slot.pod, prober)
        shown = prober.view().shown
        if slot.pod.shown.get(prober.name) != shown:
            slot.pod.shown[prober.name] = shown
            try:
                self._on_change(slot.pod_key)
            except Exception:
                log.exception("on_change(%s) raised", slot.pod_key)
        self._arm()

    # --- bookkeeping

    def _drop_container(self, pod: _Pod, name: str) -> None:
        pod.probers.pop(name, None)
        pod.shown.pop(name, None)
        for key in [k for k in pod.slots if k[0] == name]:
            pod.slots.pop(key).dead = True

    def _drop(self, pod: _Pod) -> None:
        for slot in pod.slots.values():
            slot.dead = True
        pod.slots.clear()

    def _emit(self, pod_key: str, uid: str, container: str, event: ProbeEvent) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(pod_key, uid, container, event)
        except Exception:
            log.exception("on_event(%s) raised", pod_key)

    async def _default_check(self, handler: ProbeHandler, pod_ip: str, timeout_s: float) -> Outcome:
        if self._prober is None:
            self._prober = Prober()
        return await self._prober.check(handler, pod_ip, timeout_s)
