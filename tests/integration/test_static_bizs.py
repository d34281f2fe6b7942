"""Bizs that ship inside the base (static merge deployment) on the real control plane: the orphan clean-up leaves
them alone, while a biz installed by hand on the base is still uninstalled after VKP_ORPHAN_GRACE
(``core.staticbizs``; docs/operations.md, "Bizs that ship inside the base")."""

from __future__ import annotations

import json
import time
from typing import Any

from tests.integration.harness import uninstalls, wait_ready_vnodes, wait_until
from vkprovider.core.staticbizs import ANNOTATION_STATIC_BIZS, SAME_START_S
from vkprovider.kube.client import Kube

GRACE = "3"


async def _start(admin: Kube, provider_factory: Any, sim_factory: Any, env: str, *sim_args: str,
                 **provider_env: str) -> tuple[Any, Any, str, str]:
    provider = await provider_factory(VKP_ORPHAN_GRACE=GRACE, VKP_BASE_QUERY_INTERVAL="2", **provider_env)
    sim = await sim_factory(provider.endpoint, "--bases", "1", "--heartbeat-interval", "2",
                            "--identity-prefix", env, *sim_args)
    node = (await wait_ready_vnodes(admin, env, 1))[0]["metadata"]["name"]
    return provider, sim, node, node.split(".")[1]


async def _bizs(sim: Any) -> set[str]:
    return {f"{b['bizName']}:{b['bizVersion']}" for b in (await sim.bases())[0]["bizs"]}


async def _recorded(admin: Kube, node: str) -> dict[str, Any] | None:
    got = await admin.get(f"/api/v1/nodes/{node}")
    text = ((got.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_STATIC_BIZS)
    return json.loads(text) if text else None


async def _wait_recorded(admin: Kube, node: str, bizs: list[str], *, not_started_at: int | None = None) -> Any:
    async def recorded() -> Any:
        value = await _recorded(admin, node)
        ok = value is not None and value["bizs"] == bizs and value["startedAt"] != not_started_at
        return value if ok else None

    return await wait_until(recorded, 60, what=f"{bizs} recorded on {node}")


async def _hand_installed_goes(sim: Any, identity: str, biz: str) -> None:
    """A biz installed on the base behind vkprovider's back, after the base registered: an orphan, uninstalled
    after the grace."""
    name, version = biz.split(":")
    await sim.install_direct(identity, name, version)
    assert biz in await _bizs(sim)

    async def gone() -> bool:
        return biz not in await _bizs(sim)

    await wait_until(gone, 60, what=f"the hand-installed {biz} uninstalled after the grace")


async def _events(admin: Kube, node: str) -> list[str]:
    got = await admin.get("/api/v1/namespaces/default/events",
                          params={"fieldSelector": f"involvedObject.name={node},reason=StaticBizsRecorded"})
    return [e["message"] for e in got["items"]]


async def test_a_shipped_biz_stays_past_the_grace_and_across_a_restart_of_vkprovider(
        admin, env_name, provider_factory, sim_factory):
    """Before: shipped:1.0 (in the base at its start, no pod) was uninstalled VKP_ORPHAN_GRACE after the base
    registered. Now it is recorded on the Node and stays; a biz installed by hand later still goes, also after
    vkprovider restarted (it reads the record back from the Node)."""
    provider, sim, node, identity = await _start(admin, provider_factory, sim_factory, env_name,
                                                 "--static-biz", "shipped:1.0")
    first = await _wait_recorded(admin, node, ["shipped:1.0"])
    assert any("shipped:1.0" in m for m in await wait_until(lambda: _events(admin, node), 30,
                                                             what="a StaticBizsRecorded Event"))
    await _hand_installed_goes(sim, identity, "byhand:1.0")  # the orphan clean-up ran, past shipped's grace
    assert "shipped:1.0" in await _bizs(sim)

    provider.kill()
    await provider_factory(VKP_ORPHAN_GRACE=GRACE, VKP_BASE_QUERY_INTERVAL="2")
    await wait_ready_vnodes(admin, env_name, 1, timeout_s=60)
    await _hand_installed_goes(sim, identity, "byhand:2.0")
    assert "shipped:1.0" in await _bizs(sim)
    assert await _recorded(admin, node) == first  # the same JVM run: not recorded again
    assert not any(k.endswith("shipped:1.0") for k in await uninstalls(sim))


async def test_the_setting_names_bizs_the_bases_ship(admin, env_name, provider_factory, sim_factory):
    """VKP_STATIC_BIZS=preset (every version): a preset biz that appears on the base later is never uninstalled,
    while another hand-installed biz goes after the grace."""
    provider, sim, node, identity = await _start(admin, provider_factory, sim_factory, env_name,
                                                 VKP_STATIC_BIZS="preset")
    await _wait_recorded(admin, node, [])  # nothing inside at the start
    await sim.install_direct(identity, "preset", "2.0")
    await _hand_installed_goes(sim, identity, "byhand:1.0")
    assert "preset:2.0" in await _bizs(sim)
    assert not any(k.endswith("preset:2.0") for k in await uninstalls(sim))


async def test_a_base_restarted_with_other_bizs_inside_is_recorded_again(admin, env_name, provider_factory,
                                                                         sim_factory):
    provider, sim, node, identity = await _start(admin, provider_factory, sim_factory, env_name,
                                                 "--static-biz", "shipped:1.0")
    first = await _wait_recorded(admin, node, ["shipped:1.0"])
    await _hand_installed_goes(sim, identity, "byhand:0.9")

    async def a_run_later() -> bool:
        # A real JVM takes longer than SAME_START_S to restart (two starts closer than that are one run); the
        # simulator's restart is instant.
        return time.time() * 1000 > first["startedAt"] + (SAME_START_S + 1) * 1000

    await wait_until(a_run_later, 30, what="the base's run older than SAME_START_S")
    await sim.stop_base(identity)
    await sim.start_base(identity, static_bizs=["other:2.0"])
    await _wait_recorded(admin, node, ["other:2.0"], not_started_at=first["startedAt"])
    await _hand_installed_goes(sim, identity, "byhand:1.0")
    assert "other:2.0" in await _bizs(sim)
    assert not any(k.endswith("other:2.0") for k in await uninstalls(sim))
