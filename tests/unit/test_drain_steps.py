"""Drain before a base goes (issue 30): the pure steps, as kubectl drain takes them."""

from __future__ import annotations

import pytest

from vkprovider.core.drain import EVICTION_RETRY_S, DrainPod, DrainState, drain_step

A, B = DrainPod("ns/a"), DrainPod("ns/b")


def step(*, going=True, cordoned=False, by_us=False, pods=(A, B), started=None, now=100.0, timeout=300.0):
    return drain_step(going=going, cordoned=cordoned, cordoned_by_us=by_us, pods=tuple(pods), started_at=started,
                      now=now, timeout_s=timeout)


def test_a_going_base_is_cordoned_and_its_module_pods_evicted():
    s = step()
    assert (s.state, s.cordon, s.evict, s.uncordon) == (DrainState.DRAINING, True, ("ns/a", "ns/b"), False)
    assert step(cordoned=True, by_us=True).cordon is False  # cordoned already (ours or a user's)


@pytest.mark.parametrize(("pod", "evicted"), [
    (DrainPod("ns/x", terminating=True), False),  # going already
    (DrainPod("ns/x", terminal=True), False),  # finished
    (DrainPod("ns/x", daemon=True), False),  # its DaemonSet would put it back: kubectl drain skips it too
    # no controller would replace it: evicting it loses the module for good (kubectl drain refuses it without
    # --force); it stays, not Ready while its base is deactivated, Ready again if the base comes back
    (DrainPod("ns/x", unmanaged=True), False),
    (DrainPod("ns/x"), True),
])
def test_which_pods_are_evicted(pod, evicted):
    assert (pod.key in step(pods=[pod]).evict) is evicted


def test_an_eviction_a_pdb_refused_is_asked_again_after_the_retry_delay():
    refused = DrainPod("ns/a", refused_at=98.0)
    s = step(pods=[refused], started=90.0)
    assert s.evict == () and s.wait_s == pytest.approx(EVICTION_RETRY_S - 2.0)
    assert step(pods=[refused], started=90.0, now=98.0 + EVICTION_RETRY_S).evict == ("ns/a",)


def test_drained_when_nothing_is_left_and_draining_while_pods_still_terminate():
    assert step(pods=[]).state is DrainState.DRAINED
    s = step(pods=[DrainPod("ns/a", terminating=True)], started=50.0)
    assert s.state is DrainState.DRAINING and s.evict == ()


def test_the_drain_stops_at_its_timeout():
    s = step(started=100.0, now=400.0, timeout=300.0)
    assert s.state is DrainState.TIMED_OUT and s.evict == ()
    assert step(started=100.0, now=399.0, timeout=300.0).wait_s == pytest.approx(1.0)


def test_a_base_that_stays_lifts_only_vkprovider_s_own_cordon():
    assert step(going=False, cordoned=True, by_us=True).uncordon is True
    assert step(going=False, cordoned=True, by_us=False).uncordon is False  # kubectl cordon: the user's
    s = step(going=False)
    assert s.state is DrainState.IDLE and not (s.cordon or s.uncordon or s.evict)
