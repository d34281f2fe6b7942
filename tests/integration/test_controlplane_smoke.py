"""Smoke tests of the local control plane itself: everything vkprovider's tests rely on must really happen.

No kubelet exists, so these tests play the kubelet's part for a node they create (they set its status and its
pods'), and then check that the genuine kube-scheduler, kube-controller-manager and RBAC authorizer act on it as
they would in a real cluster. If one of these fails, every other integration test result is meaningless.

The controller-manager runs every default controller (localcluster.py CONTROLLERS): the ones a user meets beside
vkprovider are checked here - a PodDisruptionBudget gets its status and evictions honour it (`kubectl drain`), a
Service gets EndpointSlices for its Ready pods, the TTL controller annotates Nodes, a ResourceQuota counts what it
limits, and an approved CertificateSigningRequest is signed by the cluster's CA.
"""

from __future__ import annotations

import base64
import datetime as dt
import ssl
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
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


async def _running_pods(core: Any, namespace: str, node: str, labels: dict[str, str], count: int) -> list[str]:
    """``count`` pods bound to ``node`` and marked Running and Ready with a pod IP, as a kubelet would."""
    names = []
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for i in range(count):
        name = f"{next(iter(labels.values()))}-{i}"
        pod = _pod(name, node, tolerate=True)
        pod["metadata"]["labels"] = labels
        pod["spec"]["nodeName"] = node
        del pod["spec"]["affinity"]
        pod["spec"]["containers"][0]["ports"] = [{"containerPort": 8080, "name": "http"}]
        await core.create_namespaced_pod(namespace, pod)
        ip = f"10.244.0.{10 + i}"
        await core.patch_namespaced_pod_status(name, namespace, {"status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "127.0.0.1",
            "conditions": [{"type": t, "status": "True", "lastTransitionTime": now}
                           for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]}})
        names.append(name)
    return names


async def _force_delete(core: Any, namespace: str, names: list[str]) -> None:
    for name in names:  # no kubelet confirms a graceful delete
        try:
            await core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
        except ApiException as err:
            if err.status != 404:
                raise


async def test_pdb_gets_a_status_and_evictions_honour_it(kube_api: Any, namespace: str, vnode: str) -> None:
    """What `kubectl drain` needs: the disruption controller computes the budget, the eviction API spends it."""
    core = client.CoreV1Api(kube_api)
    policy = client.PolicyV1Api(kube_api)
    pods = await _running_pods(core, namespace, vnode, {"app": "pdb"}, 2)
    try:
        await policy.create_namespaced_pod_disruption_budget(namespace, {
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "pdb"},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "pdb"}}}})

        async def counted() -> Any:
            pdb = await policy.read_namespaced_pod_disruption_budget("pdb", namespace)
            st = pdb.status
            return st if st and st.observed_generation == pdb.metadata.generation and st.expected_pods == 2 \
                and st.current_healthy == 2 else None

        status = await wait_for(counted, timeout=60, what="the disruption controller counting the PDB's pods")
        assert (status.desired_healthy, status.disruptions_allowed) == (1, 1)
        evict = {"apiVersion": "policy/v1", "kind": "Eviction"}
        await core.create_namespaced_pod_eviction(pods[0], namespace, {**evict, "metadata": {"name": pods[0]}})
        with pytest.raises(ApiException) as info:  # the budget is spent: the second pod must stay
            await core.create_namespaced_pod_eviction(pods[1], namespace, {**evict, "metadata": {"name": pods[1]}})
        assert info.value.status == 429 and "disruption budget" in str(info.value.body)
    finally:
        await _force_delete(core, namespace, pods)


async def test_service_gets_endpointslices_for_its_ready_pods(kube_api: Any, namespace: str, vnode: str) -> None:
    core = client.CoreV1Api(kube_api)
    discovery = client.DiscoveryV1Api(kube_api)
    pods = await _running_pods(core, namespace, vnode, {"app": "web"}, 2)
    try:
        await core.create_namespaced_service(namespace, {
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}})

        async def ready_endpoints() -> dict[str, Any]:
            slices = await discovery.list_namespaced_endpoint_slice(
                namespace, label_selector="kubernetes.io/service-name=web")
            found = {e.target_ref.name: e for s in slices.items for e in s.endpoints or []
                     if e.conditions and e.conditions.ready}
            return found if found.keys() == set(pods) else {}

        endpoints = await wait_for(ready_endpoints, timeout=60, what="EndpointSlices of the Service's Ready pods")
        assert {e.addresses[0] for e in endpoints.values()} == {"10.244.0.10", "10.244.0.11"}
        assert {e.node_name for e in endpoints.values()} == {vnode}
        slices = await discovery.list_namespaced_endpoint_slice(
            namespace, label_selector="kubernetes.io/service-name=web")
        assert {p.port for s in slices.items for p in s.ports or []} == {8080}
    finally:
        await _force_delete(core, namespace, pods)


async def test_ttl_controller_annotates_nodes(kube_api: Any, vnode: str) -> None:
    """The TTL controller owns node.alpha.kubernetes.io/ttl (0 up to 100 nodes, more as the cluster grows)."""
    core = client.CoreV1Api(kube_api)

    async def annotated() -> str | None:
        node = await core.read_node(vnode)
        return (node.metadata.annotations or {}).get("node.alpha.kubernetes.io/ttl")

    assert await wait_for(annotated, timeout=60, what="the TTL controller annotating the node") == "0"


async def test_resourcequota_gets_its_usage(kube_api: Any, namespace: str) -> None:
    core = client.CoreV1Api(kube_api)
    await core.create_namespaced_config_map(namespace, {"metadata": {"name": "counted"}, "data": {"k": "v"}})
    await core.create_namespaced_resource_quota(namespace, {
        "apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "quota"},
        "spec": {"hard": {"configmaps": "10", "pods": "5"}}})

    # the namespace's own kube-root-ca.crt ConfigMap (root-ca-certificate-publisher) and ours
    expected = {"configmaps": "2", "pods": "0"}

    async def used() -> dict[str, str] | None:
        quota = await core.read_namespaced_resource_quota("quota", namespace)
        st = quota.status
        usage = dict(st.used) if st and st.hard and st.used else None
        return usage if usage == expected else None

    await wait_for(used, timeout=60, what=f"the resourcequota controller counting {expected}")


async def test_approved_csr_is_signed_by_the_cluster_ca(kube_api: Any, kube_cluster: Any) -> None:
    certs = client.CertificatesV1Api(kube_api)
    key = ec.generate_private_key(ec.SECP256R1())
    request = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "smoke-user")]))
               .sign(key, hashes.SHA256()))
    name = f"vkp-smoke-{uuid.uuid4().hex[:8]}"
    pem = request.public_bytes(serialization.Encoding.PEM)
    await certs.create_certificate_signing_request({
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest", "metadata": {"name": name},
        "spec": {"request": base64.b64encode(pem).decode(), "signerName": "kubernetes.io/kube-apiserver-client",
                 "usages": ["client auth"], "expirationSeconds": 600}})
    try:
        csr = await certs.read_certificate_signing_request(name)
        csr.status.conditions = [{"type": "Approved", "status": "True", "reason": "SmokeTest",
                                  "message": "approved by the smoke test"}]
        await certs.replace_certificate_signing_request_approval(name, csr)

        async def issued() -> bytes | None:
            got = await certs.read_certificate_signing_request(name)
            return base64.b64decode(got.status.certificate) if got.status.certificate else None

        cert = x509.load_pem_x509_certificate(
            await wait_for(issued, timeout=60, what="the CSR signer issuing the certificate"))
        ca = x509.load_pem_x509_certificate((kube_cluster.state_dir / "pki" / "ca.crt").read_bytes()) \
            if kube_cluster.state_dir is not None else None
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "smoke-user"
        if ca is not None:
            assert cert.issuer == ca.subject
            cert.verify_directly_issued_by(ca)
    finally:
        await certs.delete_certificate_signing_request(name)
