"""Never lose a running module (issue 27): a failed release, a re-created pod, a base restart or a base whose biz list
cannot be read must not uninstall, mis-report or orphan what serves. Real control plane, simulated bases.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from tests.helpers import figure
from tests.integration.harness import (
    condition,
    is_ready,
    module_pod,
    pods_of,
    uninstalls,
    wait_ready_vnodes,
    wait_until,
)
from tests.tcpproxy import TcpProxy, kubeconfig_through, upstream_of
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

    async def installed_back() -> bool:
        # uninstallThenInstall removed 0.0.1 (the simulator counts no uninstall for that), 0.0.2 failed, and
        # vkprovider installed 0.0.1 again: its second install.
        counts = (await sim.stats())["installsByBiz"]
        return sum(v for k, v in counts.items() if k.endswith("biz1:0.0.1")) >= 2

    await wait_until(installed_back, 60, interval_s=0.1, what="0.0.1 replaced by the failing 0.0.2, then back")
    back_at = time.monotonic()
    await wait_until(old_serves, 30, interval_s=0.1, what="0.0.1 ACTIVATED and its pod Ready again")
    back_s = time.monotonic() - back_at
    ready = samples = 0
    end = time.monotonic() + 15  # the next retries (each may replace 0.0.1 for the length of an install)
    while time.monotonic() < end:
        ready += await old_serves()
        samples += 1
        await asyncio.sleep(0.2)
    assert await old_serves()
    assert ready >= samples * 0.9, (ready, samples)
    _, new = await old_and_new(admin, namespace, "web", "0.0.1", "0.0.2")
    assert new is not None and not is_ready(new)
    figure("replaced_then_failed_old_ready_again_s", round(back_s, 2))
    figure("replaced_then_failed_old_serving_samples", f"{ready} of {samples}")


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


# --- item 3: a status meant for a deleted pod never lands on a new pod of the same name ----------------------

async def test_a_status_write_pending_for_a_deleted_pod_never_lands_on_its_successor(
        admin, kube_cluster, env_name, namespace, provider_factory, sim_factory, tmp_path):
    """vkprovider's writes fail (its apiserver connection refused) while web-0's base goes silent: the status
    "not Ready, base unreachable" waits to be written. Meanwhile web-0 is deleted and a new pod web-0 (another
    uid, as a StatefulSet or a re-applied bare pod makes it) is created. Before: when the network healed, the
    write went by name and the new pod showed the old pod's containers. Now it is refused (uid precondition) and
    dropped."""
    proxy = TcpProxy(*upstream_of(kube_cluster.provider_kubeconfig))
    await proxy.start()
    try:
        kubeconfig = kubeconfig_through(kube_cluster.provider_kubeconfig, proxy, tmp_path / "through-proxy")
        # Leases long enough that the outage fences nothing: the write stays pending, as under a slow apiserver.
        provider = await provider_factory(KUBECONFIG=str(kubeconfig), VKP_LEASE_DURATION="120")
        sim = await sim_factory(provider.endpoint, "--bases", "1", "--heartbeat-interval", "2",
                                "--identity-prefix", env_name)
        node = (await wait_ready_vnodes(admin, env_name, 1))[0]["metadata"]["name"]
        pods_path = f"/api/v1/namespaces/{namespace}/pods"
        await admin.create(pods_path, module_pod("web-0", env_name))

        async def ready() -> bool:
            return is_ready(await admin.get(f"{pods_path}/web-0"))

        await wait_until(ready, 60, what="web-0 Running")
        old_uid = (await admin.get(f"{pods_path}/web-0"))["metadata"]["uid"]
        proxy.refuse()
        await sim.stop_base((await sim.bases())[0]["identity"])

        async def write_pending() -> bool:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{provider.probe_port}/debug/vnodes/{node}") as resp:
                    seen = await resp.json()
            return f"{namespace}/web-0" in seen["statusWriting"] + seen["statusWaiting"]

        await wait_until(write_pending, 60, what="web-0's status write pending")
        await admin.delete(f"{pods_path}/web-0", grace_period_s=0)
        await admin.create(pods_path, {**module_pod("web-0", env_name), "spec": {
            **module_pod("web-0", env_name)["spec"], "nodeSelector": {"vkprovider.test/nowhere": "true"}}})
        new_uid = (await admin.get(f"{pods_path}/web-0"))["metadata"]["uid"]
        assert new_uid != old_uid
        proxy.heal()
        end = time.monotonic() + 20  # past the status write's longest retry backoff (10 s)
        while time.monotonic() < end:
            pod = await admin.get(f"{pods_path}/web-0")
            assert pod["metadata"]["uid"] == new_uid
            assert not pod["status"].get("containerStatuses"), pod["status"]
            assert pod["status"].get("phase") == "Pending"
            await asyncio.sleep(0.25)

        async def drained() -> bool:
            return not await write_pending()

        await wait_until(drained, 30, what="the stale write dropped")
    finally:
        await proxy.stop()


# --- item 6: queryBaseline ----------------------------------------------------------------------------------

async def test_query_baseline_keeps_the_namespace_policy(admin, env_name, namespace, provider_factory, sim_factory):
    """A pod of a namespace VKP_BIZ_NAMESPACE_POLICY forbids on the base's cluster, bound to the vnode: the
    controller refuses it (BizNotAllowed). Before, queryBaseline still handed its biz to the base, which would
    install it itself."""
    from tests.integration.harness import TEST_SECRET
    from vkprovider.core.credentials import base_token

    provider = await provider_factory(VKP_BIZ_NAMESPACE_POLICY=f"{namespace}=*")
    sim = await sim_factory(provider.endpoint, "--bases", "1", "--heartbeat-interval", "2", "--identity-prefix",
                            env_name)
    await wait_ready_vnodes(admin, env_name, 1)
    other = f"{namespace}-x"
    await admin.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other}})
    try:
        await admin.create(f"/api/v1/namespaces/{namespace}/pods", module_pod("ok", env_name, biz="allowed"))
        await admin.create(f"/api/v1/namespaces/{other}/pods", module_pod("no", env_name, biz="forbidden"))

        async def settled() -> bool:
            ok = await admin.get(f"/api/v1/namespaces/{namespace}/pods/ok")
            no = await admin.get(f"/api/v1/namespaces/{other}/pods/no")
            reasons = [((c.get("state") or {}).get("waiting") or {}).get("reason")
                       for c in no["status"].get("containerStatuses") or []]
            return is_ready(ok) and reasons == ["BizNotAllowed"]

        await wait_until(settled, 60, what="the allowed pod Running, the forbidden one BizNotAllowed")
        base = (await sim.bases())[0]
        identity = base["identity"]
        body = {"identity": identity, "name": "TO_BE_IMPLEMENTED", "version": "1.0.0", "clusterName": "default"}
        headers = {"Authorization": f"Bearer {base_token(TEST_SECRET.encode(), identity)}"}
        async with aiohttp.ClientSession() as http:
            async with http.post(provider.endpoint + "/queryBaseline", json=body, headers=headers) as resp:
                assert resp.status == 200, await resp.text()
                answer = await resp.json(content_type=None)
        names = sorted(b["bizName"] for b in (answer.get("data") if isinstance(answer, dict) else answer))
        assert names == ["allowed"], answer
    finally:
        await admin.delete(f"/api/v1/namespaces/{other}")


@pytest.mark.parametrize("tunnel", ["mqtt"], indirect=True)
async def test_a_restarted_base_installing_its_baseline_is_not_raced(admin, env_name, namespace, tunnel,
                                                                     provider_factory, sim_factory):
    """Over MQTT a base that starts asks for its baseline and installs it itself. Before, the controller, seeing
    the bizs missing, installed them at the same time: arklet's "conflict, exist unfinished command" became
    BizInstallFailed Warning Events on every base restart. Now: no Warning, each biz installed once per start."""
    provider = await provider_factory()
    sim = await sim_factory(provider.endpoint, "--bases", "1", "--heartbeat-interval", "2", "--identity-prefix",
                            env_name, "--download-latency", "3")
    await wait_ready_vnodes(admin, env_name, 1)
    for i in range(3):
        await admin.create(f"/api/v1/namespaces/{namespace}/pods", module_pod(f"m{i}", env_name, biz=f"biz{i}"))

    async def all_ready() -> bool:
        pods = await pods_of(admin, namespace)
        return len(pods) == 3 and all(is_ready(p) for p in pods)

    await wait_until(all_ready, 60, what="3 modules Running")
    identity = (await sim.bases())[0]["identity"]
    for _ in range(2):
        before = (await sim.stats())["installsByBiz"]
        await sim.stop_base(identity)

        async def unreachable() -> bool:
            nodes = await admin.get("/api/v1/nodes", params={"labelSelector": f"virtual-kubelet.koupleless.io/env="
                                                                              f"{env_name}"})
            return all(condition(n, "Ready").get("status") != "True" for n in nodes["items"])

        await wait_until(unreachable, 40, what="the vnode not Ready while its base is down")
        await sim.start_base(identity)  # a JVM restart: no bizs, asks for its baseline; vkprovider reads at once

        async def reinstalled() -> bool:
            return len(await base_bizs(sim)) == 3 and await all_ready()

        await wait_until(reinstalled, 60, what="the restarted base runs its 3 bizs again")
        after = (await sim.stats())["installsByBiz"]
        assert {k: after[k] - before.get(k, 0) for k in after} == {k: 1 for k in after}, (before, after)
    events = await admin.get(f"/api/v1/namespaces/{namespace}/events")
    warnings = [(e["reason"], e.get("message")) for e in events["items"] if e.get("type") == "Warning"]
    assert warnings == []


# --- item 8: a base whose biz list cannot be read --------------------------------------------------------------

async def test_pods_on_a_base_whose_biz_list_cannot_be_read_say_so_and_deleted_pods_still_go(
        admin, env_name, namespace, provider_factory, sim_factory):
    """Every queryAllBiz answer of the base holds an entry without a version: the list is refused (acting on part
    of it could reinstall a biz that runs). Before, its pods got no status at all and a deleted pod stayed
    Terminating for ever; now a new pod says what it waits for, and a deleted one goes at the end of its grace
    period."""
    provider = await provider_factory()
    await sim_factory(provider.endpoint, "--bases", "1", "--heartbeat-interval", "2", "--identity-prefix", env_name,
                      "--malformed-biz-list")
    await wait_ready_vnodes(admin, env_name, 1)
    path = f"/api/v1/namespaces/{namespace}/pods"
    await admin.create(path, {**module_pod("m", env_name), "spec": {**module_pod("m", env_name)["spec"],
                                                                     "terminationGracePeriodSeconds": 5}})

    async def waiting() -> str | None:
        statuses = (await admin.get(f"{path}/m"))["status"].get("containerStatuses") or []
        message = str(((statuses[0].get("state") or {}).get("waiting") or {}).get("message") or "") if statuses else ""
        return message if "biz list" in message else None

    message = await wait_until(waiting, 60, what="the pod saying it waits for the base's biz list")
    assert "bizVersion" in message, message
    await admin.delete(f"{path}/m")
    deleted_at = time.monotonic()

    async def gone() -> bool:
        try:
            await admin.get(f"{path}/m")
        except Exception:
            return True
        return False

    await wait_until(gone, 60, what="the deleted pod finalized")
    figure("unreadable_base_deleted_pod_gone_after_s", round(time.monotonic() - deleted_at, 1))
