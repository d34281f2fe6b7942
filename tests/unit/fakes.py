"""Fakes of the ports controllers are given (``controllers.fence``'s Holds and ApiWrites, the Tunnel protocol, an
Event sink): plain classes that implement the protocols, recording what reaches them."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from vkprovider.controllers.fence import Hold
from vkprovider.core.model import (
    BaseHealth,
    BaseHeartbeat,
    BaseMetadata,
    BizInfo,
    BizKey,
    BizSpec,
    CommandOutcome,
    CommandResult,
)
from vkprovider.tunnels.base import BaseEvents


def hb(identity: str = "b1", port: int = 1238, version: str = "1.0.0", state: str = "ACTIVATED") -> BaseHeartbeat:
    return BaseHeartbeat(BaseMetadata(identity, "base", version, "default"), "h", "127.0.0.1", port, state=state)


class Holds:
    """The Lease keeper's answer per vnode; HELD unless told otherwise."""

    def __init__(self, default: Hold = Hold.HELD) -> None:
        self.default = default
        self.of: dict[str, Hold] = {}

    def hold(self, node: str) -> Hold:
        return self.of.get(node, self.default)


class Api:
    """The kube facade's writes: each call is recorded as (verb, path, body) and answered with a new
    resourceVersion; ``gate`` (when set) holds every answer until it is set."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.gate: asyncio.Event | None = None
        self.on_patch: Any = None  # called with (path, body) before the answer: a slow apiserver, an echo
        self.last_rv = 100  # the resourceVersion of the newest answer

    def _answer(self, body: Any) -> dict[str, Any]:
        self.last_rv += 1
        md = dict(body.get("metadata") or {}) if isinstance(body, Mapping) else {}
        return {**(dict(body) if isinstance(body, Mapping) else {}),
                "metadata": {**md, "resourceVersion": str(self.last_rv)}}

    async def _wait(self) -> None:
        if self.gate is not None:
            await self.gate.wait()

    async def create(self, path: str, obj: Mapping[str, Any], *, params: Mapping[str, Any] | None = None) -> Any:
        self.calls.append(("create", path, obj))
        await self._wait()
        return self._answer(obj)

    async def patch(self, path: str, body: Any, *, kind: Any = "strategic") -> Any:
        self.calls.append(("patch", path, body))
        if self.on_patch is not None:
            self.on_patch(path, body)
        await self._wait()
        return self._answer(body)

    async def request(self, method: str, path: str, *, body: Any = None) -> Any:
        self.calls.append((method.lower(), path, body))
        await self._wait()
        return {}

    async def delete(self, path: str) -> Any:
        self.calls.append(("delete", path, None))
        await self._wait()
        return {}


class Events:
    def __init__(self) -> None:
        self.posted: list[tuple[str, str, str]] = []  # (type, reason, message)

    def normal(self, obj: Mapping[str, Any], reason: str, message: str) -> None:
        self.posted.append(("Normal", reason, message))

    def warning(self, obj: Mapping[str, Any], reason: str, message: str) -> None:
        self.posted.append(("Warning", reason, message))


class Tunnel:
    """A base reached by no network: its biz list is ``bizs``; every command is recorded and answered SUCCESS
    (or ``answer`` when set)."""

    name = "http"

    def __init__(self, bizs: list[BizInfo] | None = None) -> None:
        self.bizs = bizs if bizs is not None else []
        self.commands: list[tuple[str, str]] = []
        self.owners: list[tuple[str, str, str]] = []  # (command, biz, bizModelVersion)
        self.answer: CommandResult | None = None
        self.stopped = asyncio.Event()
        self._runs: set[asyncio.Task[Any]] = set()

    async def start(self, events: BaseEvents) -> None:
        return None

    async def run(self) -> None:
        """Like the real tunnels: runs until cancelled, returns once stopped."""
        task = asyncio.current_task()
        assert task is not None
        self._runs.add(task)
        await self.stopped.wait()

    async def stop(self) -> None:
        """Returns once every run() has ended (a real tunnel's stop awaits the work its run() waits on)."""
        self.stopped.set()
        if self._runs:
            await asyncio.wait(self._runs)

    async def health(self, base: BaseHeartbeat) -> BaseHealth:
        return BaseHealth(cpu_count=4)

    async def query_all_biz(self, base: BaseHeartbeat) -> list[BizInfo]:
        return list(self.bizs)

    async def install_biz(self, base: BaseHeartbeat, biz: BizSpec, *, replace_other_versions: bool = False,
                          biz_model_version: str = "") -> CommandResult:
        self.commands.append(("install", str(biz.key)))
        self.owners.append(("install", str(biz.key), biz_model_version))
        return self.answer or CommandResult(CommandOutcome.SUCCESS)

    async def uninstall_biz(self, base: BaseHeartbeat, name: str, version: str, *,
                            biz_model_version: str = "") -> CommandResult:
        self.commands.append(("uninstall", f"{name}:{version}"))
        self.owners.append(("uninstall", f"{name}:{version}", biz_model_version))
        return self.answer or CommandResult(CommandOutcome.SUCCESS)

    def release(self, base: BaseHeartbeat) -> None:
        self.commands.append(("release", base.identity))

    async def batch_install_biz(self, base: BaseHeartbeat, bizs: Sequence[BizSpec], *,
                                biz_model_versions: Mapping[BizKey, str] | None = None) -> dict[str, CommandResult]:
        self.commands.append(("batch", ",".join(str(b.key) for b in bizs)))
        return {b.url: self.answer or CommandResult(CommandOutcome.SUCCESS) for b in bizs}


class Claims:
    """The Lease keeper's side the node controller asks besides the hold (``controllers.nodes.VnodeClaims``)."""

    me = "me"

    def __init__(self, lease: object = None) -> None:
        self.lease = lease  # a Lease of every vnode (None: nobody holds it)
        self.dropped: list[str] = []
        self.claimed: list[str] = []

    def lease_exists(self, node: str) -> bool:
        return self.lease is not None

    def live_members(self) -> list[str]:
        return [self.me]

    def held_count(self) -> int:
        return 0

    def held_nodes(self) -> list[str]:
        return []

    async def claim(self, node: str) -> bool:
        self.claimed.append(node)
        return False

    async def drop(self, node: str) -> None:
        self.dropped.append(node)
