"""One place for batch installs on bases that cannot do them (issue 28 part 6), for both tunnels.

A batch install is one command for several bizs: HTTP ``batchInstallBiz`` (arklet >= 2.1.7) or the MQTT baseline
answered by ``batchInstallBizResponse`` (arklet >= 1.4.1). Older arklets cannot: over HTTP they answer
``CMD_NOT_FOUND`` (one such answer is proof), over MQTT they install a baseline one by one and answer with a biz
list (two such answers in a row are proof: a list can also be an unrelated report). ``BatchSupport`` remembers,
per base, that it lacks batch installs once proven, logs it once, and forgets it when the base answers a batch
after all (over MQTT a base also answers the baselines it asks for itself). From then on ``install_one_by_one``
serves the batch: the bizs are installed concurrently with single installs, each answered on its own, a failed
call answered FAILED for its biz only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from vkprovider.core.model import BizSpec, CommandOutcome, CommandResult

log = logging.getLogger(__name__)


class BatchSupport:
    """Which bases (by a key of the tunnel's choosing) lack batch installs.

    ``strikes``: how many "no batch here" answers in a row prove it. ``lacks``: ``what`` names the missing command
    and the arklet versions that have it, for the one log line.
    """

    def __init__(self, *, strikes: int, lacks: str) -> None:
        self._strikes = max(1, strikes)
        self._lacks = lacks
        self._missing: set[str] = set()
        self._counts: dict[str, int] = {}

    def supported(self, key: str) -> bool:
        """Whether to try a batch command on this base (not proven to lack it)."""
        return key not in self._missing

    def no_batch_answer(self, key: str, identity: str) -> bool:
        """The base answered a batch as an old arklet does; True once that proves it lacks batch installs."""
        count = self._counts.get(key, 0) + 1
        self._counts[key] = count
        if count < self._strikes:
            return False
        self._counts.pop(key, None)
        if key not in self._missing:
            self._missing.add(key)
            log.info("base %s has no %s: installing one by one from now on", identity, self._lacks)
        return True

    def batch_answer(self, key: str) -> None:
        """The base answered a batch command as a batch: it has them (again)."""
        self._counts.pop(key, None)
        self._missing.discard(key)


async def install_one_by_one(install: Callable[[BizSpec], Awaitable[CommandResult]],
                             bizs: Sequence[BizSpec]) -> dict[str, CommandResult]:
    """A batch served by single installs, concurrently; the answer is keyed by biz URL like a batch's."""
    results = await asyncio.gather(*(install(biz) for biz in bizs), return_exceptions=True)
    answers: dict[str, CommandResult] = {}
    for biz, result in zip(bizs, results, strict=True):
        if isinstance(result, BaseException):
            answers[biz.url] = CommandResult(CommandOutcome.FAILED, f"base unreachable: {result}")
        else:
            answers[biz.url] = result
    return answers
