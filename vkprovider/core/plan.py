"""Desired vs actual bizs on one base: what to install, reinstall, uninstall, and which deleted pods may go.

The plan is computed per base from ALL pods bound to it and the base's ledger (``core.basestate``), never from
one pod event. That is the fencing the Go controller lacked (koupleless#405): a pod being deleted only releases
its bizs; a biz is uninstalled only when no live pod on the base wants that name:version, so a late DELETE of an
old pod can never remove what a new pod installed. Further rules:

- nothing is decided before the base's biz list is known (after a restart or a takeover: read first, then
  diff, never replay installs);
- one command per biz *name* at a time on a base, and of several versions of one name the oldest pod's goes
  first, so "the later install wins" (BizDeactivate) follows the order in which pods were created;
- a biz wanted from another jar URL than it was installed from is reinstalled (``kubectl set image`` with the
  same BIZ_VERSION); the URL of the newest pod wanting the name:version wins;
- of the pods of one workload (a Deployment's ReplicaSets) wanting one biz name on the base, only those of its
  newest revision are installed: a ReplicaSet's replacement for an old pod that BizDeactivate turned away never
  deactivates the newer version in turn, so a release cannot ping-pong;
- an old version stays while a new version of the same name is being installed (install before remove);
- failed commands wait for their backoff, and then for a read of the base sent after the failure (an unanswered
  command may have run: it is never sent twice on a guess); an unowned biz of unknown origin waits ``orphan_grace_s``;
- a deleted pod is finalized once its bizs are gone, or when its grace period is over (the biz then stays
  tracked as an orphan whose uninstall is retried with backoff), so no pod stays Terminating forever.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from vkprovider.core.basestate import BaseLedger, CommandKind
from vkprovider.core.model import BizKey, BizSpec, BizState

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

    def is_idle(self) -> bool:
        """Nothing to send, finalize or wait for, and no pod left out."""
        return not (self.install or self.reinstall or self.uninstall or self.finalize or self.force_finalize
                    or self.orphans or self.outranked) and self.wait_s is None


def plan_base(pods: Iterable[PodWant], ledger: BaseLedger, *, now: float, orphan_grace_s: float) -> BasePlan:
    """Decide the next commands for one base (see the module docstring)."""
    pods = sorted(pods, key=lambda p: (p.order, p.key))
    live = [p for p in pods if not p.terminating and not p.terminal]
    newest: dict[tuple[str, str], int] = {}
    for pod in live:
        if pod.workload is not None and pod.revision:
            for spec in pod.bizs:
                slot = (pod.workload, spec.name)
                newest[slot] = max(newest.get(slot, 0), pod.revision)
    wanted: dict[BizKey, BizSpec] = {}
    outranked: set[tuple[str, BizKey]] = set()
    first_wanted_by: dict[BizKey, str] = {}
    for pod in live:  # oldest first: the newest pod's URL overwrites, the oldest pod's order is kept
        for spec in pod.bizs:
            if pod.workload is not None and pod.revision and newest[(pod.workload, spec.name)] > pod.revision:
                outranked.add((pod.key, spec.key))
                continue  # an older revision of the same workload: the newer one has this name here
            wanted[spec.key] = spec
            first_wanted_by.setdefault(spec.key, pod.order)
    released = frozenset({spec.key for p in pods if p.terminating for spec in p.bizs} - wanted.keys())
    actual = ledger.bizs
    if actual is None:
        return BasePlan(wanted=frozenset(wanted), released=released, orphans=dict(ledger.orphan_since),
                        outranked=frozenset(outranked))

    timers: list[float] = []
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

    installing_names = {k.name for k in inflight if k in wanted} | {s.name for s in install}
    known = ledger.known | released
    uninstall: list[BizKey] = []
    orphans: dict[BizKey, float] = {}
    for key, biz in actual.items():
        if key in wanted or key in inflight:
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
    finalize: list[str] = []
    force: list[str] = []
    for pod in pods:
        if not pod.terminating:
            continue
        blocked = any(s.key in busy or (s.key in actual and s.key not in wanted) for s in pod.bizs)
        if not blocked:
            finalize.append(pod.key)
        elif pod.deadline is not None:
            if pod.deadline <= now:
                force.append(pod.key)
            else:
                timers.append(pod.deadline - now)
    return BasePlan(
        wanted=frozenset(wanted),
        released=released,
        install=tuple(install),
        reinstall=tuple(reinstall),
        uninstall=tuple(uninstall),
        finalize=tuple(finalize),
        force_finalize=tuple(force),
        orphans=orphans,
        wait_s=min(timers) if timers else None,
        outranked=frozenset(outranked),
    )
