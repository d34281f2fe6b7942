"""Reading the local apiserver's audit log: which vkprovider replica wrote what, and when.

The test cluster runs with --audit (hack/controlplane/localcluster.py): every write by vkprovider's identity to
Nodes, Pods and Leases is logged with the request's User-Agent, which names the replica (``vkprovider/<v>
(<CLIENT_ID>)``); Lease writes with their request and response, so a hand-over's new holder and the order in
which writes were applied (the resourceVersion each produced) show.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Write:
    at: datetime
    replica: str
    verb: str
    resource: str
    subresource: str
    namespace: str
    name: str
    code: int
    body: dict[str, Any]
    result: dict[str, Any]

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @property
    def holder_after(self) -> str | None:
        """The Lease's holder once this write was applied (from the response)."""
        spec = self.result.get("spec") or {}
        holder = spec.get("holderIdentity")
        return str(holder) if isinstance(holder, str) else None

    @property
    def version(self) -> int:
        """The resourceVersion this write produced (the order writes were applied in)."""
        try:
            return int((self.result.get("metadata") or {}).get("resourceVersion") or 0)
        except ValueError:
            return 0


def _replica(user_agent: str) -> str:
    if "(" in user_agent and user_agent.endswith(")"):
        return user_agent[user_agent.rindex("(") + 1 : -1]
    return ""


def writes(path: Path, since: datetime | None = None) -> list[Write]:
    """Every vkprovider write in the audit log (optionally only those after ``since``), oldest first."""
    out: list[Write] = []
    if not path.exists():
        return out
    for line in path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("stage") != "ResponseComplete":
            continue
        at = datetime.fromisoformat(event["stageTimestamp"].replace("Z", "+00:00"))
        if since is not None and at < since:
            continue
        ref = event.get("objectRef") or {}
        out.append(Write(at=at, replica=_replica(event.get("userAgent", "")), verb=event.get("verb", ""),
                         resource=ref.get("resource", ""), subresource=ref.get("subresource", ""),
                         namespace=ref.get("namespace", ""), name=ref.get("name", ""),
                         code=int((event.get("responseStatus") or {}).get("code") or 0),
                         body=event.get("requestObject") or {}, result=event.get("responseObject") or {}))
    return out


def unauthorised(all_writes: list[Write], replica: str, vnode_of: dict[tuple[str, str], str],
                 since: datetime) -> list[Write]:
    """Successful writes by ``replica`` after ``since`` that it was not entitled to make.

    Lease writes are replayed per vnode in the order the apiserver applied them (the resourceVersion each
    produced). A write by ``replica`` that leaves it the holder is entitled when the Lease already named it
    before (its renewal, or its confirmation of a hand-over to it); one that takes the Lease from another holder
    is not (the replicas under test never find a dead holder). A write to a Node or a pod is entitled when, at
    that moment, ``replica`` was the holder by the newest Lease write before it. ``vnode_of`` maps pods
    ("pods", "ns/name") to their vnode. Pass the whole log; only writes after ``since`` are reported.
    """
    leases: dict[str, list[Write]] = {}
    others: list[Write] = []
    for w in all_writes:
        if not w.ok:
            continue
        if w.resource == "leases" and w.namespace == "kube-node-lease":
            leases.setdefault(w.name, []).append(w)
        else:
            others.append(w)
    bad: list[Write] = []
    timelines: dict[str, list[tuple[datetime, str]]] = {}
    for vnode, history in leases.items():
        history.sort(key=lambda w: (w.version, w.at))
        holder: str | None = None
        timeline = timelines.setdefault(vnode, [])
        for w in history:
            after = w.holder_after
            if w.replica == replica and w.at >= since and after == replica and holder not in (None, replica):
                bad.append(w)  # took it from a live holder without being given it
            if after is not None:
                holder = after
                timeline.append((w.at, after))
    for w in others:
        if w.replica != replica or w.at < since:
            continue
        vnode = w.name if w.resource == "nodes" else vnode_of.get((w.resource, f"{w.namespace}/{w.name}"), "")
        if not vnode:
            continue
        holder = None
        for at, who in timelines.get(vnode, []):
            if at <= w.at:
                holder = who
        if holder != replica:
            bad.append(w)
    return sorted(bad, key=lambda w: w.at)
