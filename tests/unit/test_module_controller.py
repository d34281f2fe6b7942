"""The module controller's rooms, driven through their ports with fakes (tests/unit/fakes.py): the base pass, the
command runner, the pod status queue, and the write port's fencing."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.helpers import wait_for
from tests.unit import fakes
from vkprovider.config import load_settings, module_settings
from vkprovider.controllers.bases import BaseRegistry
from vkprovider.controllers.fence import FENCED_RETRY_S, Fenced, Hold, Lost, VnodeWrites
from vkprovider.controllers.modules import ModuleController
from vkprovider.controllers.modules.records import STATUS_ECHO_WAIT_S, Sent
from vkprovider.core import basestatus
from vkprovider.core.basestate import CommandKind
from vkprovider.core.model import BizInfo, BizSpec, BizState, BizStateRecord

NODE = "vnode.b1.test"


class OnePodOnOneBase:
    """A ModuleController with one vnode (base b1, its biz1:0.0.1 ACTIVATED as the tunnel reads it) and one scheduled
    module pod ``ns/p`` wanting that biz, on an injected clock (``now[0]``). ``echo()`` delivers the last status
    written back through the informer, as the watch would."""

    def __init__(self, hold: Hold = Hold.HELD) -> None:
        self.now = [100.0]
        self.registry = BaseRegistry("test", clock=lambda: self.now[0])
        self.registry.heartbeat(fakes.hb("b1"))
        self.node = NODE
        self.tunnel = fakes.Tunnel([BizInfo("biz1", "0.0.1", BizState.ACTIVATED,
                                            (BizStateRecord(1_700_000_000_000, BizState.ACTIVATED, "", ""),))])
        self.holds = fakes.Holds(hold)
        self.api = fakes.Api()
        self.events = fakes.Events()
        self.writes = VnodeWrites(self.holds, self.api, self.events, {"http": self.tunnel})
        self.controller = ModuleController(module_settings(load_settings({"ENV": "test"})), self.registry,
                                           self.writes, clock=lambda: self.now[0])
        self.pod: dict[str, Any] = {
            "metadata": {"namespace": "ns", "name": "p", "uid": "u1", "resourceVersion": "1",
                         "labels": {"virtual-kubelet.koupleless.io/component": "module"}},
            "spec": {"nodeName": self.node,
                     "containers": [{"name": "biz1", "image": "https://h/biz1-0.0.1-ark-biz.jar",
                                     "env": [{"name": "BIZ_VERSION", "value": "0.0.1"}]}]},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]}}
        self.controller.on_pod_change("ns/p", None, self.pod)

    def status_writes(self) -> list[dict[str, Any]]:
        return [body["status"] for verb, path, body in self.api.calls if path.endswith("/pods/p/status")]

    def echo(self) -> None:
        """The watch shows the last status written (a new object, with the resourceVersion the write answered)."""
        verb, path, body = [c for c in self.api.calls if c[1].endswith("/pods/p/status")][-1]
        rv = str(self.api.last_rv)
        status = {**self.pod["status"], **{k: v for k, v in body["status"].items() if v is not None}}
        new = {**self.pod, "metadata": {**self.pod["metadata"], "resourceVersion": rv}, "status": status}
        old, self.pod = self.pod, new
        self.controller.on_pod_change("ns/p", old, new)

    async def settle(self) -> None:
        """Let the (started) status queue write what it was handed."""
        await wait_for(lambda: not any(r.wanted for r in self.controller.index), 2.0, what="status writes done")

    async def run(self) -> float | None:
        return await self.controller.bases.run(self.node)


async def test_a_pass_over_a_vnode_that_is_not_held_writes_nothing_and_says_when_to_look_again() -> None:
    """Fenced (held, a renewal late under apiserver load): no writes now, and the pass is looked at again in
    FENCED_RETRY_S - a fence that ends without a lost lease calls no on_gained, so without it the vnode's pods would
    wait for an unrelated event (found by the 1,000-base bench: 1,700 bound pods never installed). Lost: dropped
    (the Lease keeper queues it again on a gain). The queue maps both outcomes."""
    for hold, retried in ((Hold.FENCED, True), (Hold.LOST, False)):
        one = OnePodOnOneBase(hold)
        queue = one.controller.queue
        await queue.start()
        try:
            queue.add(one.node)
            await wait_for(lambda q=queue: not q.active(NODE) and NODE not in q._waiting, 2.0, what="handled")
            assert queue.waiting(one.node) is retried
            assert one.api.calls == [] and one.tunnel.commands == []
        finally:
            await queue.stop()
    try:
        await OnePodOnOneBase(Hold.FENCED).run()
    except Fenced as exc:
        assert exc.delay_s == FENCED_RETRY_S
    else:
        raise AssertionError("a fenced pass must raise Fenced")


async def test_a_command_task_that_meets_a_fenced_vnode_leaves_nothing_in_flight() -> None:
    """Installs are started in the ledger, then sent by a task; when the task runs the vnode may be fenced (a
    renewal late under load) and it sends nothing. The ledger must not keep that install in flight (the pod would
    wait in ContainerCreating for ever): it is abandoned, the base is read again and the vnode re-queued."""
    one = OnePodOnOneBase(Hold.FENCED)
    view = one.registry.get(NODE)
    assert view is not None
    specs = [BizSpec("biz1", "1", "http://x/biz1.jar"), BizSpec("biz2", "1", "http://x/biz2.jar")]
    for batch in (specs[:1], specs):  # one install, and a batch
        one.controller.commands.start_installs(view, batch, {})
        assert set(view.ledger.inflight) == {s.key for s in batch}
        await wait_for(lambda: not one.controller.commands.running(NODE), 2.0, what="the command tasks ended")
        assert view.ledger.inflight == {} and view.ledger.read_needed()
        assert NODE in one.controller.queue._waiting
    assert one.tunnel.commands == []


async def test_a_poll_of_an_idle_base_with_running_pods_plans_nothing_until_something_changes(monkeypatch) -> None:
    """Every biz poll of a base reconciles its module pods. Once a pass found nothing to do (the pods Running and
    Ready with the status they should have, nothing in flight), a poll that reads the same bizs, with the same pod
    objects and readiness, stops after the read: no plan, no status computed (issue 17: a third of the steady CPU
    with 5,000 pods). A biz that changes on the base is planned and written again at once."""
    one = OnePodOnOneBase()
    await one.controller.statuses.start()
    one.api.on_patch = lambda path, body: None
    computed = []
    real = basestatus.pod_status

    def counting(*args: Any, **kw: Any) -> dict[str, Any]:
        computed.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(basestatus, "pod_status", counting)

    async def poll() -> None:
        for _ in range(3):  # heartbeats every 12 s between two polls
            one.now[0] += 12.0
            one.registry.heartbeat(fakes.hb("b1"))
        await one.run()
        await one.settle()
        if one.status_writes() and one.pod["metadata"]["resourceVersion"] != str(one.api.last_rv):
            one.echo()

    await poll()  # the biz runs (adopted): the pod is written Running and Ready
    assert [d["phase"] for d in one.status_writes()] == ["Running"]
    await poll()  # the echo: compared, nothing to write -> quiet from here on
    before = len(computed)
    for _ in range(3):
        await poll()
    assert len(computed) == before and len(one.status_writes()) == 1
    one.tunnel.bizs[0] = BizInfo("biz1", "0.0.1", BizState.DEACTIVATED,
                                 (BizStateRecord(1_700_000_100_000, BizState.DEACTIVATED, "", "stopped by hand"),))
    await poll()
    assert len(computed) == before + 1 and one.status_writes()[-1]["phase"] != "Running"
    await one.controller.statuses.stop()


async def test_a_status_sent_is_not_sent_again_while_the_watch_has_not_shown_it(monkeypatch) -> None:
    """Under load the pod cache shows a status write seconds after it was answered. Passes in between derive the
    status from the pod as last written, not from the older cached one: what the status keeps (start time,
    transition times) does not move with the clock, so nothing is sent twice (issue 17: a 5,000-pod rollout wrote
    1.6-1.9 Running statuses per pod). Once the echo arrives nothing more is written either."""
    from vkprovider.controllers.modules import basepass

    one = OnePodOnOneBase()
    await one.controller.statuses.start()
    seconds = iter(range(10, 60))
    monkeypatch.setattr(basepass, "now_iso", lambda: f"2026-12-03T08:00:{next(seconds)}Z")

    async def look() -> None:
        one.now[0] += 1.0
        await one.run()
        await one.settle()

    await look()
    assert [d["phase"] for d in one.status_writes()] == ["Running"]
    for _ in range(3):  # a second later each time, the cache still without the write
        await look()
    assert len(one.status_writes()) == 1, [(d["startTime"], d["conditions"]) for d in one.status_writes()]
    one.echo()
    for _ in range(2):
        await look()
    assert len(one.status_writes()) == 1
    await one.controller.statuses.stop()


async def test_a_status_whose_write_is_slow_to_be_answered_is_not_queued_again(monkeypatch) -> None:
    """Under a rollout a status PATCH can wait more than STATUS_ECHO_WAIT_S for a client slot and the apiserver. A
    pass meanwhile must not take the unanswered write for one lost and queue the status again (a 5,000-pod rollout
    wrote 1.34 Running statuses per pod that way); the wait for the echo starts with the answer."""
    from vkprovider.controllers.modules import basepass

    one = OnePodOnOneBase()
    await one.controller.statuses.start()
    one.api.gate = asyncio.Event()  # the apiserver is slow
    seconds = iter(range(10, 60))
    monkeypatch.setattr(basepass, "now_iso", lambda: f"2026-12-05T08:00:{next(seconds)}Z")
    await one.run()
    await wait_for(lambda: len(one.status_writes()) == 1, 2.0, what="the first write sent")
    for _ in range(4):  # 4 x 5 s with the write still unanswered
        one.now[0] += STATUS_ECHO_WAIT_S / 2
        await one.run()
    assert not one.controller.statuses.queue.waiting("ns/p")  # nothing waits to be written again
    one.api.gate.set()
    await one.settle()
    one.now[0] += 1.0
    await one.run()  # answered a second ago: the echo is still trusted to come
    await one.settle()
    assert len(one.status_writes()) == 1
    await one.controller.statuses.stop()


async def test_the_echo_of_a_status_written_needs_no_pass_unless_planning_reads_it() -> None:
    """The watch's copy of a status vkprovider wrote changes nothing the pass that wrote it had not considered, so it
    queues no pass over the base (one reconcile in four of a rollout); a written Failed phase or a container
    terminated BizDeactivate is read by the planner, so its echo does queue one."""
    one = OnePodOnOneBase()
    await one.controller.statuses.start()
    controller = one.controller
    await one.run()
    await one.settle()
    controller.queue._waiting.clear()
    record = controller.index.get("ns/p")
    assert record is not None and record.sent is not None
    one.echo()
    assert NODE not in controller.queue._waiting and record.sent is None
    failed = {**one.pod["status"], "phase": "Failed"}
    record.sent = Sent(failed, written_rv="3")
    echo2 = {**one.pod, "metadata": {**one.pod["metadata"], "resourceVersion": "3"}, "status": failed}
    controller.on_pod_change("ns/p", one.pod, echo2)
    assert NODE in controller.queue._waiting
    controller.queue._waiting.clear()
    other = {**echo2, "metadata": {**echo2["metadata"], "resourceVersion": "4"}}  # somebody else's change
    controller.on_pod_change("ns/p", echo2, other)
    assert NODE in controller.queue._waiting
    await controller.statuses.stop()


async def test_a_status_held_back_by_a_fenced_vnode_is_written_once_the_lease_is_renewed() -> None:
    """A status write waits for a worker; under load the vnode's renewal can be late by then (fenced: held, but no
    writes). The status is not sent, and the pod is looked at again shortly, not at the next biz poll 30 s later
    (issue 17: a few pods of a 5,000-pod rollout turned Running 25-30 s after their install)."""
    one = OnePodOnOneBase()
    await one.run()  # wanted, the status queue not started yet
    one.holds.of[NODE] = Hold.FENCED  # fenced between the pass and the write
    await one.controller.statuses.start()
    queue = one.controller.statuses.queue
    await wait_for(lambda: not queue.active("ns/p") and "ns/p" in queue._timers, 2.0, what="the write held back")
    assert one.status_writes() == []
    one.holds.of[NODE] = Hold.HELD  # the renewal landed
    await wait_for(lambda: len(one.status_writes()) == 1, FENCED_RETRY_S + 2.0, what="the status written")
    assert [d["phase"] for d in one.status_writes()] == ["Running"]
    await one.controller.statuses.stop()


async def test_a_status_meant_for_a_vnode_lost_meanwhile_is_dropped() -> None:
    one = OnePodOnOneBase()
    await one.run()
    one.holds.of[NODE] = Hold.LOST
    record = one.controller.index.get("ns/p")
    assert record is not None and record.wanted is not None
    await one.controller.statuses.start()
    await wait_for(lambda: record.wanted is None, 2.0, what="the write dropped")
    assert record.sent is None
    assert not one.controller.statuses.queue.waiting("ns/p") and one.status_writes() == []
    await one.controller.statuses.stop()


async def test_pod_start_duration_times_a_pod_from_first_seen_to_its_first_running_write_answered() -> None:
    """vkprovider_pod_start_duration_seconds (the kubelet's pod start SLI, for modules) runs from the first sight of a
    not-yet-started pod on a held vnode to the answer to its first Running status; a pod already Running when first
    seen (a restart, a takeover) is not timed, and a later Running write is not timed again."""
    from prometheus_client import REGISTRY

    def observed() -> tuple[float, float]:
        return (REGISTRY.get_sample_value("vkprovider_pod_start_duration_seconds_count") or 0.0,
                REGISTRY.get_sample_value("vkprovider_pod_start_duration_seconds_sum") or 0.0)

    one = OnePodOnOneBase()  # ns/p first seen Pending at t=100
    one.api.on_patch = lambda path, body: one.now.__setitem__(0, one.now[0] + 0.25)  # the answer takes 0.25 s
    await one.controller.statuses.start()
    count0, sum0 = observed()
    one.now[0] += 1.5
    await one.run()
    await one.settle()
    assert [p for _, p, _ in one.api.calls] == ["/api/v1/namespaces/ns/pods/p/status"]
    count1, sum1 = observed()
    assert count1 - count0 == 1 and abs((sum1 - sum0) - 1.75) < 1e-9

    running = {**one.pod, "metadata": {**one.pod["metadata"], "name": "q", "uid": "u2"},
               "status": {"phase": "Running"}}
    one.controller.on_pod_change("ns/q", None, running)
    for key in ("ns/q", "ns/p"):
        record = one.controller.index.get(key)
        assert record is not None and record.unstarted_since is None
    await one.controller.statuses.stop()


async def test_a_pushed_biz_list_does_not_undo_an_install_answered_since_the_last_read() -> None:
    """Issue 27, item 4: over MQTT a biz list that arrives after its query timed out (or unasked) was merged as
    a read sent just now, so a list taken before an install answered removed the installed biz again: the pod's
    Ready regressed and the install was sent a second time."""
    one = OnePodOnOneBase()
    view = one.registry.get(NODE)
    assert view is not None
    spec = BizSpec("biz1", "1", "http://x/biz1.jar")
    running = BizInfo("biz1", "1", BizState.ACTIVATED)
    ledger = view.ledger
    ledger.apply_read(ledger.begin_read(), [])
    ledger.start(spec.key, CommandKind.INSTALL, spec, 0.0)
    ledger.finish_install(spec, ok=True, reported=[running], now=1.0, at_ms=0)
    one.controller.on_pushed_bizs(NODE, [])  # the late answer of a query sent before the install
    assert ledger.bizs == {spec.key: running}
    one.controller.on_pushed_bizs(NODE, [BizInfo("orphan", "9", BizState.ACTIVATED)])  # news about other bizs
    assert ledger.bizs is not None and set(ledger.bizs) == {spec.key, BizInfo("orphan", "9", BizState.ACTIVATED).key}


async def test_a_stale_status_of_a_replaced_pod_never_reaches_its_successor() -> None:
    """Issue 27, item 3, in the status queue: a status waiting for the pod of uid u1 is dropped when the informer
    shows another pod of the same name (uid u2), and every write carries the uid it was meant for."""
    one = OnePodOnOneBase()
    await one.run()
    record = one.controller.index.get("ns/p")
    assert record is not None and record.wanted is not None
    successor = {**one.pod, "metadata": {**one.pod["metadata"], "uid": "u2", "resourceVersion": "9"},
                 "status": {"phase": "Pending"}}
    one.controller.on_pod_change("ns/p", one.pod, successor)
    fresh = one.controller.index.get("ns/p")
    assert fresh is not None and fresh is not record and fresh.wanted is None and fresh.uid == "u2"
    await one.controller.statuses.start()
    await one.run()
    await one.settle()
    assert all(body["metadata"]["uid"] == "u2" for _, path, body in one.api.calls if path.endswith("/status"))
    await one.controller.statuses.stop()


async def test_lost_and_fenced_are_raised_by_the_port_before_anything_is_sent() -> None:
    holds = fakes.Holds()
    api, events, tunnel = fakes.Api(), fakes.Events(), fakes.Tunnel()
    writes = VnodeWrites(holds, api, events, {"http": tunnel})
    for hold, outcome in ((Hold.FENCED, Fenced), (Hold.LOST, Lost)):
        holds.of[NODE] = hold
        assert writes.hold(NODE) is hold
        scope = writes.scope(NODE)
        try:
            scope.check()
        except outcome:
            pass
        else:
            raise AssertionError(f"{hold} must raise {outcome.__name__}")


async def test_a_probed_pod_turns_ready_when_its_probe_passes_and_each_activation_is_probed_once() -> None:
    """Issue 29: a readiness probe on the base's address decides the container's ready. The biz's activation time is
    worked out once per activation: a value that moved with the clock on every pass made the probes take every pass
    for a new container (thousands of checks a second, never ready)."""
    import time

    from aiohttp import web

    app = web.Application()
    async def healthy(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/biz1/health", healthy)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    registry = BaseRegistry("test", clock=time.monotonic)
    registry.heartbeat(fakes.hb("b1"))
    tunnel = fakes.Tunnel([BizInfo("biz1", "0.0.1", BizState.ACTIVATED, (
        BizStateRecord(int(time.time() * 1000) - 5000, BizState.ACTIVATED, "", ""),))])
    api = fakes.Api()
    controller = ModuleController(module_settings(load_settings({"ENV": "test"})), registry,
                                  VnodeWrites(fakes.Holds(), api, fakes.Events(), {"http": tunnel}),
                                  clock=time.monotonic)
    pod = OnePodOnOneBase().pod
    pod["spec"]["containers"][0]["readinessProbe"] = {"httpGet": {"path": "/biz1/health", "port": port},
                                                      "periodSeconds": 1}
    controller.on_pod_change("ns/p", None, pod)
    await controller.start()
    try:
        controller.queue.add(NODE)

        def written_ready() -> bool:
            return any(c.get("ready") for _, path, body in api.calls if path.endswith("/status")
                       for c in body["status"].get("containerStatuses") or [])

        await wait_for(written_ready, 10.0, what="the container written ready once its probe passed")
        assert controller.probes.checks_run < 10
    finally:
        await controller.stop()
        await runner.cleanup()


async def test_commands_carry_the_pod_uid_as_bizmodelversion_and_an_expired_uninstall_is_read_again() -> None:
    """Issue 29, item 5 (arklet 1.4.3's fence): an install sends the uid of the pod it is for; the uninstall of a
    deleted pod's biz sends the uid it was installed with; an orphan's uninstall sends nothing. An uninstall arklet
    refuses as expired (another pod's install owns the biz) is no failure to report or retry: the base is read
    again before anything is decided."""
    from vkprovider.core.model import CommandOutcome, CommandResult

    one = OnePodOnOneBase()
    one.tunnel.bizs = []
    await one.run()  # the biz is not on the base: installed for ns/p (uid u1)
    await wait_for(lambda: one.tunnel.owners, 2.0, what="the install sent")
    await one.controller.wait_idle(NODE)
    assert one.tunnel.owners == [("install", "biz1:0.0.1", "u1")]
    view = one.registry.get(NODE)
    assert view is not None and view.ledger.owner(BizSpec("biz1", "0.0.1", "x").key) == "u1"
    one.tunnel.answer = CommandResult(CommandOutcome.EXPIRED, "can not access biz because the command is expired")
    one.controller.commands.start_uninstall(view, BizSpec("biz1", "0.0.1", "x").key)
    await one.controller.wait_idle(NODE)
    assert one.tunnel.owners[-1] == ("uninstall", "biz1:0.0.1", "u1")
    failure = view.ledger.failures[BizSpec("biz1", "0.0.1", "x").key]
    assert failure.busy and view.ledger.read_needed()
    assert not any(kind == "Warning" for kind, _, _ in one.events.posted)
    one.tunnel.answer = None
    orphan = BizInfo("orphan", "9", BizState.ACTIVATED)
    view.ledger.apply_read(view.ledger.begin_read(), [*view.ledger.bizs.values(), orphan])
    one.controller.commands.start_uninstall(view, orphan.key)
    await one.controller.wait_idle(NODE)
    assert one.tunnel.owners[-1] == ("uninstall", "orphan:9", "")
