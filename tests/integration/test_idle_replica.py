"""What a replica keeps before it serves any base (issue 31, the per-replica floor): no vnode Lease of another ENV.

Every replica watches the vnode Leases of the cluster (the watch's label selector names no ENV), and the replicas
of another ENV renew theirs all the time. A replica of an empty ENV kept all of them in its cache (``app.lease_of_env``
says which it keeps now).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from tests.integration.harness import ProviderProcess, wait_until
from tests.promtext import total
from vkprovider.core.node import LEASE_NAMESPACE, new_lease
from vkprovider.kube.client import ApiError, Kube

LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases"


async def test_a_replica_keeps_no_vnode_lease_of_another_env(
        admin: Kube, env_name: str, provider_factory: Callable[..., Awaitable[ProviderProcess]]) -> None:
    other = f"{env_name}o"
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    names = [f"vnode.other-{i}.{other}" for i in range(4)]
    try:
        for name in names[:3]:
            await admin.create(LEASES, new_lease(name, "a-replica-of-another-env", 40, now, other), field_manager=None)
        proc = await provider_factory()  # ready: its informers listed what there is

        async def leases_seen() -> float:
            return total(await proc.metrics(), "vkprovider_informer_events_total", resource="leases-vnode-unlabelled")

        text = await proc.metrics()
        assert total(text, "vkprovider_informer_objects", resource="leases-vnode-unlabelled") == 0
        # The watch too: a Lease of another ENV created now is seen, and not kept.
        before = await leases_seen()
        await admin.create(LEASES, new_lease(names[3], "a-replica-of-another-env", 40, now, other), field_manager=None)
        await wait_until(lambda: _more(leases_seen, before), 30, what="the new Lease's watch event")
        text = await proc.metrics()
        assert total(text, "vkprovider_informer_objects", resource="leases-vnode-unlabelled") == 0
    finally:
        for name in names:
            with contextlib.suppress(ApiError):
                await admin.delete(f"{LEASES}/{name}")


async def _more(seen: Callable[[], Awaitable[float]], than: float) -> bool:
    return await seen() > than
