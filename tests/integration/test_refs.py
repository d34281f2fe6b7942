"""vkprovider/kube/refs.py against the real control plane, as the restricted identity "vkprovider" (bound only to
charts/vkprovider/files/rbac-rules.yaml): a ConfigMap that appears later wakes the container waiting for it, a
Secret is read and decoded, a burst of reads is one GET, and what that identity can and cannot read.

The RefStore runs with the User-Agent of a running vkprovider (``Kube.connect(..., instance=...)``), so its
requests count in tests/integration/test_zz_rbac.py like the program's; the probes of what the identity may NOT do
use the plain User-Agent and are left out there.
"""

from __future__ import annotations

import asyncio
import base64
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.helpers import figure, wait_for
from vkprovider.core.containerconfig import (
    CONFIG_MAP,
    SECRET,
    ConfigError,
    Ref,
    RefError,
    Resolved,
    pod_references,
    resolve,
)
from vkprovider.kube.client import ApiError, Kube
from vkprovider.kube.refs import RefStore


@pytest.fixture
async def provider(kube_cluster: Any) -> AsyncIterator[Kube]:
    kube = await Kube.connect(str(kube_cluster.provider_kubeconfig), timeout_s=15, instance="refs-test")
    yield kube
    await kube.close()


def _pod(namespace: str, container: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "biz1-pod", "namespace": namespace, "uid": "u-1"},
            "spec": {"nodeName": "vnode.b.dev", "containers": [container]}}


async def _configmap(admin: Kube, namespace: str, name: str, data: dict[str, str]) -> None:
    await admin.create(f"/api/v1/namespaces/{namespace}/configmaps",
                       {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data})


async def test_a_configmap_that_appears_later_wakes_the_waiting_container(admin: Kube, provider: Kube,
                                                                          namespace: str) -> None:
    woken: list[frozenset[str]] = []
    store = RefStore(provider, ttl_s=30, recheck_s=0.2, on_change=woken.append)
    container = {"name": "biz1", "image": "https://repo/biz1.jar",
                 "env": [{"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "app", "key": "level"}}}],
                 "args": ["--logging.level.root=$(LEVEL)"]}
    pod = _pod(namespace, container)
    store.start()
    try:
        missing = resolve(pod, container, await store.lookups(pod_references(pod)))
        assert missing == ConfigError('configmap "app" not found',
                                      waiting_for=frozenset({Ref(CONFIG_MAP, namespace, "app")}))
        store.wait_for(f"{namespace}/biz1-pod", missing.waiting_for)
        await asyncio.sleep(0.5)
        assert woken == []  # nothing changed, nobody is woken
        await _configmap(admin, namespace, "app", {"other": "x"})
        await wait_for(lambda: woken, 30, what="the waiter woken by the new ConfigMap")
        assert woken == [frozenset({f"{namespace}/biz1-pod"})] and store.waited == frozenset()

        # the key is not there yet: wait again; a patch that adds it wakes it again
        no_key = resolve(pod, container, await store.lookups(pod_references(pod)))
        assert isinstance(no_key, ConfigError)
        assert no_key.message == f"couldn't find key level in ConfigMap {namespace}/app"
        store.wait_for(f"{namespace}/biz1-pod", no_key.waiting_for)
        await admin.patch(f"/api/v1/namespaces/{namespace}/configmaps/app", {"data": {"level": "debug"}},
                          kind="merge")
        await wait_for(lambda: len(woken) == 2, 30, what="the waiter woken by the changed ConfigMap")
        done = resolve(pod, container, await store.lookups(pod_references(pod)))
        assert isinstance(done, Resolved)
        assert done.env_map() == {"LEVEL": "debug"} and done.args == ("--logging.level.root=debug",)
    finally:
        await store.stop()


async def test_secrets_are_read_decoded_and_a_burst_is_one_get(admin: Kube, provider: Kube, namespace: str) -> None:
    await admin.create(f"/api/v1/namespaces/{namespace}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
        "data": {"password": base64.b64encode(b"s3cr3t-pw").decode()}})
    store = RefStore(provider, ttl_s=30)
    ref = Ref(SECRET, namespace, "db")
    values = await asyncio.gather(*(store.read(ref) for _ in range(20)))
    assert all(v == {"password": "s3cr3t-pw"} for v in values)
    assert store.gets == 1  # one GET for twenty reads (cached and coalesced)
    gone = await store.read(Ref(SECRET, namespace, "nope"))
    assert gone == RefError('secret "nope" not found', not_found=True)


async def test_the_provider_identity_gets_by_name_and_cannot_enumerate(kube_cluster: Any, admin: Kube,
                                                                       namespace: str) -> None:
    """Least privilege: get ConfigMaps and Secrets it can name (what the kubelet's node authorizer allows, minus
    "only those its pods name"), never list or watch them: a list would read every Secret of the cluster."""
    await admin.create(f"/api/v1/namespaces/{namespace}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"k": "v"}})
    await _configmap(admin, namespace, "c", {"k": "v"})
    probe = await Kube.connect(str(kube_cluster.provider_kubeconfig), timeout_s=15)  # not the program's User-Agent
    try:
        assert (await probe.get(f"/api/v1/namespaces/{namespace}/secrets/s"))["data"] == {"k": "dg=="}
        assert (await probe.get(f"/api/v1/namespaces/{namespace}/configmaps/c"))["data"] == {"k": "v"}
        refused = {}
        for what, path, params in [
            ("list secrets in the namespace", f"/api/v1/namespaces/{namespace}/secrets", None),
            ("list secrets everywhere", "/api/v1/secrets", None),
            ("watch one secret", f"/api/v1/namespaces/{namespace}/secrets",
             {"watch": "true", "fieldSelector": "metadata.name=s", "timeoutSeconds": "1"}),
            ("list configmaps", f"/api/v1/namespaces/{namespace}/configmaps", None),
        ]:
            with pytest.raises(ApiError) as info:
                await probe.get(path, params=params)
            refused[what] = info.value.status
        assert refused == dict.fromkeys(refused, 403)
        with pytest.raises(ApiError) as info:  # and it cannot write them
            await probe.patch(f"/api/v1/namespaces/{namespace}/secrets/s", {"data": {}}, kind="merge")
        assert info.value.status == 403
    finally:
        await probe.close()


async def test_what_reading_costs(admin: Kube, provider: Kube, namespace: str) -> None:
    """The figures behind "GET, not watch" (kube/refs.py): one GET's latency, and a recheck of 50 waited objects."""
    await _configmap(admin, namespace, "cost", {"k": "v"})
    await admin.create(f"/api/v1/namespaces/{namespace}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cost"}, "stringData": {"k": "v"}})
    store = RefStore(provider, ttl_s=0)  # every read is a GET
    for kind in (CONFIG_MAP, SECRET):
        ref = Ref(kind, namespace, "cost")
        took = []
        for _ in range(40):
            started = time.perf_counter()
            assert await store.read(ref) == {"k": "v"}
            took.append((time.perf_counter() - started) * 1000)
        figure(f"refs: GET {kind} latency p50 / max (ms, 40 reads)",
               f"{statistics.median(took):.2f} / {max(took):.2f}")
    waiting = RefStore(provider, ttl_s=60)
    refs = [Ref(CONFIG_MAP, namespace, f"absent-{i}") for i in range(50)]
    for i, ref in enumerate(refs):
        await waiting.read(ref)
        waiting.wait_for(f"pod-{i}-{uuid.uuid4().hex[:4]}", [ref])
    before = waiting.gets
    started = time.perf_counter()
    assert await waiting.recheck() == frozenset()
    took_ms = (time.perf_counter() - started) * 1000
    assert waiting.gets - before == 50
    figure("refs: one recheck of 50 waited objects (50 GETs, 16 at a time)", f"{took_ms:.0f} ms")
