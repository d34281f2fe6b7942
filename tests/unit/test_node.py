"""The vnode object computed from a base: labels, taints, resources, conditions and change detection."""

import json

from vkprovider.core import node as vnode
from vkprovider.core.model import BaseHealth, BaseHeartbeat, BaseMetadata

CFG = vnode.NodeConfig(env="dev", stack="java", max_pods=200, kubelet_version="v1.37.2-vkprovider.0.1.0",
                       kubelet_port=10250)
HB = BaseHeartbeat(
    metadata=BaseMetadata("10.0.0.5", "base", "1.0.0", "default"),
    host_name="myhost",
    ip="10.0.0.5",
    port=1238,
    labels=(("topology.kubernetes.io/zone", "zone-a"),),
)


def test_name_and_seed_labels():
    assert vnode.node_name("10.0.0.5", "dev") == "vnode.10.0.0.5.dev"
    assert vnode.is_vnode_name("vnode.10.0.0.5.dev", "dev")
    assert not vnode.is_vnode_name("vnode.10.0.0.5.prod", "dev")
    labels = vnode.node_labels(HB, CFG)
    assert labels["base.koupleless.io/stack"] == "java"
    assert labels["base.koupleless.io/name"] == "base"
    assert labels["base.koupleless.io/version"] == "1.0.0"
    assert labels["base.koupleless.io/cluster-name"] == "default"
    assert labels["base.koupleless.io/host-name"] == "myhost"
    assert labels["base.koupleless.io/tunnel-port"] == "1238"
    assert labels["virtual-kubelet.koupleless.io/component"] == "vnode"
    assert labels["virtual-kubelet.koupleless.io/env"] == "dev"
    assert labels["type"] == "virtual-kubelet"
    assert labels["kubernetes.io/role"] == "agent"
    assert labels["topology.kubernetes.io/zone"] == "zone-a"


def test_taints_are_added_never_replaced():
    unreachable = {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}
    assert vnode.missing_taints([unreachable], "dev") == vnode.node_taints("dev")
    assert vnode.missing_taints([unreachable, *vnode.node_taints("dev")], "dev") == []


def test_label_patch_removes_only_owned_stale_labels():
    current = {"base.koupleless.io/version": "0.9", "team": "x", "base.koupleless.io/old": "y"}
    patch = vnode.labels_to_patch(current, {"base.koupleless.io/version": "1.0"})
    assert patch == {"base.koupleless.io/version": "1.0", "base.koupleless.io/old": None}


def test_resources_from_health():
    health = BaseHealth(cpu_count=4, memory_max_bytes=1000, memory_committed_bytes=300)
    st = vnode.node_status(HB, health, CFG, reachable=True, silent_for_s=0)
    assert st["capacity"] == {"pods": "200", "cpu": "4", "memory": "1000"}
    assert st["allocatable"] == {"pods": "200", "cpu": "4", "memory": "1000"}
    moved = vnode.node_status(HB, BaseHealth(cpu_count=4, memory_max_bytes=1000, memory_committed_bytes=600), CFG,
                              reachable=True, silent_for_s=0)
    assert not vnode.status_differs(moved, vnode.with_times(st, None, "2026-01-01T00:00:00Z"))
    unknown = vnode.node_status(HB, BaseHealth(memory_max_bytes=-1), CFG, reachable=True, silent_for_s=0)
    assert "memory" not in unknown["capacity"]


def test_unreachable_base_is_ready_unknown_and_only_changes_are_writes():
    ready = vnode.node_status(HB, None, CFG, reachable=True, silent_for_s=0)
    assert vnode.status_differs(ready, None)
    written = vnode.with_times(ready, None, "2026-01-01T00:00:00Z")
    assert not vnode.status_differs(ready, written)
    gone = vnode.node_status(HB, None, CFG, reachable=False, silent_for_s=30)
    cond = next(c for c in gone["conditions"] if c["type"] == "Ready")
    assert cond["status"] == "Unknown" and cond["reason"] == "BaseUnreachable"
    assert vnode.status_differs(gone, written)
    later = vnode.with_times(gone, written, "2026-01-01T00:01:00Z")
    ready_cond = next(c for c in later["conditions"] if c["type"] == "Ready")
    assert ready_cond["lastTransitionTime"] == "2026-01-01T00:01:00Z"


def test_status_as_the_apiserver_stores_it_is_not_a_difference():
    """The apiserver drops empty strings (bootID, kernelVersion ...) and adds fields: that is not a change."""
    desired = vnode.node_status(HB, None, CFG, reachable=True, silent_for_s=0)
    stored = json.loads(json.dumps(vnode.with_times(desired, None, "2026-01-01T00:00:00Z")))
    stored["nodeInfo"] = {k: v for k, v in stored["nodeInfo"].items() if v != ""}
    stored["nodeInfo"]["swap"] = {}
    stored["images"] = []
    for cond in stored["conditions"]:
        if cond.get("message") == "":
            del cond["message"]
    assert not vnode.status_differs(desired, stored)


def test_node_info_names_vkprovider_and_addresses():
    st = vnode.node_status(HB, None, CFG, reachable=True, silent_for_s=0)
    assert "vkprovider" in st["nodeInfo"]["kubeletVersion"]
    assert {"type": "InternalIP", "address": "10.0.0.5"} in st["addresses"]
    assert st["daemonEndpoints"]["kubeletEndpoint"]["Port"] == 10250
