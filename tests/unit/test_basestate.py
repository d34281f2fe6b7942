"""The base ledger: every interleaving of a read and a command result, deterministically (issue: one writer).

Each test replays one order of events that the event loop can produce; before the ledger, the module controller
overwrote its biz list with whatever a read returned, losing an install that finished while the read was on the
wire (then installed it again) and losing the "read again" request of a heartbeat after a base restart.
"""

import itertools

import pytest

from vkprovider.core.basestate import BaseLedger, CommandKind
from vkprovider.core.model import BizInfo, BizSpec, BizState

V1 = BizSpec("biz1", "0.0.1", "http://x/biz1.jar")
B2 = BizSpec("biz2", "1.0", "http://x/biz2.jar")
ACTIVE_V1 = BizInfo("biz1", "0.0.1", BizState.ACTIVATED)


def fresh() -> BaseLedger:
    led = BaseLedger(rand=lambda: 0.5)
    led.apply_read(led.begin_read(), [])
    return led


def test_install_finishing_while_a_read_is_on_the_wire_is_not_lost():
    """Read sent (base has nothing) -> install answers SUCCESS -> read answers (without the biz)."""
    led = fresh()
    led.start(V1.key, CommandKind.INSTALL, V1, 1.0)
    token = led.begin_read()
    led.finish_install(V1, ok=True, reported=[ACTIVE_V1], now=2.0, at_ms=0)
    led.apply_read(token, [])  # the base answered before it had the biz
    assert led.bizs is not None and V1.key in led.bizs  # the newer command result is kept: no duplicate install


def test_uninstall_finishing_while_a_read_is_on_the_wire_is_not_undone():
    led = fresh()
    led.apply_read(led.begin_read(), [ACTIVE_V1])
    token = led.begin_read()
    led.start(V1.key, CommandKind.UNINSTALL, None, 1.0)
    led.finish_uninstall(V1.key, ok=True, now=2.0, at_ms=0)
    led.apply_read(token, [ACTIVE_V1])
    assert led.bizs == {}


def test_a_read_sent_after_the_command_result_wins():
    led = fresh()
    led.start(V1.key, CommandKind.INSTALL, V1, 1.0)
    led.finish_install(V1, ok=True, reported=[ACTIVE_V1], now=2.0, at_ms=0)
    token = led.begin_read()  # sent after the answer: it is the newer fact (the base lost it since)
    led.apply_read(token, [])
    assert led.bizs == {}


def test_a_request_to_read_again_is_satisfied_only_by_a_later_read():
    """A heartbeat after a long silence asks for a re-read while a read is already on the wire: that read,
    sent before the request, must not clear it (the base may have restarted after it was sent)."""
    led = fresh()
    token = led.begin_read()
    led.request_read()
    led.apply_read(token, [ACTIVE_V1])
    assert led.read_needed()
    led.apply_read(led.begin_read(), [])
    assert not led.read_needed()


def test_an_older_read_never_overwrites_a_newer_one():
    led = fresh()
    old, new = led.begin_read(), led.begin_read()
    led.apply_read(new, [ACTIVE_V1])
    assert led.apply_read(old, []) is False
    assert led.bizs is not None and V1.key in led.bizs


@pytest.mark.parametrize("order", list(itertools.permutations(["read_sent", "install_answered", "read_answered"])))
def test_every_order_of_one_read_and_one_install_ends_with_the_biz_known(order):
    """The base has V1 once the install answered. A read sent before that shows nothing, one sent after shows
    V1; whatever the order of sending and answering, the ledger ends knowing V1 is there."""
    led = fresh()
    led.start(V1.key, CommandKind.INSTALL, V1, 0.0)
    token = None
    installed = sees = False
    for step in order:
        if step == "read_sent":
            token = led.begin_read()
            sees = installed
        elif step == "install_answered":
            led.finish_install(V1, ok=True, reported=[ACTIVE_V1], now=1.0, at_ms=0)
            installed = True
        elif step == "read_answered":
            if token is None:
                continue
            led.apply_read(token, [ACTIVE_V1] if sees else [])
    assert led.bizs is not None and V1.key in led.bizs, order
    assert V1.key not in led.inflight


def test_failures_back_off_and_a_returning_base_retries_at_once():
    led = fresh()
    for attempt, expected in ((1, 1.5), (2, 3.0), (3, 6.0)):  # BIZ_INSTALL: 2 s doubling, rand=0.5 -> 0.75x
        led.start(V1.key, CommandKind.INSTALL, V1, 10.0)
        led.finish_install(V1, ok=False, message="no", now=10.0, at_ms=0)
        failure = led.failures[V1.key]
        assert failure.attempts == attempt and failure.retry_at == pytest.approx(10.0 + expected)
    led.retry_now()
    assert led.failures[V1.key].retry_at == 0.0 and led.failures[V1.key].attempts == 3


def test_success_records_the_url_and_a_restart_forgets_it():
    led = fresh()
    led.start(V1.key, CommandKind.INSTALL, V1, 0.0)
    led.finish_install(V1, ok=True, reported=[ACTIVE_V1], now=1.0, at_ms=0)
    assert led.installed_urls == {V1.key: V1.url}
    led.apply_read(led.begin_read(), [])  # the JVM restarted: every biz is gone
    assert led.installed_urls == {}


def test_replaced_versions_are_superseded_until_the_new_one_goes():
    led = fresh()
    led.apply_read(led.begin_read(), [ACTIVE_V1])
    v2 = BizSpec("biz1", "0.0.2", "http://x/v2.jar")
    led.start(v2.key, CommandKind.INSTALL, v2, 0.0)
    led.finish_install(v2, ok=True, reported=[BizInfo("biz1", "0.0.2", BizState.ACTIVATED)], now=1.0, at_ms=0,
                       replaced=[V1.key])
    assert led.superseded == {V1.key: v2.key} and V1.key not in (led.bizs or {})
    led.apply_read(led.begin_read(), [BizInfo("biz1", "0.0.2", BizState.ACTIVATED)])
    assert led.superseded == {V1.key: v2.key}
    led.apply_read(led.begin_read(), [])
    assert led.superseded == {}


def test_maps_do_not_outgrow_the_base():
    led = fresh()
    for i in range(50):
        spec = BizSpec(f"b{i}", "1", f"http://x/{i}.jar")
        led.start(spec.key, CommandKind.INSTALL, spec, 0.0)
        led.finish_install(spec, ok=False, message="no", now=0.0, at_ms=0)
    assert len(led.failures) == 50
    led.planned(wanted=[B2.key], released=(), orphans={})
    assert led.failures == {} and led.installed_urls == {}


def test_forget_means_read_before_acting():
    led = fresh()
    led.apply_read(led.begin_read(), [ACTIVE_V1])
    stale = led.begin_read()
    led.forget()  # another replica owned the base meanwhile
    assert led.bizs is None and led.read_needed()
    led.apply_read(stale, [])  # a read sent before: ignored
    assert led.bizs is None
    led.apply_read(led.begin_read(), [ACTIVE_V1])
    assert led.bizs == {V1.key: ACTIVE_V1}


def test_a_command_that_ends_without_an_answer_is_abandoned_and_the_base_read_again():
    """An install task that returns before sending (its vnode was fenced when it ran) must not stay in flight:
    found by the 1,000-base bench, where 3 of 5,000 pods waited in ContainerCreating behind such an entry forever."""
    led = fresh()
    first = led.start(V1.key, CommandKind.INSTALL, V1, 1.0)
    assert led.abandon(V1.key, first)
    assert V1.key not in led.inflight and led.read_needed and V1.key not in led.failures
    assert not led.abandon(V1.key, first)  # once only
    again = led.start(V1.key, CommandKind.INSTALL, V1, 2.0)
    assert not led.abandon(V1.key, first)  # an older command never removes a newer one
    led.finish_install(V1, ok=True, reported=[ACTIVE_V1], now=3.0, at_ms=0)
    assert not led.abandon(V1.key, again)  # answered: nothing to abandon
    assert led.bizs is not None and V1.key in led.bizs


def test_a_supersession_ends_when_the_new_version_leaves_or_the_old_one_returns():
    """0.0.2 replaced 0.0.1, then 0.0.2 was uninstalled (its Deployment deleted): a new pod of 0.0.1 must be
    installed, not failed with BizDeactivate until the next poll (the real base's e2e test met exactly that)."""
    v2 = BizSpec("biz1", "0.0.2", "http://x/biz1-2.jar")
    led = fresh()
    led.apply_read(led.begin_read(), [ACTIVE_V1])
    led.start(v2.key, CommandKind.INSTALL, v2, 1.0)
    led.finish_install(v2, ok=True, reported=[BizInfo("biz1", "0.0.2", BizState.ACTIVATED)], now=1.0, at_ms=0,
                       replaced=[V1.key])
    assert led.superseded == {V1.key: v2.key}
    led.start(v2.key, CommandKind.UNINSTALL, None, 2.0)
    led.finish_uninstall(v2.key, ok=True, now=2.0, at_ms=0)
    assert led.superseded == {}
    led.seed_superseded(V1.key, v2.key)  # read back from an old pod's status after a restart
    led.start(V1.key, CommandKind.INSTALL, V1, 3.0)
    led.finish_install(V1, ok=True, reported=[ACTIVE_V1], now=3.0, at_ms=0)
    assert led.superseded == {}


# --- issue 27, item 6: a base installing its own baseline is not raced by the controller ------------------------

def test_a_baseline_answered_counts_as_installs_under_way_until_a_read_shows_them():
    """vkprovider answered a restarted base's queryBaseline: the base installs those bizs itself. Until a read
    shows them (or the wait is over), they are in flight: the controller sends no install of its own (before, it
    did, and the base answered "conflict, exist unfinished command": a BizInstallFailed Event per biz)."""
    from vkprovider.core.plan import PodWant, plan_base

    led = fresh()
    led.apply_read(led.begin_read(), [ACTIVE_V1])
    led.start_baseline([V1, B2], now=10.0)
    assert {k: i.kind for k, i in led.inflight.items()} == {V1.key: CommandKind.BASELINE, B2.key: CommandKind.BASELINE}
    pods = [PodWant("ns/a", (V1, B2))]
    led.apply_read(led.begin_read(), [])  # the base restarted: nothing yet
    assert plan_base(pods, led, now=11.0, orphan_grace_s=30).install == ()
    led.apply_read(led.begin_read(), [BizInfo("biz1", "0.0.1", BizState.RESOLVED)])  # one of them starting
    assert set(led.inflight) == {B2.key}
    led.expire_baselines(now=10.0 + 119.0, wait_s=120.0)
    assert set(led.inflight) == {B2.key}
    led.expire_baselines(now=10.0 + 121.0, wait_s=120.0)  # the base never installed it: decide again
    assert led.inflight == {} and led.read_needed()  # the reconcile reads before it plans again
    led.apply_read(led.begin_read(), [ACTIVE_V1])
    assert plan_base(pods, led, now=131.0, orphan_grace_s=30).install == (B2,)


def test_a_baseline_never_replaces_a_command_of_the_controller_in_flight():
    led = fresh()
    first = led.start(V1.key, CommandKind.INSTALL, V1, 1.0)
    led.start_baseline([V1], now=2.0)
    assert led.inflight[V1.key] is first


def test_a_conflicting_install_answer_is_not_a_failure_to_report():
    """arklet's "conflict, exist unfinished command": the base is installing that biz already (its baseline, or
    another replica before a takeover). Retried after a read, shown as installing, never counted as a failure."""
    led = fresh()
    led.start(V1.key, CommandKind.INSTALL, V1, 1.0)
    led.finish_install(V1, ok=False, busy=True, message="conflict", now=2.0, at_ms=0)
    failure = led.failures[V1.key]
    assert failure.busy and failure.attempts == 0 and led.read_needed()
    led.start(V1.key, CommandKind.INSTALL, V1, 5.0)
    led.finish_install(V1, ok=False, busy=True, message="conflict", now=6.0, at_ms=0)
    assert led.failures[V1.key].attempts == 0  # busy answers do not grow a crash-loop backoff


def test_a_failed_read_is_remembered_until_a_read_succeeds():
    led = BaseLedger()
    assert led.read_error is None
    led.read_failed("biz list entry 3 has no bizName/bizVersion")
    assert led.read_error == "biz list entry 3 has no bizName/bizVersion" and led.bizs is None
    led.apply_read(led.begin_read(), [])
    assert led.read_error is None


BROKEN_B2 = BizInfo("biz2", "1.0", BizState.BROKEN)
ACTIVE_B2 = BizInfo("biz2", "1.0", BizState.ACTIVATED)


@pytest.mark.parametrize("command", ["install", "uninstall"])
def test_a_list_of_unknown_send_time_never_overwrites_a_command_result_newer_than_the_last_read(command):
    """Issue 27, item 4: over MQTT a queryAllBiz answer that comes after its query timed out (or a list nobody
    asked for) cannot be placed by a token. Merged untimed, it must not undo an install or uninstall answered
    since the last read - the list may well be from before it."""
    led = fresh()
    led.apply_read(led.begin_read(), [ACTIVE_B2] + ([ACTIVE_V1] if command == "uninstall" else []))
    if command == "install":
        led.start(V1.key, CommandKind.INSTALL, V1, 1.0)
        led.finish_install(V1, ok=True, reported=[ACTIVE_V1], now=2.0, at_ms=0)
        late = [ACTIVE_B2]  # taken before the install
    else:
        led.start(V1.key, CommandKind.UNINSTALL, None, 1.0)
        led.finish_uninstall(V1.key, ok=True, now=2.0, at_ms=0)
        late = [ACTIVE_B2, ACTIVE_V1]  # taken before the uninstall
    expected = {V1.key: ACTIVE_V1, B2.key: ACTIVE_B2} if command == "install" else {B2.key: ACTIVE_B2}
    led.apply_untimed(late)
    assert led.bizs == expected
    # What no command touched since the last read is news, untimed or not.
    led.apply_untimed([BROKEN_B2, *late[1:]])
    assert led.bizs is not None and led.bizs[B2.key] == BROKEN_B2 and (V1.key in led.bizs) == (command == "install")
    # A read sent afterwards is the newer fact for every biz.
    led.apply_read(led.begin_read(), [])
    assert led.bizs == {}


def test_a_list_of_unknown_send_time_is_no_read_a_request_or_a_failure_waits_for():
    led = fresh()
    led.request_read()
    led.start(V1.key, CommandKind.INSTALL, V1, 1.0)
    led.finish_install(V1, ok=False, message="boom", now=2.0, at_ms=0)
    failure = led.failures[V1.key]
    led.apply_untimed([ACTIVE_B2])
    assert led.bizs == {B2.key: ACTIVE_B2}
    assert led.read_needed() and not led.read_since(failure)  # it may be from before the request, the failure
    led.apply_read(led.begin_read(), [ACTIVE_B2])
    assert not led.read_needed() and led.read_since(failure)


def test_the_first_list_of_unknown_send_time_is_taken_when_nothing_is_known():
    led = BaseLedger(rand=lambda: 0.5)
    assert led.apply_untimed([ACTIVE_V1]) is True
    assert led.bizs == {V1.key: ACTIVE_V1} and led.read_needed()  # still read: it may be old


ORPHAN = BizSpec("stray", "1", "file:///tmp/stray.jar")
ORPHAN_INFO = BizInfo("stray", "1", BizState.ACTIVATED)


@pytest.mark.parametrize(
    ("gap", "read_at", "uninstalled_at"),
    [
        # (ownership gap: lost at 10, gained again at ``gap``; the read after the gain answers at ``read_at``)
        (20.0, 21.0, 51.0),  # a short gap: the grace (30 s) counts again from the first read after the gain
        (100.0, 101.0, 131.0),  # before: first seen at 0, so uninstalled at once on the first plan after the gap
        (100.0, 150.0, 180.0),  # a slow read: the grace starts when the orphan is seen again, not at the gain
    ],
)
def test_an_ownership_gap_forgets_orphan_first_seen_times(gap: float, read_at: float, uninstalled_at: float):
    """An orphan seen before this replica lost the vnode (another replica owned the base meanwhile, pods may have
    come for it) waits the whole grace again after the vnode is gained back: ``forget`` forgets its first-seen
    time with the rest of what was known."""
    from vkprovider.core.plan import plan_base

    led = fresh()
    led.apply_read(led.begin_read(), [ORPHAN_INFO])
    first = plan_base([], led, now=0.0, orphan_grace_s=30.0)
    assert first.orphans == {ORPHAN.key: 0.0} and first.uninstall == ()
    led.planned(first.wanted, first.released, first.orphans)
    led.forget()  # lost at 10 s, gained again at ``gap``
    assert led.orphan_since == {}
    waiting = plan_base([], led, now=gap, orphan_grace_s=30.0)  # nothing read yet: nothing decided or kept
    led.planned(waiting.wanted, waiting.released, waiting.orphans)
    assert waiting.uninstall == () and led.orphan_since == {}
    led.apply_read(led.begin_read(), [ORPHAN_INFO])
    seen = plan_base([], led, now=read_at, orphan_grace_s=30.0)
    assert seen.uninstall == () and seen.orphans == {ORPHAN.key: read_at}
    led.planned(seen.wanted, seen.released, seen.orphans)
    assert plan_base([], led, now=uninstalled_at - 0.5, orphan_grace_s=30.0).uninstall == ()
    assert plan_base([], led, now=uninstalled_at, orphan_grace_s=30.0).uninstall == (ORPHAN.key,)
