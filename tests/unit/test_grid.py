"""The timer grid: timers far ahead land on a shared step, so the work they start comes in one wake-up."""

from __future__ import annotations

import asyncio
import math

import pytest

from tests.helpers import wait_for
from tests.unit import fakes
from tests.unit.test_queue_and_registry import _cfg, hb
from vkprovider.config import load_settings, node_settings
from vkprovider.controllers.bases import BaseRegistry
from vkprovider.controllers.fence import VnodeWrites
from vkprovider.controllers.queue import WorkQueue
from vkprovider.core.grid import next_tick, on_grid, round_down, round_up, step_for
from vkprovider.core.model import BaseHealth, BaseHeartbeat


@pytest.mark.parametrize(("delay_s", "step"), [
    (30.0, 1.0), (15.2, 1.0), (8.0, 1.0), (7.9, 0.5), (4.0, 0.5), (2.0, 0.25), (1.0, 0.1), (0.8, 0.1),
    (0.79, 0.0), (0.2, 0.0), (0.0, 0.0),
])
def test_the_step_is_the_coarsest_at_most_an_eighth_of_the_delay(delay_s: float, step: float) -> None:
    assert step_for(delay_s) == step


@pytest.mark.parametrize(("when", "delay_s", "expected"), [
    (100.2, 30.0, 101.0),  # a poll: the next whole second
    (101.0, 30.0, 101.0),  # already on the grid
    (100.2, 5.0, 100.5),
    (100.26, 2.0, 100.5),
    (100.26, 0.5, 100.26),  # too short for the finest step: exact
])
def test_a_timer_lands_on_the_grid_never_early_and_late_by_at_most_an_eighth(when: float, delay_s: float,
                                                                              expected: float) -> None:
    landed = on_grid(when, delay_s)
    assert math.isclose(landed, expected) and when <= landed <= when + delay_s / 8


@pytest.mark.parametrize(("when", "step", "expected"), [(10.2, 0.25, 10.25), (10.25, 0.25, 10.25), (10.2, 0.0, 10.2)])
def test_round_up_keeps_a_time_on_its_step_and_a_step_of_zero_exact(when: float, step: float,
                                                                     expected: float) -> None:
    assert math.isclose(round_up(when, step), expected)


@pytest.mark.parametrize(("when", "step", "expected"), [(10.2, 0.25, 10.0), (10.25, 0.25, 10.25), (10.2, 0.0, 10.2)])
def test_round_down_keeps_a_time_on_its_step_and_a_step_of_zero_exact(when: float, step: float,
                                                                       expected: float) -> None:
    assert math.isclose(round_down(when, step), expected)


@pytest.mark.parametrize(("now", "step", "expected"), [(10.2, 0.5, 10.5), (10.5, 0.5, 11.0), (3.9, 2.0, 4.0)])
def test_the_next_tick_is_strictly_after_now(now: float, step: float, expected: float) -> None:
    assert math.isclose(next_tick(now, step), expected)


async def test_keys_requeued_far_ahead_share_a_grid_step_and_a_short_requeue_stays_exact() -> None:
    async def handler(key: str) -> None:
        return None

    queue = WorkQueue("grid", handler, workers=1)
    loop = asyncio.get_running_loop()
    await asyncio.sleep(next_tick(loop.time(), 1.0) - loop.time() + 0.3)  # a third into a step: both in the next
    asked = loop.time()
    queue.add_after("a", 30.0)
    queue.add_after("b", 29.8)
    queue.add_after("c", 0.3)
    timers = queue._timers
    assert timers["a"].when() == timers["b"].when() == math.ceil(asked + 30.0)
    assert asked + 0.3 <= timers["c"].when() < asked + 0.31
    await queue.stop()


async def test_health_reads_due_by_the_interval_start_together_on_the_grid_and_a_liveness_probe_at_once() -> None:
    """Heartbeats notice reads due at any moment; those due by the interval wait for the next grid step and go
    out together, a silent base's probe goes at once."""
    from vkprovider.controllers.nodes import NodeController

    now = [0.0]
    registry = BaseRegistry("test", clock=lambda: now[0])
    loop = asyncio.get_running_loop()
    started: dict[str, float] = {}

    class Tunnel(fakes.Tunnel):
        async def health(self, base: BaseHeartbeat) -> BaseHealth:
            started[base.metadata.identity] = loop.time()
            return BaseHealth(cpu_count=2)

    controller = NodeController(node_settings(load_settings({"ENV": "test"})), registry, {}, fakes.Claims(),
                                VnodeWrites(fakes.Holds(), fakes.Api(), fakes.Events(), {"http": Tunnel()}), _cfg(),
                                clock=lambda: now[0])
    due = [registry.heartbeat(hb(f"b{i}", port=2000 + i))[0] for i in range(3)]
    await asyncio.sleep(next_tick(loop.time(), 1.0) - loop.time() + 0.05)  # early in a step: all three in it
    for view in due:
        view.health_at = -100.0  # resources due by the interval
        controller.health.maybe(view, now[0])
        assert view.node not in controller.health.tasks  # not yet: it waits for the grid step
        await asyncio.sleep(0.02)
    await wait_for(lambda: len(started) == 3, timeout=5, interval=0.01, what="the three reads")
    times = set(started.values())
    assert max(times) - min(times) < 0.02  # one wake-up
    assert abs(min(times) - round(min(times))) < 0.05  # on the whole second: a 30 s interval's step

    silent, _ = registry.heartbeat(hb("silent", port=3000))
    now[0] += 20.0  # silent past VKP_BASE_PROBE_AFTER: liveness, not resources
    for view in due:
        view.health_at = now[0]
    controller.health.maybe(silent, now[0])
    assert silent.node in controller.health.tasks  # at once
    await wait_for(lambda: "silent" in started, timeout=5, interval=0.01, what="the liveness probe")
    controller.health.cancel_all()
