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
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


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
