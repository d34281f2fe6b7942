"""Desired vs actual bizs on one base: what to install, reinstall, uninstall, and which deleted pods may go.

The plan is computed per base from ALL pods bound to it and the base's ledger (``core.basestate``), never from
one pod event. That is the fencing the Go controller lacked (koupleless#405): a pod being deleted only releases
its bizs; a biz is uninstalled only when no live pod on the base wants that name:version, so a late DELETE of an
old pod can never remove what a new pod installed. Further rules:

- no command is decided before the base's biz list is known (after a restart or a takeover: read first, then
  diff, never replay installs);
- one command per biz *name* at a time on a base, and of several versions of one name the oldest pod's goes
  first, so "the later install wins" (BizDeactivate) follows the order in which pods were created;
- a biz wanted from another jar URL than it was installed from is reinstalled (``kubectl set image`` with the
  same BIZ_VERSION); the URL of the newest pod wanting the name:version wins;
- of the pods of one workload (a Deployment's ReplicaSets) wanting one biz name on the base, only those of its
  newest revision are installed: a ReplicaSet's replacement for an old pod that BizDeactivate turned away never
  deactivates the newer version in turn, so a release cannot ping-pong;
- **a version that serves is removed only when a newer version of the same workload is ACTIVATED on that base,
  or its own pod goes** (issue 27): an older revision's biz that a live pod still wants is *kept* (``kept``) while
  the newer one is installing, has failed, backs off, or started DEACTIVATED; when the newest revision's install
  has failed and its biz is not on the base (an ``uninstallThenInstall`` removed the old one first), the next
  older revision's pods are wanted again, so the old version is installed back within one backoff of the new;
- room is made with arklet's ``uninstallThenInstall`` (``replace``) only over versions that no live pod wants,
  or that only older pods of the same lineage want (the same workload; bare pods of one namespace are one
  lineage, the seeds' batch update): never over another workload's version. ``auto`` tries ``installOnly`` first
  and replaces on failure; a workload may choose ``installOnly`` or ``uninstallThenInstall``
  (``core.model.InstallStrategy``);
- an old version stays while a new version of the same name is being installed (install before remove);
- failed commands wait for their backoff, and then for a read of the base sent after the failure (an unanswered
  command may have run: it is never sent twice on a guess); an unowned biz of unknown origin waits ``orphan_grace_s``;
- a biz whose container's liveness (or startup) probe failed past its threshold is reinstalled (``restart``), at
  once the first time and then after the kubelet's crash-loop backoff (``BaseLedger.restart_allowed_at``);
- a deleted pod whose preStop hook still runs (``stopping``) keeps its bizs: nothing of it is uninstalled and it
  is not finalized before the hook has ended (the module serves until then), or its grace period is over;
- a deleted pod is finalized once its bizs are gone, or when its grace period is over (the biz then stays
  tracked as an orphan whose uninstall is retried with backoff), so no pod stays Terminating forever - also while
  the base's biz list is unknown (a pod that wants no biz goes at once, the others at the end of their grace
  period, as a kubelet that cannot reach its runtime does).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from vkprovider.core.basestate import BaseLedger, CommandKind
from vkprovider.core.model import BizKey, BizSpec, BizState, InstallStrategy

#: After a failed command's backoff, while no read of the base sent later than the failure has come back: how long
#: until the plan is made again (the reconcile reads the base first whenever a read is due).
READ_BEFORE_RETRY_S = 2.0


@dataclass(frozen=True, slots=True)
class PodWant:
    """What one pod bound to the base asks for.

    ``order`` sorts pods by creation (creationTimestamp, then name); ``deadline`` is the monotonic time at which
    a terminating pod's grace period ends.
    """

    key: str
    bizs: tuple[BizSpec, ...]
    terminating: bool = False
    terminal: bool = False
    order: str = ""
    deadline: float | None = None
    workload: str | None = None
    revision: int = 0  # the Deployment revision of the pod's ReplicaSet; 0 when unknown
    strategy: InstallStrategy = InstallStrategy.AUTO
    stopping: bool = False  # terminating and its preStop hook still runs: its bizs keep serving until it ends
    restart: frozenset[BizKey] = frozenset()  # bizs whose container's liveness (or startup) probe failed

    @property
    def lineage(self) -> str:
        """Whose versions this pod may replace: its workload's; bare pods of one namespace are one lineage."""
        return self.workload or f"{self.key.split('/', 1)[0]}/Pod"

    def older_than(self, other: PodWant) -> bool:
        """Whether this pod comes before ``other`` of the same lineage (revision, else creation order)."""
        if self.revision and other.revision and self.revision != other.revision:
            return self.revision < other.revision
        return (self.order, self.key) < (other.order, other.key)


class Replace(enum.Enum):
    """How an install may make room for itself (see the module docstring)."""

    ON_FAILURE = "on_failure"  # installOnly; if that fails next to another version, uninstallThenInstall
    FIRST = "first"  # uninstallThenInstall at once


@dataclass(frozen=True, slots=True)
class BasePlan:
    wanted: frozenset[BizKey] = frozenset()
    released: frozenset[BizKey] = frozenset()
    install: tuple[BizSpec, ...] = ()
    reinstall: tuple[BizSpec, ...] = ()
    uninstall: tuple[BizKey, ...] = ()
    finalize: tuple[str, ...] = ()
    force_finalize: tuple[str, ...] = ()
    orphans: Mapping[BizKey, float] = field(default_factory=dict)
    wait_s: float | None = None
    outranked: frozenset[tuple[str, BizKey]] = frozenset()  # (pod, biz) left out for a newer revision
    restart: tuple[BizSpec, ...] = ()  # reinstalls a failed liveness (or startup) probe asked for
    crash_loop: frozenset[BizKey] = frozenset()  # restarts due, waiting for their backoff
    kept: frozenset[BizKey] = frozenset()  # on the base, not wanted, kept because an older revision's pod serves it
    replace: Mapping[BizKey, Replace] = field(default_factory=dict)  # installs that may use uninstallThenInstall

    def is_idle(self) -> bool:
        """Nothing to send, finalize or wait for, and no pod left out."""
        return not (self.install or self.reinstall or self.restart or self.uninstall or self.finalize
                    or self.force_finalize or self.orphans or self.outranked or self.crash_loop) and self.wait_s is None


def _revisions(live: list[PodWant], ledger: BaseLedger) -> dict[tuple[str, str], frozenset[int]]:
    """(workload, biz name) -> the revisions of its live pods that are wanted on the base: the newest, and when the
    newest one's install has failed and its biz is not on the base, also the next older one (its version is
    installed back: an older version serving beats a newer one failing)."""
    seen: dict[tuple[str, str], dict[int, list[BizSpec]]] = {}
    for pod in live:
        if pod.workload is not None and pod.revision:
            for spec in pod.bizs:
                seen.setdefault((pod.workload, spec.name), {}).setdefault(pod.revision, []).append(spec)
    actual = ledger.bizs or {}
    failures = ledger.failures
    wanted: dict[tuple[str, str], frozenset[int]] = {}
    for slot, by_revision in seen.items():
        order = sorted(by_revision, reverse=True)
        newest = order[0]
        failing = all(
            s.key not in actual and (f := failures.get(s.key)) is not None
            and f.kind in (CommandKind.INSTALL, CommandKind.REINSTALL) and s.key not in ledger.inflight
            for s in by_revision[newest]
        )
        wanted[slot] = frozenset(order[:2] if failing else order[:1])
    return wanted


def _replace_modes(live: list[PodWant], wanted: Mapping[BizKey, BizSpec],
                   actual: Mapping[BizKey, object]) -> dict[BizKey, Replace]:
    """For each wanted biz: whether its install may remove other versions of its name (see the module docstring)."""
    wanting: dict[BizKey, list[PodWant]] = {}
    for pod in live:
        for spec in pod.bizs:
            wanting.setdefault(spec.key, []).append(pod)
    modes: dict[BizKey, Replace] = {}
    for key in wanted:
        installers = wanting.get(key, [])
        if not installers:
            continue
        newest = installers[-1]  # ``live`` is sorted oldest first
        if newest.strategy is InstallStrategy.INSTALL_ONLY:
            continue
        others = [k for k in actual if k.name == key.name and k != key]
        if not all(all(p.lineage == newest.lineage and p.older_than(newest) for p in wanting.get(o, ()))
                   for o in others):
            continue  # another workload's version (or a newer pod's) is never removed to make room
        first = newest.strategy is InstallStrategy.UNINSTALL_THEN_INSTALL
        modes[key] = Replace.FIRST if first else Replace.ON_FAILURE
    return modes


def plan_base(pods: Iterable[PodWant], ledger: BaseLedger, *, now: float, orphan_grace_s: float) -> BasePlan:
    """Decide the next commands for one base (see the module docstring)."""
    pods = sorted(pods, key=lambda p: (p.order, p.key))
    live = [p for p in pods if not p.terminating and not p.terminal]
    revisions = _revisions(live, ledger)
    wanted: dict[BizKey, BizSpec] = {}
    outranked: set[tuple[str, BizKey]] = set()
    first_wanted_by: dict[BizKey, str] = {}
    for pod in live:  # oldest first: the newest pod's URL overwrites, the oldest pod's order is kept
        for spec in pod.bizs:
            if pod.workload is not None and pod.revision and pod.revision not in revisions[(pod.workload,
                                                                                             spec.name)]:
                outranked.add((pod.key, spec.key))
                continue  # an older revision of the same workload: the newer one has this name here
            wanted[spec.key] = spec
            first_wanted_by.setdefault(spec.key, pod.order)
    actual = ledger.bizs
    kept = _kept(live, outranked, revisions, wanted, actual or {}) | {
        spec.key for p in pods if p.terminating and p.stopping and not _over(p, now) for spec in p.bizs}
    released = frozenset({spec.key for p in pods if p.terminating for spec in p.bizs} - wanted.keys() - kept)
    timers: list[float] = []
    if actual is None:
        finalize, force = _finalizable(pods, lambda spec: True, now, timers)
        return BasePlan(wanted=frozenset(wanted), released=released, orphans=dict(ledger.orphan_since),
                        outranked=frozenset(outranked), finalize=finalize, force_finalize=force,
                        wait_s=min(timers) if timers else None)

    inflight = ledger.inflight
    failures = ledger.failures
    busy_names = {k.name for k in inflight}

    def backing_off(key: BizKey, kinds: tuple[CommandKind, ...]) -> bool:
        failure = failures.get(key)
        if failure is None or failure.kind not in kinds:
            return False
        if failure.retry_at > now:
            timers.append(failure.retry_at - now)
            return True
        if not ledger.read_since(failure):
            # The failed command may have run on the base after all (its answer was lost): read first, so it is
            # not sent twice. The reconcile that finds the read missing tries the read again after this wait.
            timers.append(READ_BEFORE_RETRY_S)
            return True
        return False

    install: list[BizSpec] = []
    reinstall: list[BizSpec] = []
    restart: list[BizSpec] = []
    crash_loop: set[BizKey] = set()
    restarting = {key for p in live for key in p.restart}
    for key in sorted(wanted, key=lambda k: (first_wanted_by[k], k.name, k.version)):
        spec = wanted[key]
        if key in inflight or spec.name in busy_names:
            continue
        if key not in actual:
            if backing_off(key, (CommandKind.INSTALL, CommandKind.REINSTALL)):
                continue
            install.append(spec)
            busy_names.add(spec.name)
            continue
        installed_url = ledger.installed_urls.get(key)
        if installed_url is not None and installed_url != spec.url:
            if backing_off(key, (CommandKind.REINSTALL, CommandKind.INSTALL)):
                continue
            reinstall.append(spec)
            busy_names.add(spec.name)
        elif key in restarting:
            allowed_at = ledger.restart_allowed_at(key)
            if allowed_at > now:
                crash_loop.add(key)
                timers.append(allowed_at - now)
                continue
            restart.append(spec)
            busy_names.add(spec.name)

    installing_names = {k.name for k in inflight if k in wanted} | {s.name for s in install}
    known = ledger.known | released
    uninstall: list[BizKey] = []
    orphans: dict[BizKey, float] = {}
    for key, biz in actual.items():
        if key in wanted or key in inflight or key in kept:
            continue
        if key.name in installing_names and biz.state is BizState.ACTIVATED:
            continue  # an upgrade in progress: the old version goes once the new one is installed
        if key in known:
            if not backing_off(key, (CommandKind.UNINSTALL,)):
                uninstall.append(key)
            continue
        first_seen = ledger.orphan_since.get(key, now)
        orphans[key] = first_seen
        due = first_seen + orphan_grace_s
        if due > now:
            timers.append(due - now)
        elif not backing_off(key, (CommandKind.UNINSTALL,)):
            uninstall.append(key)

    busy = set(inflight) | set(uninstall)
    finalize, force = _finalizable(
        pods, lambda spec: spec.key in busy or (spec.key in actual and spec.key not in wanted
                                                and spec.key not in kept), now, timers)
    changing = {s.key for s in (*install, *reinstall, *restart)}
    return BasePlan(
        wanted=frozenset(wanted),
        released=released,
        install=tuple(install),
        reinstall=tuple(reinstall),
        uninstall=tuple(uninstall),
        finalize=finalize,
        force_finalize=force,
        orphans=orphans,
        wait_s=min(timers) if timers else None,
        outranked=frozenset(outranked),
        restart=tuple(restart),
        crash_loop=frozenset(crash_loop),
        kept=kept,
        replace={k: m for k, m in _replace_modes(live, wanted, actual).items() if k in changing},
    )


def _kept(live: list[PodWant], outranked: set[tuple[str, BizKey]], revisions: Mapping[tuple[str, str], frozenset[int]],
          wanted: Mapping[BizKey, BizSpec], actual: Mapping[BizKey, object]) -> frozenset[BizKey]:
    """Bizs on the base that only older revisions' live pods want, kept until a version of the newest revision of
    each such pod's workload is ACTIVATED on the base."""
    active_newest: set[tuple[str, str]] = set()
    for pod in live:
        if pod.workload is None:
            continue
        for spec in pod.bizs:
            slot = (pod.workload, spec.name)
            info = actual.get(spec.key)
            if (pod.revision and pod.revision == max(revisions.get(slot, frozenset({0})))
                    and getattr(info, "state", None) is BizState.ACTIVATED):
                active_newest.add(slot)
    kept: set[BizKey] = set()
    for pod in live:
        for spec in pod.bizs:
            if ((pod.key, spec.key) in outranked and spec.key in actual and spec.key not in wanted
                    and (pod.workload or "", spec.name) not in active_newest):
                kept.add(spec.key)
    return frozenset(kept)


def _over(pod: PodWant, now: float) -> bool:
    return pod.deadline is not None and pod.deadline <= now


def _finalizable(pods: list[PodWant], blocks: Callable[[BizSpec], bool], now: float,
                 timers: list[float]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Terminating pods that may go (none of their bizs ``blocks``, their preStop ended), and those whose grace
    period is over."""
    finalize: list[str] = []
    force: list[str] = []
    for pod in pods:
        if not pod.terminating:
            continue
        if not (pod.stopping and not _over(pod, now)) and not any(blocks(s) for s in pod.bizs):
            finalize.append(pod.key)
        elif pod.deadline is not None:
            if pod.deadline <= now:
                force.append(pod.key)
            else:
                timers.append(pod.deadline - now)
    return tuple(finalize), tuple(force)
