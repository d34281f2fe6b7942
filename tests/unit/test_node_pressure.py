"""The node controller turns health into the MemoryPressure condition (with hysteresis that survives a restart)
and says when a base's own pod capacity cannot be used (fakes of its ports; the rules: tests/unit/test_resources.py).
"""

from __future__ import annotations

from typing import Any

from tests.unit import fakes
from vkprovider.config import load_settings, node_settings
from vkprovider.controllers.bases import BaseRegistry
from vkprovider.controllers.fence import VnodeWrites
from vkprovider.controllers.nodes import NodeController
from vkprovider.core import node as vnode
from vkprovider.core.model import BaseHealth, BaseHeartbeat, BaseMetadata
from vkprovider.core.node import BaseReadiness

NODE = "vnode.b1.test"
CFG = vnode.NodeConfig(env="test", stack="java", max_pods=100, kubelet_version="v1", kubelet_port=0)


def used(fraction: float) -> BaseHealth:
    mib = 1024 * 1024
    return BaseHealth(cpu_count=4, memory_max_bytes=512 * mib, memory_used_bytes=round(fraction * 512 * mib))


class Rig:
    """One vnode, its Node in an informer-like cache that shows every status written at once."""

    def __init__(self, now: list[float], cache: dict[str, Any], hb: BaseHeartbeat | None = None) -> None:
        self.registry = BaseRegistry("test", clock=lambda: now[0])
        self.registry.heartbeat(hb or fakes.hb("b1"))
        self.cache = cache
        self.api = fakes.Api()
        self.events = fakes.Events()
        self.controller = NodeController(node_settings(load_settings({"ENV": "test"})), self.registry, cache,
                                         fakes.Claims(), VnodeWrites(fakes.Holds(), self.api, self.events, {}), CFG,
                                         clock=lambda: now[0])

    async def look(self, health: BaseHealth | None) -> str | None:
        """Health answered (None: not yet), then a reconcile: the MemoryPressure status written (None: no write)."""
        self.api.calls.clear()
        if health is not None:
            self.registry.health(NODE, health)
        await self.controller.reconcile(NODE)
        written = [body["status"] for _, path, body in self.api.calls if path.endswith("/status")]
        if not written:
            return None
        self.cache[NODE] = {**self.cache[NODE], "status": written[-1]}  # the informer shows it: a new object
        return next(str(c["status"]) for c in written[-1]["conditions"] if c["type"] == "MemoryPressure")


def node_with(pressure: bool) -> dict[str, Any]:
    hb = fakes.hb("b1")
    # the capacity every used() answer gives (cpu 4, 512Mi): only the condition can differ
    status = vnode.with_times(vnode.node_status(hb, used(0.0), CFG, readiness=BaseReadiness.READY, silent_for_s=0,
                                                memory_pressure=pressure), None, "2026-12-02T00:00:00Z")
    node: dict[str, Any] = vnode.new_node(hb, CFG, status)  # type: ignore[assignment]
    node["metadata"]["resourceVersion"] = "1"
    return node


async def test_pressure_follows_health_with_hysteresis_and_events() -> None:
    now = [100.0]
    rig = Rig(now, {NODE: node_with(False)})
    steps = [  # (metaspace use, MemoryPressure written: None = nothing written)
        (0.5, None), (0.88, None), (0.95, "True"), (0.85, None), (0.81, None), (0.7, "False"), (0.85, None),
        (0.91, "True"),
    ]
    for fraction, written in steps:
        now[0] += 2.0
        assert await rig.look(used(fraction)) == written, fraction
    assert [(kind, reason) for kind, reason, _ in rig.events.posted] == [
        ("Normal", "NodeHasInsufficientMemory"), ("Normal", "NodeHasSufficientMemory"),
        ("Normal", "NodeHasInsufficientMemory")]
    assert "metaspace 95% used (486Mi of 512Mi)" in rig.events.posted[0][2]
    assert "VKP_METASPACE_PRESSURE_HIGH=0.9" in rig.events.posted[0][2]
    assert "VKP_METASPACE_PRESSURE_LOW=0.8" in rig.events.posted[1][2]


async def test_a_restart_starts_from_what_the_node_says() -> None:
    """A new process (or a takeover) knows nothing of the base's past: the Node's condition is the state. In the
    band between the marks it stays True; before the first health answer nothing changes at all."""
    now = [100.0]
    cache = {NODE: node_with(True)}
    rig = Rig(now, cache)
    assert await rig.look(None) is None  # no answer yet: True stands (nothing written)
    assert await rig.look(used(0.85)) is None  # between the marks: still True
    assert rig.events.posted == []
    assert await rig.look(used(0.7)) == "False"
    # and one that restarts on a Node saying False stays False in the band
    rig = Rig(now, cache)
    assert await rig.look(used(0.85)) is None
    assert await rig.look(used(0.95)) == "True"


async def test_an_unusable_max_pods_label_is_said_once_and_the_setting_applies() -> None:
    now = [100.0]
    said = BaseHeartbeat(BaseMetadata("b1", "base", "1.0.0", "default"), "h", "127.0.0.1", 1238,
                         labels=(("base.koupleless.io/max-pods", "lots"),))
    rig = Rig(now, {NODE: node_with(False)}, hb=said)
    await rig.look(used(0.5))
    await rig.look(used(0.55))
    rig.registry.heartbeat(said)
    await rig.look(None)
    warnings = [e for e in rig.events.posted if e[0] == "Warning"]
    assert warnings == [("Warning", "InvalidMaxPods",
                         "label base.koupleless.io/max-pods='lots' is not a whole number 1..65535: the vnode's pod "
                         "capacity is 100 (VKP_NODE_MAX_PODS)")]
    assert rig.cache[NODE]["status"]["capacity"]["pods"] == "100"


async def test_a_node_not_seen_yet_does_not_reset_the_pressure_it_shows() -> None:
    """A Node this replica's cache does not show yet (it exists: the create is refused as AlreadyExists) gives no
    state to remember: once the cache shows it, the base in the band between the marks keeps the Node's True."""
    from vkprovider.controllers.queue import Requeue
    from vkprovider.kube.client import ApiError

    now = [100.0]
    cache: dict[str, Any] = {}
    rig = Rig(now, cache)
    rig.registry.health(NODE, used(0.85))

    async def exists(path: str, obj: Any, *, params: Any = None) -> Any:
        raise ApiError(409, "AlreadyExists", f"nodes {NODE} already exists")

    rig.api.create = exists  # type: ignore[method-assign]
    try:
        await rig.controller.reconcile(NODE)
    except Requeue:
        pass
    cache[NODE] = node_with(True)  # the informer catches up
    now[0] += 2.0
    assert await rig.look(used(0.85)) is None  # nothing written: MemoryPressure stays True
    assert rig.cache[NODE]["status"]["conditions"][1]["status"] == "True"
