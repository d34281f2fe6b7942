"""The keyed work queue (one key at a time, no lost changes, backoff) and the base registry's liveness facts."""

import asyncio

from tests.helpers import wait_for
from vkprovider.controllers.bases import BaseRegistry, Heard
from vkprovider.controllers.queue import WorkQueue
from vkprovider.core.backoff import Backoff
from vkprovider.core.model import BaseHeartbeat, BaseMetadata
from vkprovider.core.node import BaseReadiness


async def test_a_key_is_never_handled_twice_at_once_and_changes_during_handling_are_not_lost():
    running: set[str] = set()
    overlaps = 0
    calls: list[str] = []
    gate = asyncio.Event()
    entered = asyncio.Event()

    async def handler(key: str) -> None:
        nonlocal overlaps
        if key in running:
            overlaps += 1
        running.add(key)
        calls.append(key)
        if len(calls) == 1:
            entered.set()
            await gate.wait()
        running.discard(key)

    queue = WorkQueue("t1", handler, workers=4)
    await queue.start()
    queue.add("a")
    await asyncio.wait_for(entered.wait(), 5)
    queue.add("a")  # arrives while "a" is being handled: must run once more afterwards
    queue.add("a")
    gate.set()
    await wait_for(lambda: len(calls) == 2, timeout=5, interval=0.01, what="the second run")
    await wait_for(lambda: not running, timeout=5, interval=0.01)
    await queue.stop()
    assert calls == ["a", "a"] and overlaps == 0


async def test_failures_back_off_and_recover():
    attempts = 0

    async def handler(key: str) -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise RuntimeError("transient")

    queue = WorkQueue("t2", handler, workers=1, backoff=Backoff(0.01, 0.05))
    await queue.start()
    queue.add("k")
    await wait_for(lambda: attempts >= 3, timeout=5, interval=0.01, what="three attempts")
    await queue.stop()
    assert attempts == 3


async def test_handler_can_ask_to_be_called_again_later():
    times: list[float] = []
    loop = asyncio.get_running_loop()

    async def handler(key: str) -> float | None:
        times.append(loop.time())
        return 0.05 if len(times) < 2 else None

    queue = WorkQueue("t3", handler, workers=1)
    await queue.start()
    queue.add("k")
    await wait_for(lambda: len(times) == 2, timeout=5, interval=0.01, what="the timed second call")
    await queue.stop()
    assert times[1] - times[0] >= 0.04


def hb(identity: str = "b1", port: int = 1238, version: str = "1.0.0", state: str = "ACTIVATED") -> BaseHeartbeat:
    return BaseHeartbeat(BaseMetadata(identity, "base", version, "default"), "h", "127.0.0.1", port, state=state)


def test_registry_reports_new_changed_and_restarted_bases_with_an_injected_clock():
    now = [100.0]
    registry = BaseRegistry("dev", clock=lambda: now[0], restart_gap_s=20)
    view, heard = registry.heartbeat(hb())
    assert view.node == "vnode.b1.dev" and heard is Heard.NEW and view.ledger.read_needed()
    view.ledger.apply_read(view.ledger.begin_read(), [])
    now[0] += 12
    _, heard = registry.heartbeat(hb())
    assert heard is Heard.NOTHING and not view.ledger.read_needed()
    now[0] += 12
    _, heard = registry.heartbeat(hb(version="2.0.0"))
    assert heard is Heard.CHANGED
    now[0] += 30  # a gap: the JVM may have restarted and lost its bizs
    _, heard = registry.heartbeat(hb(version="2.0.0"))
    assert heard is Heard.CHANGED and view.ledger.read_needed()
    assert view.silent_for(now[0] + 5) == 5


def test_a_deactivated_base_is_not_alive():
    """A base that says DEACTIVATED (graceful shutdown) does not refresh its liveness: it is NotReady at once."""
    now = [100.0]
    registry = BaseRegistry("dev", clock=lambda: now[0])
    view, _ = registry.heartbeat(hb())
    now[0] += 3
    _, heard = registry.heartbeat(hb(state="DEACTIVATED"))
    assert heard is Heard.CHANGED and view.readiness(now[0], 25) is BaseReadiness.DEACTIVATED
    assert view.last_heard == 100.0
    now[0] += 1
    _, heard = registry.heartbeat(hb())
    assert heard is Heard.CHANGED and view.readiness(now[0], 25) is BaseReadiness.READY


def test_a_base_known_from_its_node_only_is_silent_until_heard_or_answering():
    now = [100.0]
    registry = BaseRegistry("dev", clock=lambda: now[0])
    view = registry.known_from_node(hb())
    assert view.last_heard is None and view.silent_for(110.0) == 10.0
    now[0] = 112.0
    registry.answered(view.node)  # the base answered a probe: alive, wherever its heartbeats go
    assert view.readiness(113.0, 25) is BaseReadiness.READY


async def test_a_reconcile_that_meets_a_fenced_vnode_comes_back() -> None:
    """Held but fenced (a renewal late under apiserver load): no writes now, and the reconcile is re-queued - a
    fence that ends without a lost lease calls no on_gained, so without this the vnode's pods would wait for an
    unrelated event (found by the 1,000-base bench: 1,700 bound pods never installed)."""
    from vkprovider.config import load_settings
    from vkprovider.controllers.modules import ModuleController
    from vkprovider.controllers.nodes import NodeController
    from vkprovider.controllers.ownership import FENCED_RETRY_S
    from vkprovider.kube.informer import UnionCache

    settings = load_settings({"ENV": "test"})
    registry = BaseRegistry("test", clock=lambda: 0.0)
    registry.heartbeat(hb("b1"))
    node = "vnode.b1.test"
    fenced = {node}

    def make(f: set[str]) -> ModuleController:
        return ModuleController(settings, None, registry, UnionCache(), {}, None,  # type: ignore[arg-type]
                                may_write=lambda n: False, fenced=lambda n: n in f, clock=lambda: 0.0)

    assert await make(fenced).reconcile(node) == FENCED_RETRY_S
    assert await make(set()).reconcile(node) is None  # lost: the keeper re-queues on gain

    class Keeper:
        def may_write(self, n: str) -> bool:
            return False

        def fenced(self, n: str) -> bool:
            return n in fenced

    nodes = NodeController.__new__(NodeController)
    nodes.keeper = Keeper()  # type: ignore[assignment]
    nodes.registry = registry
    nodes.nodes = {}  # type: ignore[assignment]
    nodes.clock = lambda: 0.0
    assert await nodes.reconcile(node) == FENCED_RETRY_S


async def test_a_command_task_that_meets_a_fenced_vnode_leaves_nothing_in_flight() -> None:
    """Installs are started in the ledger, then sent by a task; when the task runs the vnode may be fenced (a
    renewal late under load) and it sends nothing. The ledger must not keep that install in flight (the pod would
    wait in ContainerCreating for ever): it is abandoned, the base is read again and the vnode re-queued."""
    from vkprovider.config import load_settings
    from vkprovider.controllers.modules import ModuleController
    from vkprovider.core.model import BizSpec
    from vkprovider.kube.informer import UnionCache

    settings = load_settings({"ENV": "test"})
    registry = BaseRegistry("test", clock=lambda: 0.0)
    registry.heartbeat(hb("b1"))
    node = "vnode.b1.test"
    view = registry.get(node)
    assert view is not None
    controller = ModuleController(settings, None, registry, UnionCache(), {}, None,  # type: ignore[arg-type]
                                  may_write=lambda n: False, fenced=lambda n: True, clock=lambda: 0.0)

    class Unreachable:
        name = "http"

        async def install_biz(self, *args: object, **kw: object) -> None:
            raise AssertionError("a fenced vnode sends no command")

        batch_install_biz = install_biz

    specs = [BizSpec("biz1", "1", "http://x/biz1.jar"), BizSpec("biz2", "1", "http://x/biz2.jar")]
    for batch in (specs[:1], specs):  # one install, and a batch
        controller._start_installs(view, Unreachable(), batch)  # type: ignore[arg-type]
        assert set(view.ledger.inflight) == {s.key for s in batch}
        await wait_for(lambda: not controller._tasks, 2.0, what="the command tasks ended")
        assert view.ledger.inflight == {} and view.ledger.read_needed
        assert node in controller.queue._waiting
