"""The virtual Node of a base, computed from what the base told us.

Pure functions: the node controller compares their output with the cached Node and writes only differences.
Names, labels and taints are the Go ModuleController's, so existing module manifests schedule unchanged.

What other managers write on a vnode stays theirs: vkprovider keeps in sync only the labels, annotations and taints
it owns (``OWNED_*``, ``annotations_to_patch``). ``node.alpha.kubernetes.io/ttl`` belongs to the TTL controller,
which raises it on every Node as the cluster grows (0 up to 100 Nodes, 15, 30 ...): a new vnode carries the value
of a small cluster (so there the controller has nothing to write) and vkprovider never writes it again - writing it
back answered each of the controller's writes with one of its own, forever.

A vnode says it is no cloud's machine: ``spec.providerID`` is ``koupleless://<env>/<identity>`` (a cloud
controller deletes a Node it cannot find in its cloud, unless the providerID names another provider) and the label
``node.kubernetes.io/exclude-from-external-load-balancers`` keeps it out of cloud load balancers (the service
controller reads the label's presence: a value another manager gave it stays). The apiserver lets a providerID be
set once, from empty: a Node created before (an older vkprovider's, the Go controller's) gets ours by patch, and one
that has another keeps it.

A vnode's capacity (pods, cpu, memory) and its MemoryPressure condition follow ``core.resources``; the pressure
taint ``node.kubernetes.io/memory-pressure:NoSchedule`` is the node-lifecycle controller's (it taints every Node by
its conditions, TaintNodesByCondition, at once on the Node's update), so vkprovider writes the condition and keeps
that taint as another manager's, like ``node.kubernetes.io/unschedulable`` of a ``kubectl cordon``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vkprovider.core.compare import holds
from vkprovider.core.model import BaseHealth, BaseHeartbeat, BaseMetadata
from vkprovider.core.module import SKELETON
from vkprovider.core.ownership import MANAGED_BY, MANAGED_BY_LABEL
from vkprovider.core.resources import (
    CONDITION_MEMORY_PRESSURE,
    PRESSURE_MESSAGE,
    PRESSURE_REASON,
    MaxPodsTable,
    memory_capacity,
    pod_capacity,
)

NODE_PREFIX = "vnode."
LABEL_COMPONENT = "virtual-kubelet.koupleless.io/component"
LABEL_ENV = "virtual-kubelet.koupleless.io/env"
LABEL_BASE_NAME = "base.koupleless.io/name"
LABEL_BASE_VERSION = "base.koupleless.io/version"
LABEL_BASE_CLUSTER = "base.koupleless.io/cluster-name"
LABEL_BASE_HOST = "base.koupleless.io/host-name"
LABEL_BASE_STACK = "base.koupleless.io/stack"
LABEL_TUNNEL_PORT = "base.koupleless.io/tunnel-port"
LABEL_ZONE = "topology.kubernetes.io/zone"
LABEL_EXCLUDE_LB = "node.kubernetes.io/exclude-from-external-load-balancers"
PROVIDER_ID_SCHEME = "koupleless"
ANNOTATION_TUNNEL = "base.koupleless.io/tunnel"
ANNOTATION_IDENTITY = "base.koupleless.io/identity"
ANNOTATION_ADDRESS = "base.koupleless.io/address"  # ip:port of the base's arklet (InternalIP may be ours)
ANNOTATION_TTL = "node.alpha.kubernetes.io/ttl"  # the TTL controller's; set at create only
#: metrics-server (0.7 and later) scrapes a Node's kubelet at this path instead of /metrics/resource: the path names
#: the vnode, so the replica that holds it answers for it alone (``kubelet.server``; docs/operations.md "kubectl top").
ANNOTATION_METRICS_PATH = "metrics.k8s.io/resource-metrics-path"
TAINT_VIRTUAL_NODE = "schedule.koupleless.io/virtual-node"
TAINT_NODE_ENV = "schedule.koupleless.io/node-env"
TAINT_NOT_READY = "node.kubernetes.io/not-ready"
LEASE_NAMESPACE = "kube-node-lease"
#: The Go ModuleController labels its node Leases ``component=vnode-lease``; vkprovider writes the same labels so
#: either controller finds the other's Leases. An older vkprovider wrote ``component=vnode``.
LEASE_COMPONENT = "vnode-lease"
LEASE_SELECTOR = f"{LABEL_COMPONENT} in (vnode-lease,vnode)"

# The labels vkprovider owns on a vnode: anything else (added by users or other controllers) is left alone.
OWNED_LABEL_PREFIXES = ("base.koupleless.io/", "virtual-kubelet.koupleless.io/")
OWNED_LABELS = frozenset({"type", "kubernetes.io/role", "kubernetes.io/hostname", LABEL_ZONE})
#: Labels whose presence is what counts: added when missing, any value already there kept.
PRESENCE_LABELS = frozenset({LABEL_EXCLUDE_LB})
#: Taints vkprovider sets or removes; others (the node-lifecycle controller's, users') are never touched.
OWNED_TAINTS = frozenset({TAINT_VIRTUAL_NODE, TAINT_NODE_ENV, TAINT_NOT_READY})

_LABEL_VALUE_BAD = re.compile(r"[^A-Za-z0-9._-]")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_MAX_LABEL_VALUE = 63


class BaseReadiness(enum.StrEnum):
    """What the node's Ready condition says about its base."""

    READY = "Ready"  # heartbeating (or answering), ACTIVATED
    UNREACHABLE = "Unreachable"  # silent: Ready=Unknown, the node-lifecycle controller taints it unreachable
    DEACTIVATED = "Deactivated"  # said DEACTIVATED (graceful shutdown): Ready=False, tainted not-ready


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """The provider-wide facts a vnode needs besides the base's own."""

    env: str
    stack: str
    max_pods: int
    kubelet_version: str
    kubelet_port: int
    env_taint: bool = False
    architecture: str = "amd64"
    kubelet_address: str | None = None  # where the apiserver reaches our kubelet API (None: not served)
    max_pods_by_base: MaxPodsTable = field(default_factory=dict)  # VKP_NODE_MAX_PODS_BY_BASE


def node_name(identity: str, env: str) -> str:
    """``vnode.{identity}.{env}``, the Go controller's convention (identities are lowercase, see
    ``identity_refusal``)."""
    return f"{NODE_PREFIX}{identity}.{env}"


def identity_refusal(identity: str, env: str | None = None) -> str | None:
    """Why a base identity cannot name a vnode, or None. The node name must be a valid, distinct DNS-1123
    subdomain that also fits the ``kubernetes.io/hostname`` label (63 characters): identities that differ only
    in case would fold onto one node, so upper case is refused rather than lowercased. Without ``env`` only the
    form is checked, not the length."""
    if identity != identity.lower():
        return "identity must be lowercase (it names the node vnode.<identity>.<env>)"
    if not _DNS1123_SUBDOMAIN.match(identity):
        return ("identity must be a DNS-1123 name: lowercase letters, digits, '-' and '.', "
                "with a letter or digit at both ends of every dot-separated part")
    if env is None:
        return None
    name = node_name(identity, env)
    if len(name) > _MAX_LABEL_VALUE:
        return (f"identity too long: node name {len(name)} characters, at most {_MAX_LABEL_VALUE} "
                f"(identity at most {_MAX_LABEL_VALUE - len(NODE_PREFIX) - len(env) - 1})")
    return None


def is_vnode_name(name: str, env: str) -> bool:
    return name.startswith(NODE_PREFIX) and name.endswith("." + env) and len(name) > len(NODE_PREFIX) + len(env) + 1


def identity_of_node(name: str, env: str) -> str:
    return name[len(NODE_PREFIX) : -len(env) - 1]


def label_value(raw: str) -> str:
    """Squeeze any text into a valid label value (<= 63 chars, alphanumeric at both ends)."""
    value = _LABEL_VALUE_BAD.sub("-", raw)[:63]
    return value.strip("-_.")


def node_labels(hb: BaseHeartbeat, cfg: NodeConfig) -> dict[str, str]:
    md = hb.metadata
    extra = dict(hb.labels)
    labels = {
        LABEL_BASE_NAME: label_value(md.name),
        LABEL_BASE_VERSION: label_value(md.version),
        LABEL_BASE_CLUSTER: label_value(md.cluster_name),
        LABEL_BASE_HOST: label_value(hb.host_name),
        LABEL_BASE_STACK: label_value(extra.pop(LABEL_BASE_STACK, cfg.stack)),
        LABEL_COMPONENT: "vnode",
        LABEL_ENV: cfg.env,
        "type": "virtual-kubelet",
        "kubernetes.io/role": "agent",
        "kubernetes.io/hostname": node_name(md.identity, cfg.env),
        LABEL_EXCLUDE_LB: "true",
    }
    if hb.port:
        labels[LABEL_TUNNEL_PORT] = str(hb.port)
    for key, value in extra.items():
        labels[key] = label_value(value)
    return labels


def node_taints(cfg: NodeConfig, readiness: BaseReadiness = BaseReadiness.READY) -> list[dict[str, str]]:
    """The taints vkprovider wants on a vnode: the virtual-node taint always (the seeds' manifests tolerate it),
    the Go controller's env taint only when ``env_taint`` (VKP_ENV_TAINT) is on, and not-ready while the base
    is deactivated (so pods move at once rather than after the node-lifecycle controller's next pass)."""
    taints = [{"key": TAINT_VIRTUAL_NODE, "value": "True", "effect": "NoExecute"}]
    if cfg.env_taint:
        taints.append({"key": TAINT_NODE_ENV, "value": cfg.env, "effect": "NoExecute"})
    if readiness is BaseReadiness.DEACTIVATED:
        taints.append({"key": TAINT_NOT_READY, "effect": "NoExecute"})
    return taints


def taints_to_write(current: list[dict[str, str]], cfg: NodeConfig, readiness: BaseReadiness,
                    now_iso: str) -> list[dict[str, str]] | None:
    """The full taint list to write, or None when ``current`` already has exactly our taints.

    Taints of others are kept as they are; of ours, missing ones are added (not-ready with ``timeAdded``),
    unwanted ones removed (the env taint when it is off, not-ready once the base is back). ``not-ready:NoSchedule``
    is the node-lifecycle controller's (it taints every new Node so, and lifts it once Ready, as for a kubelet):
    removing it too only raced that controller, an extra write on many vnodes of a start (docs/performance.md, "Measured
    reasons in the code").
    """
    wanted = {(t["key"], t["effect"]): t for t in node_taints(cfg, readiness)}
    result: list[dict[str, str]] = []
    changed = False
    seen: set[tuple[str, str]] = set()
    for taint in current:
        ident = (taint.get("key", ""), taint.get("effect", ""))
        if ident[0] not in OWNED_TAINTS or ident == (TAINT_NOT_READY, "NoSchedule"):
            result.append(taint)
            continue
        want = wanted.get(ident)
        if want is None or ident in seen:
            changed = True  # ours and no longer wanted (or a duplicate)
            continue
        seen.add(ident)
        if taint.get("value", "") != want.get("value", ""):
            changed = True
            result.append({**taint, "value": want.get("value", "")})
        else:
            result.append(taint)
    for ident, taint in wanted.items():
        if ident not in seen:
            changed = True
            result.append({**taint, "timeAdded": now_iso} if ident[0] == TAINT_NOT_READY else taint)
    return result if changed else None


def labels_to_patch(current: dict[str, str], desired: dict[str, str]) -> dict[str, str | None]:
    """A merge-patch of the labels we own: changed values set, stale owned labels removed, presence labels added
    when missing."""
    patch: dict[str, str | None] = {k: v for k, v in desired.items()
                                    if current.get(k) != v and not (k in PRESENCE_LABELS and k in current)}
    for key in current:
        owned = key in OWNED_LABELS or key.startswith(OWNED_LABEL_PREFIXES)
        if owned and key not in desired:
            patch[key] = None
    return patch


def provider_id(identity: str, env: str) -> str:
    """``koupleless://<env>/<identity>``: the vnode's ``spec.providerID``."""
    return f"{PROVIDER_ID_SCHEME}://{env}/{identity}"


def provider_id_to_set(current: str | None, wanted: str) -> str | None:
    """The providerID to write: ``wanted`` when the Node has none, else None (set once; never changed, even when
    it differs: the apiserver would refuse)."""
    return None if current else wanted


def _resources(hb: BaseHeartbeat, health: BaseHealth | None,
               cfg: NodeConfig) -> tuple[dict[str, str], dict[str, str]]:
    """Capacity and allocatable (the same: a base reserves nothing for itself), by ``core.resources``' rules."""
    pods = str(pod_capacity(hb, cfg.max_pods_by_base, cfg.max_pods).pods)
    capacity = {"pods": pods}
    allocatable = {"pods": pods}
    if health is not None and health.cpu_count is not None and health.cpu_count > 0:
        capacity["cpu"] = allocatable["cpu"] = str(health.cpu_count)
    memory = memory_capacity(health)
    if memory is not None:
        capacity["memory"] = allocatable["memory"] = str(memory)
    return capacity, allocatable


def node_addresses(hb: BaseHeartbeat, cfg: NodeConfig) -> list[dict[str, str]]:
    """Where the apiserver reaches this node's kubelet API. With vkprovider's kubelet API on, the vnode's only
    address is vkprovider's (the apiserver prefers a Hostname address, which names the base and would not
    resolve); without it, the Go controller's addresses: InternalIP = the base's IP, Hostname = its host name."""
    if cfg.kubelet_address:
        return [{"type": "InternalIP", "address": cfg.kubelet_address}]
    return [{"type": "InternalIP", "address": hb.ip}, {"type": "Hostname", "address": hb.host_name or hb.ip}]


def node_status(
    hb: BaseHeartbeat,
    health: BaseHealth | None,
    cfg: NodeConfig,
    *,
    readiness: BaseReadiness,
    silent_for_s: float,
    unreachable_after_s: float = 25.0,
    memory_pressure: bool = False,
) -> dict[str, object]:
    """The node status a base deserves, WITHOUT timestamps (see ``with_times``). ``memory_pressure`` is the state
    ``core.resources.memory_pressure`` decided; it shows while the base is Ready (else the condition is Unknown)."""
    capacity, allocatable = _resources(hb, health, cfg)
    if readiness is BaseReadiness.READY:
        ready = {"type": "Ready", "status": "True", "reason": "BaseReady", "message": "base is heartbeating"}
    elif readiness is BaseReadiness.DEACTIVATED:
        ready = {"type": "Ready", "status": "False", "reason": "BaseDeactivated",
                 "message": "the base said DEACTIVATED (it is shutting down)"}
    else:
        ready = {
            "type": "Ready",
            "status": "Unknown",
            "reason": "BaseUnreachable",
            # A stable message (not the seconds so far): the status is written once when the base goes silent.
            "message": f"no heartbeat or answer from the base for more than {unreachable_after_s:g}s",
        }
    pressure = "False" if readiness is BaseReadiness.READY else "Unknown"
    if readiness is BaseReadiness.READY:
        memory = {"type": CONDITION_MEMORY_PRESSURE, "status": str(memory_pressure),
                  "reason": PRESSURE_REASON[memory_pressure], "message": PRESSURE_MESSAGE[memory_pressure]}
    else:
        memory = {"type": CONDITION_MEMORY_PRESSURE, "status": "Unknown", "reason": ready["reason"], "message": ""}
    conditions = [
        ready,
        memory,
        {"type": "DiskPressure", "status": pressure, "reason": "BaseHasNoDiskPressure", "message": ""},
        {"type": "PIDPressure", "status": pressure, "reason": "BaseHasSufficientPID", "message": ""},
    ]
    return {
        "capacity": capacity,
        "allocatable": allocatable,
        "conditions": conditions,
        "addresses": node_addresses(hb, cfg),
        "daemonEndpoints": {"kubeletEndpoint": {"Port": cfg.kubelet_port}},
        "nodeInfo": {
            "machineID": hb.identity,
            "systemUUID": hb.identity,
            "bootID": "",
            "kernelVersion": "",
            "osImage": f"Koupleless base {hb.metadata.name} {hb.metadata.version}",
            "containerRuntimeVersion": f"arklet://{hb.tunnel}",
            "kubeletVersion": cfg.kubelet_version,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": cfg.architecture,
        },
    }


def status_differs(desired: dict[str, object], current: dict[str, object] | None) -> bool:
    """Whether ``current`` (a Node's status) differs from ``desired`` in anything but timestamps."""
    if not current:
        return True
    for key, value in desired.items():
        if key == "conditions":
            have = {c.get("type"): c for c in current.get("conditions") or []}  # type: ignore[attr-defined]
            for cond in value:  # type: ignore[attr-defined]
                got = have.get(cond["type"])
                if got is None or not holds(got, {f: cond[f] for f in ("status", "reason", "message")}):
                    return True
        elif not holds(current.get(key), value):
            return True
    return False


def with_times(desired: dict[str, object], current: dict[str, object] | None, now_iso: str) -> dict[str, object]:
    """Add heartbeat/transition times: transitions keep their old time unless the status changed."""
    have = {c.get("type"): c for c in ((current or {}).get("conditions") or [])}  # type: ignore[attr-defined]
    conditions = []
    for cond in desired["conditions"]:  # type: ignore[attr-defined]
        old = have.get(cond["type"])
        transition = old.get("lastTransitionTime") if old and old.get("status") == cond["status"] else None
        conditions.append({**cond, "lastHeartbeatTime": now_iso, "lastTransitionTime": transition or now_iso})
    return {**desired, "conditions": conditions}


def new_node(hb: BaseHeartbeat, cfg: NodeConfig, status: dict[str, object] | None = None,
             readiness: BaseReadiness = BaseReadiness.READY) -> dict[str, object]:
    """The Node object created for a base seen for the first time, with its status (a Node may be created with
    its status, so registering a base costs one write for the Node and one for its Lease)."""
    node: dict[str, object] = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node_name(hb.identity, cfg.env),
            "labels": node_labels(hb, cfg),
            "annotations": {**node_annotations(hb, cfg), ANNOTATION_TTL: "0"},
        },
        "spec": {"providerID": provider_id(hb.identity, cfg.env), "taints": node_taints(cfg, readiness)},
    }
    if status is not None:
        node["status"] = status
    return node


def resource_metrics_path(node: str) -> str:
    """Where the vnode's kubelet API serves its ``/metrics/resource`` (named by ``ANNOTATION_METRICS_PATH``)."""
    return f"/metrics/resource/{node}"


def node_annotations(hb: BaseHeartbeat, cfg: NodeConfig) -> dict[str, str]:
    """The annotations vkprovider keeps in sync on a vnode (all its own); the metrics path only while the kubelet
    API is served."""
    annotations = {
        ANNOTATION_TUNNEL: hb.tunnel,
        ANNOTATION_IDENTITY: hb.identity,
        ANNOTATION_ADDRESS: f"{hb.ip}:{hb.port}",
    }
    if cfg.kubelet_address:
        annotations[ANNOTATION_METRICS_PATH] = resource_metrics_path(node_name(hb.identity, cfg.env))
    return annotations


def ready_status(node: Mapping[str, Any] | None) -> str | None:
    """What the Node's Ready condition says (``True``, ``False``, ``Unknown``); None without one."""
    for cond in ((node or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            status = cond.get("status")
            return str(status) if status is not None else None
    return None


def annotations_to_patch(current: Mapping[str, str], hb: BaseHeartbeat, cfg: NodeConfig) -> dict[str, str | None]:
    """A merge-patch of our annotations whose value differs; our metrics path is removed once the kubelet API is
    off. Every other annotation is left as it is."""
    wanted = node_annotations(hb, cfg)
    patch: dict[str, str | None] = {k: v for k, v in wanted.items() if current.get(k) != v}
    ours = resource_metrics_path(node_name(hb.identity, cfg.env))
    if ANNOTATION_METRICS_PATH not in wanted and current.get(ANNOTATION_METRICS_PATH) == ours:
        patch[ANNOTATION_METRICS_PATH] = None
    return patch


_SKELETON_METADATA = ("name", "uid", "resourceVersion", "labels", "annotations", "creationTimestamp")


def node_skeleton(node: dict[str, Any]) -> dict[str, Any]:
    """What a replica keeps of a vnode another replica holds (issue 31): its labels and annotations, addresses and
    Ready condition - where its base is (``heartbeat_from_node``), whether it is Ready (a takeover counts a base's
    silence from it, ``controllers.bases``; peer replicas count Ready bases) - marked ``SKELETON``
    (``core.module``). The node controller never writes from it: a vnode gained is read whole first."""
    if node.get(SKELETON):
        return node
    md = node.get("metadata") or {}
    status = node.get("status") or {}
    ready = [{"type": "Ready", "status": c.get("status")} for c in status.get("conditions") or []
             if isinstance(c, Mapping) and c.get("type") == "Ready"]
    kept_status: dict[str, Any] = {"conditions": ready} if ready else {}
    if status.get("addresses"):
        kept_status["addresses"] = status["addresses"]
    return {"metadata": {k: md[k] for k in _SKELETON_METADATA if k in md}, "status": kept_status, SKELETON: True}


def heartbeat_from_node(node: Mapping[str, Any], env: str) -> BaseHeartbeat | None:
    """What a heartbeat of this vnode's base would say, rebuilt from the Node (ours or the Go controller's).

    A replica that takes a vnode over may never have heard its base (heartbeats reach whichever replica the
    Service picks): the Node tells it where the base is. None when the Node does not say enough.
    """
    md = node.get("metadata") or {}
    name = str(md.get("name") or "")
    if not is_vnode_name(name, env):
        return None
    labels = md.get("labels") or {}
    annotations = md.get("annotations") or {}
    identity = str(annotations.get(ANNOTATION_IDENTITY) or identity_of_node(name, env))
    ip, port = "", 0
    address = str(annotations.get(ANNOTATION_ADDRESS) or "")
    if address:
        ip, _, port_text = address.rpartition(":")
        port = int(port_text) if port_text.isdigit() else 0
    if not ip:
        for entry in ((node.get("status") or {}).get("addresses") or []):
            if entry.get("type") == "InternalIP":
                ip = str(entry.get("address") or "")
        port_label = str(labels.get(LABEL_TUNNEL_PORT) or "")
        port = int(port_label) if port_label.isdigit() else 0
    if not ip:
        return None
    tunnel = str(annotations.get(ANNOTATION_TUNNEL) or ("http" if port else "mqtt"))
    reserved = {LABEL_BASE_NAME, LABEL_BASE_VERSION, LABEL_BASE_CLUSTER, LABEL_BASE_HOST, LABEL_TUNNEL_PORT}
    extra = tuple(sorted((k, str(v)) for k, v in labels.items()
                         if k.startswith(("topology.kubernetes.io/", "base.koupleless.io/")) and k not in reserved))
    return BaseHeartbeat(
        metadata=BaseMetadata(
            identity=identity,
            name=str(labels.get(LABEL_BASE_NAME) or ""),
            version=str(labels.get(LABEL_BASE_VERSION) or ""),
            cluster_name=str(labels.get(LABEL_BASE_CLUSTER) or ""),
        ),
        host_name=str(labels.get(LABEL_BASE_HOST) or ""),
        ip=ip,
        port=port,
        labels=extra,
        tunnel=tunnel,
    )


def lease_labels(env: str) -> dict[str, str]:
    """A vnode Lease's labels: the Go controller's own (plus who manages it)."""
    return {LABEL_COMPONENT: LEASE_COMPONENT, LABEL_ENV: env, MANAGED_BY_LABEL: MANAGED_BY}


def new_lease(node: str, holder: str, duration_s: int, now_micro_iso: str, env: str) -> dict[str, object]:
    """The node Lease, labelled as the Go controller labels its own (plus who manages it)."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": node,
            "namespace": LEASE_NAMESPACE,
            "labels": lease_labels(env),
        },
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": duration_s,
            "acquireTime": now_micro_iso,
            "renewTime": now_micro_iso,
            "leaseTransitions": 0,
        },
    }
