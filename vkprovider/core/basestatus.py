"""The status every module pod of one base should show, from the base's ledger: one pure pass over a base's pods.

``core.podstatus`` maps one pod's bizs to its status; this module decides, for all the pods of a base at once,
what each of them is told about its bizs, because a pod's status depends on the other pods of the base:

- a biz replaced by ``uninstallThenInstall`` shows DEACTIVATED (reason Switched) on the pods of the old version;
- a biz running from another (newer) pod's jar URL under the same name:version is "replaced" on the older pod;
- a pod of an older revision left out for a newer one (``core.plan``'s outranked) says so (BizSuperseded);
- a pod whose version was taken over by a newer version of its *own* workload is "replaced in rollout": Running
  but not Ready, never Failed (so its ReplicaSet does not fight the rollout, see ``core.podstatus``);
- commands in flight, failures, refusals and a base that cannot be read become the containers' waiting reasons;
- a pod with probes or readiness gates is Ready as the kubelet decides it (``with_probe_readiness``: a container
  is ready when its probes say so, started when its startup probe has succeeded, and Ready needs every readiness
  gate's condition True); without either, an ACTIVATED biz is ready, as before;
- a Ready pod of a batched release may be held not Ready (``with_ready_held``);
- while the base is not Ready, every pod's Ready follows it; while its biz list is unknown nothing is said, except
  to a pod that never started on a base whose list cannot be read;
- a pod seen for the first time while its installs run gets no "ContainerCreating" for ``PENDING_WRITE_DEFER_S``
  (a fast install then goes straight to Running: one write instead of two).

Pure: the caller passes the clock and the stamp; table-tested in tests/unit/test_basestatus.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vkprovider.core.basestate import BaseLedger, CommandKind
from vkprovider.core.model import BizInfo, BizKey, BizSpec, BizState, BizStateRecord
from vkprovider.core.module import PodModules, is_terminal, is_terminating
from vkprovider.core.podstatus import (
    REASON_BIZ_DEACTIVATE,
    BaseCondition,
    OpFacts,
    OpState,
    is_ready_status,
    pod_status,
    with_base_not_ready,
    with_probe_readiness,
    with_ready_held,
)
from vkprovider.core.probe import ContainerProbeState
from vkprovider.core.release import HOLD_REASON

#: How long a new pod's first "ContainerCreating" status waits for its install (a fast one writes Running once).
PENDING_WRITE_DEFER_S = 1.0


@dataclass(frozen=True, slots=True)
class BaseFacts:
    """What the pods of a base are told about the base itself."""

    identity: str
    ip: str
    condition: BaseCondition

    @property
    def message(self) -> str:
        if self.condition is BaseCondition.UNREACHABLE:
            return f"base {self.identity} is unreachable"
        return f"base {self.identity} is shutting down (DEACTIVATED)"


@dataclass(frozen=True, slots=True)
class PodView:
    """One module pod as a pass over its base sees it. ``pod`` carries the status last written for it while the
    watch has not shown that write yet; ``installs_started`` says when each of its bizs' installs began (None: not
    installing)."""

    key: str
    pod: Mapping[str, Any]
    modules: PodModules
    workload: str | None
    order: str
    refused: str | None = None
    installs_started: tuple[float | None, ...] = ()
    probes: Mapping[str, ContainerProbeState] = field(default_factory=dict)  # biz containers with probes

    @property
    def kubelet_readiness(self) -> bool:
        """Whether Ready is decided as the kubelet decides it: the containers' probes, then the readiness gates."""
        return bool(self.probes) or bool((self.pod.get("spec") or {}).get("readinessGates"))


@dataclass(frozen=True, slots=True)
class StatusPlan:
    """Per pod key, the status it should show (absent: nothing to say); ``recheck_s``: when a deferred pod is due."""

    wanted: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    recheck_s: float | None = None


def finished_containers(pod: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Containers this pod's status shows as terminated BizDeactivate (name -> the state shown): their version was
    superseded on the base, so the pod never gets that biz again (restart-safe: read from the API, like a container
    that exited under restartPolicy Never)."""
    done: dict[str, Mapping[str, Any]] = {}
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        state = status.get("state") or {}
        terminated = state.get("terminated") or {}
        if terminated.get("reason") == REASON_BIZ_DEACTIVATE:
            done[str(status.get("name"))] = state
    return done


def op_facts(ledger: BaseLedger, spec: BizSpec, refused: str | None, url: str | None, *,
             crash_loop: str | None = None) -> OpFacts:
    """What vkprovider is doing about one biz of a pod, for its container's status."""
    if refused is not None:
        return OpFacts(OpState.IDLE, refused=refused)
    restart = ledger.restarts.get(spec.key)
    last_restart = (restart.why, restart.at_ms) if restart is not None else None
    failure = ledger.failures.get(spec.key)
    inflight = ledger.inflight.get(spec.key)
    if inflight is not None and inflight.kind is not CommandKind.UNINSTALL:
        attempts = failure.attempts if failure is not None else 0
        return OpFacts(OpState.INSTALLING, f"installing {spec.key}", attempts=attempts, installed_url=url)
    if failure is not None and failure.config:
        return OpFacts(OpState.CONFIG_ERROR, failure.message, installed_url=url)
    if failure is not None and failure.busy:
        return OpFacts(OpState.INSTALLING, f"installing {spec.key} (the base is busy with it)",
                       attempts=failure.attempts, installed_url=url)
    if failure is not None and failure.kind is not CommandKind.UNINSTALL:
        message = f"{failure.message} (attempt {failure.attempts}, retried with backoff)"
        return OpFacts(OpState.INSTALL_FAILED, message, attempts=failure.attempts,
                       failed_at_ms=failure.at_ms, installed_url=url)
    return OpFacts(OpState.IDLE, installed_url=url, crash_loop=crash_loop, last_restart=last_restart)


def base_pod_statuses(
    pods: Sequence[PodView],
    ledger: BaseLedger,
    base: BaseFacts,
    *,
    outranked: frozenset[tuple[str, BizKey]],
    now: float,
    stamp: str,
    hold_of: Callable[[Mapping[str, Any]], str | None] = lambda pod: None,
    crash_loop: frozenset[BizKey] = frozenset(),
) -> StatusPlan:
    """The status each pod of the base should show (see the module docstring). ``hold_of(pod)``: why a release
    holds the pod's Ready (None: not held)."""
    live = [p for p in pods if not is_terminating(p.pod) and not is_terminal(p.pod)]
    known = ledger.bizs
    wanted: dict[str, dict[str, Any]] = {}
    if known is None:
        for view in live:
            current = view.pod.get("status") or {}
            if base.condition is BaseCondition.READY:
                if ledger.read_error is None or current.get("containerStatuses"):
                    continue  # nothing known yet: say nothing rather than something wrong
                # The base's biz list cannot be read: a pod that never started says what it waits for.
                waiting = OpFacts(OpState.INSTALLING, f"waiting for base {base.identity}'s biz list: "
                                  f"{ledger.read_error}")
                wanted[view.key] = pod_status(view.pod, view.modules, {}, {s.key: waiting for s in view.modules.bizs},
                                              base_ip=base.ip, now_iso=stamp)
                continue
            not_ready = with_base_not_ready(current, base.condition, base.message, stamp)
            if not_ready is not None:
                wanted[view.key] = not_ready
        return StatusPlan(wanted)

    bizs: dict[BizKey, BizInfo] = dict(known)
    for old, new in ledger.superseded.items():
        record = BizStateRecord(0, BizState.DEACTIVATED, "Switched",
                                f"replaced by {new} (installStrategy uninstallThenInstall)")
        bizs.setdefault(old, BizInfo(old.name, old.version, BizState.DEACTIVATED, (record,)))
    active = {b.name: b.key for b in bizs.values() if b.state is BizState.ACTIVATED}
    workloads_wanting: dict[BizKey, set[str]] = {}
    newest_url: dict[BizKey, tuple[str, str]] = {}
    for view in live:
        for spec in view.modules.bizs:
            if view.workload is not None:
                workloads_wanting.setdefault(spec.key, set()).add(view.workload)
            if spec.key not in newest_url or newest_url[spec.key][0] < view.order:
                newest_url[spec.key] = (view.order, spec.url)
    installed = ledger.installed_urls
    recheck: float | None = None
    for view in live:
        current = view.pod.get("status") or {}
        finished = finished_containers(view.pod)
        pod_bizs = bizs
        ops: dict[BizKey, OpFacts] = {}
        for spec in view.modules.bizs:
            if spec.name in finished:
                continue
            url = installed.get(spec.key)
            newest = newest_url.get(spec.key)
            if (url is not None and url != spec.url and spec.key in bizs and newest is not None
                    and newest[1] != spec.url):
                # Another (newer) pod's jar URL runs under this name:version: this container is replaced.
                record = BizStateRecord(0, BizState.DEACTIVATED, "Switched", f"{spec.key} now runs from {url}")
                pod_bizs = {**pod_bizs, spec.key: BizInfo(spec.name, spec.version, BizState.DEACTIVATED, (record,))}
                continue
            if (view.key, spec.key) in outranked and spec.key not in bizs:
                ops[spec.key] = OpFacts(OpState.OUTRANKED, f"a newer revision of this pod's workload has "
                                        f"{spec.name} on the base; {spec.key} is not installed over it")
                continue
            looping = None
            if spec.key in crash_loop:
                restart = ledger.restarts.get(spec.key)
                wait_s = max(0, round(ledger.restart_allowed_at(spec.key) - now)) if restart is not None else 0
                looping = f"back-off {wait_s}s restarting failed container={spec.name} pod={view.key}"
            ops[spec.key] = op_facts(ledger, spec, view.refused, url, crash_loop=looping)
        workload = view.workload
        pod_active = {b.name: b.key for b in pod_bizs.values() if b.state is BizState.ACTIVATED} or active
        replaced = frozenset(
            spec.name for spec in view.modules.bizs
            if workload is not None and spec.name in pod_active and pod_active[spec.name] != spec.key
            and workload in workloads_wanting.get(pod_active[spec.name], ())
        ) | frozenset(
            spec.name for spec in view.modules.bizs
            if spec.name in finished and workload is not None
            and any(workload in workloads_wanting.get(k, ()) for k in bizs if k.name == spec.name)
        ) | frozenset(
            spec.name for spec in view.modules.bizs
            if workload is not None and spec.key in installed and installed[spec.key] != spec.url
            and workload in workloads_wanting.get(spec.key, ())
        )
        desired = pod_status(view.pod, view.modules, pod_bizs, ops, base_ip=base.ip, now_iso=stamp,
                             replaced_in_rollout=replaced, base=base.condition, base_message=base.message,
                             finished=finished)
        if view.kubelet_readiness:
            desired = with_probe_readiness(desired, view.pod, view.probes, stamp)
        if is_ready_status(desired):
            hold = hold_of(view.pod)
            if hold is not None:
                desired = with_ready_held(desired, current, HOLD_REASON, hold, stamp)
        # Nothing written by vkprovider yet (the scheduler's PodScheduled condition aside): defer a Pending.
        if desired["phase"] == "Pending" and not current.get("containerStatuses") and \
                base.condition is BaseCondition.READY:
            started = view.installs_started
            if started and all(t is not None and now - t < PENDING_WRITE_DEFER_S for t in started):
                due = max(t for t in started if t is not None) + PENDING_WRITE_DEFER_S - now
                recheck = due if recheck is None else min(recheck, due)
                continue
        wanted[view.key] = desired
    return StatusPlan(wanted, recheck)
