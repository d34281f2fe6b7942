"""The replicas' membership: this replica's membership Lease, renewed in the background, and who else is alive.

Why it exists apart from the Lease keeper (``controllers.ownership``): membership is its own state with its own
rules (``core.ownership``, membership fencing): a replica holds its vnodes only while its own membership renewal is
within the renew deadline (``blocks``, ``late``), and another replica counts as gone only once its membership was
seen unchanged for a lease duration and read again unchanged (``confirm``). The keeper asks; this module keeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from vkprovider.config import Settings
from vkprovider.controllers.bases import Clock
from vkprovider.controllers.leases import LeaseWriter
from vkprovider.core import ownership as own
from vkprovider.kube.client import ApiError, Kube

log = logging.getLogger(__name__)

MEMBER_LABEL = "vkprovider.koupleless.io/member-of"


def membership_lease_name(env: str, client_id: str) -> str:
    """A valid Lease name for a replica's membership, distinct per client id."""
    slug = re.sub(r"[^a-z0-9-]+", "-", client_id.lower()).strip("-")[:40] or "replica"
    digest = hashlib.blake2b(client_id.encode(), digest_size=4).hexdigest()
    return f"vkprovider-{env.lower()}-{slug}-{digest}"[:253]


class Membership:
    """This replica's membership Lease (renewed in the background, never on the tick's path) and what it sees of
    the other replicas' (who is alive, since when): the input of every spread and hand-over decision."""

    def __init__(self, settings: Settings, kube: Kube, timing: own.Timing, *, clock: Clock,
                 wall: Callable[[], datetime]) -> None:
        self.me = settings.client_id
        self.env = settings.env
        self.timing = timing
        self.clock = clock
        self.lease = membership_lease_name(settings.env, settings.client_id)
        self._kube = kube
        self._path = f"/apis/coordination.k8s.io/v1/namespaces/{settings.namespace}/leases"
        self.writer = LeaseWriter(kube, settings.namespace, settings.client_id, settings.node_lease_duration_s,
                                  clock=clock, wall=wall)
        self.seen: dict[str, own.Observed] = {}  # membership lease name -> as last seen
        self._seen_since: dict[str, float] = {}
        self._gone: dict[str, str] = {}  # expired membership -> the version a fresh read found unchanged
        self._confirming: dict[str, asyncio.Task[None]] = {}
        self._held: own.Held | None = None
        self._write: asyncio.Task[None] | None = None
        self.leaving = False

    def live(self) -> list[str]:
        return own.live_members(self.seen, self.me, self.clock(), self._gone)

    def blocks(self, now: float) -> bool:
        """No write for any vnode now: the membership was never written yet, this replica is leaving, or its last
        renewal is past the renew deadline (``core.ownership``, membership fencing)."""
        return self.leaving or self._held is None or own.fenced(self._held, now, self.timing)

    async def first_written(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) for the first write of the membership, under way: nothing is held before it,
        and no vnode may be taken or written for without it."""
        if self._held is None and self._write is not None and not self._write.done():
            await asyncio.wait({self._write}, timeout=timeout_s)

    def late(self, now: float) -> bool:
        """Written before, and its renewal now past the renew deadline: every held vnode is to be given up."""
        return self._held is not None and own.fenced(self._held, now, self.timing)

    def confirm(self, now: float) -> None:
        """Read again each membership seen expired, before it counts as gone (``core.ownership.live_members``)."""
        for name, observed in self.seen.items():
            if (own.expired(observed, now) and self._gone.get(name) != observed.facts.resource_version
                    and name not in self._confirming):
                self._confirming[name] = asyncio.create_task(self._confirm(name, observed.facts.resource_version),
                                                             name=f"member-confirm-{name}")

    async def _confirm(self, name: str, version: str) -> None:
        try:
            fresh = await self._kube.get(f"{self._path}/{name}")
        except ApiError as exc:
            if exc.is_not_found:
                self.seen.pop(name, None)
                self._seen_since.pop(name, None)
            return
        finally:
            self._confirming.pop(name, None)
        facts = own.LeaseFacts.from_object(fresh, self.timing.lease_duration_s)
        if facts.resource_version == version:
            self._gone[name] = version
        elif name in self.seen:
            self.seen[name] = own.observe(self.seen[name], facts, self.clock())  # our watch is behind

    def on_change(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        name = key.split("/", 1)[-1]
        self._gone.pop(name, None)
        if new is None:
            self.seen.pop(name, None)
            self._seen_since.pop(name, None)
            return
        facts = own.LeaseFacts.from_object(new, self.timing.lease_duration_s)
        self.seen[name] = own.observe(self.seen.get(name), facts, self.clock())
        self._seen_since.setdefault(name, self.clock())

    def ready(self, member: str, now: float) -> bool:
        """A member that has been alive for a renew interval (not one that just appeared)."""
        for name, observed in self.seen.items():
            if observed.facts.holder == member:
                return now - self._seen_since.get(name, now) >= self.timing.renew_interval_s
        return False

    def restart_observations(self, now: float) -> None:
        self.seen = {n: own.Observed(o.facts, now) for n, o in self.seen.items()}

    def renew(self, now: float) -> None:
        """Start the membership renewal when it is due and none is under way; never wait for it."""
        held = self._held
        if held is not None and now < own.renew_due(held, self.timing):
            return
        if self._write is None or self._write.done():
            self._write = asyncio.create_task(self._keep(), name="lease-membership")

    async def _keep(self) -> None:
        try:
            held = await self.writer.keep(self.lease, {MEMBER_LABEL: self.env, own.MANAGED_BY_LABEL: own.MANAGED_BY},
                                          self._held)
            if not self.leaving:
                self._held = held
        except ApiError as exc:
            log.warning("renewing this replica's membership lease failed: %s", exc)

    async def leave(self) -> None:
        """Give up the membership (stopping): the others stop choosing this replica for anything."""
        self.leaving = True
        if self._write is not None:
            self._write.cancel()
        with contextlib.suppress(ApiError):
            await self.writer.delete(self.lease)
