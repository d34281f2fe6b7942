"""Graceful stop: a deleted module pod's preStop hooks run before its bizs are uninstalled, within its grace period.

When a pod with a ``lifecycle.preStop`` on a biz container begins terminating, its hooks run (every container's at
once, as the kubelet runs them) against the base's address (``probes.run_pre_stop``: httpGet, sleep; exec is not
run and is reported), bounded by the pod's grace period measured from when this replica first saw it terminating.
Until they have ended the pod is ``stopping``: the planner keeps its bizs (they go on serving) and does not
finalize it (``core.plan``); then its bizs are released as for any deleted pod. A hook's failure is a Warning
Event (``FailedPreStopHook``) and never stops the stop. The task is the pod record's: dropped with it, cancelled
when the vnode goes to another replica (which runs the hook again if it is still due).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from vkprovider.controllers.fence import VnodeWrites
from vkprovider.controllers.modules.records import PodRecord
from vkprovider.core.module import UrlPolicy
from vkprovider.core.probe import LifecycleHandler, format_pod
from vkprovider.probes import run_pre_stop

log = logging.getLogger(__name__)


class GracefulStops:
    """The preStop tasks of terminating pods (see the module docstring). ``done(node)`` queues a pass when a pod's
    hooks have ended."""

    def __init__(self, writes: VnodeWrites, policy: UrlPolicy, *, done: Callable[[str], None]) -> None:
        self._writes = writes
        self._policy = policy
        self._done = done
        self._tasks: dict[str, tuple[str, asyncio.Task[None]]] = {}  # pod key -> (uid, its task)

    def stopping(self, record: PodRecord, pod_ip: str, deadline: float) -> bool:
        """Whether the pod's preStop hooks still run (started here the first time they are due)."""
        facts = record.facts(self._policy)
        hooks = {name: p.pre_stop for name, p in facts.probes.items() if p.pre_stop is not None}
        if not hooks or record.pre_stop_done:
            return False
        running = self._tasks.get(record.key)
        if running is None or running[0] != record.uid:
            task = asyncio.create_task(self._run(record, hooks, pod_ip, deadline), name=f"prestop-{record.key}")
            self._tasks[record.key] = (record.uid, task)
        return True

    async def _run(self, record: PodRecord, hooks: dict[str, LifecycleHandler], pod_ip: str,
                   deadline: float) -> None:
        pod = format_pod(record.pod)
        try:
            results = await asyncio.gather(*(run_pre_stop(hook, pod_ip, deadline, container=name, pod=pod)
                                             for name, hook in hooks.items()))
        except asyncio.CancelledError:
            raise  # the vnode went to another replica, or the pod is gone: not done here
        except Exception:
            log.exception("preStop of %s failed", record.key)  # a bug, not a failed hook: the stop goes on
            results = []
        node = record.node
        for result in results:
            if result.event is not None and node is not None:
                self._writes.scope(node).warning(record.pod, *result.event)
        log.info("preStop of %s done in %.1fs", record.key, max((r.took_s for r in results), default=0.0),
                 extra={"pod": record.key, "node": node})
        record.pre_stop_done = True
        if self._tasks.get(record.key, (None,))[0] == record.uid:
            del self._tasks[record.key]
        if node is not None:
            self._done(node)

    def forget(self, key: str) -> None:
        running = self._tasks.pop(key, None)
        if running is not None:
            running[1].cancel()

    def cancel_all(self) -> None:
        for _, task in self._tasks.values():
            task.cancel()
        self._tasks.clear()
