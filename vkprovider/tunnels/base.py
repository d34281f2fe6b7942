"""The one interface every tunnel implements, so controllers never care how a base is reached.

A tunnel delivers what bases say (heartbeats, health, biz lists) to a ``BaseEvents`` sink and turns
commands into arklet requests. Commands are request/response from the caller's point of view, also over
MQTT where the answer arrives on another topic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from vkprovider.core.model import (
    BaseHealth,
    BaseHeartbeat,
    BaseMetadata,
    BizInfo,
    BizKey,
    BizSpec,
    CommandResult,
)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a heartbeat is not accepted: an HTTP status, a reason for the sender, a metric label."""

    status: int
    reason: str
    result: str


class TunnelError(Exception):
    """The base could not be reached or did not answer (transport failure, timeout, garbage)."""


class BaseEvents(Protocol):
    """What a tunnel reports. Implemented by the controllers; every method must return quickly."""

    def on_heartbeat(self, heartbeat: BaseHeartbeat, *, authenticated: bool = False) -> Refusal | None:
        """Accept a heartbeat, or say why not. ``authenticated``: a credential proved the identity."""
        ...

    def address_of(self, identity: str) -> str | None:
        """The IP the live base of ``identity`` heartbeats from, if one is known."""
        ...

    def on_health(self, identity: str, health: BaseHealth) -> None: ...

    def on_bizs(self, identity: str, bizs: Sequence[BizInfo]) -> None:
        """A biz list the tunnel cannot place in time: pushed unasked, the answer of a query that timed out, or
        one taken before a command answer it delivered. Merge it so it never overwrites a command result newer
        than the last read (``BaseLedger.apply_untimed``); never older than a list delivered before it."""
        ...

    def baseline(self, metadata: BaseMetadata) -> list[BizSpec] | None:
        """The bizs a base that asks for its baseline should run (queryBaseline); None when another replica
        holds the base's vnode (it answers)."""
        ...


class Tunnel(Protocol):
    """A way to reach bases. ``name`` is stored on each heartbeat it delivers (``BaseHeartbeat.tunnel``)."""

    name: str

    async def start(self, events: BaseEvents) -> None: ...

    async def stop(self) -> None: ...

    async def health(self, base: BaseHeartbeat) -> BaseHealth: ...

    async def query_all_biz(self, base: BaseHeartbeat) -> list[BizInfo]:
        """The base's bizs as taken after this call began: the caller merges them as a read sent when it called
        (a list that cannot be shown to be that goes to ``BaseEvents.on_bizs`` instead)."""
        ...

    async def install_biz(
        self, base: BaseHeartbeat, biz: BizSpec, *, replace_other_versions: bool = False,
        biz_model_version: str = "",
    ) -> CommandResult:
        """Install a biz; with ``replace_other_versions`` the base uninstalls other versions of it first.

        ``biz_model_version`` (the owning pod's UID): arklet >= 1.4.3 stores it with the biz, and refuses a later
        uninstall that carries another non-empty value (``core.wire``)."""
        ...

    async def uninstall_biz(self, base: BaseHeartbeat, name: str, version: str, *,
                            biz_model_version: str = "") -> CommandResult:
        """Uninstall a biz. With a ``biz_model_version`` arklet >= 1.4.3 refuses the command when the biz was
        installed with another one (``CommandOutcome.EXPIRED``: read the base again); empty is always allowed."""
        ...

    def release(self, base: BaseHeartbeat) -> None:
        """This replica no longer commands ``base`` (its vnode went to another replica)."""
        ...

    async def batch_install_biz(self, base: BaseHeartbeat, bizs: Sequence[BizSpec], *,
                                biz_model_versions: Mapping[BizKey, str] | None = None) -> dict[str, CommandResult]:
        """Install several bizs in one call; the answer is keyed by biz URL. ``biz_model_versions``: each biz's
        bizModelVersion by name:version (arklet 1.4.3's batch install does not store it; single installs do).

        A base without batchInstallBiz (arklet before 2.1.7) is served by single installs instead
        (``tunnels.batch.BatchSupport``).
        """
        ...
