"""Root tasks are supervised (issue 28): one that ends - returns, raises, or is cancelled by anyone but the
supervisor - is a failure that stops the process; stopping the supervisor ends them without one."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from tests.unit import fakes
from vkprovider.app import Provider
from vkprovider.config import Settings
from vkprovider.kube.client import Kube
from vkprovider.kube.events import EventRecorder
from vkprovider.supervisor import Supervisor


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
