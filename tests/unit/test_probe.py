"""core.probe as tables: every field and default of a probe, the threshold sequences of kubelet's prober worker,
startup gating, liveness and startup restarts, takeovers, preStop parsing; core.podstatus's ready conditions with
readiness gates (kubelet's GeneratePodReadyCondition)."""

from __future__ import annotations

import pytest

from vkprovider.core.model import BizInfo, BizState, BizStateRecord
from vkprovider.core.module import pod_modules
from vkprovider.core.podstatus import pod_status, ready_conditions, with_probe_readiness
from vkprovider.core.probe import (
    INHERIT_AFTER_S,
    CheckResult,
    ContainerProber,
    ContainerProbes,
    ContainerProbeState,
    Exec,
    Grpc,
    HttpGet,
    Outcome,
    ProbeEvent,
    ProbeKind,
    ProbeSpec,
    ProbeTracker,
    Result,
    Sleep,
    TcpSocket,
    Unresolvable,
    container_probes,
    format_pod,
    parse_lifecycle_handler,
    parse_probe,
    pod_probes,
    termination_grace_period_s,
)

CONTAINER = {"name": "biz1",
             "ports": [{"name": "web", "containerPort": 8080}, {"name": "admin", "containerPort": 9000}]}
OK = Outcome(CheckResult.SUCCESS, "ok")
BAD = Outcome(CheckResult.FAILURE, "HTTP probe failed with statuscode: 500")
REDIRECT = Outcome(CheckResult.WARNING, "Probe terminated redirects, Response body: moved")


# --- parsing ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "handler"),
    [
        ({"httpGet": {"port": 8080, "path": "/biz1/health"}}, HttpGet(8080, "/biz1/health")),
        ({"httpGet": {"port": "web", "path": "/h"}}, HttpGet(8080, "/h")),
        ({"httpGet": {"port": "9090", "path": "/h"}}, HttpGet(9090, "/h")),  # a number in a string
        ({"httpGet": {"port": 8443, "scheme": "HTTPS", "host": "10.1.2.3"}}, HttpGet(8443, "", "10.1.2.3", "HTTPS")),
        ({"httpGet": {"port": 80, "scheme": "http"}}, HttpGet(80, "", "", "HTTP")),
        ({"httpGet": {"port": 80, "httpHeaders": [{"name": "X-A", "value": "1"}, {"name": "X-A", "value": "2"}]}},
         HttpGet(80, headers=(("X-A", "1"), ("X-A", "2")))),
        ({"tcpSocket": {"port": "admin"}}, TcpSocket(9000)),
        ({"tcpSocket": {"port": 22, "host": "10.0.0.9"}}, TcpSocket(22, "10.0.0.9")),
        ({"grpc": {"port": 9090}}, Grpc(9090, "")),
        ({"grpc": {"port": 9090, "service": "biz1"}}, Grpc(9090, "biz1")),
        ({"exec": {"command": ["cat", "/tmp/ok"]}}, Exec(("cat", "/tmp/ok"))),
    ],
)
def test_handlers(raw, handler):
    spec, problems = parse_probe(raw, ProbeKind.READINESS, CONTAINER)
    assert spec is not None and spec.handler == handler
    assert (problems != []) is isinstance(handler, Exec)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ({"httpGet": {"port": "metrics"}}, "'metrics' is not a number and no port of container 'biz1' has that name"),
        ({"httpGet": {"port": 0}}, "invalid port number: 0"),
        ({"httpGet": {"port": 70000}}, "invalid port number: 70000"),
        ({"httpGet": {}}, "no port"),
        ({"httpGet": {"port": 80, "scheme": "FTP"}}, "unsupported scheme"),
        ({"httpGet": {"port": 80, "path": "/a\r\nX: y"}}, "line break"),
        ({"httpGet": {"port": 80, "httpHeaders": [{"name": "X A", "value": "1"}]}}, "'X A' is not an HTTP header name"),
        ({"tcpSocket": {"port": True}}, "invalid port True"),
        ({"grpc": {"port": "web"}}, "grpc: invalid port number: web"),
        ({}, "no handler"),
        ({"httpGet": {"port": 80}, "tcpSocket": {"port": 80}}, "more than one handler: httpGet, tcpSocket"),
        ({"httpGet": "nope"}, "httpGet is not an object"),
    ],
)
def test_unresolvable_handlers_are_a_problem_never_an_exception(raw, why):
    spec, problems = parse_probe(raw, ProbeKind.LIVENESS, CONTAINER)
    assert spec is not None and isinstance(spec.handler, Unresolvable)
    assert why in spec.handler.why
    assert len(problems) == 1 and "it cannot run, so it never succeeds" in problems[0]
    assert not spec.runnable and spec.counts


def test_defaults_are_the_apiservers():
    spec, problems = parse_probe({"tcpSocket": {"port": 80}}, ProbeKind.READINESS, CONTAINER)
    assert problems == []
    assert (spec.initial_delay_s, spec.period_s, spec.timeout_s, spec.success_threshold, spec.failure_threshold,
            spec.termination_grace_period_s) == (0, 10, 1, 1, 3, None)


def test_every_number_is_read():
    raw = {"tcpSocket": {"port": 80}, "initialDelaySeconds": 5, "periodSeconds": 7, "timeoutSeconds": 2,
           "successThreshold": 1, "failureThreshold": 6, "terminationGracePeriodSeconds": 12}
    spec, problems = parse_probe(raw, ProbeKind.LIVENESS, CONTAINER)
    assert problems == []
    assert (spec.initial_delay_s, spec.period_s, spec.timeout_s, spec.success_threshold, spec.failure_threshold,
            spec.termination_grace_period_s) == (5, 7, 2, 1, 6, 12)
    assert spec.describe() == "tcp-socket :80 delay=5s timeout=2s period=7s #success=1 #failure=6"


@pytest.mark.parametrize(
    ("field", "value", "used"),
    [
        ("periodSeconds", 0, 10),
        ("timeoutSeconds", 0, 1),
        ("failureThreshold", 0, 3),
        ("initialDelaySeconds", -1, 0),
        ("periodSeconds", "10", 10),
        ("failureThreshold", True, 3),
    ],
)
def test_a_bad_number_is_a_problem_and_the_default_is_used(field, value, used):
    spec, problems = parse_probe({"tcpSocket": {"port": 80}, field: value}, ProbeKind.READINESS, CONTAINER)
    assert len(problems) == 1 and field in problems[0]
    assert {"periodSeconds": spec.period_s, "timeoutSeconds": spec.timeout_s, "failureThreshold":
            spec.failure_threshold, "initialDelaySeconds": spec.initial_delay_s}[field] == used


@pytest.mark.parametrize("kind", [ProbeKind.LIVENESS, ProbeKind.STARTUP])
def test_success_threshold_must_be_one_for_liveness_and_startup(kind):
    spec, problems = parse_probe({"tcpSocket": {"port": 80}, "successThreshold": 3}, kind, CONTAINER)
    assert spec.success_threshold == 1
    assert problems == [f"{kind.label} probe of container 'biz1': successThreshold must be 1 for a {kind.value} "
                        "probe; using 1"]


def test_readiness_may_need_several_successes_but_carries_no_grace_period():
    spec, problems = parse_probe({"tcpSocket": {"port": 80}, "successThreshold": 3,
                                  "terminationGracePeriodSeconds": 5}, ProbeKind.READINESS, CONTAINER)
    assert spec.success_threshold == 3 and spec.termination_grace_period_s is None
    assert problems == ["Readiness probe of container 'biz1': terminationGracePeriodSeconds is for liveness and "
                        "startup probes; ignored"]


def test_exec_is_recognised_and_reported_not_run():
    probes = container_probes({**CONTAINER, "readinessProbe": {"exec": {"command": ["true"]}},
                               "livenessProbe": {"httpGet": {"port": "web", "path": "/biz1/health"}}})
    assert isinstance(probes.readiness.handler, Exec) and not probes.readiness.runnable
    assert not probes.readiness.counts and probes.any
    assert probes.problems == ("Readiness probe of container 'biz1': exec probes are not run on a Koupleless base "
                               "(a biz has no process of its own to exec in); it is ignored, readiness follows the "
                               "biz's ACTIVATED state",)
    only_exec = container_probes({"name": "b", "livenessProbe": {"exec": {"command": ["true"]}}})
    assert not only_exec.any


def test_http_get_url_is_kubelets():
    assert HttpGet(8080, "/biz1/health").url("10.0.0.5") == "http://10.0.0.5:8080/biz1/health"
    assert HttpGet(8080).url("10.0.0.5") == "http://10.0.0.5:8080/"
    assert HttpGet(8080, "health?full=1").url("10.0.0.5") == "http://10.0.0.5:8080/health?full=1"
    assert HttpGet(8443, "/h", "example.org", "HTTPS").url("10.0.0.5") == "https://example.org:8443/h"
    assert HttpGet(80, "/h").url("fd00::5") == "http://[fd00::5]:80/h"


def test_pod_probes_and_grace_and_format():
    pod = {"metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
           "spec": {"terminationGracePeriodSeconds": 45, "containers": [
               {"name": "biz1", "startupProbe": {"tcpSocket": {"port": 8080}}}, {"name": "biz2"}]}}
    found = pod_probes(pod)
    assert set(found) == {"biz1", "biz2"}
    assert found["biz1"].startup.kind is ProbeKind.STARTUP and found["biz2"] == ContainerProbes("biz2")
    assert termination_grace_period_s(pod) == 45
    assert termination_grace_period_s({**pod, "metadata": {"deletionGracePeriodSeconds": 5}}) == 5
    assert termination_grace_period_s({}) == 30
    assert format_pod(pod) == "p_ns(u1)"


# --- preStop ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "handler", "problem"),
    [
        (None, None, None),
        ({"httpGet": {"port": "web", "path": "/biz1/shutdown"}}, HttpGet(8080, "/biz1/shutdown"), None),
        ({"sleep": {"seconds": 5}}, Sleep(5), None),
        ({"sleep": {"seconds": 0}}, Sleep(0), None),
        ({"sleep": {"seconds": -1}}, Unresolvable("sleep: invalid seconds -1"), "sleep seconds -1"),
        ({"exec": {"command": ["sh", "-c", "sleep 5"]}}, Exec(("sh", "-c", "sleep 5")), "exec hooks are not run"),
        ({"tcpSocket": {"port": 80}}, Unresolvable("tcpSocket hooks are not run"), "tcpSocket hooks are deprecated"),
        ({}, Unresolvable("no handler"), "no handler"),
        ({"httpGet": {"port": "nope"}}, None, "'nope' is not a number"),
        ("bad", Unresolvable("not an object"), "not an object"),
    ],
)
def test_pre_stop_parsing(raw, handler, problem):
    found, problems = parse_lifecycle_handler(raw, CONTAINER)
    if handler is not None:
        assert found == handler
    elif raw is not None:
        assert isinstance(found, Unresolvable)
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problem in problems[0] and "preStop hook of container 'biz1'" in problems[0]


def test_pre_stop_comes_with_the_container():
    probes = container_probes({**CONTAINER, "lifecycle": {"preStop": {"sleep": {"seconds": 3}}}})
    assert probes.pre_stop == Sleep(3) and probes.problems == ()


# --- one probe: thresholds -------------------------------------------------------------------------------------


def _spec(kind=ProbeKind.READINESS, **numbers):
    return ProbeSpec(kind, HttpGet(8080, "/h"), **numbers)


@pytest.mark.parametrize(
    ("kind", "success", "failure", "outcomes", "published"),
    [
        # readiness starts Failure; one success publishes Success; failures below the threshold change nothing
        (ProbeKind.READINESS, 1, 3, [], [Result.FAILURE]),
        (ProbeKind.READINESS, 1, 3, [OK], [Result.SUCCESS]),
        (ProbeKind.READINESS, 1, 3, [OK, BAD, BAD], [Result.SUCCESS, Result.SUCCESS, Result.SUCCESS]),
        (ProbeKind.READINESS, 1, 3, [OK, BAD, BAD, BAD], [Result.SUCCESS] * 3 + [Result.FAILURE]),
        (ProbeKind.READINESS, 1, 3, [OK, BAD, BAD, OK, BAD, BAD], [Result.SUCCESS] * 6),  # a success resets the run
        # successThreshold 2: one success is not enough, a failure in between starts over
        (ProbeKind.READINESS, 2, 1, [OK, BAD, OK, OK],
         [Result.FAILURE, Result.FAILURE, Result.FAILURE, Result.SUCCESS]),
        # a redirect is a success
        (ProbeKind.READINESS, 1, 3, [REDIRECT], [Result.SUCCESS]),
        # liveness starts Success
        (ProbeKind.LIVENESS, 1, 3, [], [Result.SUCCESS]),
        (ProbeKind.LIVENESS, 1, 2, [BAD, BAD], [Result.SUCCESS, Result.FAILURE]),
        # startup starts Unknown
        (ProbeKind.STARTUP, 1, 3, [], [Result.UNKNOWN]),
        (ProbeKind.STARTUP, 1, 3, [BAD, OK], [Result.UNKNOWN, Result.SUCCESS]),
    ],
)
def test_threshold_sequences(kind, success, failure, outcomes, published):
    tracker = ProbeTracker(_spec(kind, success_threshold=success, failure_threshold=failure))
    tracker.reset(100.0)
    seen = [tracker.result] if not outcomes else []
    for i, outcome in enumerate(outcomes):
        tracker.record(outcome, 100.0 + 10 * i)
        seen.append(tracker.result)
    assert seen == published


def test_schedule_is_initial_delay_then_every_period():
    tracker = ProbeTracker(_spec(initial_delay_s=15, period_s=10))
    tracker.reset(1000.0)
    assert tracker.due_at == 1015.0
    tracker.record(OK, 1015.2)
    assert tracker.due_at == 1025.0  # a ticker: one period after the one due, not after it ran
    tracker.record(OK, 1031.0)  # a check that ran late (a slow probe, a busy loop)
    assert tracker.due_at == 1035.0
    tracker.record(OK, 1050.0)
    assert tracker.due_at == 1050.0  # never in the past
    tracker.halt()
    assert tracker.due_at is None


def test_a_record_says_when_the_published_result_changed():
    tracker = ProbeTracker(_spec(failure_threshold=2))
    tracker.reset(0.0)
    assert [tracker.record(o, 0.0) for o in (OK, OK, BAD, BAD, BAD, OK)] == [True, False, False, True, False, True]


# --- one container: gating, restarts, takeovers ---------------------------------------------------------------


def _container(startup=None, readiness=None, liveness=None):
    def spec(kind, numbers):
        return None if numbers is None else ProbeSpec(kind, HttpGet(8080, "/h"), **numbers)

    return ContainerProber(ContainerProbes("biz1", spec(ProbeKind.STARTUP, startup),
                                           spec(ProbeKind.READINESS, readiness), spec(ProbeKind.LIVENESS, liveness)))


def _due(prober):
    return {kind.value: due for kind, due in prober.runnable()}


def test_without_probes_a_running_container_is_started_and_ready():
    prober = _container()
    assert (prober.started, prober.ready) == (False, False)
    prober.observe(100.0, 100.0)
    assert (prober.started, prober.ready) == (True, True) and prober.runnable() == []
    prober.observe(None, 110.0)
    assert (prober.started, prober.ready) == (False, False)


def test_readiness_is_false_until_its_first_success():
    prober = _container(readiness={"initial_delay_s": 5})
    prober.observe(100.0, 100.0)
    assert (prober.started, prober.ready) == (True, False)
    assert _due(prober) == {"readiness": 105.0}
    prober.record(ProbeKind.READINESS, OK, 105.0)
    assert prober.ready
    events = [prober.record(ProbeKind.READINESS, BAD, 115.0 + 10 * i) for i in range(3)]
    assert not prober.ready
    assert events[0] == events[2] == [
        ProbeEvent(
            "Warning", "Unhealthy", "Readiness probe failed: HTTP probe failed with statuscode: 500")]
    assert prober.view().message == "Readiness probe failed: HTTP probe failed with statuscode: 500"
    assert prober.view().restart is None  # readiness never restarts


def test_startup_gates_readiness_and_liveness():
    prober = _container(startup={"failure_threshold": 3}, readiness={}, liveness={})
    prober.observe(100.0, 100.0)
    assert (prober.started, prober.ready) == (False, False)
    assert _due(prober) == {"startup": 100.0}  # the others wait
    assert prober.record(ProbeKind.READINESS, OK, 100.0) == []  # a check that may not run does not count
    assert not prober.trackers[ProbeKind.READINESS].probed
    prober.record(ProbeKind.STARTUP, BAD, 100.0)
    assert _due(prober) == {"startup": 110.0}
    prober.record(ProbeKind.STARTUP, OK, 110.0)
    assert (prober.started, prober.ready) == (True, False)
    assert _due(prober) == {"readiness": 100.0, "liveness": 100.0}  # due at once; startup is done
    prober.record(ProbeKind.READINESS, OK, 110.5)
    assert prober.view() == ContainerProbeState(ready=True, started=True)


def test_startup_failing_past_its_threshold_restarts_the_container():
    prober = _container(startup={"failure_threshold": 2, "termination_grace_period_s": 7}, readiness={})
    prober.observe(100.0, 100.0)
    assert prober.record(ProbeKind.STARTUP, BAD, 100.0)[-1].reason == "Unhealthy"
    events = prober.record(ProbeKind.STARTUP, BAD, 110.0)
    assert [(e.type, e.reason, e.message) for e in events] == [
        ("Warning", "Unhealthy", "Startup probe failed: HTTP probe failed with statuscode: 500"),
        ("Normal", "Killing", "Container biz1 failed startup probe, will be restarted")]
    view = prober.view()
    assert (view.started, view.ready, view.restart, view.grace_s) == (
        False, False, "Container biz1 failed startup probe, will be restarted", 7)
    assert prober.runnable() == []  # on hold until a new container
    prober.observe(130.0, 131.0)  # the biz was installed again: a new ACTIVATED time
    assert prober.view().restart is None and _due(prober) == {"startup": 130.0}
    assert prober.trackers[ProbeKind.STARTUP].result is Result.UNKNOWN


def test_liveness_failing_past_its_threshold_restarts_and_the_container_is_not_ready_meanwhile():
    prober = _container(readiness={}, liveness={"failure_threshold": 3})
    prober.observe(100.0, 100.0)
    prober.record(ProbeKind.READINESS, OK, 100.0)
    assert prober.ready
    for i in range(2):
        prober.record(ProbeKind.LIVENESS, BAD, 100.0 + 10 * i)
        assert prober.view().restart is None and prober.ready
    events = prober.record(ProbeKind.LIVENESS, BAD, 120.0)
    assert events[-1].message == "Container biz1 failed liveness probe, will be restarted"
    assert (prober.ready, prober.started) == (False, True)
    assert prober.runnable() == [] and not prober.may_run(ProbeKind.READINESS)
    prober.observe(None, 125.0)  # uninstalled: the restart is under way
    assert prober.view().restart is None and not prober.started
    prober.observe(126.0, 127.0)
    assert _due(prober) == {"readiness": 126.0, "liveness": 126.0} and not prober.ready


def test_a_redirect_is_a_success_with_a_warning_event():
    prober = _container(readiness={})
    prober.observe(0.0, 0.0)
    events = prober.record(ProbeKind.READINESS, REDIRECT, 0.0)
    assert [(e.reason, e.message) for e in events] == [
        ("ProbeWarning", "Readiness probe warning: Probe terminated redirects, Response body: moved")]
    assert prober.ready


def test_deletion_quiets_liveness_and_startup_but_readiness_goes_on():
    prober = _container(startup={}, readiness={}, liveness={})
    prober.observe(0.0, 0.0)
    prober.begin_termination()
    assert prober.started  # startup reads Success: a quiet shutdown
    assert _due(prober) == {"readiness": 0.0}
    for i in range(5):
        assert prober.record(ProbeKind.LIVENESS, BAD, float(i)) == []
    assert prober.view().restart is None
    prober.record(ProbeKind.READINESS, OK, 1.0)
    assert prober.ready


def test_a_new_activated_time_is_a_new_container():
    prober = _container(readiness={"initial_delay_s": 3})
    prober.observe(100.0, 100.0)
    prober.record(ProbeKind.READINESS, OK, 103.0)
    assert prober.ready
    epoch = prober.trackers[ProbeKind.READINESS].epoch
    prober.observe(100.0, 150.0)  # the same container, seen again
    assert prober.ready
    prober.observe(200.0, 200.0)
    assert not prober.ready and _due(prober) == {"readiness": 203.0}
    assert prober.trackers[ProbeKind.READINESS].epoch == epoch + 1


@pytest.mark.parametrize(
    ("ran_for", "shown_ready", "shown_started", "ready", "started"),
    [
        (INHERIT_AFTER_S, True, True, True, True),  # a takeover: what the status showed holds
        (INHERIT_AFTER_S + 100, False, True, False, True),
        (INHERIT_AFTER_S - 1, True, True, False, False),  # it just started: its probes decide
    ],
)
def test_a_container_first_seen_after_it_ran_a_while_keeps_what_it_showed(ran_for, shown_ready, shown_started,
                                                                          ready, started):
    prober = _container(startup={}, readiness={})
    prober.observe(1000.0 - ran_for, 1000.0, shown_ready=shown_ready, shown_started=shown_started, spread=0.5)
    assert (prober.ready, prober.started) == (ready, started)
    if started and ran_for >= INHERIT_AFTER_S:
        assert _due(prober) == {"readiness": 1005.0}  # spread over half a period
        prober.record(ProbeKind.READINESS, BAD, 1005.0)
        assert prober.ready == ready  # below the threshold: still what it showed
        for t in (1015.0, 1025.0):
            prober.record(ProbeKind.READINESS, BAD, t)
        assert not prober.ready


def test_only_the_first_sight_inherits():
    prober = _container(readiness={})
    prober.observe(None, 0.0)
    prober.observe(0.0, 100.0, shown_ready=True, shown_started=True)
    assert not prober.ready  # vkprovider saw it start: its own probes decide


def test_an_unresolvable_probe_holds_the_container_at_its_initial_result():
    probes = container_probes({"name": "biz1", "readinessProbe": {"httpGet": {"port": "nope"}},
                               "livenessProbe": {"httpGet": {"port": "nope"}}})
    prober = ContainerProber(probes)
    prober.observe(0.0, 0.0)
    assert prober.runnable() == []
    assert (prober.started, prober.ready) == (True, False)
    assert len(prober.view().problems) == 2


def test_exec_probes_count_as_none():
    prober = ContainerProber(container_probes({"name": "biz1", "startupProbe": {"exec": {"command": ["x"]}},
                                               "readinessProbe": {"exec": {"command": ["x"]}}}))
    prober.observe(0.0, 0.0)
    assert (prober.started, prober.ready) == (True, True)


# --- ready conditions and readiness gates ---------------------------------------------------------------------


def _pod(containers=("biz1",), gates=(), conditions=(), phase="Running"):
    return {"metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": {"containers": [{"name": n, "image": f"http://h/{n}.jar",
                                     "env": [{"name": "BIZ_VERSION", "value": "0.0.1"}]} for n in containers],
                     "readinessGates": [{"conditionType": g} for g in gates]},
            "status": {"phase": phase, "conditions": list(conditions)}}


def _brief(cond):
    return (cond["status"], cond.get("reason"), cond.get("message"))


@pytest.mark.parametrize(
    ("containers", "ready", "gates", "conditions", "phase", "containers_ready", "pod_ready"),
    [
        (("a",), {"a": True}, (), (), "Running", ("True", None, None), ("True", None, None)),
        (("a", "b"), {"a": True, "b": False}, (), (), "Running",
         ("False", "ContainersNotReady", "containers with unready status: [b]"),
         ("False", "ContainersNotReady", "containers with unready status: [b]")),
        (("a", "b", "c"), {"a": False}, (), (), "Pending",
         ("False", "ContainersNotReady", "containers with unknown status: [b c], containers with unready status: [a]"),
         ("False", "ContainersNotReady", "containers with unknown status: [b c], containers with unready status: [a]")),
        (("a",), {"a": True}, ("example.com/lb",), (), "Running", ("True", None, None),
         ("False", "ReadinessGatesNotReady", 'corresponding condition of pod readiness gate "example.com/lb" does '
                                             "not exist.")),
        (("a",), {"a": True}, ("example.com/lb",), ({"type": "example.com/lb", "status": "False"},), "Running",
         ("True", None, None),
         ("False", "ReadinessGatesNotReady", 'the status of pod readiness gate "example.com/lb" is not "True", but '
                                             "False")),
        (("a",), {"a": True}, ("g1", "g2"), ({"type": "g1", "status": "True"},), "Running", ("True", None, None),
         ("False", "ReadinessGatesNotReady", 'corresponding condition of pod readiness gate "g2" does not exist.')),
        (("a",), {"a": True}, ("g1",), ({"type": "g1", "status": "True"},), "Running", ("True", None, None),
         ("True", None, None)),
        (("a",), {"a": False}, ("g1",), (), "Running",  # containers first: the gates are not even looked at
         ("False", "ContainersNotReady", "containers with unready status: [a]"),
         ("False", "ContainersNotReady", "containers with unready status: [a]")),
        (("a",), {"a": True}, (), (), "Failed", ("False", "PodFailed", None), ("False", "PodFailed", None)),
        (("a",), {"a": False}, (), (), "Succeeded", ("False", "PodCompleted", None), ("False", "PodCompleted", None)),
    ],
)
def test_ready_conditions_are_kubelets(containers, ready, gates, conditions, phase, containers_ready, pod_ready):
    got_containers, got_pod = ready_conditions(_pod(containers, gates, conditions, phase), ready)
    assert (got_containers["type"], got_pod["type"]) == ("ContainersReady", "Ready")
    assert _brief(got_containers) == containers_ready
    assert _brief(got_pod) == pod_ready


def _biz(state=BizState.ACTIVATED):
    return BizInfo("biz1", "0.0.1", state, (BizStateRecord(1_700_000_000_000, state, "", ""),))


def _status(pod, state=BizState.ACTIVATED, **kwargs):
    mods = pod_modules(pod, frozenset({"http", "https", "file"}))
    bizs = {b.key: b for b in [_biz(state)]}
    return pod_status(pod, mods, bizs, {}, base_ip="10.0.0.5", now_iso="2026-01-01T00:00:00Z", **kwargs)


def _conditions(status):
    return {c["type"]: _brief(c) for c in status["conditions"]}


def test_probes_decide_readiness_of_a_running_biz():
    pod = _pod()
    status = _status(pod)
    assert _conditions(status)["Ready"] == ("True", None, None)
    held = with_probe_readiness(status, pod, {"biz1": ContainerProbeState(ready=False, started=True)},
                                "2026-01-01T00:00:05Z")
    cs = held["containerStatuses"][0]
    assert (cs["ready"], cs["started"]) == (False, True)
    assert _conditions(held)["Ready"] == ("False", "ContainersNotReady", "containers with unready status: [biz1]")
    assert _conditions(held)["ContainersReady"] == _conditions(held)["Ready"]
    assert [c["lastTransitionTime"] for c in held["conditions"] if c["type"] == "Ready"] == ["2026-01-01T00:00:05Z"]
    fine = with_probe_readiness(status, pod, {"biz1": ContainerProbeState(ready=True, started=True)},
                                "2026-01-01T00:00:05Z")
    assert _conditions(fine)["Ready"] == ("True", None, None)
    not_started = with_probe_readiness(status, pod, {"biz1": ContainerProbeState(ready=False, started=False)},
                                       "2026-01-01T00:00:05Z")
    assert not_started["containerStatuses"][0]["started"] is False


def test_readiness_gates_hold_ready_even_without_probes():
    pod = _pod(gates=("example.com/lb",))
    status = with_probe_readiness(_status(pod), pod, {}, "2026-01-01T00:00:05Z")
    assert _conditions(status)["ContainersReady"] == ("True", None, None)
    assert _conditions(status)["Ready"] == ("False", "ReadinessGatesNotReady",
                                            'corresponding condition of pod readiness gate "example.com/lb" does not '
                                            "exist.")
    pod["status"]["conditions"].append({"type": "example.com/lb", "status": "True"})
    assert _conditions(with_probe_readiness(_status(pod), pod, {}, "2026-01-01T00:00:05Z"))["Ready"] == (
        "True", None, None)


def test_a_base_that_is_not_ready_keeps_its_reason():
    from vkprovider.core.podstatus import BaseCondition

    pod = _pod()
    status = _status(pod, base=BaseCondition.UNREACHABLE, base_message="no heartbeat for 60s")
    applied = with_probe_readiness(status, pod, {"biz1": ContainerProbeState(ready=True, started=True)},
                                   "2026-01-01T00:00:05Z")
    assert _conditions(applied)["Ready"] == ("False", "BaseUnreachable", "no heartbeat for 60s")
    assert applied["containerStatuses"][0]["ready"] is False


def test_a_container_that_is_not_running_is_left_as_it_is():
    pod = _pod()
    status = _status(pod, state=BizState.RESOLVED)
    applied = with_probe_readiness(status, pod, {"biz1": ContainerProbeState(ready=True, started=True)},
                                   "2026-01-01T00:00:05Z")
    assert applied["containerStatuses"][0]["ready"] is False
    assert applied["containerStatuses"][0]["started"] is False
