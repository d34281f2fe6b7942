"""Taking over from the Go ModuleController (issue 10): its Nodes, Leases and module pods adopted as they are.

The objects are written exactly as the Go controller (module-controller v2.2.0 / virtual-kubelet v0.3.10) writes
them (docs/protocol.md, "What the Go controller leaves in a cluster"): its Lease labels (component=vnode-lease),
holderIdentity = its random CLIENT_ID, leaseDurationSeconds 40, no acquireTime; its Node labels, both taints
(incl. node-env), the tunnel-port label, InternalIP = the base's localIP, conditions without reasons; module pods
with the status it writes (no hostIP, no startTime, no PodScheduled condition it set), their bizs running on the
bases. Then vkprovider starts, as after the migration procedure's "stop the Go controller" step. Measured: Ready
flips (0), installs (0), pods leaving Ready (0), time until every Lease is renewed by vkprovider.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from tests.helpers import figure
from tests.integration.harness import ProviderProcess, condition, free_port, installs, is_ready, uninstalls, wait_until
from vkprovider.kube.client import Kube

GO_CLIENT_ID = "5d0f3b1e-8a6c-4a34-9a55-2b1f0c7e9d11"  # the Go controller's random UUID of its last start


def micro(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def go_node(name: str, env: str, base: dict[str, Any]) -> dict[str, Any]:
    """A vnode as the Go controller creates it (research: VK provider/vnode.go buildNode)."""
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "type": "virtual-kubelet", "kubernetes.io/role": "agent",
            "kubernetes.io/hostname": base["identity"],
            "base.koupleless.io/name": base["name"], "base.koupleless.io/cluster-name": base["clusterName"],
            "base.koupleless.io/version": base["version"], "base.koupleless.io/host-name": base["identity"],
            "base.koupleless.io/tunnel-port": str(base["port"]),
            "virtual-kubelet.koupleless.io/component": "vnode", "virtual-kubelet.koupleless.io/env": env}},
        "spec": {"taints": [
            {"key": "schedule.koupleless.io/virtual-node", "value": "True", "effect": "NoExecute"},
            {"key": "schedule.koupleless.io/node-env", "value": env, "effect": "NoExecute"}]},
        "status": {
            "phase": "Running",
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                          {"type": "Hostname", "address": base["identity"]}],
            "conditions": [{"type": t, "status": s} for t, s in (
                ("Ready", "True"), ("MemoryPressure", "False"), ("DiskPressure", "False"), ("PIDPressure", "False"),
                ("NetworkUnavailable", "False"))],
            "capacity": {"pods": "65535"}, "allocatable": {"pods": "65535"},
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {k: "" for k in ("machineID", "systemUUID", "bootID", "kernelVersion", "osImage",
                                         "containerRuntimeVersion", "kubeletVersion", "kubeProxyVersion",
                                         "operatingSystem", "architecture")},
        },
    }


def go_lease(name: str, env: str) -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": "kube-node-lease", "labels": {
            "virtual-kubelet.koupleless.io/env": env, "virtual-kubelet.koupleless.io/component": "vnode-lease"}},
        "spec": {"holderIdentity": GO_CLIENT_ID, "leaseDurationSeconds": 40, "renewTime": micro(datetime.now(UTC))},
    }


def go_module_pod(name: str, node: str, env: str, biz: str, url: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"virtual-kubelet.koupleless.io/component": "module", "app": "go"}},
        "spec": {"nodeName": node,
                 "containers": [{"name": biz, "image": url, "env": [{"name": "BIZ_VERSION", "value": "1.0.0"}]}],
                 "tolerations": [
                     {"key": "schedule.koupleless.io/virtual-node", "operator": "Equal", "value": "True",
                      "effect": "NoExecute"},
                     {"key": "schedule.koupleless.io/node-env", "operator": "Equal", "value": env,
                      "effect": "NoExecute"}]},
    }


def go_pod_status(biz: str, url: str, started: str) -> dict[str, Any]:
    """What the Go controller's merge patch leaves (research §3): Ready/ContainersReady only, podIP, no hostIP."""
    return {"phase": "Running",
            "conditions": [{"type": "Ready", "status": "True", "lastProbeTime": started},
                           {"type": "ContainersReady", "status": "True", "lastProbeTime": started}],
            "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
            "containerStatuses": [{"name": biz, "containerID": biz, "image": url, "imageID": url, "ready": True,
                                   "started": True, "restartCount": 0, "state": {"running": {"startedAt": started}}}]}


async def test_vkprovider_adopts_what_the_go_controller_left(admin: Kube, env_name: str, namespace: str,
                                                             kube_cluster: Any, sim_factory: Any) -> None:
    port = free_port()
    sim = await sim_factory(f"http://127.0.0.1:{port}", "--bases", "3", "--heartbeat-interval", "2",
                            "--identity-prefix", env_name)
    bases = await sim.bases()
    started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    nodes = {}
    for base in bases:
        name = f"vnode.{base['identity']}.{env_name}"
        nodes[name] = base
        await admin.create("/api/v1/nodes", go_node(name, env_name, base))
        await admin.create("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", go_lease(name, env_name))
    pods = []
    for i, (node, base) in enumerate(nodes.items()):
        for j in range(2):
            biz, url = f"biz{j}", f"https://repo.example.com/biz{j}-1.0.0-ark-biz.jar"
            await sim.install_direct(base["identity"], biz, "1.0.0", url)  # what the Go controller installed
            name = f"go-{i}-{j}"
            await admin.create(f"/api/v1/namespaces/{namespace}/pods", go_module_pod(name, node, env_name, biz, url))
            await admin.patch(f"/api/v1/namespaces/{namespace}/pods/{name}/status",
                              {"status": go_pod_status(biz, url, started)}, kind="merge")
            pods.append(name)
    before_installs, before_uninstalls = await installs(sim), await uninstalls(sim)
    assert sum(before_installs.values()) == 0

    flips: list[tuple[str, str, str]] = []
    pods_unready: list[tuple[str, str]] = []
    stop = asyncio.Event()

    async def watch_readiness() -> None:  # sample every 0.25 s for the whole takeover
        while not stop.is_set():
            got = await admin.get("/api/v1/nodes",
                                  params={"labelSelector": f"virtual-kubelet.koupleless.io/env={env_name}"})
            for node in got["items"]:
                status = condition(node, "Ready").get("status")
                if status != "True":
                    flips.append((node["metadata"]["name"], str(status), time.strftime("%X")))
            for p in (await admin.get(f"/api/v1/namespaces/{namespace}/pods"))["items"]:
                if not is_ready(p):
                    pods_unready.append((p["metadata"]["name"], str(p["status"].get("phase"))))
            await asyncio.sleep(0.25)

    watcher = asyncio.create_task(watch_readiness())
    provider = ProviderProcess(str(kube_cluster.provider_kubeconfig), env_name, HTTP_TUNNEL_LISTEN_PORT=str(port))
    provider.http_port = port
    start = time.monotonic()
    try:
        await provider.start()

        async def all_renewed() -> dict[str, Any] | None:
            got = await admin.get("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                                  params={"labelSelector": f"virtual-kubelet.koupleless.io/env={env_name}"})
            leases = {lease["metadata"]["name"]: lease for lease in got["items"]}
            ok = leases.keys() == nodes.keys() and all(
                lease["spec"]["holderIdentity"] == f"vkprovider-{env_name}" for lease in leases.values())
            return leases if ok else None

        leases = await wait_until(all_renewed, 10, interval_s=0.2, what="every Go lease renewed by vkprovider")
        renew_s = time.monotonic() - start
        figure(f"go_takeover_leases_renewed_s = {renew_s:.1f}")
        for lease in leases.values():
            labels = lease["metadata"]["labels"]
            # The Go controller's labels stay (a rollback finds its Leases); vkprovider adds who manages it.
            assert labels["virtual-kubelet.koupleless.io/component"] == "vnode-lease"
            assert labels["app.kubernetes.io/managed-by"] == "vkprovider"
            assert lease["spec"]["leaseTransitions"] == 1
        # A window longer than the node-monitor grace period (20 s) and the lease duration: nothing flips.
        await asyncio.sleep(25)
        after_nodes = await admin.get("/api/v1/nodes",
                                      params={"labelSelector": f"virtual-kubelet.koupleless.io/env={env_name}"})
        for node in after_nodes["items"]:
            taints = {t["key"] for t in node["spec"].get("taints", [])}
            assert "schedule.koupleless.io/node-env" not in taints  # VKP_ENV_TAINT is off by default
            assert node["metadata"]["annotations"]["base.koupleless.io/address"].startswith("127.0.0.1:")
            assert condition(node, "Ready").get("reason") == "BaseReady"
            # the Go controller set no providerID: vkprovider sets its own once, and the load-balancer exclusion
            identity = node["metadata"]["name"].removeprefix("vnode.").removesuffix(f".{env_name}")
            assert node["spec"]["providerID"] == f"koupleless://{env_name}/{identity}"
            assert node["metadata"]["labels"]["node.kubernetes.io/exclude-from-external-load-balancers"] == "true"
        for p in (await admin.get(f"/api/v1/namespaces/{namespace}/pods"))["items"]:
            assert is_ready(p) and p["status"]["hostIP"] == "127.0.0.1" and p["status"].get("startTime")
    finally:
        stop.set()
        await watcher
        provider.kill()
        for name in nodes:
            await admin.delete(f"/api/v1/nodes/{name}")
    figure(f"go_takeover_ready_flips = {len(flips)}; installs = "
          f"{sum((await installs(sim)).values())}; pods leaving Ready = {len(pods_unready)}")
    assert flips == [], flips[:10]
    assert pods_unready == [], pods_unready[:10]
    assert await installs(sim) == before_installs and await uninstalls(sim) == before_uninstalls
