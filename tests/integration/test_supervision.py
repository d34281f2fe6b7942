"""A vkprovider whose root task dies stops with exit code 1 and says so on /healthz (issue 28): a process that
limps on with a dead informer or queue stops converging while it looks healthy."""

from __future__ import annotations

import asyncio

import aiohttp

from vkprovider.app import Provider
from vkprovider.config import load_settings


async def test_a_dead_root_task_stops_vkprovider_with_exit_1_and_healthz_503(kube_cluster, env_name) -> None:
    settings = load_settings({
        "KUBECONFIG": str(kube_cluster.provider_kubeconfig), "ENV": env_name, "CLIENT_ID": f"vkp-{env_name}",
        "HTTP_TUNNEL_LISTEN_PORT": "0", "VKP_HTTP_TUNNEL_HOST": "127.0.0.1", "VKP_METRICS_PORT": "0",
        "VKP_METRICS_HOST": "127.0.0.1", "VKP_PROBE_PORT": "0", "VKP_PROBE_HOST": "127.0.0.1",
        "KUBELET_PROXY_ENABLED": "false", "VKP_ALLOW_UNAUTHENTICATED_BASES": "true"})
    provider = Provider(settings)
    try:
        await provider.start()
        probes = f"http://127.0.0.1:{provider._served[0].port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{probes}/healthz") as resp:
                assert resp.status == 200
            roots = set(provider.supervisor.tasks)
            assert {"informer-nodes", "lease-keeper", "module-controller", "node-controller",
                    "release-controller", "event-recorder", "tunnel-http"} <= roots, roots
            provider.supervisor.tasks["module-controller"].cancel()  # the module controller's queues die
            code = await asyncio.wait_for(provider.wait(asyncio.Event()), 10)
            assert code == 1
            async with http.get(f"{probes}/healthz") as resp:
                assert resp.status == 503
                assert "module-controller" in await resp.text()
            async with http.get(f"{probes}/readyz") as resp:
                assert resp.status == 503
    finally:
        await provider.stop()
