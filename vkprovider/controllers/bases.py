"""The in-memory view of every base: what it last said, when, and what vkprovider is doing to it.

Tunnels write facts in (heartbeats, health, biz lists); the node and module controllers read them. Times come
from an injected monotonic clock so liveness is tested without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from vkprovider.core.model import BaseHealth, BaseHeartbeat, BizInfo, BizKey
from vkprovider.core.node import node_name
from vkprovider.core.podstatus import OpFacts

Clock = Callable[[], float]


@dataclass(slots=True)
class BaseView:
    """Everything known about one base, keyed by its node name."""

    node: str
    heartbeat: BaseHeartbeat
    last_seen: float
    first_seen: float
    health: BaseHealth | None = None
    health_at: float = -1e18
    bizs: dict[BizKey, BizInfo] | None = None
    bizs_at: float = -1e18
    bizs_stale: bool = True
    inflight: set[BizKey] = field(default_factory=set)
    ops: dict[BizKey, OpFacts] = field(default_factory=dict)
    retry_after: dict[BizKey, float] = field(default_factory=dict)
    failures: dict[BizKey, int] = field(default_factory=dict)
    orphan_since: dict[BizKey, float] = field(default_factory=dict)
    known: set[BizKey] = field(default_factory=set)
    superseded: dict[BizKey, BizKey] = field(default_factory=dict)  # old version -> the version that replaced it
    unreachable_since: float | None = None

    def silent_for(self, now: float) -> float:
        return now - self.last_seen


class BaseRegistry:
    """All bases of this env seen by any tunnel. Not thread-safe: used from the event loop only."""

    def __init__(self, env: str, clock: Clock = time.monotonic, restart_gap_s: float = 20.0) -> None:
        self.env = env
        self.clock = clock
        self.restart_gap_s = restart_gap_s
        self._bases: dict[str, BaseView] = {}

    def __iter__(self) -> Iterator[BaseView]:
        return iter(list(self._bases.values()))

    def __len__(self) -> int:
        return len(self._bases)

    def get(self, node: str) -> BaseView | None:
        return self._bases.get(node)

    def forget(self, node: str) -> None:
        self._bases.pop(node, None)

    def heartbeat(self, hb: BaseHeartbeat) -> tuple[BaseView, bool, bool]:
        """Record a heartbeat. Returns (view, node facts changed, bizs must be re-read)."""
        now = self.clock()
        node = node_name(hb.identity, self.env)
        view = self._bases.get(node)
        if view is None:
            view = BaseView(node=node, heartbeat=hb, last_seen=now, first_seen=now)
            self._bases[node] = view
            return view, True, True
        changed = view.heartbeat != hb or view.unreachable_since is not None
        # A long gap means the base may have restarted (and lost its bizs): look again.
        reread = now - view.last_seen > self.restart_gap_s or (view.heartbeat.ip, view.heartbeat.port) != (
            hb.ip,
            hb.port,
        )
        view.heartbeat = hb
        view.last_seen = now
        if reread:
            view.bizs_stale = True
        return view, changed, reread

    def health(self, node: str, health: BaseHealth) -> bool:
        """Record health; True if it changed what the node shows."""
        view = self._bases.get(node)
        if view is None:
            return False
        view.health_at = self.clock()
        changed = view.health != health
        view.health = health
        return changed

    def bizs(self, node: str, bizs: Sequence[BizInfo]) -> Mapping[BizKey, BizInfo] | None:
        view = self._bases.get(node)
        if view is None:
            return None
        view.bizs = {b.key: b for b in bizs}
        view.bizs_at = self.clock()
        view.bizs_stale = False
        return view.bizs
