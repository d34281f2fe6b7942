"""The one writer of Leases: create, renew, acquire, hand over, give up and delete, for the vnode Leases, this
replica's membership Lease and the release writer's Lease alike.

Every write but a create carries the resourceVersion it was decided on (a 409 means somebody else wrote the Lease
meanwhile) and goes through the Lease lane of the kube facade (``lease_client``: a time budget below the renew
deadline, a second copy on a fresh connection beside a first unanswered for two thirds of it). The copy that lands
second meets the version the first made: a 409 is therefore resolved by reading the Lease - it names us with the
``renewTime`` stamp we wrote (our write landed), it names us with another stamp (someone else touched it: write
again on the fresh version), or it names somebody else (lost). A renewal whose answer never came (a timeout) may
land later: its stamp is kept until a renewal of that Lease is answered, so the 409 the next renewal meets is known
as this replica's own late write and written over without suspecting another controller. Callers keep the decisions
(``core.ownership``); this class only writes and says what happened.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from vkprovider.config import Settings
from vkprovider.core import ownership as own
from vkprovider.kube.client import ApiError, Kube
from vkprovider.kube.errors import ApiConnectionError

log = logging.getLogger(__name__)

UNANSWERED_KEPT = 4  # unanswered renewal stamps kept per Lease (one renewal per interval: the last 40 s at 10 s)


def lease_timing(settings: Settings, *, tick_s: float = 0.0) -> own.Timing:
    """The Lease timing of ``settings``; ``tick_s``: the grid its renewals are decided on (``own.Timing``)."""
    return own.Timing(lease_duration_s=settings.node_lease_duration_s, renew_interval_s=settings.node_lease_renew_s,
                      renew_deadline_s=settings.node_lease_renew_deadline_s, tick_s=tick_s)


def lease_client(kube: Kube, timing: own.Timing, max_inflight: int) -> Kube:
    """The client a Lease writer uses: its own bound on requests in flight (a renewal never waits behind bulk
    writes), each request within the Lease write budget, a second copy beside one unanswered after an attempt's
    time (``Kube.lane``'s ``hedged``), and its writes safe to send twice (each carries the resourceVersion it was
    decided on, or, for the membership renewal, only a renewTime)."""
    budget = own.lease_write_budget(timing)
    return kube.lane(max_inflight, timeout_s=budget.attempt_s, total_s=budget.total_s, repeatable=True, hedged=True)


class LeaseApi(Protocol):
    """The part of the kube facade Lease writes use."""

    async def get(self, path: str) -> Any: ...

    async def create(self, path: str, obj: Mapping[str, Any]) -> Any: ...

    async def patch(self, path: str, body: Any, *, kind: Any = "strategic") -> Any: ...

    async def delete(self, path: str, *, preconditions: Mapping[str, Any] | None = None) -> Any: ...


def micro_time(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def resource_version(answer: object) -> str:
    if isinstance(answer, Mapping):
        return str((answer.get("metadata") or {}).get("resourceVersion") or "")
    return ""


@dataclass(frozen=True, slots=True)
class Renewal:
    """How a renewal ended: ``held`` is the new hold (None: not ours any more, ``lost`` says why)."""

    held: own.Held | None
    lost: str = ""
    conflict: bool = False  # a 409 was met on the way (someone else wrote the Lease)


class LeaseWriter:
    """See the module docstring. ``me`` is written as the holder; times come from ``clock`` (monotonic, for the
    holds) and ``wall`` (what the Lease shows)."""

    def __init__(self, kube: LeaseApi, namespace: str, me: str, duration_s: float, *, clock: Callable[[], float],
                 wall: Callable[[], datetime]) -> None:
        self._kube = kube
        self.namespace = namespace
        self._path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self.me = me
        self._duration = int(duration_s)
        self._clock = clock
        self._wall = wall
        # per Lease, the stamps of renewals sent since the last answered one whose answer never came: they may land
        self._unanswered: dict[str, list[str]] = {}

    def _facts(self, lease: Mapping[str, Any]) -> own.LeaseFacts:
        return own.LeaseFacts.from_object(lease, self._duration)

    async def create(self, name: str, labels: Mapping[str, str]) -> own.Held | None:
        """Create the Lease held by this replica; None when it exists already (somebody was faster)."""
        stamp = micro_time(self._wall())
        metadata: dict[str, Any] = {"name": name, "namespace": self.namespace, "labels": dict(labels)}
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata,
                "spec": {"holderIdentity": self.me, "leaseDurationSeconds": self._duration,
                         "acquireTime": stamp, "renewTime": stamp, "leaseTransitions": 0}}
        sent = self._clock()
        try:
            answer = await self._kube.create(self._path, body)
        except ApiError as exc:
            if exc.is_already_exists:
                return None
            raise
        return own.Held(sent, resource_version(answer))

    async def renew(self, name: str, held: own.Held) -> Renewal:
        """Renew a Lease this replica holds (see the module docstring for a 409)."""
        sent = self._clock()
        stamp = micro_time(self._wall())
        body = {"metadata": {"resourceVersion": held.resource_version}, "spec": {"renewTime": stamp}}
        try:
            answer = await self._kube.patch(f"{self._path}/{name}", body, kind="merge")
        except ApiError as exc:
            if exc.is_not_found:
                self._unanswered.pop(name, None)
                return Renewal(None, "its Lease was deleted")
            if not exc.is_conflict:
                if not (isinstance(exc, ApiConnectionError) and not exc.sent):  # it may still land
                    self._unanswered.setdefault(name, []).append(stamp)
                    del self._unanswered[name][:-UNANSWERED_KEPT]
                raise
            return await self._after_conflict(name, stamp, sent)
        self._unanswered.pop(name, None)
        return Renewal(own.Held(sent, resource_version(answer)))

    async def _after_conflict(self, name: str, stamp: str, sent: float) -> Renewal:
        fresh = await self._kube.get(f"{self._path}/{name}")
        facts = self._facts(fresh)
        unanswered = self._unanswered.pop(name, [])
        if facts.holder != self.me:
            return Renewal(None, f"taken by {facts.holder or 'nobody'}", conflict=True)
        written = ((fresh.get("spec") or {}) if isinstance(fresh, Mapping) else {}).get("renewTime")
        if written == stamp:
            return Renewal(own.Held(sent, facts.resource_version), conflict=True)  # our own write landed
        if written in unanswered:  # an earlier renewal of ours landed after its answer timed out: renew on it
            log.debug("lease %s: an earlier renewal whose answer never came landed; renewing on it", name)
        else:
            log.warning("lease %s was written by someone else while we hold it (is another controller, e.g. the Go "
                        "ModuleController, still running with CLIENT_ID=%s?)", name, self.me)
        sent = self._clock()
        answer = await self._kube.patch(f"{self._path}/{name}",
                                        {"metadata": {"resourceVersion": facts.resource_version},
                                         "spec": {"renewTime": micro_time(self._wall())}}, kind="merge")
        return Renewal(own.Held(sent, resource_version(answer)), conflict=True)

    async def acquire(self, name: str, facts: own.LeaseFacts,
                      labels: Mapping[str, str | None]) -> own.Held | None:
        """Take (or keep) a Lease seen as ``facts``; None when it changed meanwhile (somebody else wrote it, or our own
        copy sent twice landed first) or it is gone: the caller reads it again before deciding again."""
        stamp = micro_time(self._wall())
        sent = self._clock()
        spec: dict[str, Any] = {"holderIdentity": self.me, "renewTime": stamp, "leaseDurationSeconds": self._duration}
        if facts.holder != self.me:
            spec["acquireTime"] = stamp
            spec["leaseTransitions"] = facts.transitions + 1
        body = {"metadata": {"resourceVersion": facts.resource_version, "labels": dict(labels)}, "spec": spec}
        try:
            answer = await self._kube.patch(f"{self._path}/{name}", body, kind="merge")
        except ApiError as exc:
            if exc.is_not_found or exc.is_conflict:
                return None  # the caller reads the Lease again (our own write may be what it meets) and decides
            raise
        return own.Held(sent, resource_version(answer))

    async def hand_over(self, name: str, held: own.Held, transitions: int, to: str,
                        labels: Mapping[str, str] | None = None) -> bool:
        """Write ``to`` as the holder (and ``labels`` with it); a 409 (our own renewal raced it) is retried once on
        the fresh version if the Lease still names us."""
        stamp = micro_time(self._wall())
        version = held.resource_version
        for _ in range(2):
            metadata: dict[str, Any] = {"resourceVersion": version}
            if labels:
                metadata["labels"] = dict(labels)
            body = {"metadata": metadata,
                    "spec": {"holderIdentity": to, "acquireTime": stamp, "renewTime": stamp,
                             "leaseTransitions": transitions + 1}}
            try:
                await self._kube.patch(f"{self._path}/{name}", body, kind="merge")
                return True
            except ApiError as exc:
                if exc.is_not_found:
                    return False
                if not exc.is_conflict:
                    raise
            fresh = self._facts(await self._kube.get(f"{self._path}/{name}"))
            if fresh.holder == to:
                return True  # our own write, sent twice after its first answer was lost: the first landed
            if fresh.holder != self.me:
                return False  # somebody else has it now: nothing to hand over
            version, transitions = fresh.resource_version, fresh.transitions
        return False

    async def give_up(self, name: str, held: own.Held) -> None:
        """Empty the holder (only the version we hold), so another replica takes the Lease at once."""
        try:
            await self._kube.patch(f"{self._path}/{name}", {"metadata": {"resourceVersion": held.resource_version},
                                                      "spec": {"holderIdentity": None}}, kind="merge")
        except ApiError as exc:
            if not (exc.is_conflict or exc.is_not_found):
                raise

    async def delete(self, name: str, held: own.Held | None = None) -> None:
        """Delete the Lease (only the version we hold, when ``held``)."""
        preconditions = {"resourceVersion": held.resource_version} if held is not None and held.resource_version \
            else None
        try:
            await self._kube.delete(f"{self._path}/{name}", preconditions=preconditions)
        except ApiError as exc:
            if not (exc.is_conflict or exc.is_not_found):
                raise

    async def keep(self, name: str, labels: Mapping[str, str], held: own.Held | None) -> own.Held:
        """Keep a Lease this replica owns alone (its membership): create it, or take it over by name after a restart
        (no resourceVersion: nobody else writes it), or renew it."""
        stamp = micro_time(self._wall())
        sent = self._clock()
        if held is None:
            created = await self.create(name, labels)
            if created is not None:
                return created
            spec = {"holderIdentity": self.me, "renewTime": stamp, "leaseDurationSeconds": self._duration}
            answer = await self._kube.patch(f"{self._path}/{name}", {"spec": spec}, kind="merge")
        else:
            answer = await self._kube.patch(f"{self._path}/{name}", {"spec": {"renewTime": stamp}}, kind="merge")
        return own.Held(sent, resource_version(answer))
