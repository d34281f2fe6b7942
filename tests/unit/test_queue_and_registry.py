"""The keyed work queue (one key at a time, no lost changes, backoff) and the base registry's liveness facts."""

import asyncio
from typing import Any

import pytest

from tests.helpers import wait_for
from tests.unit import fakes
from vkprovider.config import load_settings, node_settings
from vkprovider.controllers.bases import BaseRegistry, Heard
from vkprovider.controllers.fence import FENCED_RETRY_S, Fenced, Hold, VnodeWrites
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


def _cfg() -> Any:
    from vkprovider.core import node as vnode

    return vnode.NodeConfig(env="test", stack="java", max_pods=100, kubelet_version="v1", kubelet_port=0)


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


async def test_a_node_reconcile_that_meets_a_fenced_vnode_comes_back() -> None:
    """Held but fenced (a renewal late under apiserver load): no writes now, and the reconcile is re-queued (the
    module controller's twin: tests/unit/test_module_controller.py)."""
    from vkprovider.controllers.nodes import NodeController

    registry = BaseRegistry("test", clock=lambda: 0.0)
    registry.heartbeat(hb("b1"))
    node = "vnode.b1.test"
    holds = fakes.Holds(Hold.FENCED)
    api = fakes.Api()
    controller = NodeController(node_settings(load_settings({"ENV": "test"})), registry, {}, fakes.Claims(),
                                VnodeWrites(holds, api, fakes.Events(), {}), _cfg(), clock=lambda: 0.0)
    with pytest.raises(Fenced) as fenced:  # the queue looks again after FENCED_RETRY_S
        await controller.reconcile(node)
    assert fenced.value.delay_s == FENCED_RETRY_S and api.calls == []


async def test_a_heartbeat_paced_look_at_an_unchanged_base_computes_and_writes_nothing(monkeypatch) -> None:
    """A held vnode is looked at about once per heartbeat period (its silence deadlines). When neither its Node,
    nor the base's heartbeat or health, nor its readiness changed since a pass found the Node in sync, the look
    computes no status (issue 17: node reconciles were 5-6 % of vkprovider's steady CPU at 1,000 bases); any
    change of one of them is compared and written again."""
    from vkprovider.config import load_settings
    from vkprovider.controllers import nodes as nodes_module
    from vkprovider.controllers.nodes import NodeController
    from vkprovider.core import node as vnode
    from vkprovider.core.model import BaseHealth

    settings = load_settings({"ENV": "test"})
    now = [100.0]
    registry = BaseRegistry("test", clock=lambda: now[0])
    registry.heartbeat(hb("b1"))
    node = "vnode.b1.test"
    cfg = vnode.NodeConfig(env="test", stack="java", max_pods=100, kubelet_version="v1", kubelet_port=0)
    health = BaseHealth(cpu_count=4, memory_max_bytes=2**30)
    registry.health(node, health)
    view = registry.get(node)
    assert view is not None
    status = vnode.with_times(vnode.node_status(view.heartbeat, health, cfg, readiness=BaseReadiness.READY,
                                                silent_for_s=0), None, "2026-12-02T00:00:00Z")
    created = vnode.new_node(view.heartbeat, cfg, status)
    created["metadata"]["resourceVersion"] = "1"  # type: ignore[index]
    cache = {node: created}

    api = fakes.Api()
    computed = []
    real = nodes_module.vnode.node_status

    def counting(*args: object, **kw: object) -> dict[str, object]:
        computed.append(1)
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(nodes_module.vnode, "node_status", counting)
    controller = NodeController(node_settings(settings), registry, cache, fakes.Claims(),
                                VnodeWrites(fakes.Holds(), api, fakes.Events(), {}), cfg, clock=lambda: now[0])

    def writes() -> list[tuple[str, object]]:
        return [(path, body) for _, path, body in api.calls]

    assert await controller.reconcile(node) is not None
    assert (len(computed), writes()) == (1, [])  # compared once: in sync
    for _ in range(3):  # heartbeats and health answers that say the same
        now[0] += 12.0
        assert registry.heartbeat(hb("b1"))[1] is Heard.NOTHING
        assert registry.health(node, BaseHealth(cpu_count=4, memory_max_bytes=2**30)) is False
        await controller.reconcile(node)
    assert (len(computed), writes()) == (1, [])
    registry.heartbeat(hb("b1", version="2.0.0"))  # the base changed: compared and written
    await controller.reconcile(node)
    assert len(computed) == 2 and [p for p, _ in writes()] == [f"/api/v1/nodes/{node}", f"/api/v1/nodes/{node}/status"]
    api.calls.clear()
    # the informer shows our writes (their answer's resourceVersion), then someone edits the Node: a new object
    ours = {**created, "metadata": {**created["metadata"], "resourceVersion": str(api.last_rv)}}
    controller.on_node_change(node, created, ours)
    edited = {**created, "metadata": {**created["metadata"], "resourceVersion": "9999"},
              "status": {**status, "conditions": []}}
    controller.on_node_change(node, ours, edited)
    cache[node] = edited
    await controller.reconcile(node)
    assert len(computed) == 3 and f"/api/v1/nodes/{node}/status" in [p for p, _ in writes()]
    now[0] += 30.0  # silent past VKP_BASE_UNREACHABLE_AFTER: readiness changed, compared again
    await controller.reconcile(node)
    assert len(computed) == 4


async def test_a_reconcile_before_the_informer_shows_a_created_node_does_not_create_it_again() -> None:
    """The health answer of a new base queues its vnode again while the first reconcile creates the Node; that
    second pass runs before the watch delivers the Node. It must use the create's answer, not POST again (a
    quarter of the vnodes of a 1,000-base start got an AlreadyExists and a requeue)."""
    from vkprovider.config import load_settings
    from vkprovider.controllers.nodes import NodeController
    from vkprovider.core import node as vnode
    from vkprovider.core.model import BaseHealth

    settings = load_settings({"ENV": "test"})
    registry = BaseRegistry("test", clock=lambda: 100.0)
    registry.heartbeat(hb("b1"))
    node = "vnode.b1.test"
    registry.health(node, BaseHealth(cpu_count=4, memory_max_bytes=2**30))
    cfg = vnode.NodeConfig(env="test", stack="java", max_pods=100, kubelet_version="v1", kubelet_port=0)
    cache: dict[str, dict[str, Any]] = {}
    api = fakes.Api()
    controller = NodeController(node_settings(settings), registry, cache, fakes.Claims(),
                                VnodeWrites(fakes.Holds(), api, fakes.Events(), {}), cfg, clock=lambda: 100.0)
    await controller.reconcile(node)
    await controller.reconcile(node)  # the watch has not shown the Node yet
    assert [verb for verb, _, _ in api.calls] == ["create"]
    shown = {"metadata": {"name": node, "resourceVersion": "1"}}
    cache[node] = shown
    controller.on_node_change(node, None, shown)
    assert node not in controller._created


async def test_a_probe_answered_after_a_deactivated_heartbeat_does_not_bring_the_vnode_back() -> None:
    """Item 10a of issue 27: a health probe is sent while the base serves; before it is answered the base says
    DEACTIVATED in a heartbeat (graceful shutdown); the probe's answer (ACTIVATED, as the base was when asked)
    comes after. Before, the probe path wrote ``deactivated`` itself and flipped the vnode back to Ready once; the
    registry is now the one writer, and an answer older than the latest heartbeat does not overrule it."""
    from vkprovider.config import load_settings
    from vkprovider.controllers.nodes import NodeController
    from vkprovider.core import node as vnode
    from vkprovider.core.model import BaseHealth

    settings = load_settings({"ENV": "test"})
    now = [100.0]
    registry = BaseRegistry("test", clock=lambda: now[0])
    view, _ = registry.heartbeat(hb("b1"))
    node = view.node
    asked = asyncio.Event()
    answer = asyncio.Event()

    class Tunnel(fakes.Tunnel):
        async def health(self, base: object) -> BaseHealth:
            asked.set()
            await answer.wait()
            return BaseHealth(cpu_count=2, master_biz_state="ACTIVATED")

    cfg = vnode.NodeConfig(env="test", stack="java", max_pods=100, kubelet_version="v1", kubelet_port=0)
    controller = NodeController(node_settings(settings), registry, {}, fakes.Claims(),
                                VnodeWrites(fakes.Holds(), fakes.Api(), fakes.Events(), {"http": Tunnel()}), cfg,
                                clock=lambda: now[0])
    probe = controller.health.start(node)
    await asyncio.wait_for(asked.wait(), 5)
    now[0] += 1.0
    registry.heartbeat(hb("b1", state="DEACTIVATED"))  # the base shuts down while the probe is on the wire
    assert view.readiness(now[0], 25) is BaseReadiness.DEACTIVATED
    now[0] += 1.0
    answer.set()
    await asyncio.wait_for(probe, 5)
    assert view.deactivated and view.readiness(now[0], 25) is BaseReadiness.DEACTIVATED
    assert view.health is not None and view.health.cpu_count == 2  # its resources are still news
    # A probe sent after the heartbeat is newer: the base is serving again.
    answer.clear()
    asked.clear()
    probe = controller.health.start(node)
    await asyncio.wait_for(asked.wait(), 5)
    now[0] += 1.0
    answer.set()
    await asyncio.wait_for(probe, 5)
    assert not view.deactivated and view.readiness(now[0], 25) is BaseReadiness.READY


@pytest.mark.parametrize(
    ("said", "sent_before_it", "answered", "deactivated"),
    [
        ("DEACTIVATED", True, "ACTIVATED", True),  # the answer is older than the shutdown: the heartbeat stands
        ("DEACTIVATED", False, "ACTIVATED", False),  # asked after the shutdown and it serves: back
        ("ACTIVATED", True, "DEACTIVATED", False),  # an old answer of a shutdown the base has come back from
        ("ACTIVATED", False, "DEACTIVATED", True),  # asked after the heartbeat: it is shutting down now
        ("ACTIVATED", False, None, False),  # an answer that does not say (the Go controller's arklet): alive
    ],
)
def test_the_registry_is_the_one_writer_of_deactivated_and_the_newest_word_wins(
        said: str, sent_before_it: bool, answered: str | None, deactivated: bool) -> None:
    from vkprovider.core.model import BaseHealth

    now = [100.0]
    registry = BaseRegistry("dev", clock=lambda: now[0])
    view, _ = registry.heartbeat(hb())
    now[0] = 110.0
    registry.heartbeat(hb(state=said))  # at 110; the probe was sent at 109 (before it) or 111 (after it)
    now[0] = 112.0  # answered
    registry.probed(view.node, BaseHealth(master_biz_state=answered), sent_at=109.0 if sent_before_it else 111.0)
    assert view.deactivated is deactivated
    assert (view.last_heard == 112.0) is (not deactivated)  # an answer is a sign of life unless it is shutting down


def _node_showing(ready: str | None, identity: str = "b1") -> dict[str, Any]:
    """A vnode as the informer shows it, its Ready condition saying ``ready`` (None: no condition yet)."""
    from vkprovider.core import node as vnode

    cfg = vnode.NodeConfig(env="test", stack="java", max_pods=100, kubelet_version="v1", kubelet_port=0)
    readiness = {"True": BaseReadiness.READY, "False": BaseReadiness.DEACTIVATED}.get(
        str(ready), BaseReadiness.UNREACHABLE)
    status = vnode.with_times(vnode.node_status(hb(identity), None, cfg, readiness=readiness, silent_for_s=0),
                              None, "2026-12-02T00:00:00Z")
    if ready is None:
        status["conditions"] = []
    node: dict[str, Any] = vnode.new_node(hb(identity), cfg, status)  # type: ignore[assignment]
    node["metadata"]["resourceVersion"] = "1"
    return node


def _standby(now: list[float], probe: Any) -> tuple[Any, BaseRegistry, dict[str, Any], Any, Any]:
    """A NodeController of a standby replica (started at ``now[0]``) that never hears base b1, whose Node the
    informer shows; ``probe()`` is the base's answer to a health probe (raise TunnelError: no answer). The vnode is
    held from ``holds.of[node] = Hold.HELD`` on (a takeover); somebody else holds it before."""
    from vkprovider.config import load_settings
    from vkprovider.controllers.nodes import NodeController
    from vkprovider.core import node as vnode

    settings = load_settings({"ENV": "test", "VKP_BASE_UNREACHABLE_AFTER": "25", "VKP_BASE_DEAD_AFTER": "600"})
    registry = BaseRegistry("test", clock=lambda: now[0])

    class Tunnel(fakes.Tunnel):
        async def health(self, base: object) -> Any:
            return probe()

    cfg = vnode.NodeConfig(env="test", stack="java", max_pods=100, kubelet_version="v1", kubelet_port=0)
    cache: dict[str, Any] = {}
    holds = fakes.Holds(Hold.LOST)
    api = fakes.Api()
    controller = NodeController(node_settings(settings), registry, cache, fakes.Claims(lease=object()),
                                VnodeWrites(holds, api, fakes.Events(), {"http": Tunnel()}), cfg,
                                clock=lambda: now[0])
    return controller, registry, cache, holds, api


def _deleted(api: Any) -> list[str]:
    """The Nodes deleted through the fake API."""
    return [path for verb, path, _ in api.calls if verb == "delete"]


def _show(controller: Any, cache: dict[str, Any], ready: str | None) -> None:
    node = "vnode.b1.test"
    old = cache.get(node)
    cache[node] = _node_showing(ready)
    controller.on_node_change(node, old, cache[node])


@pytest.mark.parametrize(
    ("unready_at", "taken_at", "deleted"),
    [
        # (a standby started at 0 never hears the base; its Node shows it not Ready from ``unready_at``, the
        # standby takes the vnode over at ``taken_at``; VKP_BASE_DEAD_AFTER is 600)
        (900.0, 1000.0, False),  # up 1,000 s, base silent ~100 s: before, deleted at once (silent "since 0")
        (300.0, 1000.0, True),  # silent for 700 s as the Node showed it: past the dead window (after a probe)
        (None, 1000.0, False),  # the Node says Ready at the takeover: alive until a probe says otherwise
    ],
)
async def test_a_takeover_counts_a_base_silence_from_what_the_node_showed_not_from_the_standby_start(
        unready_at: float | None, taken_at: float, deleted: bool) -> None:
    """Issue 27, item 2: a standby replica's view of a base it never heard counted silence from its own start, so a
    takeover of a vnode whose Node was not Ready deleted the Node at once, skipping the dead window."""
    from vkprovider.tunnels.base import TunnelError

    def no_answer() -> object:
        raise TunnelError("connection refused")

    now = [0.0]
    controller, registry, cache, holds, api = _standby(now, no_answer)
    _show(controller, cache, "True")
    if unready_at is not None:
        now[0] = unready_at
        _show(controller, cache, "Unknown")
    now[0] = taken_at
    holds.of["vnode.b1.test"] = Hold.HELD
    controller.on_gained("vnode.b1.test")
    await controller.reconcile("vnode.b1.test")
    await asyncio.gather(*controller.health.tasks.values())  # the takeover's probe: no answer
    await controller.reconcile("vnode.b1.test")
    assert (_deleted(api) == ["/api/v1/nodes/vnode.b1.test"]) is deleted, api.calls
    if not deleted:  # it goes only once the silence counted from the Node passes the dead window
        now[0] = (unready_at if unready_at is not None else taken_at) + 600.5
        await controller.reconcile("vnode.b1.test")
        await asyncio.gather(*controller.health.tasks.values())
        await controller.reconcile("vnode.b1.test")
        assert _deleted(api) == ["/api/v1/nodes/vnode.b1.test"]


async def test_a_takeover_asks_the_base_before_deleting_its_node_and_an_answer_keeps_it() -> None:
    """Past the dead window by everything the Node showed, a base that answers the takeover's probe is alive:
    its Node stays (and turns Ready)."""
    from vkprovider.core.model import BaseHealth

    now = [0.0]
    asked: list[float] = []

    def answer() -> object:
        asked.append(now[0])
        return BaseHealth(cpu_count=2, master_biz_state="ACTIVATED")

    controller, registry, cache, holds, api = _standby(now, answer)
    _show(controller, cache, "Unknown")
    now[0] = 700.0
    holds.of["vnode.b1.test"] = Hold.HELD
    controller.on_gained("vnode.b1.test")
    await controller.reconcile("vnode.b1.test")
    assert _deleted(api) == [] and controller.health.tasks  # asked first
    await asyncio.gather(*controller.health.tasks.values())
    assert asked == [700.0]
    await controller.reconcile("vnode.b1.test")
    view = registry.get("vnode.b1.test")
    assert _deleted(api) == [] and view is not None and view.readiness(now[0], 25) is BaseReadiness.READY


@pytest.mark.parametrize(
    ("shown", "seen_unready_at", "silent_at_1000"),
    [
        (["True"], None, 0.0),  # Ready at the takeover: counted alive then
        (["True", "Unknown"], 400.0, 600.0),  # silent since this replica saw it go Unknown
        (["Unknown", "Unknown"], 100.0, 900.0),  # a status refresh of a silent base moves nothing
        (["Unknown", "True", "False"], 700.0, 300.0),  # back, then deactivated: from the latest change
        ([None], None, 0.0),  # no Ready condition: no evidence of silence, counted from the takeover
    ],
)
def test_a_base_known_from_its_node_is_silent_since_its_node_first_showed_it_not_ready(
        shown: list[str | None], seen_unready_at: float | None, silent_at_1000: float) -> None:
    now = [100.0]
    registry = BaseRegistry("dev", clock=lambda: now[0])
    view = registry.known_from_node(hb())
    for ready in shown:
        registry.shown(view.node, ready)
        now[0] += 300.0
    assert view.shown_unready_since == seen_unready_at
    now[0] = 1000.0
    registry.adopted(view.node, shown[-1])
    assert view.silent_for(1000.0) == silent_at_1000


def test_every_health_answer_is_a_reading_even_one_that_changes_nothing_the_node_shows():
    """kubectl top node reads what the base uses from the registry's last two readings; the Node's view of the
    base (``view.health``) keeps its object when an answer differs only in usage, so nothing is recomputed."""
    from vkprovider.core.model import BaseHealth, CpuTicks

    wall = [1_800_000_000.0]
    registry = BaseRegistry("dev", clock=lambda: 5.0, wall=lambda: wall[0])
    view, _ = registry.heartbeat(hb())
    first = BaseHealth(cpu_count=4, cpu=CpuTicks(1000, 10, 5), heap_used_bytes=100)
    assert registry.health(view.node, first) is True
    wall[0] += 15
    busier = BaseHealth(cpu_count=4, cpu=CpuTicks(61000, 20, 5), heap_used_bytes=300)
    assert registry.health(view.node, busier) is False  # nothing the Node shows changed
    assert view.health is first
    assert view.reading is not None and view.earlier_reading is not None
    assert (view.reading.at, view.reading.health) == (1_800_000_015.0, busier)
    assert view.reading.health.heap_used_bytes == 300 and view.earlier_reading.health.heap_used_bytes == 100


async def test_scrapes_that_find_an_old_answer_share_one_health_read_and_wait_a_bounded_time() -> None:
    """A scrape of a vnode's metrics asks its base again (read_health); scrapes meanwhile wait for that same read,
    and none waits longer than it is told (the read goes on and lands in the registry)."""
    from vkprovider.controllers.nodes import NodeController
    from vkprovider.core.model import BaseHealth

    registry = BaseRegistry("test", clock=lambda: 0.0)
    view, _ = registry.heartbeat(hb("b1"))
    answer = asyncio.Event()
    asked: list[int] = []

    class Tunnel(fakes.Tunnel):
        async def health(self, base: object) -> BaseHealth:
            asked.append(1)
            await answer.wait()
            return BaseHealth(cpu_count=2, heap_used_bytes=42)

    controller = NodeController(node_settings(load_settings({"ENV": "test"})), registry, {}, fakes.Claims(),
                                VnodeWrites(fakes.Holds(), fakes.Api(), fakes.Events(), {"http": Tunnel()}), _cfg(),
                                clock=lambda: 0.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.gather(*(controller.health.read(view.node, 0.2) for _ in range(3)))
    assert 0.2 <= loop.time() - started < 2.0 and asked == [1] and view.reading is None
    answer.set()  # the one read lands in the registry after all
    await wait_for(lambda: view.reading is not None, timeout=5, what="the health answer recorded")
    assert asked == [1] and view.reading is not None and view.reading.health.heap_used_bytes == 42
