"""Tells the node and module controllers when this replica gains or loses a vnode, reading a vnode whole first.

The Lease keeper (``controllers.ownership``) decides whose each vnode is; this module carries the consequences to
the controllers. A vnode whose Lease names another replica is "foreign": its Node and module pods are kept as
skeletons (``controllers.shard``, issue 31), and ``on_foreign(node)`` says when one becomes so. A vnode gained
after that is read whole again (``loader``) before anyone acts for it, and is fenced meanwhile (``loading``); one
lost while it is being read was never told as gained, so nothing is told of its loss either.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from vkprovider.core.backoff import API_CALL as LOAD_BACKOFF

log = logging.getLogger(__name__)


class Gains:
    """The vnodes gained and lost, as the controllers are told of them."""

    def __init__(self, *, held: Callable[[str], bool], foreign: Callable[[str], bool],
                 loaded: Callable[[str], None]) -> None:
        self._held = held  # whether this replica holds the vnode's Lease now
        self._foreign = foreign  # whether the vnode's Lease names another replica
        self._loaded = loaded  # a vnode gained was read whole: decide for its Lease again
        self.on_gained: list[Callable[[str], None]] = []
        self.on_lost: list[Callable[[str], None]] = []
        self.on_foreign: list[Callable[[str], None]] = []
        self.loader: Callable[[str], Awaitable[None]] | None = None
        self._shrunk: set[str] = set()  # became foreign since last read whole
        self._loading: dict[str, asyncio.Task[None]] = {}

    def loading(self, node: str) -> bool:
        """Gained, and its Node and pods still being read whole: fenced until they are."""
        return node in self._loading

    def check_foreign(self, node: str) -> None:
        """Tell ``on_foreign`` once when ``node`` became another replica's (its Lease seen, or handed over)."""
        if node not in self._shrunk and self._foreign(node):
            self._shrunk.add(node)
            for callback in self.on_foreign:
                callback(node)

    def gained(self, node: str) -> None:
        """This replica just took ``node``'s Lease."""
        if node in self._shrunk and self.loader is not None:
            # Its Node and pods are skeletons here: read them whole before anyone acts (fenced meanwhile).
            self._loading[node] = asyncio.create_task(self._load(node), name=f"load-{node}")
            return
        self._tell_gained(node)

    def lost(self, node: str) -> None:
        """This replica no longer holds ``node``'s Lease."""
        loading = self._loading.pop(node, None)
        if loading is not None:
            loading.cancel()  # the controllers were never told it was gained: nothing to undo
        else:
            for callback in self.on_lost:
                callback(node)
        self.check_foreign(node)

    def _tell_gained(self, node: str) -> None:
        for callback in self.on_gained:
            callback(node)

    async def _load(self, node: str) -> None:
        """Read a gained vnode's Node and pods whole (``loader``), then tell the controllers it is held. A read
        that fails is tried again (the vnode stays fenced) until it succeeds or the vnode is lost."""
        assert self.loader is not None
        failures = 0
        try:
            while self._held(node):
                try:
                    await self.loader(node)
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    failures += 1
                    log.warning("reading vnode %s whole failed (%s); trying again", node, exc, extra={"node": node})
                    await asyncio.sleep(LOAD_BACKOFF.delay(failures, random.random))
        finally:
            if self._loading.get(node) is asyncio.current_task():
                del self._loading[node]
        if self._held(node):
            self._shrunk.discard(node)
            self._loaded(node)
            self._tell_gained(node)
