"""Fencing lives in the write port (issue 28): no write reaches the API or a base for a vnode this replica does not
hold, whatever the caller does - every write method of the port, and the module controller driven through every
path that writes, with the vnode fenced and with it lost."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_for
from tests.unit import fakes
from vkprovider.config import load_settings, module_settings
from vkprovider.controllers.bases import BaseRegistry
from vkprovider.controllers.fence import Fenced, Hold, Lost, VnodeWrites
from vkprovider.controllers.modules import ModuleController
from vkprovider.core.model import BizInfo, BizSpec, BizState
from vkprovider.core.plan import Replace

NODE = "vnode.b1.test"
V1 = BizSpec("biz1", "0.0.1", "https://h/biz1-0.0.1-ark-biz.jar")


def pod(name: str, *, biz: str = "biz1", module: bool = True, terminating: bool = False) -> dict[str, Any]:
    labels = {"virtual-kubelet.koupleless.io/component": "module"} if module else {}
    md: dict[str, object] = {"namespace": "ns", "name": name, "uid": f"u-{name}", "resourceVersion": "1",
                             "labels": labels}
    if terminating:
        md |= {"deletionTimestamp": "2026-01-01T00:00:00Z", "deletionGracePeriodSeconds": 0}
    return {"metadata": md,
            "spec": {"nodeName": NODE, "containers": [{"name": biz, "image": f"https://h/{biz}-0.0.1-ark-biz.jar",
                                                       "env": [{"name": "BIZ_VERSION", "value": "0.0.1"}]}]},
            "status": {"phase": "Pending"}}


@pytest.mark.parametrize("hold", [Hold.FENCED, Hold.LOST])
async def test_no_write_reaches_the_api_or_a_base_for_a_vnode_not_held(hold: Hold) -> None:
    holds = fakes.Holds(hold)
    api, events = fakes.Api(), fakes.Events()
    tunnel = fakes.Tunnel([BizInfo("orphan", "9", BizState.ACTIVATED), BizInfo("biz1", "0.0.1", BizState.ACTIVATED)])
    writes = VnodeWrites(holds, api, events, {"http": tunnel})
    outcome = Fenced if hold is Hold.FENCED else Lost

    # Every write method of the port.
    scope = writes.scope(NODE)
    base = fakes.hb("b1")
    calls = [scope.create_node({"metadata": {"name": NODE}}), scope.patch_node({}), scope.patch_node_status({}),
             scope.delete_node(), scope.patch_pod_status("ns", "p", {}), scope.delete_pod("ns", "p", {}),
             scope.install_biz(base, V1), scope.install_biz(base, V1, replace=True),
             scope.batch_install_biz(base, [V1]), scope.uninstall_biz(base, "biz1", "0.0.1")]
    for call in calls:
        with pytest.raises(outcome):
            await call
    scope.normal({"kind": "Pod"}, "R", "m")
    scope.warning({"kind": "Pod"}, "R", "m")

    # The module controller, through every path that writes: a pass (install, uninstall of an orphan, a deleted pod
    # to finalize, a non-module pod to mark, statuses), commands started directly, a status handed over directly,
    # a baseline answered, a pushed biz list.
    registry = BaseRegistry("test", clock=lambda: 100.0)
    registry.heartbeat(base)
    controller = ModuleController(module_settings(load_settings({"ENV": "test", "VKP_ORPHAN_GRACE": "0"})),
                                  registry, writes, clock=lambda: 100.0)
    for p in (pod("a", biz="biz2"), pod("gone", terminating=True), pod("plain", module=False), pod("keep")):
        controller.on_pod_change(f"ns/{p['metadata']['name']}", None, p)
    await controller.start()
    try:
        controller.queue.add(NODE)
        with pytest.raises(outcome):
            await controller.bases.run(NODE)
        view = registry.get(NODE)
        assert view is not None
        view.ledger.apply_read(view.ledger.begin_read(), await tunnel.query_all_biz(base))
        controller.commands.start_installs(view, [BizSpec("biz2", "0.0.1", "https://h/biz2.jar"), V1],
                                           {V1.key: Replace.FIRST})
        controller.commands.start_reinstall(view, BizSpec("biz1", "0.0.1", "https://h/other.jar"), Replace.FIRST)
        controller.commands.start_uninstall(view, BizInfo("orphan", "9", BizState.ACTIVATED).key)
        record = controller.index.get("ns/keep")
        assert record is not None
        controller.statuses.want(record, NODE, {"phase": "Running"})
        controller.baseline(NODE, "default")
        controller.on_pushed_bizs(NODE, [])
        await wait_for(lambda: not controller.commands.running(NODE), 2.0, what="command tasks ended")
        await asyncio.sleep(0.05)  # the queues' workers had their turn
    finally:
        await controller.stop()
    assert api.calls == []
    assert [c for c in tunnel.commands if c[0] != "release"] == []
    assert events.posted == []


def test_controllers_hold_no_handle_that_writes_around_the_port() -> None:
    """By construction: the module controller is built without the kube facade or a tunnel, and no module of it
    calls a write of either (``.patch(``, ``.create(``, ``.delete(``, ``install_biz(`` ... on anything but a
    VnodeScope it got from the port)."""
    import inspect

    params = inspect.signature(ModuleController.__init__).parameters
    assert "kube" not in params and "tunnels" not in params and "events" not in params
    root = Path(__file__).resolve().parents[2] / "vkprovider" / "controllers" / "modules"
    writes = {"patch", "create", "delete", "request", "install_biz", "uninstall_biz", "batch_install_biz"}
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in writes:
                target = ast.unparse(node.func.value)
                assert target == "scope", f"{path.name}: {ast.unparse(node)} writes around the port"
