"""Pod status, the base → pod direction: a work queue keyed by pod that writes what a pass over a base wanted.

A pass over a base decides what each of its pods should show (``core.basestatus``) and hands it to
:meth:`PodStatusQueue.want`, which stores it on the pod's record and adds the pod's key; the handler re-reads the
record (the newest pod object and the newest wanted status: a later pass may have replaced it meanwhile) and
writes when the pod does not show it yet. Retries use the queue's backoff (``core.backoff.STATUS_WRITE``); a
fenced vnode retries after the fenced delay, a lost one drops the wanted status (``controllers.fence``); at most one
write per pod is under way (the queue's rule), and the newest wanted status wins (virtual-kubelet's
``enqueuePodStatusUpdate`` / ``syncPodStatusFromProviderHandler``).

Every write carries the pod's uid as a precondition, so a status meant for a pod that was deleted meanwhile never
lands on a new pod of the same name (a StatefulSet's, a re-created bare pod); such a refusal drops it.

A status written is remembered on the record (``Sent``) until the watch shows it: reconciles in between derive
statuses from it (``PodRecord.shown``) and do not send it again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Histogram

from vkprovider.controllers.fence import Lost, VnodeWrites
from vkprovider.controllers.modules.records import PodIndex, PodRecord, Sent, Wanted
from vkprovider.controllers.queue import WorkQueue
from vkprovider.core.backoff import STATUS_WRITE
from vkprovider.core.podstatus import status_changed, status_patch
from vkprovider.kube.client import ApiError

log = logging.getLogger(__name__)

POD_STATUS_WRITES = Counter("vkprovider_pod_status_writes_total", "Pod status writes.", ["phase"])
POD_START_SECONDS = Histogram(
    "vkprovider_pod_start_duration_seconds",
    "Time from this replica first seeing a module pod, not yet started, on a vnode it holds to the answer to the "
    "write of its first Running status (the kubelet's kubelet_pod_start_duration_seconds, for modules).",
    buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 20, 30, 60, 120, 300),
)
for _phase in ("Pending", "Running", "Failed"):
    POD_STATUS_WRITES.labels(_phase)

#: Status writes under way at once (the kube facade bounds the requests in flight as well).
STATUS_WORKERS = 64


class PodStatusQueue:
    """See the module docstring. ``on_written(record, desired)`` runs after each status write lands."""

    def __init__(self, index: PodIndex, writes: VnodeWrites, *, clock: Callable[[], float],
                 on_written: Callable[[PodRecord, dict[str, Any]], None], workers: int = STATUS_WORKERS) -> None:
        self._index = index
        self._writes = writes
        self._clock = clock
        self._on_written = on_written
        self.queue = WorkQueue("pod-status", self._handle, workers=workers, backoff=STATUS_WRITE)
        self.queued = 0  # statuses handed over so far (a pass that handed one over is not quiet)

    async def start(self) -> None:
        await self.queue.start()

    async def stop(self) -> None:
        await self.queue.stop()

    def busy(self, key: str) -> bool:
        """Whether a status of this pod waits to be written or is being written."""
        record = self._index.get(key)
        return record is not None and record.wanted is not None

    def want(self, record: PodRecord, node: str, desired: dict[str, Any]) -> None:
        """The pod should show ``desired``: queue a write unless it shows it already, or it was sent already."""
        now = self._clock()
        if not status_changed(desired, record.pod.get("status")):
            record.sent = None
            return
        sent = record.sent
        if sent is not None and sent.trusted(now) and not status_changed(desired, sent.desired):
            return  # already sent; the watch has not shown it yet
        record.sent = Sent(desired)
        record.wanted = Wanted(node, desired)
        self.queued += 1
        self.queue.add(record.key)

    def drop(self, record: PodRecord) -> None:
        """Nothing more is to be written for this pod by this replica (its vnode was lost)."""
        record.wanted = None
        record.sent = None
        self.queue.forget(record.key)

    async def _handle(self, key: str) -> None:
        record = self._index.get(key)
        if record is None or record.wanted is None:
            return
        wanted = record.wanted
        pod = record.pod
        if not status_changed(wanted.desired, pod.get("status")):
            record.wanted = None
            return  # the cache shows it already
        scope = self._writes.scope(wanted.node)
        md = pod["metadata"]
        body = {"metadata": {"uid": record.uid}, "status": status_patch(wanted.desired)}
        try:
            answer = await scope.patch_pod_status(md["namespace"], md["name"], body)
        except Lost:
            self.drop(record)  # another replica holds the vnode now: it writes the pod's status
            raise
        except ApiError as exc:
            if exc.is_not_found or exc.is_other_object:
                self._settled(record, wanted, None)
                return  # the pod is gone, or another pod of the same name took its place
            log.warning("status write of %s failed: %s", key, exc, extra={"node": wanted.node, "pod": key})
            raise
        written = str(((answer or {}).get("metadata") or {}).get("resourceVersion") or "") if isinstance(
            answer, dict) else ""
        self._settled(record, wanted, written or None)
        # a status that leaves the phase alone (a pod that is not a module: one condition) counts as the pod's own
        phase = wanted.desired.get("phase") or (record.pod.get("status") or {}).get("phase") or "Pending"
        POD_STATUS_WRITES.labels(phase).inc()
        if phase == "Running" and record.unstarted_since is not None:
            POD_START_SECONDS.observe(self._clock() - record.unstarted_since)
            record.unstarted_since = None
        self._on_written(record, wanted.desired)

    def _settled(self, record: PodRecord, wanted: Wanted, written_rv: str | None) -> None:
        if record.wanted is wanted:
            record.wanted = None
        sent = record.sent
        if sent is not None and sent.desired is wanted.desired:
            if written_rv is None:
                record.sent = None
            else:
                sent.written_rv, sent.answered_at = written_rv, self._clock()

