"""Operability at size (issue 15): the metrics' series count stays flat from 10 to 1,000 bases.

Prometheus scrapes every replica; a label whose values grow with the cluster (a pod, base or biz name) would make
each scrape and the TSDB grow with it. tests/unit/test_metrics.py forbids such labels by name; this test measures
the result on the real thing: one vkprovider, 10 simulated bases with a module each, then 1,000, and the number
of exported series before and after.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from tests import promtext
from tests.helpers import figure
from tests.integration.harness import SEED_TOLERATION, ProviderProcess, SimProcess, is_ready, wait_until
from vkprovider.kube.client import Kube


def series(text: str) -> set[str]:
    """The series of an exposition: each sample line's name and labels (values of the samples left out)."""
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line and not line.startswith("#")}


async def test_series_count_is_flat_from_10_to_1000_bases(kube_cluster: Any, admin: Kube) -> None:
    env = "o" + uuid.uuid4().hex[:7]
    namespace = f"ops-{env}"
    await admin.create("/api/v1/namespaces", {"metadata": {"name": namespace}})
    provider = ProviderProcess(str(kube_cluster.provider_kubeconfig), env, CLIENT_ID="ops",
                               VKP_BASE_UNREACHABLE_AFTER="60", VKP_BASE_DEAD_AFTER="600",
                               VKP_BASE_QUERY_INTERVAL="60")
    await provider.start(timeout_s=60)
    sim = SimProcess(provider.endpoint, "--bases", "10", "--identity-prefix", env, "--heartbeat-interval", "10",
                     "--heartbeat-spread", "5", name=f"sim-{env}")
    await sim.start()
    try:
        ds = {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "everywhere"},
              "spec": {"selector": {"matchLabels": {"app": "everywhere"}},
                       "template": {"metadata": {"labels": {"app": "everywhere",
                                                            "module-controller.koupleless.io/component": "module"}},
                                    "spec": {"containers": [{"name": "biz1",
                                                             "image": "https://repo.example.com/biz1-1.0.0.jar",
                                                             "env": [{"name": "BIZ_VERSION", "value": "1.0.0"}]}],
                                             "tolerations": [SEED_TOLERATION],
                                             "nodeSelector": {"virtual-kubelet.koupleless.io/env": env}}}}}
        await admin.create(f"/apis/apps/v1/namespaces/{namespace}/daemonsets", ds)

        async def running(count: int) -> bool:
            got = await admin.get(f"/api/v1/namespaces/{namespace}/pods", params={"labelSelector": "app=everywhere"})
            return sum(1 for p in got["items"] if is_ready(p)) == count

        await wait_until(lambda: running(10), 60, what="10 module pods Ready")
        small = series(await provider.metrics())
        started = time.monotonic()
        await sim.call("POST", "/bases?count=990")
        await wait_until(lambda: running(1000), 300, interval_s=2.0, what="1,000 module pods Ready")
        took = time.monotonic() - started
        large = series(await provider.metrics())
        grown = sorted(large - small)
        figure(f"metrics series: {len(small)} at 10 bases, {len(large)} at 1,000 bases "
              f"(+{len(grown)}); 990 bases and their modules Ready in {took:.0f}s")
        # New label values may appear once (a result or reason first seen), never one per base or pod.
        assert len(large) <= len(small) + 40, grown[:60]
        per_object = [s for s in grown if env in s]
        assert per_object == [], per_object[:10]
        text = await provider.metrics()
        vnodes = promtext.total(text, "vkprovider_vnodes")
        assert vnodes == 1000, vnodes  # the second scrape did see 1,000 bases
    finally:
        sim.kill()
        provider.kill()
        await admin.delete(f"/api/v1/namespaces/{namespace}")
        nodes = await admin.get("/api/v1/nodes", params={"labelSelector": f"virtual-kubelet.koupleless.io/env={env}"})
        for node in nodes["items"]:
            await admin.delete(f"/api/v1/nodes/{node['metadata']['name']}")
