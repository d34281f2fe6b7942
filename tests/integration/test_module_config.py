"""Per-module configuration (issue 29, item 4): a module container's args and env reach installBiz as arklet's
``args`` and ``envs``, resolved as the kubelet resolves them; a missing ConfigMap is the kubelet's
CreateContainerConfigError, retried when the ConfigMap appears. Real control plane, simulated bases (which keep what
they were sent)."""

from __future__ import annotations

from typing import Any

from tests.integration.harness import is_ready, module_pod, wait_ready_vnodes, wait_until


async def test_args_and_env_reach_the_biz_and_a_missing_configmap_waits_until_it_appears(
        admin, env_name, namespace, provider_factory, sim_factory):
    provider = await provider_factory()
    sim = await sim_factory(provider.endpoint, "--bases", "1", "--heartbeat-interval", "2", "--identity-prefix",
                            env_name)
    await wait_ready_vnodes(admin, env_name, 1)
    pod = module_pod("c", env_name, labels={"tier": "gold"})
    container = pod["spec"]["containers"][0]
    container["args"] = ["--server.port=$(PORT)", "--tier=$(TIER)"]
    container["env"] += [
        {"name": "PORT", "value": "8081"},
        {"name": "TIER", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['tier']"}}},
        {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "greeting"}}},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
    ]
    await admin.create(f"/api/v1/namespaces/{namespace}/secrets",
                       {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
                        "stringData": {"token": "s3cr3t-value"}})
    await admin.create(f"/api/v1/namespaces/{namespace}/pods", pod)

    async def config_error() -> dict[str, Any] | None:
        shown = await admin.get(f"/api/v1/namespaces/{namespace}/pods/c")
        waiting = (((shown["status"].get("containerStatuses") or [{}])[0].get("state") or {}).get("waiting") or {})
        return waiting if waiting.get("reason") == "CreateContainerConfigError" else None

    waiting = await wait_until(config_error, 60, what="CreateContainerConfigError while the ConfigMap is missing")
    assert 'configmap "settings" not found' in waiting["message"]
    events = await admin.get(f"/api/v1/namespaces/{namespace}/events",
                             params={"fieldSelector": "involvedObject.name=c"})
    assert any(e["type"] == "Warning" and e["reason"] == "Failed" for e in events["items"])
    assert not (await sim.bases())[0]["bizs"]  # nothing was installed
    await admin.create(f"/api/v1/namespaces/{namespace}/configmaps",
                       {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
                        "data": {"greeting": "hello"}})

    async def ready() -> bool:
        return is_ready(await admin.get(f"/api/v1/namespaces/{namespace}/pods/c"))

    await wait_until(ready, 60, what="installed once the ConfigMap appeared")
    biz = (await sim.bases())[0]["bizs"][0]
    assert biz["args"] == ["--server.port=8081", "--tier=gold"]
    assert biz["envs"]["GREETING"] == "hello" and biz["envs"]["TOKEN"] == "s3cr3t-value"
    assert biz["envs"]["BIZ_VERSION"] == "0.0.1"
    # The Secret's value is in no Event and no pod status.
    shown = await admin.get(f"/api/v1/namespaces/{namespace}/pods/c")
    events = await admin.get(f"/api/v1/namespaces/{namespace}/events")
    assert "s3cr3t-value" not in str(shown) and "s3cr3t-value" not in str(events)
    logs = provider.log_path.read_text(errors="replace")
    assert "s3cr3t-value" not in logs
