"""Module pods are Ready when their module serves (issue 29): probes run as a kubelet runs them, on the base's
address, readiness gates decide as the kubelet decides. Real control plane; simulated bases, each on its own
loopback address, serving their bizs' HTTP paths while the biz is ACTIVATED (vkprovider/sim/web.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.helpers import figure
from tests.integration.harness import condition, is_ready, module_pod, wait_ready_vnodes, wait_until
from vkprovider.kube.client import Kube

WEB_PORT = 8080


async def start(provider_factory: Any, sim_factory: Any, env: str, *args: str) -> tuple[Any, Any]:
    provider = await provider_factory()
    sim = await sim_factory(provider.endpoint, "--bases", "1", "--heartbeat-interval", "2", "--identity-prefix", env,
                            "--loopback-ips", "127.30.0.1", "--web-port", str(WEB_PORT), *args)
    return provider, sim


def probed_pod(name: str, env: str, **container: Any) -> dict[str, Any]:
    pod = module_pod(name, env)
    pod["spec"]["containers"][0].update(container)
    return pod


def http_probe(path: str, **timing: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": WEB_PORT}, "periodSeconds": 1, "failureThreshold": 1, **timing}


async def get(admin: Kube, namespace: str, name: str) -> dict[str, Any]:
    return dict(await admin.get(f"/api/v1/namespaces/{namespace}/pods/{name}"))


def container_ready(pod: dict[str, Any]) -> bool:
    return bool(((pod.get("status") or {}).get("containerStatuses") or [{}])[0].get("ready"))


async def test_readiness_follows_the_module_s_health_not_just_activated(admin, env_name, namespace,
                                                                        provider_factory, sim_factory):
    """biz1's health path answers 500 while biz1 stays ACTIVATED: before, the pod stayed Ready (readiness was
    ACTIVATED); now its container is not ready and the pod Ready=False with the kubelet's reason, until the module
    answers 200 again."""
    provider, sim = await start(provider_factory, sim_factory, env_name)
    await wait_ready_vnodes(admin, env_name, 1)
    identity = (await sim.bases())[0]["identity"]
    await admin.create(f"/api/v1/namespaces/{namespace}/pods",
                       probed_pod("p", env_name, readinessProbe=http_probe("/biz1/health")))

    async def ready() -> bool:
        return is_ready(await get(admin, namespace, "p"))

    await wait_until(ready, 60, what="the pod Ready once its readiness probe passes")
    await sim.call("POST", f"/bases/{identity}/bizs/biz1/health", json={"status": 500})
    flipped = time.monotonic()

    async def unready() -> dict[str, Any] | None:
        pod = await get(admin, namespace, "p")
        return pod if condition(pod, "Ready").get("status") == "False" else None

    pod = await wait_until(unready, 30, interval_s=0.2, what="the pod not Ready while its module fails")
    unready_s = time.monotonic() - flipped
    assert not container_ready(pod)
    assert condition(pod, "Ready").get("reason") == "ContainersNotReady"
    assert condition(pod, "ContainersReady").get("status") == "False"
    assert pod["status"]["phase"] == "Running"
    biz = [b for b in (await sim.bases())[0]["bizs"] if b["bizName"] == "biz1"]
    assert biz and str(biz[0]["bizState"]).upper() == "ACTIVATED"  # the biz runs: only its health failed
    events = await admin.get(f"/api/v1/namespaces/{namespace}/events",
                             params={"fieldSelector": "involvedObject.name=p"})
    assert any(e["reason"] == "Unhealthy" and "Readiness probe failed" in e["message"] for e in events["items"])
    await sim.call("POST", f"/bases/{identity}/bizs/biz1/health", json={"status": 200})
    await wait_until(ready, 30, interval_s=0.2, what="the pod Ready again")
    figure("readiness_probe_unready_after_s", round(unready_s, 1))


async def test_an_exec_probe_is_skipped_with_a_warning_and_readiness_falls_back_to_activated(
        admin, env_name, namespace, provider_factory, sim_factory):
    await start(provider_factory, sim_factory, env_name)
    await wait_ready_vnodes(admin, env_name, 1)
    await admin.create(f"/api/v1/namespaces/{namespace}/pods",
                       probed_pod("x", env_name, readinessProbe={"exec": {"command": ["true"]}}))

    async def ready() -> bool:
        return is_ready(await get(admin, namespace, "x"))

    await wait_until(ready, 60, what="the pod Ready (ACTIVATED) despite its exec probe")

    async def warned() -> bool:
        events = await admin.get(f"/api/v1/namespaces/{namespace}/events",
                                 params={"fieldSelector": "involvedObject.name=x"})
        return any(e["type"] == "Warning" and e["reason"] == "UnsupportedProbe" for e in events["items"])

    await wait_until(warned, 30, what="a Warning Event saying the exec probe is not run")


async def test_a_readiness_gate_holds_ready_until_its_condition_is_true(admin, env_name, namespace,
                                                                        provider_factory, sim_factory):
    await start(provider_factory, sim_factory, env_name)
    await wait_ready_vnodes(admin, env_name, 1)
    pod = module_pod("g", env_name)
    pod["spec"]["readinessGates"] = [{"conditionType": "vkprovider.test/gate"}]
    await admin.create(f"/api/v1/namespaces/{namespace}/pods", pod)

    async def held() -> dict[str, Any] | None:
        shown = await get(admin, namespace, "g")
        ok = (condition(shown, "ContainersReady").get("status") == "True"
              and condition(shown, "Ready").get("status") == "False"
              and condition(shown, "Ready").get("reason") == "ReadinessGatesNotReady")
        return shown if ok else None

    await wait_until(held, 60, what="containers ready, the pod held by its readiness gate")
    await admin.patch(f"/api/v1/namespaces/{namespace}/pods/g/status",
                      {"status": {"conditions": [{"type": "vkprovider.test/gate", "status": "True"}]}},
                      kind="strategic")

    async def ready() -> bool:
        return is_ready(await get(admin, namespace, "g"))

    await wait_until(ready, 30, what="the pod Ready once its gate is True")


async def test_a_deleted_pod_serves_until_its_prestop_ends_then_its_biz_goes(admin, env_name, namespace,
                                                                             provider_factory, sim_factory):
    """Graceful stop (issue 29, item 3): a preStop sleep of 4 s; the module keeps serving (its biz ACTIVATED, its
    HTTP path answering) until the hook has ended, then it is uninstalled and the pod goes - all within its grace
    period. Before, the biz was uninstalled as soon as the pod was deleted."""
    import aiohttp

    provider, sim = await start(provider_factory, sim_factory, env_name)
    await wait_ready_vnodes(admin, env_name, 1)
    base = (await sim.bases())[0]
    pod = probed_pod("s", env_name, lifecycle={"preStop": {"sleep": {"seconds": 4}}})
    pod["spec"]["terminationGracePeriodSeconds"] = 20
    await admin.create(f"/api/v1/namespaces/{namespace}/pods", pod)

    async def ready() -> bool:
        return is_ready(await get(admin, namespace, "s"))

    await wait_until(ready, 60, what="the pod Ready")
    url = f"http://{base['address']}:{base['webPort']}/biz1/version"
    await admin.delete(f"/api/v1/namespaces/{namespace}/pods/s")
    deleted = time.monotonic()
    served: list[float] = []
    async with aiohttp.ClientSession() as http:
        while time.monotonic() - deleted < 30:
            async with http.get(url) as resp:
                if resp.status != 200:
                    break
                served.append(time.monotonic() - deleted)
            await asyncio.sleep(0.1)
    stopped_after = time.monotonic() - deleted
    assert served and max(served) >= 3.5, served[-3:]  # it served through the hook (4 s)
    assert stopped_after < 20  # and went within the grace period

    async def gone() -> bool:
        try:
            await get(admin, namespace, "s")
        except Exception:
            return True
        return False

    await wait_until(gone, 30, what="the pod finalized")
    figure("prestop_sleep_4s_module_served_for_s", round(max(served), 1))


async def test_a_failed_liveness_probe_reinstalls_the_biz_with_a_crash_loop_backoff(admin, env_name, namespace,
                                                                                    provider_factory, sim_factory):
    """Liveness (issue 29, item 1): the module's health fails past the threshold, so the biz is reinstalled, as the
    kubelet restarts a container: restartCount +1 and lastState.terminated; while it keeps failing, the next
    restarts wait for the crash-loop backoff (CrashLoopBackOff); healthy again, it stays running."""
    provider, sim = await start(provider_factory, sim_factory, env_name)
    await wait_ready_vnodes(admin, env_name, 1)
    identity = (await sim.bases())[0]["identity"]
    await admin.create(f"/api/v1/namespaces/{namespace}/pods",
                       probed_pod("l", env_name, livenessProbe=http_probe("/biz1/health", failureThreshold=2)))

    async def ready() -> bool:
        return is_ready(await get(admin, namespace, "l"))

    await wait_until(ready, 60, what="the pod Ready")
    await sim.call("POST", f"/bases/{identity}/bizs/biz1/health", json={"status": 500})

    async def restarted(times: int) -> dict[str, Any] | None:
        pod = await get(admin, namespace, "l")
        status = (pod["status"].get("containerStatuses") or [{}])[0]
        return status if int(status.get("restartCount") or 0) >= times else None

    first = await wait_until(lambda: restarted(1), 60, interval_s=0.2, what="the biz reinstalled once")
    assert (first.get("lastState") or {}).get("terminated", {}).get("reason") == "Error"
    assert "failed liveness probe" in first["lastState"]["terminated"]["message"]
    seen_backoff = False

    async def looping() -> dict[str, Any] | None:
        nonlocal seen_backoff
        pod = await get(admin, namespace, "l")
        status = (pod["status"].get("containerStatuses") or [{}])[0]
        waiting = (status.get("state") or {}).get("waiting") or {}
        seen_backoff = seen_backoff or waiting.get("reason") == "CrashLoopBackOff"
        return status if int(status.get("restartCount") or 0) >= 2 else None

    await wait_until(looping, 60, interval_s=0.2, what="a second restart after the backoff")
    installs = sum(v for k, v in (await sim.stats())["installsByBiz"].items() if "biz1" in k)
    assert installs >= 3
    await sim.call("POST", f"/bases/{identity}/bizs/biz1/health", json={"status": 200})
    await wait_until(ready, 60, what="Ready again once healthy")
    figure("liveness_restarts", f"2 restarts, CrashLoopBackOff shown between them: {seen_backoff}")
