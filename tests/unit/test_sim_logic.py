"""The simulated arklet's biz state machine (no sockets): the behaviours vkprovider relies on."""

from __future__ import annotations

import argparse
import asyncio
import random
from typing import Any

import pytest

from vkprovider.core import wire
from vkprovider.core.model import CommandOutcome
from vkprovider.sim.arklet import NON_HEAP_BESIDES_METASPACE, ArkletBehaviour, MultiVersionMode, SimArklet


def _arklet(**behaviour: Any) -> SimArklet:
    behaviour.setdefault("install_latency_s", 0.0)
    behaviour.setdefault("uninstall_latency_s", 0.0)
    return SimArklet(ArkletBehaviour(**behaviour), rng=random.Random(7))


def _install_body(
    name: str = "biz1", version: str = "1.0.0", url: str = "file:///tmp/biz1.jar"
) -> dict[str, Any]:
    return {"bizName": name, "bizVersion": version, "bizUrl": url}


def _states(arklet: SimArklet) -> dict[str, str]:
    return {f"{b['bizName']}:{b['bizVersion']}": b["bizState"] for b in arklet.query_all_biz()}


async def test_install_records_resolved_then_activated() -> None:
    arklet = _arklet()
    answer = await arklet.handle("installBiz", _install_body())
    result = wire.parse_command_result(answer)
    assert result.ok and "Install Biz: biz1:1.0.0 success" in result.message
    (biz,) = arklet.query_all_biz()
    assert biz["bizState"] == "activated"
    assert [(r["state"], r["reason"]) for r in biz["bizStateRecords"]] == [
        ("resolved", "Created"),
        ("activated", "Started"),
    ]
    assert arklet.install_calls == 1 and arklet.calls_by_biz == {"biz1:1.0.0": [1, 0]}


async def test_second_install_of_same_version_is_repeat() -> None:
    arklet = _arklet()
    await arklet.handle("installBiz", _install_body())
    answer = await arklet.handle("installBiz", _install_body())
    assert answer["data"]["code"] == "REPEAT_BIZ"
    assert wire.parse_command_result(answer).outcome is CommandOutcome.REPEAT
    assert len(arklet.bizs) == 1


async def test_uninstall_moves_through_killing_and_stopped_then_removes() -> None:
    arklet = _arklet(uninstall_latency_s=0.05)
    await arklet.handle("installBiz", _install_body())
    biz = arklet.bizs["biz1:1.0.0"]
    task = asyncio.create_task(arklet.handle("uninstallBiz", {"bizName": "biz1", "bizVersion": "1.0.0"}))
    await asyncio.sleep(0.01)
    assert _states(arklet) == {"biz1:1.0.0": "deactivated"}
    answer = await task
    assert wire.parse_command_result(answer).ok
    assert arklet.bizs == {}
    assert [(r.state, r.reason) for r in biz.records][-2:] == [
        ("deactivated", "Killing"),
        ("stopped", "Stopped"),
    ]
    assert arklet.uninstall_calls == 1


async def test_uninstall_unknown_is_not_found() -> None:
    answer = await _arklet().handle("uninstallBiz", {"bizName": "nope", "bizVersion": "1"})
    assert answer == {
        "code": "FAILED",
        "data": {"code": "NOT_FOUND_BIZ", "message": "Uninstall biz: nope:1 not found."},
        "message": "uninstall biz not success!",
    }


async def test_command_on_a_running_key_conflicts_while_other_keys_and_queries_proceed() -> None:
    arklet = _arklet(install_latency_s=0.5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    slow = asyncio.create_task(arklet.handle("installBiz", _install_body()))
    await asyncio.sleep(0.01)
    assert _states(arklet) == {"biz1:1.0.0": "resolved"}
    conflict = await arklet.handle("uninstallBiz", {"bizName": "biz1", "bizVersion": "1.0.0"})
    assert wire.parse_command_result(conflict).outcome is CommandOutcome.CONFLICT
    assert "exist unfinished command(installBiz)" in conflict["message"]
    again = await arklet.handle("installBiz", _install_body())
    assert wire.parse_command_result(again).outcome is CommandOutcome.CONFLICT
    # queries answer while the install runs, and a different key installs in parallel
    assert (await arklet.handle("health", {}))["code"] == "SUCCESS"
    assert not slow.done()
    other = asyncio.create_task(arklet.handle("installBiz", _install_body("biz2", url="http://h/biz2.jar")))
    results = await asyncio.gather(slow, other)
    assert all(wire.parse_command_result(answer).ok for answer in results)
    assert loop.time() - started < 0.95  # in series it would take 1.0 s


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (MultiVersionMode.ACTIVATE_NEW, {"biz1:1": "deactivated", "biz1:2": "activated"}),
        (MultiVersionMode.KEEP_OLD, {"biz1:1": "activated", "biz1:2": "deactivated"}),
        (MultiVersionMode.MULTI, {"biz1:1": "activated", "biz1:2": "activated"}),
    ],
)
async def test_same_name_new_version(mode: MultiVersionMode, expected: dict[str, str]) -> None:
    arklet = _arklet(multi_version_mode=mode)
    await arklet.handle("installBiz", _install_body(version="1"))
    await arklet.handle("installBiz", _install_body(version="2", url="file:///tmp/biz1-2.jar"))
    assert _states(arklet) == expected
    if mode is MultiVersionMode.ACTIVATE_NEW:
        assert arklet.bizs["biz1:1"].records[-1].reason == "Switched"


async def test_switch_biz_activates_the_target() -> None:
    arklet = _arklet(multi_version_mode=MultiVersionMode.KEEP_OLD)
    await arklet.handle("installBiz", _install_body(version="1"))
    await arklet.handle("installBiz", _install_body(version="2"))
    answer = await arklet.handle("switchBiz", {"bizName": "biz1", "bizVersion": "2"})
    assert answer["data"]["message"] == "Switch biz: biz1:2 is activated."
    assert _states(arklet) == {"biz1:1": "deactivated", "biz1:2": "activated"}
    missing = await arklet.handle("switchBiz", {"bizName": "biz1", "bizVersion": "9"})
    assert missing["data"]["code"] == "NOT_FOUND_BIZ"


async def test_uninstall_then_install_strategy_removes_old_versions() -> None:
    arklet = _arklet()
    await arklet.handle("installBiz", _install_body(version="1"))
    await arklet.handle(
        "installBiz", {**_install_body(version="2"), "installStrategy": "uninstallThenInstall"}
    )
    assert _states(arklet) == {"biz1:2": "activated"}


async def test_fail_biz_is_auto_uninstalled_with_arklet_style_error() -> None:
    arklet = _arklet(fail_bizs=frozenset({"bad"}))
    answer = await arklet.handle("installBiz", _install_body("bad"))
    result = wire.parse_command_result(answer)
    assert result.outcome is CommandOutcome.FAILED
    assert "Install Biz: bad:1.0.0 fail" in result.message and "RuntimeException" in result.message
    assert arklet.bizs == {}
    # a retry is a fresh install, not REPEAT_BIZ: the broken biz was removed
    assert (
        wire.parse_command_result(await arklet.handle("installBiz", _install_body("bad"))).outcome
        is CommandOutcome.FAILED
    )


async def test_failure_rate() -> None:
    always = _arklet(failure_rate=1.0)
    never = _arklet(failure_rate=0.0)
    bodies = [_install_body(f"b{i}") for i in range(20)]
    half = _arklet(failure_rate=0.5)

    async def oks(arklet: SimArklet) -> list[bool]:
        return [wire.parse_command_result(await arklet.handle("installBiz", b)).ok for b in bodies]

    assert await oks(always) == [False] * 20
    assert await oks(never) == [True] * 20
    assert 0 < sum(await oks(half)) < 20


@pytest.mark.parametrize(
    ("command", "body", "text"),
    [
        ("installBiz", None, "Internal Error: request body is empty"),
        ("uninstallBiz", None, "Internal Error: request body is empty"),
        ("installBiz", {"bizName": "a", "bizVersion": "1"}, "Internal Error: bizUrl should not be blank"),
        (
            "installBiz",
            {"bizName": " ", "bizVersion": "1", "bizUrl": "file:///x"},
            "bizName should not be blank",
        ),
        (
            "installBiz",
            _install_body(url="ftp://h/x.jar"),
            "Internal Error: java.net.MalformedURLException: unknown protocol: ftp",
        ),
        ("installBiz", _install_body(url="biz1.jar"), "unknown protocol"),
        ("uninstallBiz", {"bizName": "a"}, "bizVersion should not be blank"),
        ("batchInstallBiz", {"bizList": []}, "bizList should not be empty"),
        ("batchInstallBiz", {"bizList": [1]}, "bizList should not be empty"),
    ],
)
async def test_invalid_input_is_an_internal_error(
    command: str, body: dict[str, Any] | None, text: str
) -> None:
    arklet = _arklet()
    answer = await arklet.handle(command, body)
    assert answer["code"] == "CMD_PROCESS_INTERNAL_ERROR"
    assert text in answer["message"]
    assert wire.parse_command_result(answer).outcome is CommandOutcome.FAILED
    assert arklet.bizs == {}


async def test_queries_work_with_an_empty_body_and_unknown_commands_are_refused() -> None:
    arklet = _arklet(cpu_count=16, metaspace_max_bytes=1000)
    health = wire.parse_health((await arklet.handle("health", None))["data"])
    assert (health.cpu_count, health.memory_max_bytes, health.master_biz_name) == (16, 1000, "base")
    assert (await arklet.handle("queryAllBiz", None)) == {"code": "SUCCESS", "data": []}
    assert (await arklet.handle("rebootJvm", {}))["code"] == "CMD_NOT_FOUND"


async def test_batch_install_reports_per_url() -> None:
    arklet = _arklet(fail_bizs=frozenset({"bad"}))
    await arklet.handle("installBiz", _install_body("dup", url="file:///dup.jar"))
    body = {
        "bizList": [
            _install_body("a", url="file:///a.jar"),
            _install_body("dup", url="file:///dup.jar"),
            _install_body("bad", url="file:///bad.jar"),
        ]
    }
    answer = await arklet.handle("batchInstallBiz", body)
    results = wire.parse_batch_install_result(answer, ["file:///a.jar", "file:///dup.jar", "file:///bad.jar"])
    assert {u: r.outcome for u, r in results.items()} == {
        "file:///a.jar": CommandOutcome.SUCCESS,
        "file:///dup.jar": CommandOutcome.REPEAT,
        "file:///bad.jar": CommandOutcome.FAILED,
    }
    assert arklet.install_calls == 4  # 1 direct + 3 in the batch
    assert _states(arklet) == {"dup:1.0.0": "activated", "a:1.0.0": "activated"}


async def test_direct_install_is_not_counted_and_reset_stats() -> None:
    arklet = _arklet()
    assert wire.parse_command_result(await arklet.install_direct("orphan", "1", "file:///o.jar")).ok
    assert arklet.install_calls == 0 and "orphan:1" in arklet.bizs
    await arklet.handle("installBiz", _install_body())
    arklet.reset_stats()
    assert (arklet.install_calls, arklet.calls_by_biz) == (0, {})


# --- arklet 1.4.3's fence: bizModelVersion (koupleless/runtime #247, #248) ----------------------------------------

def _uninstall(version: str | None, name: str = "biz1") -> dict[str, Any]:
    body = {"bizName": name, "bizVersion": "1.0.0"}
    if version is not None:
        body["bizModelVersion"] = version
    return body


def _with_owner(owner: str | None, **body: Any) -> dict[str, Any]:
    out = {**_install_body(), **body}
    if owner is not None:
        out["bizModelVersion"] = owner
    return out


# (case, installed with, uninstall with, outcome) - BizOpsPodCoordinator.canAccess
FENCE = [
    ("the owner uninstalls", "uid-1", "uid-1", CommandOutcome.SUCCESS),
    ("another pod's uninstall is expired", "uid-1", "uid-2", CommandOutcome.EXPIRED),
    ("an empty value is always allowed (orphan clean-up)", "uid-1", "", CommandOutcome.SUCCESS),
    ("no value is always allowed (an older controller)", "uid-1", None, CommandOutcome.SUCCESS),
    ("installed without one: anyone may", None, "uid-2", CommandOutcome.SUCCESS),
    ("installed with an empty one: anyone may", "", "uid-2", CommandOutcome.SUCCESS),
]


@pytest.mark.parametrize(("case", "owner", "caller", "outcome"), FENCE, ids=[c[0] for c in FENCE])
async def test_a_stale_uninstall_is_refused_as_expired(case: str, owner: str | None, caller: str | None,
                                                     outcome: CommandOutcome) -> None:
    arklet = _arklet()
    assert wire.parse_command_result(await arklet.handle("installBiz", _with_owner(owner))).ok
    answer = await arklet.handle("uninstallBiz", _uninstall(caller))
    assert wire.parse_command_result(answer).outcome is outcome
    if outcome is CommandOutcome.EXPIRED:
        # arklet's own answer, word for word; the biz keeps running
        assert answer == {"code": "FAILED", "message": "can not access biz because the command is expired"}
        assert _states(arklet) == {"biz1:1.0.0": "activated"}
    else:
        assert _states(arklet) == {}


async def test_the_fence_follows_the_newest_install_and_is_forgotten_on_uninstall() -> None:
    arklet = _arklet()
    await arklet.handle("installBiz", _with_owner("uid-1"))
    assert (await arklet.handle("uninstallBiz", _uninstall("")))["code"] == "SUCCESS"  # clean-up, no owner
    assert arklet.model_versions == {}  # an uninstall without a value forgets the owner
    await arklet.handle("installBiz", _with_owner("uid-2"))  # a new pod installs it again
    expired = wire.parse_command_result(await arklet.handle("uninstallBiz", _uninstall("uid-1")))
    assert expired.outcome is CommandOutcome.EXPIRED  # the old pod's late uninstall cannot remove it
    assert (await arklet.handle("uninstallBiz", _uninstall("uid-2")))["code"] == "SUCCESS"
    assert arklet.model_versions == {}
    # nothing stored any more: even a stranger's value passes the fence (and finds nothing)
    gone = wire.parse_command_result(await arklet.handle("uninstallBiz", _uninstall("uid-9")))
    assert gone.outcome is CommandOutcome.NOT_FOUND


async def test_batch_installs_and_replaced_versions_store_nothing_new() -> None:
    """BatchInstallBizHandler does not call BizOpsPodCoordinator.save; uninstallThenInstall removes old versions
    without the handler, so their stored value stays (arklet 1.4.3 as written)."""
    arklet = _arklet()
    batch = {"bizList": [_with_owner("uid-1")]}
    assert (await arklet.handle("batchInstallBiz", batch))["code"] == "SUCCESS"
    assert arklet.model_versions == {}
    assert (await arklet.handle("uninstallBiz", _uninstall("uid-2")))["code"] == "SUCCESS"
    await arklet.handle("installBiz", _with_owner("uid-1"))
    replaced = _with_owner("uid-3", bizVersion="2.0.0", installStrategy="uninstallThenInstall")
    assert wire.parse_command_result(await arklet.handle("installBiz", replaced)).ok
    assert arklet.model_versions == {"biz1:1.0.0": "uid-1", "biz1:2.0.0": "uid-3"}
    stale = wire.parse_command_result(await arklet.handle("uninstallBiz", _uninstall("uid-2")))
    assert stale.outcome is CommandOutcome.EXPIRED  # biz1:1.0.0 is gone, its owner is still on record


async def test_a_failed_install_stores_nothing() -> None:
    arklet = _arklet(fail_bizs=frozenset({"biz1"}))
    assert not wire.parse_command_result(await arklet.handle("installBiz", _with_owner("uid-1"))).ok
    assert arklet.model_versions == {}


async def test_a_base_restart_forgets_the_owners() -> None:
    from vkprovider.sim.simulator import SimBase, SimConfig, Simulator

    behaviour = ArkletBehaviour(install_latency_s=0.0, uninstall_latency_s=0.0)
    base = SimBase(Simulator(SimConfig(bases=1, behaviour=behaviour)), 0, 0)
    await base.arklet.handle("installBiz", _with_owner("uid-1"))
    await base.stop()  # the JVM dies; its arklet comes back empty
    assert base.arklet.model_versions == {}
    await base.arklet.handle("installBiz", _with_owner(None))  # e.g. reinstalled by hand, no owner
    assert (await base.arklet.handle("uninstallBiz", _uninstall("uid-2")))["code"] == "SUCCESS"


async def test_an_arklet_before_1_4_3_ignores_the_fence() -> None:
    arklet = _arklet(model_version_fence=False)
    await arklet.handle("installBiz", _with_owner("uid-1"))
    assert (await arklet.handle("uninstallBiz", _uninstall("uid-2")))["code"] == "SUCCESS"


async def test_the_simulator_keeps_what_it_was_installed_with() -> None:
    arklet = _arklet()
    await arklet.handle("installBiz", _with_owner("uid-1", args=["--a=1"], envs={"K": "s3cr3t"}))
    biz = arklet.bizs["biz1:1.0.0"]
    assert biz.args == ("--a=1",) and biz.envs == {"K": "s3cr3t"}
    assert "args" not in biz.to_wire() and "envs" not in biz.to_wire() and "s3cr3t" not in repr(biz)


def test_health_figures_move_with_the_bases_usage_as_arklets_do():
    """The simulated base's health reads as a real one's: CPU ticks counted since its arklet started, busy at the
    rate its Usage says (set_usage changes it from then on), the used heap it is told, MiB as doubles."""
    from vkprovider.core import stats
    from vkprovider.sim.arklet import Usage

    now = [1000.0]
    arklet = SimArklet(ArkletBehaviour(cpu_count=4), clock_s=lambda: now[0], usage=Usage(0.25, 300 * 1024 * 1024))

    def health() -> Any:
        return wire.parse_health(arklet.health()["data"])

    assert stats.cpu_seconds(health()) == 0.0
    now[0] += 10  # 4 CPUs a quarter busy for 10 s: 10 core-seconds of 40
    first = health()
    assert first.cpu is not None and first.cpu.total_ms == 40000.0
    assert stats.cpu_seconds(first) == 10.0 and first.uptime_s == 10.0
    assert first.heap_used_bytes == 300 * 1024 * 1024
    assert first.non_heap_used_bytes == ArkletBehaviour().metaspace_used_bytes + NON_HEAP_BESIDES_METASPACE
    arklet.set_usage(cpu=1.0, heap_used_bytes=700 * 1024 * 1024)
    now[0] += 5  # then fully busy for 5 s: 20 more
    second = health()
    assert stats.cpu_seconds(second) == 30.0 and second.heap_used_bytes == 700 * 1024 * 1024
    assert stats.usage_nano_cores(stats.Reading(15.0, second), stats.Reading(10.0, first)) == 4_000_000_000
    raw = arklet.health()["data"]["healthData"]["cpu"]
    assert raw["user used (%)"] + raw["system used (%)"] + raw["free (%)"] == pytest.approx(100.0)


async def test_static_bizs_are_in_the_jvm_at_each_start_before_its_first_heartbeat() -> None:
    """``--static-biz``: the base starts with those bizs (static merge deployment), again after a restart, and its
    uptime counts from that start; a start may name another set (the control API's body)."""
    from vkprovider.sim.cli import add_arguments, config_from_args
    from vkprovider.sim.simulator import SimBase, Simulator

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = config_from_args(parser.parse_args(["--static-biz", "shipped:1.0", "--static-biz", "other:2",
                                                 "--install-latency", "0"]))
    assert config.static_bizs == (("shipped", "1.0"), ("other", "2"))
    base = SimBase(Simulator(config), 0, 0)
    try:
        await base.start()
        assert set(base.arklet.bizs) == {"shipped:1.0", "other:2"}
        assert base.arklet.install_calls == 0  # not vkprovider's doing
        await base.stop()
        assert base.arklet.bizs == {}
        await base.start(static_bizs=(("next", "3"),))
        assert set(base.arklet.bizs) == {"next:3"}
        uptime = base.arklet.health()["data"]["healthData"]["jvm"]["run time(s)"]
        assert 0 <= uptime < 5
        await base.stop(partition=True)
        await base.start()  # the network back, the same JVM: nothing installed again
        assert set(base.arklet.bizs) == {"next:3"}
    finally:
        await base.stop()
    with pytest.raises(SystemExit):
        parser.parse_args(["--static-biz", "nover"])


async def test_a_bases_metaspace_use_can_be_set_and_health_reports_it_as_arklet_does() -> None:
    """The control API's knob for memory pressure: used metaspace of one base (committed follows it up); the max
    heap in arklet's own key and unit (MiB); every health question counted."""
    mib = 1024 * 1024
    arklet = _arklet(metaspace_max_bytes=512 * mib, metaspace_committed_bytes=96 * mib, metaspace_used_bytes=90 * mib)
    health = wire.parse_health((await arklet.handle("health", {}))["data"])
    assert (health.memory_used_bytes, health.memory_committed_bytes) == (90 * mib, 96 * mib)
    assert health.heap_max_bytes == 2048 * mib
    arklet.set_usage(metaspace_used_bytes=480 * mib)
    health = wire.parse_health((await arklet.handle("health", {}))["data"])
    assert (health.memory_max_bytes, health.memory_committed_bytes, health.memory_used_bytes) == (
        512 * mib, 480 * mib, 480 * mib)
    arklet.set_usage(metaspace_used_bytes=100 * mib)
    health = wire.parse_health((await arklet.handle("health", {}))["data"])
    assert (health.memory_committed_bytes, health.memory_used_bytes) == (100 * mib, 100 * mib)
    assert health.non_heap_used_bytes == 100 * mib + NON_HEAP_BESIDES_METASPACE  # non-heap holds the Metaspace
    assert arklet.health_calls == 3
