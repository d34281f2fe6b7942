"""vkprovider/kube/refs.py's bookkeeping, with a stand-in for the API (the real one: tests/integration/test_refs.py):
the read cache and its expiry, one GET for concurrent reads, and whom a recheck wakes."""

from __future__ import annotations

import asyncio
import base64
from typing import Any, cast

from vkprovider.core.containerconfig import CONFIG_MAP, SECRET, Ref, RefError
from vkprovider.kube.client import ApiConnectionError, ApiError, Kube
from vkprovider.kube.refs import RefStore

CM = Ref(CONFIG_MAP, "ns", "app")
SEC = Ref(SECRET, "ns", "db")


class FakeApi:
    """Answers GETs from ``objects`` (path -> object, or an ApiError to raise); counts them."""

    def __init__(self) -> None:
        self.objects: dict[str, Any] = {}
        self.paths: list[str] = []

    async def get(self, path: str) -> Any:
        self.paths.append(path)
        await asyncio.sleep(0)
        found = self.objects.get(path)
        if found is None:
            raise ApiError(404, "NotFound", "not found")
        if isinstance(found, ApiError):
            raise found
        return found


def _store(api: FakeApi, clock: list[float], woken: list[frozenset[str]] | None = None) -> RefStore:
    return RefStore(cast(Kube, api), ttl_s=10, recheck_s=1, clock=lambda: clock[0],
                    on_change=None if woken is None else woken.append)


async def test_reads_are_cached_for_the_ttl_and_coalesced() -> None:
    api, clock = FakeApi(), [0.0]
    api.objects["/api/v1/namespaces/ns/secrets/db"] = {
        "metadata": {"resourceVersion": "1"}, "data": {"pw": base64.b64encode(b"x1").decode()}}
    store = _store(api, clock)
    assert await asyncio.gather(*(store.read(SEC) for _ in range(5))) == [{"pw": "x1"}] * 5
    assert api.paths == ["/api/v1/namespaces/ns/secrets/db"]
    clock[0] = 9.9
    await store.read(SEC)
    assert len(api.paths) == 1
    clock[0] = 10.1
    await store.read(SEC)
    assert len(api.paths) == 2


async def test_errors_are_told_apart() -> None:
    api, clock = FakeApi(), [0.0]
    store = _store(api, clock)
    assert await store.read(CM) == RefError('configmap "app" not found', not_found=True)
    api.objects["/api/v1/namespaces/ns/configmaps/f"] = ApiError(403, "Forbidden", 'configmaps "f" is forbidden')
    assert await store.read(Ref(CONFIG_MAP, "ns", "f")) == RefError('configmaps "f" is forbidden')
    api.objects["/api/v1/namespaces/ns/configmaps/t"] = ApiConnectionError("Timeout", "GET timed out", sent=True)
    flaky = await store.read(Ref(CONFIG_MAP, "ns", "t"))
    assert isinstance(flaky, RefError) and flaky.transient and not flaky.not_found
    before = len(api.paths)
    await store.read(Ref(CONFIG_MAP, "ns", "t"))
    assert len(api.paths) == before + 1  # a failure to read is not cached


async def test_a_recheck_wakes_the_waiters_of_what_appeared_or_changed_once() -> None:
    api, clock, woken = FakeApi(), [0.0], []
    store = _store(api, clock, woken)
    await store.read(CM)  # missing
    store.wait_for("ns/pod-a", [CM])
    store.wait_for("ns/pod-b", [CM, SEC])
    assert await store.recheck() == frozenset() and woken == []
    api.objects["/api/v1/namespaces/ns/secrets/db"] = ApiConnectionError("Timeout", "x", sent=True)
    assert await store.recheck() == frozenset()  # an unreadable object teaches nothing: nobody is woken
    api.objects["/api/v1/namespaces/ns/configmaps/app"] = {"metadata": {"resourceVersion": "5"}, "data": {}}
    assert await store.recheck() == {"ns/pod-a", "ns/pod-b"}
    assert woken == [frozenset({"ns/pod-a", "ns/pod-b"})] and store.waited == frozenset()  # one notice per wait
    store.wait_for("ns/pod-a", [CM])  # still no key: waits again, from resourceVersion 5
    assert await store.recheck() == frozenset()
    api.objects["/api/v1/namespaces/ns/configmaps/app"] = {"metadata": {"resourceVersion": "6"}, "data": {"k": "v"}}
    store.forget("ns/pod-a")  # the pod went away
    assert await store.recheck() == frozenset() and len(woken) == 1
