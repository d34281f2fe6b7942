"""Bizs that ship inside the base (Koupleless static merge deployment): left alone by the orphan clean-up.

A base may start with bizs already in its JVM (static merge deployment: the jars are in the base's image and
SOFAArk starts them with the base). No pod owns them, so the orphan clean-up (``core.plan``) would uninstall them
``orphan_grace_s`` after the base registered. The Go ModuleController does worse: it uninstalls every biz without a
pod at once. Here a biz is *static*, never uninstalled by vkprovider, when any of three sources covers it:

- the setting ``VKP_STATIC_BIZS`` (``"name"`` or ``"name:version"``, comma-separated; a name without a version
  covers every version);
- the heartbeat extension ``staticBizs`` (a list of ``"name[:version]"``, at the top level or in
  ``baseMetadata``): the base declares what it ships;
- what vkprovider *recorded* at the base's start, kept in the vnode's annotation ``base.koupleless.io/static-bizs``
  (``{"startedAt": <epoch ms>, "bizs": ["name:version", ...]}``), written only by the module controller.

What is recorded: when a health reading shows a JVM start the annotation does not name (two starts within
``SAME_START_S`` are the same run; the start is the reading's wall time minus arklet's ``run time(s)``), the unowned
bizs (no pod wants them, none released, no command in flight) of the first biz list read after that reading,
except a biz whose earliest state record is later than ``STARTUP_WINDOW_S`` after the start (someone installed it
by hand later). A biz without state records is recorded: in doubt, a module is kept.

Until the set is settled for an orphan (a health reading newer than the biz's first sighting, and the recording of
that reading's start done), the orphan is not uninstalled even when its grace is due: the base may have restarted
with it since the last reading. The planner asks for a health reading then. A base whose health answers carry no
``run time(s)`` cannot be told to have restarted: its recorded set is used as it is, never renewed.

"Never uninstalled" is about vkprovider's own uninstalls (``core.plan``): a pod installing another version of the
same name may still replace it with ``uninstallThenInstall``, as any version no pod wants.

Bad annotation JSON is treated as no annotation (the next start is recorded again), never a crash.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from vkprovider.core.model import BizInfo, BizKey

ANNOTATION_STATIC_BIZS = "base.koupleless.io/static-bizs"

#: Two JVM starts computed within this many seconds of each other are the same run (uptime has a second's grain,
#: and the reading's arrival lags its answer).
SAME_START_S = 5.0

#: A biz whose earliest state record is later than this after the base's start was not shipped in the base.
STARTUP_WINDOW_S = 300.0

MAX_PATTERNS = 256
_MAX_PATTERN_LEN = 253


@dataclass(frozen=True, slots=True)
class BizPattern:
    """``name`` with ``version``, or every version of ``name`` (``version`` None)."""

    name: str
    version: str | None = None

    def covers(self, name: str, version: str) -> bool:
        return self.name == name and (self.version is None or self.version == version)

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}:{self.version}"


def parse_pattern(text: str) -> BizPattern:
    """``"name"`` or ``"name:version"``; raises ``ValueError`` with a one-line reason."""
    entry = text.strip()
    name, colon, version = entry.partition(":")
    name, version = name.strip(), version.strip()
    if not name or (colon and not version):
        raise ValueError(f"static biz {entry[:80]!r}: expected 'name' or 'name:version'")
    if len(entry) > _MAX_PATTERN_LEN or any(c.isspace() or c in ",\"'" for c in name + version):
        raise ValueError(f"static biz {entry[:80]!r}: not a biz name[:version]")
    return BizPattern(name, version or None)


def parse_patterns(text: str | Iterable[str]) -> tuple[BizPattern, ...]:
    """A comma-separated string (the setting) or a list of entries (the heartbeat); empty entries of a string are
    skipped. Raises ``ValueError`` naming the first bad entry."""
    entries = [e for e in text.split(",") if e.strip()] if isinstance(text, str) else list(text)
    if len(entries) > MAX_PATTERNS:
        raise ValueError(f"more than {MAX_PATTERNS} static bizs")
    patterns: list[BizPattern] = []
    for entry in entries:
        if not isinstance(entry, str):
            raise ValueError("static bizs must be strings 'name' or 'name:version'")
        pattern = parse_pattern(entry)
        if pattern not in patterns:
            patterns.append(pattern)
    return tuple(patterns)


@dataclass(frozen=True, slots=True)
class Recorded:
    """What the annotation says: the JVM start (epoch ms) and the bizs found in it."""

    started_at_ms: int
    bizs: frozenset[BizKey]

    def encode(self) -> str:
        return json.dumps({"startedAt": self.started_at_ms,
                           "bizs": sorted(str(k) for k in self.bizs)}, separators=(",", ":"))


def decode(text: object) -> Recorded | None:
    """The annotation's value; None when absent or not what ``Recorded.encode`` writes."""
    if not isinstance(text, str):
        return None
    try:
        raw = json.loads(text)
    except ValueError:
        return None
    if not isinstance(raw, dict):
        return None
    started, bizs = raw.get("startedAt"), raw.get("bizs")
    if isinstance(started, bool) or not isinstance(started, int) or not isinstance(bizs, list):
        return None
    keys: set[BizKey] = set()
    for entry in bizs:
        if not isinstance(entry, str):
            return None
        name, colon, version = entry.partition(":")
        if not name or not colon or not version:
            return None
        keys.add(BizKey(name, version))
    return Recorded(started, frozenset(keys))


def base_start_ms(reading_at_s: float, uptime_s: float | None) -> int | None:
    """When the JVM started (epoch ms): the reading's wall time minus its uptime; None without an uptime."""
    if uptime_s is None or uptime_s < 0:
        return None
    return round((reading_at_s - uptime_s) * 1000)


def same_start(a_ms: int, b_ms: int) -> bool:
    return abs(a_ms - b_ms) <= SAME_START_S * 1000


class Verdict(enum.Enum):
    """What the static set needs before it is settled (see ``judge``)."""

    ASK_HEALTH = "ask_health"  # no health reading yet
    READ = "read"  # a new start: a biz list read after the reading is needed
    RECORD = "record"  # a new start and a read after it: record (``to_record``)
    SETTLED = "settled"


def judge(recorded: Recorded | None, start_ms: int | None, health_at: float | None,
          read_at: float | None) -> Verdict:
    """``start_ms``: the start the latest health reading shows (None: it has no uptime); ``health_at``: when that
    reading came, ``read_at``: when the latest successful biz list read was sent (one monotonic clock)."""
    if health_at is None:
        return Verdict.ASK_HEALTH
    if start_ms is None or (recorded is not None and same_start(recorded.started_at_ms, start_ms)):
        return Verdict.SETTLED
    if read_at is None or read_at <= health_at:
        return Verdict.READ
    return Verdict.RECORD


def to_record(start_ms: int, bizs: Mapping[BizKey, BizInfo], unowned: Iterable[BizKey]) -> Recorded:
    """The unowned bizs of the first read after a new start, less those that entered the base later than the
    startup window (see the module docstring)."""
    limit = start_ms + STARTUP_WINDOW_S * 1000
    keep: set[BizKey] = set()
    for key in unowned:
        info = bizs.get(key)
        if info is None:
            continue
        earliest = min((r.change_time_ms for r in info.records), default=None)
        if earliest is None or earliest <= limit:
            keep.add(key)
    return Recorded(start_ms, frozenset(keep))


@dataclass(frozen=True, slots=True)
class StaticBizs:
    """The static bizs of one base for one plan. ``settled_at``: the (monotonic) time of the health reading the
    set is settled for (None: not settled); an orphan first seen at or after it waits for a newer reading."""

    patterns: tuple[BizPattern, ...] = ()
    recorded: frozenset[BizKey] = frozenset()
    settled_at: float | None = None

    def covers(self, name: str, version: str) -> bool:
        return BizKey(name, version) in self.recorded or any(p.covers(name, version) for p in self.patterns)

    def settled_for(self, first_seen: float) -> bool:
        """Whether the set is settled for an orphan first seen at ``first_seen``."""
        return self.settled_at is not None and self.settled_at > first_seen
