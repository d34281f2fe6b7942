"""Every Kubernetes API right vkprovider uses, and why: the declaration behind its ClusterRole.

``charts/vkprovider/files/rbac-rules.yaml`` is the ClusterRole of the Helm chart and of the local test control
plane. :data:`RIGHTS` says the same, one right (API group, resource, verb) per line with the code that needs it,
in the file's order and grouping; :func:`rules` turns it into that file's rules. Three tests hold the three
together: tests/unit/test_rights.py (this declaration equals the file, and a static scan of vkprovider/ finds
exactly these rights used), tests/integration/test_zz_rbac.py (at the end of an integration session, from the
apiserver's audit log: vkprovider was never refused, and every right was exercised).

Pure data; no I/O. The simulator (``vkprovider sim``) is a separate program and talks to no apiserver.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Right:
    """One verb on one resource (``"pods/status"`` for a subresource) of one API group (``""``: the core group).

    ``names`` restricts it to those objects (the rule's ``resourceNames``); empty means any object.
    """

    group: str
    resource: str
    verb: str
    reason: str
    names: tuple[str, ...] = ()

    def allows(self, group: str, resource: str, verb: str, name: str = "") -> bool:
        """Whether this right covers one request (``resource`` with its ``/subresource``)."""
        return ((group, resource, verb) == (self.group, self.resource, self.verb)
                and (not self.names or name in self.names))


_NODE_CACHE = "the vnode informer on /api/v1/nodes, this ENV's vnodes by label (app.py)"
_POD_CACHE = "the pod informers: module pods per module label, and non-module pods bound and Pending (app.py)"
_LEASE_CACHE = ("LeaseKeeper's informers on the vnode Leases (kube-node-lease) and on this ENV's member Leases "
                "(app.py), and its reads of every vnode Lease of its ENV (controllers/ownership.py, sweep)")
_DEPLOYMENT_CACHE = ("ReleaseController's informer on Deployments, keeping those with a release strategy "
                     "(controllers/releases.py)")
_REPLICASET_CACHE = ("UnionOfReplicaSets: informers on module ReplicaSets, for revisions and the batch gate "
                     "(controllers/releases.py)")

RIGHTS: tuple[Right, ...] = (
    Right("", "nodes", "list", _NODE_CACHE),
    Right("", "nodes", "watch", _NODE_CACHE),
    Right("", "nodes", "create", "NodeController._create registers the vnode of a newly heard base "
                                 "(controllers/nodes.py, through the write port: controllers/fence.py)"),
    Right("", "nodes", "patch", "NodeController._sync_meta writes a vnode's labels, annotations and taints "
                                "(controllers/nodes.py, through the write port: controllers/fence.py)"),
    Right("", "nodes", "delete", "NodeController._delete removes the vnode of a base silent past "
                                 "VKP_BASE_DEAD_AFTER (controllers/nodes.py, through controllers/fence.py)"),
    Right("", "nodes/status", "patch", "NodeController writes a vnode's conditions, capacity and addresses "
                                       "(controllers/nodes.py, through controllers/fence.py)"),
    Right("", "pods", "list", _POD_CACHE),
    Right("", "pods", "watch", _POD_CACHE),
    Right("", "pods", "delete", "the module controller removes a deleted module pod once its biz is uninstalled "
                                "(controllers/modules/basepass.py), through its vnode's write port "
                                "(controllers/fence.py)"),
    Right("", "pods/status", "patch", "the module controller writes biz states as pod status, and marks non-module "
                                      "pods bound to a vnode (controllers/modules/status.py), through the vnode's "
                                      "write port (controllers/fence.py)"),
    Right("", "pods/eviction", "create", "the drain controller evicts the module pods of a vnode whose base is going, "
                                         "so PodDisruptionBudgets hold (controllers/drain.py), through the vnode's "
                                         "write port (controllers/fence.py)"),
    Right("", "events", "create", "EventRecorder posts Events on vnodes, pods and Deployments (kube/events.py)"),
    Right("", "events", "patch", "EventRecorder aggregates a repeated Event: count and lastTimestamp "
                                 "(kube/events.py)"),
    Right("coordination.k8s.io", "leases", "get",
          "LeaseKeeper re-reads a vnode Lease after a conflict, a hand-over or a stall, and a replica's membership "
          "Lease seen expired before taking its vnodes (controllers/ownership.py); "
          "the Elector reads the release Lease every poll (controllers/releases.py)"),
    Right("coordination.k8s.io", "leases", "list", _LEASE_CACHE),
    Right("coordination.k8s.io", "leases", "watch", _LEASE_CACHE),
    Right("coordination.k8s.io", "leases", "create",
          "LeaseKeeper claims a new vnode's Lease and this replica's member Lease (controllers/ownership.py); "
          "the Elector creates the release Lease (controllers/releases.py); both through the one Lease writer "
          "(controllers/leases.py)"),
    Right("coordination.k8s.io", "leases", "patch",
          "LeaseKeeper renews, acquires and hands over vnode Leases and renews its member Lease "
          "(controllers/ownership.py); the Elector renews and gives up the release Lease (controllers/releases.py); "
          "both through the one Lease writer (controllers/leases.py)"),
    Right("coordination.k8s.io", "leases", "delete",
          "LeaseKeeper deletes the Lease of a removed vnode, and its member Lease on stop (controllers/ownership.py, "
          "through controllers/leases.py)"),
    Right("", "configmaps", "get",
          "RefStore reads the ConfigMaps module containers name in env/envFrom (kube/refs.py); KubeletApi."
          "_load_client_ca reads the client CA in extension-apiserver-authentication (kubelet/server.py)"),
    Right("", "secrets", "get",
          "RefStore reads the Secrets module containers name in env/envFrom, by name only: no list or watch "
          "(kube/refs.py; docs/security.md)"),
    Right("authentication.k8s.io", "tokenreviews", "create",
          "KubeletApi._token_user authenticates a bearer token sent to the kubelet API (kubelet/server.py)"),
    Right("authorization.k8s.io", "subjectaccessreviews", "create",
          "KubeletApi._authorized asks whether a kubelet API caller may use that node subresource "
          "(kubelet/server.py)"),
    Right("apps", "deployments", "list", _DEPLOYMENT_CACHE),
    Right("apps", "deployments", "watch", _DEPLOYMENT_CACHE),
    Right("apps", "deployments", "patch",
          "ReleaseController applies its fields (server-side apply, field manager vkprovider: peer replicas, a "
          "batched release's state, pause and rollout bound) and clears a stale confirmed-batch by merge patch "
          "(controllers/releases.py)"),
    Right("apps", "replicasets", "list", _REPLICASET_CACHE),
    Right("apps", "replicasets", "watch", _REPLICASET_CACHE),
)


def rules(rights: Iterable[Right] | None = None) -> list[dict[str, Any]]:
    """ClusterRole rules (``apiGroups``, ``resources``, ``verbs``, ``resourceNames`` when restricted) of ``rights``
    (default :data:`RIGHTS`): one rule per (group, resource, names), in the order they first appear, with its verbs
    in declaration order."""
    grouped: dict[tuple[str, str, tuple[str, ...]], list[str]] = {}
    for right in RIGHTS if rights is None else rights:
        verbs = grouped.setdefault((right.group, right.resource, right.names), [])
        if right.verb not in verbs:
            verbs.append(right.verb)
    out: list[dict[str, Any]] = []
    for (group, resource, names), verbs in grouped.items():
        rule: dict[str, Any] = {"apiGroups": [group], "resources": [resource]}
        if names:
            rule["resourceNames"] = list(names)
        rule["verbs"] = verbs
        out.append(rule)
    return out


def granted(rule_list: Iterable[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    """Rules as a set of (group, resource, verb, resourceName) - resourceName ``""`` when any object."""
    out: set[tuple[str, str, str, str]] = set()
    for rule in rule_list:
        for group in rule.get("apiGroups") or ():
            for resource in rule.get("resources") or ():
                for verb in rule.get("verbs") or ():
                    for name in rule.get("resourceNames") or ("",):
                        out.add((str(group), str(resource), str(verb), str(name)))
    return out


def covering(group: str, resource: str, verb: str, name: str = "",
             rights: Iterable[Right] | None = None) -> Right | None:
    """The right of ``rights`` (default :data:`RIGHTS`) that allows this request, or None."""
    return next((r for r in (RIGHTS if rights is None else rights) if r.allows(group, resource, verb, name)), None)
