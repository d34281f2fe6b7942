"""kubectl logs / exec on module pods through vkprovider's kubelet API, on the real apiserver (issue 15).

The apiserver reaches the vnode's kubelet at the node's InternalIP (the replica's VKP_KUBELET_ADDRESS, 127.0.0.1
here) and daemonEndpoints port with its kubelet client certificate; vkprovider checks it against the cluster's
client CA and authorizes with a SubjectAccessReview. Direct calls check the other paths: no credential (401),
a ServiceAccount token without nodes/proxy (403), then with it (200).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
import time
from typing import Any

import aiohttp

from tests.helpers import figure
from tests.integration.harness import is_ready, module_pod, wait_ready_vnodes, wait_until
from vkprovider.kube.client import Kube


async def _ready(admin: Kube, namespace: str, name: str) -> bool:
    return is_ready(await admin.get(f"/api/v1/namespaces/{namespace}/pods/{name}"))


def kubectl(cluster: Any, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl(*args, check=False, timeout=timeout)


async def test_kubectl_logs_and_exec_on_a_module_pod(admin, env_name, namespace, provider_factory, sim_factory,
                                                     kube_cluster):
    provider = await provider_factory()
    await sim_factory(provider.endpoint, "--bases", "1", "--heartbeat-interval", "2", "--identity-prefix", env_name)
    await wait_ready_vnodes(admin, env_name, 1)
    await admin.create(f"/api/v1/namespaces/{namespace}/pods", module_pod("m", env_name))
    await wait_until(lambda: _ready(admin, namespace, "m"), 30, what="the module Running")

    logs = kubectl(kube_cluster, "logs", "-n", namespace, "m")
    assert logs.returncode == 0, logs.stderr
    lines = logs.stdout.strip().splitlines()
    figure("kubectl_logs", "\n" + logs.stdout.strip())
    assert any("installing from https://repo.example.com/biz1-0.0.1-ark-biz.jar" in line for line in lines), lines
    assert any("installed in" in line for line in lines), lines
    assert any("state ACTIVATED" in line for line in lines), lines
    assert all(line[:4].isdigit() and "T" in line[:11] for line in lines)  # each line has its time

    tail = kubectl(kube_cluster, "logs", "-n", namespace, "m", "--tail=1")
    assert tail.returncode == 0 and len(tail.stdout.strip().splitlines()) == 1
    stamped = kubectl(kube_cluster, "logs", "-n", namespace, "m", "--timestamps")
    assert stamped.stdout.split(" ", 1)[0].endswith("Z") and len(stamped.stdout.split(" ", 1)[0]) == 30
    since = kubectl(kube_cluster, "logs", "-n", namespace, "m", "--since=1h")
    assert since.stdout == logs.stdout
    await asyncio.sleep(1.5)
    recent = kubectl(kube_cluster, "logs", "-n", namespace, "m", "--since=1s")
    assert recent.returncode == 0 and recent.stdout == ""
    limited = kubectl(kube_cluster, "logs", "-n", namespace, "m", "--limit-bytes=10")
    assert len(limited.stdout) == 10

    # -f: a new lifecycle line (a reinstall from another jar URL) arrives on the open stream.
    follow = subprocess.Popen([*kube_cluster.kubectl_cmd, "--kubeconfig", str(kube_cluster.admin_kubeconfig),
                               "logs", "-f", "-n", namespace, "m"], stdout=subprocess.PIPE, text=True)
    try:
        await asyncio.sleep(1.0)
        new_url = "https://repo.example.com/biz1-0.0.1-rebuilt-ark-biz.jar"
        started = time.monotonic()
        await admin.patch(f"/api/v1/namespaces/{namespace}/pods/m",
                          {"spec": {"containers": [{"name": "biz1", "image": new_url}]}})
        loop = asyncio.get_running_loop()
        assert follow.stdout is not None
        seen: list[str] = []
        while time.monotonic() - started < 20:
            line = await asyncio.wait_for(loop.run_in_executor(None, follow.stdout.readline), 20)
            seen.append(line)
            if f"reinstalling from {new_url}" in line:
                break
        figure("kubectl_logs_follow_new_line_s", round(time.monotonic() - started, 2))
        assert any(f"reinstalling from {new_url}" in line for line in seen), seen
    finally:
        follow.kill()
        follow.wait()

    exec_ = kubectl(kube_cluster, "exec", "-n", namespace, "m", "--", "ls")
    figure("kubectl_exec", exec_.stderr.strip())
    assert exec_.returncode != 0 and "not supported for Koupleless modules" in exec_.stderr

    # Direct calls: no credential -> 401; a ServiceAccount token without nodes/proxy -> 403; with it -> 200.
    url = f"https://127.0.0.1:{provider.kubelet_port}/containerLogs/{namespace}/m/biz1"
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    async with aiohttp.ClientSession() as http:
        async with http.get(url, ssl=insecure) as resp:
            assert resp.status == 401
        await admin.create(f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": "reader"}})
        token = (await admin.create(f"/api/v1/namespaces/{namespace}/serviceaccounts/reader/token",
                                    {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                     "spec": {"expirationSeconds": 600}}))["status"]["token"]
        bearer = {"Authorization": f"Bearer {token}"}
        async with http.get(url, ssl=insecure, headers=bearer) as resp:
            assert resp.status == 403, await resp.text()
        role = f"nodes-proxy-{env_name}"
        await admin.create("/apis/rbac.authorization.k8s.io/v1/clusterroles", {
            "metadata": {"name": role},
            "rules": [{"apiGroups": [""], "resources": ["nodes/proxy"], "verbs": ["get"]}]})
        await admin.create("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
            "metadata": {"name": role}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                                    "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}]})
        try:
            async def allowed() -> bool:
                async with http.get(url, ssl=insecure, headers=bearer) as resp:
                    return resp.status == 200 and "installing from" in await resp.text()

            await wait_until(allowed, 15, what="the token allowed once bound to nodes/proxy (after the cache)")
        finally:
            with contextlib.suppress(Exception):
                await admin.delete(f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{role}")
                await admin.delete(f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{role}")
