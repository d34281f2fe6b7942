"""Release strategies on the cluster's own Deployments: peer replica sync and batched, pausable releases.

The decisions are ``core.release``'s. This module watches what they need - Deployments that opt in (a peer label
or a batches annotation), the module ReplicaSets (which template is whose, and each one's revision) - and writes
the Deployments: one server-side apply of vkprovider's fields per step (field manager ``vkprovider``; the
informer keeps of managedFields only which of them vkprovider holds; see ``core.release``, "Who owns which
field"). Exactly one replica in the cluster writes: the holder of the ``vkprovider-<env>-releases`` Lease
(:class:`Elector`, the same observed-time, fenced, resourceVersion-checked rules as the vnode Leases, and the
same write budget: ``core.ownership.lease_write_budget``). Every replica answers the module controller's two
questions from the same caches:

- ``revision_of(pod)``: the Deployment revision of the pod's ReplicaSet (a base installs only the newest
  revision of a workload's biz, so a release never ping-pongs, see ``core.plan``);
- ``ready_hold(pod)``: why a pod of a batched release's new template must not turn Ready yet (the batch gate).

Nothing here is remembered that the API does not hold, except the peer scale-down debounce, which a new writer
starts afresh (so a failover delays a scale-down, never hastens one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from prometheus_client import Counter, Gauge

from vkprovider.config import Settings
from vkprovider.controllers.bases import Clock
from vkprovider.controllers.leases import LeaseWriter, lease_client, lease_timing
from vkprovider.controllers.queue import WorkQueue
from vkprovider.core import ownership as own
from vkprovider.core import release as rel
from vkprovider.core.grid import next_tick
from vkprovider.core.module import MODULE_LABEL_VALUE, MODULE_LABELS, is_terminal, is_terminating
from vkprovider.kube.client import ApiError, Kube
from vkprovider.kube.events import EventRecorder
from vkprovider.kube.informer import Informer

log = logging.getLogger(__name__)

LEADER = Gauge("vkprovider_release_writer", "1 while this replica is the one that writes release decisions.")
WRITES = Counter("vkprovider_release_writes_total",
                 "Deployment writes by the release controller: replicas (peer sync), batch (batched releases).",
                 ["kind"])
for _kind in ("replicas", "batch"):
    WRITES.labels(_kind)

_KEPT_ANNOTATIONS = (rel.BATCHES, rel.CONFIRM, rel.CONFIRMED, rel.GREY_SECONDS, rel.MODE, rel.STATE,
                     rel.REVISION_ANNOTATION)
DIGEST = "templateDigest"  # the trimmed objects keep their template only as this digest
HELD = "heldByVkprovider"  # ... and of managedFields only the fields vkprovider holds by server-side apply


def wants_release(deployment: Mapping[str, Any]) -> bool:
    annotations = (deployment.get("metadata") or {}).get("annotations") or {}
    return rel.is_peer(deployment) or rel.BATCHES in annotations


def _trim_metadata(md: Mapping[str, Any]) -> dict[str, Any]:
    kept = {k: md[k] for k in ("name", "namespace", "uid", "resourceVersion", "generation", "labels",
                               "ownerReferences") if k in md}
    annotations = md.get("annotations") or {}
    kept["annotations"] = {k: annotations[k] for k in _KEPT_ANNOTATIONS if k in annotations}
    return kept


def trim_deployment(obj: dict[str, Any]) -> dict[str, Any]:
    """What the release decisions read of a Deployment: a few hundred bytes instead of its whole template."""
    spec = obj.get("spec") or {}
    template = spec.get("template") or {}
    pod_spec = template.get("spec") or {}
    kept_pod_spec = {k: pod_spec[k] for k in ("nodeSelector", "affinity") if k in pod_spec}
    return {
        "metadata": _trim_metadata(obj.get("metadata") or {}),
        "spec": {"replicas": spec.get("replicas"), "paused": spec.get("paused", False),
                 "strategy": spec.get("strategy") or {}, "template": {"spec": kept_pod_spec}},
        "status": {k: v for k, v in (obj.get("status") or {}).items()
                   if k in ("observedGeneration", "replicas", "readyReplicas", "updatedReplicas")},
        DIGEST: rel.template_digest(template),
        HELD: rel.held_fields((obj.get("metadata") or {}).get("managedFields")),
    }


def trim_replicaset(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj.get("spec") or {}
    return {"metadata": _trim_metadata(obj.get("metadata") or {}), "spec": {"replicas": spec.get("replicas")},
            DIGEST: rel.template_digest(spec.get("template") or {})}


def parse(deployment: Mapping[str, Any]) -> rel.Release | str | None:
    parsed = rel.parse_release(deployment)
    if isinstance(parsed, rel.Release) and deployment.get(DIGEST):
        parsed = _with_digest(parsed, str(deployment[DIGEST]))
    return parsed


def _with_digest(release: rel.Release, digest: str) -> rel.Release:
    return replace(release, digest=digest)


def _owner(obj: Mapping[str, Any], kind: str) -> str | None:
    md = obj.get("metadata") or {}
    for owner in md.get("ownerReferences") or []:
        if owner.get("controller") and owner.get("kind") == kind:
            return f"{md.get('namespace', '')}/{owner.get('name', '')}"
    return None


def _condition(pod: Mapping[str, Any], kind: str) -> bool:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return bool(cond.get("status") == "True")
    return False


def _ready_node(node: Mapping[str, Any]) -> bool:
    return _condition(node, "Ready")


class Elector:
    """Holds the cluster-wide release Lease for this replica: acquire when free or expired (observed time),
    renew, fence past the renew deadline, release on stop. ``leading()`` is asked right before every write. Its
    writes are the one Lease writer's (``controllers.leases``), as the vnode Leases' are."""

    def __init__(self, settings: Settings, kube: Kube, *, members: Callable[[], list[str]], clock: Clock,
                 wall: Callable[[], datetime]) -> None:
        self.poll_s = min(2.0, settings.node_lease_renew_s / 2)
        self.timing = lease_timing(settings, tick_s=self.poll_s)
        self.kube = lease_client(kube, self.timing, 2)  # bounded by the Lease write budget, like the vnode Leases
        self.writer = LeaseWriter(self.kube, settings.namespace, settings.client_id, self.timing.lease_duration_s,
                                  clock=clock, wall=wall)
        self.me = settings.client_id
        self.name = f"vkprovider-{settings.env.lower()}-releases"[:253]
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{settings.namespace}/leases"
        self.members = members
        self.clock = clock
        self._observed: own.Observed | None = None
        self._held: own.Held | None = None
        self.on_change: list[Callable[[bool], None]] = []

    def leading(self) -> bool:
        return self._held is not None and not own.fenced(self._held, self.clock(), self.timing)

    async def run(self) -> None:
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except ApiError as exc:
                log.warning("release lease %s: %s", self.name, exc)
            except Exception:
                log.exception("release lease %s: step failed", self.name)
            loop = asyncio.get_running_loop()  # on the grid (``core.grid``): with the other periodic loops
            await asyncio.sleep(next_tick(loop.time(), self.poll_s) - loop.time())

    async def step(self) -> None:
        now = self.clock()
        was = self.leading()
        if self._held is not None and not self.leading():
            self._set(None, "renew deadline passed")
        if self._held is not None and now < own.renew_due(self._held, self.timing):
            return
        try:
            lease = await self.kube.get(f"{self.path}/{self.name}")
        except ApiError as exc:
            if not exc.is_not_found:
                raise
            if was:
                self._set(None, "its Lease was deleted")
            if own.rendezvous(self.name, self.members()) == self.me:
                held = await self.writer.create(self.name, {own.MANAGED_BY_LABEL: own.MANAGED_BY})
                if held is not None:
                    self._set(held, "created the release Lease")
            return
        facts = own.LeaseFacts.from_object(lease, self.timing.lease_duration_s)
        self._observed = own.observe(self._observed, facts, now)
        decision = own.decide(self.name, self._observed, me=self.me, members=self.members(), held=self._held,
                              now=now, timing=self.timing, may_hand_off=False)
        if decision.action is own.Action.FENCE:
            self._set(None, decision.why)
        elif decision.action is own.Action.RENEW and self._held is not None:
            renewal = await self.writer.renew(self.name, self._held)
            self._set(renewal.held, renewal.lost or "")
        elif decision.action in (own.Action.RENEW, own.Action.ACQUIRE):
            held = await self.writer.acquire(self.name, facts, {own.MANAGED_BY_LABEL: own.MANAGED_BY})
            if held is None and self._held is not None:
                self._set(None, "the Lease was written by someone else")
            elif held is not None:
                self._set(held, decision.why if decision.action is own.Action.ACQUIRE else "")

    async def release(self) -> None:
        """On stop: give the Lease up (holder emptied), so another replica takes over within a poll."""
        held, self._held = self._held, None
        if held is None:
            return
        with contextlib.suppress(ApiError):
            await self.writer.give_up(self.name, held)
        self._notify(False, "stopping")

    def _set(self, held: own.Held | None, why: str) -> None:
        was = self._held is not None
        self._held = held
        if was != (held is not None):
            self._notify(held is not None, why)

    def _notify(self, leading: bool, why: str) -> None:
        LEADER.set(1 if leading else 0)
        log.info("%s writing release decisions%s", "now" if leading else "no longer", f" ({why})" if why else "")
        for callback in self.on_change:
            callback(leading)


class ReleaseController:
    def __init__(self, settings: Settings, kube: Kube, events: EventRecorder, *, nodes: Informer, pods: Any,
                 members: Callable[[], list[str]], clock: Clock, wall: Callable[[], datetime]) -> None:
        self.settings = settings
        self.kube = kube
        self.events = events
        self.nodes = nodes
        self.pods = pods
        self.clock = clock
        self.wall = wall
        self.deployments = Informer(kube, "/apis/apps/v1/deployments", keep=wants_release,
                                    trim_object=trim_deployment, on_change=self.on_deployment_change,
                                    resource="deployments")
        self.replicasets = UnionOfReplicaSets(kube, self.on_replicaset_change)
        self.elector = Elector(settings, kube, members=members, clock=clock, wall=wall)
        self.elector.on_change.append(self._on_leading)
        self.queue = WorkQueue("release", self.reconcile, workers=2)
        self.on_gate_changed: list[Callable[[str], None]] = []  # node names whose held pods may now be Ready
        self._pods_of_rs: dict[str, set[str]] = {}  # "ns/replicaset" -> pod keys
        self._rs_of_deployment: dict[str, set[str]] = {}  # "ns/deployment" -> "ns/replicaset" keys
        self._lower_since: dict[str, float] = {}
        self._warned: dict[str, str] = {}

    @property
    def informers(self) -> list[Informer]:
        return [self.deployments, *self.replicasets.informers]

    async def run(self) -> None:
        """Its queue and the release writer's Lease, until cancelled (a root task)."""
        await asyncio.gather(self.queue.run(), self.elector.run())

    async def stop(self) -> None:
        """Give up the release writer's Lease (the root task itself is cancelled by its supervisor)."""
        await self.elector.release()

    # --- questions of the module controller --------------------------------------------------------------------

    def revision_of(self, pod: Mapping[str, Any]) -> int:
        rs_key = _owner(pod, "ReplicaSet")
        return _revision(self.replicasets.get(rs_key)) if rs_key else 0

    def ready_hold(self, pod: Mapping[str, Any]) -> str | None:
        if not self.settings.batched_releases or _condition(pod, "Ready"):
            return None
        rs_key = _owner(pod, "ReplicaSet")
        rs = self.replicasets.get(rs_key) if rs_key else None
        if rs is None:
            return None
        deployment_key = _owner(rs, "Deployment")
        deployment = self.deployments.get(deployment_key) if deployment_key else None
        if deployment is None:
            return None
        release = parse(deployment)
        if not isinstance(release, rel.Release) or rs.get(DIGEST) != release.digest:
            return None  # not batched, or the pod is not of the template being released
        new = self._new_pods(str(deployment_key), str(rs_key))
        return rel.ready_hold(release, new.ready, new)

    # --- informer hooks --------------------------------------------------------------------------------------

    def on_deployment_change(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        if new is None:
            self._lower_since.pop(key, None)
            self._warned.pop(key, None)
        self.queue.add(key)
        if old is not None and new is not None and (old.get("metadata") or {}).get("annotations", {}).get(
                rel.STATE) == new["metadata"]["annotations"].get(rel.STATE) and old["spec"].get("paused") == \
                new["spec"].get("paused") and old.get("status") == new.get("status"):
            return
        self._gate_changed(key)

    def on_replicaset_change(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        owner = _owner(new or old or {}, "Deployment")
        if owner is None:
            return
        if new is None:
            members = self._rs_of_deployment.get(owner)
            if members is not None:
                members.discard(key)
                if not members:
                    del self._rs_of_deployment[owner]
        else:
            self._rs_of_deployment.setdefault(owner, set()).add(key)
        self.queue.add(owner)

    def on_pod_change(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        rs_old = _owner(old, "ReplicaSet") if old is not None else None
        rs_new = _owner(new, "ReplicaSet") if new is not None else None
        if rs_old and rs_old != rs_new:
            members = self._pods_of_rs.get(rs_old)
            if members is not None:
                members.discard(key)
                if not members:
                    del self._pods_of_rs[rs_old]
        if rs_new:
            self._pods_of_rs.setdefault(rs_new, set()).add(key)
        rs_key = rs_new or rs_old
        if rs_key is None:
            return
        if old is not None and new is not None and all(
                _condition(old, kind) == _condition(new, kind) for kind in ("Ready", "ContainersReady")) and \
                is_terminating(old) == is_terminating(new):
            return
        rs = self.replicasets.get(rs_key)
        deployment_key = _owner(rs, "Deployment") if rs is not None else None
        if deployment_key is not None and deployment_key in self.deployments:
            self.queue.add(deployment_key)
            if _condition(new or {}, "Ready") != _condition(old or {}, "Ready"):
                self._gate_changed(deployment_key)  # a Ready count changed: another pod's hold may lift

    def on_node_change(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        if not self.settings.replicas_sync_with_base:
            return
        before = (_cluster_label(old), _ready_node(old) if old else False)
        after = (_cluster_label(new), _ready_node(new) if new else False)
        if before == after:
            return
        clusters = {c for c in (before[0], after[0]) if c}
        for deployment in self.deployments.items():
            if rel.is_peer(deployment) and rel.cluster_of(deployment) in clusters:
                self.queue.add(_key(deployment))

    def _on_leading(self, leading: bool) -> None:
        self._lower_since.clear()  # a new writer observes afresh: a failover never hastens a scale-down
        if leading:
            for key in list(self.deployments):
                self.queue.add(key)

    def _gate_changed(self, deployment_key: str) -> None:
        nodes: set[str] = set()
        for rs_key in self._rs_of_deployment.get(deployment_key, ()):
            for pod in self._live_pods(rs_key):
                node = (pod.get("spec") or {}).get("nodeName")
                if node:
                    nodes.add(str(node))
        for node in nodes:
            for callback in self.on_gate_changed:
                callback(node)

    def _new_pods(self, deployment_key: str, rs_key: str) -> rel.NewPods:
        """The Deployment's ReplicaSet ``rs_key`` (the one of its current template) as the decisions see it."""
        live = self._live_pods(rs_key)
        revisions = {k: _revision(self.replicasets.get(k)) for k in self._rs_of_deployment.get(deployment_key, ())}
        mine = revisions.get(rs_key, 0)
        return rel.NewPods(total=len(live),
                           containers_ready=sum(1 for p in live if _condition(p, "ContainersReady")),
                           ready=sum(1 for p in live if _condition(p, "Ready")),
                           revision=mine, settling=any(r > mine for r in revisions.values()))

    def _live_pods(self, rs_key: str) -> list[dict[str, Any]]:
        found = []
        for key in self._pods_of_rs.get(rs_key, ()):
            pod = self.pods.get(key)
            if pod is not None and not is_terminating(pod) and not is_terminal(pod):
                found.append(pod)
        return found

    # --- reconcile -------------------------------------------------------------------------------------------

    async def reconcile(self, key: str) -> float | None:
        """One level-based step: what vkprovider wants on the Deployment (peer count, release fields), applied
        in one server-side apply when it is not there or not held (``core.release``, "Who owns which field")."""
        if not self.elector.leading():
            return None  # the writer's queue has it; this replica is re-queued when it becomes the writer
        deployment = self.deployments.get(key)
        if deployment is None:
            return None
        wanted: dict[rel.FieldPath, Any] = {}
        waits: list[float] = []
        told: list[tuple[str, str]] = []  # Normal Events, posted once written
        peer = None
        if self.settings.replicas_sync_with_base and rel.is_peer(deployment):
            peer = self._peer(key, deployment)
            if peer is not None:
                wanted[rel.REPLICAS_FIELD] = peer.replicas
                if peer.event is not None:
                    told.append(peer.event)
                if peer.wait_s is not None:
                    waits.append(peer.wait_s)
        if self.settings.batched_releases:
            step = self._release(key, deployment)
            if step is not None:
                decision, fields, wait = step
                if decision.clear_confirmed:
                    return await self._clear_confirmed(deployment)  # first; the release's fields come next
                wanted.update(fields)
                if decision.event is not None:
                    told.append(decision.event)
                if wait is not None:
                    waits.append(wait)
        config = rel.apply_config(rel.live_fields(deployment), deployment.get(HELD) or (), wanted)
        if config is None:
            return min(waits) if waits else None
        if not self.elector.leading():
            return None
        md = deployment["metadata"]
        try:
            await self.kube.patch(_path(deployment),
                                  rel.apply_body(config, md["name"], md["namespace"], md["resourceVersion"]),
                                  kind="apply", field_manager=rel.FIELD_MANAGER, force=True)
        except ApiError as exc:
            if exc.is_conflict:
                return 0.5  # decided on a stale copy: again from the fresh one
            if exc.is_not_found or exc.status == 422:
                log.info("deployment %s: not applied (%s); gone, or the watch brings its change", key, exc)
                return None
            raise
        cause = "replicas" if peer is not None and not _in_line(deployment, rel.REPLICAS_FIELD, peer.replicas) \
            else "batch"
        WRITES.labels(cause).inc()
        for reason, message in told:
            self.events.normal(_ref(deployment), reason, message)
            log.info("deployment %s: %s", key, message)
        return None  # the watch brings the written Deployment back, and with it the next step

    def _peer(self, key: str, deployment: dict[str, Any]) -> _Peer | None:
        """The replicas a peer Deployment should have (its current count while a scale-down waits), or None when
        it names no cluster."""
        cluster = rel.cluster_of(deployment)
        if cluster is None:
            self._warn(key, deployment, "PeerWithoutCluster",
                       f"{rel.STRATEGY_LABEL}=peer but no base cluster is named ({rel.CLUSTER_LABEL} label, "
                       "nodeSelector or required node affinity): replicas are left as they are")
            return None
        ready = sum(1 for node in self.nodes.items() if _cluster_label(node) == cluster and _ready_node(node))
        current = int((deployment.get("spec") or {}).get("replicas") or 0)
        decision = rel.peer_replicas(current, ready, lower_since=self._lower_since.get(key), now=self.clock(),
                                     scale_down_delay_s=self.settings.peer_scale_down_delay_s)
        if decision.lower_since is None:
            self._lower_since.pop(key, None)
        else:
            self._lower_since[key] = decision.lower_since
        if decision.replicas is None:
            return _Peer(current, None, decision.wait_s)
        return _Peer(decision.replicas, ("ReplicasSyncedWithBases", f"replicas {current} -> {decision.replicas}: "
                                                                    f"{ready} Ready base(s) in cluster {cluster}"),
                     None)

    def _release(self, key: str, deployment: dict[str, Any]
                 ) -> tuple[rel.ReleaseDecision, dict[rel.FieldPath, Any], float | None] | None:
        """The batched release's next step, the fields vkprovider wants for it, and when to look again."""
        release = parse(deployment)
        if release is None:
            return None
        if isinstance(release, str):
            self._warn(key, deployment, "ReleaseInvalid", f"{release}; the Deployment is rolled out as usual")
            return None
        self._warned.pop(key, None)
        new_rs = next((rs_key for rs_key in self._rs_of_deployment.get(key, ())
                       if (rs := self.replicasets.get(rs_key)) is not None and rs.get(DIGEST) == release.digest),
                      None)
        counts = self._new_pods(key, new_rs) if new_rs is not None else None
        now = self.wall().timestamp()
        decision = rel.plan_release(release, counts, now=now)
        live_state = ((deployment.get("metadata") or {}).get("annotations") or {}).get(rel.STATE)
        fields = rel.release_fields(release, decision, str(live_state) if live_state is not None else None)
        return decision, fields, rel.wait_for_grey(release, now) if decision.state is None else None

    async def _clear_confirmed(self, deployment: dict[str, Any]) -> float | None:
        """Remove a stale ``confirmed-batch`` (the user's field: a server-side apply cannot remove it)."""
        if not self.elector.leading():
            return None
        md = deployment["metadata"]
        try:
            await self.kube.patch(_path(deployment), {"metadata": {"resourceVersion": md["resourceVersion"],
                                                                   "annotations": {rel.CONFIRMED: None}}},
                                  kind="merge")
        except ApiError as exc:
            if exc.is_conflict or exc.is_not_found:
                return 0.5 if exc.is_conflict else None
            raise
        WRITES.labels("batch").inc()
        return None

    def _warn(self, key: str, deployment: dict[str, Any], reason: str, message: str) -> None:
        if self._warned.get(key) == message:
            return
        self._warned[key] = message
        self.events.warning(_ref(deployment), reason, message)
        log.warning("deployment %s: %s", key, message)


class UnionOfReplicaSets:
    """The ReplicaSets of module workloads (their template carries a module label), one informer per label."""

    def __init__(self, kube: Kube, on_change: Callable[[str, dict[str, Any] | None, dict[str, Any] | None], None]
                 ) -> None:
        self.informers = [Informer(kube, "/apis/apps/v1/replicasets", label_selector=f"{label}={MODULE_LABEL_VALUE}",
                                   trim_object=trim_replicaset, on_change=on_change,
                                   resource=f"replicasets-{label.split('.')[0]}")
                          for label in MODULE_LABELS]

    def get(self, key: str) -> dict[str, Any] | None:
        for informer in self.informers:
            found = informer.get(key)
            if found is not None:
                return found
        return None


@dataclass(frozen=True, slots=True)
class _Peer:
    replicas: int  # wanted: the synced count, or the current one while nothing changes (claimed all the same)
    event: tuple[str, str] | None
    wait_s: float | None  # a scale-down is pending: look again after this long


def _in_line(deployment: Mapping[str, Any], path: rel.FieldPath, value: object) -> bool:
    return path in (deployment.get(HELD) or ()) and rel.live_fields(deployment).get(path) == value


def _revision(rs: Mapping[str, Any] | None) -> int:
    if rs is None:
        return 0
    text = str(((rs.get("metadata") or {}).get("annotations") or {}).get(rel.REVISION_ANNOTATION) or "")
    return int(text) if text.isdigit() else 0


def _cluster_label(node: Mapping[str, Any] | None) -> str | None:
    if node is None:
        return None
    value = ((node.get("metadata") or {}).get("labels") or {}).get(rel.CLUSTER_LABEL)
    return str(value) if value else None


def _key(obj: Mapping[str, Any]) -> str:
    md = obj.get("metadata") or {}
    return f"{md.get('namespace', '')}/{md.get('name', '')}"


def _path(deployment: Mapping[str, Any]) -> str:
    md = deployment["metadata"]
    return f"/apis/apps/v1/namespaces/{md['namespace']}/deployments/{md['name']}"


def _ref(deployment: Mapping[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": deployment.get("metadata") or {}}


def _rv(answer: object) -> str:
    if isinstance(answer, Mapping):
        return str((answer.get("metadata") or {}).get("resourceVersion") or "")
    return ""
