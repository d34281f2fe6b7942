"""The lifecycle log of every biz on every base: what ``kubectl logs`` on a module pod prints.

A biz has no stdout of its own that vkprovider could stream (it runs inside the base's JVM), so its "container
log" is its lifecycle as vkprovider saw it: every install and uninstall sent, each answer with the arklet
message, every state change a read or a push revealed, with times. The module controller writes lines; the
kubelet API (``kubectl logs``, ``-f``) reads them. Bounded: ``lines_per_biz`` lines per biz, ``max_bizs`` bizs
(the least recently written are forgotten), text sanitized and cut (``core.sanitize``).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from vkprovider.core.sanitize import clean

LogKey = tuple[str, str, str]  # node, biz name, biz version


@dataclass(frozen=True, slots=True)
class LogLine:
    at: float  # wall-clock seconds
    text: str


class BizLog:
    def __init__(self, lines_per_biz: int = 500, max_bizs: int = 20000,
                 clock: Callable[[], float] = time.time) -> None:
        self._lines_per_biz = lines_per_biz
        self._max_bizs = max_bizs
        self._clock = clock
        self._logs: OrderedDict[LogKey, deque[LogLine]] = OrderedDict()
        self._followers: dict[LogKey, set[asyncio.Queue[LogLine]]] = {}

    def __len__(self) -> int:
        return len(self._logs)

    def add(self, node: str, name: str, version: str, text: str) -> None:
        key = (node, name, version)
        lines = self._logs.get(key)
        if lines is None:
            lines = self._logs[key] = deque(maxlen=self._lines_per_biz)
            while len(self._logs) > self._max_bizs:
                self._logs.popitem(last=False)
        else:
            self._logs.move_to_end(key)
        line = LogLine(self._clock(), clean(text, 2048))
        lines.append(line)
        for queue in self._followers.get(key, ()):
            if queue.qsize() < 1000:
                queue.put_nowait(line)

    def lines(self, node: str, name: str, version: str) -> list[LogLine]:
        return list(self._logs.get((node, name, version), ()))

    def has(self, node: str, name: str, version: str) -> bool:
        return (node, name, version) in self._logs

    async def follow(self, node: str, name: str, version: str) -> AsyncIterator[LogLine]:
        """Lines written from now on, until the caller stops iterating."""
        key = (node, name, version)
        queue: asyncio.Queue[LogLine] = asyncio.Queue()
        self._followers.setdefault(key, set()).add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            followers = self._followers.get(key)
            if followers is not None:
                followers.discard(queue)
                if not followers:
                    del self._followers[key]
