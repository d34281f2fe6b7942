"""What tunnels report lands here: heartbeats admitted (or refused), recorded in the base registry, and the
controllers told which vnodes to look at again.

Admission: a new identity is refused with 429 beyond VKP_MAX_VNODES bases or VKP_NEW_BASES_PER_SECOND (a flood
never touches the bases already known); an identity heartbeating from a new address while its base is alive at
another is refused with 409 unless a credential proved it (no impostor can move a live base). Health answers, biz
lists a base pushed and queryBaseline are routed to the controller that owns them. This is the ``BaseEvents`` sink
every tunnel is given (``tunnels.base``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from vkprovider.config import AdmissionSettings
from vkprovider.controllers.bases import BaseRegistry, Heard
from vkprovider.core import node as vnode
from vkprovider.core.model import BaseHealth, BaseHeartbeat, BaseMetadata, BizInfo, BizSpec
from vkprovider.tunnels.base import Refusal


class TokenBucket:
    """``rate`` per second, up to ``burst`` at once (new base identities accepted)."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._at = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class Modules(Protocol):
    """What admission asks of the module controller."""

    def on_base_changed(self, node: str) -> None: ...

    def on_pushed_bizs(self, node: str, bizs: Sequence[BizInfo]) -> None: ...

    def baseline_for(self, node: str, cluster: str) -> list[BizSpec] | None: ...


class Admission:
    """The tunnels' ``BaseEvents`` (see the module docstring). ``node_changed(node)`` queues a vnode's Node."""

    def __init__(self, cfg: AdmissionSettings, registry: BaseRegistry, *, node_changed: Callable[[str], None],
                 modules: Modules) -> None:
        self._cfg = cfg
        self._registry = registry
        self._node_changed = node_changed
        self._modules = modules
        self._new_bases = TokenBucket(cfg.new_bases_per_second, cfg.new_bases_burst, registry.clock)

    def _node(self, identity: str) -> str:
        return vnode.node_name(identity, self._cfg.env)

    def address_of(self, identity: str) -> str | None:
        view = self._registry.get(self._node(identity))
        if view is None or view.last_heard is None:
            return None
        return view.heartbeat.ip

    def on_heartbeat(self, heartbeat: BaseHeartbeat, *, authenticated: bool = False) -> Refusal | None:
        cfg = self._cfg
        before = self._registry.get(self._node(heartbeat.identity))
        if before is None:
            if len(self._registry) >= cfg.max_vnodes:
                return Refusal(429, f"this vkprovider serves VKP_MAX_VNODES={cfg.max_vnodes} bases", "capped")
            if not self._new_bases.take():
                return Refusal(429, "too many new bases at once (VKP_NEW_BASES_PER_SECOND); try again", "rate_limited")
        elif not authenticated and before.last_heard is not None and not before.deactivated:
            moved = (before.heartbeat.ip, before.heartbeat.port) != (heartbeat.ip, heartbeat.port)
            alive = before.silent_for(self._registry.clock()) <= cfg.unreachable_after_s
            if moved and alive and before.heartbeat.tunnel == heartbeat.tunnel:
                return Refusal(409, f"identity {heartbeat.identity} is alive at {before.heartbeat.ip}:"
                               f"{before.heartbeat.port}; moving it needs a credential", "conflict")
        was = before.readiness(self._registry.clock(), cfg.unreachable_after_s) if before else None
        read_before = before.ledger.read_needed() if before else False
        view, heard = self._registry.heartbeat(heartbeat)
        readiness = view.readiness(self._registry.clock(), cfg.unreachable_after_s)
        if heard is not Heard.NOTHING or was != readiness:
            self._node_changed(view.node)
        if was != readiness or (view.ledger.read_needed() and not read_before):
            self._modules.on_base_changed(view.node)
        return None

    def on_health(self, identity: str, health: BaseHealth) -> None:
        node = self._node(identity)
        if self._registry.health(node, health):
            self._node_changed(node)

    def on_bizs(self, identity: str, bizs: Sequence[BizInfo]) -> None:
        self._modules.on_pushed_bizs(self._node(identity), bizs)

    def baseline(self, metadata: BaseMetadata) -> list[BizSpec] | None:
        node = self._node(metadata.identity)
        view = self._registry.get(node)
        return self._modules.baseline_for(node, view.heartbeat.metadata.cluster_name if view is not None
                                          else metadata.cluster_name)
