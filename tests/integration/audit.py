"""Reading the local apiserver's audit log: which vkprovider replica wrote what, and when; what it asked for.

The test cluster runs with --audit (hack/controlplane/localcluster.py): every request by vkprovider's identity
is logged with the request's User-Agent, which names the replica (``vkprovider/<v> (<CLIENT_ID>)``); Lease and
Deployment writes with their request and response, so a hand-over's new holder and the order in which writes
were applied (the resourceVersion each produced) show. :func:`writes` reads the writes, :func:`requests` every
request (reads too, with the authorizer's decision). Both read the rotated backups beside the log as well.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

PROVIDER_USER = "vkprovider"
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


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


def log_files(path: Path) -> list[Path]:
    """The audit log and the backups the apiserver rotated it to (``audit-<UTC time>.log`` beside it), oldest
    first."""
    backups = sorted(path.parent.glob(f"{path.stem}-*{path.suffix}"))
    return [*backups, path] if path.exists() else backups


def _events(path: Path) -> Iterator[dict[str, Any]]:
    for file in log_files(path):
        try:
            handle = file.open(errors="replace")
        except FileNotFoundError:  # rotated away (and dropped) meanwhile
            continue
        with handle:
            for line in handle:
                try:
                    event = json.loads(line)
                except ValueError:  # the line the apiserver is writing right now
                    continue
                if isinstance(event, dict):
                    yield event


def _at(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["stageTimestamp"].replace("Z", "+00:00"))


def writes(path: Path, since: datetime | None = None) -> list[Write]:
    """Every vkprovider write in the audit log (optionally only those after ``since``), oldest first."""
    out: list[Write] = []
    for event in _events(path):
        if event.get("stage") != "ResponseComplete" or event.get("verb") not in WRITE_VERBS:
            continue
        if (event.get("user") or {}).get("username") != PROVIDER_USER:
            continue
        at = _at(event)
        if since is not None and at < since:
            continue
        ref = event.get("objectRef") or {}
        out.append(Write(at=at, replica=_replica(event.get("userAgent", "")), verb=event.get("verb", ""),
                         resource=ref.get("resource", ""), subresource=ref.get("subresource", ""),
                         namespace=ref.get("namespace", ""), name=ref.get("name", ""),
                         code=int((event.get("responseStatus") or {}).get("code") or 0),
                         body=event.get("requestObject") or {}, result=event.get("responseObject") or {}))
    return out


@dataclass(frozen=True)
class Request:
    """One API request as the audit log saw it (any verb; Metadata level: no bodies)."""

    at: datetime
    audit_id: str
    stage: str  # ResponseComplete; ResponseStarted while a watch streams (a watch has both)
    user: str
    user_agent: str
    verb: str
    group: str
    resource: str
    subresource: str
    namespace: str
    name: str
    uri: str
    code: int  # the response's status code (a watch's ResponseStarted: the 200 its stream began with)
    message: str
    decision: str  # the authorizer's: "allow", "forbid" ("" when not recorded)
    why: str  # the authorizer's reason ("RBAC: allowed by ClusterRoleBinding ...")

    @property
    def replica(self) -> str:
        return _replica(self.user_agent)

    @property
    def full_resource(self) -> str:
        """``resource/subresource`` the way RBAC rules name it ("" for a non-resource URL such as /version)."""
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


def requests(path: Path, since: datetime | None = None, user: str = PROVIDER_USER) -> Iterator[Request]:
    """Every request of ``user`` in the audit log and its backups (optionally only after ``since``), in log order.

    A long-running request (a watch) appears twice: once when its stream starts, once when it ends; the same
    ``audit_id`` ties them together. Lazily, since the log of a whole session is large.
    """
    for event in _events(path):
        stage = event.get("stage")
        if stage not in ("ResponseComplete", "ResponseStarted"):
            continue
        if (event.get("user") or {}).get("username") != user:
            continue
        at = _at(event)
        if since is not None and at < since:
            continue
        ref = event.get("objectRef") or {}
        status = event.get("responseStatus") or {}
        annotations = event.get("annotations") or {}
        yield Request(at=at, audit_id=str(event.get("auditID", "")), stage=str(stage), user=user,
                      user_agent=str(event.get("userAgent", "")), verb=str(event.get("verb", "")),
                      group=str(ref.get("apiGroup", "")), resource=str(ref.get("resource", "")),
                      subresource=str(ref.get("subresource", "")), namespace=str(ref.get("namespace", "")),
                      name=str(ref.get("name", "")), uri=str(event.get("requestURI", "")),
                      code=int(status.get("code") or 0), message=str(status.get("message", "")),
                      decision=str(annotations.get("authorization.k8s.io/decision", "")),
                      why=str(annotations.get("authorization.k8s.io/reason", "")))


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
