"""Matching what bases answer over MQTT to the callers waiting for it.

Arklet over MQTT is fire-and-forget: a command is published, and its answer arrives later on another topic with
no request id. The tunnel turns that back into request/response with the pieces here: callers wait on futures
keyed by what they asked (``Waiters``; concurrent queries of one base share one command and its next answer),
one command per key is in flight at a time so an answer has exactly one owner (``KeyedLocks``), and a caller
gives up after its timeout (``await_answer``, ``AnswerTimeout``). Disconnects fail the waiters at once (the
tunnel calls ``Waiters.fail_all``): answers published while disconnected are lost (clean session).

Biz lists are placed by the base's own clock, never by when they arrive (issue 27, ``BizListOrder``). A
``queryAllBiz`` answer carries no query id, may come after its query timed out, and may be overtaken by a command
answer; applied as "read now" it used to undo a newer install or uninstall (Ready regressed, the command was sent
again). Each message carries the ``publishTimestamp`` of the base that sent it, and arklet takes a list when it
publishes it, so per base:

- a list published before the newest list already taken from that base is stale, and dropped (``stale``);
- a list answers the ``query_all_biz`` waiting for it only if it was published after every command answer
  (bizOperation, batchInstallBizResponse) the base had delivered when that query was sent. The caller merges it
  as a read sent when it asked (``BaseLedger`` token): every result recorded before that is in the list, every
  one recorded after is newer than the token and kept;
- any other list - the answer of a query that timed out, one nobody asked for, or one older than a command answer
  delivered before its query - goes to ``BaseEvents.on_bizs``, merged as a list of unknown send time
  (``BaseLedger.apply_untimed``): it never overwrites a command result newer than the last read, and the first
  rule guarantees it is not older than that read.

A base's stamps are remembered for twice the age window (a message older than that is dropped by the age check
anyway), so a base whose clock stepped back is out of order for at most that long.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import Any

from vkprovider.tunnels.base import TunnelError


class Placement(enum.Enum):
    """Where a biz list goes (``BizListOrder.place``)."""

    STALE = "stale"  # older than a list already taken: dropped
    ANSWER = "answer"  # the answer of the pending query: to its caller
    UNTIMED = "untimed"  # late, unasked or older than a command answer: to BaseEvents.on_bizs


class BizListOrder:
    """One base's biz lists ordered by its publishTimestamp against its other lists and its command answers (the
    module docstring's rules). Times are passed in: ``now_ms`` is this process's wall clock, only used to forget
    stamps after ``memory_ms``."""

    __slots__ = ("_answer", "_asked_after", "_list", "_memory_ms")

    def __init__(self, memory_ms: int) -> None:
        self._memory_ms = memory_ms
        self._list: tuple[int, int] | None = None  # (newest list stamp taken, when it came)
        self._answer: tuple[int, int] | None = None  # (newest command answer stamp, when it came)
        self._asked_after: int | None = None  # a query is pending, sent after answers up to this stamp

    def _recent(self, record: tuple[int, int] | None, now_ms: int) -> int | None:
        if record is None or now_ms - record[1] > self._memory_ms:
            return None
        return record[0]

    def answered(self, stamp: int, now_ms: int) -> None:
        """A command answer (published at ``stamp``) is being handed to its caller."""
        newest = self._recent(self._answer, now_ms)
        if newest is None or stamp >= newest:
            self._answer = (stamp, now_ms)

    def asking(self, now_ms: int) -> None:
        """A queryAllBiz is being sent."""
        newest = self._recent(self._answer, now_ms)
        self._asked_after = -1 if newest is None else newest

    def not_asking(self) -> None:
        """Nobody waits for the pending query any more (answered, timed out, failed)."""
        self._asked_after = None

    def place(self, stamp: int, now_ms: int) -> Placement:
        newest = self._recent(self._list, now_ms)
        if newest is not None and stamp < newest:
            return Placement.STALE
        if newest is None or stamp > newest:
            self._list = (stamp, now_ms)
        if self._asked_after is not None and stamp > self._asked_after:
            self._asked_after = None
            return Placement.ANSWER
        return Placement.UNTIMED


class Waiters:
    """Callers waiting for the next answer under a key; every waiter owns its future."""

    def __init__(self) -> None:
        self._by_key: dict[Hashable, list[asyncio.Future[Any]]] = {}

    def add(self, key: Hashable) -> tuple[asyncio.Future[Any], bool]:
        """A new waiter, and whether it is the first for ``key`` (the one that must send the command)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        waiting = self._by_key.setdefault(key, [])
        waiting.append(future)
        return future, len(waiting) == 1

    def discard(self, key: Hashable, future: asyncio.Future[Any]) -> None:
        waiting = self._by_key.get(key)
        if waiting is None:
            return
        with contextlib.suppress(ValueError):
            waiting.remove(future)
        if not waiting:
            del self._by_key[key]

    def pending(self) -> list[Hashable]:
        return list(self._by_key)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._by_key

    def resolve(self, key: Hashable, value: object) -> bool:
        """Hand ``value`` to every waiter of ``key``; False when nobody waited."""
        waiting = self._by_key.pop(key, [])
        for future in waiting:
            if not future.done():
                future.set_result(value)
        return bool(waiting)

    def fail(self, key: Hashable, error: BaseException) -> None:
        for future in self._by_key.pop(key, []):
            if not future.done():
                future.set_exception(error)

    def fail_all(self, error: BaseException) -> None:
        for key in list(self._by_key):
            self.fail(key, error)


class KeyedLocks:
    """One lock per key, dropped when idle, so the map does not grow with dead bases."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class AnswerTimeout(TunnelError):
    """The base did not answer in time."""


async def await_answer(
    waiters: Waiters,
    key: Hashable,
    send: Callable[[], Awaitable[None]] | None,
    timeout_s: float,
    what: str,
) -> Any:
    """Register a waiter under ``key``, send the command (when ``send`` is given and this is the first waiter of
    ``key``), wait for the answer; ``AnswerTimeout`` after ``timeout_s``."""
    future, first = waiters.add(key)
    try:
        if send is not None and first:
            try:
                await send()
            except TunnelError as exc:
                waiters.discard(key, future)
                if future.done() and not future.cancelled():
                    future.exception()  # failed by a disconnect meanwhile: mark it retrieved
                waiters.fail(key, exc)  # callers that joined this command will not get an answer either
                raise
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise AnswerTimeout(f"{what}: no answer within {timeout_s:g}s") from None
    finally:
        waiters.discard(key, future)
