"""Root tasks are supervised (issue 28): one that ends - returns, raises, or is cancelled by anyone but the
supervisor - is a failure that stops the process; stopping the supervisor ends them without one."""

from __future__ import annotations

import asyncio
import logging
from typing import cast

import pytest

from tests.unit import fakes
from vkprovider.app import Provider
from vkprovider.config import Settings
from vkprovider.core.backoff import Backoff
from vkprovider.kube.client import Kube
from vkprovider.kube.events import EventRecorder
from vkprovider.supervisor import RESTARTS_MAX, Supervisor


async def forever() -> None:
    await asyncio.Event().wait()


async def boom() -> None:
    raise RuntimeError("informer died")


async def quits() -> None:
    return None


@pytest.mark.parametrize(("coro", "why"), [(boom, "RuntimeError: informer died"), (quits, "returned")])
async def test_a_root_task_that_raises_or_returns_is_a_failure(coro, why) -> None:
    sup = Supervisor()
    sup.spawn("steady", forever())
    sup.spawn("fragile", coro())
    await asyncio.wait_for(sup.ended.wait(), 5)
    assert sup.failed == f"fragile: {why}"
    await sup.stop()
    assert sup.failed == f"fragile: {why}"  # the first failure is kept


async def test_a_root_task_cancelled_from_outside_is_a_failure_but_stopping_is_not() -> None:
    sup = Supervisor()
    sup.spawn("a", forever())
    sup.spawn("b", forever())
    await asyncio.sleep(0)
    sup.tasks["a"].cancel()
    await asyncio.wait_for(sup.ended.wait(), 5)
    assert sup.failed == "a: cancelled"
    calm = Supervisor()
    calm.spawn("a", forever())
    await calm.stop()
    assert calm.failed is None and not calm.ended.is_set()


async def test_root_task_names_are_unique() -> None:
    sup = Supervisor()
    sup.spawn("a", forever())
    with pytest.raises(ValueError, match="runs already"):
        sup.spawn("a", forever())
    await sup.stop()


@pytest.mark.parametrize("owner", ["tunnel", "event-recorder"])
async def test_root_tasks_that_end_with_their_owner_while_vkprovider_stops_are_no_failure(owner: str) -> None:
    """Provider.stop stops the tunnels and closes the Event recorder before the supervisor cancels what is left: a
    root task that ends because its owner was stopped (a tunnel's run(), the recorder's workers) is the shutdown,
    not a dead root task."""
    provider = Provider(Settings())
    if owner == "tunnel":
        tunnel = fakes.Tunnel()
        provider.tunnels = [tunnel]
        root = provider.supervisor.spawn(f"tunnel-{tunnel.name}", tunnel.run())
    else:
        provider.events = EventRecorder(cast(Kube, fakes.Api()), reporting_instance="test")
        root = provider.supervisor.spawn("event-recorder", provider.events.run())
    provider.supervisor.spawn("steady", forever())
    await asyncio.sleep(0)  # the root tasks start
    await provider.stop()
    assert root.done()
    assert provider.supervisor.failed is None and not provider.supervisor.ended.is_set()


QUICK = Backoff(initial_s=0.01, max_s=60.0)  # restarts at once; no run lasts max_s, so failures stay in a row


class Flaky:
    """A kept root task's body: raises ``fails`` times, then runs until cancelled (or returns, ``returns``)."""

    def __init__(self, fails: int, *, returns: bool = False) -> None:
        self.fails = fails
        self.returns = returns
        self.runs = 0
        self.steady = asyncio.Event()

    async def __call__(self) -> None:
        self.runs += 1
        if self.runs <= self.fails:
            raise RuntimeError(f"broker loop died ({self.runs})")
        if self.returns:
            return
        self.steady.set()
        await asyncio.Event().wait()


def lines(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "vkprovider.supervisor" and r.levelno == level]


async def test_a_kept_root_task_that_raises_is_restarted_with_one_line_per_failure(
        caplog: pytest.LogCaptureFixture) -> None:
    sup = Supervisor()
    flaky = Flaky(fails=2)
    task = sup.keep("tunnel-mqtt", flaky, backoff=QUICK)
    await asyncio.wait_for(flaky.steady.wait(), 5)
    assert flaky.runs == 3 and not task.done()
    assert sup.failed is None and not sup.ended.is_set()
    errors = lines(caplog, logging.ERROR)
    assert [r.getMessage().split(": restarting")[0] for r in errors] == [
        "root task tunnel-mqtt failed (RuntimeError: broker loop died (1))",
        "root task tunnel-mqtt failed (RuntimeError: broker loop died (2))"]
    assert errors[0].exc_info is not None and errors[1].exc_info is None  # one traceback per run of failures
    assert not lines(caplog, logging.CRITICAL)
    await sup.stop()
    assert sup.failed is None


async def test_a_kept_root_task_that_keeps_failing_fails_the_process_once(caplog: pytest.LogCaptureFixture) -> None:
    sup = Supervisor()
    flaky = Flaky(fails=1000)
    sup.keep("tunnel-mqtt", flaky, backoff=QUICK)
    await asyncio.wait_for(sup.ended.wait(), 5)
    assert flaky.runs == RESTARTS_MAX
    assert sup.failed == (f"tunnel-mqtt: RestartsExhausted: failed {RESTARTS_MAX} times in a row, "
                          f"last RuntimeError: broker loop died ({RESTARTS_MAX})")
    assert len(lines(caplog, logging.ERROR)) == RESTARTS_MAX - 1
    (critical,) = lines(caplog, logging.CRITICAL)
    assert "root task tunnel-mqtt ended unexpectedly" in critical.getMessage()
    await sup.stop()


async def test_a_kept_root_task_that_returns_or_is_cancelled_is_a_failure_at_once() -> None:
    sup = Supervisor()
    flaky = Flaky(fails=0, returns=True)
    sup.keep("tunnel-http", flaky, backoff=QUICK)
    await asyncio.wait_for(sup.ended.wait(), 5)
    assert sup.failed == "tunnel-http: returned" and flaky.runs == 1
    other = Supervisor()
    steady = Flaky(fails=0)
    task = other.keep("tunnel-http", steady, backoff=QUICK)
    await asyncio.wait_for(steady.steady.wait(), 5)
    task.cancel()
    await asyncio.wait_for(other.ended.wait(), 5)
    assert other.failed == "tunnel-http: cancelled" and steady.runs == 1
    await sup.stop()
    await other.stop()


async def test_a_kept_root_task_that_raises_while_vkprovider_stops_is_not_restarted() -> None:
    sup = Supervisor()
    stopped = asyncio.Event()

    async def ends_with_its_owner() -> None:
        await stopped.wait()
        raise RuntimeError("the tunnel was stopped under it")

    task = sup.keep("tunnel-mqtt", ends_with_its_owner, backoff=QUICK)
    sup.stopping()
    stopped.set()
    await asyncio.wait_for(task, 5)
    assert sup.failed is None and not sup.ended.is_set()
