"""The share: a replica keeps whole only the Nodes and module pods of the vnodes it holds, or may come to hold.

Why it exists (issue 31): with several replicas each one used to cache every vnode's Node and every module pod of
its ENV, so adding replicas did not let vkprovider grow past what one process can hold. Now a vnode whose Lease
names another replica (``LeaseKeeper.foreign``) is kept as a skeleton: of its Node the labels, annotations,
addresses and Ready condition (``core.node.node_skeleton``: where its base is, and since when it is not Ready, which
a takeover counts a base's silence from), of its pods the identity, owner, node, phase and Ready /
ContainersReady (``core.module.pod_skeleton``: what the release decisions count over a workload's pods). Every other
vnode is kept whole: the ones this replica holds, new bases (no Lease yet), Leases nobody or this replica's own
identity holds (a restart adopts them at once, from a whole cache).

The rules:

- **Trimmed at arrival.** The informers trim each object as it is listed or watched (``trim_node``, ``trim_pod``),
  by what the Lease keeper knows at that moment.
- **Shrunk when another replica holds it.** When a vnode's Lease is first seen naming another replica
  (``Gains.on_foreign``: a hand-over away, a Lease seen at start), its cached Node and pods become skeletons
  (``Informer.retrim``).
- **Read whole before acting.** A vnode gained after that (a hand-over to this replica, a takeover) is fenced until
  its Node and pods are read again from the API (``load``: a LIST by ``metadata.name`` and one by ``spec.nodeName``,
  which the apiserver answers from its indexes, each not older than the cache; vkprovider's list rights) and the
  cached skeletons replaced (``Informer.refresh``, never by an older copy); only then are the controllers told it is
  held (restart adoption: read first, never replay).

What is measured, and why the pods are not watched per vnode: docs/performance.md, "Several replicas".
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from vkprovider.core import node as vnode
from vkprovider.core.module import is_skeleton, pod_skeleton, trim_pod
from vkprovider.kube.client import ApiError, Kube
from vkprovider.kube.informer import Informer, UnionCache, trim

log = logging.getLogger(__name__)

Obj = dict[str, Any]


class Owners(Protocol):
    """What the share asks the Lease keeper."""

    def foreign(self, node: str) -> bool: ...


def _not_older(params: dict[str, str], informers: list[Informer]) -> dict[str, str]:
    """``params`` for a LIST at least as new as every one of ``informers``' caches."""
    versions = [int(i.resource_version) for i in informers if i.resource_version.isdigit()]
    if versions:
        params = {**params, "resourceVersion": str(max(versions)), "resourceVersionMatch": "NotOlderThan"}
    return params


class Shard:
    """See the module docstring. Build it, build the informers with its trims, then ``bind`` them."""

    def __init__(self, kube: Kube, owners: Owners) -> None:
        self._kube = kube
        self._owners = owners
        self._nodes: Informer | None = None
        self._pods: UnionCache | None = None
        self._pods_by_node: dict[str, set[str]] = {}
        self._node_of: dict[str, str] = {}

    def bind(self, nodes: Informer, pods: UnionCache) -> None:
        self._nodes = nodes
        self._pods = pods
        pods.subscribe(self._on_pod_change)

    # --- trims ------------------------------------------------------------------------------------------------

    def trim_node(self, node: Obj) -> Obj:
        name = str((node.get("metadata") or {}).get("name") or "")
        return vnode.node_skeleton(node) if self._owners.foreign(name) else trim(node)

    def trim_pod(self, pod: Obj) -> Obj:
        bound_to = str((pod.get("spec") or {}).get("nodeName") or "")
        return pod_skeleton(pod) if bound_to and self._owners.foreign(bound_to) else trim_pod(pod)

    # --- transitions --------------------------------------------------------------------------------------------

    def on_foreign(self, node: str) -> None:
        """``node``'s Lease now names another replica: keep its Node and pods as skeletons."""
        if self._nodes is not None:
            self._nodes.retrim([node])
        if self._pods is not None:
            self._pods.retrim(list(self._pods_by_node.get(node, ())))

    async def load(self, node: str) -> None:
        """Read ``node``'s Node and the pods bound to it from the API and cache them whole (``Gains.loader``).

        Each read is at least as new as its cache (``resourceVersionMatch=NotOlderThan`` the informers' version), so
        every skeleton cached before the vnode was gained is replaced; one left over (it cannot be, but a skeleton
        must never be acted on) fails the load, which the keeper tries again. Raises ``ApiError`` when a read fails.
        """
        nodes, pods = self._nodes, self._pods
        if nodes is None or pods is None:
            return
        (found, _, _), (listed, _, _) = await asyncio.gather(
            self._kube.list_all("/api/v1/nodes", params=_not_older({"fieldSelector": f"metadata.name={node}"},
                                                                   [nodes])),
            self._kube.list_all("/api/v1/pods", params=_not_older({"fieldSelector": f"spec.nodeName={node}"},
                                                                  pods.informers)))
        nodes.refresh(found)
        pods.refresh(listed)
        left = [key for key in [node, *self._pods_by_node.get(node, ())]
                if is_skeleton(nodes.get(key) if key == node else pods.get(key))]
        if left:
            raise ApiError(500, "StaleRead", f"vnode {node}: {len(left)} object(s) still older than the cache "
                           f"after reading it whole, e.g. {left[0]}")
        log.debug("vnode %s read whole: its Node and %d pod(s)", node, len(listed), extra={"node": node})

    def describe(self, node: str) -> dict[str, Any]:
        """How this replica keeps ``node`` (the probes listener's /debug/vnodes/<node>): its Node and the pods bound
        to it, whole or as skeletons."""
        kept = self._nodes.get(node) if self._nodes is not None else None
        pods = [self._pods.get(k) for k in self._pods_by_node.get(node, ())] if self._pods is not None else []
        return {"node": None if kept is None else "skeleton" if is_skeleton(kept) else "whole",
                "pods": {"whole": sum(1 for p in pods if p is not None and not is_skeleton(p)),
                         "skeleton": sum(1 for p in pods if is_skeleton(p))}}

    def _on_pod_change(self, key: str, old: Obj | None, new: Obj | None) -> None:
        """Which pods are bound to which vnode (the keys ``on_foreign`` trims)."""
        was = self._node_of.get(key)
        now = str(((new or {}).get("spec") or {}).get("nodeName") or "") if new is not None else ""
        if was == now:
            return
        if was:
            members = self._pods_by_node.get(was)
            if members is not None:
                members.discard(key)
                if not members:
                    del self._pods_by_node[was]
        if now:
            self._node_of[key] = now
            self._pods_by_node.setdefault(now, set()).add(key)
        else:
            self._node_of.pop(key, None)
