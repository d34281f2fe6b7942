"""What vkprovider knows about bases and bizs, as plain immutable values.

Both tunnels (HTTP and MQTT) translate the arklet wire format into these types on arrival, so the
controllers and the pure status functions never see wire casing or optional-field quirks.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


class BizState(enum.StrEnum):
    """SOFAArk biz states. Arklet sends them lowercase over HTTP and mostly uppercase over MQTT."""

    UNRESOLVED = "UNRESOLVED"
    RESOLVED = "RESOLVED"
    ACTIVATED = "ACTIVATED"
    DEACTIVATED = "DEACTIVATED"
    BROKEN = "BROKEN"
    STOPPED = "STOPPED"
    UNKNOWN = "UNKNOWN"

    @classmethod
    def parse(cls, raw: object) -> BizState:
        """Normalise any casing; anything unrecognised is UNKNOWN rather than an error."""
        if isinstance(raw, str):
            try:
                return cls(raw.strip().upper())
            except ValueError:
                return cls.UNKNOWN
        return cls.UNKNOWN


class InstallStrategy(enum.StrEnum):
    """How a workload's new version may make room on a base where another version of the same biz runs
    (annotation ``module.koupleless.io/install-strategy`` on the pod or its template; see docs/releases.md).

    ``auto`` (the default): install next to it; if that fails, and the other version is wanted only by older
    pods of the same workload (a rollout), retry with arklet's ``uninstallThenInstall``. ``installOnly``: never
    remove another version to make room. ``uninstallThenInstall``: replace the older versions of the same workload
    straight away (a web biz whose context path two versions cannot share)."""

    AUTO = "auto"
    INSTALL_ONLY = "installOnly"
    UNINSTALL_THEN_INSTALL = "uninstallThenInstall"


@dataclass(frozen=True, slots=True)
class BizKey:
    """A biz on a base is identified by name and version (arklet's lock key too)."""

    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}:{self.version}"


@dataclass(frozen=True, slots=True)
class BizSpec:
    """A biz a pod wants installed: the container name is the bizName, the image is the jar URL.

    ``args`` and ``envs`` are the container's configuration (``core.containerconfig.resolve``), sent as installBiz
    ``args`` and ``envs``. They are not part of the biz's identity (``key``: name and version) and never shown:
    they may hold Secret data, so the repr (and so every log line or message that formats a BizSpec) leaves them
    out. ``with_config`` makes the spec that carries them.
    """

    name: str
    version: str
    url: str
    args: tuple[str, ...] = field(default=(), repr=False)
    envs: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    @property
    def key(self) -> BizKey:
        return BizKey(self.name, self.version)

    def with_config(self, args: Sequence[str], envs: Mapping[str, str] | Sequence[tuple[str, str]]) -> BizSpec:
        """This biz with installBiz ``args`` and ``envs`` (e.g. a ``containerconfig.Resolved``'s)."""
        pairs = tuple(envs.items()) if isinstance(envs, Mapping) else tuple(envs)
        return BizSpec(self.name, self.version, self.url, tuple(args), pairs)


@dataclass(frozen=True, slots=True)
class BizStateRecord:
    """One entry of a biz's state history as arklet reports it."""

    change_time_ms: int
    state: BizState
    reason: str = ""
    message: str = ""


@dataclass(frozen=True, slots=True)
class BizInfo:
    """A biz as the base reports it (queryAllBiz or an MQTT biz report)."""

    name: str
    version: str
    state: BizState
    records: tuple[BizStateRecord, ...] = ()

    @property
    def key(self) -> BizKey:
        return BizKey(self.name, self.version)

    @property
    def last_record(self) -> BizStateRecord | None:
        """The newest state record, if arklet sent any."""
        if not self.records:
            return None
        return max(self.records, key=lambda r: r.change_time_ms)

    def time_entered(self, state: BizState) -> int | None:
        """Epoch ms of the newest record that entered ``state``, if any."""
        times = [r.change_time_ms for r in self.records if r.state is state]
        return max(times) if times else None


@dataclass(frozen=True, slots=True)
class BaseMetadata:
    """Who a base is. ``identity`` is the stable key of a base across restarts."""

    identity: str
    name: str
    version: str
    cluster_name: str


@dataclass(frozen=True, slots=True)
class BaseHeartbeat:
    """A heartbeat: metadata plus where the base's arklet listens.

    ``labels`` are extra node labels the base asked for (e.g. a zone or stack); ``tunnel`` names the tunnel
    the heartbeat arrived on, so commands go back the same way; ``static_bizs`` the bizs the base says it ships
    (the ``staticBizs`` extension).
    """

    metadata: BaseMetadata
    host_name: str
    ip: str
    port: int
    state: str = "ACTIVATED"
    labels: tuple[tuple[str, str], ...] = ()
    tunnel: str = "http"
    static_bizs: tuple[str, ...] = ()  # "name[:version]": bizs the base ships (``core.staticbizs``)

    @property
    def identity(self) -> str:
        return self.metadata.identity


@dataclass(frozen=True, slots=True)
class CpuTicks:
    """Arklet's ``cpu`` figures: its machine's CPU time since arklet started, not a rate.

    Arklet (``CpuIndicator``) reads the machine's tick counters (oshi, /proc/stat: every CPU, every process) once
    when it starts and again on each ``health``: ``total used (%)`` is, despite its name, the milliseconds of CPU
    time in every state on every CPU between the two; ``user used (%)`` and ``system used (%)`` are shares of it.
    """

    total_ms: float
    user_pct: float
    system_pct: float


@dataclass(frozen=True, slots=True)
class BaseHealth:
    """Resource facts from arklet's ``health`` command. ``None`` means the base did not say."""

    cpu_count: int | None = None
    memory_max_bytes: int | None = None
    memory_committed_bytes: int | None = None
    memory_used_bytes: int | None = None
    heap_max_bytes: int | None = None  # "max heap memory(M)": the vnode's memory when max metaspace is -1
    master_biz_name: str | None = None
    master_biz_version: str | None = None
    master_biz_state: str | None = None  # the base itself: ACTIVATED while serving, else shutting down
    # What the base uses, for ``kubectl top node`` (``core.stats``). Left out of equality: these move with every
    # answer, and an answer that differs only in them changes nothing the Node shows.
    cpu: CpuTicks | None = field(default=None, compare=False)
    heap_used_bytes: int | None = field(default=None, compare=False)
    non_heap_used_bytes: int | None = field(default=None, compare=False)  # Metaspace, code cache, class space
    uptime_s: float | None = field(default=None, compare=False)  # "run time(s)": since the JVM started


class CommandOutcome(enum.StrEnum):
    """How a biz command ended, folded from arklet's two levels of ``code``."""

    SUCCESS = "SUCCESS"
    REPEAT = "REPEAT_BIZ"
    NOT_FOUND = "NOT_FOUND_BIZ"
    CONFLICT = "CONFLICT"
    EXPIRED = "EXPIRED"
    """arklet >= 1.4.3 refused an uninstall whose ``bizModelVersion`` is not the one the biz was installed with:
    the command is stale (another pod owns the biz now). Read the base again; do not retry it blindly."""
    FAILED = "FAILED"


@dataclass(frozen=True, slots=True)
class CommandResult:
    """The answer to installBiz / uninstallBiz (one entry of batchInstallBiz too)."""

    outcome: CommandOutcome
    message: str = ""
    bizs: tuple[BizInfo, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return self.outcome is CommandOutcome.SUCCESS
