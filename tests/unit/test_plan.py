"""Desired-vs-actual planning per base: the fencing rules of core.plan, over a real BaseLedger."""

from vkprovider.core.basestate import BaseLedger, CommandKind
from vkprovider.core.model import BizInfo, BizSpec, BizState, InstallStrategy
from vkprovider.core.plan import READ_BEFORE_RETRY_S, PodWant, Replace, plan_base

V1 = BizSpec("biz1", "0.0.1", "http://x/biz1-0.0.1.jar")
V2 = BizSpec("biz1", "0.0.2", "http://x/biz1-0.0.2.jar")
V1_NEW_URL = BizSpec("biz1", "0.0.1", "http://x/biz1-0.0.1-rebuilt.jar")
B2 = BizSpec("biz2", "1.0", "http://x/biz2.jar")
NOW = 100.0


def ledger(*specs: BizSpec, state: BizState = BizState.ACTIVATED, known: bool = True) -> BaseLedger:
    """A ledger whose base runs ``specs`` (installed by vkprovider from their URLs when ``known``)."""
    led = BaseLedger(rand=lambda: 1.0)
    led.apply_read(led.begin_read(), [BizInfo(s.name, s.version, state) for s in specs])
    if known:
        for spec in specs:
            led.start(spec.key, CommandKind.INSTALL, spec, 0.0)
            led.finish_install(spec, ok=True, reported=[BizInfo(spec.name, spec.version, state)], now=0.0, at_ms=0)
    return led


def plan(pods, led, now=NOW, grace=30.0):
    return plan_base(pods, led, now=now, orphan_grace_s=grace)


def test_unknown_base_state_decides_nothing():
    p = plan([PodWant("ns/a", (V1,))], BaseLedger())
    assert p.install == () and p.uninstall == () and p.finalize == () and p.force_finalize == ()


def test_missing_biz_is_installed_once():
    p = plan([PodWant("ns/a", (V1,)), PodWant("ns/b", (V1,))], ledger())
    assert p.install == (V1,)


def test_inflight_biz_is_not_installed_again():
    led = ledger()
    led.start(V1.key, CommandKind.INSTALL, V1, NOW)
    assert plan([PodWant("ns/a", (V1,))], led).install == ()


def test_failed_install_waits_for_backoff():
    led = ledger()
    led.start(V1.key, CommandKind.INSTALL, V1, NOW)
    led.finish_install(V1, ok=False, message="boom", now=NOW, at_ms=0)  # rand=1.0: retry in 2 s
    p = plan([PodWant("ns/a", (V1,))], led)
    assert p.install == () and p.wait_s == 2.0
    led.apply_read(led.begin_read(), [])  # the base, read after the failure, does not have it
    assert plan([PodWant("ns/a", (V1,))], led, now=NOW + 2.0).install == (V1,)


def test_an_unanswered_install_is_not_sent_again_before_a_read_shows_the_base():
    """The answer of an install was lost (the broker restarted, the connection dropped): the base may have run it.
    Past its backoff the plan waits for a read sent after the failure, and installs only if the base lacks it."""
    pods = [PodWant("ns/a", (V1,))]
    led = ledger()
    early_read = led.begin_read()  # a read on the wire while the install runs: it cannot know the outcome
    led.start(V1.key, CommandKind.INSTALL, V1, NOW)
    led.finish_install(V1, ok=False, message="base unreachable: disconnected", now=NOW, at_ms=0)
    p = plan(pods, led, now=NOW + 5.0)
    assert p.install == () and p.wait_s == READ_BEFORE_RETRY_S and led.read_needed()
    led.apply_read(early_read, [])
    assert plan(pods, led, now=NOW + 5.0).install == ()  # sent before the failure: still not known
    assert led.read_needed()
    led.apply_read(led.begin_read(), [BizInfo("biz1", "0.0.1", BizState.ACTIVATED)])  # it did run
    p = plan(pods, led, now=NOW + 5.0)
    assert p.install == () and p.is_idle()
    assert not led.read_needed()


def test_an_unanswered_uninstall_is_not_sent_again_before_a_read():
    led = ledger(V1)
    led.planned({V1.key}, (), {})
    led.start(V1.key, CommandKind.UNINSTALL, None, NOW)
    led.finish_uninstall(V1.key, ok=False, message="timeout", now=NOW, at_ms=0)
    assert plan([], led, now=NOW + 5.0).uninstall == ()
    led.apply_read(led.begin_read(), [BizInfo("biz1", "0.0.1", BizState.ACTIVATED)])  # still there
    assert plan([], led, now=NOW + 5.0).uninstall == (V1.key,)


def test_a_failure_remembered_from_an_earlier_process_needs_no_extra_read():
    led = ledger()
    led.seed_failure(V1.key, 3, "boom", retry_at=NOW + 1.0, at_ms=0)
    assert plan([PodWant("ns/a", (V1,))], led).install == ()
    assert plan([PodWant("ns/a", (V1,))], led, now=NOW + 1.0).install == (V1,)


def test_deleting_pod_releases_its_biz_and_is_finalized_after_uninstall():
    terminating = PodWant("ns/a", (V1,), terminating=True, deadline=NOW + 30)
    p = plan([terminating], ledger(V1))
    assert p.uninstall == (V1.key,) and p.finalize == () and p.wait_s == 30
    p = plan([terminating], ledger())
    assert p.finalize == ("ns/a",)


def test_grace_period_over_removes_the_pod_anyway_and_keeps_the_biz_tracked():
    """kubelet semantics: the pod object goes when its grace period ends, even if the uninstall hangs; the biz
    stays known, so its uninstall goes on (with backoff) as an orphan."""
    led = ledger(V1)
    led.start(V1.key, CommandKind.UNINSTALL, None, NOW)
    led.finish_uninstall(V1.key, ok=False, message="stuck", now=NOW, at_ms=0)
    pod = PodWant("ns/a", (V1,), terminating=True, deadline=NOW + 5)
    p = plan([pod], led, now=NOW + 1)
    assert p.force_finalize == () and p.uninstall == ()  # backing off
    led.planned(p.wanted, p.released, p.orphans)
    led.apply_read(led.begin_read(), [BizInfo("biz1", "0.0.1", BizState.ACTIVATED)])  # still on the base
    p = plan([pod], led, now=NOW + 6)
    assert p.force_finalize == ("ns/a",) and p.finalize == ()
    assert p.uninstall == (V1.key,)  # the retry is due too
    led.planned(p.wanted, p.released, p.orphans)
    p = plan([], led, now=NOW + 7)  # the pod is gone: the biz is still known and retried without a grace
    assert V1.key in led.known and p.orphans == {}


def test_late_delete_of_old_pod_never_removes_what_a_new_pod_wants():
    """koupleless#405: same name:version in the old (terminating) and the new pod."""
    p = plan([PodWant("ns/old", (V1,), terminating=True), PodWant("ns/new", (V1,))], ledger(V1))
    assert p.uninstall == () and p.install == ()
    assert p.finalize == ("ns/old",)


def test_upgrade_installs_new_before_uninstalling_old():
    pods = [PodWant("ns/a", (V2,))]
    led = ledger(V1)
    led.planned({V1.key}, (), {})
    p = plan(pods, led)
    assert p.install == (V2,) and p.uninstall == ()
    led.start(V2.key, CommandKind.INSTALL, V2, NOW)
    assert plan(pods, led).uninstall == ()  # still installing the new version
    led.finish_install(V2, ok=True, reported=[BizInfo("biz1", "0.0.2", BizState.ACTIVATED)], now=NOW, at_ms=0)
    assert plan(pods, led).uninstall == (V1.key,)


def test_one_command_per_biz_name_and_the_oldest_pod_first():
    """Two versions of one biz wanted on a base: the older pod's version is installed first, the newer after it,
    so the later install (which deactivates the other: BizDeactivate) follows the order pods were created."""
    older, newer = PodWant("ns/v1", (V1,), order="2026-01-01T00:00:00Z/v1"), \
        PodWant("ns/v2", (V2,), order="2026-01-01T00:00:01Z/v2")
    led = ledger()
    p = plan([newer, older], led)
    assert p.install == (V1,)
    led.start(V1.key, CommandKind.INSTALL, V1, NOW)
    assert plan([newer, older], led).install == ()  # biz1 is busy on this base
    led.finish_install(V1, ok=True, reported=[BizInfo("biz1", "0.0.1", BizState.ACTIVATED)], now=NOW, at_ms=0)
    assert plan([newer, older], led).install == (V2,)
    assert set(plan([newer, older, PodWant("ns/b2", (B2,))], led).install) == {V2, B2}  # other names: parallel


def test_same_version_from_another_url_is_reinstalled_newest_pod_wins():
    led = ledger(V1)
    p = plan([PodWant("ns/a", (V1_NEW_URL,))], led)
    assert p.reinstall == (V1_NEW_URL,) and p.install == () and p.uninstall == ()
    both = [PodWant("ns/old", (V1,), order="1"), PodWant("ns/new", (V1_NEW_URL,), order="2")]
    assert plan(both, led).reinstall == (V1_NEW_URL,)
    assert plan(both, ledger(V1_NEW_URL)).reinstall == ()


def test_a_biz_whose_url_is_unknown_is_adopted_not_reinstalled():
    """Taking over from the Go controller or a restart before any URL was recorded: what runs is kept."""
    assert plan([PodWant("ns/a", (V1_NEW_URL,))], ledger(V1, known=False)).reinstall == ()


def test_orphan_of_unknown_origin_waits_the_grace_period():
    led = ledger(B2, known=False)
    p = plan([], led)
    assert p.uninstall == () and p.orphans == {B2.key: NOW} and p.wait_s == 30
    led.planned(p.wanted, p.released, p.orphans)
    p = plan([], led, now=NOW + 31)
    assert p.uninstall == (B2.key,)


def test_orphan_that_a_pod_owned_goes_at_once():
    led = ledger(V1)
    led.planned({V1.key}, (), {})
    assert plan([], led).uninstall == (V1.key,)


def test_terminal_pod_owns_nothing():
    led = ledger(V1)
    led.planned({V1.key}, (), {})
    p = plan([PodWant("ns/a", (V1,), terminal=True)], led)
    assert p.uninstall == (V1.key,) and p.wanted == frozenset()


def test_uninstall_in_flight_blocks_finalize():
    led = ledger(V1)
    led.start(V1.key, CommandKind.UNINSTALL, None, NOW)
    p = plan([PodWant("ns/a", (V1,), terminating=True)], led)
    assert p.finalize == () and p.uninstall == ()


def test_failed_uninstall_backs_off():
    led = ledger(V1)
    led.planned({V1.key}, (), {})
    led.start(V1.key, CommandKind.UNINSTALL, None, NOW)
    led.finish_uninstall(V1.key, ok=False, message="busy", now=NOW, at_ms=0)
    p = plan([], led)
    assert p.uninstall == () and p.wait_s == 2.0
    led.apply_read(led.begin_read(), [BizInfo("biz1", "0.0.1", BizState.ACTIVATED)])
    assert plan([], led, now=NOW + 2).uninstall == (V1.key,)


def test_an_older_revision_of_the_same_workload_never_deactivates_the_newer_one():
    """A ReplicaSet replaces an old pod that BizDeactivate turned away; the replacement (created later, so
    "oldest first" would install it last and win) lands on a base where the Deployment's newer revision runs:
    it is not installed, so the release cannot ping-pong. Pods of other workloads keep the creation order."""
    new = PodWant("ns/new", (V2,), order="2026-01-01T00:00:00Z/new", workload="ns/Deployment/m", revision=3)
    replacement = PodWant("ns/old", (V1,), order="2026-01-01T00:00:09Z/old", workload="ns/Deployment/m",
                          revision=2)
    led = ledger(V2)
    p = plan([new, replacement], led)
    assert p.install == () and p.uninstall == () and V1.key not in p.wanted
    # Before the new one is installed, the old revision is not installed first either.
    assert plan([new, replacement], ledger()).install == (V2,)
    # A rollback makes the older template the newest revision: it wins in turn.
    rollback = PodWant("ns/back", (V1,), order="2026-01-01T00:00:10Z/back", workload="ns/Deployment/m",
                       revision=4)
    p = plan([new, rollback], ledger(V2))
    assert p.install == (V1,) and V2.key not in p.wanted
    # Another workload's pod of an older version is not affected by this Deployment's revisions.
    other = PodWant("ns/other", (V1,), order="2026-01-01T00:00:11Z/other", workload="ns/Deployment/x", revision=1)
    assert plan([new, other], ledger(V2)).install == (V1,)
    # Unknown revisions (0) fall back to the creation order.
    unknown = PodWant("ns/old", (V1,), order="2026-01-01T00:00:09Z/old", workload="ns/Deployment/m")
    assert plan([new, unknown], ledger(V2)).install == (V1,)


# --- issue 27, item 1: a version that serves is removed only when a newer version of the same workload is
# --- ACTIVATED on that base, or its own pod goes ----------------------------------------------------------------

OLD_POD = PodWant("ns/old", (V1,), order="2026-01-01T00:00:00Z/old", workload="ns/Deployment/m", revision=1)
NEW_POD = PodWant("ns/new", (V2,), order="2026-01-01T00:00:05Z/new", workload="ns/Deployment/m", revision=2)


def failed_install(led: BaseLedger, spec: BizSpec, now: float = NOW) -> None:
    led.start(spec.key, CommandKind.INSTALL, spec, now)
    led.finish_install(spec, ok=False, message="boom", now=now, at_ms=0)


def test_a_failed_new_version_never_uninstalls_the_old_one_that_serves():
    """The rollout's new pod shares a base with the old one; its install fails and backs off. Before: the next
    plan uninstalled biz1:0.0.1 while its pod lived, and nothing installed it again."""
    led = ledger(V1)
    led.planned({V1.key}, (), {})  # wanted before the rollout began
    assert plan([OLD_POD, NEW_POD], led).install == (V2,)
    failed_install(led, V2)
    led.apply_read(led.begin_read(), [BizInfo("biz1", "0.0.1", BizState.ACTIVATED)])
    for now in (NOW, NOW + 1.0, NOW + 60.0, NOW + 600.0):  # during the backoff and long after it
        p = plan([OLD_POD, NEW_POD], led, now=now)
        assert p.uninstall == (), now
        assert V1.key in p.wanted | p.kept, now
    # While the new version is retried, the old one is kept (not wanted: it is not installed over the new one).
    led.start(V2.key, CommandKind.INSTALL, V2, NOW + 2.0)
    p = plan([OLD_POD, NEW_POD], led, now=NOW + 2.5)
    assert p.uninstall == () and p.kept == {V1.key} and ("ns/old", V1.key) in p.outranked


def test_the_old_version_goes_once_the_new_one_is_activated_on_the_base():
    led = ledger(V1, V2)
    led.planned({V1.key, V2.key}, (), {})
    p = plan([OLD_POD, NEW_POD], led)
    assert p.uninstall == (V1.key,)
    # ... but not while the new one is there and not ACTIVATED (started DEACTIVATED, sofa-ark's default)
    led = ledger(V1)
    led.start(V2.key, CommandKind.INSTALL, V2, NOW)
    led.finish_install(V2, ok=True, reported=[BizInfo("biz1", "0.0.2", BizState.DEACTIVATED)], now=NOW, at_ms=0)
    assert plan([OLD_POD, NEW_POD], led).uninstall == ()


def test_the_old_version_goes_with_its_own_pod():
    led = ledger(V1)
    failed_install(led, V2)
    led.apply_read(led.begin_read(), [BizInfo("biz1", "0.0.1", BizState.ACTIVATED)])
    gone = PodWant("ns/old", (V1,), terminating=True, order=OLD_POD.order, workload=OLD_POD.workload, revision=1)
    p = plan([gone, NEW_POD], led, now=NOW + 1.0)  # the new one still backs off
    assert p.uninstall == (V1.key,)


def test_when_the_replacing_install_fails_the_old_version_is_installed_back():
    """uninstallThenInstall removed 0.0.1, then 0.0.2 failed: the base has neither. The old pod's version is
    installed again at once (its pod is Ready again within one backoff of the new one)."""
    led = ledger(V1)
    failed_install(led, V2)
    led.apply_read(led.begin_read(), [])
    p = plan([OLD_POD, NEW_POD], led)
    assert p.install == (V1,)
    assert ("ns/old", V1.key) not in p.outranked
    # Once the old one is back, the new one is retried after its backoff (and the old one stays meanwhile).
    led.start(V1.key, CommandKind.INSTALL, V1, NOW)
    led.finish_install(V1, ok=True, reported=[BizInfo("biz1", "0.0.1", BizState.ACTIVATED)], now=NOW, at_ms=0)
    led.apply_read(led.begin_read(), [BizInfo("biz1", "0.0.1", BizState.ACTIVATED)])
    assert plan([OLD_POD, NEW_POD], led, now=NOW + 0.5).install == ()
    p = plan([OLD_POD, NEW_POD], led, now=NOW + 2.0)
    assert p.install == (V2,) and p.uninstall == ()


def test_uninstall_then_install_only_over_older_pods_of_the_same_workload():
    """A rollout may make room (a web biz cannot run two versions); an unrelated workload's version never is."""
    assert plan([OLD_POD, NEW_POD], ledger(V1)).replace == {V2.key: Replace.ON_FAILURE}
    other = PodWant("ns/other", (V1,), order="2026-01-01T00:00:00Z/other", workload="ns/Deployment/x", revision=1)
    assert plan([other, NEW_POD], ledger(V1)).replace == {}
    assert plan([OLD_POD, other, NEW_POD], ledger(V1)).replace == {}
    # A biz no pod wants any more may be replaced.
    assert plan([NEW_POD], ledger(V1)).replace == {V2.key: Replace.ON_FAILURE}
    # Bare pods of one namespace are one lineage (the seeds' batch update: a newer pod replaces an older one) ...
    bare_old = PodWant("ns/biz1-pod", (V1,), order="2026-01-01T00:00:00Z/biz1-pod")
    bare_new = PodWant("ns/biz1-pod-v2", (V2,), order="2026-01-01T00:00:05Z/biz1-pod-v2")
    assert plan([bare_old, bare_new], ledger(V1)).replace == {V2.key: Replace.ON_FAILURE}
    # ... but never a newer pod's version, nor another namespace's.
    assert plan([bare_old, bare_new], ledger(V2)).replace == {}
    other_ns = PodWant("ns2/biz1-pod", (V1,), order="2026-01-01T00:00:00Z/biz1-pod")
    assert plan([other_ns, bare_new], ledger(V1)).replace == {}


def test_a_workload_chooses_its_install_strategy():
    only = PodWant("ns/new", (V2,), order=NEW_POD.order, workload=NEW_POD.workload, revision=2,
                   strategy=InstallStrategy.INSTALL_ONLY)
    assert plan([OLD_POD, only], ledger(V1)).replace == {}
    first = PodWant("ns/new", (V2,), order=NEW_POD.order, workload=NEW_POD.workload, revision=2,
                    strategy=InstallStrategy.UNINSTALL_THEN_INSTALL)
    assert plan([OLD_POD, first], ledger(V1)).replace == {V2.key: Replace.FIRST}
    # uninstallThenInstall never reaches over another workload's version either
    other = PodWant("ns/other", (V1,), order="2026-01-01T00:00:00Z/other", workload="ns/Deployment/x", revision=1)
    assert plan([other, first], ledger(V1)).replace == {}


def test_a_terminating_pod_is_finalized_while_a_live_pod_of_the_old_revision_keeps_the_biz():
    led = ledger(V1)
    failed_install(led, V2)
    led.apply_read(led.begin_read(), [BizInfo("biz1", "0.0.1", BizState.ACTIVATED)])
    going = PodWant("ns/old2", (V1,), terminating=True, order=OLD_POD.order, workload=OLD_POD.workload,
                    revision=1, deadline=NOW + 30)
    p = plan([OLD_POD, going, NEW_POD], led)
    assert p.finalize == ("ns/old2",) and p.uninstall == ()


# --- issue 27, item 8: a base whose biz list is unknown still lets deleted pods go ---------------------------

def test_while_the_biz_list_is_unknown_a_deleted_pod_goes_at_the_end_of_its_grace_period():
    led = BaseLedger()
    pods = [PodWant("ns/a", (V1,), terminating=True, deadline=NOW + 30), PodWant("ns/empty", (), terminating=True)]
    p = plan(pods, led)
    assert p.finalize == ("ns/empty",) and p.force_finalize == () and p.wait_s == 30.0
    p = plan(pods, led, now=NOW + 30)
    assert p.force_finalize == ("ns/a",)
    assert p.install == () and p.uninstall == ()


# --- issue 29, item 3: graceful stop --------------------------------------------------------------------------

def test_a_deleted_pod_keeps_serving_while_its_prestop_runs_then_goes():
    led = ledger(V1)
    led.planned({V1.key}, (), {})
    stopping = PodWant("ns/a", (V1,), terminating=True, stopping=True, deadline=NOW + 30)
    p = plan([stopping], led)
    assert p.uninstall == () and p.finalize == () and p.force_finalize == ()
    assert V1.key not in p.released
    done = PodWant("ns/a", (V1,), terminating=True, deadline=NOW + 30)
    assert plan([done], led).uninstall == (V1.key,)
    # A hook that outlives the grace period does not hold the pod any longer.
    p = plan([stopping], led, now=NOW + 30)
    assert p.uninstall == (V1.key,) and p.force_finalize == ("ns/a",)


def test_a_failed_liveness_probe_restarts_the_biz_at_once_then_after_a_crash_loop_backoff():
    """Issue 29, item 1: the container's liveness failed past its threshold: the biz is reinstalled; a second
    failure waits for the kubelet's crash-loop backoff (2 s doubling here, BIZ_INSTALL), during which the plan says
    which bizs loop."""
    led = ledger(V1)
    led.planned({V1.key}, (), {})
    failing = PodWant("ns/a", (V1,), restart=frozenset({V1.key}))
    p = plan([failing], led)
    assert p.restart == (V1,) and p.install == () and p.uninstall == ()
    led.restart_started(V1.key, "Liveness probe failed", NOW, 0)
    p = plan([failing], led, now=NOW + 1.0)
    assert p.restart == () and p.crash_loop == {V1.key} and p.wait_s == 1.0
    assert plan([failing], led, now=NOW + 2.0).restart == (V1,)
    led.restart_started(V1.key, "Liveness probe failed", NOW + 2.0, 0)
    assert plan([failing], led, now=NOW + 5.0).restart == ()  # the second wait is twice as long (4 s)
    assert plan([failing], led, now=NOW + 6.0).restart == (V1,)
    assert plan([PodWant("ns/a", (V1,))], led, now=NOW + 6.0).is_idle()  # healthy again: nothing to do
