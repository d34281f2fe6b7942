"""Module pods become bizs on simulated bases, driven by the real control plane (issue: module lifecycle)."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import promtext
from tests.integration.conftest import TUNNELS
from tests.integration.harness import ProviderProcess, SimProcess, wait_until
from vkprovider.kube.client import Kube

pytestmark = pytest.mark.parametrize("tunnel", TUNNELS, indirect=True)

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def seed_deployment(env: str, replicas: int = 3, version: str = "0.0.1-SNAPSHOT") -> dict[str, Any]:
    """samples/module-deployment.yaml as written, plus a toleration of this test's env taint."""
    dep = yaml.safe_load((SAMPLES / "module-deployment.yaml").read_text())
    dep["metadata"].pop("namespace", None)
    dep["spec"]["replicas"] = replicas
    spec = dep["spec"]["template"]["spec"]
    spec["containers"][0]["env"][0]["value"] = version
    spec["tolerations"].append({"key": "schedule.koupleless.io/node-env", "operator": "Equal", "value": env,
                                "effect": "NoExecute"})
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    terms[0]["matchExpressions"].append({"key": "virtual-kubelet.koupleless.io/env", "operator": "In",
                                         "values": [env]})
    return dep


async def pods_of(admin: Kube, namespace: str, selector: str = "") -> list[dict[str, Any]]:
    params = {"labelSelector": selector} if selector else None
    return list((await admin.get(f"/api/v1/namespaces/{namespace}/pods", params=params))["items"])


def is_ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    conds = {c["type"]: c["status"] for c in status.get("conditions") or []}
    return status.get("phase") == "Running" and conds.get("Ready") == "True"


async def bizs_by_base(sim: SimProcess) -> dict[str, list[tuple[str, str, str]]]:
    return {b["identity"]: sorted((z["bizName"], z["bizVersion"], z["bizState"].upper()) for z in b["bizs"])
            for b in await sim.bases()}


async def start(provider_factory: Any, sim_factory: Any, env: str, bases: int,
                *sim_args: str, **provider_env: str) -> tuple[ProviderProcess, SimProcess]:
    provider = await provider_factory(**provider_env)
    sim = await sim_factory(provider.endpoint, "--bases", str(bases), "--heartbeat-interval", "3",
                            "--identity-prefix", env, "--base-version", "1.1.1", *sim_args)
    return provider, sim


async def wait_nodes(admin: Kube, env: str, count: int) -> None:
    async def ready() -> bool:
        got = await admin.get("/api/v1/nodes", params={"labelSelector": f"virtual-kubelet.koupleless.io/env={env}"})
        nodes = got["items"]
        ok = [n for n in nodes if any(c["type"] == "Ready" and c["status"] == "True"
                                      for c in n.get("status", {}).get("conditions", []))]
        return len(ok) == count

    await wait_until(ready, 30, what=f"{count} Ready vnodes")


async def test_seed_deployment_runs_on_three_bases_and_rolls_to_a_new_version(admin, env_name, namespace,
                                                                                provider_factory, sim_factory):
    provider, sim = await start(provider_factory, sim_factory, env_name, 3)
    await wait_nodes(admin, env_name, 3)
    dep = seed_deployment(env_name, replicas=3)
    dep["spec"]["template"]["spec"]["topologySpreadConstraints"] = [{
        "maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": {"app": "test-module-deployment"}}}]
    await admin.create(f"/apis/apps/v1/namespaces/{namespace}/deployments", dep)

    async def three_ready():
        pods = await pods_of(admin, namespace, "app=test-module-deployment")
        ready = [p for p in pods if is_ready(p)]
        return ready if len(ready) == 3 and len(pods) == 3 else None

    pods = await wait_until(three_ready, 60, what="3 Running+Ready pods")
    assert len({p["spec"]["nodeName"] for p in pods}) == 3
    for pod in pods:
        assert pod["status"]["hostIP"] == "127.0.0.1" and pod["status"]["startTime"]
        conds = {c["type"] for c in pod["status"]["conditions"]}
        assert {"PodScheduled", "Initialized", "ContainersReady", "Ready"} <= conds
    bizs = await bizs_by_base(sim)
    assert all(v == [("biz1", "0.0.1-SNAPSHOT", "ACTIVATED")] for v in bizs.values()), bizs

    # Rolling update to a new BIZ_VERSION (maxSurge 30%): exactly the new version remains on each base.
    patch = {"spec": {"template": {"spec": {"containers": [
        {"name": "biz1", "env": [{"name": "BIZ_VERSION", "value": "0.0.2"}]}]}}}}
    await admin.patch(f"/apis/apps/v1/namespaces/{namespace}/deployments/test-module-deployment", patch)

    seen: dict[str, Any] = {}

    async def rolled():
        pods = await pods_of(admin, namespace, "app=test-module-deployment")
        versions = {p["spec"]["containers"][0]["env"][0]["value"] for p in pods}
        bizs = await bizs_by_base(sim)
        seen["pods"] = [(p["metadata"]["name"], p["spec"].get("nodeName"), p["status"].get("phase"),
                         p["status"].get("reason"), is_ready(p), p["spec"]["containers"][0]["env"][0]["value"],
                         bool(p["metadata"].get("deletionTimestamp"))) for p in pods]
        seen["bizs"] = bizs
        with_pods = {p["spec"].get("nodeName", "..").split(".")[1] for p in pods}
        done = (len(pods) == 3 and all(is_ready(p) for p in pods) and versions == {"0.0.2"}
                and all(v == ([("biz1", "0.0.2", "ACTIVATED")] if base in with_pods else [])
                        for base, v in bizs.items()))
        return bizs if done else None

    try:
        await wait_until(rolled, 90, what="rollout to 0.0.2 with no old version left")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {seen}") from None
    stats = await sim.stats()
    assert not [k for k in stats["uninstallsByBiz"] if k.endswith(":0.0.2")], stats

    # Deleting the Deployment removes every pod and every biz.
    await admin.request("DELETE", f"/apis/apps/v1/namespaces/{namespace}/deployments/test-module-deployment",
                        body={"propagationPolicy": "Foreground"})

    async def all_gone():
        pods = await pods_of(admin, namespace, "app=test-module-deployment")
        bizs = await bizs_by_base(sim)
        return not pods and all(v == [] for v in bizs.values())

    await wait_until(all_gone, 60, what="pods and bizs gone")


async def test_daemonset_runs_one_module_per_base_also_on_a_late_base(admin, env_name, namespace,
                                                                      provider_factory, sim_factory):
    provider, sim = await start(provider_factory, sim_factory, env_name, 3)
    await wait_nodes(admin, env_name, 3)
    ds = yaml.safe_load((SAMPLES / "module-daemonset.yaml").read_text())
    ds["metadata"].pop("namespace", None)
    ds["spec"]["template"]["spec"]["tolerations"].append(
        {"key": "schedule.koupleless.io/node-env", "operator": "Equal", "value": env_name, "effect": "NoExecute"})
    ds["spec"]["template"]["spec"]["nodeSelector"] = {"virtual-kubelet.koupleless.io/env": env_name}
    await admin.create(f"/apis/apps/v1/namespaces/{namespace}/daemonsets", ds)

    container = ds["spec"]["template"]["spec"]["containers"][0]
    version = next(e["value"] for e in container["env"] if e["name"] == "BIZ_VERSION")
    expected = [(container["name"], version, "ACTIVATED")]

    async def per_base(count: int):
        pods = [p for p in await pods_of(admin, namespace) if is_ready(p)]
        bizs = await bizs_by_base(sim)
        ok = len(pods) == count and len(bizs) == count and all(v == expected for v in bizs.values())
        return True if ok else {"ready_pods": len(pods), "bizs": bizs}

    await wait_until(lambda: per_base(3), 60, what="one module per base")
    await sim.call("POST", "/bases?count=1")
    await wait_until(lambda: per_base(4), 60, what="module on the late base")


async def test_new_version_on_same_base_fails_the_old_pod_with_biz_deactivate(admin, env_name, namespace,
                                                                              provider_factory, sim_factory):
    provider, sim = await start(provider_factory, sim_factory, env_name, 1, "--cluster-name", "demo")
    await wait_nodes(admin, env_name, 1)
    for name in ("module-pod-v1.yaml", "module-pod-v2.yaml"):
        pod = yaml.safe_load((SAMPLES / name).read_text())
        pod["metadata"].pop("namespace", None)
        pod["spec"]["tolerations"].append(
            {"key": "schedule.koupleless.io/node-env", "operator": "Equal", "value": env_name, "effect": "NoExecute"})
        pod["spec"]["nodeSelector"] = {"virtual-kubelet.koupleless.io/env": env_name}
        await admin.create(f"/api/v1/namespaces/{namespace}/pods", pod)
        if name == "module-pod-v1.yaml":
            await wait_until(lambda: _pod_ready(admin, namespace, "biz1-pod"), 30, what="0.0.1 running")

    async def deactivated():
        old = await admin.get(f"/api/v1/namespaces/{namespace}/pods/biz1-pod")
        new = await admin.get(f"/api/v1/namespaces/{namespace}/pods/biz1-pod-v2")
        return (old, new) if old["status"].get("phase") == "Failed" and is_ready(new) else None

    old, _ = await wait_until(deactivated, 30, what="old pod Failed")
    assert old["status"]["reason"] == "BizDeactivate"
    assert "biz1:0.0.2" in old["status"]["message"]


async def _pod_ready(admin: Kube, namespace: str, name: str) -> bool:
    return is_ready(await admin.get(f"/api/v1/namespaces/{namespace}/pods/{name}"))


async def test_bad_module_pods_get_a_clear_reason_and_a_warning_event(admin, env_name, namespace, provider_factory,
                                                                      sim_factory):
    provider, sim = await start(provider_factory, sim_factory, env_name, 1, "--fail-biz", "broken",
                                "--cluster-name", "demo")
    await wait_nodes(admin, env_name, 1)
    base = yaml.safe_load((SAMPLES / "module-pod-v1.yaml").read_text())
    base["metadata"].pop("namespace", None)
    base["spec"]["tolerations"].append(
        {"key": "schedule.koupleless.io/node-env", "operator": "Equal", "value": env_name, "effect": "NoExecute"})
    base["spec"]["nodeSelector"] = {"virtual-kubelet.koupleless.io/env": env_name}
    no_version = copy.deepcopy(base)
    no_version["metadata"]["name"] = "no-version"
    del no_version["spec"]["containers"][0]["env"]
    broken = copy.deepcopy(base)
    broken["metadata"]["name"] = "broken"
    broken["spec"]["containers"][0]["name"] = "broken"
    not_module = copy.deepcopy(base)
    not_module["metadata"] = {"name": "not-a-module"}
    good = copy.deepcopy(base)
    for pod in (no_version, broken, not_module, good):
        await admin.create(f"/api/v1/namespaces/{namespace}/pods", pod)

    async def reasons():
        pods = {p["metadata"]["name"]: p for p in await pods_of(admin, namespace)}
        events = (await admin.get(f"/api/v1/namespaces/{namespace}/events"))["items"]
        warned = {(e["involvedObject"]["name"], e["reason"]) for e in events if e["type"] == "Warning"}
        state = {
            "no-version": pods["no-version"]["status"].get("message", ""),
            "broken": pods["broken"]["status"].get("message", ""),
            # left alone, not Failed (its controller would recreate it forever): one condition says why
            "not-a-module": (pods["not-a-module"]["status"].get("phase"),
                             {c["type"]: c.get("reason") for c in
                              pods["not-a-module"]["status"].get("conditions", [])}.get("Ready")),
            "good": is_ready(pods["biz1-pod"]),
        }
        ok = ("BIZ_VERSION" in state["no-version"] and state["broken"]
              and state["not-a-module"] == ("Pending", "NotAModule") and state["good"]
              and ("not-a-module", "NotAModule") in warned
              and ("no-version", "MissingBizVersion") in warned and ("broken", "BizInstallFailed") in warned)
        seen["state"] = state
        return ok

    seen: dict[str, Any] = {}
    try:
        await wait_until(reasons, 40, what="reasons and warnings")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {seen}") from None
    assert (await sim.bases())[0]["bizs"][0]["bizName"] == "biz1"
    assert provider.proc is not None and provider.proc.poll() is None


async def test_sigkill_mid_rollout_installs_each_biz_exactly_once(admin, env_name, namespace, provider_factory,
                                                                  sim_factory):
    """10 Deployments x 10 replicas spread one per base: 100 distinct (base, biz) installs."""
    provider, sim = await start(provider_factory, sim_factory, env_name, 10, "--install-latency", "0.3")

    async def sigkill_and_restart() -> None:
        provider.kill()
        await provider.start()

    await rollout_100_with_a_fault(admin, env_name, namespace, sim, sigkill_and_restart)


async def rollout_100_with_a_fault(admin: Kube, env: str, namespace: str, sim: SimProcess,
                                   fault: Any) -> None:
    """Start a 100-pod rollout, run ``fault()`` once 20 installs are done, then check each biz installed once."""
    await wait_nodes(admin, env, 10)
    for i in range(10):
        dep = seed_deployment(env, replicas=10, version="0.0.1")
        dep["metadata"]["name"] = f"mod-{i}"
        dep["spec"]["selector"]["matchLabels"] = {"app": f"mod-{i}"}
        template = dep["spec"]["template"]
        template["metadata"]["labels"]["app"] = f"mod-{i}"
        template["spec"]["containers"][0]["name"] = f"biz{i}"
        template["spec"]["topologySpreadConstraints"] = [{
            "maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"app": f"mod-{i}"}}}]
        await admin.create(f"/apis/apps/v1/namespaces/{namespace}/deployments", dep)

    async def some_installed():
        return (await sim.stats())["installCalls"] >= 20

    await wait_until(some_installed, 60, interval_s=0.2, what="rollout under way")
    await fault()

    async def all_running():
        pods = await pods_of(admin, namespace)
        return len(pods) == 100 and all(is_ready(p) for p in pods)

    await wait_until(all_running, 150, interval_s=1, what="100 pods Running")
    await asyncio.sleep(6)  # past the orphan grace: nothing may be uninstalled either
    stats = await sim.stats()
    per_biz = stats["installsByBiz"]
    assert len(per_biz) == 100, sorted(per_biz)
    assert all(count == 1 for count in per_biz.values()), {k: v for k, v in per_biz.items() if v != 1}
    assert stats["uninstallCalls"] == 0, stats["uninstallsByBiz"]
    bizs = await bizs_by_base(sim)
    assert sum(len(v) for v in bizs.values()) == 100
    assert all(b[2] == "ACTIVATED" for v in bizs.values() for b in v)


def status_writes(metrics: str) -> float:
    """Sum of vkprovider_pod_status_writes_total over phases."""
    return promtext.total(metrics, "vkprovider_pod_status_writes_total")


async def test_pod_status_is_written_once_per_change_and_not_again_when_idle(admin, env_name, namespace,
                                                                              provider_factory, sim_factory):
    """At most Pending + Running per pod while it starts, then nothing: biz polls (every 10 s here) and heartbeats
    (every 3 s) that change nothing write nothing, and no write is repeated before the watch has shown it."""
    provider, sim = await start(provider_factory, sim_factory, env_name, 5)
    await wait_nodes(admin, env_name, 5)
    await admin.create(f"/apis/apps/v1/namespaces/{namespace}/deployments", seed_deployment(env_name, replicas=10))

    async def all_ready():
        pods = await pods_of(admin, namespace, "app=test-module-deployment")
        return len(pods) == 10 and all(is_ready(p) for p in pods)

    await wait_until(all_ready, 60, what="10 Running+Ready pods")
    await asyncio.sleep(2)  # writes of the last transition have been answered
    after_start = status_writes(await provider.metrics())
    assert 10 <= after_start <= 20, after_start
    await asyncio.sleep(12)  # more than one biz poll of every base
    assert status_writes(await provider.metrics()) == after_start
