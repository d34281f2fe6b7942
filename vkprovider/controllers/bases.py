"""The in-memory view of every base: what it last said, when it was last heard, and its biz ledger.

Tunnels write facts in (heartbeats, health); the node controller writes what it rebuilt from Nodes; the module
controller owns each base's ``BaseLedger`` (``core.basestate``), the one place its biz facts change. A base is
known from either source: a replica that takes a vnode over may never have heard its base (heartbeats reach
whichever replica a Service picks), so the Node says where the base is until a heartbeat does.

Liveness is "last heard": a heartbeat, or any answer from the base's arklet. A replica that owns a vnode probes
the base (``health``) when it has not heard it for a while, so a base whose heartbeats land on other replicas
stays Ready. A base that says DEACTIVATED is not alive: its heartbeat does not count.

The registry is the one writer of what a base said about itself (``deactivated``): heartbeats and probe answers
both come here, and the newest word wins. A probe answer is as old as its question: one sent before the latest
heartbeat does not overrule it (a probe on the wire while the base says DEACTIVATED would otherwise bring the vnode
back to Ready with the answer it gave before shutting down).

A base this replica never heard is as silent as its Node showed it, measured on this replica's clock (issue 27):
the informer shows every status any holder writes, and the moment this replica first saw the Node say the base is
not Ready (``Unknown`` or ``False``) is no earlier than the base's real last sign of life (the holder wrote that
status after the base fell silent, and it reached this replica after it was written). A takeover (``adopted``)
counts the silence from that moment; from the takeover itself when the Node says Ready=True (the holder's last
word: alive), or says nothing. So a replica that has been up for hours takes over a base that fell silent a
minute ago with a minute of silence, never hours; a replica that first saw the Node already not Ready (it started
after the base fell silent) counts from that first sight: late, never early. No timestamp another host wrote
(``lastHeartbeatTime``, ``lastTransitionTime``, ``renewTime``) is compared with the local clock: the holder
refreshes ``lastHeartbeatTime`` while the base is silent, and another host's clock may run ahead.

Times come from an injected monotonic clock so liveness is tested without sleeping.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from vkprovider.core.basestate import BaseLedger
from vkprovider.core.model import BaseHealth, BaseHeartbeat
from vkprovider.core.node import BaseReadiness, node_name
from vkprovider.core.stats import Reading

Clock = Callable[[], float]


class Heard(enum.Enum):
    """What a heartbeat changed."""

    NOTHING = 0  # same base, same facts: liveness refreshed only
    NEW = 1  # a base this replica did not know
    CHANGED = 2  # the node must be updated (labels, address, readiness)


@dataclass(slots=True)
class BaseView:
    """Everything known about one base, keyed by its node name."""

    node: str
    heartbeat: BaseHeartbeat
    first_seen: float
    last_heard: float | None = None  # None: never heard by this replica (known from its Node only)
    said_at: float = -1e18  # when its latest heartbeat (of any state) arrived
    shown_unready_since: float | None = None  # when this replica first saw its Node say "not Ready" (None: Ready)
    vouched_at: float | None = None  # at a takeover: the latest its Node lets it be alive (see the module doc)
    deactivated: bool = False
    health: BaseHealth | None = None
    health_at: float = -1e18
    reading: Reading | None = None  # the latest health answer and when it came (what kubectl top node shows)
    earlier_reading: Reading | None = None  # the one before it (the CPU rate of /stats/summary)
    probing: bool = False
    ledger: BaseLedger = field(default_factory=BaseLedger)

    def silent_for(self, now: float) -> float:
        """Since the base was last heard, or since the takeover's evidence vouches for it, whichever is later."""
        heard = self.last_heard
        if self.vouched_at is not None and (heard is None or self.vouched_at > heard):
            heard = self.vouched_at
        return now - (self.first_seen if heard is None else heard)

    def readiness(self, now: float, unreachable_after_s: float) -> BaseReadiness:
        if self.deactivated:
            return BaseReadiness.DEACTIVATED
        if self.silent_for(now) > unreachable_after_s:
            return BaseReadiness.UNREACHABLE
        return BaseReadiness.READY


class BaseRegistry:
    """All bases of this env known to this replica. Not thread-safe: used from the event loop only."""

    def __init__(self, env: str, clock: Clock = time.monotonic, restart_gap_s: float = 20.0,
                 wall: Clock = time.time) -> None:
        self.env = env
        self.clock = clock
        self.wall = wall
        self.restart_gap_s = restart_gap_s
        self._bases: dict[str, BaseView] = {}

    def __iter__(self) -> Iterator[BaseView]:
        return iter(list(self._bases.values()))

    def __len__(self) -> int:
        return len(self._bases)

    def __contains__(self, node: object) -> bool:
        return node in self._bases

    def get(self, node: str) -> BaseView | None:
        return self._bases.get(node)

    def forget(self, node: str) -> None:
        self._bases.pop(node, None)

    def known_from_node(self, hb: BaseHeartbeat) -> BaseView:
        """A base learnt from its Node (not heard): what its Node shows is told with ``shown``."""
        node = node_name(hb.identity, self.env)
        view = self._bases.get(node)
        if view is None:
            view = BaseView(node=node, heartbeat=hb, first_seen=self.clock())
            self._bases[node] = view
        return view

    def shown(self, node: str, ready: str | None) -> None:
        """The base's Node, as the informer shows it now, says Ready is ``ready``."""
        view = self._bases.get(node)
        if view is None:
            return
        if ready in ("Unknown", "False"):
            if view.shown_unready_since is None:
                view.shown_unready_since = self.clock()
        else:
            view.shown_unready_since = None

    def adopted(self, node: str, ready: str | None) -> None:
        """This replica takes the vnode over (a failover, a hand-over, a restart) and its Node says Ready is
        ``ready``: the base's silence counts from what the Node showed (see the module docstring)."""
        view = self._bases.get(node)
        if view is None:
            return
        if ready == "True":
            view.vouched_at = None
            if not view.deactivated:  # the holder's last word: alive (a probe, asked at once, may say otherwise)
                view.last_heard = self.clock()
        elif ready in ("Unknown", "False") and view.shown_unready_since is not None:
            view.vouched_at = view.shown_unready_since
        else:  # the Node says nothing: count from now
            view.vouched_at = self.clock()

    def heartbeat(self, hb: BaseHeartbeat) -> tuple[BaseView, Heard]:
        """Record a heartbeat; a long silence or a new address means the base may have restarted (and lost its
        bizs), so its ledger is asked to read again."""
        now = self.clock()
        node = node_name(hb.identity, self.env)
        view = self._bases.get(node)
        deactivated = hb.state == "DEACTIVATED"
        if view is None:
            view = BaseView(node=node, heartbeat=hb, first_seen=now, deactivated=deactivated, said_at=now)
            if not deactivated:
                view.last_heard = now
            self._bases[node] = view
            return view, Heard.NEW
        was_silent = view.last_heard is None or now - view.last_heard > self.restart_gap_s
        moved = (view.heartbeat.ip, view.heartbeat.port, view.heartbeat.tunnel) != (hb.ip, hb.port, hb.tunnel)
        changed = view.heartbeat != hb or view.deactivated != deactivated
        if (was_silent or moved) and not deactivated:
            view.ledger.request_read()
        if changed:  # an equal heartbeat keeps the old object: "unchanged" is an identity check downstream
            view.heartbeat = hb
        view.deactivated = deactivated
        view.said_at = now
        if not deactivated:
            view.last_heard = now
        return view, (Heard.CHANGED if changed or was_silent else Heard.NOTHING)

    def answered(self, node: str) -> None:
        """The base's arklet answered a call: it is alive (its heartbeats may be reaching another replica)."""
        view = self._bases.get(node)
        if view is not None and not view.deactivated:
            view.last_heard = self.clock()

    def probed(self, node: str, health: BaseHealth, sent_at: float) -> bool:
        """The base answered a health probe sent at ``sent_at``: its state counts only when the question is newer
        than its latest heartbeat; the answer is a sign of life unless the base is shutting down. True if it
        changed what the node shows."""
        view = self._bases.get(node)
        if view is None:
            return False
        changed = False
        if sent_at > view.said_at:
            state = health.master_biz_state
            deactivated = state is not None and state != "ACTIVATED"
            changed = deactivated != view.deactivated
            view.deactivated = deactivated
        if not view.deactivated:
            view.last_heard = self.clock()
        return self.health(node, health) or changed

    def health(self, node: str, health: BaseHealth) -> bool:
        """Record health; True if it changed what the node shows. Every answer is a new reading of what the base
        uses (``core.stats``), even one equal to the last."""
        view = self._bases.get(node)
        if view is None:
            return False
        view.health_at = self.clock()
        view.earlier_reading, view.reading = view.reading, Reading(self.wall(), health)
        changed = view.health != health
        if changed:  # as for heartbeats: an equal answer keeps the old object
            view.health = health
        return changed
