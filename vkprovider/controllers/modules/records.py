"""One record per known pod: everything the module controller keeps about a pod, created and deleted in one place.

A pod bound to a vnode of this env gets a :class:`PodRecord` when the informer first shows it and loses it when the
pod is deleted or replaced by another pod of the same name (another uid: a StatefulSet's, a re-created bare pod),
so nothing kept for one pod - a status waiting to be written, warnings already posted, when it began terminating -
can reach another. ``PodIndex.apply`` is the only place records are made, changed or dropped (virtual-kubelet's
``knownPods`` of ``knownPod``, for the same reason).

The record holds the newest pod object (the informer replaces an object on every change, never edits one) and what
that object says that stays true until it changes (its bizs, workload and order: ``facts``, worked out once per
object - parsing the same pods again on every pass was a tenth of a rollout's CPU, docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from vkprovider.core.module import PodModules, UrlPolicy, pod_key, pod_modules, workload_of
from vkprovider.core.node import is_vnode_name
from vkprovider.core.probe import ContainerProbes, pod_probes

#: How long a status, once its write was answered, is trusted to show up in the watch before an unchanged cache makes
#: it be sent again.
STATUS_ECHO_WAIT_S = 10.0


def creation_order(pod: Mapping[str, Any]) -> str:
    md = pod.get("metadata") or {}
    return f"{md.get('creationTimestamp', '')}/{md.get('name', '')}"


@dataclass(frozen=True, slots=True)
class PodFacts:
    """What a pod object says that stays true until the object changes."""

    modules: PodModules
    workload: str | None
    order: str
    probes: dict[str, ContainerProbes]  # the biz containers that have probes (or a preStop hook)


@dataclass(slots=True)
class Wanted:
    """A status to write for the pod (on behalf of ``node``'s holder)."""

    node: str
    desired: dict[str, Any]


@dataclass(slots=True)
class Sent:
    """A status sent for the pod, until the watch shows it. Trusted while its write is under way (a rollout's PATCHes
    can wait seconds for a client slot and the apiserver), then for ``STATUS_ECHO_WAIT_S`` after the answer."""

    desired: dict[str, Any]
    written_rv: str | None = None
    answered_at: float | None = None

    def trusted(self, now: float) -> bool:
        return self.answered_at is None or now - self.answered_at < STATUS_ECHO_WAIT_S


@dataclass(slots=True, eq=False)
class PodRecord:
    """Everything kept about one pod (see the module docstring)."""

    key: str
    uid: str
    pod: dict[str, Any]
    node: str | None
    _facts: PodFacts | None = None
    _facts_of: dict[str, Any] | None = None
    terminating_since: float | None = None  # local clock, when first seen terminating
    warned: set[str] = field(default_factory=set)  # warnings already posted (reason:message)
    seeded: bool = False  # its status was read back into the base's ledger
    not_module_done: bool = False  # a non-module pod already told it is left alone
    unstarted_since: float | None = None  # first seen on a held vnode, not started yet (the pod start SLI)
    wanted: Wanted | None = None  # a status waiting to be written
    sent: Sent | None = None  # the last status sent, until the watch shows it
    probed: bool = False  # its containers' probes run (``probes.ProbeManager``)
    pre_stop_done: bool = False  # terminating, and its preStop hooks have ended (``stops``)
    # container -> (its activation time as the base or the pod says it, in ms; the same on this replica's clock)
    activated_seen: dict[str, tuple[int | None, float]] = field(default_factory=dict)

    def facts(self, policy: UrlPolicy) -> PodFacts:
        if self._facts is None or self._facts_of is not self.pod:
            modules = pod_modules(self.pod, policy)
            bizs = {s.name for s in modules.bizs}
            probes = {name: p for name, p in pod_probes(self.pod).items()
                      if name in bizs and (p.any or p.problems or p.pre_stop is not None)}
            self._facts = PodFacts(modules, workload_of(self.pod), creation_order(self.pod), probes)
            self._facts_of = self.pod
        return self._facts

    def shown(self, now: float) -> dict[str, Any]:
        """The pod with the status last sent for it, while the watch has not shown that write yet.

        Under load the cache shows a write seconds after it was answered. A status derived from the older one
        takes what it keeps from the status shown (start time, a container's start, transition times) afresh from
        the clock, differs from the one sent, and would be sent again every second until the echo arrives.
        """
        sent = self.sent
        if sent is None or not sent.trusted(now):
            return self.pod
        return {**self.pod, "status": {**(self.pod.get("status") or {}), **sent.desired}}


@dataclass(frozen=True, slots=True)
class Change:
    """What one informer event did to the index."""

    record: PodRecord | None  # the pod's record now (None: gone)
    old_node: str | None
    new_node: str | None
    echo: Sent | None  # the status this replica sent, now shown by the watch
    gone: PodRecord | None  # the record dropped (deleted, or replaced by a pod of another uid)
    created: bool = False  # the record was made by this event (a pod newly bound to a vnode of ours)


class PodIndex:
    """Records by pod key and pod keys by vnode, for the vnodes of one env."""

    def __init__(self, env: str) -> None:
        self._env = env
        self._records: dict[str, PodRecord] = {}
        self._by_node: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: str) -> PodRecord | None:
        return self._records.get(key)

    def on(self, node: str) -> list[PodRecord]:
        """The records of the pods bound to ``node``."""
        records = self._records
        return [records[k] for k in self._by_node.get(node, ()) if k in records]

    def keys_on(self, node: str) -> frozenset[str]:
        return frozenset(self._by_node.get(node, ()))

    def __iter__(self) -> Iterator[PodRecord]:
        return iter(list(self._records.values()))

    def apply(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> Change:
        """Take one informer event (the only place records change)."""
        record = self._records.get(key)
        old_node = record.node if record is not None else None
        new_node = _node(new)
        if new_node is not None and not is_vnode_name(new_node, self._env):
            new_node = None  # bound elsewhere: not ours
        gone: PodRecord | None = None
        new_uid = str(((new or {}).get("metadata") or {}).get("uid") or "")
        if record is not None and (new is None or new_node is None or record.uid != new_uid):
            gone = self._drop(record)
            record = None
        echo: Sent | None = None
        created = False
        if new is not None and new_node is not None:
            if record is None:
                record = self._records[key] = PodRecord(key, new_uid, new, new_node)
                created = True
            else:
                sent = record.sent
                if (sent is not None and old_node == new_node
                        and sent.written_rv == (new.get("metadata") or {}).get("resourceVersion")):
                    echo, record.sent = sent, None  # the cache now shows what was written
                record.pod = new
            if record.node != new_node:
                self._unlink(record)
                record.node = new_node
            self._by_node.setdefault(new_node, set()).add(key)
        return Change(record, old_node, new_node, echo, gone, created)

    def _drop(self, record: PodRecord) -> PodRecord:
        self._unlink(record)
        self._records.pop(record.key, None)
        return record

    def _unlink(self, record: PodRecord) -> None:
        if record.node is None:
            return
        members = self._by_node.get(record.node)
        if members is not None:
            members.discard(record.key)
            if not members:
                del self._by_node[record.node]


def _node(pod: Mapping[str, Any] | None) -> str | None:
    node = ((pod or {}).get("spec") or {}).get("nodeName")
    return str(node) if node else None


__all__ = ["STATUS_ECHO_WAIT_S", "Change", "PodFacts", "PodIndex", "PodRecord", "Sent", "Wanted", "creation_order",
           "pod_key"]
