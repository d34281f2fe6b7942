"""Root tasks, supervised: when one ends that was meant to run for the life of the process, the process ends.

A process that limps on with a dead informer, a dead queue or a dead Lease keeper is worse than one that
restarts: it stops converging while ``/healthz`` says ok. Every long-lived task vkprovider starts (informers, the
controllers' queues, the Lease keeper, the release writer, the Event recorder, the tunnels, the kubelet API's CA
refresh) is a root task spawned here (kopf's guarded tasks, ``aiotasks.py``, and ``run_tasks``: when a root task
ends, the operator ends). A root task that returns, raises or is cancelled by anyone but :meth:`stop` is a
failure: one clear line is logged (which task, why), ``failed`` says so (``/healthz`` answers 503 with it), and
``ended`` is set so the process stops and exits with code 1 (Kubernetes restarts it). Once the process is stopping
(:meth:`stopping`: its owners stop the tunnels, close the Event recorder, then :meth:`stop` cancels the rest), a
root task that ends is the shutdown, not a failure.

A root task that may fail for an outside cause and be started afresh (a tunnel: its broker connection loop, its
listener) is kept instead (:meth:`keep`): when it raises, one line says which and why, and it runs again after
``core.backoff.ROOT_RESTART``; only after ``RESTARTS_MAX`` failures in a row (none ran ``ROOT_RESTART.max_s``
before failing) is it a failure as above. Returning or being cancelled from outside is a failure at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Final

from vkprovider.core.backoff import ROOT_RESTART, Backoff

log = logging.getLogger(__name__)

RESTARTS_MAX: Final = 5
"""Failures in a row after which a kept root task fails the process (Kubernetes restarts it)."""


class RestartsExhausted(Exception):
    """A kept root task failed ``RESTARTS_MAX`` times in a row."""


class Supervisor:
    """See the module docstring."""

    def __init__(self) -> None:
        self.tasks: dict[str, asyncio.Task[Any]] = {}
        self.failed: str | None = None  # "<task>: <why>" of the first root task that ended
        self.ended = asyncio.Event()
        self._stopping = False

    def spawn(self, name: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a root task called ``name`` (names are unique)."""
        if name in self.tasks:
            coro.close()
            raise ValueError(f"a root task {name!r} runs already")
        task = asyncio.create_task(coro, name=name)
        self.tasks[name] = task
        task.add_done_callback(self._done)
        return task

    def keep(self, name: str, run: Callable[[], Coroutine[Any, Any, Any]], *,
             backoff: Backoff = ROOT_RESTART) -> asyncio.Task[Any]:
        """Run ``run()`` as a root task called ``name``, started again with ``backoff`` each time it raises."""
        return self.spawn(name, self._kept(name, run, backoff))

    async def _kept(self, name: str, run: Callable[[], Coroutine[Any, Any, Any]], backoff: Backoff) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            began = loop.time()
            try:
                await run()
                return  # a kept task that returns has ended: ``_done`` decides whether that is a failure
            except Exception as exc:
                if self._stopping:
                    return
                failures = 1 if loop.time() - began >= backoff.max_s else failures + 1
                if failures >= RESTARTS_MAX:
                    raise RestartsExhausted(f"failed {failures} times in a row, last {type(exc).__name__}: {exc}"
                                            ) from exc
                delay = backoff.delay(failures)
                log.error("root task %s failed (%s: %s): restarting it in %.1fs (%d failure(s) in a row)", name,
                          type(exc).__name__, exc, delay, failures, exc_info=exc if failures == 1 else None)
            await asyncio.sleep(delay)

    def _done(self, task: asyncio.Task[Any]) -> None:
        if self._stopping:
            return
        if task.cancelled():
            why = "cancelled"
        elif (exc := task.exception()) is not None:
            why = f"{type(exc).__name__}: {exc}"
        else:
            why = "returned"
        name = task.get_name()
        if self.failed is None:
            self.failed = f"{name}: {why}"
            log.critical("root task %s ended unexpectedly (%s): stopping vkprovider with exit code 1", name, why,
                         exc_info=task.exception() if not task.cancelled() else None)
        self.ended.set()

    def stopping(self) -> None:
        """The process is stopping: a root task that ends from now on ends with what it runs (a stopped tunnel, a
        closed Event recorder), which is no failure."""
        self._stopping = True

    async def stop(self) -> None:
        """Cancel every root task (their end is then no failure) and wait for them."""
        self._stopping = True
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
