"""Root tasks are supervised (issue 28): one that ends - returns, raises, or is cancelled by anyone but the
supervisor - is a failure that stops the process; stopping the supervisor ends them without one."""

from __future__ import annotations

import asyncio

import pytest

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
