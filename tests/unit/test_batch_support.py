"""vkprovider/tunnels/batch.py: the one fallback for bases without batch installs (both tunnels use it)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from vkprovider.core.model import BizSpec, CommandOutcome, CommandResult
from vkprovider.tunnels.batch import BatchSupport, install_one_by_one


def test_one_strike_proves_it_over_http(caplog: pytest.LogCaptureFixture) -> None:
    support = BatchSupport(strikes=1, lacks="batchInstallBiz (arklet < 2.1.7)")
    assert support.supported("10.0.0.5:1238")
    with caplog.at_level(logging.INFO, logger="vkprovider.tunnels.batch"):
        assert support.no_batch_answer("10.0.0.5:1238", "base-a") is True
        assert support.no_batch_answer("10.0.0.5:1238", "base-a") is True
    assert not support.supported("10.0.0.5:1238") and support.supported("10.0.0.6:1238")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["base base-a has no batchInstallBiz (arklet < 2.1.7): installing one by one from now on"]


def test_two_strikes_in_a_row_prove_it_over_mqtt() -> None:
    support = BatchSupport(strikes=2, lacks="batchInstallBizResponse (arklet < 1.4.1)")
    assert support.no_batch_answer("b", "b") is False and support.supported("b")
    support.batch_answer("b")  # a batch answer in between: the count starts again
    assert support.no_batch_answer("b", "b") is False and support.supported("b")
    assert support.no_batch_answer("b", "b") is True and not support.supported("b")
    support.batch_answer("b")  # the base answers a batch after all (a baseline it asked for itself)
    assert support.supported("b")


async def test_one_by_one_answers_each_biz_by_url() -> None:
    a, b, c = (BizSpec(n, "1", f"file:///{n}.jar") for n in ("a", "b", "c"))
    running = 0
    most = 0

    async def install(biz: BizSpec) -> CommandResult:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01)
        running -= 1
        if biz is b:
            raise ConnectionResetError("reset by peer")
        return CommandResult(CommandOutcome.SUCCESS if biz is a else CommandOutcome.REPEAT, biz.name)

    results = await install_one_by_one(install, [a, b, c])
    assert {url: r.outcome for url, r in results.items()} == {
        "file:///a.jar": CommandOutcome.SUCCESS, "file:///b.jar": CommandOutcome.FAILED,
        "file:///c.jar": CommandOutcome.REPEAT}
    assert results["file:///b.jar"].message == "base unreachable: reset by peer"
    assert most == 3  # concurrently, as both tunnels did
    assert await install_one_by_one(install, []) == {}
