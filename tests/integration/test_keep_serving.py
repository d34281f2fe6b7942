"""Never lose a running module (issue 27): a failed release, a re-created pod, a base restart or a base whose biz list
cannot be read must not uninstall, mis-report or orphan what serves. Real control plane, simulated bases.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.helpers import figure
from tests.integration.harness import (
    is_ready,
    module_pod,
    pods_of,
    uninstalls,
    wait_ready_vnodes,
    wait_until,
)
from vkprovider.kube.client import Kube

STRATEGY = "module.koupleless.io/install-strategy"


def deployment(name: str, env: str, version: str, *, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    template = module_pod("x", env, version=version, labels={"app": name})
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 1, "progressDeadlineSeconds": 7200,
                     "selector": {"matchLabels": {"app": name}},
                     "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                     "template": {"metadata": {"labels": template["metadata"]["labels"],
                                               "annotations": annotations or {}},
                                  "spec": template["spec"]}}}


def version_of(pod: dict[str, Any]) -> str:
    return str(pod["spec"]["containers"][0]["env"][0]["value"])


async def roll_to(admin: Kube, namespace: str, name: str, env: str, version: str) -> None:
    containers = module_pod("x", env, version=version)["spec"]["containers"]
    await admin.patch(f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}",
                      {"spec": {"template": {"spec": {"containers": containers}}}})


async def base_bizs(sim: Any) -> dict[tuple[str, str], str]:
    base = (await sim.bases())[0]
    return {(b["bizName"], b["bizVersion"]): str(b["bizState"]).upper() for b in base["bizs"]}


async def old_and_new(admin: Kube, namespace: str, app: str, old: str, new: str) -> tuple[Any, Any]:
    pods = {version_of(p): p for p in await pods_of(admin, namespace, f"app={app}")}
    return pods.get(old), pods.get(new)


def install_failed(pod: dict[str, Any] | None) -> bool:
    statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or []
    return any(((s.get("state") or {}).get("waiting") or {}).get("reason") == "BizInstallFailed" for s in statuses)


async def test_a_failed_release_never_takes_down_the_version_that_serves(admin, env_name, namespace,
                                                                          provider_factory, sim_factory):
    """One base runs biz1 0.0.1 for a Deployment; the Deployment is rolled to 0.0.2, whose install fails on that
    base. Before: once the failed install backed off, 0.0.1 was uninstalled while its pod lived, and never came
    back. Now, with ``installOnly``, 0.0.1 stays ACTIVATED and its pod Ready through several failed retries."""
    provider = await provider_factory()
    sim = await sim_factory(provider.endpoint, "--bases", "1", "--heartbeat-interval", "2", "--identity-prefix",
                            env_name, "--fail-biz", "biz1:0.0.2", "--multi-version-mode", "multi")
    await wait_ready_vnodes(admin, env_name, 1)
    await admin.create(f"/apis/apps/v1/namespaces/{namespace}/deployments",
                       deployment("web", env_name, "0.0.1", annotations={STRATEGY: "installOnly"}))

    async def old_ready() -> bool:
        old, _ = await old_and_new(admin, namespace, "web", "0.0.1", "0.0.2")
        return old is not None and is_ready(old)

    await wait_until(old_ready, 60, what="0.0.1 Running")
    await roll_to(admin, namespace, "web", env_name, "0.0.2")

    async def new_failed() -> bool:
        _, new = await old_and_new(admin, namespace, "web", "0.0.1", "0.0.2")
        return install_failed(new)

    await wait_until(new_failed, 60, what="the 0.0.2 pod shows BizInstallFailed")
    # Watch through several retries of the failing install (2 s doubling backoff: 4 attempts in ~20 s).
    attempts_before = (await sim.stats())["installsByBiz"]
    samples = 0
    end = time.monotonic() + 20
    while time.monotonic() < end:
        old, _ = await old_and_new(admin, namespace, "web", "0.0.1", "0.0.2")
        assert old is not None and is_ready(old), old and old.get("status")
        assert (await base_bizs(sim)).get(("biz1", "0.0.1")) == "ACTIVATED"
        samples += 1
        await asyncio.sleep(0.25)
    stats = await sim.stats()
    retried = sum(v for k, v in stats["installsByBiz"].items() if "0.0.2" in k) - sum(
        v for k, v in attempts_before.items() if "0.0.2" in k)
    assert retried >= 2, stats["installsByBiz"]  # the new version was really retried meanwhile
    assert not any("0.0.1" in k for k in (await uninstalls(sim)))
    figure("failed_release_old_pod_ready_samples", f"{samples} of {samples} (0.0.2 retried {retried} times)")


async def test_when_the_replacing_install_fails_the_old_version_is_installed_back(admin, env_name, namespace,
                                                                                  provider_factory, sim_factory):
    """A web biz cannot run two versions on one base (``exclusive``): the rollout replaces 0.0.1 with
    uninstallThenInstall, and 0.0.2 fails. 0.0.1 is installed back and its pod is Ready again within one backoff
    of the failed install (before: 0.0.1 was gone for good)."""
    provider = await provider_factory()
    sim = await sim_factory(provider.endpoint, "--bases", "1", "--heartbeat-interval", "2", "--identity-prefix",
                            env_name, "--fail-biz", "biz1:0.0.2", "--multi-version-mode", "exclusive")
    await wait_ready_vnodes(admin, env_name, 1)
    await admin.create(f"/apis/apps/v1/namespaces/{namespace}/deployments", deployment("web", env_name, "0.0.1"))

    async def old_serves() -> bool:
        old, _ = await old_and_new(admin, namespace, "web", "0.0.1", "0.0.2")
        return old is not None and is_ready(old) and (await base_bizs(sim)).get(("biz1", "0.0.1")) == "ACTIVATED"

    await wait_until(old_serves, 60, what="0.0.1 Running")
    await roll_to(admin, namespace, "web", env_name, "0.0.2")

    async def replaced_once() -> bool:
        return any("0.0.1" in k for k in await uninstalls(sim)) or (await base_bizs(sim)).get(
            ("biz1", "0.0.1")) is None

    await wait_until(replaced_once, 60, what="0.0.1 replaced by the failing 0.0.2")
    gone_at = time.monotonic()
    await wait_until(old_serves, 30, interval_s=0.1, what="0.0.1 installed back and its pod Ready again")
    back_s = time.monotonic() - gone_at
    _, new = await old_and_new(admin, namespace, "web", "0.0.1", "0.0.2")
    assert new is not None and not is_ready(new)
    figure("replaced_then_failed_old_ready_again_s", round(back_s, 2))


async def test_an_unrelated_workloads_version_is_never_removed_to_make_room(admin, env_name, namespace,
                                                                            provider_factory, sim_factory):
    """Two Deployments want two versions of biz1 on one base that cannot run both (a web biz); the later one's
    install fails. Before: it was retried with uninstallThenInstall, removing the other workload's biz, which was
    then reinstalled: an outage of an unrelated workload at every retry. Now the other version is never touched."""
    provider = await provider_factory()
    sim = await sim_factory(provider.endpoint, "--bases", "1", "--heartbeat-interval", "2", "--identity-prefix",
                            env_name, "--multi-version-mode", "exclusive")
    await wait_ready_vnodes(admin, env_name, 1)
    await admin.create(f"/apis/apps/v1/namespaces/{namespace}/deployments", deployment("one", env_name, "0.0.1"))

    async def one_serves() -> bool:
        pods = await pods_of(admin, namespace, "app=one")
        return len(pods) == 1 and is_ready(pods[0]) and (await base_bizs(sim)).get(("biz1", "0.0.1")) == "ACTIVATED"

    await wait_until(one_serves, 60, what="workload one Running")
    await admin.create(f"/apis/apps/v1/namespaces/{namespace}/deployments", deployment("two", env_name, "0.0.3"))

    async def two_failed() -> bool:
        pods = await pods_of(admin, namespace, "app=two")
        return len(pods) == 1 and install_failed(pods[0])

    await wait_until(two_failed, 60, what="workload two's install refused next to workload one's version")
    end = time.monotonic() + 15  # several retries of workload two
    while time.monotonic() < end:
        assert await one_serves()
        await asyncio.sleep(0.25)
    assert await uninstalls(sim) == {}
