"""Health reads of bases: the node controller's questions to a base's arklet, one at a time per base.

Why it exists: a base is asked for its ``health`` for three reasons, and they must share one read: its resources
are due (``VKP_BASE_HEALTH_INTERVAL``: capacity, Metaspace pressure, ``kubectl top``), it has been silent
(liveness: ``VKP_BASE_PROBE_AFTER``, well before it would be declared unreachable, then every ``PROBE_EVERY_S``), or
somebody needs a reading now (a Node about to be created, a metrics scrape whose figures are old, the module
controller's static bizs, a takeover). At most one read per base is under way; a second asker waits for the same
one. The answer goes to the base registry, which decides what it means; ``answered(node)`` is called when the node
controller should look again, ``done(node)`` when a read ended whatever its outcome. Reads due by the interval are
noticed at whatever moment a heartbeat comes; they start together on the timer grid (``core.grid``: one wake-up for
all the reads due in a grid step).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from vkprovider.config import NodeSettings
from vkprovider.controllers.bases import BaseRegistry, BaseView, Clock
from vkprovider.controllers.fence import VnodeWrites
from vkprovider.core.grid import on_grid
from vkprovider.core.sanitize import MAX_LOG_TEXT, clean
from vkprovider.tunnels.base import TunnelError

log = logging.getLogger(__name__)

PROBE_EVERY_S = 5.0  # while a held base is silent, ask it this often whether it is alive


class HealthReads:
    """The health reads under way, one task per base."""

    def __init__(self, settings: NodeSettings, registry: BaseRegistry, writes: VnodeWrites, clock: Clock, *,
                 answered: Callable[[str], None], done: Callable[[str], None]) -> None:
        self.settings = settings
        self.registry = registry
        self.writes = writes
        self.clock = clock
        self._answered = answered
        self._done = done
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._started_at: dict[str, float] = {}
        self._due: set[str] = set()  # reads due by the interval, to start at the next grid step
        self._due_timer: asyncio.TimerHandle | None = None

    def probe_after(self) -> float:
        """Probe well before a silent base would be declared unreachable."""
        return min(self.settings.base_probe_after_s, 0.6 * self.settings.base_unreachable_after_s)

    def maybe(self, view: BaseView, now: float) -> None:
        """Ask the base for its health when it is due (resources) or when it has been silent (liveness)."""
        if view.deactivated:
            return
        due_health = now - view.health_at >= self.settings.base_health_interval_s
        due_liveness = view.silent_for(now) >= self.probe_after() and \
            now - self._started_at.get(view.node, -1e18) >= PROBE_EVERY_S
        if due_liveness:
            self.start(view.node)
        elif due_health:
            self._on_grid(view.node)

    def pending(self, node: str) -> bool:
        """Whether a read of ``node`` waits for the grid or is under way (``done(node)`` is called when it ends)."""
        task = self.tasks.get(node)
        return node in self._due or (task is not None and not task.done())

    def _on_grid(self, node: str) -> None:
        """Start a read due by the interval at the next step of the timer grid, with every other read due in it."""
        if self.pending(node):
            return
        self._due.add(node)
        if self._due_timer is None:
            loop = asyncio.get_running_loop()
            self._due_timer = loop.call_at(on_grid(loop.time(), self.settings.base_health_interval_s),
                                           self._start_due)

    def _start_due(self) -> None:
        self._due_timer = None
        due, self._due = self._due, set()
        now = self.clock()
        for node in due:
            view = self.registry.get(node)
            if view is not None and now - view.health_at >= self.settings.base_health_interval_s:
                self.start(node)
            else:
                self._done(node)  # a read that landed meanwhile answered it, or the base is gone

    def start(self, node: str) -> asyncio.Task[None]:
        """Start a read of the base's health now, unless one is under way (then that one)."""
        task = self.tasks.get(node)
        if task is None or task.done():
            self._started_at[node] = self.clock()
            task = self.tasks[node] = asyncio.create_task(self._read(node), name=f"probe-{node}")
        return task

    def ask(self, node: str) -> None:
        """``start``, for whoever needs only a reading newer than now (the module controller's static bizs)."""
        self.start(node)

    async def read(self, node: str, timeout_s: float) -> None:
        """Ask the base for its health now and wait for the answer, at most ``timeout_s`` (the read goes on after
        that); a read already under way is shared, not repeated."""
        task = self.start(node)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), timeout_s)

    def cancel(self, node: str) -> None:
        self._due.discard(node)
        task = self.tasks.pop(node, None)
        if task is not None:
            task.cancel()

    def cancel_all(self) -> None:
        self._due.clear()
        if self._due_timer is not None:
            self._due_timer.cancel()
            self._due_timer = None
        for task in self.tasks.values():
            task.cancel()

    async def _read(self, node: str) -> None:
        try:
            await self._ask(node)
        finally:
            if self.tasks.get(node) is asyncio.current_task():
                del self.tasks[node]
            self._done(node)

    async def _ask(self, node: str) -> None:
        view = self.registry.get(node)
        if view is None or not self.writes.reaches(view.heartbeat):
            return
        sent = self.clock()
        try:
            health = await self.writes.reads(view.heartbeat).health(view.heartbeat)
        except TunnelError as exc:
            log.debug("health of %s failed: %s", node, clean(exc, MAX_LOG_TEXT))
            view.health_at = self.clock()
            return
        was_silent = view.silent_for(self.clock()) > self.settings.base_unreachable_after_s or view.deactivated
        if self.registry.probed(node, health, sent) or was_silent:  # the registry decides what the answer says
            self._answered(node)
