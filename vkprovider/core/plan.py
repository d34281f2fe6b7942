"""Desired vs actual bizs on one base: what to install, what to uninstall, which deletions may complete.

The plan is computed per base from ALL pods bound to it, never from one pod event. That is the fencing the Go
controller lacked (koupleless#405): a pod being deleted only releases its bizs; a biz is uninstalled only when no
live pod on the base wants that name:version, so a late DELETE of an old pod can never remove what a new pod
installed. Commands in flight are never doubled, and nothing is decided before the base's biz list is known.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from vkprovider.core.model import BizInfo, BizKey, BizSpec, BizState


@dataclass(frozen=True, slots=True)
class PodWant:
    """What one pod bound to the base asks for."""

    key: str
    bizs: tuple[BizSpec, ...]
    terminating: bool = False
    terminal: bool = False


@dataclass(frozen=True, slots=True)
class BasePlan:
    wanted: frozenset[BizKey] = frozenset()
    install: tuple[BizSpec, ...] = ()
    uninstall: tuple[BizKey, ...] = ()
    finalize: tuple[str, ...] = ()
    orphans: Mapping[BizKey, float] = field(default_factory=dict)
    wait_s: float | None = None


def plan_base(
    pods: Iterable[PodWant],
    actual: Mapping[BizKey, BizInfo] | None,
    *,
    inflight: frozenset[BizKey] | set[BizKey],
    retry_after: Mapping[BizKey, float],
    orphan_since: Mapping[BizKey, float],
    now: float,
    orphan_grace_s: float,
    known: frozenset[BizKey] | set[BizKey] = frozenset(),
) -> BasePlan:
    """Decide the next commands for one base.

    ``actual`` is None while the base's biz list is unknown: then nothing is installed or uninstalled.
    ``retry_after`` holds bizs whose last install failed, with the time a retry is allowed.
    ``orphan_since`` is when each unowned biz was first seen; the returned ``orphans`` replaces it.
    ``known`` holds bizs that live pods on this base wanted earlier: once nobody wants them they go at once
    (an upgraded or deleted pod's old biz), while bizs of unknown origin wait ``orphan_grace_s`` first.
    ``wait_s`` says when the plan should be looked at again because of a timer (grace or backoff).
    """
    pods = list(pods)
    live = [p for p in pods if not p.terminating and not p.terminal]
    wanted: dict[BizKey, BizSpec] = {}
    for pod in live:
        for spec in pod.bizs:
            wanted.setdefault(spec.key, spec)
    released = ({spec.key for p in pods if p.terminating for spec in p.bizs} | set(known)) - wanted.keys()
    if actual is None:
        return BasePlan(wanted=frozenset(wanted), orphans=dict(orphan_since))

    timers: list[float] = []
    install: list[BizSpec] = []
    for key, spec in wanted.items():
        if key in actual or key in inflight:
            continue
        allowed_at = retry_after.get(key, 0.0)
        if allowed_at > now:
            timers.append(allowed_at - now)
            continue
        install.append(spec)

    installing_names = {k.name for k in inflight if k in wanted} | {s.name for s in install}
    uninstall: list[BizKey] = []
    orphans: dict[BizKey, float] = {}
    for key, biz in actual.items():
        if key in wanted or key in inflight:
            continue
        if key.name in installing_names and biz.state is BizState.ACTIVATED:
            # An upgrade in progress: the old version goes once the new one is installed.
            continue
        if key in released:
            uninstall.append(key)
            continue
        first_seen = orphan_since.get(key, now)
        orphans[key] = first_seen
        due = first_seen + orphan_grace_s
        if due <= now:
            uninstall.append(key)
        else:
            timers.append(due - now)

    busy = set(inflight) | set(uninstall)
    finalize = tuple(
        p.key
        for p in pods
        if p.terminating and not any(s.key in busy or (s.key in actual and s.key not in wanted) for s in p.bizs)
    )
    return BasePlan(
        wanted=frozenset(wanted),
        install=tuple(install),
        uninstall=tuple(uninstall),
        finalize=finalize,
        orphans=orphans,
        wait_s=min(timers) if timers else None,
    )
