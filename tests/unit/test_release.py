"""Peer replica sync and batched releases, decided purely (vkprovider.core.release)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import pytest

from vkprovider.core import release as rel
from vkprovider.core.release import Bounds, NewPods, Phase, ReleaseState


def deployment(*, replicas: int = 10, batches: str | None = "1,50%,100%", image: str = "biz-1.0.0.jar",
               state: ReleaseState | None = None, paused: bool = False, confirm: str | None = "manual",
               confirmed: str | None = None, grey: str | None = None, mode: str | None = None,
               surge: object = 0, unavailable: object = 1, generation: int = 3, observed: int = 3,
               labels: dict[str, str] | None = None) -> dict[str, Any]:
    annotations: dict[str, str] = {}
    if batches is not None:
        annotations[rel.BATCHES] = batches
    if confirm is not None:
        annotations[rel.CONFIRM] = confirm
    if confirmed is not None:
        annotations[rel.CONFIRMED] = confirmed
    if grey is not None:
        annotations[rel.GREY_SECONDS] = grey
    if mode is not None:
        annotations[rel.MODE] = mode
    if state is not None:
        annotations[rel.STATE] = state.encode()
    return {
        "metadata": {"name": "m", "namespace": "default", "annotations": annotations, "labels": labels or {},
                     "generation": generation},
        "spec": {"replicas": replicas, "paused": paused,
                 "strategy": {"type": "RollingUpdate",
                              "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}},
                 "template": {"metadata": {"labels": {"app": "m"}},
                              "spec": {"containers": [{"name": "biz", "image": image}]}}},
        "status": {"observedGeneration": observed},
    }


def parsed(d: dict[str, Any]) -> rel.Release:
    r = rel.parse_release(d)
    assert isinstance(r, rel.Release), r
    return r


def digest(d: dict[str, Any]) -> str:
    return rel.template_digest(d["spec"]["template"])


@pytest.mark.parametrize(("text", "replicas", "expected"), [
    ("1,50%,100%", 10, [1, 5, 10]),
    ("1,50%,100%", 1, [1]),
    ("1,50%,100%", 3, [1, 2, 3]),
    ("2,2,4", 4, [2, 4]),
    ("10%", 10, [1, 10]),
    ("1,3", 10, [1, 3, 10]),
    ("20", 5, [5]),
    ("1,50%", 0, [0]),
    ("x", 10, "batch 'x' is neither a number nor a percentage"),
    ("5,2", 10, "batches must not decrease ('5,2')"),
    ("0", 10, "batch '0' must be positive"),
])
def test_parse_batches(text: str, replicas: int, expected: object) -> None:
    assert rel.parse_batches(text, replicas) == expected


@pytest.mark.parametrize(("d", "expected"), [
    ({"metadata": {"labels": {rel.CLUSTER_LABEL: "c1"}}}, "c1"),
    ({"spec": {"template": {"spec": {"nodeSelector": {rel.CLUSTER_LABEL: "c2"}}}}}, "c2"),
    ({"spec": {"template": {"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
        {"nodeSelectorTerms": [{"matchExpressions": [{"key": "other", "values": ["x"]},
                                                     {"key": rel.CLUSTER_LABEL, "operator": "In",
                                                      "values": ["c3", "c4"]}]}]}}}}}}}, "c3"),
    ({"spec": {"template": {"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
        {"nodeSelectorTerms": [{"matchExpressions": [{"key": rel.CLUSTER_LABEL, "values": []}]}]}}}}}}}, None),
    ({}, None),
])
def test_cluster_of_reads_like_the_go_controller(d: dict[str, Any], expected: str | None) -> None:
    assert rel.cluster_of(d) == expected


@pytest.mark.parametrize(("labels", "peer"), [
    ({rel.STRATEGY_LABEL: "peer"}, True),
    ({rel.STRATEGY_LABEL: "peer", rel.REPLICAS_CONTROL_LABEL: "true"}, False),
    ({rel.STRATEGY_LABEL: "other"}, False),
    ({}, False),
])
def test_is_peer(labels: dict[str, str], peer: bool) -> None:
    assert rel.is_peer({"metadata": {"labels": labels}}) is peer


@pytest.mark.parametrize(("current", "ready", "since", "now", "expected"), [
    (0, 3, None, 0.0, rel.PeerDecision(3, None)),  # up at once
    (3, 5, 1.0, 2.0, rel.PeerDecision(5, None)),  # up at once, a pending scale-down forgotten
    (5, 5, 1.0, 2.0, rel.PeerDecision(None, None)),  # a flap that healed: the debounce forgotten
    (5, 2, None, 10.0, rel.PeerDecision(None, 10.0, 60.0)),  # lower: the debounce starts
    (5, 2, 10.0, 69.0, rel.PeerDecision(None, 10.0, 1.0)),
    (5, 2, 10.0, 70.0, rel.PeerDecision(2, None)),  # held for the whole delay: down
    (5, 0, 10.0, 70.0, rel.PeerDecision(0, None)),
])
def test_peer_replicas(current: int, ready: int, since: float | None, now: float,
                       expected: rel.PeerDecision) -> None:
    assert rel.peer_replicas(current, ready, lower_since=since, now=now, scale_down_delay_s=60.0) == expected


def test_digest_ignores_the_template_hash_label() -> None:
    d = deployment()
    rs_template = copy.deepcopy(d["spec"]["template"])
    rs_template["metadata"]["labels"][rel.TEMPLATE_HASH] = "abc123"
    rs_template["metadata"]["creationTimestamp"] = None
    assert rel.template_digest(rs_template) == digest(d)
    assert digest(deployment(image="biz-2.0.0.jar")) != digest(d)


def test_state_round_trips_and_bad_state_reads_as_none() -> None:
    state = ReleaseState("abc", 2, Phase.WAITING, 12.5, go=True)
    assert ReleaseState.decode(state.encode()) == state
    assert '"batch":3' in state.encode()  # 1-based on the wire: what a user reads
    for bad in ("", "{", '{"revision": 1}', '{"revision":"a","batch":"x","phase":"Moving","since":1}', 3, None):
        assert ReleaseState.decode(bad) is None


@pytest.mark.parametrize(("changes", "error"), [
    ({"batches": "a,b"}, "release.koupleless.io/batches: batch 'a' is neither a number nor a percentage"),
    ({"mode": "sideways"}, "release.koupleless.io/mode must be replace or surge, not 'sideways'"),
    ({"confirm": "maybe"}, "release.koupleless.io/confirm must be manual or auto, not 'maybe'"),
    ({"grey": "soon"}, "release.koupleless.io/grey-seconds must be a number of seconds, not 'soon'"),
    ({"grey": "-1"}, "release.koupleless.io/grey-seconds must not be negative"),
])
def test_bad_annotations_are_one_clear_error(changes: dict[str, str], error: str) -> None:
    assert rel.parse_release(deployment(**changes)) == error  # type: ignore[arg-type]


def test_recreate_strategy_is_refused_and_unbatched_is_none() -> None:
    d = deployment()
    d["spec"]["strategy"] = {"type": "Recreate"}
    assert rel.parse_release(d) == "release.koupleless.io/batches needs strategy type RollingUpdate, not Recreate"
    assert rel.parse_release(deployment(batches=None)) is None


def fields_v1(paths: Any) -> dict[str, Any]:
    """managedFields' ``fieldsV1`` of these field paths, as the apiserver writes it."""
    out: dict[str, Any] = {}
    for path in paths:
        node = out
        for name in path:
            node = node.setdefault(f"f:{name}", {})
    return out


def held_by_vkprovider(paths: Any) -> list[dict[str, Any]]:
    return [{"manager": "vkprovider", "operation": "Apply", "apiVersion": "apps/v1", "fieldsType": "FieldsV1",
             "fieldsV1": fields_v1(paths)}]


@dataclass
class Step:
    decision: rel.ReleaseDecision
    written: dict[rel.FieldPath, Any] | None  # what the controller applied; None: nothing to write


def walk(d: dict[str, Any], new: NewPods | None, now: float) -> Step:
    """Plan, then write to the Deployment what the controller would: a stale confirmation cleared by a merge
    patch, then vkprovider's fields by server-side apply (the apiserver's part simulated: values and ownership)."""
    release = parsed(d)
    decision = rel.plan_release(release, new, now=now)
    md = d["metadata"]
    if decision.clear_confirmed:
        md["annotations"].pop(rel.CONFIRMED, None)
        md["generation"] += 1  # a Deployment's generation counts annotation changes too
    wanted = rel.release_fields(release, decision, md["annotations"].get(rel.STATE))
    config = rel.apply_config(rel.live_fields(d), rel.held_fields(md.get("managedFields")), wanted)
    if config is not None:
        body = rel.apply_body(config, md["name"], md["namespace"], "1")
        md["annotations"].update(body["metadata"].get("annotations") or {})
        spec = body.get("spec") or {}
        d["spec"].update({k: v for k, v in spec.items() if k != "strategy"})
        if "strategy" in spec:
            d["spec"]["strategy"] = {**d["spec"]["strategy"], **spec["strategy"]}
        md["managedFields"] = held_by_vkprovider(config)
        md["generation"] += 1
    return Step(decision, config)


def bounds(d: dict[str, Any]) -> Bounds:
    rolling = d["spec"]["strategy"]["rollingUpdate"]
    return Bounds(rolling["maxSurge"], rolling["maxUnavailable"])


def test_first_sight_counts_as_released_and_sets_the_at_rest_bound() -> None:
    d = deployment(surge="25%", unavailable="25%")
    step = walk(d, None, 100.0)
    assert step.decision.state == ReleaseState(digest(d), 2, Phase.DONE, 100.0)
    assert step.decision.event is None and step.decision.paused is None
    assert bounds(d) == Bounds(0, 1) and d["spec"]["strategy"]["type"] == "RollingUpdate"
    assert step.written is not None and rel.PAUSED_FIELD not in step.written  # paused is the user's


def test_surge_mode_bounds_surge() -> None:
    d = deployment(mode="surge", state=ReleaseState(digest(deployment(mode="surge")), 2, Phase.DONE, 1.0))
    walk(d, None, 2.0)
    assert bounds(d) == Bounds(1, 0)


def phase(d: dict[str, Any]) -> tuple[int, Phase, bool]:
    state = ReleaseState.decode(d["metadata"]["annotations"][rel.STATE])
    assert state is not None
    return state.batch + 1, state.phase, bool(d["spec"]["paused"])


def test_a_manual_release_of_ten_pods_in_three_batches() -> None:
    old = deployment()
    d = deployment(image="biz-2.0.0.jar", state=ReleaseState(digest(old), 2, Phase.DONE, 1.0), confirmed="3")
    # The template changed: batch 1 begins, a stale confirmation from the last release is cleared.
    decision = walk(d, NewPods(), 10.0).decision
    assert decision.event is not None and decision.event[0] == "ReleaseStarted"
    assert decision.clear_confirmed and rel.CONFIRMED not in d["metadata"]["annotations"]
    assert phase(d) == (1, Phase.MOVING, False)
    r = parsed(d)
    assert rel.ready_hold(r, 0) is not None  # the batch's pod may not turn Ready yet
    assert walk(d, NewPods(1, 0, 0), 11.0).written is None  # installing
    # Installed: the Deployment is paused, and only once the controller saw it may the pod turn Ready.
    decision = walk(d, NewPods(1, 1, 0), 12.0).decision
    assert decision.event is not None and decision.event[0] == "BatchReady"
    assert "confirmed-batch=2" in decision.event[1]
    assert phase(d) == (1, Phase.WAITING, True)
    assert rel.ready_hold(parsed(d), 0) is not None  # observedGeneration lags
    d["status"]["observedGeneration"] = d["metadata"]["generation"]
    assert rel.ready_hold(parsed(d), 0) is None
    # Nothing moves without the confirmation, however long.
    assert walk(d, NewPods(1, 1, 1), 10_000.0).written is None
    d["metadata"]["annotations"][rel.CONFIRMED] = "2"
    decision = walk(d, NewPods(1, 1, 1), 10_001.0).decision
    assert decision.event is not None and decision.event[0] == "BatchStarted"
    assert bounds(d) == Bounds(0, 4) and phase(d) == (2, Phase.MOVING, False)
    r = parsed(d)
    assert rel.ready_hold(r, 1) is not None  # batch 2's pods wait; batch 1's quota (1) is Ready
    assert rel.ready_hold(r, 0) is None  # a replacement of batch 1's pod catches up
    assert walk(d, NewPods(5, 4, 1), 10_002.0).written is None
    walk(d, NewPods(5, 5, 1), 10_003.0)
    assert phase(d) == (2, Phase.WAITING, True)
    d["status"]["observedGeneration"] = d["metadata"]["generation"]
    # `kubectl rollout resume` is a confirmation too.
    d["spec"]["paused"] = False
    d["metadata"]["generation"] += 1
    walk(d, NewPods(5, 5, 5), 10_004.0)
    assert phase(d) == (3, Phase.MOVING, False) and bounds(d) == Bounds(0, 5)
    assert rel.ready_hold(parsed(d), 5) is None  # the last batch is not held
    assert walk(d, NewPods(10, 10, 9), 10_005.0).written is None
    decision = walk(d, NewPods(10, 10, 10), 10_006.0).decision
    assert decision.event is not None and decision.event[0] == "ReleaseCompleted"
    assert bounds(d) == Bounds(0, 1)  # back to the at-rest bound
    assert phase(d) == (3, Phase.DONE, False)
    assert walk(d, NewPods(10, 10, 10), 10_007.0).written is None  # at rest: nothing to write


def test_resume_before_the_pause_was_observed_pauses_again_and_remembers() -> None:
    d = deployment(image="biz-2.0.0.jar")
    d["metadata"]["annotations"][rel.STATE] = ReleaseState(digest(d), 0, Phase.WAITING, 5.0).encode()
    d["spec"]["paused"] = False  # resumed at once: the batch's pod is not Ready yet
    decision = walk(d, NewPods(1, 1, 0), 6.0).decision
    assert decision.paused is True and decision.state is not None and decision.state.go
    d["status"]["observedGeneration"] = d["metadata"]["generation"]
    assert rel.ready_hold(parsed(d), 0) is None
    assert walk(d, NewPods(1, 1, 0), 7.0).written is None
    walk(d, NewPods(1, 1, 1), 8.0)  # the go-ahead was kept: batch 2 starts without asking again
    assert phase(d) == (2, Phase.MOVING, False)


def test_grey_time_moves_on_by_itself() -> None:
    d = deployment(image="biz-2.0.0.jar", confirm=None, grey="30")
    d["metadata"]["annotations"][rel.STATE] = ReleaseState(digest(d), 0, Phase.MOVING, 0.0).encode()
    decision = walk(d, NewPods(1, 1, 0), 1.0).decision
    assert decision.event is not None and "begins in 30s" in decision.event[1]
    assert rel.wait_for_grey(parsed(d), 11.0) == 20.0
    assert walk(d, NewPods(1, 1, 1), 30.0).written is None
    walk(d, NewPods(1, 1, 1), 31.0)
    assert phase(d) == (2, Phase.MOVING, False)


def test_a_user_pause_while_moving_is_kept_and_a_new_template_lifts_only_our_pause() -> None:
    d = deployment(image="biz-2.0.0.jar", paused=True)
    d["metadata"]["annotations"][rel.STATE] = ReleaseState(digest(d), 1, Phase.MOVING, 0.0).encode()
    assert rel.plan_release(parsed(d), NewPods(3, 3, 1), now=1.0).paused is None
    # A rollback while waiting at a boundary (vkprovider's pause): the new release starts unpaused.
    waiting = deployment(image="biz-1.0.0.jar", paused=True)
    waiting["metadata"]["annotations"][rel.STATE] = ReleaseState(digest(d), 0, Phase.WAITING, 0.0).encode()
    decision = rel.plan_release(parsed(waiting), None, now=2.0)
    assert decision.paused is False and decision.state is not None and decision.state.phase is Phase.MOVING
    assert decision.state.revision == digest(waiting)
    # A template changed while the user had paused mid-batch: their pause stays.
    decision = rel.plan_release(parsed(deployment(image="biz-3.0.0.jar", paused=True,
                                                  state=ReleaseState(digest(d), 1, Phase.MOVING, 0.0))),
                                None, now=3.0)
    assert decision.paused is None


def test_ready_hold_for_an_unreleased_template_and_at_rest() -> None:
    d = deployment(image="biz-2.0.0.jar", state=ReleaseState("older", 2, Phase.DONE, 1.0))
    assert rel.ready_hold(parsed(d), 0) == "a new pod template: its batched release is starting"
    at_rest = deployment(state=ReleaseState(digest(deployment()), 2, Phase.DONE, 1.0))
    assert rel.ready_hold(parsed(at_rest), 10) is None
    assert rel.ready_hold(parsed(deployment()), 0) is None  # never seen: not held


def test_a_rollback_that_brings_back_an_old_state_is_released_as_a_new_template() -> None:
    """`kubectl rollout undo` copies the old ReplicaSet's annotations - our state of that template's release,
    Done - back onto the Deployment. Its ReplicaSet revision tells it apart: the rollback is released in batches."""
    d = deployment(state=ReleaseState(digest(deployment()), 2, Phase.DONE, 1.0, rs_revision=1), confirmed="3")
    r = parsed(d)
    # The controller has not yet renumbered the old ReplicaSet (revision 1 < the newest, 3): wait, hold.
    settling = NewPods(10, 0, 0, revision=1, settling=True)
    assert rel.plan_release(r, settling, now=5.0) == rel.ReleaseDecision()
    assert rel.ready_hold(r, 0, settling) == "the Deployment controller is still taking this template back (rollback)"
    # Renumbered (4): a new release of that template begins, the restored confirmation is cleared.
    decision = walk(d, NewPods(1, 0, 0, revision=4), 6.0).decision
    assert decision.event is not None and decision.event[0] == "ReleaseStarted" and decision.clear_confirmed
    state = ReleaseState.decode(d["metadata"]["annotations"][rel.STATE])
    assert state is not None and state.rs_revision == 4 and state.phase is Phase.MOVING
    assert rel.ready_hold(parsed(d), 0, NewPods(1, 1, 0, revision=4)) is not None


def test_the_replicaset_revision_is_recorded_once_known() -> None:
    d = deployment()
    walk(d, None, 1.0)  # first sight, no ReplicaSet yet
    state = ReleaseState.decode(d["metadata"]["annotations"][rel.STATE])
    assert state is not None and state.rs_revision == 0
    decision = walk(d, NewPods(10, 10, 10, revision=1), 2.0).decision
    assert decision.state is not None and decision.state.rs_revision == 1 and decision.event is None
    assert walk(d, NewPods(10, 10, 10, revision=1), 3.0).written is None
    # A new template whose ReplicaSet does not exist yet starts without the old revision.
    d["spec"]["template"]["spec"]["containers"][0]["image"] = "biz-2.0.0.jar"
    decision = walk(d, None, 4.0).decision
    assert decision.state is not None and decision.state.rs_revision == 0
    decision = walk(d, NewPods(1, 0, 0, revision=2), 5.0).decision
    assert decision.state is not None and decision.state.rs_revision == 2 and decision.state.phase is Phase.MOVING


# --- who owns which field (server-side apply) -----------------------------------------------------------------

ALL = list(rel.OWNED_FIELDS)


@pytest.mark.parametrize(("managed", "held"), [
    (held_by_vkprovider(ALL), ALL),
    (held_by_vkprovider([rel.REPLICAS_FIELD, ("spec", "template")]), [rel.REPLICAS_FIELD]),
    # not vkprovider's Apply entry: another manager, vkprovider's merge patches (Update), the scale subresource
    ([{**held_by_vkprovider(ALL)[0], "manager": "argocd-controller"}], []),
    ([{**held_by_vkprovider(ALL)[0], "operation": "Update"}], []),
    ([{**held_by_vkprovider(ALL)[0], "subresource": "scale"}], []),
    # a map owned as a whole (".") is not each of its fields
    ([{**held_by_vkprovider([])[0], "fieldsV1": {"f:spec": {"f:strategy": {".": {}}}}}], []),
    (None, []), ("junk", []), ([None, 3, {"manager": "vkprovider", "operation": "Apply", "fieldsV1": "x"}], []),
])
def test_held_fields_are_vkproviders_apply_entry_only(managed: object, held: list[rel.FieldPath]) -> None:
    assert rel.held_fields(managed) == held


def test_live_fields_leave_absent_fields_out() -> None:
    d = deployment(state=ReleaseState("x", 2, Phase.DONE, 1.0))
    del d["spec"]["paused"]
    assert rel.live_fields(d) == {rel.REPLICAS_FIELD: 10, rel.STRATEGY_TYPE_FIELD: "RollingUpdate",
                                  rel.MAX_SURGE_FIELD: 0, rel.MAX_UNAVAILABLE_FIELD: 1,
                                  rel.STATE_FIELD: d["metadata"]["annotations"][rel.STATE]}


R, P, S, U = rel.REPLICAS_FIELD, rel.PAUSED_FIELD, rel.MAX_SURGE_FIELD, rel.MAX_UNAVAILABLE_FIELD


@pytest.mark.parametrize(("live", "held", "wanted", "config"), [
    # in line: every wanted field has its value and is held
    ({R: 3, P: True}, [R, P], {R: 3}, None),
    ({R: 3}, [R], {}, None),
    # the right value, not held (a GitOps tool set it, or nobody did): claimed all the same
    ({R: 3}, [], {R: 3}, {R: 3}),
    # another value (a re-apply reset it): applied, force
    ({R: 1}, [], {R: 3}, {R: 3}),
    ({S: "25%", U: "25%"}, [], {S: 0, U: 1}, {S: 0, U: 1}),
    # held fields not wanted now ride along at their live value: nothing is dropped by omission...
    ({R: 1, P: True, S: 0, U: 1}, [P, S, U], {R: 3}, {R: 3, P: True, S: 0, U: 1}),
    # ... except a held field that is gone from the object (nothing to keep)
    ({R: 1}, [P, S], {R: 3}, {R: 3}),
])
def test_apply_config(live: dict[rel.FieldPath, Any], held: list[rel.FieldPath], wanted: dict[rel.FieldPath, Any],
                      config: dict[rel.FieldPath, Any] | None) -> None:
    assert rel.apply_config(live, held, wanted) == config


def test_apply_body_is_a_deployment_apply_configuration_with_a_precondition() -> None:
    config = {R: 5, P: True, rel.STRATEGY_TYPE_FIELD: "RollingUpdate", S: 0, U: 1, rel.STATE_FIELD: "{}"}
    assert rel.apply_body(config, "m", "ns", "42") == {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "m", "namespace": "ns", "resourceVersion": "42", "annotations": {rel.STATE: "{}"}},
        "spec": {"replicas": 5, "paused": True,
                 "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}}}


def test_release_fields_follow_the_state_and_claim_it_as_written() -> None:
    d = deployment(image="biz-2.0.0.jar", state=ReleaseState(digest(deployment(image="biz-2.0.0.jar")), 1,
                                                             Phase.WAITING, 5.0), paused=True)
    r = parsed(d)
    text = d["metadata"]["annotations"][rel.STATE]
    # Waiting at batch 2: its bound (4), the state as it is written; paused stays whose it is.
    assert rel.release_fields(r, rel.ReleaseDecision(), text) == {
        rel.STATE_FIELD: text, rel.STRATEGY_TYPE_FIELD: "RollingUpdate", S: 0, U: 4}
    # Nothing while there is no state (a rollback not yet numbered, before first sight).
    assert rel.release_fields(parsed(deployment()), rel.ReleaseDecision(), None) == {}


def test_a_bound_reset_by_a_reapply_is_restored_while_waiting_and_the_pause_is_left_alone() -> None:
    """A client-side `kubectl apply` of a manifest with `strategy: {type: RollingUpdate}` drops the bound
    (`$retainKeys`; the apiserver defaults it to 25%) while the release waits at a batch boundary."""
    d = deployment(image="biz-2.0.0.jar")
    walk(d, None, 1.0)  # first sight
    d["spec"]["template"]["spec"]["containers"][0]["image"] = "biz-3.0.0.jar"
    walk(d, NewPods(), 2.0)
    walk(d, NewPods(1, 1, 0), 3.0)
    assert phase(d) == (1, Phase.WAITING, True) and bounds(d) == Bounds(0, 1)
    state = d["metadata"]["annotations"][rel.STATE]
    d["spec"]["strategy"]["rollingUpdate"] = {"maxSurge": "25%", "maxUnavailable": "25%"}
    d["metadata"]["managedFields"] = held_by_vkprovider([rel.STATE_FIELD, rel.STRATEGY_TYPE_FIELD, P])
    step = walk(d, NewPods(1, 1, 1), 4.0)
    assert step.written == {S: 0, U: 1, rel.STATE_FIELD: state, rel.STRATEGY_TYPE_FIELD: "RollingUpdate", P: True}
    assert bounds(d) == Bounds(0, 1) and phase(d) == (1, Phase.WAITING, True)
    assert d["metadata"]["annotations"][rel.STATE] == state  # the release stays where it was
    assert walk(d, NewPods(1, 1, 1), 5.0).written is None


def test_a_users_pause_is_not_claimed() -> None:
    """`kubectl rollout pause` while a batch moves: the field's ownership went to kubectl with its value, and
    vkprovider's applies leave it out (ownership moves with a changed value, so the user's pause stays theirs)."""
    d = deployment(image="biz-2.0.0.jar")
    walk(d, None, 1.0)
    d["spec"]["template"]["spec"]["containers"][0]["image"] = "biz-3.0.0.jar"
    step = walk(d, NewPods(), 2.0)
    assert step.written is not None and P not in step.written
    d["spec"]["paused"] = True  # kubectl rollout pause (vkprovider does not hold `paused`)
    assert walk(d, NewPods(1, 0, 0), 3.0).written is None
    step = walk(d, NewPods(1, 1, 0), 4.0)  # the batch is installed: waiting, in the user's pause
    assert step.written is not None and P not in step.written and phase(d) == (1, Phase.WAITING, True)
