"""The keyed work queue (one key at a time, no lost changes, backoff) and the base registry's liveness facts."""

import asyncio

from vkprovider.controllers.bases import BaseRegistry
from vkprovider.controllers.queue import WorkQueue
from vkprovider.core.model import BaseHeartbeat, BaseMetadata


async def test_a_key_is_never_handled_twice_at_once_and_changes_during_handling_are_not_lost():
    running: set[str] = set()
    overlaps = 0
    calls: list[str] = []
    gate = asyncio.Event()

    async def handler(key: str) -> None:
        nonlocal overlaps
        if key in running:
            overlaps += 1
        running.add(key)
        calls.append(key)
        if len(calls) == 1:
            await gate.wait()
        running.discard(key)

    queue = WorkQueue("t1", handler, workers=4)
    await queue.start()
    queue.add("a")
    await asyncio.sleep(0.01)
    queue.add("a")  # arrives while "a" is being handled: must run once more afterwards
    queue.add("a")
    gate.set()
    await asyncio.sleep(0.05)
    await queue.stop()
    assert calls == ["a", "a"] and overlaps == 0


async def test_failures_back_off_and_recover():
    attempts = 0

    async def handler(key: str) -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise RuntimeError("transient")

    queue = WorkQueue("t2", handler, workers=1, base_backoff_s=0.01, max_backoff_s=0.05)
    await queue.start()
    queue.add("k")
    await asyncio.sleep(0.3)
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
    await asyncio.sleep(0.2)
    await queue.stop()
    assert len(times) == 2 and times[1] - times[0] >= 0.04


def hb(identity: str = "b1", port: int = 1238, version: str = "1.0.0") -> BaseHeartbeat:
    return BaseHeartbeat(BaseMetadata(identity, "base", version, "default"), "h", "127.0.0.1", port)


def test_registry_reports_new_changed_and_restarted_bases_with_an_injected_clock():
    now = [100.0]
    registry = BaseRegistry("dev", clock=lambda: now[0], restart_gap_s=20)
    view, changed, reread = registry.heartbeat(hb())
    assert view.node == "vnode.b1.dev" and changed and reread
    view.bizs_stale = False
    now[0] += 12
    _, changed, reread = registry.heartbeat(hb())
    assert not changed and not reread and not view.bizs_stale
    now[0] += 12
    _, changed, _ = registry.heartbeat(hb(version="2.0.0"))
    assert changed
    now[0] += 30  # a gap: the JVM may have restarted and lost its bizs
    _, _, reread = registry.heartbeat(hb(version="2.0.0"))
    assert reread and view.bizs_stale
    assert view.silent_for(now[0] + 5) == 5
