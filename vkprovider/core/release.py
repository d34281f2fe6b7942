"""Release strategies on plain Deployments, decided purely: peer replica sync and batched, pausable releases.

**Peer Deployments** (label ``virtual-kubelet.koupleless.io/strategy=peer``, not ``replicas-control=true``):
``replicas`` follows the number of Ready vnodes of the Deployment's base cluster, read as the Go controller reads
it (the ``base.koupleless.io/cluster-name`` label on the Deployment, else its template's nodeSelector, else the
first value of a required node-affinity term on that key). Unlike the Go controller only this ENV's vnodes count,
and a lower count must hold for ``scale_down_delay_s`` before replicas go down: a flapping base, or a failover that
restarts the observation, never uninstalls the module from healthy bases. Going up is immediate.

**Batched releases** (annotations under ``release.koupleless.io/``, see ``docs/releases.md``): a new pod template
is released batch by batch (``batches: "1,50%,100%"``, cumulative targets), each batch followed by a wait for the
user's confirmation (``confirm: manual``; ``confirmed-batch: "<n>"`` or ``kubectl rollout resume``) or for
``grey-seconds``. The native Deployment controller moves the pods; vkprovider bounds how far it can go:

- the rolling update is bounded to one batch (``replace`` mode: ``maxUnavailable`` = the batch's size and
  ``maxSurge`` 0, a base gives up its old instance before it gets the new one; ``surge`` mode: ``maxSurge`` = the
  batch's size and ``maxUnavailable`` 0, for clusters with spare bases). At rest the bound is the first batch's,
  so a template change moves at most one batch before vkprovider has even looked;
- the controller only moves further when new pods become *available*, and vkprovider writes pod readiness: a
  pod of the new template whose biz is installed (``ContainersReady``) is held not-Ready until the batch is
  complete **and** the Deployment is paused and the controller has observed the pause. So exactly one batch moves,
  whatever the timing, and a restart mid-batch resumes from the annotations alone (level-based);
- progress is the ``state`` annotation (JSON) plus Events; a rollback (``kubectl rollout undo``) is a new
  template and is released the same way.

**Who owns which field** (two writers: vkprovider, and whatever applies the user's manifest - ``kubectl apply``,
Argo CD, Flux). vkprovider writes its fields by server-side apply, field manager ``vkprovider``, ``force``, with
the resourceVersion it decided on as precondition; the user's manifest leaves those fields out (docs/releases.md,
"GitOps"). Its fields: ``spec.replicas`` of a peer Deployment; of a batched one the ``state`` annotation, the
rollout bound (``strategy.type`` RollingUpdate and ``rollingUpdate.maxSurge``/``maxUnavailable``) and
``spec.paused`` when it pauses or lifts a pause at a batch boundary. The rules (:func:`apply_config`):

- level-based: what vkprovider wants follows from the Deployment alone (the bound from the state's batch, in
  every phase; the peer count from the bases), and it applies whenever a wanted field has another value *or is
  not held by its Apply entry in managedFields*. So a re-apply that resets a field is undone at once, and a field
  that already has the right value is still claimed: vkprovider co-owns it, and a manifest that stops setting it
  (the documented migration) gives up only the GitOps tool's share - the apiserver would otherwise delete or
  default the field (``replicas`` 1), uninstalling the module from all bases but one;
- an apply is a manager's whole intent (a held field left out is given up, and deleted if nobody else holds it),
  so each apply carries every field vkprovider holds at its live value besides the ones it wants: vkprovider never
  drops a field by omission. A field it holds is let go only when someone else changes it (ownership moves with
  the value), e.g. ``kubectl rollout pause``/``resume`` on ``paused``: the user's pause stays theirs;
- a server-side apply cannot remove another manager's field, so the stale ``confirmed-batch`` of an earlier
  release is cleared by a merge patch first, before the new release's state is applied.

This module has no I/O; ``controllers.releases`` feeds it the Deployment and counts of the new template's pods.
"""

from __future__ import annotations

import enum
import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson

STRATEGY_LABEL = "virtual-kubelet.koupleless.io/strategy"
REPLICAS_CONTROL_LABEL = "virtual-kubelet.koupleless.io/replicas-control"
CLUSTER_LABEL = "base.koupleless.io/cluster-name"
PREFIX = "release.koupleless.io/"
BATCHES = PREFIX + "batches"
CONFIRM = PREFIX + "confirm"
CONFIRMED = PREFIX + "confirmed-batch"
GREY_SECONDS = PREFIX + "grey-seconds"
MODE = PREFIX + "mode"
STATE = PREFIX + "state"
REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
TEMPLATE_HASH = "pod-template-hash"
HOLD_REASON = "ReleaseBatchHold"


# --- peer Deployments ----------------------------------------------------------------------------------------

def is_peer(deployment: Mapping[str, Any]) -> bool:
    labels = (deployment.get("metadata") or {}).get("labels") or {}
    return labels.get(STRATEGY_LABEL) == "peer" and labels.get(REPLICAS_CONTROL_LABEL) != "true"


def cluster_of(deployment: Mapping[str, Any]) -> str | None:
    """The base cluster a peer Deployment follows, read as the Go controller reads it."""
    labels = (deployment.get("metadata") or {}).get("labels") or {}
    if labels.get(CLUSTER_LABEL):
        return str(labels[CLUSTER_LABEL])
    pod_spec = (((deployment.get("spec") or {}).get("template") or {}).get("spec") or {})
    selector = pod_spec.get("nodeSelector") or {}
    if selector.get(CLUSTER_LABEL):
        return str(selector[CLUSTER_LABEL])
    required = (((pod_spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    for term in required.get("nodeSelectorTerms") or []:
        for expression in term.get("matchExpressions") or []:
            if expression.get("key") == CLUSTER_LABEL and expression.get("values"):
                return str(expression["values"][0])
    return None


@dataclass(frozen=True, slots=True)
class PeerDecision:
    replicas: int | None  # write this, or None
    lower_since: float | None  # when the count was first seen below replicas (the debounce), to remember
    wait_s: float | None = None  # look again after this long (a scale-down is pending)


def peer_replicas(current: int, ready: int, *, lower_since: float | None, now: float,
                  scale_down_delay_s: float) -> PeerDecision:
    """Up at once; down only after the count has stayed lower for the whole delay."""
    if ready > current:
        return PeerDecision(ready, None)
    if ready == current:
        return PeerDecision(None, None)
    since = lower_since if lower_since is not None else now
    if now - since >= scale_down_delay_s:
        return PeerDecision(ready, None)
    return PeerDecision(None, since, since + scale_down_delay_s - now)


# --- batched releases ----------------------------------------------------------------------------------------

class Phase(enum.StrEnum):
    MOVING = "Moving"  # the controller moves the batch's pods; their readiness is held until the batch is done
    WAITING = "Waiting"  # the batch is complete, the Deployment paused: waiting for confirmation or grey time
    DONE = "Done"


class Mode(enum.StrEnum):
    REPLACE = "replace"  # maxUnavailable = batch size, maxSurge 0
    SURGE = "surge"  # maxSurge = batch size, maxUnavailable 0


@dataclass(frozen=True, slots=True)
class ReleaseState:
    revision: str  # digest of the pod template being released
    batch: int  # 0-based index of the batch moving or waiting
    phase: Phase
    since: float  # epoch seconds when the phase began
    go: bool = False  # WAITING only: the go-ahead was given before the batch's pods turned Ready
    rs_revision: int = 0  # the released template's ReplicaSet revision, once known

    def encode(self) -> str:
        raw: dict[str, Any] = {"revision": self.revision, "batch": self.batch + 1, "phase": self.phase.value,
                               "since": round(self.since, 3)}
        if self.rs_revision:
            raw["rsRevision"] = self.rs_revision
        if self.go:
            raw["go"] = True
        return orjson.dumps(raw).decode()

    @classmethod
    def decode(cls, text: object) -> ReleaseState | None:
        if not isinstance(text, str) or not text:
            return None
        try:
            raw = orjson.loads(text)
            return cls(str(raw["revision"]), int(raw["batch"]) - 1, Phase(raw["phase"]), float(raw["since"]),
                       bool(raw.get("go", False)), int(raw.get("rsRevision", 0)))
        except (orjson.JSONDecodeError, KeyError, ValueError, TypeError):
            return None


def parse_batches(text: str, replicas: int) -> list[int] | str:
    """``"1,50%,100%"`` → cumulative targets ``[1, 5, 10]`` for 10 replicas; an error text when malformed.

    Each target is at least 1 and at most ``replicas``; equal neighbours merge; the last is always ``replicas``.
    """
    targets: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            number = float(part[:-1]) if part.endswith("%") else int(part)
        except ValueError:
            return f"batch {part!r} is neither a number nor a percentage"
        if number <= 0 or not math.isfinite(number):
            return f"batch {part!r} must be positive"
        value = math.ceil(replicas * number / 100) if part.endswith("%") else int(number)
        value = min(max(value, 1), replicas) if replicas else 0
        if targets and value < targets[-1]:
            return f"batches must not decrease ({text!r})"
        if not targets or value > targets[-1]:
            targets.append(value)
    if not targets or targets[-1] != replicas:
        targets.append(replicas)
    return targets


def template_digest(template: Mapping[str, Any]) -> str:
    """A digest of a pod template that a Deployment and its ReplicaSet share (the ReplicaSet's copy carries the
    extra ``pod-template-hash`` label, which is left out, as the Deployment controller's own comparison does)."""
    md = dict(template.get("metadata") or {})
    md["labels"] = {k: v for k, v in (md.get("labels") or {}).items() if k != TEMPLATE_HASH}
    md.pop("creationTimestamp", None)
    canonical = {"metadata": md, "spec": template.get("spec") or {}}
    return hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class NewPods:
    """The ReplicaSet whose template is the Deployment's: its revision and its live (not terminating) pods.

    ``settling`` is True while that ReplicaSet's revision is below another of the Deployment's ReplicaSets: a
    rollback the Deployment controller has not yet given its new revision number (see ``plan_release``).
    """

    total: int = 0
    containers_ready: int = 0  # bizs installed and active (Ready, or held not-Ready by the batch gate)
    ready: int = 0
    revision: int = 0  # its deployment.kubernetes.io/revision; 0 when unknown
    settling: bool = False


@dataclass(frozen=True, slots=True)
class Bounds:
    max_surge: int
    max_unavailable: int


@dataclass(frozen=True, slots=True)
class ReleaseDecision:
    """The release's next step: a new state, a pause to set or lift (None: leave as it is), a stale confirmation
    to clear, and what to tell. The rollout bound follows from the state (:func:`bounds_at`); what vkprovider
    writes is :func:`release_fields`."""

    state: ReleaseState | None = None  # the state annotation to write
    paused: bool | None = None
    clear_confirmed: bool = False
    event: tuple[str, str] | None = None  # (reason, message) of a Normal Event


@dataclass(frozen=True, slots=True)
class Release:
    """A batched Deployment's annotations and spec, parsed once."""

    targets: list[int]
    mode: Mode
    manual: bool
    grey_s: float
    confirmed: int  # the batch (1-based) the user let start; 0 when none
    state: ReleaseState | None
    digest: str
    replicas: int
    paused: bool
    generation: int
    observed_generation: int

    @property
    def total(self) -> int:
        return len(self.targets)

    def size(self, batch: int) -> int:
        return max(1, self.targets[batch] - (self.targets[batch - 1] if batch else 0))

    def bounds_for(self, batch: int) -> Bounds:
        size = self.size(batch)
        return Bounds(size, 0) if self.mode is Mode.SURGE else Bounds(0, size)


def parse_release(deployment: Mapping[str, Any]) -> Release | str | None:
    """None when the Deployment does not ask for batched releases; an error text when its annotations or
    strategy are unusable."""
    md = deployment.get("metadata") or {}
    annotations = md.get("annotations") or {}
    if BATCHES not in annotations:
        return None
    spec = deployment.get("spec") or {}
    strategy = spec.get("strategy") or {}
    if strategy.get("type", "RollingUpdate") != "RollingUpdate":
        return f"{BATCHES} needs strategy type RollingUpdate, not {strategy.get('type')}"
    replicas_raw = spec.get("replicas")
    replicas = int(replicas_raw) if isinstance(replicas_raw, int) else 1
    targets = parse_batches(str(annotations[BATCHES]), replicas)
    if isinstance(targets, str):
        return f"{BATCHES}: {targets}"
    mode_text = str(annotations.get(MODE, Mode.REPLACE.value)).strip().lower()
    if mode_text not in {m.value for m in Mode}:
        return f"{MODE} must be replace or surge, not {mode_text!r}"
    confirm = str(annotations.get(CONFIRM, "auto")).strip().lower()
    if confirm not in ("manual", "auto", ""):
        return f"{CONFIRM} must be manual or auto, not {confirm!r}"
    try:
        grey_s = float(annotations.get(GREY_SECONDS) or 0)
    except ValueError:
        return f"{GREY_SECONDS} must be a number of seconds, not {annotations.get(GREY_SECONDS)!r}"
    if grey_s < 0 or not math.isfinite(grey_s):
        return f"{GREY_SECONDS} must not be negative"
    confirmed_text = str(annotations.get(CONFIRMED) or "").strip()
    confirmed = int(confirmed_text) if confirmed_text.isdigit() else 0
    return Release(
        targets=targets,
        mode=Mode(mode_text),
        manual=confirm == "manual",
        grey_s=grey_s,
        confirmed=confirmed,
        state=ReleaseState.decode(annotations.get(STATE)),
        digest=template_digest(spec.get("template") or {}),
        replicas=replicas,
        paused=bool(spec.get("paused")),
        generation=int(md.get("generation") or 0),
        observed_generation=int(((deployment.get("status") or {}).get("observedGeneration")) or 0),
    )


def plan_release(release: Release, new: NewPods | None, *, now: float) -> ReleaseDecision:
    """The next step of a batched release (see the module docstring).

    ``new`` describes the ReplicaSet whose template is the Deployment's; None while it does not exist (the
    controller has not created it yet, or the Deployment was paused before the template changed).

    The state belongs to the current template when its digest matches *and* it names that template's ReplicaSet
    revision (or none yet). The second half matters for ``kubectl rollout undo``: it copies the old
    ReplicaSet's annotations, and with them the state that template had when it was last released, back onto
    the Deployment; the revision in it is the old one, so the rollback is released as the new template it is.
    """
    r = release
    state = r.state
    last = r.total - 1
    rs_revision = new.revision if new is not None else 0

    def at(batch: int, phase: Phase, since: float, *, go: bool = False) -> ReleaseState:
        kept = state.rs_revision if state is not None and is_current(state, r.digest, rs_revision) else 0
        return ReleaseState(r.digest, batch, phase, since, go, rs_revision or kept)

    if new is not None and new.settling:
        return ReleaseDecision()  # a rollback the controller has not numbered yet: decide once it has
    if state is None:
        # First sight (a new Deployment, or one that just opted in): its current template counts as released;
        # batches apply to the template changes that follow (the state's bound is the at-rest one).
        return ReleaseDecision(state=at(last, Phase.DONE, now))
    if not is_current(state, r.digest, rs_revision):
        # A template never released here (a new one, or a rollback): batch 1 begins. A pause that vkprovider
        # wrote at a batch boundary of an older release is lifted; a user's pause (in any other phase) stays.
        lift = state.phase is Phase.WAITING and r.paused
        return ReleaseDecision(
            state=at(0, Phase.MOVING, now), paused=False if lift else None,
            clear_confirmed=r.confirmed > 0,
            event=("ReleaseStarted", f"releasing a new pod template in {r.total} batch(es) of "
                                     f"{', '.join(map(str, r.targets))} pod(s) out of {r.replicas}"))
    if rs_revision and not state.rs_revision:
        # The template's ReplicaSet is known now: record its revision (what tells a later rollback apart).
        return ReleaseDecision(state=replace(state, rs_revision=rs_revision))
    if state.phase is Phase.DONE:
        return ReleaseDecision()
    batch = min(state.batch, last)
    target = r.targets[batch]
    counts = new or NewPods()
    if state.phase is Phase.MOVING:
        if batch == last:
            if counts.ready >= target and counts.total >= target:
                return ReleaseDecision(state=at(batch, Phase.DONE, now),
                                       event=("ReleaseCompleted", f"all {r.total} batch(es) Ready: {r.replicas} "
                                                                  "pod(s) of the new template"))
            return ReleaseDecision()
        if counts.containers_ready >= target:
            how = (f"confirm with: kubectl annotate deployment <name> {CONFIRMED}={batch + 2} --overwrite "
                   "(or kubectl rollout resume)" if r.manual else
                   f"the next batch begins in {r.grey_s:g}s" if r.grey_s else "the next batch begins now")
            return ReleaseDecision(state=at(batch, Phase.WAITING, now), paused=True if not r.paused else None,
                                   event=("BatchReady", f"batch {batch + 1}/{r.total} is installed "
                                                        f"({target}/{r.replicas} pods); {how}"))
        return ReleaseDecision()
    # WAITING at a batch boundary: vkprovider paused the Deployment.
    resumed = not r.paused  # `kubectl rollout resume`
    asked = state.go or resumed or (r.confirmed >= batch + 2 if r.manual else now - state.since >= r.grey_s)
    if not asked:
        return ReleaseDecision()
    if counts.ready < target:
        # Resumed before the batch's pods turned Ready (the controller had not yet observed the pause): pause
        # again, remembering the go-ahead, so the controller cannot run past the batch meanwhile.
        if resumed:
            return ReleaseDecision(state=at(batch, Phase.WAITING, state.since, go=True), paused=True)
        return ReleaseDecision()
    nxt = batch + 1
    return ReleaseDecision(
        state=at(nxt, Phase.MOVING, now), paused=False if r.paused else None,
        event=("BatchStarted", f"batch {nxt + 1}/{r.total} begins ({r.targets[nxt]}/{r.replicas} pods)"))


def is_current(state: ReleaseState, digest: str, rs_revision: int) -> bool:
    """Whether ``state`` is the release of the template with ``digest`` whose ReplicaSet has ``rs_revision``."""
    return state.revision == digest and (not state.rs_revision or not rs_revision or state.rs_revision == rs_revision)


def wait_for_grey(release: Release, now: float) -> float | None:
    """Seconds until a grey time ends (the release then moves on without anyone asking)."""
    state = release.state
    if state is None or state.phase is not Phase.WAITING or release.manual or state.revision != release.digest:
        return None
    return max(0.0, state.since + release.grey_s - now)


def ready_hold(release: Release, ready_now: int, new: NewPods | None = None) -> str | None:
    """Why a not-yet-Ready pod of the Deployment's current template must stay not-Ready (None: it may turn
    Ready); ``ready_now`` counts that template's pods already Ready.

    While batch *b* moves, the earlier batches' count of pods may be Ready (a replacement of one of them catches
    up, so the controller is never left one pod short of finishing the batch); the batch's own pods turn Ready
    only once the Deployment is paused at the batch boundary and the controller has observed that pause.
    Whether the pod is of the current template is the caller's to know; ``new`` describes its ReplicaSet.
    """
    state = release.state
    if state is None:
        return None
    if new is not None and new.settling:
        return "the Deployment controller is still taking this template back (rollback)"
    if not is_current(state, release.digest, new.revision if new is not None else 0):
        return "a new pod template: its batched release is starting"
    if state.phase is Phase.DONE:
        return None
    last = release.total - 1
    batch = min(state.batch, last)
    where = f"batch {batch + 1}/{release.total}"
    if state.phase is Phase.MOVING and batch == last:
        return None
    if state.phase is Phase.WAITING and release.paused and release.observed_generation >= release.generation:
        return None
    quota = release.targets[batch - 1] if batch else 0
    if ready_now < quota:
        return None
    if state.phase is Phase.MOVING:
        return f"{where} of a batched release: Ready once the whole batch is installed and the Deployment paused"
    return f"{where} is installed: Ready once the Deployment controller has observed the pause"


def bounds_at(release: Release, state: ReleaseState) -> Bounds:
    """The rollout bound while ``state`` holds: the first batch's at rest, else the batch's that moves or waits."""
    return release.bounds_for(0 if state.phase is Phase.DONE else min(state.batch, release.total - 1))


# --- field ownership (server-side apply) ---------------------------------------------------------------------

FIELD_MANAGER = "vkprovider"
FieldPath = tuple[str, ...]
REPLICAS_FIELD: FieldPath = ("spec", "replicas")
PAUSED_FIELD: FieldPath = ("spec", "paused")
STRATEGY_TYPE_FIELD: FieldPath = ("spec", "strategy", "type")
MAX_SURGE_FIELD: FieldPath = ("spec", "strategy", "rollingUpdate", "maxSurge")
MAX_UNAVAILABLE_FIELD: FieldPath = ("spec", "strategy", "rollingUpdate", "maxUnavailable")
STATE_FIELD: FieldPath = ("metadata", "annotations", STATE)
#: Every field vkprovider may own on a Deployment.
OWNED_FIELDS: tuple[FieldPath, ...] = (REPLICAS_FIELD, PAUSED_FIELD, STRATEGY_TYPE_FIELD, MAX_SURGE_FIELD,
                                       MAX_UNAVAILABLE_FIELD, STATE_FIELD)


def held_fields(managed_fields: object, manager: str = FIELD_MANAGER) -> list[FieldPath]:
    """The fields of :data:`OWNED_FIELDS` that ``manager`` holds by server-side apply: its ``Apply`` entry (of the
    object itself, not a subresource) in ``metadata.managedFields``. Malformed entries hold nothing."""
    if not isinstance(managed_fields, list):
        return []
    held: list[FieldPath] = []
    for entry in managed_fields:
        if not isinstance(entry, Mapping) or entry.get("manager") != manager or entry.get("operation") != "Apply" \
                or entry.get("subresource"):
            continue
        for path in OWNED_FIELDS:
            node: object = entry.get("fieldsV1")
            for name in path:
                node = node.get(f"f:{name}") if isinstance(node, Mapping) else None
            if isinstance(node, Mapping) and path not in held:
                held.append(path)
    return held


def live_fields(deployment: Mapping[str, Any]) -> dict[FieldPath, Any]:
    """The values of :data:`OWNED_FIELDS` the Deployment has now (absent fields left out)."""
    live: dict[FieldPath, Any] = {}
    for path in OWNED_FIELDS:
        node: object = deployment
        for name in path:
            node = node.get(name) if isinstance(node, Mapping) else None
        if node is not None:
            live[path] = node
    return live


def release_fields(release: Release, decision: ReleaseDecision, live_state: str | None) -> dict[FieldPath, Any]:
    """The fields vkprovider wants on a batched Deployment after ``decision``: the state annotation (the new one,
    else ``live_state`` as it is written), the bound of the state's batch, and ``paused`` when the decision sets
    it. Nothing while there is no state yet (a rollback the controller has not numbered)."""
    state = decision.state or release.state
    text = decision.state.encode() if decision.state is not None else live_state
    if state is None or text is None:
        return {}
    bounds = bounds_at(release, state)
    wanted: dict[FieldPath, Any] = {STATE_FIELD: text, STRATEGY_TYPE_FIELD: "RollingUpdate",
                                    MAX_SURGE_FIELD: bounds.max_surge, MAX_UNAVAILABLE_FIELD: bounds.max_unavailable}
    if decision.paused is not None:
        wanted[PAUSED_FIELD] = decision.paused
    return wanted


def apply_config(live: Mapping[FieldPath, Any], held: Iterable[FieldPath],
                 wanted: Mapping[FieldPath, Any]) -> dict[FieldPath, Any] | None:
    """What vkprovider applies (see the module docstring), or None when every wanted field already has its value
    and is held: the wanted fields, plus every held field at its live value (an apply never drops a field)."""
    held = list(held)
    if all(path in held and path in live and live[path] == value for path, value in wanted.items()):
        return None
    config = {path: live[path] for path in held if path in live}
    config.update(wanted)
    return config


def apply_body(config: Mapping[FieldPath, Any], name: str, namespace: str, resource_version: str) -> dict[str, Any]:
    """A Deployment apply configuration of ``config``; the resourceVersion makes it a precondition (409 when the
    Deployment changed since vkprovider decided, and never a creation of a Deployment that is gone)."""
    body: dict[str, Any] = {"apiVersion": "apps/v1", "kind": "Deployment",
                            "metadata": {"name": name, "namespace": namespace, "resourceVersion": resource_version}}
    for path, value in config.items():
        node = body
        for name_ in path[:-1]:
            node = node.setdefault(name_, {})
        node[path[-1]] = value
    return body
