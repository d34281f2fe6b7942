"""`kubectl top node` with a real metrics-server on the real control plane (issue 30, item 4).

metrics-server (built from the Go module proxy by hack/controlplane/metrics-server.sh, run and registered as the
APIService v1beta1.metrics.k8s.io by `localcluster.py metrics-server`) scrapes every Node at its InternalIP and
daemonEndpoints port (--kubelet-use-node-status-port), at the path its annotation metrics.k8s.io/resource-metrics-
path names: /metrics/resource/<vnode> on the replica that holds the vnode, which verifies its client certificate
and asks the apiserver whether system:metrics-server may get nodes/metrics of that vnode. The simulated bases are
told distinct CPU and heap figures; `kubectl top node` must show exactly those, and follow a change.
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers import figure
from tests.integration.harness import is_ready, module_pod, wait_ready_vnodes, wait_until
from vkprovider.kube.client import Kube

REPO = Path(__file__).resolve().parents[2]
LOCALCLUSTER = REPO / "hack" / "controlplane" / "localcluster.py"
MIB = 1024 * 1024
CPUS = 4  # the simulator's cpu count: 4 cores of capacity per vnode
NON_HEAP_MIB = 90 + 24  # the simulated JVM's used Metaspace + code cache and class space
#: (busy fraction of the base's CPUs, used heap MiB) per base, then base 0's figures after a change
USAGE = [(0.10, 300), (0.40, 500), (0.70, 900)]
CHANGED = (0.50, 200)


@pytest.fixture(scope="module")
def metrics_server(kube_cluster: Any) -> Iterator[Path]:
    """metrics-server on the local control plane for this module; unregistered and stopped afterwards (a group
    nobody serves would fail every later discovery)."""
    if kube_cluster.state_dir is None:
        pytest.fail("kubectl top needs the local control plane: metrics-server runs on this machine and the "
                    "aggregator must reach it (unset VKPROVIDER_TEST_KUBECONFIG)", pytrace=False)
    cluster = str(kube_cluster.state_dir)
    started = subprocess.run([sys.executable, str(LOCALCLUSTER), "metrics-server", "--dir", cluster,
                              "--metric-resolution", "10s"], capture_output=True, text=True, timeout=900, check=False)
    if started.returncode != 0:
        pytest.fail(f"metrics-server did not start (hack/controlplane/metrics-server.sh builds it with go install "
                    f"from the Go module proxy):\n{started.stderr[-4000:]}", pytrace=False)
    try:
        yield kube_cluster.state_dir / "pki"
    finally:
        subprocess.run([sys.executable, str(LOCALCLUSTER), "metrics-server", "--dir", cluster, "--stop"],
                       capture_output=True, timeout=120, check=False)


def top_nodes(cluster: Any, env: str) -> dict[str, tuple[int, int]]:
    """`kubectl top node` of this test's vnodes: name -> (CPU millicores, memory MiB); {} while not available."""
    out = cluster.kubectl("top", "node", "-l", f"virtual-kubelet.koupleless.io/env={env}", check=False)
    if out.returncode != 0:
        return {}
    rows = {}
    for line in out.stdout.strip().splitlines()[1:]:
        name, cpu, _, memory, *_ = line.split()
        if cpu.endswith("m") and memory.endswith("Mi"):
            rows[name] = (int(cpu[:-1]), int(memory[:-2]))
    return rows


def to_bytes(quantity: str) -> int:
    """A binary-suffixed Kubernetes quantity (as metrics-server writes memory) in bytes."""
    number, suffix = re.fullmatch(r"(\d+)(Ki|Mi|Gi)?", quantity).groups()  # type: ignore[union-attr]
    return int(number) * {None: 1, "Ki": 1024, "Mi": MIB, "Gi": 1024 * MIB}[suffix]


def close_to(millicores: int, busy: float) -> bool:
    """The rate between two answers, within 2 %: the window is the time between their arrivals at vkprovider, which
    scheduling on a loaded machine shifts a little (a window across a change of usage is off more, and waited out)."""
    want = busy * CPUS * 1000
    return abs(millicores - want) <= 0.02 * want + 5


async def test_kubectl_top_node_shows_each_bases_own_figures(admin: Kube, env_name: str, namespace: str,
                                                            provider_factory: Any, sim_factory: Any,
                                                            kube_cluster: Any, metrics_server: Path) -> None:
    pki = metrics_server
    provider = await provider_factory(VKP_KUBELET_TLS_CERT=str(pki / "kubelet-serving.crt"),
                                      VKP_KUBELET_TLS_KEY=str(pki / "kubelet-serving.key"),
                                      VKP_BASE_METRICS_MAX_AGE="5")
    sim = await sim_factory(provider.endpoint, "--bases", str(len(USAGE)), "--heartbeat-interval", "2",
                            "--identity-prefix", env_name)
    bases = sorted(b["identity"] for b in await sim.bases())
    for identity, (cpu, heap) in zip(bases, USAGE, strict=True):
        await sim.set_usage(identity, cpu=cpu, heap_mib=heap)
    vnodes = [f"vnode.{identity}.{env_name}" for identity in bases]
    await wait_ready_vnodes(admin, env_name, len(USAGE))
    for name in vnodes:
        node = await admin.get(f"/api/v1/nodes/{name}")
        assert node["metadata"]["annotations"]["metrics.k8s.io/resource-metrics-path"] == f"/metrics/resource/{name}"

    def expected(usage: list[tuple[float, int]]) -> dict[str, tuple[float, int]]:
        return {name: (cpu, heap + NON_HEAP_MIB) for name, (cpu, heap) in zip(vnodes, usage, strict=True)}

    async def shows(usage: list[tuple[float, int]]) -> dict[str, tuple[int, int]] | None:
        rows = top_nodes(kube_cluster, env_name)
        want = expected(usage)
        ok = set(rows) == set(want) and all(close_to(rows[n][0], want[n][0]) and rows[n][1] == want[n][1]
                                            for n in want)
        return rows if ok else None

    await wait_until(lambda: shows(USAGE), 120, 1.0, what=f"kubectl top node showing {expected(USAGE)}")
    out = kube_cluster.kubectl("top", "node", "-l", f"virtual-kubelet.koupleless.io/env={env_name}").stdout
    figure("kubectl_top_node", "\n" + out.strip())
    # The metrics API itself: the working set to the byte (heap + non-heap as the base said them).
    raw = json.loads(kube_cluster.kubectl("get", "--raw", f"/apis/metrics.k8s.io/v1beta1/nodes/{vnodes[2]}").stdout)
    assert to_bytes(raw["usage"]["memory"]) == (900 + NON_HEAP_MIB) * MIB, raw

    # Base 0 changes what it does: top follows within two scrapes of the new figures.
    await sim.set_usage(bases[0], cpu=CHANGED[0], heap_mib=CHANGED[1])
    await wait_until(lambda: shows([CHANGED, *USAGE[1:]]), 90, 1.0, what=f"top following base 0 to {CHANGED}")
    figure("kubectl_top_node_after_change", "\n" + kube_cluster.kubectl(
        "top", "node", "-l", f"virtual-kubelet.koupleless.io/env={env_name}").stdout.strip())

    # Module pods: arklet measures nothing per biz, and nothing is made up: kubectl top pod has no figures.
    await admin.create(f"/api/v1/namespaces/{namespace}/pods", module_pod("m", env_name, node=vnodes[0]))

    async def running() -> bool:
        return is_ready(await admin.get(f"/api/v1/namespaces/{namespace}/pods/m"))

    await wait_until(running, 30, what="the module pod Running")
    top_pod = kube_cluster.kubectl("top", "pod", "-n", namespace, "m", check=False)
    figure("kubectl_top_pod_module", (top_pod.stdout + top_pod.stderr).strip())
    assert top_pod.returncode != 0 and re.search(r"not found|not available", top_pod.stderr), top_pod

    # Direct calls: the vnode the path names is authorized, and only its holder answers.
    tls = ssl.create_default_context(cafile=str(pki / "ca.crt"))  # the kubelet certificate of the cluster CA
    tls.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    base_url = f"https://127.0.0.1:{provider.kubelet_port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base_url}/metrics/resource/{vnodes[0]}", ssl=tls) as resp:
            text = await resp.text()
            assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain"), text
            assert re.search(r"^node_cpu_usage_seconds_total [0-9.e+]+ \d{13}$", text, re.M), text
            assert re.search(rf"^node_memory_working_set_bytes {(CHANGED[1] + NON_HEAP_MIB) * MIB} \d{{13}}$",
                             text, re.M), text
            assert "container_" not in text and "pod_" not in text
        async with http.get(f"{base_url}/stats/summary/{vnodes[1]}", ssl=tls) as resp:
            summary = await resp.json()
            assert summary["node"]["nodeName"] == vnodes[1] and summary["pods"] == []
            assert summary["node"]["memory"]["workingSetBytes"] == (500 + NON_HEAP_MIB) * MIB
            assert close_to(summary["node"]["cpu"]["usageNanoCores"] // 1_000_000, USAGE[1][0])
        async with http.get(f"{base_url}/metrics/resource", ssl=tls) as resp:
            assert resp.status == 404 and "metrics.k8s.io/resource-metrics-path" in await resp.text()
        async with http.get(f"{base_url}/metrics/resource/vnode.elsewhere.{env_name}", ssl=tls) as resp:
            assert resp.status == 404 and "not served by this replica" in await resp.text()
        await admin.create(f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": "nobody"}})
        token = (await admin.create(f"/api/v1/namespaces/{namespace}/serviceaccounts/nobody/token",
                                    {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                     "spec": {"expirationSeconds": 600}}))["status"]["token"]
        bare = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        async with http.get(f"{base_url}/metrics/resource/{vnodes[0]}", ssl=bare,
                            headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 403 and "subresource=metrics" in await resp.text()
        async with http.get(f"{base_url}/stats/summary/{vnodes[0]}", ssl=bare) as resp:
            assert resp.status == 401
