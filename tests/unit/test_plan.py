"""Desired-vs-actual planning per base: the fencing rules of core.plan."""

from vkprovider.core.model import BizInfo, BizKey, BizSpec, BizState
from vkprovider.core.plan import PodWant, plan_base

V1 = BizSpec("biz1", "0.0.1", "http://x/biz1-0.0.1.jar")
V2 = BizSpec("biz1", "0.0.2", "http://x/biz1-0.0.2.jar")
B2 = BizSpec("biz2", "1.0", "http://x/biz2.jar")


def actual(*specs: BizSpec, state: BizState = BizState.ACTIVATED) -> dict[BizKey, BizInfo]:
    return {s.key: BizInfo(s.name, s.version, state) for s in specs}


def plan(pods, bizs, **kw):
    args = {"inflight": set(), "retry_after": {}, "orphan_since": {}, "now": 100.0, "orphan_grace_s": 30.0}
    args.update(kw)
    return plan_base(pods, bizs, **args)


def test_unknown_base_state_decides_nothing():
    p = plan([PodWant("ns/a", (V1,))], None)
    assert p.install == () and p.uninstall == () and p.finalize == ()


def test_missing_biz_is_installed_once():
    p = plan([PodWant("ns/a", (V1,)), PodWant("ns/b", (V1,))], actual())
    assert p.install == (V1,)


def test_inflight_biz_is_not_installed_again():
    p = plan([PodWant("ns/a", (V1,))], actual(), inflight={V1.key})
    assert p.install == ()


def test_failed_install_waits_for_backoff():
    p = plan([PodWant("ns/a", (V1,))], actual(), retry_after={V1.key: 105.0})
    assert p.install == () and p.wait_s == 5.0
    p = plan([PodWant("ns/a", (V1,))], actual(), retry_after={V1.key: 99.0})
    assert p.install == (V1,)


def test_deleting_pod_releases_its_biz_and_is_finalized_after_uninstall():
    terminating = PodWant("ns/a", (V1,), terminating=True)
    p = plan([terminating], actual(V1))
    assert p.uninstall == (V1.key,) and p.finalize == ()
    p = plan([terminating], actual())
    assert p.finalize == ("ns/a",)


def test_late_delete_of_old_pod_never_removes_what_a_new_pod_wants():
    """koupleless#405: same name:version in the old (terminating) and the new pod."""
    p = plan([PodWant("ns/old", (V1,), terminating=True), PodWant("ns/new", (V1,))], actual(V1))
    assert p.uninstall == () and p.install == ()
    assert p.finalize == ("ns/old",)


def test_upgrade_installs_new_before_uninstalling_old():
    pods = [PodWant("ns/a", (V2,))]
    p = plan(pods, actual(V1), known={V1.key})
    assert p.install == (V2,) and p.uninstall == ()
    p = plan(pods, actual(V1), inflight={V2.key}, known={V1.key})
    assert p.uninstall == ()
    p = plan(pods, {**actual(V1, state=BizState.DEACTIVATED), **actual(V2)}, known={V1.key})
    assert p.uninstall == (V1.key,)


def test_orphan_of_unknown_origin_waits_the_grace_period():
    p = plan([], actual(B2))
    assert p.uninstall == () and p.orphans == {B2.key: 100.0} and p.wait_s == 30.0
    p = plan([], actual(B2), orphan_since={B2.key: 60.0})
    assert p.uninstall == (B2.key,)


def test_orphan_that_a_pod_owned_goes_at_once():
    p = plan([], actual(B2), known={B2.key})
    assert p.uninstall == (B2.key,)


def test_terminal_pod_owns_nothing():
    p = plan([PodWant("ns/a", (V1,), terminal=True)], actual(V1), known={V1.key})
    assert p.uninstall == (V1.key,)


def test_uninstall_in_flight_blocks_finalize():
    p = plan([PodWant("ns/a", (V1,), terminating=True)], actual(V1), inflight={V1.key})
    assert p.uninstall == () and p.finalize == ()
