"""Vnode ownership decided purely (core.ownership): observed time, fencing, spread, adoption."""

import collections

import pytest

from vkprovider.core import ownership as own

T = own.Timing(lease_duration_s=20, renew_interval_s=10, renew_deadline_s=15)
ME, OTHER = "vkp-a", "vkp-b"


def facts(holder: str, rv: str = "1", managed: bool = True, duration: float = 20) -> own.LeaseFacts:
    return own.LeaseFacts("vnode.x.dev", holder, rv, duration, 0, managed)


def decide(lease: own.Observed | None, *, held: own.Held | None = None, now: float = 100.0,
           members: tuple[str, ...] = (ME, OTHER)) -> own.Decision:
    return own.decide("vnode.x.dev", lease, me=ME, members=list(members), held=held, now=now, timing=T)


def test_observation_restarts_only_when_the_lease_changes():
    first = own.observe(None, facts(OTHER, "1"), 10.0)
    same = own.observe(first, facts(OTHER, "1"), 25.0)
    assert same.since == 10.0 and own.expired(same, 30.0)
    renewed = own.observe(same, facts(OTHER, "2"), 29.0)
    assert renewed.since == 29.0 and not own.expired(renewed, 30.0)


def test_a_live_holder_is_never_challenged_whatever_its_renew_time_says():
    """Expiry is measured here, from when this process saw the lease change: a clock that runs 30 s ahead
    (or a renewTime in the distant past) changes nothing. The pure functions do not even read renewTime."""
    lease = own.Observed(facts(OTHER), since=95.0)
    assert decide(lease, now=100.0).action is own.Action.NOTHING
    assert decide(lease, now=114.9).action is own.Action.NOTHING


def test_an_expired_lease_goes_to_its_preferred_live_member():
    members = (ME, OTHER, "vkp-c")
    preferred = own.rendezvous("vnode.x.dev", list(members))
    dead = own.Observed(facts("vkp-dead"), since=50.0)
    action = decide(dead, now=100.0, members=members).action
    assert action is (own.Action.ACQUIRE if preferred == ME else own.Action.NOTHING)
    # Its preferred owner did not take it within another lease duration: anybody may (rv decides).
    assert decide(own.Observed(facts("vkp-dead"), since=10.0), now=100.0, members=members).action \
        is own.Action.ACQUIRE


def test_released_foreign_and_own_leases():
    only_me = (ME,)
    assert decide(own.Observed(facts(""), 99.0), members=only_me).action is own.Action.ACQUIRE
    # The Go ModuleController's lease (no managed-by label): adopted at once (its controller was stopped).
    assert decide(own.Observed(facts("go-uuid", managed=False), 99.0), members=only_me).action is own.Action.ACQUIRE
    # Our own identity (a restart with a stable CLIENT_ID): taken back at once.
    assert decide(own.Observed(facts(ME), 99.0)).action is own.Action.ACQUIRE


def test_holder_renews_on_time_and_is_fenced_past_the_deadline():
    lease = own.Observed(facts(ME, "7"), 90.0)
    assert decide(lease, held=own.Held(95.0, "7"), now=100.0, members=(ME,)).action is own.Action.NOTHING
    assert decide(lease, held=own.Held(90.0, "7"), now=100.0, members=(ME,)).action is own.Action.RENEW
    fenced = decide(lease, held=own.Held(84.0, "7"), now=100.0, members=(ME,))
    assert fenced.action is own.Action.FENCE and "deadline" in fenced.why
    assert own.fenced(own.Held(84.0, "7"), 100.0, T)
    # a hold may say when it renews first (spread over the interval): earlier than a renew interval after it began
    early, later = own.Held(98.0, "7", renew_at=100.0), own.Held(98.0, "7", renew_at=101.0)
    assert decide(lease, held=early, now=100.0, members=(ME,)).action is own.Action.RENEW
    assert decide(lease, held=later, now=100.0, members=(ME,)).action is own.Action.NOTHING
    assert own.renew_due(own.Held(98.0, "7"), T) == 98.0 + T.renew_interval_s
    # decided on a grid: due a renew interval after the tick it was sent on, while the deadline counts from sending
    on_ticks = own.Timing(lease_duration_s=20, renew_interval_s=10, renew_deadline_s=15, tick_s=0.5)
    assert own.renew_due(own.Held(98.03, "7"), on_ticks) == 108.0
    assert not own.fenced(own.Held(98.03, "7"), 113.02, on_ticks) and own.fenced(own.Held(98.03, "7"), 113.03, on_ticks)


def test_a_holder_that_sees_someone_else_in_its_lease_stops():
    lease = own.Observed(facts(OTHER, "8"), 99.0)
    assert decide(lease, held=own.Held(99.0, "7"), members=(ME,)).action is own.Action.FENCE


def test_a_holder_hands_a_vnode_to_the_preferred_live_member():
    node = next(n for n in (f"vnode.b{i}.dev" for i in range(100)) if own.rendezvous(n, [ME, OTHER]) == OTHER)
    lease = own.Observed(own.LeaseFacts(node, ME, "3", 20, 0, True), 99.0)
    d = own.decide(node, lease, me=ME, members=[ME, OTHER], held=own.Held(99.0, "3"), now=100.0, timing=T)
    assert d.action is own.Action.HANDOFF and d.to == OTHER
    d = own.decide(node, lease, me=ME, members=[ME, OTHER], held=own.Held(99.0, "3"), now=100.0, timing=T,
                   may_hand_off=False)
    assert d.action is own.Action.NOTHING


def test_rendezvous_spreads_evenly_and_moves_about_a_third_on_scale_out():
    nodes = [f"vnode.base-{i:04d}.dev" for i in range(3000)]
    two = {n: own.rendezvous(n, ["r1", "r2"]) for n in nodes}
    three = {n: own.rendezvous(n, ["r1", "r2", "r3"]) for n in nodes}
    counts = collections.Counter(three.values())
    assert all(900 < c < 1100 for c in counts.values()), counts
    moved = [n for n in nodes if two[n] != three[n]]
    assert all(three[n] == "r3" for n in moved)  # only to the new member
    assert 900 < len(moved) < 1100
    # A member dies: only its vnodes move, spread over the others.
    after = {n: own.rendezvous(n, ["r1", "r3"]) for n in nodes}
    assert all(after[n] == three[n] for n in nodes if three[n] != "r2")


def test_live_members_are_observed_renewing():
    members = {"m-b": own.Observed(facts(OTHER), 95.0), "m-dead": own.Observed(facts("vkp-dead"), 50.0)}
    assert own.live_members(members, ME, 100.0) == [ME, OTHER]


def test_timing_must_fence_before_others_may_take_over():
    with pytest.raises(ValueError):
        own.Timing(lease_duration_s=10, renew_interval_s=10, renew_deadline_s=12)


def test_lease_facts_from_the_go_controller_lease():
    go_lease = {"metadata": {"name": "vnode.10.0.0.5.dev", "resourceVersion": "42",
                             "labels": {"virtual-kubelet.koupleless.io/component": "vnode-lease"}},
                "spec": {"holderIdentity": "go-mc-1", "leaseDurationSeconds": 40,
                         "renewTime": "2025-09-22T10:00:00.123456Z"}}
    f = own.LeaseFacts.from_object(go_lease, 20)
    assert (f.holder, f.resource_version, f.duration_s, f.transitions, f.managed) == ("go-mc-1", "42", 40, 0, False)


@pytest.mark.parametrize(
    ("duration", "interval", "deadline", "attempt", "total"),
    [
        (20, 10.0, 15.0, 10 / 3, 5.0),  # the defaults: a renewal due at 10 s must land by 15 s
        (10, 3.0, 7.5, 3.0, 4.5),  # the integration tests' timing
        (40, 10.0, 30.0, 40 / 3, 20.0),  # the Go controller's lease duration
        (20, 14.0, 15.0, 2 / 3, 1.0),  # a tight window is not stretched: a later write would be fenced anyway
    ],
)
def test_lease_writes_have_a_budget_below_the_renew_deadline(duration: int, interval: float, deadline: float,
                                                             attempt: float, total: float) -> None:
    """Issue 27, item 5: Lease writes used the generic 30 s request timeout, longer than the renew deadline and the
    lease itself: one dead connection held a renewal until the vnode was fenced. A write now has, in all, the time
    between its renewal falling due and the renew deadline; its first attempt two thirds of it, so a retry on a
    fresh connection fits in the rest."""
    budget = own.lease_write_budget(own.Timing(duration, interval, deadline))
    assert budget.attempt_s == pytest.approx(attempt) and budget.total_s == pytest.approx(total)
    assert budget.attempt_s < budget.total_s <= deadline - interval < deadline < duration
    assert budget.total_s - budget.attempt_s >= budget.total_s / 3 - 1e-9  # room for the retry


@pytest.mark.parametrize(
    ("held", "observed_since", "members", "now", "want"),
    [
        # held, we are the rendezvous winner (or alone): at the renewal
        (own.Held(100.0, "5"), None, ["me"], 101.0, 110.0),
        # held, another replica wins the rendezvous: the next tick (a hand-over waits on budget and readiness)
        (own.Held(100.0, "5"), None, ["me", "other"], 101.0, "tick"),
        # not held, observed: a lease duration after, then two, then every tick
        (None, 100.0, ["me"], 101.0, 120.0),
        (None, 100.0, ["me"], 125.0, 140.0),
        (None, 100.0, ["me"], 141.0, "tick"),
        # neither held nor observed: only a new observation can change anything
        (None, None, ["me"], 101.0, None),
    ],
)
def test_next_deadline(held, observed_since, members, now, want):
    node = "vnode.x.dev"
    if want == "tick" and held is not None:
        node = next(n for n in (f"vnode.{i}.dev" for i in range(100)) if own.rendezvous(n, members) != "me")
    observed = None if observed_since is None else own.Observed(facts("other"), observed_since)
    got = own.next_deadline(node, held, observed, me="me", members=members, now=now, timing=T, tick_s=0.5)
    assert got == (now + 0.5 if want == "tick" else want)


def test_decision_schedule_decides_all_on_new_inputs_then_only_touched_and_due():
    schedule = own.DecisionSchedule()
    known = {"a", "b", "c"}
    assert sorted(schedule.due((("me",), False), known, 0.0)) == ["a", "b", "c"]  # first tick: all
    schedule.again_at("a", 5.0)
    schedule.again_at("b", None)  # only an observation can change b
    schedule.again_at("c", 10.0)
    assert schedule.due((("me",), False), known, 1.0) == []
    schedule.touch("b")
    assert schedule.due((("me",), False), known, 1.0) == ["b"]
    assert schedule.due((("me",), False), known, 5.0) == ["a"]
    schedule.again_at("c", 12.0)  # moved: the old entry at 10 is skipped
    assert schedule.due((("me",), False), known, 11.0) == []
    assert schedule.due((("me",), False), known - {"c"}, 12.0) == []  # forgotten vnodes are not decided
    assert sorted(schedule.due((("me", "other"), False), known, 12.0)) == ["a", "b", "c"]  # new members: all
    schedule.decide_all_again()
    assert sorted(schedule.due((("me", "other"), False), known, 12.0)) == ["a", "b", "c"]


# --- membership fencing (issue 31): a replica watches only its own vnode Leases ------------------------------------

def labelled(holder: str, rv: str = "1") -> own.LeaseFacts:
    """A vnode Lease written by a vkprovider that fences itself by its membership (the holder label)."""
    return own.LeaseFacts.from_object({"metadata": {"name": "vnode.x.dev", "resourceVersion": rv, "labels": {
        own.MANAGED_BY_LABEL: own.MANAGED_BY, own.HOLDER_LABEL: own.holder_label(holder)}},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 20}}, 20)


@pytest.mark.parametrize("holder,value", [
    ("vkp-a", "vkp-a"),
    ("vkprovider-dev", "vkprovider-dev"),
    ("Go_Client.1", "Go_Client.1"),
    ("has space", "h-" + __import__("hashlib").blake2b(b"has space", digest_size=8).hexdigest()),
    ("x" * 64, "h-" + __import__("hashlib").blake2b(b"x" * 64, digest_size=8).hexdigest()),
    ("-lead", "h-" + __import__("hashlib").blake2b(b"-lead", digest_size=8).hexdigest()),
])
def test_holder_label_is_the_holder_or_a_digest_of_it(holder: str, value: str):
    assert own.holder_label(holder) == value


def test_a_lease_is_member_fenced_only_when_its_label_names_its_holder():
    assert labelled(OTHER).member_fenced
    assert not facts(OTHER).member_fenced  # no label: an older vkprovider's, or the Go controller's
    stale = own.LeaseFacts.from_object({"metadata": {"labels": {own.HOLDER_LABEL: ME}},
                                        "spec": {"holderIdentity": OTHER}}, 20)
    assert not stale.member_fenced and stale.labelled == ME  # a writer that did not relabel: the older rule
    nobody = own.LeaseFacts.from_object({"metadata": {"labels": {own.HOLDER_LABEL: ""}}, "spec": {}}, 20)
    assert not nobody.member_fenced


@pytest.mark.parametrize("since,members,want", [
    (95.0, (ME, OTHER), own.Action.NOTHING),  # live holder, renewals seen
    (0.0, (ME, OTHER), own.Action.NOTHING),  # live holder, renewals unseen for long: still its own
    (99.0, (ME,), "preferred"),  # holder not live: free at once (it fenced itself)
])
def test_a_member_fenced_lease_is_its_holders_exactly_while_the_holder_is_live(since, members, want):
    lease = own.Observed(labelled(OTHER), since=since)
    decision = decide(lease, now=100.0, members=members)
    if want == "preferred":
        assert decision.action is own.Action.ACQUIRE and "no longer a live replica" in decision.why
    else:
        assert decision.action is want


def test_a_member_fenced_lease_of_a_dead_holder_goes_to_the_preferred_live_member_first():
    members = [ME, "vkp-c"]
    lease = own.Observed(labelled(OTHER), since=100.0)
    for node in (f"vnode.{i}.dev" for i in range(40)):
        mine = own.rendezvous(node, members) == ME
        got = own.decide(node, lease, me=ME, members=members, held=None, now=100.0, timing=T)
        assert (got.action is own.Action.ACQUIRE) == mine
        later = own.decide(node, lease, me=ME, members=members, held=None, now=140.0, timing=T)
        assert later.action is own.Action.ACQUIRE  # its preferred owner did not take it in two durations


def test_a_late_membership_fences_every_held_vnode_and_blocks_acquiring():
    held = own.Held(renewed_at=99.0, resource_version="1")
    mine = own.Observed(labelled(ME), since=99.0)
    got = own.decide("vnode.x.dev", mine, me=ME, members=[ME], held=held, now=100.0, timing=T, membership_late=True)
    assert got.action is own.Action.FENCE and "membership" in got.why
    for lease in (mine, own.Observed(facts(""), 0.0), own.Observed(labelled(OTHER), 0.0)):
        assert own.decide("vnode.x.dev", lease, me=ME, members=[ME], held=None, now=100.0, timing=T,
                          may_acquire=False).action is own.Action.NOTHING


def test_an_expired_membership_counts_as_live_until_a_fresh_read_confirms_it():
    seen = {"m-b": own.Observed(facts(OTHER, "7"), since=0.0)}
    assert own.live_members(seen, ME, 100.0) == [ME]  # no confirmation asked for: the older rule
    assert own.live_members(seen, ME, 100.0, {}) == [ME, OTHER]  # expired, not read again yet
    assert own.live_members(seen, ME, 100.0, {"m-b": "6"}) == [ME, OTHER]  # a read of an older version
    assert own.live_members(seen, ME, 100.0, {"m-b": "7"}) == [ME]  # read again, unchanged: gone
    assert own.live_members(seen, ME, 10.0, {"m-b": "7"}) == [ME, OTHER]  # not expired: live


@pytest.mark.parametrize("lease,members,kept", [
    (labelled(OTHER), (ME, OTHER), False),  # a live member's: its holder keeps it, nothing to watch
    (labelled(OTHER), (ME,), True),  # a dead member's: to take
    (labelled(ME), (ME,), True),  # our own
    (facts(OTHER), (ME, OTHER), True),  # unlabelled: the older rule needs its renewals
    (facts(""), (ME, OTHER), True),  # released
    (facts(OTHER, managed=False), (ME, OTHER), True),  # the Go controller's
])
def test_which_swept_leases_a_replica_keeps_observing(lease, members, kept):
    assert own.observed_here(lease, ME, members) is kept


def test_unheld_counts_no_holder_a_dead_labelled_holder_or_an_expired_unlabelled_lease():
    assert own.unheld(own.Observed(facts(""), 99.0), [ME], 100.0)
    assert own.unheld(own.Observed(labelled(OTHER), 99.0), [ME], 100.0)
    assert not own.unheld(own.Observed(labelled(OTHER), 0.0), [ME, OTHER], 100.0)
    assert own.unheld(own.Observed(facts(OTHER), 0.0), [ME, OTHER], 100.0)
    assert not own.unheld(own.Observed(facts(OTHER), 99.0), [ME, OTHER], 100.0)
