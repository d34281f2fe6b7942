"""Pod status from biz states: the table that decides what `kubectl get pods` tells a user.

Pure: given a pod, what its containers ask for, what the base reports and what vkprovider knows besides (commands
in flight, failures, the URL each biz runs from, whether the base itself is ready), return the pod status. The
controller writes it only when ``status_changed`` says so.

| biz on the base / operation        | container state                        | ready |
|------------------------------------|----------------------------------------|-------|
| invalid container spec             | waiting MissingBizVersion/InvalidBizURL/InvalidInstallStrategy | no |
| refused by policy                  | waiting BizNotAllowed                  | no    |
| absent, install pending or running | waiting ContainerCreating              | no    |
| absent, last install failed        | waiting BizInstallFailed (+ lastState, restartCount) | no |
| RESOLVED / UNRESOLVED              | waiting BizResolving                   | no    |
| ACTIVATED                          | running since it was activated         | yes   |
| DEACTIVATED, or replaced           | terminated BizDeactivate → pod Failed  | no    |
| BROKEN                             | waiting BizBroken (+ message)          | no    |
| STOPPED                            | terminated BizStopped                  | no    |
| UNKNOWN                            | waiting BizStateUnknown                | no    |
| sidecar (image is not a jar)       | running since the pod started          | yes   |

A pod's readiness also follows its base, as a pod's follows its kubelet: while the base is unreachable or has
said DEACTIVATED, every container shows ready=false and the Ready condition is False with reason
``BaseUnreachable`` / ``BaseDeactivated`` (containers keep their last known state). ``restartCount`` counts the
times a biz had to be installed again (failed installs, a base that lost it); ``imageID`` and ``image`` report the
jar URL that actually runs.

Pod phase: Failed when a biz was deactivated (the seeds' BizDeactivate contract); Running when a container runs
or once the pod has been Running (a base restart shows as containers waiting, as kubelet shows a restart);
Pending otherwise. Terminal phases are never left.

Probes and readiness gates (``with_probe_readiness``, after ``pod_status``): a running biz container is ready only
when its probes say so (``core.probe``), and the pod's Ready is True only when every container is ready and every
``spec.readinessGates[].conditionType`` has a True condition in ``status.conditions``. The ContainersReady and Ready
conditions then read as kubelet writes them (``ready_conditions``: reason ContainersNotReady with "containers with
unready status: [a b]", ReadinessGatesNotReady with "corresponding condition of pod readiness gate "x" does not
exist."), unless the pod failed or its base is not ready: those reasons stay.

One exception to Failed: when the version that took over belongs to a pod of the SAME workload (a rolling update
of one Deployment or DaemonSet), the old pod stays Running but not Ready, with reason BizDeactivate. Its controller
then removes it while scaling the old revision down (not-ready pods go first); a Failed pod would instead be
replaced by the old ReplicaSet, which would install the old version again and fight the rollout.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from vkprovider.core.compare import holds
from vkprovider.core.model import BizInfo, BizKey, BizState
from vkprovider.core.module import PodModules
from vkprovider.core.probe import ContainerProbeState
from vkprovider.core.sanitize import clean

REASON_BIZ_DEACTIVATE = "BizDeactivate"
REASON_SUPERSEDED = "BizSuperseded"
REASON_INSTALL_FAILED = "BizInstallFailed"


class BaseCondition(enum.StrEnum):
    """Whether the base a pod is bound to can run it right now."""

    READY = "Ready"
    UNREACHABLE = "BaseUnreachable"
    DEACTIVATED = "BaseDeactivated"


class OpState(enum.StrEnum):
    """What vkprovider is doing (or last did) for one biz of a pod."""

    IDLE = "IDLE"
    INSTALLING = "INSTALLING"
    INSTALL_FAILED = "INSTALL_FAILED"
    UNINSTALLING = "UNINSTALLING"
    OUTRANKED = "OUTRANKED"  # not installed: a newer revision of the pod's workload has this biz on the base
    CONFIG_ERROR = "CONFIG_ERROR"  # not installed: its configuration cannot be made (CreateContainerConfigError)


@dataclass(frozen=True, slots=True)
class OpFacts:
    """What vkprovider knows about one biz of a pod besides the base's report."""

    state: OpState
    message: str = ""
    attempts: int = 0  # consecutive failed installs (for restartCount / CrashLoopBackOff-like status)
    failed_at_ms: int | None = None
    installed_url: str | None = None  # the URL the biz on the base came from, when known
    crash_loop: str | None = None  # a restart is due and waits for its backoff: the CrashLoopBackOff message
    last_restart: tuple[str, int] | None = None  # (why, when in epoch ms) of the last restart a probe asked for
    refused: str | None = None  # policy refusal (namespace policy): the biz is not installed at all


def ms_to_iso(ms: int) -> str:
    """RFC 3339 in UTC with second precision (a pod status's times), of a time in milliseconds since the epoch."""
    return second_to_iso(ms // 1000)


@functools.lru_cache(maxsize=4096)
def second_to_iso(second: int) -> str:
    """RFC 3339 of a whole second; remembered, as a pass over a base formats the same few seconds again and again."""
    return datetime.fromtimestamp(second, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _waiting(reason: str, message: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {"reason": reason}
    if message:
        body["message"] = clean(message)
    return {"waiting": body}


def _previous(current: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    for status in current.get("containerStatuses") or []:
        if status.get("name") == name:
            return status  # type: ignore[no-any-return]
    return {}


def _started_at(biz: BizInfo, previous: Mapping[str, Any], now_iso: str) -> str:
    since = biz.time_entered(BizState.ACTIVATED)
    if since:
        return ms_to_iso(since)
    # No ACTIVATED record (some bases send none): keep the time first shown, so the status does not change.
    running = (previous.get("state") or {}).get("running") or {}
    return str(running.get("startedAt") or now_iso)


def _container_state(
    biz: BizInfo | None, op: OpFacts | None, active: Mapping[str, str], previous: Mapping[str, Any], now_iso: str
) -> tuple[dict[str, Any], bool]:
    if op is not None and op.refused:
        return _waiting("BizNotAllowed", op.refused), False
    if biz is None:
        if op is not None and op.state is OpState.INSTALL_FAILED:
            return _waiting(REASON_INSTALL_FAILED, op.message), False
        if op is not None and op.state is OpState.OUTRANKED:
            return _waiting(REASON_SUPERSEDED, op.message), False
        if op is not None and op.state is OpState.CONFIG_ERROR:
            return _waiting("CreateContainerConfigError", op.message), False
        return _waiting("ContainerCreating", op.message if op else ""), False
    record = biz.last_record
    message = record.message if record else ""
    if biz.state is BizState.ACTIVATED and op is not None and op.crash_loop:
        return _waiting("CrashLoopBackOff", op.crash_loop), False
    if biz.state is BizState.ACTIVATED:
        return {"running": {"startedAt": _started_at(biz, previous, now_iso)}}, True
    if biz.state is BizState.DEACTIVATED:
        other = active.get(biz.name)
        why = f"{biz.name}:{other} is active on the base" if other and other != biz.version else message
        since = biz.time_entered(BizState.DEACTIVATED)
        before = (previous.get("state") or {}).get("terminated") or {}
        return {
            "terminated": {
                "exitCode": 0,
                "reason": REASON_BIZ_DEACTIVATE,
                "message": clean(f"biz {biz.key} was deactivated" + (f": {why}" if why else "")),
                "finishedAt": ms_to_iso(since) if since else str(before.get("finishedAt") or now_iso),
            }
        }, False
    if biz.state is BizState.BROKEN:
        return _waiting("BizBroken", message), False
    if biz.state is BizState.STOPPED:
        return {"terminated": {"exitCode": 0, "reason": "BizStopped", "message": clean(message)}}, False
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
    base: BaseCondition = BaseCondition.READY,
    base_message: str = "",
    no_biz_message: str = "",
    finished: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The status this module pod should have.

    ``replaced_in_rollout`` names the bizs whose newer version on the base belongs to this pod's own workload.
    ``finished`` maps containers that are done (their version was superseded, shown terminated BizDeactivate)
    to the state shown before, which is kept as it is.
    """
    finished = finished or {}
    current = pod.get("status") or {}
    active = {b.name: b.version for b in bizs.values() if b.state is BizState.ACTIVATED}
    specs = {spec.name: spec for spec in modules.bizs}
    problems = {p.container: p for p in modules.problems}
    sidecars = set(modules.sidecars)
    start_time = current.get("startTime") or now_iso
    statuses: list[dict[str, Any]] = []
    failure: tuple[str, str] | None = None
    replaced: tuple[str, str] | None = None
    install_failure: str | None = None
    any_running = False
    for container in (pod.get("spec") or {}).get("containers") or []:
        name = container.get("name", "")
        image = container.get("image", "")
        previous = _previous(current, name)
        spec = specs.get(name)
        restarts = int(previous.get("restartCount") or 0)
        last_state: dict[str, Any] | None = None
        image_id = ""
        if name in sidecars:
            prev_running = ((previous.get("state") or {}).get("running") or {}).get("startedAt")
            state, ready = {"running": {"startedAt": prev_running or start_time}}, True
            container_id = f"arklet://sidecar/{name}"
        elif spec is not None and name in finished:
            state, ready = {k: dict(v) for k, v in finished[name].items()}, False
            container_id = f"arklet://{name}:{spec.version}"
            image = str(previous.get("image") or image)
            image_id = str(previous.get("imageID") or "")
            shown = state.get("terminated") or {}
            if name in replaced_in_rollout:
                replaced = replaced or (REASON_BIZ_DEACTIVATE, str(shown.get("message", "")) + " (rolling update)")
            elif failure is None:
                failure = (REASON_BIZ_DEACTIVATE, str(shown.get("message", "")))
        elif spec is None:
            problem = problems.get(name)
            state = _waiting(problem.reason, problem.message) if problem else _waiting("InvalidBizSpec")
            ready = False
            container_id = ""
            if problem and install_failure is None:
                install_failure = f"{name}: {problem.message}"
        else:
            biz = bizs.get(spec.key)
            op = ops.get(spec.key)
            state, ready = _container_state(biz, op, active, previous, now_iso)
            container_id = f"arklet://{name}:{spec.version}"
            prev_state = previous.get("state") or {}
            prev_started = (prev_state.get("running") or {}).get("startedAt")
            now_started = (state.get("running") or {}).get("startedAt")
            waiting_now = str((state.get("waiting") or {}).get("reason") or "")
            was_looping = ((prev_state.get("waiting") or {}).get("reason") == "CrashLoopBackOff")
            if (prev_started and ((waiting_now and waiting_now != "CrashLoopBackOff")
                                  or (now_started and now_started != prev_started))) or (was_looping and now_started):
                # it ran and had to be installed again (the base lost it, a probe restarted it): a restart; a
                # crash-loop backoff counts when the container runs again after it, as the kubelet counts
                restarts += 1
            if op is not None:
                if op.state is OpState.INSTALL_FAILED and op.failed_at_ms is not None:
                    failed_at = ms_to_iso(op.failed_at_ms)
                    last_state = {"terminated": {"exitCode": 1, "reason": REASON_INSTALL_FAILED,
                                                 "message": clean(op.message), "finishedAt": failed_at}}
                    last_shown = ((previous.get("lastState") or {}).get("terminated") or {}).get("finishedAt")
                    if last_shown != failed_at and op.attempts > 1:
                        restarts += 1  # another failed attempt since the status was last shown
                elif op.last_restart is not None and last_state is None:
                    why, at_ms = op.last_restart
                    last_state = {"terminated": {"exitCode": 143, "reason": "Error", "message": clean(why),
                                                 "finishedAt": ms_to_iso(at_ms)}}
                if op.installed_url and biz is not None:
                    image = op.installed_url
            if biz is not None:
                image_id = image
            terminated = state.get("terminated")
            if terminated and terminated["reason"] == REASON_BIZ_DEACTIVATE:
                if name in replaced_in_rollout:
                    replaced = replaced or (REASON_BIZ_DEACTIVATE, terminated["message"] + " (rolling update)")
                elif failure is None:
                    failure = (REASON_BIZ_DEACTIVATE, terminated["message"])
            waiting = state.get("waiting")
            if waiting and waiting["reason"] == REASON_SUPERSEDED and replaced is None:
                replaced = (REASON_SUPERSEDED, str(waiting.get("message", "")))
            if waiting and waiting["reason"] in (REASON_INSTALL_FAILED, "BizBroken", "BizNotAllowed") \
                    and install_failure is None:
                install_failure = f"{name}: {waiting.get('message', waiting['reason'])}"
        if base is not BaseCondition.READY:
            ready = False
        any_running = any_running or ("running" in state and name not in sidecars)
        entry: dict[str, Any] = {
            "name": name,
            "image": image,
            "imageID": image_id,
            "containerID": container_id,
            "ready": ready,
            "started": "running" in state,
            "restartCount": restarts,
            "state": state,
        }
        if last_state is not None:
            entry["lastState"] = last_state
        statuses.append(entry)
    all_ready = bool(statuses) and all(s["ready"] for s in statuses)
    if not modules.bizs and not modules.problems:
        all_ready = False
        install_failure = install_failure or (no_biz_message or "the pod has no biz container (no image names a jar)")
    if failure is not None:
        phase = "Failed"
    elif any_running or current.get("phase") == "Running":
        phase = "Running"
    else:
        phase = "Pending"
    if all_ready:
        ready_reason = None
    elif failure:
        ready_reason = "PodFailed"
    elif base is not BaseCondition.READY:
        ready_reason = base.value
    else:
        ready_reason = "ContainersNotReady"
    if replaced is not None and replaced[0] == REASON_BIZ_DEACTIVATE and phase == "Pending":
        phase = "Running"
    ready_message = clean(base_message) if ready_reason == base.value and base_message else None
    conditions = [
        _condition("PodReadyToStartContainers", True),
        _condition("Initialized", True),
        _condition("ContainersReady", all_ready, ready_reason, ready_message),
        _condition("Ready", all_ready, ready_reason, ready_message),
    ]
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions,
        "containerStatuses": statuses,
        "hostIP": base_ip,
        "hostIPs": [{"ip": base_ip}],
        "podIP": base_ip,
        "podIPs": [{"ip": base_ip}],
        "startTime": start_time,
        "qosClass": current.get("qosClass") or "BestEffort",
    }
    if failure is not None:
        status["reason"], status["message"] = failure
    elif replaced is not None:
        status["reason"], status["message"] = replaced
    elif install_failure is not None:
        status["reason"], status["message"] = "BizNotReady", clean(install_failure)
    else:
        status["reason"], status["message"] = None, None
    return _with_times(status, current, now_iso)


def is_ready_status(status: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def with_ready_held(status: Mapping[str, Any], current: Mapping[str, Any] | None, reason: str, message: str,
                    now_iso: str) -> dict[str, Any]:
    """``status`` with the pod's Ready condition held False (its containers stay ready): the batch gate of a
    batched release, as a readiness gate would hold it."""
    held = [_condition("Ready", False, reason, clean(message)) if c.get("type") == "Ready" else
            {k: v for k, v in c.items() if k not in ("lastProbeTime", "lastTransitionTime")}
            for c in status.get("conditions") or []]
    return _with_times({**status, "conditions": held}, current or {}, now_iso)


def _condition(kind: str, ok: bool, reason: str | None = None, message: str | None = None) -> dict[str, Any]:
    cond: dict[str, Any] = {"type": kind, "status": "True" if ok else "False"}
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
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


NOT_A_MODULE_MESSAGE = (
    "this pod is bound to a Koupleless virtual node but is not a module pod (label "
    "module-controller.koupleless.io/component=module or virtual-kubelet.koupleless.io/component=module): "
    "vkprovider leaves it alone; give it a nodeSelector or affinity that keeps it off virtual nodes"
)


def not_a_module_condition(pod: Mapping[str, Any], now_iso: str) -> dict[str, Any] | None:
    """The one condition a non-module pod on a vnode gets (None when it already has it).

    It is not marked Failed: its controller (a DaemonSet that tolerates every taint, say) would replace it
    forever. It stays Pending with Ready=False and this reason, and nothing else is done to it.
    """
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready" and cond.get("reason") == "NotAModule":
            return None
    return {"conditions": [{"type": "Ready", "status": "False", "reason": "NotAModule",
                            "message": NOT_A_MODULE_MESSAGE, "lastProbeTime": None,
                            "lastTransitionTime": now_iso}]}


def with_base_not_ready(current: Mapping[str, Any], base: BaseCondition, message: str,
                        now_iso: str) -> dict[str, Any] | None:
    """A pod's current status with every container not ready because of its base, for when the base's bizs are
    not known (it went silent before they were read); None when the status already says so."""
    if base is BaseCondition.READY or not current:
        return None
    reason = base.value
    statuses = [{**c, "ready": False} for c in current.get("containerStatuses") or []]
    conditions = []
    for kind in ("ContainersReady", "Ready"):
        conditions.append({"type": kind, "status": "False", "reason": reason, "message": clean(message)})
    wanted = {**current, "containerStatuses": statuses, "conditions": conditions}
    if not status_changed({"containerStatuses": statuses, "conditions": conditions}, current):
        return None
    return _with_times(wanted, current, now_iso)


# --- probes and readiness gates (kubelet's pkg/kubelet/status/generate.go) ------------------------------------

REASON_CONTAINERS_NOT_READY = "ContainersNotReady"
REASON_READINESS_GATES_NOT_READY = "ReadinessGatesNotReady"


def _go_list(names: list[str]) -> str:
    return "[" + " ".join(names) + "]"  # Go's %s of a []string


def ready_conditions(pod: Mapping[str, Any], container_ready: Mapping[str, bool], *,
                     phase: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ContainersReady and Ready conditions kubelet computes (``GenerateContainersReadyCondition``,
    ``GeneratePodReadyCondition``), without times.

    ``container_ready`` maps each container with a status to whether it is ready (a container of the spec missing
    from it has an unknown status). ``phase`` defaults to the pod's own. Ready needs ContainersReady and every
    readiness gate's condition True in the pod's ``status.conditions``.
    """
    phase = phase if phase is not None else (pod.get("status") or {}).get("phase")
    unknown: list[str] = []
    unready: list[str] = []
    for container in (pod.get("spec") or {}).get("containers") or []:
        name = str(container.get("name", ""))
        if name not in container_ready:
            unknown.append(name)
        elif not container_ready[name]:
            unready.append(name)
    if (phase == "Succeeded" and not unknown) or phase == "Failed":
        reason = "PodCompleted" if phase == "Succeeded" else "PodFailed"
        return _condition("ContainersReady", False, reason), _condition("Ready", False, reason)
    messages = []
    if unknown:
        messages.append(f"containers with unknown status: {_go_list(unknown)}")
    if unready:
        messages.append(f"containers with unready status: {_go_list(unready)}")
    if messages:
        message = ", ".join(messages)
        return (_condition("ContainersReady", False, REASON_CONTAINERS_NOT_READY, message),
                _condition("Ready", False, REASON_CONTAINERS_NOT_READY, message))
    have = {c.get("type"): c for c in (pod.get("status") or {}).get("conditions") or []}
    gates = []
    for gate in (pod.get("spec") or {}).get("readinessGates") or []:
        kind = str(gate.get("conditionType", "")) if isinstance(gate, Mapping) else ""
        cond = have.get(kind)
        if cond is None:
            gates.append(f'corresponding condition of pod readiness gate "{kind}" does not exist.')
        elif cond.get("status") != "True":
            gates.append(f'the status of pod readiness gate "{kind}" is not "True", but {cond.get("status")}')
    if gates:
        return (_condition("ContainersReady", True),
                _condition("Ready", False, REASON_READINESS_GATES_NOT_READY, ", ".join(gates)))
    return _condition("ContainersReady", True), _condition("Ready", True)


def with_probe_readiness(status: Mapping[str, Any], pod: Mapping[str, Any],
                         probes: Mapping[str, ContainerProbeState], now_iso: str) -> dict[str, Any]:
    """``status`` (from ``pod_status``) with the probes' verdicts and the readiness gates applied.

    A running container named in ``probes`` is ready only if its probes say so and ``started`` follows its
    startup probe; a container that is not running is left as it is. ContainersReady and Ready are then kubelet's
    (``ready_conditions``), except when ``status`` holds them False for a reason of its own (the pod failed, its
    base is unreachable or deactivated): that stays. Pass probe states only for biz containers (a sidecar runs
    nowhere to be probed). Apply it before ``with_ready_held`` (a batch gate holds Ready on top).
    """
    statuses = []
    ready: dict[str, bool] = {}
    for shown in status.get("containerStatuses") or []:
        name = str(shown.get("name", ""))
        probe = probes.get(name)
        entry = dict(shown)
        if probe is not None and "running" in (entry.get("state") or {}):
            entry["ready"] = bool(entry.get("ready")) and probe.ready
            entry["started"] = probe.started
        statuses.append(entry)
        ready[name] = bool(entry.get("ready"))
    conditions = [{k: v for k, v in c.items() if k not in ("lastProbeTime", "lastTransitionTime")}
                  for c in status.get("conditions") or []]
    held = next((c for c in conditions if c.get("type") == "ContainersReady" and c.get("status") != "True"
                 and c.get("reason") not in (None, REASON_CONTAINERS_NOT_READY)), None)
    if held is None:
        containers_ready, pod_ready = ready_conditions(pod, ready, phase=status.get("phase"))
        fresh = {"ContainersReady": containers_ready, "Ready": pod_ready}
        conditions = [fresh.pop(str(c.get("type")), c) for c in conditions] + list(fresh.values())
    current = pod.get("status") or {}
    return _with_times({**status, "containerStatuses": statuses, "conditions": conditions}, current, now_iso)
