"""Drain before a base goes: what to do next for one vnode whose base is shutting down, as a kubectl drain would.

A base that says it is going (a DEACTIVATED heartbeat or health answer, or its own pod in the cluster terminating)
still runs its modules. Uninstalling them at once would drop their traffic and ignore PodDisruptionBudgets; leaving
them until the base dies would do the same a little later. So the vnode is drained the way ``kubectl drain``
drains a node:

- it is cordoned (``spec.unschedulable``, annotated as vkprovider's doing) so nothing new lands there;
- its module pods are evicted through the Eviction API, so PodDisruptionBudgets hold: an eviction refused (429)
  is asked again after ``EVICTION_RETRY_S``, as kubectl drain does; their workloads place replacements on other
  bases, and each evicted pod's bizs are uninstalled as for any deleted pod (after its graceful stop);
- pods of a DaemonSet are not evicted (their controller would put them back on the cordoned node; kubectl drain
  skips them too), nor are terminating or finished pods;
- nor are pods no controller owns (a bare pod): nothing would replace one, so evicting it would lose the module for
  good (kubectl drain refuses them unless ``--force``); it stays, not Ready while its base is deactivated
  (``BaseDeactivated``), and Ready again if the base comes back; if the base does go, its pod shows that;
- the drain stops at ``timeout_s`` after it began (measured on this replica's clock from when it first saw the
  drain: a failover restarts the count, which drains longer, never shorter) and says so;
- when the base comes back (ACTIVATED again) before it went, a cordon vkprovider made is lifted; a cordon a user
  made (``kubectl cordon``, no annotation) is never touched, and neither is the user's ``kubectl drain``.

Pure: the caller passes what the Node, the pods and the base say, and the clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

#: The annotation vkprovider puts on a vnode it cordoned, so it lifts only its own cordon.
CORDONED_BY = "vkprovider.koupleless.io/cordoned"
#: How long after a refused eviction (a PodDisruptionBudget) the pod is asked for again (kubectl drain: 5 s).
EVICTION_RETRY_S = 5.0


class DrainState(enum.StrEnum):
    IDLE = "idle"  # the base is not going
    DRAINING = "draining"
    DRAINED = "drained"  # nothing left to evict
    TIMED_OUT = "timed-out"


@dataclass(frozen=True, slots=True)
class DrainPod:
    """A module pod on the vnode, as drain sees it."""

    key: str
    terminating: bool = False
    terminal: bool = False
    daemon: bool = False  # owned by a DaemonSet
    unmanaged: bool = False  # no controller owns it (nothing would replace it)
    refused_at: float | None = None  # when its last eviction was refused (a PDB)


@dataclass(frozen=True, slots=True)
class DrainStep:
    state: DrainState
    cordon: bool = False
    uncordon: bool = False
    evict: tuple[str, ...] = ()
    wait_s: float | None = None  # look again after this (a refused eviction, the timeout)


def drain_step(*, going: bool, cordoned: bool, cordoned_by_us: bool, pods: tuple[DrainPod, ...],
               started_at: float | None, now: float, timeout_s: float) -> DrainStep:
    """The next step for one vnode (see the module docstring). ``started_at``: when this drain began (None: not
    begun)."""
    if not going:
        return DrainStep(DrainState.IDLE, uncordon=cordoned and cordoned_by_us)
    cordon = not cordoned
    if started_at is not None and now - started_at >= timeout_s:
        return DrainStep(DrainState.TIMED_OUT, cordon=cordon)
    candidates = [p for p in pods if not (p.terminating or p.terminal or p.daemon or p.unmanaged)]
    evict = tuple(p.key for p in candidates if p.refused_at is None or now - p.refused_at >= EVICTION_RETRY_S)
    waits = [EVICTION_RETRY_S - (now - p.refused_at) for p in candidates
             if p.refused_at is not None and now - p.refused_at < EVICTION_RETRY_S]
    if started_at is not None:
        waits.append(started_at + timeout_s - now)
    state = DrainState.DRAINING if candidates or any(p.terminating for p in pods) else DrainState.DRAINED
    return DrainStep(state, cordon=cordon, evict=evict, wait_s=min(waits) if waits and state is not
                     DrainState.DRAINED else None)
