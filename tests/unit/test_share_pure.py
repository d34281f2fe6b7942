"""The share (issue 31): a replica keeps whole only the Nodes and module pods of vnodes no other replica holds.

Unit tier: the skeletons keep what the decisions that read them read (tables), the informer trims again and takes
fresher copies without ever going back in time, and the Lease keeper fences a vnode gained from another replica
until its Node and pods have been read whole, telling the controllers only then. The real thing (hand-overs,
takeovers, with several replicas on the control plane) is tests/integration/test_replicas.py, test_takeover.py,
test_takeover_silence.py and test_shard.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.unit.test_lease_keeper import ENV, _Clock, _foreign_lease, _keeper, _Leases, _name, _tick
from vkprovider.controllers import releases
from vkprovider.controllers.fence import Hold
from vkprovider.controllers.shard import Shard
from vkprovider.core import node as vnode
from vkprovider.core.model import BaseHeartbeat, BaseMetadata
from vkprovider.core.module import is_skeleton, is_terminal, is_terminating, pod_skeleton, trim_pod
from vkprovider.kube.client import ApiError
from vkprovider.kube.informer import Informer, UnionCache

CFG = vnode.NodeConfig(env=ENV, stack="java", max_pods=100, kubelet_version="v1.37.2-vkprovider", kubelet_port=0)


def _node(identity: str = "base-1", ready: bool = True) -> dict[str, Any]:
    hb = BaseHeartbeat(BaseMetadata(identity, "base", "1.0.0", "cluster-a"), "host-1", "10.0.0.7", 1238,
                       labels=(("topology.kubernetes.io/zone", "z1"),))
    status = vnode.node_status(hb, None, CFG, readiness=vnode.BaseReadiness.READY if ready
                               else vnode.BaseReadiness.UNREACHABLE, silent_for_s=0, unreachable_after_s=20)
    node = vnode.new_node(hb, CFG, vnode.with_times(status, None, "2026-01-01T00:00:00Z"),
                          vnode.BaseReadiness.READY if ready else vnode.BaseReadiness.UNREACHABLE)
    node["metadata"]["resourceVersion"] = "10"
    node["metadata"]["managedFields"] = [{"manager": "vkprovider"}]
    return node


def _pod(name: str, node: str | None, rv: str = "20", *, ready: bool = True, deleting: bool = False,
         phase: str = "Running") -> dict[str, Any]:
    md: dict[str, Any] = {
        "name": name, "namespace": "ns", "uid": f"uid-{name}", "resourceVersion": rv,
        "creationTimestamp": "2026-01-01T00:00:00Z",
        "labels": {"module-controller.koupleless.io/component": "module", "app": "m"},
        "ownerReferences": [{"kind": "ReplicaSet", "name": "m-1", "controller": True, "uid": "rs"}]}
    if deleting:
        md["deletionTimestamp"] = "2026-01-01T00:01:00Z"
    return {"metadata": md,
            "spec": {**({"nodeName": node} if node else {}),
                     "containers": [{"name": "biz1", "image": "https://repo/biz1-1-ark-biz.jar",
                                     "env": [{"name": "BIZ_VERSION", "value": "1"}]}]},
            "status": {"phase": phase, "podIP": "10.0.0.7", "conditions": [
                {"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": "x"},
                {"type": "ContainersReady", "status": "True" if ready else "False"},
                {"type": "PodScheduled", "status": "True"}],
                "containerStatuses": [{"name": "biz1", "ready": ready, "state": {"running": {}}}]}}


# --- the skeletons keep what their readers read -------------------------------------------------------------------

@pytest.mark.parametrize("ready", [True, False])
def test_a_node_skeleton_says_where_the_base_is_and_whether_it_is_ready(ready: bool) -> None:
    whole = _node(ready=ready)
    skeleton = vnode.node_skeleton(whole)
    assert is_skeleton(skeleton) and not is_skeleton(whole)
    assert vnode.heartbeat_from_node(skeleton, ENV) == vnode.heartbeat_from_node(whole, ENV) is not None
    assert vnode.ready_status(skeleton) == vnode.ready_status(whole) == ("True" if ready else "Unknown")
    assert releases._cluster_label(skeleton) == releases._cluster_label(whole) == "cluster-a"
    assert releases._ready_node(skeleton) == releases._ready_node(whole) == ready
    assert skeleton["metadata"]["resourceVersion"] == "10" and "managedFields" not in skeleton["metadata"]
    assert "nodeInfo" not in skeleton["status"] and "spec" not in skeleton
    assert vnode.node_skeleton(skeleton) is skeleton


@pytest.mark.parametrize(("ready", "deleting", "phase"), [
    (True, False, "Running"), (False, False, "Pending"), (False, True, "Running"), (False, False, "Failed")])
def test_a_pod_skeleton_answers_what_the_release_decisions_count(ready: bool, deleting: bool, phase: str) -> None:
    whole = trim_pod(_pod("p", "vn-1", ready=ready, deleting=deleting, phase=phase))
    skeleton = pod_skeleton(whole)
    assert is_skeleton(skeleton)
    for kind in ("Ready", "ContainersReady"):
        assert releases._condition(skeleton, kind) == releases._condition(whole, kind) == ready
    assert releases._owner(skeleton, "ReplicaSet") == releases._owner(whole, "ReplicaSet") == "ns/m-1"
    assert is_terminating(skeleton) == is_terminating(whole) == deleting
    assert is_terminal(skeleton) == is_terminal(whole) == (phase == "Failed")
    assert skeleton["spec"] == {"nodeName": "vn-1"}
    assert "containers" not in skeleton["spec"] and "containerStatuses" not in skeleton["status"]
    assert pod_skeleton(skeleton) is skeleton


# --- the informer: trimmed again, refreshed never backwards ----------------------------------------------------------

def _informer(trim: Any, seen: list[tuple[str, Any, Any]]) -> Informer:
    return Informer(None, "/api/v1/pods", trim_object=trim,  # type: ignore[arg-type]
                    on_change=lambda k, o, n: seen.append((k, o, n)), resource="pods-test")


def _event(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "object": obj}


def test_an_informer_trims_its_objects_again_when_told_and_tells_its_subscribers() -> None:
    foreign: set[str] = set()
    seen: list[tuple[str, Any, Any]] = []
    informer = _informer(lambda p: pod_skeleton(p) if p["spec"].get("nodeName") in foreign else trim_pod(p), seen)
    informer._apply(_event("ADDED", _pod("a", "vn-1")))
    informer._apply(_event("ADDED", _pod("b", "vn-2")))
    assert not is_skeleton(informer.get("ns/a"))
    foreign.add("vn-1")
    seen.clear()
    informer.retrim(["ns/a", "ns/b", "ns/gone"])
    assert is_skeleton(informer.get("ns/a")) and not is_skeleton(informer.get("ns/b"))
    assert [(k, is_skeleton(o), is_skeleton(n)) for k, o, n in seen] == [("ns/a", False, True)]


def test_a_refresh_replaces_only_what_the_cache_holds_and_never_with_an_older_copy() -> None:
    seen: list[tuple[str, Any, Any]] = []
    foreign = {"vn-1"}
    informer = _informer(lambda p: pod_skeleton(p) if p["spec"].get("nodeName") in foreign else trim_pod(p), seen)
    informer._apply(_event("ADDED", _pod("same", "vn-1", rv="20")))
    informer._apply(_event("ADDED", _pod("newer", "vn-1", rv="30")))
    informer._apply(_event("ADDED", _pod("older", "vn-1", rv="40")))
    foreign.clear()  # the vnode is gained: what is read now is kept whole
    seen.clear()
    replaced = informer.refresh([_pod("same", "vn-1", rv="20"), _pod("newer", "vn-1", rv="35"),
                                 _pod("older", "vn-1", rv="39"), _pod("deleted-meanwhile", "vn-1", rv="25")])
    assert replaced == 2
    assert not is_skeleton(informer.get("ns/same")) and not is_skeleton(informer.get("ns/newer"))
    assert informer.get("ns/newer")["metadata"]["resourceVersion"] == "35"  # type: ignore[index]
    assert is_skeleton(informer.get("ns/older"))  # the cache is newer than the read: the watch brings the rest
    assert informer.get("ns/deleted-meanwhile") is None  # a read never brings back what the watch deleted
    assert sorted(k for k, _, _ in seen) == ["ns/newer", "ns/same"]


def test_a_union_cache_refreshes_and_retrims_each_member() -> None:
    foreign = {"vn-1"}
    trim = lambda p: pod_skeleton(p) if p["spec"].get("nodeName") in foreign else trim_pod(p)  # noqa: E731
    union = UnionCache()
    seen: list[str] = []
    union.subscribe(lambda k, o, n: seen.append(f"{k}:{is_skeleton(n)}"))
    first = Informer(None, "/api/v1/pods", trim_object=trim, on_change=union.notify, resource="a")  # type: ignore[arg-type]
    second = Informer(None, "/api/v1/pods", trim_object=trim, on_change=union.notify, resource="b")  # type: ignore[arg-type]
    union.add(first)
    union.add(second)
    first._apply(_event("ADDED", _pod("a", "vn-1")))
    second._apply(_event("ADDED", _pod("b", "vn-1")))
    foreign.clear()
    seen.clear()
    assert union.refresh([_pod("a", "vn-1"), _pod("b", "vn-1")]) == 2
    assert not is_skeleton(union.get("ns/a")) and not is_skeleton(union.get("ns/b"))
    foreign.add("vn-1")
    union.retrim(["ns/a", "ns/b"])
    assert is_skeleton(union.get("ns/a")) and is_skeleton(union.get("ns/b"))
    assert sorted(seen) == ["ns/a:False", "ns/a:True", "ns/b:False", "ns/b:True"]


# --- the Lease keeper: foreign vnodes, and reading a gained one whole before anyone acts -----------------------------

def _handed_to_me(node: str, version: str) -> dict[str, Any]:
    lease = _foreign_lease(node, "me", version)
    lease["metadata"]["labels"][vnode.LABEL_COMPONENT] = "vnode-lease"  # type: ignore[index]
    return lease


async def test_a_vnode_is_foreign_while_its_lease_names_another_replica() -> None:
    leases, clock = _Leases(), _Clock()
    keeper = _keeper(leases, clock)
    became: list[str] = []
    keeper.gains.on_foreign.append(became.append)
    mine, theirs, nobodys = _name(1), _name(2), _name(3)
    assert await keeper.claim(mine)
    keeper.on_lease_change(f"kube-node-lease/{mine}", None, _foreign_lease(mine, "me", "1"))
    keeper.on_lease_change(f"kube-node-lease/{theirs}", None, _foreign_lease(theirs, "other", "2"))
    keeper.on_lease_change(f"kube-node-lease/{nobodys}", None, _foreign_lease(nobodys, "", "3"))
    assert [keeper.foreign(n) for n in (mine, theirs, nobodys, _name(4))] == [False, True, False, False]
    keeper.on_lease_change(f"kube-node-lease/{theirs}", None, _foreign_lease(theirs, "other", "5"))
    assert became == [theirs]  # told once, not on every renewal


async def test_a_vnode_gained_from_another_replica_is_fenced_until_read_whole_then_gained() -> None:
    leases, clock = _Leases(), _Clock()
    keeper = _keeper(leases, clock)
    node = _name(1)
    reads: list[str] = []
    release = asyncio.Event()

    async def load(name: str) -> None:
        reads.append(name)
        await release.wait()

    keeper.gains.loader = load
    gained: list[str] = []
    keeper.gains.on_gained.append(gained.append)
    keeper.on_lease_change(f"kube-node-lease/{node}", None, _foreign_lease(node, "other", "5"))
    assert keeper.foreign(node)
    # The other replica hands it over: this replica adopts it (a write), and reads it whole before acting.
    keeper.on_lease_change(f"kube-node-lease/{node}", None, _handed_to_me(node, "6"))
    await _tick(keeper)
    await asyncio.sleep(0)
    assert node in keeper._held and reads == [node]
    assert keeper.hold(node) is Hold.FENCED and not keeper.may_write(node) and gained == []
    assert node not in keeper.held_nodes()
    release.set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert gained == [node] and keeper.hold(node) is Hold.HELD and keeper.may_write(node)


async def test_a_vnode_this_replica_never_saw_held_elsewhere_is_gained_at_once() -> None:
    leases, clock = _Leases(), _Clock()
    keeper = _keeper(leases, clock)

    async def load(name: str) -> None:
        raise AssertionError("a whole cache needs no read")

    keeper.gains.loader = load
    gained: list[str] = []
    keeper.gains.on_gained.append(gained.append)
    assert await keeper.claim(_name(1))  # a new base
    keeper.on_lease_change(f"kube-node-lease/{_name(2)}", None, _foreign_lease(_name(2), "me", "3"))  # a restart
    await _tick(keeper)
    assert gained == [_name(1), _name(2)] and keeper.may_write(_name(1)) and keeper.may_write(_name(2))


async def test_a_failed_read_is_tried_again_and_a_vnode_lost_meanwhile_is_never_gained() -> None:
    leases, clock = _Leases(), _Clock()
    keeper = _keeper(leases, clock)
    node, other = _name(1), _name(2)
    attempts: dict[str, int] = {}
    stuck = asyncio.Event()

    async def load(name: str) -> None:
        attempts[name] = attempts.get(name, 0) + 1
        if name == node and attempts[name] < 3:
            raise ApiError(500, "InternalError", "etcd is away")
        if name == other:
            await stuck.wait()

    keeper.gains.loader = load
    gained: list[str] = []
    lost: list[str] = []
    keeper.gains.on_gained.append(gained.append)
    keeper.gains.on_lost.append(lost.append)
    for name in (node, other):
        keeper.on_lease_change(f"kube-node-lease/{name}", None, _foreign_lease(name, "other", "5"))
        keeper.on_lease_change(f"kube-node-lease/{name}", None, _handed_to_me(name, "6"))
    await _tick(keeper)
    for _ in range(200):
        if gained:
            break
        await asyncio.sleep(0.05)
    assert gained == [node] and attempts[node] == 3
    assert keeper.hold(other) is Hold.FENCED
    keeper._lose(other, "taken")  # lost while it was being read: the controllers never hear of it
    await asyncio.sleep(0)
    assert lost == [] and gained == [node] and keeper.hold(other) is Hold.LOST and not keeper.gains.loading(other)


# --- the share: trims by the owners, shrinks a vnode handed away, reads one gained ----------------------------------

class _Owners:
    def __init__(self) -> None:
        self.others: set[str] = set()

    def foreign(self, node: str) -> bool:
        return node in self.others


class _Api:
    def __init__(self, node: dict[str, Any] | None, pods: list[dict[str, Any]]) -> None:
        self.node, self.pods = node, pods
        self.asked: list[tuple[str, Any]] = []

    async def list_all(self, path: str, *, params: dict[str, str]) -> tuple[list[dict[str, Any]], str, str]:
        self.asked.append((path, params))
        if path == "/api/v1/nodes":
            return ([self.node] if self.node is not None else []), "99", "NodeList"
        return self.pods, "99", "PodList"


def _share(api: _Api, owners: _Owners) -> tuple[Shard, Informer, UnionCache]:
    shard = Shard(api, owners)  # type: ignore[arg-type]
    nodes = Informer(None, "/api/v1/nodes", trim_object=shard.trim_node, resource="nodes-t")  # type: ignore[arg-type]
    pods = UnionCache()
    pods.add(Informer(None, "/api/v1/pods", trim_object=shard.trim_pod, on_change=pods.notify,  # type: ignore[arg-type]
                      resource="pods-t"))
    shard.bind(nodes, pods)
    return shard, nodes, pods


async def test_the_share_keeps_a_foreign_vnode_as_skeletons_and_reads_it_whole_when_gained() -> None:
    owners = _Owners()
    whole_node = _node("base-1")
    name = whole_node["metadata"]["name"]
    api = _Api(whole_node, [_pod("a", name, rv="21"), _pod("b", name, rv="22")])
    shard, nodes, pods = _share(api, owners)
    nodes._apply(_event("ADDED", whole_node))
    pods.informers[0]._apply(_event("ADDED", _pod("a", name, rv="21")))
    pods.informers[0]._apply(_event("ADDED", _pod("b", name, rv="22")))
    pods.informers[0]._apply(_event("ADDED", _pod("elsewhere", "vn-other", rv="23")))
    pods.informers[0]._apply(_event("ADDED", _pod("unbound", None, rv="24")))
    assert not any(is_skeleton(o) for o in [*nodes.items(), *pods.informers[0].items()])

    owners.others.add(name)  # handed to another replica
    shard.on_foreign(name)
    assert is_skeleton(nodes.get(name)) and is_skeleton(pods.get("ns/a")) and is_skeleton(pods.get("ns/b"))
    assert not is_skeleton(pods.get("ns/elsewhere")) and not is_skeleton(pods.get("ns/unbound"))
    pods.informers[0]._apply(_event("MODIFIED", _pod("a", name, rv="25")))  # its changes stay skeletons
    assert is_skeleton(pods.get("ns/a"))

    owners.others.clear()  # handed back: read whole, each read not older than the cache
    nodes._rv, pods.informers[0]._rv = "10", "25"
    api.pods = [_pod("a", name, rv="25"), _pod("b", name, rv="22")]
    await shard.load(name)
    assert api.asked == [
        ("/api/v1/nodes", {"fieldSelector": f"metadata.name={name}", "resourceVersion": "10",
                           "resourceVersionMatch": "NotOlderThan"}),
        ("/api/v1/pods", {"fieldSelector": f"spec.nodeName={name}", "resourceVersion": "25",
                          "resourceVersionMatch": "NotOlderThan"})]
    assert not is_skeleton(nodes.get(name)) and not is_skeleton(pods.get("ns/b"))
    assert not is_skeleton(pods.get("ns/a"))


async def test_a_read_older_than_the_cache_fails_the_load_rather_than_leave_a_skeleton() -> None:
    owners = _Owners()
    whole_node = _node("base-1")
    name = whole_node["metadata"]["name"]
    api = _Api(whole_node, [_pod("a", name, rv="21")])  # an apiserver answering from behind the watch
    shard, nodes, pods = _share(api, owners)
    owners.others.add(name)
    nodes._apply(_event("ADDED", whole_node))
    pods.informers[0]._apply(_event("ADDED", _pod("a", name, rv="25")))
    owners.others.clear()
    with pytest.raises(ApiError, match="older than the cache"):
        await shard.load(name)
    assert is_skeleton(pods.get("ns/a"))


async def test_reading_a_vnode_whose_node_is_gone_reads_its_pods_all_the_same() -> None:
    owners = _Owners()
    api = _Api(None, [])
    shard, _, _ = _share(api, owners)
    await shard.load("vn-gone")
    assert [path for path, _ in api.asked] == ["/api/v1/nodes", "/api/v1/pods"]


async def test_a_paged_list_sends_its_resource_version_with_the_first_page_only() -> None:
    """The apiserver refuses a continue token together with a resourceVersion: the token carries the first page's."""
    from vkprovider.kube.client import Kube

    asked: list[dict[str, str]] = []

    class _Paged(Kube):
        def __init__(self) -> None:
            pass

        async def request(self, method: str, path: str, **kwargs: Any) -> Any:
            query = dict(kwargs["params"])
            asked.append(query)
            last = "continue" in query
            return {"kind": "PodList", "apiVersion": "v1", "items": [{"metadata": {"name": str(len(asked))}}],
                    "metadata": {"resourceVersion": "30", **({} if last else {"continue": "tok"})}}

    items, rv, kind = await _Paged().list_all("/api/v1/pods", params={
        "fieldSelector": "spec.nodeName=vn", "resourceVersion": "25", "resourceVersionMatch": "NotOlderThan"})
    assert [i["metadata"]["name"] for i in items] == ["1", "2"] and rv == "30" and kind == "Pod"
    assert asked == [{"fieldSelector": "spec.nodeName=vn", "resourceVersion": "25",
                      "resourceVersionMatch": "NotOlderThan", "limit": "500"},
                     {"fieldSelector": "spec.nodeName=vn", "limit": "500", "continue": "tok"}]
