"""Smoke tests of the local control plane itself: everything vkprovider's tests rely on must really happen.

No kubelet exists, so these tests play the kubelet's part for a node they create (they set its status), and
then check that the genuine kube-scheduler, kube-controller-manager and RBAC authorizer act on it as they
would in a real cluster. If one of these fails, every other integration test result is meaningless.
"""

from __future__ import annotations

import datetime as dt
import ssl
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.rest import ApiException

from tests.helpers import wait_for

pytestmark = pytest.mark.integration

VNODE_TAINT = {"key": "schedule.koupleless.io/virtual-node", "value": "True", "effect": "NoExecute"}


def test_readyz_answers_ok(kube_cluster: Any) -> None:
    out = kube_cluster.kubectl("get", "--raw", "/readyz")
    assert out.stdout.strip() == "ok"


def test_anonymous_requests_are_not_authorized(kube_cluster: Any) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{kube_cluster.server}/api/v1/nodes", context=ctx, timeout=10)
    assert info.value.code in (401, 403)


@pytest.fixture
async def vnode(kube_api: Any) -> AsyncIterator[str]:
    """A Ready node shaped like a vkprovider vnode (taint, labels, capacity), deleted afterwards."""
    core = client.CoreV1Api(kube_api)
    name = f"vkp-smoke-{uuid.uuid4().hex[:8]}"
    node: Any = {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"type": "virtual-kubelet", "kubernetes.io/hostname": name,
                                              "vkprovider.test/smoke": "true"}},
        "spec": {"taints": [VNODE_TAINT]},
    }
    await core.create_node(node)
    try:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        resources = {"cpu": "8", "memory": "16Gi", "pods": "110"}
        await core.patch_node_status(name, {"status": {  # a strategic-merge patch: no resourceVersion race
            "capacity": resources, "allocatable": resources,
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "set by the smoke test", "lastHeartbeatTime": now,
                            "lastTransitionTime": now}]}})
        yield name
    finally:
        await core.delete_node(name)


def _pod(name: str, node: str, *, tolerate: bool) -> Any:
    term = {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}
    spec: dict[str, Any] = {
        "containers": [{"name": "biz", "image": "example.invalid/biz:1.0"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [term]}}},
    }
    if tolerate:
        spec["tolerations"] = [{**VNODE_TAINT, "operator": "Equal"}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


async def test_scheduler_binds_tolerating_pod_to_vnode_and_not_the_other(kube_api: Any, namespace: str,
                                                                         vnode: str) -> None:
    core = client.CoreV1Api(kube_api)
    await core.create_namespaced_pod(namespace, _pod("tolerates", vnode, tolerate=True))
    await core.create_namespaced_pod(namespace, _pod("intolerant", vnode, tolerate=False))
    try:
        async def bound() -> str | None:
            pod = await core.read_namespaced_pod("tolerates", namespace)
            return pod.spec.node_name

        assert await wait_for(bound, timeout=60, what="kube-scheduler binding the tolerating pod") == vnode

        async def unschedulable() -> bool:
            pod = await core.read_namespaced_pod("intolerant", namespace)
            conds = {c.type: c for c in pod.status.conditions or []}
            cond = conds.get("PodScheduled")
            return pod.spec.node_name is None and cond is not None and cond.status == "False" \
                and cond.reason == "Unschedulable"

        await wait_for(unschedulable, timeout=30, what="the intolerant pod marked Unschedulable")
        pod = await core.read_namespaced_pod("intolerant", namespace)
        assert pod.spec.node_name is None and pod.status.phase == "Pending"
        scheduled = next(c for c in pod.status.conditions if c.type == "PodScheduled")
        assert "untolerated taint" in (scheduled.message or "")
    finally:
        for name in ("tolerates", "intolerant"):  # no kubelet confirms a graceful delete: force it
            await core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)


async def test_deployment_gets_replicaset_and_pods(kube_api: Any, namespace: str) -> None:
    apps = client.AppsV1Api(kube_api)
    core = client.CoreV1Api(kube_api)
    labels = {"app": "smoke"}
    deployment: Any = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "smoke"},
        "spec": {"replicas": 2, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {"containers": [{"name": "biz", "image": "example.invalid/biz:1.0"}]}}},
    }
    await apps.create_namespaced_deployment(namespace, deployment)

    async def replicaset() -> Any:
        items = (await apps.list_namespaced_replica_set(namespace)).items
        return next((rs for rs in items if any(o.kind == "Deployment" and o.name == "smoke"
                                               for o in rs.metadata.owner_references or [])), None)

    rs = await wait_for(replicaset, timeout=60, what="the deployment controller creating a ReplicaSet")

    async def pods() -> list[Any]:
        items = (await core.list_namespaced_pod(namespace, label_selector="app=smoke")).items
        owned = [p for p in items if any(o.uid == rs.metadata.uid for o in p.metadata.owner_references or [])]
        return owned if len(owned) == 2 else []

    assert len(await wait_for(pods, timeout=60, what="the replicaset controller creating 2 pods")) == 2
    await apps.delete_namespaced_deployment("smoke", namespace, propagation_policy="Foreground")


async def test_vkprovider_identity_is_restricted_by_rbac(kube_cluster: Any) -> None:
    api = await config.new_client_from_config(config_file=str(kube_cluster.provider_kubeconfig))
    try:
        ssr: Any = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        review = await client.AuthenticationV1Api(api).create_self_subject_review(ssr)
        assert review.status.user_info.username == "vkprovider"
        core = client.CoreV1Api(api)
        nodes = await core.list_node(limit=1)
        assert nodes.items is not None
        await core.list_pod_for_all_namespaces(limit=1)
        with pytest.raises(ApiException) as info:
            await core.list_secret_for_all_namespaces()
        assert info.value.status == 403
        ns: Any = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"t-{uuid.uuid4().hex[:8]}"}}
        with pytest.raises(ApiException) as info:
            await core.create_namespace(ns)
        assert info.value.status == 403
    finally:
        await api.close()
