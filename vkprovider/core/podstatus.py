"""Pod status from biz states: the table that decides what `kubectl get pods` tells a user.

Pure: given a pod, what its containers ask for, what the base reports and what vkprovider is doing about it,
return the pod status. The controller writes it only when ``status_changed`` says so.

| biz on the base / operation        | container state                     | ready |
|------------------------------------|-------------------------------------|-------|
| invalid container spec             | waiting MissingBizVersion/InvalidBizURL | no |
| absent, install pending or running | waiting ContainerCreating           | no    |
| absent, last install failed        | waiting BizInstallFailed (+ message)| no    |
| RESOLVED / UNRESOLVED              | waiting BizResolving                | no    |
| ACTIVATED                          | running since it was activated      | yes   |
| DEACTIVATED                        | terminated BizDeactivate → pod Failed | no  |
| BROKEN                             | waiting BizBroken (+ message)       | no    |
| STOPPED                            | terminated BizStopped               | no    |
| UNKNOWN                            | waiting BizStateUnknown             | no    |

Pod phase: Failed when a biz was deactivated (the seeds' BizDeactivate contract); Running when a container runs
or once the pod has been Running (a base restart shows as containers waiting, as kubelet shows a restart);
Pending otherwise. Terminal phases are never left.

One exception to Failed: when the version that took over belongs to a pod of the SAME workload (a rolling update
of one Deployment or DaemonSet), the old pod stays Running but not Ready, with reason BizDeactivate. Its controller
then removes it while scaling the old revision down (not-ready pods go first); a Failed pod would instead be
replaced by the old ReplicaSet, which would install the old version again and fight the rollout.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from vkprovider.core.compare import holds
from vkprovider.core.model import BizInfo, BizKey, BizState
from vkprovider.core.module import PodModules

REASON_BIZ_DEACTIVATE = "BizDeactivate"


class OpState(enum.StrEnum):
    """What vkprovider is doing (or last did) for one biz of a pod."""

    IDLE = "IDLE"
    INSTALLING = "INSTALLING"
    INSTALL_FAILED = "INSTALL_FAILED"
    UNINSTALLING = "UNINSTALLING"


@dataclass(frozen=True, slots=True)
class OpFacts:
    state: OpState
    message: str = ""


def ms_to_iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _waiting(reason: str, message: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {"reason": reason}
    if message:
        body["message"] = message
    return {"waiting": body}


def _container_state(
    biz: BizInfo | None, op: OpFacts | None, active: Mapping[str, str], now_iso: str
) -> tuple[dict[str, Any], bool]:
    if biz is None:
        if op is not None and op.state is OpState.INSTALL_FAILED:
            return _waiting("BizInstallFailed", op.message), False
        return _waiting("ContainerCreating", op.message if op else ""), False
    record = biz.last_record
    message = record.message if record else ""
    if biz.state is BizState.ACTIVATED:
        since = biz.time_entered(BizState.ACTIVATED)
        return {"running": {"startedAt": ms_to_iso(since) if since else now_iso}}, True
    if biz.state is BizState.DEACTIVATED:
        other = active.get(biz.name)
        why = f"{biz.name}:{other} is active on the base" if other and other != biz.version else message
        since = biz.time_entered(BizState.DEACTIVATED)
        return {
            "terminated": {
                "exitCode": 0,
                "reason": REASON_BIZ_DEACTIVATE,
                "message": f"biz {biz.key} was deactivated" + (f": {why}" if why else ""),
                "finishedAt": ms_to_iso(since) if since else now_iso,
            }
        }, False
    if biz.state is BizState.BROKEN:
        return _waiting("BizBroken", message), False
    if biz.state is BizState.STOPPED:
        return {"terminated": {"exitCode": 0, "reason": "BizStopped", "message": message}}, False
    if biz.state in (BizState.RESOLVED, BizState.UNRESOLVED):
        return _waiting("BizResolving", message), False
    return _waiting("BizStateUnknown", message), False


def pod_status(
    pod: Mapping[str, Any],
    modules: PodModules,
    bizs: Mapping[BizKey, BizInfo],
    ops: Mapping[BizKey, OpFacts],
    *,
    base_ip: str,
    now_iso: str,
    replaced_in_rollout: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """The status this module pod should have.

    ``replaced_in_rollout`` names the bizs whose newer version on the base belongs to this pod's own workload.
    """
    current = pod.get("status") or {}
    active = {b.name: b.version for b in bizs.values() if b.state is BizState.ACTIVATED}
    specs = {spec.name: spec for spec in modules.bizs}
    problems = {p.container: p for p in modules.problems}
    statuses: list[dict[str, Any]] = []
    failure: tuple[str, str] | None = None
    replaced: tuple[str, str] | None = None
    install_failure: str | None = None
    any_running = False
    for container in (pod.get("spec") or {}).get("containers") or []:
        name = container.get("name", "")
        spec = specs.get(name)
        if spec is None:
            problem = problems.get(name)
            state = _waiting(problem.reason, problem.message) if problem else _waiting("InvalidBizSpec")
            ready = False
            if problem and install_failure is None:
                install_failure = f"{name}: {problem.message}"
        else:
            biz = bizs.get(spec.key)
            state, ready = _container_state(biz, ops.get(spec.key), active, now_iso)
            terminated = state.get("terminated")
            if terminated and terminated["reason"] == REASON_BIZ_DEACTIVATE:
                if name in replaced_in_rollout:
                    replaced = replaced or (REASON_BIZ_DEACTIVATE, terminated["message"] + " (rolling update)")
                elif failure is None:
                    failure = (REASON_BIZ_DEACTIVATE, terminated["message"])
            waiting = state.get("waiting")
            if waiting and waiting["reason"] in ("BizInstallFailed", "BizBroken") and install_failure is None:
                install_failure = f"{name}: {waiting.get('message', waiting['reason'])}"
        any_running = any_running or "running" in state
        statuses.append(
            {
                "name": name,
                "image": container.get("image", ""),
                "imageID": "",
                "containerID": f"arklet://{name}:{spec.version}" if spec else "",
                "ready": ready,
                "started": "running" in state,
                "restartCount": 0,
                "state": state,
            }
        )
    all_ready = bool(statuses) and all(s["ready"] for s in statuses)
    if failure is not None:
        phase = "Failed"
    elif any_running or current.get("phase") == "Running":
        phase = "Running"
    else:
        phase = "Pending"
    ready_reason = None if all_ready else ("PodFailed" if failure else "ContainersNotReady")
    if replaced is not None and phase == "Pending":
        phase = "Running"
    conditions = [
        _condition("PodReadyToStartContainers", True),
        _condition("Initialized", True),
        _condition("ContainersReady", all_ready, ready_reason),
        _condition("Ready", all_ready, ready_reason),
    ]
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions,
        "containerStatuses": statuses,
        "hostIP": base_ip,
        "hostIPs": [{"ip": base_ip}],
        "podIP": base_ip,
        "podIPs": [{"ip": base_ip}],
        "startTime": current.get("startTime") or now_iso,
        "qosClass": current.get("qosClass") or "BestEffort",
    }
    if failure is not None:
        status["reason"], status["message"] = failure
    elif replaced is not None:
        status["reason"], status["message"] = replaced
    elif install_failure is not None:
        status["reason"], status["message"] = "BizNotReady", install_failure
    else:
        status["reason"], status["message"] = None, None
    return _with_times(status, current, now_iso)


def _condition(kind: str, ok: bool, reason: str | None = None) -> dict[str, Any]:
    cond: dict[str, Any] = {"type": kind, "status": "True" if ok else "False"}
    if reason:
        cond["reason"] = reason
    return cond


def _with_times(status: dict[str, Any], current: Mapping[str, Any], now_iso: str) -> dict[str, Any]:
    have = {c.get("type"): c for c in current.get("conditions") or []}
    conditions = []
    for cond in status["conditions"]:
        old = have.get(cond["type"])
        same = old is not None and old.get("status") == cond["status"]
        conditions.append({**cond, "lastProbeTime": None,
                           "lastTransitionTime": (old or {}).get("lastTransitionTime") if same else now_iso})
    return {**status, "conditions": conditions}


def status_changed(desired: Mapping[str, Any], current: Mapping[str, Any] | None) -> bool:
    """Whether writing ``desired`` would change anything a user can see (times of unchanged conditions aside)."""
    current = current or {}
    for key, value in desired.items():
        if key == "conditions":
            have = {c.get("type"): c for c in current.get("conditions") or []}
            for cond in value:
                got = have.get(cond["type"])
                if got is None or not holds(got, {k: cond.get(k) for k in ("status", "reason", "message")}):
                    return True
        elif not holds(current.get(key), value):
            return True
    return False


def status_patch(desired: Mapping[str, Any]) -> dict[str, Any]:
    """``desired`` as a strategic-merge patch body that also clears what it no longer sets.

    A merge keeps keys the patch leaves out: a condition's old ``reason`` or a container's old ``waiting`` state
    would survive next to the new one. Explicit nulls delete them.
    """
    patch = dict(desired)
    patch["conditions"] = [{"reason": None, "message": None, **c} for c in desired.get("conditions") or []]
    if "containerStatuses" in desired:
        patch["containerStatuses"] = [
            {**c, "state": {"waiting": None, "running": None, "terminated": None, **(c.get("state") or {})}}
            for c in desired["containerStatuses"]
        ]
    return patch


def not_a_module_status(pod: Mapping[str, Any], now_iso: str) -> dict[str, Any]:
    """A non-module pod that landed on a vnode: it fails clearly instead of hanging in Pending."""
    current = pod.get("status") or {}
    return {
        "phase": "Failed",
        "reason": "NotAModule",
        "message": "this pod was bound to a Koupleless virtual node but is not a module pod (label "
        "module-controller.koupleless.io/component=module or virtual-kubelet.koupleless.io/component=module)",
        "startTime": current.get("startTime") or now_iso,
    }
