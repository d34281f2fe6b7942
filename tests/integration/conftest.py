"""Fixtures for integration tests: the admin API client, a unique env per test, vkprovider and simulators."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tests.integration.harness import ProviderProcess, SimProcess
from vkprovider.kube.client import Kube


@pytest.fixture(scope="session")
async def admin(kube_cluster: Any) -> AsyncIterator[Kube]:
    kube = await Kube.connect(str(kube_cluster.admin_kubeconfig))
    yield kube
    await kube.close()


@pytest.fixture
def env_name() -> str:
    """A fresh vkprovider env per test: vnodes are vnode.<id>.<env>, so tests never see each other's nodes."""
    return "t" + uuid.uuid4().hex[:8]


@pytest.fixture
async def provider_factory(kube_cluster: Any, env_name: str,
                           admin: Kube) -> AsyncIterator[Callable[..., Awaitable[ProviderProcess]]]:
    started: list[ProviderProcess] = []

    async def start(**overrides: str) -> ProviderProcess:
        proc = ProviderProcess(str(kube_cluster.provider_kubeconfig), env_name, **overrides)
        started.append(proc)
        await proc.start()
        return proc

    yield start
    for proc in started:
        proc.kill()
    selector = f"virtual-kubelet.koupleless.io/env={env_name}"
    nodes = await admin.get("/api/v1/nodes", params={"labelSelector": selector})
    for node in nodes.get("items", []):
        await admin.delete(f"/api/v1/nodes/{node['metadata']['name']}")


@pytest.fixture
async def sim_factory() -> AsyncIterator[Callable[..., Awaitable[SimProcess]]]:
    started: list[SimProcess] = []

    async def start(endpoint: str, *args: str) -> SimProcess:
        sim = SimProcess(endpoint, *args)
        started.append(sim)
        await sim.start()
        return sim

    yield start
    for sim in started:
        sim.kill()
