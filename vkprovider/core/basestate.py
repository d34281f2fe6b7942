"""What vkprovider believes about one base's bizs, changed in one place and in order: the base ledger.

Design (issue "one writer per base's state"): every fact the module controller uses to decide about a base -
its biz list, the commands in flight, failed commands and their backoff, which URL each biz was installed from,
which version superseded which, when an unowned biz was first seen - lives in one ``BaseLedger`` and changes only
through its methods. The methods are synchronous, so each change is atomic on the event loop, and each one
advances a sequence number. That number makes the ledger a *versioned snapshot*: facts arrive from two sources
that can overtake each other,

- a **read** (``queryAllBiz``, or a list the base pushes over MQTT) shows the whole list as it was when the read
  was sent, and
- a **command result** (an installBiz/uninstallBiz answer) shows one biz right after the command,

and an install may finish while a read of the same base is on the wire. A read therefore carries the sequence
number of the moment it was sent (``begin_read``) and ``apply_read`` lets it overwrite only the bizs that did not
change since; a biz changed by a command result after the read was sent keeps the newer fact. The same number
decides whether a read satisfies a request to read again (``request_read``, e.g. after a heartbeat that suggests
the base restarted): only a read sent after the request clears it. So an older read never overwrites a newer
result, and a request to look again is never lost.

A biz list whose send time is not known - one a base pushed, or the late answer of a query that timed out (over
MQTT an answer carries no query id, so nothing says which query it answers) - has no token. ``apply_untimed``
merges it as a read sent right after the newest read applied: the earliest moment it can be from, provided the
tunnel never hands on a list older than one it already delivered (the MQTT tunnel orders a base's lists by the
base's own publishTimestamp). So it updates only the bizs that no command result changed since that read, never
overwrites a newer install or uninstall (no Ready regression, no second command), and neither satisfies a
request to read again nor counts as the read a failed command waits for (``read_since``).

An ownership gap (the vnode held by another replica for a while, then gained back) forgets what the base
runs and when each orphan (a biz no pod wants, of unknown origin) was first seen: pods may have come for it
meanwhile, so an orphan waits its whole grace again from the first read after the gap, never less.

Pure: no I/O, no asyncio; times are passed in (monotonic seconds for deadlines, wall-clock milliseconds for what
is shown to users). Table-tested in tests/unit/test_basestate.py, including every read/command interleaving.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from vkprovider.core.backoff import BIZ_INSTALL, BIZ_UNINSTALL, Backoff
from vkprovider.core.model import BizInfo, BizKey, BizSpec, BizState


class CommandKind(enum.StrEnum):
    INSTALL = "install"
    UNINSTALL = "uninstall"
    REINSTALL = "reinstall"  # same name:version from another jar URL: uninstall, then install
    BASELINE = "baseline"  # the base installs it itself: vkprovider answered its queryBaseline


@dataclass(frozen=True, slots=True)
class ReadToken:
    """Handed out by ``begin_read``; give it back to ``apply_read`` with what the read returned."""

    seq: int


@dataclass(frozen=True, slots=True)
class Inflight:
    """A command sent to the base and not answered yet."""

    kind: CommandKind
    spec: BizSpec | None
    started_at: float


@dataclass(frozen=True, slots=True)
class Restart:
    """A biz reinstalled because its container's liveness (or startup) probe failed: how many times in a row, when
    the last one began (monotonic), when and why (shown as the container's last state)."""

    count: int
    at: float
    at_ms: int
    why: str


#: A container that ran this long since its last restart starts its crash-loop backoff afresh (the kubelet's rule).
RESTART_BACKOFF_RESET_S = 600.0


@dataclass(frozen=True, slots=True)
class Failure:
    """The last command on a biz failed: why, how often in a row, and when it may be tried again.

    ``seq`` is the ledger's sequence number when it failed: a command that got no answer (the connection dropped,
    the answer was lost) may still have run on the base, so it is tried again only after a read sent later than
    the failure (``read_since``) has shown what the base really has.
    """

    kind: CommandKind
    attempts: int
    message: str
    retry_at: float
    at_ms: int
    seq: int = 0
    busy: bool = False  # the base was running another command on the biz ("conflict"): not the biz's failure
    config: bool = False  # never sent: the container cannot be configured (CreateContainerConfigError)


class BaseLedger:
    """The single owner of one base's biz facts (see the module docstring)."""

    def __init__(self, *, rand: Callable[[], float] = random.random) -> None:
        self._rand = rand
        self._seq = 0
        self._bizs: dict[BizKey, BizInfo] | None = None
        self._changed_at: dict[BizKey, int] = {}
        self._read_requested: int | None = 0  # nothing known yet: a read is needed
        self._last_read = 0  # token of the newest read applied
        self._inflight: dict[BizKey, Inflight] = {}
        self._failures: dict[BizKey, Failure] = {}
        self._urls: dict[BizKey, str] = {}
        self._owners: dict[BizKey, str] = {}  # the bizModelVersion (a pod's uid) each biz was installed with
        self._restarts: dict[BizKey, Restart] = {}
        self._superseded: dict[BizKey, BizKey] = {}
        self._known: set[BizKey] = set()
        self._orphan_since: dict[BizKey, float] = {}
        self._version = 0  # bumped by every change a plan or a pod status can see (see ``version``)
        self._read_error: str | None = None

    # --- reading ---------------------------------------------------------------------------------------

    @property
    def seq(self) -> int:
        return self._seq

    @property
    def version(self) -> int:
        """Changes whenever anything a plan or a pod status reads from this ledger may have changed (a read that
        changed what pods see, a command started, answered or abandoned, facts seeded). Equal versions: the
        same facts, so a reconcile of unchanged pods may skip its work (``settled``)."""
        return self._version

    def settled(self) -> bool:
        """Nothing under way, failed, replaced, orphaned or asked for: the ledger only mirrors the base."""
        return not (self._inflight or self._failures or self._superseded or self._orphan_since
                    or self._read_requested is not None)

    @property
    def bizs(self) -> Mapping[BizKey, BizInfo] | None:
        """The bizs on the base as last known; None until a read has been applied."""
        return self._bizs

    @property
    def inflight(self) -> Mapping[BizKey, Inflight]:
        return self._inflight

    @property
    def failures(self) -> Mapping[BizKey, Failure]:
        return self._failures

    @property
    def installed_urls(self) -> Mapping[BizKey, str]:
        """The jar URL each biz was installed from, where vkprovider knows it."""
        return self._urls

    @property
    def restarts(self) -> Mapping[BizKey, Restart]:
        """Bizs restarted because a probe failed (``restart_started``)."""
        return self._restarts

    def restart_allowed_at(self, key: BizKey, rand: Callable[[], float] | None = None) -> float:
        """When ``key`` may be restarted again: the kubelet's crash-loop backoff after its last restarts."""
        restart = self._restarts.get(key)
        if restart is None:
            return 0.0
        return restart.at + BIZ_INSTALL.ceiling(restart.count)

    def restart_started(self, key: BizKey, why: str, now: float, at_ms: int) -> None:
        previous = self._restarts.get(key)
        count = 1 if previous is None or now - previous.at >= RESTART_BACKOFF_RESET_S + BIZ_INSTALL.max_s \
            else previous.count + 1
        self._restarts[key] = Restart(count, now, at_ms, why)
        self._version += 1

    def owner(self, key: BizKey) -> str:
        """The bizModelVersion this process installed ``key`` with ("" when it did not install it)."""
        return self._owners.get(key, "")

    @property
    def superseded(self) -> Mapping[BizKey, BizKey]:
        """Old version -> the version that replaced it on this base (installStrategy uninstallThenInstall)."""
        return self._superseded

    @property
    def known(self) -> frozenset[BizKey]:
        """Bizs that pods bound to this base wanted (and the base still has): once no pod wants one it is
        uninstalled at once, while a biz of unknown origin waits the orphan grace first."""
        return frozenset(self._known)

    @property
    def orphan_since(self) -> Mapping[BizKey, float]:
        return self._orphan_since

    @property
    def read_error(self) -> str | None:
        """Why the last read of the base failed, until a read succeeds (pods waiting for the list say it)."""
        return self._read_error

    def read_needed(self) -> bool:
        return self._read_requested is not None

    def read_since(self, failure: Failure) -> bool:
        """Whether a read sent after ``failure`` was recorded has been applied (see ``Failure``)."""
        return self._last_read > failure.seq

    # --- reads -----------------------------------------------------------------------------------------

    def _tick(self) -> int:
        self._seq += 1
        return self._seq

    def request_read(self) -> None:
        """Ask for a fresh read; only a read sent after this call satisfies it."""
        self._read_requested = self._tick()
        self._version += 1

    def forget(self) -> None:
        """Nothing about the base is known any more (another replica owned it meanwhile): read before acting.
        Orphans' first-seen times go too: an orphan seen before the gap waits its whole grace again."""
        self._bizs = None
        self._read_error = None
        self._last_read = self._seq
        self._changed_at.clear()
        self._inflight.clear()
        self._orphan_since.clear()
        self._read_requested = self._tick()
        self._version += 1

    def begin_read(self) -> ReadToken:
        return ReadToken(self._tick())

    def read_failed(self, message: str) -> None:
        """A read of the base got no usable answer (unreachable, or a list that cannot be parsed)."""
        if message != self._read_error:
            self._read_error = message
            self._version += 1

    def apply_read(self, token: ReadToken, bizs: Iterable[BizInfo]) -> bool:
        """Merge a read sent at ``token``; returns whether anything a pod can see changed.

        A read older than one already applied is ignored: it cannot know anything the newer one did not.
        """
        if token.seq <= self._last_read:
            return False
        self._last_read = token.seq
        if self._read_requested is not None and self._read_requested < token.seq:
            self._read_requested = None
        return self._merge(token.seq, bizs)

    def apply_untimed(self, bizs: Iterable[BizInfo]) -> bool:
        """Merge a biz list of unknown send time (pushed, or a late answer): as a read sent right after the newest
        read applied (see the module docstring). Returns whether anything a pod can see changed."""
        return self._merge(self._last_read, bizs)

    def _merge(self, sent: int, bizs: Iterable[BizInfo]) -> bool:
        """Take what a read sent at sequence number ``sent`` shows, except where a command result is newer."""
        self._read_error = None
        fresh = {b.key: b for b in bizs}
        for key in [k for k, i in self._inflight.items() if i.kind is CommandKind.BASELINE and k in fresh]:
            del self._inflight[key]  # the base installed (or is starting) what its baseline asked for
        old = self._bizs
        merged: dict[BizKey, BizInfo] = {}
        for key, info in fresh.items():
            if self._changed_at.get(key, 0) > sent:
                if old is not None and key in old:
                    merged[key] = old[key]  # a command result newer than the read
                # else: a command removed it after the read was sent
            else:
                merged[key] = info
        if old is not None:
            for key, info in old.items():
                if key not in fresh and self._changed_at.get(key, 0) > sent:
                    merged[key] = info  # installed after the read was sent
        self._bizs = merged
        for key in [k for k, at in self._changed_at.items() if at <= sent]:
            del self._changed_at[key]  # the read has seen it; nothing newer to protect
        facts = (len(self._urls), len(self._superseded))
        for key in list(self._urls):
            if key not in merged and key not in self._inflight:
                del self._urls[key]  # gone from the base (a restart loses every biz)
        for key in [k for k in self._owners if k not in merged and k not in self._inflight]:
            del self._owners[key]
        self._superseded = {o: n for o, n in self._superseded.items() if n in merged and o not in merged}
        changed = old is None or _visible(old) != _visible(merged)
        if old != merged or facts != (len(self._urls), len(self._superseded)):
            self._version += 1
        return changed

    # --- commands --------------------------------------------------------------------------------------

    def start_baseline(self, specs: Iterable[BizSpec], now: float) -> None:
        """vkprovider answered the base's queryBaseline with ``specs``: the base installs them itself, so they are
        in flight until a read shows them or ``expire_baselines`` gives up (no install of ours races them)."""
        for spec in specs:
            if spec.key not in self._inflight:
                self._inflight[spec.key] = Inflight(CommandKind.BASELINE, spec, now)
                self._version += 1
        self._tick()

    def expire_baselines(self, now: float, wait_s: float) -> None:
        """Bizs a baseline asked the base for that no read has shown within ``wait_s``: decided again (read first)."""
        stale = [k for k, i in self._inflight.items()
                 if i.kind is CommandKind.BASELINE and now - i.started_at > wait_s]
        for key in stale:
            del self._inflight[key]
        if stale:
            self.request_read()

    def start(self, key: BizKey, kind: CommandKind, spec: BizSpec | None, now: float) -> Inflight:
        inflight = self._inflight[key] = Inflight(kind, spec, now)
        self._tick()
        self._version += 1
        return inflight

    def abandon(self, key: BizKey, inflight: Inflight) -> bool:
        """The command ``start`` returned ``inflight`` for ended without an answer (not sent: the vnode was fenced or
        lost first; or stopped half-way): it is no longer in flight, and the base is read again before the next
        decision, as the command may have changed it. False when that command is no longer the one in flight."""
        if self._inflight.get(key) is not inflight:
            return False
        del self._inflight[key]
        self.request_read()
        return True

    def finish_install(
        self,
        spec: BizSpec,
        *,
        ok: bool,
        reported: Iterable[BizInfo] = (),
        message: str = "",
        now: float,
        at_ms: int,
        replaced: Iterable[BizKey] = (),
        busy: bool = False,
        owner: str = "",
        config: bool = False,
    ) -> None:
        """Record an install (or reinstall) answer. ``reported`` is what the answer said about the biz; ``busy``:
        the base refused because it runs another command on the biz (retried after a read, not a failure)."""
        key = spec.key
        inflight = self._inflight.pop(key, None)
        kind = inflight.kind if inflight is not None else CommandKind.INSTALL
        seq = self._tick()
        self._version += 1
        self._changed_at[key] = seq
        if ok:
            self._failures.pop(key, None)
            self._superseded.pop(key, None)  # on the base again: no longer replaced by anything
            self._urls[key] = spec.url
            if owner:
                self._owners[key] = owner
            info = next((b for b in reported if b.key == key), None)
            if self._bizs is not None:
                if info is not None:
                    self._bizs[key] = info
                else:
                    # Installed, but the answer did not say in which state: read again to learn it.
                    self._read_requested = seq
            for old in replaced:
                self._superseded[old] = key
                self._changed_at[old] = seq
                if self._bizs is not None:
                    self._bizs.pop(old, None)
                self._urls.pop(old, None)
        elif config:
            # Nothing was sent (the container's configuration cannot be made): no read is needed before trying
            # again, which happens after the first backoff step, or at once when a referenced object appears.
            self._failures[key] = Failure(kind, 0, message, now + BIZ_INSTALL.delay(1, self._rand), at_ms, 0,
                                          config=True)
            return
        else:
            self._record_failure(key, kind, message, now, at_ms, BIZ_INSTALL, busy=busy)
            if kind is CommandKind.REINSTALL and self._bizs is not None:
                self._bizs.pop(key, None)  # the old copy was uninstalled before the failed install
                self._urls.pop(key, None)
            self._read_requested = seq  # what state did the failure leave behind?

    def finish_uninstall(self, key: BizKey, *, ok: bool, message: str = "", now: float, at_ms: int,
                         expired: bool = False) -> None:
        """Record an uninstall answer (``ok`` also when the base no longer had the biz). ``expired``: arklet refused
        it because another pod's install owns the biz now (bizModelVersion): not retried before a read shows what
        the base has, and no failure of the biz's."""
        self._inflight.pop(key, None)
        seq = self._tick()
        self._version += 1
        self._changed_at[key] = seq
        if ok:
            self._failures.pop(key, None)
            self._orphan_since.pop(key, None)
            self._urls.pop(key, None)
            self._owners.pop(key, None)
            # the version that replaced others is gone: they may be installed again (for new pods)
            self._superseded = {o: n for o, n in self._superseded.items() if n != key}
            if self._bizs is not None:
                self._bizs.pop(key, None)
        else:
            self._record_failure(key, CommandKind.UNINSTALL, message, now, at_ms, BIZ_UNINSTALL, busy=expired)
            self._read_requested = seq

    def _record_failure(self, key: BizKey, kind: CommandKind, message: str, now: float, at_ms: int,
                        policy: Backoff, *, busy: bool = False) -> None:
        previous = self._failures.get(key)
        attempts = previous.attempts + 1 if previous is not None and previous.kind is kind else 1
        if busy:  # the base was busy with the biz: wait the first step, and keep the count of real failures
            attempts = previous.attempts if previous is not None and previous.kind is kind else 0
            retry_at = now + policy.delay(1, self._rand)
        else:
            retry_at = now + policy.delay(attempts, self._rand)
        self._failures[key] = Failure(kind, attempts, message, retry_at, at_ms, self._seq, busy)

    def seed_failure(self, key: BizKey, attempts: int, message: str, retry_at: float, at_ms: int) -> None:
        """A failure read back from a pod's status after a restart (the pod remembers what the process lost)."""
        if key not in self._failures:
            # seq 0: a failure of an earlier process, so any read this process applies was sent after it
            self._failures[key] = Failure(CommandKind.INSTALL, attempts, message, retry_at, at_ms, 0)
            self._version += 1

    def seed_url(self, key: BizKey, url: str) -> None:
        """The URL a running biz came from, read back from a pod's status (``imageID``) after a restart."""
        if self._bizs is not None and key in self._bizs and key not in self._urls:
            self._urls[key] = url
            self._version += 1

    def seed_superseded(self, old: BizKey, new: BizKey) -> None:
        """A supersession read back from a pod's status after a restart."""
        if old not in self._superseded:
            self._superseded[old] = new
            self._version += 1

    def retry_config(self, key: BizKey) -> None:
        """A ConfigMap or Secret the biz's container waits for appeared or changed: try it again now."""
        failure = self._failures.get(key)
        if failure is not None and failure.config:
            del self._failures[key]
            self._version += 1

    def retry_now(self) -> None:
        """The base came back: failures caused by its absence may be retried at once."""
        self._failures = {
            k: Failure(f.kind, f.attempts, f.message, 0.0, f.at_ms, f.seq) for k, f in self._failures.items()
        }
        self._version += 1

    # --- what the planner decided -------------------------------------------------------------------------

    def planned(self, wanted: Iterable[BizKey], released: Iterable[BizKey], orphans: Mapping[BizKey, float]) -> None:
        """Keep what the last plan found: which bizs pods wanted or released, and the first-seen times of
        unowned bizs. Facts about bizs that are neither wanted, present nor in flight are dropped, so the maps
        never outgrow the base."""
        wanted = set(wanted)
        present = self._bizs or {}
        known = (self._known & set(present)) | wanted | set(released)
        if known != self._known or orphans != self._orphan_since:
            self._version += 1
        self._known = known
        self._orphan_since = dict(orphans)
        live = wanted | set(present) | set(self._inflight)
        for key in [k for k in self._failures if k not in live]:
            del self._failures[key]
            self._version += 1
        for key in [k for k in self._urls if k not in live]:
            del self._urls[key]
            self._version += 1
        for key in [k for k in self._owners if k not in live]:
            del self._owners[key]
        for key in [k for k in self._restarts if k not in live]:
            del self._restarts[key]


def _visible(bizs: Mapping[BizKey, BizInfo]) -> dict[BizKey, tuple[BizState, int | None]]:
    """What of a biz list reaches a pod's status: each biz's state and when it entered it."""
    return {k: (b.state, b.time_entered(b.state)) for k, b in bizs.items()}
