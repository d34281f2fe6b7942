"""The write port of a vnode: the one way to write for a vnode, and it writes only while this replica holds it.

"Only the holder of a vnode's Lease writes for it" is a rule of the port, not of its callers. Every write made on
behalf of a vnode - its Node (create, metadata, status, delete), the status and the deletion of its pods, Events
about them, and the biz commands sent to its base - goes through a :class:`VnodeScope`, which asks the Lease
keeper for the vnode's :class:`Hold` right before sending and raises instead of sending when it is not held:

- :class:`Fenced` (held, but the last renewal is older than the renew deadline): nothing is sent now; the work
  queue looks at the key again after ``FENCED_RETRY_S`` (a renewal under way usually lands by then);
- :class:`Lost` (another replica holds it, or nobody): nothing is sent; the work queue forgets the key (the Lease
  keeper queues it again if the vnode comes back).

Both are outcomes the work queue maps in one place (``controllers.queue``), so a handler needs no hold check of
its own, and a new write that forgets to check cannot exist: a controller has no other handle to write with.
Reads (the base's biz list and health, the API's caches) are not writes and need no hold.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from vkprovider.controllers.queue import Drop, RequeueAfter
from vkprovider.core.model import BaseHeartbeat, BizKey, BizSpec, CommandResult
from vkprovider.tunnels.base import Tunnel, TunnelError

#: A reconcile that met a fenced vnode (held, renewal late) comes back after this.
FENCED_RETRY_S = 1.0


class Hold(enum.Enum):
    """Where this replica stands with one vnode's Lease."""

    HELD = "held"  # held and renewed within the deadline: writes go
    FENCED = "fenced"  # held, the renewal is late: no writes until it lands
    LOST = "lost"  # not held


class Fenced(RequeueAfter):
    """The vnode is held but fenced: nothing was sent; look again shortly."""

    def __init__(self, node: str) -> None:
        super().__init__(FENCED_RETRY_S, f"vnode {node} is fenced (its Lease renewal is late)")
        self.node = node


class Lost(Drop):
    """The vnode is not held by this replica: nothing was sent, and nothing more will be for it."""

    def __init__(self, node: str) -> None:
        super().__init__(f"vnode {node} is not held by this replica")
        self.node = node


class Holds(Protocol):
    """Who answers "do I hold this vnode?" (the Lease keeper)."""

    def hold(self, node: str) -> Hold: ...


class ApiWrites(Protocol):
    """The part of the kube facade a vnode's writes use."""

    async def create(self, path: str, obj: Mapping[str, Any], *, params: Mapping[str, Any] | None = None) -> Any: ...

    async def patch(self, path: str, body: Any, *, kind: Any = "strategic") -> Any: ...

    async def request(self, method: str, path: str, *, body: Any = None) -> Any: ...

    async def delete(self, path: str) -> Any: ...


class EventSink(Protocol):
    """Where Events go (``kube.events.EventRecorder``)."""

    def normal(self, obj: Mapping[str, Any], reason: str, message: str) -> None: ...

    def warning(self, obj: Mapping[str, Any], reason: str, message: str) -> None: ...


def node_ref(node: str) -> dict[str, Any]:
    """An Event's object reference to a Node."""
    return {"kind": "Node", "apiVersion": "v1", "metadata": {"name": node}}


class VnodeWrites:
    """Hands out the write scope of each vnode; see the module docstring."""

    def __init__(self, holds: Holds, kube: ApiWrites, events: EventSink,
                 tunnels: Mapping[str, Tunnel]) -> None:
        self._holds = holds
        self._kube = kube
        self._events = events
        self._tunnels = tunnels

    def hold(self, node: str) -> Hold:
        return self._holds.hold(node)

    def reaches(self, base: BaseHeartbeat) -> bool:
        """Whether a tunnel of this replica reaches ``base`` (the one its heartbeats came by)."""
        return base.tunnel in self._tunnels

    def reads(self, base: BaseHeartbeat) -> Tunnel:
        """The tunnel that reaches ``base``, for reads (its biz list, its health): reads need no hold."""
        tunnel = self._tunnels.get(base.tunnel)
        if tunnel is None:
            raise TunnelError(f"no {base.tunnel} tunnel for base {base.identity}")
        return tunnel

    def release(self, base: BaseHeartbeat) -> None:
        """This replica no longer commands ``base``: its tunnel may let go of it (MQTT subscriptions)."""
        tunnel = self._tunnels.get(base.tunnel)
        if tunnel is not None:
            tunnel.release(base)

    def scope(self, node: str) -> VnodeScope:
        return VnodeScope(node, self._holds, self._kube, self._events, self._tunnels)


class VnodeScope:
    """Every write for one vnode. Each method checks the hold right before it sends (see the module docstring)."""

    __slots__ = ("_events", "_holds", "_kube", "_tunnels", "node")

    def __init__(self, node: str, holds: Holds, kube: ApiWrites, events: EventSink,
                 tunnels: Mapping[str, Tunnel]) -> None:
        self.node = node
        self._holds = holds
        self._kube = kube
        self._events = events
        self._tunnels = tunnels

    def check(self) -> None:
        """Raise :class:`Fenced` or :class:`Lost` unless this replica may write for the vnode now."""
        hold = self._holds.hold(self.node)
        if hold is Hold.FENCED:
            raise Fenced(self.node)
        if hold is Hold.LOST:
            raise Lost(self.node)

    @property
    def writable(self) -> bool:
        return self._holds.hold(self.node) is Hold.HELD

    # --- the vnode's Node ---------------------------------------------------------------------------------
    async def create_node(self, body: Mapping[str, Any]) -> Any:
        self.check()
        return await self._kube.create("/api/v1/nodes", body)

    async def patch_node(self, body: Any) -> Any:
        self.check()
        return await self._kube.patch(f"/api/v1/nodes/{self.node}", body, kind="merge")

    async def patch_node_status(self, body: Any) -> Any:
        self.check()
        return await self._kube.patch(f"/api/v1/nodes/{self.node}/status", body, kind="merge")

    async def delete_node(self) -> Any:
        self.check()
        return await self._kube.delete(f"/api/v1/nodes/{self.node}")

    # --- its pods -----------------------------------------------------------------------------------------
    async def patch_pod_status(self, namespace: str, name: str, body: Any) -> Any:
        self.check()
        return await self._kube.patch(f"/api/v1/namespaces/{namespace}/pods/{name}/status", body, kind="strategic")

    async def delete_pod(self, namespace: str, name: str, body: Mapping[str, Any]) -> Any:
        self.check()
        return await self._kube.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}", body=body)

    async def evict_pod(self, namespace: str, name: str) -> Any:
        """Ask the Eviction API to remove the pod (PodDisruptionBudgets hold: a refusal is a 429)."""
        self.check()
        body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": namespace}}
        return await self._kube.create(f"/api/v1/namespaces/{namespace}/pods/{name}/eviction", body)

    def normal(self, obj: Mapping[str, Any], reason: str, message: str) -> None:
        """An Event about the vnode or one of its pods; dropped (not raised) when the vnode is not held: an Event
        is a side note of a write, and the write itself already raised."""
        if self.writable:
            self._events.normal(obj, reason, message)

    def warning(self, obj: Mapping[str, Any], reason: str, message: str) -> None:
        if self.writable:
            self._events.warning(obj, reason, message)

    # --- its base -----------------------------------------------------------------------------------------
    def _tunnel(self, base: BaseHeartbeat) -> Tunnel:
        tunnel = self._tunnels.get(base.tunnel)
        if tunnel is None:
            raise Drop(f"no {base.tunnel} tunnel for base {base.identity}")
        return tunnel

    async def install_biz(self, base: BaseHeartbeat, spec: BizSpec, *, replace: bool = False,
                          owner: str = "") -> CommandResult:
        """``owner``: the bizModelVersion (the uid of the pod the biz is installed for)."""
        tunnel = self._tunnel(base)
        self.check()
        return await tunnel.install_biz(base, spec, replace_other_versions=replace, biz_model_version=owner)

    async def batch_install_biz(self, base: BaseHeartbeat, specs: Sequence[BizSpec], *,
                                owners: Mapping[BizKey, str] | None = None) -> dict[str, CommandResult]:
        tunnel = self._tunnel(base)
        self.check()
        return await tunnel.batch_install_biz(base, specs, biz_model_versions=owners)

    async def uninstall_biz(self, base: BaseHeartbeat, name: str, version: str, *, owner: str = "") -> CommandResult:
        """``owner``: the bizModelVersion the biz was installed with (empty: an orphan, always allowed)."""
        tunnel = self._tunnel(base)
        self.check()
        return await tunnel.uninstall_biz(base, name, version, biz_model_version=owner)

