"""Which replica acts for a vnode: ownership through the vnode's Lease, as an explicit state, decided purely.

vkprovider runs as one or several replicas. Each vnode is owned by exactly one of them, the holder of its node
Lease in ``kube-node-lease``; only the owner sends biz commands to the base or writes the Node and its pods. The
rules follow client-go's leaderelection and KWOK's node-lease controller:

- **Observed time, never a remote clock.** A lease is expired when *this* process has seen it unchanged (same
  resourceVersion) for its ``leaseDurationSeconds``, measured on the local monotonic clock from the moment the
  change was observed. Another host's ``renewTime`` is never compared with the local clock, so a clock that runs
  ahead cannot steal a lease.
- **Optimistic concurrency.** Every write to a lease (acquire, renew, hand-over) carries the resourceVersion it
  was decided on; a 409 means somebody else won and the decision is made again from a fresh observation.
- **Fencing.** A holder is only ``HELD`` while its last successful renewal was sent less than ``renew_deadline``
  ago (shorter than the lease duration): a replica that stalls (SIGSTOP, a long GC, a partition) stops writing
  before anyone else may take over, and after it wakes it writes nothing for that vnode until it has acquired the
  lease again.
- **Spread.** The replicas that are alive (each keeps a membership Lease in its namespace) share the vnodes by
  rendezvous hashing: the preferred owner of a vnode is the live member with the highest hash of
  ``(member, vnode)``. Expired and released leases go to their preferred owner; a holder hands a vnode over when
  another live member is preferred (a new replica, bounded per round by the caller); a dead member's vnodes
  spread over the rest.
- **Membership fencing, and who watches what** (issue 31). A replica holds its vnodes only while its own
  membership Lease is renewed in time: once that renewal is past the renew deadline it stops acting for every
  vnode (``membership_late``), as it would for one vnode whose renewal is late. A vnode Lease says so with the
  ``HOLDER_LABEL`` label naming its holder (``holder_label``), written with the holder by every acquire, create and
  hand-over (``LeaseFacts.member_fenced``). Such a Lease is its holder's for as long as the holder is a live
  member, whatever its renewals, and is free the moment the holder is not (its membership seen unchanged for a
  lease duration and read again: the holder fenced itself before that). So a replica need not watch other
  replicas' renewals to take over from a dead one, nor its own: it watches the vnode Leases being handed over to
  it (``HANDED_TO_LABEL``, written with the new holder by a hand-over and removed by its acquire) and those without
  the holder label (the Go controller's, an older vkprovider's), and reads all of them only at start, when a
  member leaves and once a minute (``observed_here`` says which of those it keeps). A Lease without the label
  follows the older rule: free once seen unchanged for its duration. During a rolling upgrade from an older
  vkprovider (no label, no membership fencing) one edge is left: a Lease a new replica hands to an old one keeps
  the label, so it is free once the old replica's membership expires, even were its vnode renewals still landing.
- **Adoption.** A lease held by this replica's own identity (a restart) is taken back at once; so is one written
  by a controller that is not vkprovider (the Go ModuleController: no ``app.kubernetes.io/managed-by`` label), as
  the migration procedure stops that controller first.
- **Writes in time** (``lease_write_budget``). A renewal falls due ``renew_interval`` after the last one was sent
  and is useless after ``renew_deadline``: every Lease write (vnode, membership, release writer) has the time
  between the two, ``renew_deadline - renew_interval`` (5 s by default), in all. Its first attempt waits two thirds
  of that for an answer; a write that timed out or whose connection died is sent once more on a fresh connection
  in the rest (a dead pooled connection answers nothing, however long one waits: before, such a renewal waited
  the generic 30 s, past the deadline and the lease, and fenced the vnode). Repeating a write is safe: each
  carries the resourceVersion it was decided on, so one that landed twice answers 409, and the writer asks
  whether the Lease is still its own (its own renewTime in it: the first copy landed).

This module has no I/O: the node controller feeds it observations and carries out its decisions.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import heapq
import re
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Any

from vkprovider.core.grid import round_down

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "vkprovider"
HOLDER_LABEL = "vkprovider.koupleless.io/holder"
HANDED_TO_LABEL = "vkprovider.koupleless.io/handed-to"  # written by a hand-over, removed by the receiver's acquire
_LABEL_VALUE = re.compile(r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")


def holder_label(holder: str) -> str:
    """``holder`` as a label value: itself when it is a valid one, else a digest of it (``h-`` and 16 hex digits)."""
    if _LABEL_VALUE.fullmatch(holder):
        return holder
    return "h-" + hashlib.blake2b(holder.encode(), digest_size=8).hexdigest()


class Phase(enum.StrEnum):
    """This replica's relation to one vnode."""

    STANDBY = "Standby"  # somebody else holds it, or nobody should take it yet
    ACQUIRING = "Acquiring"  # a write to take the lease is on its way
    HELD = "Held"  # we hold it and renewed in time: we may act
    LOST = "Lost"  # we held it and no longer may (taken, handed over, or past the renew deadline)


@dataclass(frozen=True, slots=True)
class LeaseFacts:
    """What matters of a Lease object, parsed once."""

    name: str
    holder: str
    resource_version: str
    duration_s: float
    transitions: int
    managed: bool  # written by vkprovider (else: a foreign controller such as the Go ModuleController)
    member_fenced: bool = False  # labelled with its holder: the holder fences itself by its membership
    labelled: str | None = None  # the HOLDER_LABEL value (None: no such label)

    @classmethod
    def from_object(cls, obj: Mapping[str, Any], default_duration_s: float) -> LeaseFacts:
        md = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        duration = spec.get("leaseDurationSeconds")
        labels = md.get("labels") or {}
        holder = str(spec.get("holderIdentity") or "")
        labelled = labels.get(HOLDER_LABEL)
        return cls(
            name=str(md.get("name") or ""),
            holder=holder,
            resource_version=str(md.get("resourceVersion") or ""),
            duration_s=float(duration) if isinstance(duration, int | float) and duration > 0 else default_duration_s,
            transitions=int(spec.get("leaseTransitions") or 0),
            managed=labels.get(MANAGED_BY_LABEL) == MANAGED_BY,
            member_fenced=bool(holder) and labelled == holder_label(holder),
            labelled=labelled if isinstance(labelled, str) else None,
        )


@dataclass(frozen=True, slots=True)
class Observed:
    """A lease as last seen, and when (local monotonic seconds) it was last seen to change."""

    facts: LeaseFacts
    since: float


def observe(previous: Observed | None, facts: LeaseFacts, now: float) -> Observed:
    """Update an observation: the clock restarts only when the lease really changed."""
    if previous is not None and previous.facts.resource_version == facts.resource_version:
        return Observed(facts, previous.since)
    return Observed(facts, now)


def expired(observed: Observed, now: float) -> bool:
    """Unchanged for its whole duration, as measured here."""
    return now - observed.since >= observed.facts.duration_s


@dataclass(frozen=True, slots=True)
class Held:
    """Our hold on a lease: when the last successful renewal was sent, and the version it produced."""

    renewed_at: float
    resource_version: str
    renew_at: float | None = None  # when the next renewal is due (None: a renew interval after ``renewed_at``)


@dataclass(frozen=True, slots=True)
class Timing:
    lease_duration_s: float
    renew_interval_s: float
    renew_deadline_s: float
    # The grid the renewals are decided on (0: exact). A renewal is sent a moment after its tick, so its hold counts
    # from that moment (the deadline stays safe) while its next renewal is due a renew interval after the tick: on a
    # tick, with the whole write budget before the deadline (due a renew interval after the moment of sending, it
    # would miss that tick and go a tick later, every time).
    tick_s: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.renew_interval_s < self.renew_deadline_s < self.lease_duration_s:
            raise ValueError("need 0 < renew interval < renew deadline < lease duration")


@dataclass(frozen=True, slots=True)
class WriteBudget:
    """How long one Lease write may take: each attempt, and all attempts together (see the module docstring)."""

    attempt_s: float
    total_s: float


def lease_write_budget(timing: Timing) -> WriteBudget:
    """A renewal sent when due must land before the renew deadline: the window between them for the whole write,
    and after two thirds of it a second copy on a fresh connection beside the first (``Kube.lane``'s ``hedged``)."""
    total = timing.renew_deadline_s - timing.renew_interval_s
    return WriteBudget(attempt_s=total * 2 / 3, total_s=total)


def renew_due(held: Held, timing: Timing) -> float:
    """When ``held`` is to be renewed next: a renew interval after the tick it was renewed on (``Timing.tick_s``)."""
    if held.renew_at is not None:
        return held.renew_at
    return round_down(held.renewed_at, timing.tick_s) + timing.renew_interval_s


def fenced(held: Held, now: float, timing: Timing) -> bool:
    """Past the renew deadline: this replica must stop writing for the vnode."""
    return now - held.renewed_at >= timing.renew_deadline_s


def rendezvous(vnode: str, members: Sequence[str]) -> str | None:
    """The preferred owner of ``vnode`` among ``members`` (highest random weight); None without members.

    Memoized: the lease keeper asks for every vnode twice a second, and membership rarely changes."""
    return _rendezvous(vnode, tuple(members))


@functools.lru_cache(maxsize=1 << 16)
def _rendezvous(vnode: str, members: tuple[str, ...]) -> str | None:
    best: tuple[int, str] | None = None
    for member in members:
        digest = hashlib.blake2b(f"{member}\x00{vnode}".encode(), digest_size=8).digest()
        weight = (int.from_bytes(digest, "big"), member)
        if best is None or weight > best:
            best = weight
    return best[1] if best is not None else None


class Action(enum.StrEnum):
    NOTHING = "nothing"
    ACQUIRE = "acquire"  # write ourselves as holder (resourceVersion precondition)
    RENEW = "renew"
    HANDOFF = "handoff"  # write another live member as holder
    FENCE = "fence"  # we held it and may not any more: stop acting, cancel commands


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    to: str = ""
    why: str = ""


def decide(
    vnode: str,
    lease: Observed | None,
    *,
    me: str,
    members: Sequence[str],
    held: Held | None,
    now: float,
    timing: Timing,
    may_hand_off: bool = True,
    membership_late: bool = False,
    may_acquire: bool = True,
) -> Decision:
    """What this replica should do about one vnode's lease now.

    ``lease`` is None when there is no Lease (creating one is the node controller's business: it claims a new
    base with a create, which is atomic). ``members`` are the live replicas including ``me``; ``membership_late``:
    this replica's own membership renewal is past its renew deadline (module docstring); ``may_acquire`` False:
    it may not take any Lease now (its membership is not written yet, or late, or it is leaving).
    """
    if held is not None:
        if fenced(held, now, timing):
            return Decision(Action.FENCE, why="renew deadline passed")
        if membership_late:
            return Decision(Action.FENCE, why="this replica's membership renewal is past its renew deadline")
        if lease is not None and lease.facts.holder != me and lease.facts.resource_version != held.resource_version:
            return Decision(Action.FENCE, why=f"lease now held by {lease.facts.holder or 'nobody'}")
        preferred = rendezvous(vnode, members)
        if may_hand_off and preferred is not None and preferred != me:
            return Decision(Action.HANDOFF, to=preferred, why="another live replica is preferred")
        if now >= renew_due(held, timing):
            return Decision(Action.RENEW)
        return Decision(Action.NOTHING)
    if lease is None or not may_acquire:
        return Decision(Action.NOTHING)
    facts = lease.facts
    if facts.holder == me:
        return Decision(Action.ACQUIRE, why="held under our identity (a restart)")
    if facts.member_fenced:
        if facts.holder in members:
            return Decision(Action.NOTHING)
        why = f"its holder {facts.holder} is no longer a live replica"
    else:
        if facts.holder and facts.managed and not expired(lease, now):
            return Decision(Action.NOTHING)
        if facts.holder and facts.holder in members and not expired(lease, now):
            return Decision(Action.NOTHING)
        why = ("released" if not facts.holder else
               "written by another controller" if not facts.managed else f"expired (holder {facts.holder})")
    preferred = rendezvous(vnode, members)
    if preferred == me:
        return Decision(Action.ACQUIRE, why=why)
    # Not ours to take first; if the preferred replica does not take it within another lease duration (it may
    # be stuck without having lost its membership yet), anybody may. The resourceVersion decides who wins.
    if now - lease.since >= 2 * facts.duration_s:
        return Decision(Action.ACQUIRE, why=why + "; its preferred owner did not take it")
    return Decision(Action.NOTHING)


def live_members(observed: Mapping[str, Observed], me: str, now: float,
                 gone: Mapping[str, str] | None = None) -> list[str]:
    """Replicas whose membership lease is fresh (observed changing within its duration), always with ``me``.

    With ``gone`` (membership lease name -> the resourceVersion a fresh read found still unchanged after it
    expired), an expired membership counts as alive until such a read confirms it: a watch that stopped delivering
    never makes a live replica look dead (its vnodes are taken on this, see the module docstring)."""
    alive = {o.facts.holder for name, o in observed.items()
             if o.facts.holder and (not expired(o, now)
                                    or (gone is not None and gone.get(name) != o.facts.resource_version))}
    alive.add(me)
    return sorted(alive)


def observed_here(facts: LeaseFacts, me: str, members: Sequence[str]) -> bool:
    """Whether a replica keeps an observation of a vnode Lease it read whole (at start, after a member left, once a
    minute): those it may come to take (no holder, its own name, another controller's, one without the holder
    label, one whose holder is not live), not those a live member holds under the label (module docstring)."""
    return not (facts.member_fenced and facts.holder != me and facts.holder in members)


def unheld(observed: Observed, members: Sequence[str], now: float) -> bool:
    """A vnode Lease with no live holder: no holder, a labelled holder that is not live, or unlabelled and expired."""
    if not observed.facts.holder:
        return True
    if observed.facts.member_fenced:
        return observed.facts.holder not in members
    return expired(observed, now)


def next_deadline(node: str, held: Held | None, observed: Observed | None, *, me: str, members: Sequence[str],
                  now: float, timing: Timing, tick_s: float) -> float | None:
    """When a decision of "nothing" about a vnode may turn into something without any new observation: its renewal
    when held (the next tick while it is to be handed over: that waits for a budget, the member's readiness or the
    hold's age), a lease duration and two after the observation when not; None when only a new observation can."""
    if held is not None:
        if len(members) > 1 and rendezvous(node, members) != me:
            return now + tick_s
        return renew_due(held, timing)
    if observed is None:
        return None
    if observed.facts.member_fenced and observed.facts.holder != me and observed.facts.holder in members:
        return None  # its live holder's until the members change (which decides every vnode again)
    duration = observed.facts.duration_s
    for deadline in (observed.since + duration, observed.since + 2 * duration):
        if deadline > now:
            return deadline
    return now + tick_s


class DecisionSchedule:
    """When each vnode is to be decided again, so a tick decides only those whose inputs or time changed.

    ``again_at(node, at)`` files a time (None: only a new observation can change it); ``touch(node)`` has it decided
    on the next tick whatever its time; ``due(inputs, known, now)`` is the vnodes to decide now: all of ``known``
    when ``inputs`` (the live replicas, whether hand-overs may start) changed since they were last all decided, else
    the touched ones and those whose time came. A heap of (time, node) with outdated entries skipped, rebuilt when
    they outnumber the live ones."""

    def __init__(self) -> None:
        self._next: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self._touched: set[str] = set()
        self._decided_for: tuple[object, ...] | None = None

    def touch(self, node: str) -> None:
        self._touched.add(node)

    def decide_all_again(self) -> None:
        self._decided_for = None

    def again_at(self, node: str, at: float | None) -> None:
        if at is None:
            self._next.pop(node, None)
            return
        if self._next.get(node) == at:
            return
        self._next[node] = at
        heapq.heappush(self._heap, (at, node))
        if len(self._heap) > 4 * len(self._next) + 1024:
            self._heap = [(t, n) for n, t in self._next.items()]
            heapq.heapify(self._heap)

    def due(self, inputs: tuple[object, ...], known: Set[str], now: float) -> list[str]:
        if inputs != self._decided_for:
            self._decided_for = inputs
            self._next.clear()
            self._heap.clear()
            self._touched.clear()
            return list(known)
        due, self._touched = self._touched, set()
        while self._heap and self._heap[0][0] <= now:
            at, node = heapq.heappop(self._heap)
            if self._next.get(node) == at:
                del self._next[node]
                due.add(node)
        return [n for n in due if n in known]
