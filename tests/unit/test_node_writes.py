"""A change is written to a Node once: a Node event that the cache delivers before the one of vkprovider's own write
(another manager reacting to the same change, e.g. the TTL controller's annotation) shows the Node as it was
before that write; it must not make vkprovider write the same thing again (fakes of the controller's ports)."""

from __future__ import annotations

import copy
from typing import Any

from tests.unit.test_node_pressure import NODE, Rig, node_with, used


def meta_patches(rig: Rig) -> list[Any]:
    return [body for verb, path, body in rig.api.calls if verb == "patch" and not path.endswith("/status")]


async def test_an_event_older_than_our_own_write_does_not_repeat_it() -> None:
    now = [100.0]
    node = node_with(False)
    del node["metadata"]["labels"]["type"]  # removed by hand: vkprovider puts it back
    cache = {NODE: node}
    rig = Rig(now, cache)
    rig.registry.health(NODE, used(0.5))
    await rig.controller.reconcile(NODE)
    (first,) = meta_patches(rig)
    assert first["metadata"]["labels"] == {"type": "virtual-kubelet"}
    # Another manager's write of the Node as it was (no type label) reaches the cache before vkprovider's own.
    older = copy.deepcopy(node)
    older["metadata"]["resourceVersion"] = "2"
    older["metadata"].setdefault("annotations", {})["node.alpha.kubernetes.io/ttl"] = "15"
    cache[NODE] = older
    rig.controller.on_node_change(NODE, node, older)
    now[0] += 0.5
    rig.api.calls.clear()
    await rig.controller.reconcile(NODE)
    assert meta_patches(rig) == []  # the label is on its way: not written twice
    # Once vkprovider's write shows, a later removal by hand is put back again.
    answer_rv = str(rig.api.last_rv - 0)
    mine = copy.deepcopy(older)
    mine["metadata"]["labels"]["type"] = "virtual-kubelet"
    mine["metadata"]["resourceVersion"] = answer_rv
    cache[NODE] = mine
    rig.controller.on_node_change(NODE, older, mine)
    removed = copy.deepcopy(mine)
    del removed["metadata"]["labels"]["type"]
    removed["metadata"]["resourceVersion"] = "999"
    cache[NODE] = removed
    rig.controller.on_node_change(NODE, mine, removed)
    now[0] += 0.5
    await rig.controller.reconcile(NODE)
    assert [p["metadata"]["labels"] for p in meta_patches(rig)] == [{"type": "virtual-kubelet"}]
