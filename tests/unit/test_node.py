"""The vnode object computed from a base: labels, taints, resources, conditions and change detection."""

import json

from vkprovider.core import node as vnode
from vkprovider.core.model import BaseHealth, BaseHeartbeat, BaseMetadata
from vkprovider.core.node import BaseReadiness as R

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


def test_default_taint_is_the_virtual_node_one_and_the_env_taint_is_opt_in():
    """The seeds' manifests tolerate only schedule.koupleless.io/virtual-node; VKP_ENV_TAINT adds the Go
    controller's environment isolation taint."""
    assert vnode.node_taints(CFG) == [{"key": "schedule.koupleless.io/virtual-node", "value": "True",
                                       "effect": "NoExecute"}]
    isolated = vnode.NodeConfig(env="dev", stack="java", max_pods=200, kubelet_version="v", kubelet_port=10250,
                                env_taint=True)
    assert {"key": "schedule.koupleless.io/node-env", "value": "dev", "effect": "NoExecute"} in \
        vnode.node_taints(isolated)


def test_taints_to_write_keeps_others_and_owns_only_its_own():
    unreachable = {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute", "timeAdded": "t"}
    go_env = {"key": "schedule.koupleless.io/node-env", "value": "dev", "effect": "NoExecute"}
    virtual = {"key": "schedule.koupleless.io/virtual-node", "value": "True", "effect": "NoExecute"}
    # A Go controller node (both taints) adopted with the env taint off: the env taint goes, the others stay.
    assert vnode.taints_to_write([virtual, go_env, unreachable], CFG, R.READY, "now") == [virtual, unreachable]
    assert vnode.taints_to_write([virtual, unreachable], CFG, R.READY, "now") is None
    # Deactivated: not-ready added at once (with timeAdded), removed when the base is back.
    deact = vnode.taints_to_write([virtual], CFG, R.DEACTIVATED, "now")
    assert deact == [virtual, {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute", "timeAdded": "now"}]
    assert vnode.taints_to_write(deact, CFG, R.DEACTIVATED, "later") is None
    assert vnode.taints_to_write(deact, CFG, R.READY, "later") == [virtual]
    assert vnode.taints_to_write([], CFG, R.READY, "now") == [virtual]
    # The node-lifecycle controller's not-ready:NoSchedule (every new Node has it until Ready) is left to it.
    lifecycle = {"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule", "timeAdded": "t"}
    assert vnode.taints_to_write([virtual, lifecycle], CFG, R.READY, "now") is None


def test_deactivated_base_is_not_ready():
    st = vnode.node_status(HB, None, CFG, readiness=R.DEACTIVATED, silent_for_s=1)
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "BaseDeactivated")


def test_go_controller_node_tells_where_its_base_is():
    go_node = {"metadata": {"name": "vnode.10.0.0.5.dev", "labels": {
        "base.koupleless.io/name": "base", "base.koupleless.io/version": "1.0.0",
        "base.koupleless.io/cluster-name": "default", "base.koupleless.io/host-name": "base-host",
        "base.koupleless.io/tunnel-port": "1238", "virtual-kubelet.koupleless.io/component": "vnode",
        "virtual-kubelet.koupleless.io/env": "dev"}},
        "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.5"},
                                 {"type": "Hostname", "address": "base-host"}]}}
    hb = vnode.heartbeat_from_node(go_node, "dev")
    assert hb is not None
    assert (hb.identity, hb.ip, hb.port, hb.tunnel, hb.host_name) == ("10.0.0.5", "10.0.0.5", 1238, "http",
                                                                       "base-host")
    assert (hb.metadata.name, hb.metadata.version, hb.metadata.cluster_name) == ("base", "1.0.0", "default")
    ours = vnode.new_node(HB, vnode.NodeConfig(env="dev", stack="java", max_pods=1, kubelet_version="v",
                                               kubelet_port=1, kubelet_address="10.9.9.9"))
    back = vnode.heartbeat_from_node({**ours, "status": {"addresses": [{"type": "InternalIP",
                                                                         "address": "10.9.9.9"}]}}, "dev")
    assert back is not None and (back.ip, back.port) == ("10.0.0.5", 1238)  # our annotation, not InternalIP


def test_identity_refusals():
    assert vnode.identity_refusal("10.0.0.5", "dev") is None
    assert "lowercase" in (vnode.identity_refusal("SPOOF-0000", "dev") or "")
    assert "DNS-1123" in (vnode.identity_refusal("a..b", "dev") or "")
    assert "too long" in (vnode.identity_refusal("x" * 60, "dev") or "")


def test_label_patch_removes_only_owned_stale_labels():
    current = {"base.koupleless.io/version": "0.9", "team": "x", "base.koupleless.io/old": "y"}
    patch = vnode.labels_to_patch(current, {"base.koupleless.io/version": "1.0"})
    assert patch == {"base.koupleless.io/version": "1.0", "base.koupleless.io/old": None}


def test_resources_from_health():
    health = BaseHealth(cpu_count=4, memory_max_bytes=1000, memory_committed_bytes=300)
    st = vnode.node_status(HB, health, CFG, readiness=R.READY, silent_for_s=0)
    assert st["capacity"] == {"pods": "200", "cpu": "4", "memory": "1000"}
    assert st["allocatable"] == {"pods": "200", "cpu": "4", "memory": "1000"}
    moved = vnode.node_status(HB, BaseHealth(cpu_count=4, memory_max_bytes=1000, memory_committed_bytes=600), CFG,
                              readiness=R.READY, silent_for_s=0)
    assert not vnode.status_differs(moved, vnode.with_times(st, None, "2026-01-01T00:00:00Z"))
    unknown = vnode.node_status(HB, BaseHealth(memory_max_bytes=-1), CFG, readiness=R.READY, silent_for_s=0)
    assert "memory" not in unknown["capacity"]


def test_unreachable_base_is_ready_unknown_and_only_changes_are_writes():
    ready = vnode.node_status(HB, None, CFG, readiness=R.READY, silent_for_s=0)
    assert vnode.status_differs(ready, None)
    written = vnode.with_times(ready, None, "2026-01-01T00:00:00Z")
    assert not vnode.status_differs(ready, written)
    gone = vnode.node_status(HB, None, CFG, readiness=R.UNREACHABLE, silent_for_s=30)
    cond = next(c for c in gone["conditions"] if c["type"] == "Ready")
    assert cond["status"] == "Unknown" and cond["reason"] == "BaseUnreachable"
    assert vnode.status_differs(gone, written)
    later = vnode.with_times(gone, written, "2026-01-01T00:01:00Z")
    ready_cond = next(c for c in later["conditions"] if c["type"] == "Ready")
    assert ready_cond["lastTransitionTime"] == "2026-01-01T00:01:00Z"


def test_status_as_the_apiserver_stores_it_is_not_a_difference():
    """The apiserver drops empty strings (bootID, kernelVersion ...) and adds fields: that is not a change."""
    desired = vnode.node_status(HB, None, CFG, readiness=R.READY, silent_for_s=0)
    stored = json.loads(json.dumps(vnode.with_times(desired, None, "2026-01-01T00:00:00Z")))
    stored["nodeInfo"] = {k: v for k, v in stored["nodeInfo"].items() if v != ""}
    stored["nodeInfo"]["swap"] = {}
    stored["images"] = []
    for cond in stored["conditions"]:
        if cond.get("message") == "":
            del cond["message"]
    assert not vnode.status_differs(desired, stored)


def test_node_info_names_vkprovider_and_addresses():
    st = vnode.node_status(HB, None, CFG, readiness=R.READY, silent_for_s=0)
    assert "vkprovider" in st["nodeInfo"]["kubeletVersion"]
    assert {"type": "InternalIP", "address": "10.0.0.5"} in st["addresses"]
    assert st["daemonEndpoints"]["kubeletEndpoint"]["Port"] == 10250
    assert st["nodeInfo"]["architecture"] == "amd64"
    served = vnode.NodeConfig(env="dev", stack="java", max_pods=1, kubelet_version="v", kubelet_port=10251,
                              architecture="arm64", kubelet_address="10.1.2.3")
    st = vnode.node_status(HB, None, served, readiness=R.READY, silent_for_s=0)
    # With vkprovider's kubelet API the only address is vkprovider's (a Hostname address would be tried first).
    assert st["addresses"] == [{"type": "InternalIP", "address": "10.1.2.3"}]
    assert st["nodeInfo"]["architecture"] == "arm64"


def test_annotation_patch_writes_only_our_changed_annotations():
    """The TTL controller's annotation is set at create (a small cluster's 0) and never written again: past 100
    Nodes the controller raises it, and writing ours back would answer each of its writes with one of ours."""
    ours = {"base.koupleless.io/tunnel": "http", "base.koupleless.io/identity": "10.0.0.5",
            "base.koupleless.io/address": "10.0.0.5:1238"}
    assert vnode.new_node(HB, CFG)["metadata"]["annotations"] == {**ours, "node.alpha.kubernetes.io/ttl": "0"}
    cases = [  # (current annotations, patch)
        (ours, {}),
        ({**ours, "node.alpha.kubernetes.io/ttl": "15", "volumes.kubernetes.io/controller-managed-attach-detach":
          "true", "example.com/note": "x"}, {}),
        ({**ours, "base.koupleless.io/address": "10.0.0.9:1238"}, {"base.koupleless.io/address": "10.0.0.5:1238"}),
        ({"node.alpha.kubernetes.io/ttl": "30"}, ours),  # a Go controller's Node: ours added, the ttl kept
    ]
    for current, patch in cases:
        assert vnode.annotations_to_patch(current, HB, CFG) == patch, current


def test_a_served_vnode_tells_metrics_server_the_path_that_names_it():
    """With the kubelet API on, metrics-server (0.7+) scrapes /metrics/resource/<vnode> (the Node annotation),
    so the replica that holds the vnode answers for it alone; with it off the annotation goes, and only ours."""
    served = vnode.NodeConfig(env="dev", stack="java", max_pods=1, kubelet_version="v", kubelet_port=10250,
                              kubelet_address="10.1.2.3")
    path = {"metrics.k8s.io/resource-metrics-path": "/metrics/resource/vnode.10.0.0.5.dev"}
    assert vnode.new_node(HB, served)["metadata"]["annotations"]["metrics.k8s.io/resource-metrics-path"] == \
        "/metrics/resource/vnode.10.0.0.5.dev"
    assert "metrics.k8s.io/resource-metrics-path" not in vnode.new_node(HB, CFG)["metadata"]["annotations"]
    ours = vnode.node_annotations(HB, CFG)
    cases = [  # (config, current annotations, patch)
        (served, ours, path),  # an older vkprovider's Node gets the path
        (served, {**ours, **path}, {}),
        (CFG, {**ours, **path}, {"metrics.k8s.io/resource-metrics-path": None}),  # kubelet API turned off
        (CFG, {**ours, "metrics.k8s.io/resource-metrics-path": "/elsewhere"}, {}),  # somebody else's: kept
    ]
    for cfg, current, patch in cases:
        assert vnode.annotations_to_patch(current, HB, cfg) == patch, (cfg.kubelet_address, current)


def test_vnode_has_a_provider_id_and_stays_out_of_external_load_balancers():
    """Cloud controllers leave a Node with a providerID of another provider alone (a Node they cannot find in their
    cloud without one, they delete), and the service controller keeps labelled Nodes out of load balancers."""
    node = vnode.new_node(HB, CFG)
    assert node["spec"]["providerID"] == "koupleless://dev/10.0.0.5"
    assert node["metadata"]["labels"]["node.kubernetes.io/exclude-from-external-load-balancers"] == "true"
    assert vnode.provider_id("base-1.a", "prod") == "koupleless://prod/base-1.a"


def test_provider_id_is_set_once_and_never_changed():
    """The apiserver lets a Node's providerID be set once, from empty: an older vkprovider's or the Go controller's
    Node gets ours; one that has another keeps it."""
    ours = "koupleless://dev/10.0.0.5"
    cases = [(None, ours), ("", ours), (ours, None), ("aws:///eu-west-1a/i-0abc", None)]
    for current, to_set in cases:
        assert vnode.provider_id_to_set(current, ours) == to_set, current


def test_label_patch_adds_the_load_balancer_exclusion_once_whatever_its_value():
    """The service controller reads the label's presence: a value another manager set (kubeadm's is "") stays."""
    desired = vnode.node_labels(HB, CFG)
    label = "node.kubernetes.io/exclude-from-external-load-balancers"
    current = {k: v for k, v in desired.items() if k != label}
    assert vnode.labels_to_patch(current, desired) == {label: "true"}
    assert vnode.labels_to_patch({**current, label: ""}, desired) == {}
    assert vnode.labels_to_patch({**current, label: "true"}, desired) == {}


def test_pod_capacity_follows_the_base_then_the_setting_then_the_default():
    """status.capacity.pods (what the scheduler counts against: "Too many pods") per base, not one number."""
    cfg = vnode.NodeConfig(env="dev", stack="java", max_pods=200, kubelet_version="v", kubelet_port=1,
                           max_pods_by_base={("small", "1.0.0"): 2, ("small", None): 4})
    small = BaseHeartbeat(metadata=BaseMetadata("s1", "small", "1.0.0", "default"), host_name="h", ip="10.0.0.6",
                          port=1238)
    cases = [
        (HB, "200"),  # not named: VKP_NODE_MAX_PODS
        (small, "2"),  # name:version
        (BaseHeartbeat(metadata=BaseMetadata("s2", "small", "9.9.9", "default"), host_name="h", ip="10.0.0.7",
                       port=1238), "4"),  # name
        (BaseHeartbeat(metadata=small.metadata, host_name="h", ip="10.0.0.6", port=1238,
                       labels=(("base.koupleless.io/max-pods", "7"),)), "7"),  # the base's own word
    ]
    for heartbeat, pods in cases:
        st = vnode.node_status(heartbeat, None, cfg, readiness=R.READY, silent_for_s=0)
        assert (st["capacity"]["pods"], st["allocatable"]["pods"]) == (pods, pods), heartbeat
    # The label is shown on the Node too (a base.koupleless.io/ label, owned: removed when the base stops saying it).
    labelled = cases[3][0]
    assert vnode.node_labels(labelled, cfg)["base.koupleless.io/max-pods"] == "7"


def test_memory_is_the_max_metaspace_else_the_max_heap_never_zero():
    mib = 1024 * 1024
    for health, memory in [
        (BaseHealth(cpu_count=2, memory_max_bytes=512 * mib, heap_max_bytes=4096 * mib), str(512 * mib)),
        (BaseHealth(cpu_count=2, memory_max_bytes=None, heap_max_bytes=6028 * mib), str(6028 * mib)),  # -1 on the wire
        (BaseHealth(cpu_count=2), None),
    ]:
        st = vnode.node_status(HB, health, CFG, readiness=R.READY, silent_for_s=0)
        assert st["capacity"].get("memory") == memory and st["allocatable"].get("memory") == memory


def memory_condition(st: dict[str, object]) -> dict[str, str]:
    return next(c for c in st["conditions"] if c["type"] == "MemoryPressure")  # type: ignore[attr-defined]


def test_memory_pressure_condition_speaks_as_the_kubelet():
    """The kubelet's reasons and messages (pkg/kubelet/nodestatus/setters.go): tools that read them read ours."""
    under = memory_condition(vnode.node_status(HB, None, CFG, readiness=R.READY, silent_for_s=0,
                                               memory_pressure=True))
    assert under == {"type": "MemoryPressure", "status": "True", "reason": "KubeletHasInsufficientMemory",
                     "message": "kubelet has insufficient memory available"}
    fine = memory_condition(vnode.node_status(HB, None, CFG, readiness=R.READY, silent_for_s=0))
    assert fine == {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory",
                    "message": "kubelet has sufficient memory available"}
    for readiness, reason in ((R.UNREACHABLE, "BaseUnreachable"), (R.DEACTIVATED, "BaseDeactivated")):
        unknown = memory_condition(vnode.node_status(HB, None, CFG, readiness=readiness, silent_for_s=30,
                                                     memory_pressure=True))
        assert (unknown["status"], unknown["reason"]) == ("Unknown", reason)
    # A change of pressure is a status write; its transition time moves.
    before = vnode.with_times(vnode.node_status(HB, None, CFG, readiness=R.READY, silent_for_s=0), None, "t0")
    after = vnode.node_status(HB, None, CFG, readiness=R.READY, silent_for_s=0, memory_pressure=True)
    assert vnode.status_differs(after, before)
    assert memory_condition(vnode.with_times(after, before, "t1"))["lastTransitionTime"] == "t1"


def test_taints_of_other_managers_stay_through_our_taint_writes():
    """The memory-pressure taint is the node-lifecycle controller's (TaintNodesByCondition, from the condition), a
    cordon's is kubectl's: whatever vkprovider writes of its own taints, theirs stay as they are."""
    virtual = {"key": "schedule.koupleless.io/virtual-node", "value": "True", "effect": "NoExecute"}
    pressure = {"key": "node.kubernetes.io/memory-pressure", "effect": "NoSchedule", "timeAdded": "t"}
    cordon = {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule", "timeAdded": "t"}
    user = {"key": "example.com/team", "value": "a", "effect": "NoSchedule"}
    others = [pressure, cordon, user]
    cases = [  # (current, readiness, what is written: None = nothing)
        ([virtual, *others], R.READY, None),
        ([*others], R.READY, [*others, virtual]),  # ours added, theirs kept in place
        ([virtual, *others], R.DEACTIVATED, [virtual, *others, {"key": "node.kubernetes.io/not-ready",
                                                                 "effect": "NoExecute", "timeAdded": "now"}]),
        ([virtual, pressure, {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}, cordon], R.READY,
         [virtual, pressure, cordon]),  # ours removed, theirs kept
    ]
    for current, readiness, written in cases:
        assert vnode.taints_to_write(current, CFG, readiness, "now") == written, (current, readiness)
