"""Lease renewals survive connections that stop answering (issue 27, item 5).

vkprovider reaches the apiserver through a TCP proxy (tests/integration/tcpproxy.py) that blackholes every
connection established through it - the pooled ones the Lease writes reuse, and the watches - for longer than
the renew deadline, then cuts them, while new connections pass: a middlebox that lost its flows. Before, a Lease
PATCH on such a connection waited the generic 30 s and was not sent again, and the membership renewal, awaited
inside the keeper's tick, held up every other vnode's renewal and fencing decision behind it: the vnodes were
fenced and lost. Now each Lease write has a budget below the renew deadline and is sent again on a fresh
connection, and the membership renewal runs in the background: no vnode is lost, the vnodes stay Ready and
nothing is installed again.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from tests.helpers import figure
from tests.integration.harness import (
    SEED_TOLERATION,
    ProviderProcess,
    condition,
    installs,
    is_ready,
    uninstalls,
    wait_ready_vnodes,
    wait_until,
)
from tests.tcpproxy import TcpProxy, kubeconfig_through, upstream_of
from vkprovider.kube.client import Kube

BASES = 30
RENEW_S = 3.0
TIMING = {"VKP_LEASE_DURATION": "10", "VKP_LEASE_RENEW_INTERVAL": str(RENEW_S), "VKP_LEASE_RENEW_DEADLINE": "7.5"}
BLACKHOLE_S = 12.0  # longer than the renew deadline (7.5 s) and the lease (10 s)


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text ``text`` (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        match = re.fullmatch(rf"{re.escape(name)}\{{(.*)\}} (\S+)", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            return float(match.group(2))
        if not want and line.startswith(f"{name} "):
            return float(line.split()[1])
    return 0.0


async def test_a_blackhole_of_the_api_connections_fences_no_vnode(admin: Kube, env_name: str, namespace: str,
                                                                 kube_cluster: Any, sim_factory: Any,
                                                                 tmp_path: Path) -> None:
    proxy = TcpProxy(*upstream_of(Path(kube_cluster.provider_kubeconfig)))
    await proxy.start()
    provider = ProviderProcess(str(kubeconfig_through(Path(kube_cluster.provider_kubeconfig), proxy,
                                                      tmp_path / "through-proxy.kubeconfig")), env_name, **TIMING)
    try:
        await provider.start()
        sim = await sim_factory(provider.endpoint, "--bases", str(BASES), "--heartbeat-interval", "2",
                                "--identity-prefix", env_name)
        await wait_ready_vnodes(admin, env_name, BASES, timeout_s=60)
        ds = {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "everywhere"},
              "spec": {"selector": {"matchLabels": {"app": "everywhere"}},
                       "template": {"metadata": {"labels": {"app": "everywhere",
                                                            "module-controller.koupleless.io/component": "module"}},
                                    "spec": {"containers": [{"name": "biz1",
                                                             "image": "https://repo.example.com/biz1-1-ark-biz.jar",
                                                             "env": [{"name": "BIZ_VERSION", "value": "1"}]}],
                                             "nodeSelector": {"virtual-kubelet.koupleless.io/env": env_name},
                                             "tolerations": [SEED_TOLERATION]}}}}
        await admin.create(f"/apis/apps/v1/namespaces/{namespace}/daemonsets", ds)

        async def all_running() -> bool:
            pods = (await admin.get(f"/api/v1/namespaces/{namespace}/pods"))["items"]
            return len(pods) == BASES and all(is_ready(p) for p in pods)

        await wait_until(all_running, 90, interval_s=1.0, what=f"a module Running on each of {BASES} bases")
        before = (await installs(sim), await uninstalls(sim))
        metrics = await provider.metrics()
        lost_before = _metric(metrics, "vkprovider_lease_transitions_total", event="lost")
        timeouts_before = _metric(metrics, "rest_client_requests_total", code="<error>", method="PATCH")

        not_ready: list[str] = []
        sampling = True

        async def sample() -> None:  # the vnodes (read past the proxy) never leave Ready
            while sampling:
                got = await admin.get("/api/v1/nodes",
                                      params={"labelSelector": f"virtual-kubelet.koupleless.io/env={env_name}"})
                not_ready.extend(n["metadata"]["name"] for n in got["items"]
                                 if condition(n, "Ready").get("status") != "True")
                await asyncio.sleep(0.5)

        sampler = asyncio.create_task(sample())
        await proxy.lose_open(BLACKHOLE_S)
        healed = asyncio.get_running_loop().time()

        # One renew interval after it heals (and a little more: a renewal due then has landed), nothing was lost.
        async def settled() -> bool:
            return asyncio.get_running_loop().time() >= healed + 2 * RENEW_S

        await wait_until(settled, 10, interval_s=0.2, what="two renew intervals after the blackhole")
        sampling = False
        await sampler
        metrics = await provider.metrics()
        lost = _metric(metrics, "vkprovider_lease_transitions_total", event="lost") - lost_before
        timed_out = _metric(metrics, "rest_client_requests_total", code="<error>", method="PATCH") - timeouts_before
        figure(f"blackhole_{BLACKHOLE_S:g}s: {proxy.blackholed} connections frozen then cut, {timed_out:g} PATCH "
               f"attempts unanswered, vnodes lost {lost:g}, not-Ready samples {len(not_ready)}")
        assert timed_out > 0, "no write met a blackholed connection: the test proves nothing"
        assert lost == 0
        assert not_ready == [], not_ready[:5]
        assert (await installs(sim), await uninstalls(sim)) == before
        assert await all_running()
    finally:
        provider.kill()
        await proxy.stop()
        nodes = await admin.get("/api/v1/nodes",
                                params={"labelSelector": f"virtual-kubelet.koupleless.io/env={env_name}"})
        for node in nodes["items"]:
            await admin.delete(f"/api/v1/nodes/{node['metadata']['name']}")
