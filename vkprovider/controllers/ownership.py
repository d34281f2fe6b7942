"""Lease keeping: acquires, renews, hands over and releases vnode Leases, and says which vnodes this replica holds.

The decisions are ``core.ownership``'s (observed time on the local clock, resourceVersion preconditions, fencing
by renew deadline and by membership, rendezvous spread over live replicas); this module observes Leases, carries
the decisions out, and tells ``controllers.gains`` when a vnode is gained or lost (which tells the node and module
controllers). Everything that writes for a vnode asks ``may_write(node)`` right before writing.

What it watches does not grow with its share (issue 31, ``core.ownership``: membership fencing): the vnode Leases
being handed over to it and those with no holder label (two informers in ``kube-node-lease``: in a steady state
both carry nothing, not even the echo of its own renewals), and every replica's membership Lease in ``NAMESPACE``.
Its own Leases it knows from its own writes: one taken from it (only possible once it fenced itself) or deleted
answers its next renewal 409 or 404. Every vnode Lease it reads whole (``sweep``: one paged LIST) at start, when a
member leaves (its membership seen expired and read again unchanged: ``Membership.confirm``) and every
``SWEEP_S``: that is how it learns whose each vnode is (``foreign``) and which a dead member left.

One loop (``run``) ticks every ``TICK_S``: it starts the renewal of this replica's membership Lease when due (in
the background, like every Lease write: a write stalled on a dead connection never holds up the tick, and so never
the renewals and fencing decisions of other vnodes), then decides for the vnode Leases that are due. A decision
only changes when its inputs do (the Lease seen changing, a write landing, the live replicas) or when time passes
one of its deadlines (a renewal due, a foreign lease expiring), so each vnode is decided again when it was touched
or at its next deadline (``core.ownership.DecisionSchedule``), not on every tick: 1,000 held vnodes cost two hundred
decisions a second (due, then landed, per renewal), not two thousand. A change of the live replicas decides every
vnode again. A tick that comes far too late means the process was stalled (SIGSTOP, swapping): every observation is
then restarted from now, because what was "unchanged for a lease duration" was only unseen.

Every Lease write goes through a lane of its own (``leases.lease_client``) bounded by
``core.ownership.lease_write_budget``: an attempt that gets no answer is sent once more on a fresh connection, all of
it before the renew deadline; a copy that lands twice answers 409, and the writer finds its own renewTime in the
Lease (``_after_conflict``).

An acquire answered 409 (or 404) proves the observation it was decided from out of date: the Lease changed (its
holder renewed it, another replica took it) without the watch saying so yet. The vnode is then not decided again
from that observation: its Lease is read again (one GET, at the next tick) and decided from what the read shows,
so a watch that fell behind costs one PATCH and one GET per Lease, not a PATCH and a 409 on every tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from vkprovider.config import Settings
from vkprovider.controllers.bases import Clock
from vkprovider.controllers.fence import Hold
from vkprovider.controllers.gains import Gains
from vkprovider.controllers.leases import LeaseWriter, lease_timing
from vkprovider.controllers.membership import Membership
from vkprovider.core import node as vnode
from vkprovider.core import ownership as own
from vkprovider.core.grid import next_tick
from vkprovider.kube.client import ApiError, Kube
from vkprovider.kube.events import EventRecorder

log = logging.getLogger(__name__)

TICK_S = 0.5
FENCED_RETRY_S = 1.0  # a reconcile that met a fenced (held, renewal late) vnode comes back after this
STALL_S = 3.0  # a tick this late: the process was not running
SWEEP_S = 60.0  # every vnode Lease is read whole this often (and at start, and when a member leaves)
# Lease writes at once (the keeper's client lane has the same bound): enough that renewals keep their deadline under a
# rollout, no more than a slow apiserver can take (docs/performance.md, "Measured reasons in the code").
LEASE_WRITES_INFLIGHT = 128

HELD = Gauge("vkprovider_vnodes_held", "Vnodes whose Lease this replica holds.")
UNHELD = Gauge("vkprovider_vnodes_unheld",
               "Vnode Leases this replica sees with no live holder (empty, or unchanged for a lease duration).")
MEMBERS = Gauge("vkprovider_replicas_live", "vkprovider replicas this replica sees alive (itself included).")
LEASE_EVENTS = Counter(
    "vkprovider_lease_transitions_total",
    "Vnode lease ownership changes of this replica: acquired, lost, handed_over, released, renew_failed.",
    ["event"],
)
RENEW_SECONDS = Histogram(
    "vkprovider_lease_renew_duration_seconds",
    "Time to renew one vnode Lease.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 20),  # up to the default lease duration
)
STALLS = Counter("vkprovider_stalls_total", "Times this process found it had not run for a while.")
for _event in ("acquired", "lost", "handed_over", "released", "renew_failed", "conflict"):
    LEASE_EVENTS.labels(_event)


class LeaseKeeper:
    """This replica's side of vnode ownership."""

    def __init__(
        self,
        settings: Settings,
        kube: Kube,
        events: EventRecorder,
        *,
        clock: Clock,
        wall: Callable[[], datetime] | None = None,
        reads: Kube | None = None,
    ) -> None:
        self.settings = settings
        self.kube = kube
        self._reads = reads or kube  # the whole-ENV reads of every vnode Lease (``sweep``)
        self.writer = LeaseWriter(kube, vnode.LEASE_NAMESPACE, settings.client_id, settings.node_lease_duration_s,
                                  clock=clock, wall=wall or (lambda: datetime.now(UTC)))

        self.events = events
        self.clock = clock
        self.wall = wall or (lambda: datetime.now(UTC))
        self.me = settings.client_id
        self.env = settings.env
        self.timing = lease_timing(settings, tick_s=TICK_S)
        self.membership = Membership(settings, kube, self.timing, clock=clock, wall=wall or (lambda: datetime.now(UTC)))
        self._observed: dict[str, own.Observed] = {}  # node name -> its Lease as last seen
        self._held: dict[str, own.Held] = {}
        self._held_since: dict[str, float] = {}  # when this replica got each vnode (no ping-pong hand-overs)
        self._busy: set[str] = set()  # nodes with a lease write in flight
        self._stale: set[str] = set()  # observations made before a stall, or refuted by a 409: read them again
        self._writes_in_flight: set[asyncio.Task[None]] = set()
        self._last_tick = clock()
        self._started = clock()
        self._stopping = False
        self._wake = asyncio.Event()
        self._writes = asyncio.Semaphore(LEASE_WRITES_INFLIGHT)
        self._schedule = own.DecisionSchedule()  # when each vnode is to be decided again
        self.decisions = 0  # vnode decisions made (a unit test's measure of the tick's work)
        UNHELD.set_function(self._unheld_count)
        # What the controllers are told: a vnode gained (read whole first when it was foreign), lost, or foreign.
        self.gains = Gains(held=lambda node: node in self._held, foreign=self.foreign, loaded=self._schedule.touch)
        # Which Leases this replica watches (its own label, and none: ``core.ownership``, membership fencing): the
        # holder of every vnode Lease as last read (watched or swept), and which of them the watches carry now.
        self._holders: dict[str, str] = {}
        self._handed: set[str] = set()  # in the watch of Leases handed over to this replica
        self._unlabelled: set[str] = set()  # in the watch of Leases without the holder label
        self._swept_at: float | None = None
        self._sweep: asyncio.Task[None] | None = None
        self._members_before: tuple[str, ...] = ()
        self.label = own.holder_label(self.me)

    # --- what others ask -----------------------------------------------------------------------------------

    def hold(self, node: str) -> Hold:
        """Where this replica stands with ``node``'s Lease (the write port asks before every write). A vnode gained
        whose Node and pods are still being read whole is fenced until they are."""
        held = self._held.get(node)
        if held is None:
            return Hold.LOST
        now = self.clock()
        return (Hold.FENCED if self.gains.loading(node) or own.fenced(held, now, self.timing)
                or self.membership.blocks(now) else Hold.HELD)

    def may_write(self, node: str) -> bool:
        """True only while this replica holds ``node``'s Lease and renewed it before the renew deadline (and has
        read the vnode whole, when it was another replica's)."""
        held = self._held.get(node)
        if held is None or self.gains.loading(node):
            return False
        now = self.clock()
        return not own.fenced(held, now, self.timing) and not self.membership.blocks(now)

    def foreign(self, node: str) -> bool:
        """Whether ``node``'s Lease, as last seen, names another replica that this one does not hold it for: its
        Node and pods are that replica's to keep whole (issue 31)."""
        return node not in self._held and self._holders.get(node, "") not in ("", self.me)

    def lease_exists(self, node: str) -> bool:
        """Whether ``node`` has a Lease, as far as this replica read (a base with none is claimed by a create)."""
        return node in self._held or node in self._holders or node in self._observed

    def held_nodes(self) -> list[str]:
        return [n for n in self._held if self.may_write(n)]

    def fenced(self, node: str) -> bool:
        """Held, but the last renewal is older than the renew deadline (one is under way, or failing): no writes
        until it lands. Whoever skipped work because of it looks again shortly (see ``FENCED_RETRY_S``)."""
        held = self._held.get(node)
        now = self.clock()
        return held is not None and (self.gains.loading(node) or own.fenced(held, now, self.timing)
                                     or self.membership.blocks(now))

    def held_count(self) -> int:
        """How many vnodes this replica holds (fenced ones included): O(1), for the VKP_MAX_VNODES cap."""
        return len(self._held)

    def lease_of(self, node: str) -> own.Observed | None:
        return self._observed.get(node)

    def live_members(self) -> list[str]:
        return self.membership.live()

    # --- informer hooks ------------------------------------------------------------------------------------

    def on_lease_change(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        """The watch of vnode Leases handed over to this replica (``core.ownership.HANDED_TO_LABEL``): one appears
        when another replica hands it over, and leaves the watch when this replica takes it (the label goes)."""
        self._on_watched(self._handed, key, new)

    def on_unlabelled_change(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        """The watch of vnode Leases without the holder label (the Go controller's, an older vkprovider's): one
        leaves it when a vkprovider takes it (the label comes)."""
        self._on_watched(self._unlabelled, key, new)

    def _scoped(self, node: str) -> bool:
        return node in self._handed or node in self._unlabelled

    def _on_watched(self, watched: set[str], key: str, new: dict[str, Any] | None) -> None:
        """A Lease of one of the two watches changed, appeared or left it. One that left it and that this replica
        does not hold is read once, to learn whose it is now (a takeover by another replica, a deletion)."""
        node = key.split("/", 1)[-1]
        if not vnode.is_vnode_name(node, self.env):
            return
        if new is None:
            watched.discard(node)
            if node not in self._held and not self._scoped(node):
                self._stale.add(node)
                self._wake.set()
            return
        watched.add(node)
        facts = self._note(node, new)
        held = self._held.get(node)
        if (held is not None and facts.holder != self.me) or (held is None and facts.holder in ("", self.me)):
            self._wake.set()

    def on_node_change(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        """A vnode's Node appeared whose Lease this replica has not read (another replica claimed a new base since
        the last sweep): read the Lease once, so the vnode is known as that replica's (``foreign``) at once."""
        node = key.split("/", 1)[-1]
        if new is not None and old is None and not self.lease_exists(node) and vnode.is_vnode_name(node, self.env):
            self._stale.add(node)
            self._wake.set()

    def _note(self, node: str, lease: dict[str, Any]) -> own.LeaseFacts:
        """Record a vnode Lease as read (watched, swept or read again): its holder, and the observation the
        decisions use when this replica watches it or may come to take it (``core.ownership.observed_here``)."""
        facts = own.LeaseFacts.from_object(lease, self.timing.lease_duration_s)
        self._holders[node] = facts.holder
        self._stale.discard(node)
        if self._scoped(node) or node in self._held or own.observed_here(facts, self.me, self.live_members()):
            self._observed[node] = own.observe(self._observed.get(node), facts, self.clock())
            self._schedule.touch(node)
        elif self._observed.pop(node, None) is not None:
            self._schedule.touch(node)
        self.gains.check_foreign(node)
        return facts

    def _forget(self, node: str) -> None:
        """``node``'s Lease is gone."""
        self._holders.pop(node, None)
        self._observed.pop(node, None)
        self._stale.discard(node)
        self._schedule.touch(node)

    async def sweep(self) -> None:
        """Read every vnode Lease of the ENV once (one paged LIST) and record each that the watches do not carry:
        at start, when a member left, and every ``SWEEP_S`` (``core.ownership``, membership fencing)."""
        started = self.clock()
        selector = f"{vnode.LEASE_SELECTOR},{vnode.LABEL_ENV}={self.env}"  # a holder label comes with the ENV's
        items, _, _ = await self._reads.list_all(self._lease_path(), params={"labelSelector": selector})
        listed: set[str] = set()
        for lease in items:
            node = str((lease.get("metadata") or {}).get("name") or "")
            if not vnode.is_vnode_name(node, self.env):
                continue
            listed.add(node)
            if not self._scoped(node):
                self._note(node, lease)
        for node in [n for n in self._holders if n not in listed and not self._scoped(n) and n not in self._held]:
            self._forget(node)
        self._swept_at = started
        self._wake.set()

    def _sweep_when_due(self, members: list[str], now: float) -> None:
        """Start a sweep in the background: when a member left since the last tick, or ``SWEEP_S`` after the last."""
        left = bool(set(self._members_before) - set(members))
        self._members_before = tuple(members)
        if self._sweep is not None and not self._sweep.done():
            return
        if left or self._swept_at is None or now - self._swept_at >= SWEEP_S:
            self._sweep = asyncio.create_task(self._sweep_logged(), name="lease-sweep")

    async def _sweep_logged(self) -> None:
        try:
            await self.sweep()
        except ApiError as exc:
            log.warning("reading every vnode Lease failed: %s; trying again on a later tick", exc)

    def on_member_change(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        self.membership.on_change(key, old, new)

    # --- the loop -------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Tick forever (cancel to stop; call ``release_all`` first for a graceful hand-over)."""
        watchdog = asyncio.create_task(self._watch_the_loop(), name="lease-keeper-watchdog")
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    await self.tick()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("lease keeping failed; trying again")
                # ``asyncio.timeout``, not ``wait_for``: on Python 3.11 ``wait_for`` swallows a cancel that comes as
                # the wake is set (the stop never ended: test_the_keeper_loop_ends_when_it_is_cancelled_as_it_is_woken)
                # On the grid of TICK_S (``core.grid``): the tick, the watchdog and every other periodic loop wake up
                # together.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(next_tick(loop.time(), TICK_S)):
                        await self._wake.wait()
                self._wake.clear()
        finally:
            watchdog.cancel()
            self.membership.leaving = True

    async def _watch_the_loop(self) -> None:
        """Notice when this process did not run at all for a while (SIGSTOP, a frozen VM), as opposed to being
        busy: a task that only sleeps and looks at the clock is late only when nothing ran."""
        loop = asyncio.get_running_loop()
        while True:
            before = self.clock()
            wait = next_tick(loop.time(), TICK_S) - loop.time()
            await asyncio.sleep(wait)
            gap = self.clock() - before - wait
            if gap > STALL_S:
                self._stalled(gap)

    async def tick(self) -> None:
        now = self.clock()
        self._last_tick = now
        if self._stopping:
            return
        self.membership.renew(now)
        await self.membership.first_written(own.lease_write_budget(self.timing).total_s)
        now = self.clock()
        self.membership.confirm(now)
        members = self.live_members()
        MEMBERS.set(len(members))
        self._sweep_when_due(members, now)
        late, blocked = self.membership.late(now), self.membership.blocks(now)
        handoffs = self._handoff_budget(members, now)
        todo: list[tuple[str, own.Decision]] = []
        if self._stale:
            await self._refresh_stale()
        known = self._observed.keys() | self._held.keys()
        for node in self._schedule.due((tuple(members), self._settled(now), late, blocked), known, now):
            if node in self._busy or node in self._stale:
                continue  # decided again when its write lands (``_carry_out``) or it was read again
            self.decisions += 1
            decision = own.decide(node, self._observed.get(node), me=self.me, members=members,
                                  held=self._held.get(node), now=now, timing=self.timing,
                                  may_hand_off=handoffs > 0 and self._settled(now)
                                  and now - self._held_since.get(node, now) >= self.timing.lease_duration_s,
                                  membership_late=late, may_acquire=not blocked)
            if decision.action is own.Action.HANDOFF:
                if not self.membership.ready(decision.to, now):
                    decision = own.Decision(own.Action.NOTHING)
                    held = self._held[node]
                    if now >= own.renew_due(held, self.timing):
                        decision = own.Decision(own.Action.RENEW)
                else:
                    handoffs -= 1
            if decision.action is own.Action.NOTHING:
                self._schedule.again_at(node, own.next_deadline(
                    node, self._held.get(node), self._observed.get(node), me=self.me, members=members, now=now,
                    timing=self.timing, tick_s=TICK_S))
            else:
                todo.append((node, decision))
        for node, decision in todo:
            if decision.action is own.Action.FENCE:
                self._lose(node, decision.why)
            else:
                # In the background, bounded by a semaphore: a slow apiserver must not delay the next tick
                # (renewals of other leases, fencing decisions).
                self._busy.add(node)
                task = asyncio.create_task(self._carry_out(node, decision), name=f"lease-{decision.action}-{node}")
                self._writes_in_flight.add(task)
                task.add_done_callback(self._writes_in_flight.discard)
        HELD.set(len(self._held))

    def _unheld_count(self) -> float:
        now, members = self.clock(), self.live_members()
        return sum(1 for o in self._observed.values() if own.unheld(o, members, now))

    def _settled(self, now: float) -> bool:
        """Hand vnodes over only once this replica has watched the members for a lease duration."""
        return now - self._started >= self.timing.lease_duration_s

    def _handoff_budget(self, members: list[str], now: float) -> int:
        if len(members) < 2:
            return 0
        return max(1, int(self.settings.lease_handoffs_per_second * TICK_S))

    def _stalled(self, gap: float) -> None:
        STALLS.inc()
        now = self.clock()
        log.warning("this process did not run for %.1fs: restarting every lease observation and fencing", gap)
        self._observed = {n: own.Observed(o.facts, now) for n, o in self._observed.items()}
        self.membership.restart_observations(now)
        for node in list(self._held):
            if not self.may_write(node):
                self._lose(node, f"stalled for {gap:.0f}s, past the renew deadline")
        # What the cache says about leases that name us (or nobody) may be long out of date: read them again
        # before taking any back. Leases of others are refreshed by their holders' renewals.
        self._stale = {n for n, o in self._observed.items() if o.facts.holder in ("", self.me) and n not in self._held}
        self._schedule.decide_all_again()  # every vnode on the next tick

    async def _refresh_stale(self) -> None:
        async def refresh(node: str) -> None:
            async with self._writes:
                try:
                    fresh = await self.kube.get(f"{self._lease_path()}/{node}")
                except ApiError as exc:
                    if exc.is_not_found:
                        self._forget(node)
                    return
            self._note(node, fresh)

        await asyncio.gather(*(refresh(n) for n in list(self._stale)[:200]))

    # --- acting ---------------------------------------------------------------------------------------------

    def _lease_path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{vnode.LEASE_NAMESPACE}/leases"

    async def claim(self, node: str) -> bool:
        """Create the Lease of a vnode nobody holds yet (a base heard for the first time). Atomic: of several
        replicas claiming at once one wins; the others see AlreadyExists."""
        if self.lease_exists(node) or self._stopping:
            return self.may_write(node)
        held = await self.writer.create(node, {k: v for k, v in self._labels().items() if v is not None})
        if held is None:
            self._stale.add(node)  # somebody was faster: read whose it is
            return False
        self._holders[node] = self.me
        self._own_write(node, held.resource_version, 0)
        self._gain(node, own.Held(held.renewed_at, held.resource_version, self._first_renewal(held.renewed_at)),
                   "claimed a new base")
        return True

    async def _carry_out(self, node: str, decision: own.Decision) -> None:
        try:
            async with self._writes:
                if decision.action is own.Action.RENEW:
                    await self._renew(node)
                elif decision.action is own.Action.ACQUIRE:
                    await self._acquire(node, decision.why)
                elif decision.action is own.Action.HANDOFF:
                    await self._hand_over(node, decision.to, "rebalancing")
        except ApiError as exc:
            log.warning("lease %s: %s failed: %s", node, decision.action.value, exc, extra={"node": node})
        finally:
            self._busy.discard(node)
            self._schedule.touch(node)

    async def _renew(self, node: str) -> None:
        held = self._held.get(node)
        if held is None:
            return
        try:
            with RENEW_SECONDS.time():
                renewal = await self.writer.renew(node, held)
        except ApiError:
            LEASE_EVENTS.labels("renew_failed").inc()
            raise
        if renewal.conflict:
            LEASE_EVENTS.labels("conflict").inc()
        if renewal.held is None:  # taken or deleted: read whose it is before deciding again
            self._observed.pop(node, None)
            self._stale.add(node)
            self._lose(node, renewal.lost)
        elif node in self._held:
            self._held[node] = renewal.held
            self._own_write(node, renewal.held.resource_version)

    async def _acquire(self, node: str, why: str) -> None:
        observed = self._observed.get(node)
        if observed is None:
            return
        facts = observed.facts
        held = await self.writer.acquire(node, facts, self._labels())
        if held is None:
            # Somebody else was faster, or it is gone: what we saw is out of date (our watch may be behind). Read
            # it again before deciding again, not a PATCH and a 409 on every tick (module docstring).
            self._stale.add(node)
            return
        self._holders[node] = self.me
        self._own_write(node, held.resource_version, facts.transitions + (facts.holder != self.me))
        self._gain(node, own.Held(held.renewed_at, held.resource_version, self._first_renewal(held.renewed_at)),
                   why if facts.holder != self.me else "")
        if facts.holder and facts.holder != self.me:
            self.events.normal({"kind": "Node", "apiVersion": "v1", "metadata": {"name": node}},
                               "LeaseTakenOver", f"vkprovider {self.me} took over the lease from {facts.holder}: {why}")

    async def _hand_over(self, node: str, to: str, why: str) -> bool:
        """Write ``to`` as the holder. This replica stops acting for the vnode first, whatever the answer."""
        held = self._held.get(node)
        if held is None:
            return False
        observed = self._observed.get(node)
        transitions = observed.facts.transitions if observed is not None else 0
        self._lose(node, f"handing over to {to} ({why})", handed_over=True)
        label = own.holder_label(to)
        handed = await self.writer.hand_over(node, held, transitions, to,
                                             {own.HOLDER_LABEL: label, own.HANDED_TO_LABEL: label})
        if not handed:
            self._stale.add(node)  # read whose it is before deciding again
        elif not self._scoped(node):
            self._observed.pop(node, None)  # a live member's now: nothing to decide here
            self._holders[node] = to
            self.gains.check_foreign(node)
        return handed

    def _own_write(self, node: str, version: str, transitions: int | None = None) -> None:
        """Observe this replica's own write of ``node``'s Lease (its watches do not carry its own Leases): what a
        FENCE, a hand-over or a restart decides from is then the Lease as it is."""
        before = self._observed.get(node)
        if transitions is None:
            transitions = before.facts.transitions if before is not None else 0
        facts = own.LeaseFacts(name=node, holder=self.me, resource_version=version,
                               duration_s=self.timing.lease_duration_s, transitions=transitions, managed=True,
                               member_fenced=True, labelled=self.label)
        self._observed[node] = own.observe(before, facts, self.clock())

    def _labels(self) -> dict[str, str | None]:
        """The labels of a vnode Lease this replica writes itself in as the holder of (a hand-over's label gone)."""
        return {**vnode.lease_labels(self.env), own.HOLDER_LABEL: self.label, own.HANDED_TO_LABEL: None}

    def _gain(self, node: str, held: own.Held, why: str) -> None:
        fresh = node not in self._held
        self._held[node] = held
        self._schedule.touch(node)
        if fresh:
            self._held_since[node] = self.clock()
            LEASE_EVENTS.labels("acquired").inc()
            if why:
                log.info("holding vnode %s (%s)", node, why, extra={"node": node})
            self.gains.gained(node)

    def _lose(self, node: str, why: str, *, handed_over: bool = False) -> None:
        self._held_since.pop(node, None)
        self._schedule.touch(node)
        if self._held.pop(node, None) is None:
            return
        LEASE_EVENTS.labels("handed_over" if handed_over else "lost").inc()
        log.info("no longer acting for vnode %s: %s", node, why, extra={"node": node})
        self.gains.lost(node)

    async def drop(self, node: str) -> None:
        """The base is gone for good: give the vnode up and delete its Lease (only the version we hold)."""
        held = self._held.get(node)
        if held is None or not self.may_write(node):
            return
        self._lose(node, "its base is gone")
        self._forget(node)
        await self.writer.delete(node, held)

    # --- shutdown ---------------------------------------------------------------------------------------------

    async def release_all(self) -> None:
        """SIGTERM: hand every held vnode to its preferred owner among the other live replicas, so a rolling
        restart moves vnodes in seconds; with no other replica, keep holding (a restart under the same
        CLIENT_ID adopts them at once). Then give up the membership."""
        self._stopping = True
        # Leave the membership first: the others stop choosing this replica for anything (without it a
        # receiving replica could hand a vnode straight back to the one that is leaving).
        await self.membership.leave()
        if self._writes_in_flight:  # let renewals under way land first: their answers carry the newest version
            await asyncio.wait(set(self._writes_in_flight), timeout=5.0)
        others = [m for m in self.membership.live() if m != self.me]
        if others:
            moves = []
            for node in list(self._held):
                to = own.rendezvous(node, others)
                if to is not None:
                    moves.append(self._hand_over(node, to, "this replica is stopping"))
            results = await asyncio.gather(*moves, return_exceptions=True)
            done = sum(1 for r in results if r is True)
            LEASE_EVENTS.labels("released").inc(done)
            log.info("handed %d of %d vnode(s) over to %s before stopping", done, len(results), ", ".join(others))

    def wake(self) -> None:
        self._wake.set()

    def _first_renewal(self, now: float) -> float:
        """A vnode gained renews first at a random point of its renew interval: vnodes gained together (a thousand
        bases registering at once, a failover) do not renew together ever after."""
        return now + random.uniform(0.1, 1.0) * self.timing.renew_interval_s

    def jitter(self) -> float:
        return random.uniform(0.0, TICK_S)

