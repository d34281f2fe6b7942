"""The virtual Node of a base, computed from what the base told us.

Pure functions: the node controller compares their output with the cached Node and writes only differences.
Names, labels and taints are the Go ModuleController's, so existing module manifests schedule unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vkprovider.core.compare import holds
from vkprovider.core.model import BaseHealth, BaseHeartbeat

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
ANNOTATION_TUNNEL = "base.koupleless.io/tunnel"
ANNOTATION_IDENTITY = "base.koupleless.io/identity"
TAINT_VIRTUAL_NODE = "schedule.koupleless.io/virtual-node"
TAINT_NODE_ENV = "schedule.koupleless.io/node-env"
LEASE_NAMESPACE = "kube-node-lease"

# The labels vkprovider owns on a vnode: anything else (added by users or other controllers) is left alone.
OWNED_LABEL_PREFIXES = ("base.koupleless.io/", "virtual-kubelet.koupleless.io/")
OWNED_LABELS = frozenset({"type", "kubernetes.io/role", "kubernetes.io/hostname", LABEL_ZONE})

_LABEL_VALUE_BAD = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """The provider-wide facts a vnode needs besides the base's own."""

    env: str
    stack: str
    max_pods: int
    kubelet_version: str
    kubelet_port: int


def node_name(identity: str, env: str) -> str:
    """``vnode.{identity}.{env}``, the Go controller's convention."""
    return f"{NODE_PREFIX}{identity.lower()}.{env}"


def is_vnode_name(name: str, env: str) -> bool:
    return name.startswith(NODE_PREFIX) and name.endswith("." + env) and len(name) > len(NODE_PREFIX) + len(env) + 1


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
        LABEL_TUNNEL_PORT: str(hb.port),
        LABEL_COMPONENT: "vnode",
        LABEL_ENV: cfg.env,
        "type": "virtual-kubelet",
        "kubernetes.io/role": "agent",
        "kubernetes.io/hostname": node_name(md.identity, cfg.env),
    }
    for key, value in extra.items():
        labels[key] = label_value(value)
    return labels


def node_taints(env: str) -> list[dict[str, str]]:
    return [
        {"key": TAINT_VIRTUAL_NODE, "value": "True", "effect": "NoExecute"},
        {"key": TAINT_NODE_ENV, "value": env, "effect": "NoExecute"},
    ]


def missing_taints(current: list[dict[str, str]], env: str) -> list[dict[str, str]]:
    """Our taints absent from ``current`` (taints other controllers added are never touched)."""
    have = {(t.get("key"), t.get("effect")) for t in current}
    return [t for t in node_taints(env) if (t["key"], t["effect"]) not in have]


def labels_to_patch(current: dict[str, str], desired: dict[str, str]) -> dict[str, str | None]:
    """A merge-patch of the labels we own: changed values set, stale owned labels removed."""
    patch: dict[str, str | None] = {k: v for k, v in desired.items() if current.get(k) != v}
    for key in current:
        owned = key in OWNED_LABELS or key.startswith(OWNED_LABEL_PREFIXES)
        if owned and key not in desired:
            patch[key] = None
    return patch


def _resources(health: BaseHealth | None, cfg: NodeConfig) -> tuple[dict[str, str], dict[str, str]]:
    capacity = {"pods": str(cfg.max_pods)}
    allocatable = {"pods": str(cfg.max_pods)}
    if health is not None:
        if health.cpu_count is not None and health.cpu_count > 0:
            capacity["cpu"] = allocatable["cpu"] = str(health.cpu_count)
        if health.memory_max_bytes is not None and health.memory_max_bytes > 0:
            # Allocatable is the base's max heap, not max minus what is committed now: committed memory moves
            # with every GC, and a node status that follows it would be rewritten on every health answer.
            capacity["memory"] = allocatable["memory"] = str(health.memory_max_bytes)
    return capacity, allocatable


def node_status(
    hb: BaseHeartbeat,
    health: BaseHealth | None,
    cfg: NodeConfig,
    *,
    reachable: bool,
    silent_for_s: float,
) -> dict[str, object]:
    """The node status a base deserves, WITHOUT timestamps (see ``with_times``)."""
    capacity, allocatable = _resources(health, cfg)
    if reachable:
        ready = {"type": "Ready", "status": "True", "reason": "BaseReady", "message": "base is heartbeating"}
    else:
        ready = {
            "type": "Ready",
            "status": "Unknown",
            "reason": "BaseUnreachable",
            "message": f"no heartbeat from the base for {int(silent_for_s)}s",
        }
    pressure = "Unknown" if not reachable else "False"
    conditions = [
        ready,
        {"type": "MemoryPressure", "status": pressure, "reason": "BaseHasSufficientMemory", "message": ""},
        {"type": "DiskPressure", "status": pressure, "reason": "BaseHasNoDiskPressure", "message": ""},
        {"type": "PIDPressure", "status": pressure, "reason": "BaseHasSufficientPID", "message": ""},
    ]
    return {
        "capacity": capacity,
        "allocatable": allocatable,
        "conditions": conditions,
        "addresses": [
            {"type": "InternalIP", "address": hb.ip},
            {"type": "Hostname", "address": hb.host_name or hb.ip},
        ],
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
            "architecture": "amd64",
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


def new_node(hb: BaseHeartbeat, cfg: NodeConfig) -> dict[str, object]:
    """The Node object created for a base seen for the first time (status is written separately)."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node_name(hb.identity, cfg.env),
            "labels": node_labels(hb, cfg),
            "annotations": node_annotations(hb),
        },
        "spec": {"taints": node_taints(cfg.env)},
    }


def node_annotations(hb: BaseHeartbeat) -> dict[str, str]:
    return {ANNOTATION_TUNNEL: hb.tunnel, ANNOTATION_IDENTITY: hb.identity, "node.alpha.kubernetes.io/ttl": "0"}


def new_lease(node: str, node_uid: str, holder: str, duration_s: int, now_micro_iso: str) -> dict[str, object]:
    """The node Lease, owned by its Node so it is garbage-collected with it."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": node,
            "namespace": LEASE_NAMESPACE,
            "labels": {LABEL_COMPONENT: "vnode"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid}],
        },
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": duration_s,
            "acquireTime": now_micro_iso,
            "renewTime": now_micro_iso,
        },
    }
