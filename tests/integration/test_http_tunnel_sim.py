"""HttpTunnel against the base simulator, in one process, no Kubernetes: heartbeats in, arklet commands out,
failure paths, and a fuzzed heartbeat endpoint that must reject everything malformed without falling over."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from vkprovider.config import Settings
from vkprovider.core.credentials import base_token
from vkprovider.core.model import (
    BaseHealth,
    BaseHeartbeat,
    BaseMetadata,
    BizInfo,
    BizSpec,
    BizState,
    CommandOutcome,
)
from vkprovider.sim import ArkletBehaviour, SimConfig, Simulator
from vkprovider.sim.control import start_control_api
from vkprovider.tunnels.base import Refusal, TunnelError
from vkprovider.tunnels.http_tunnel import HttpTunnel

MAX_BODY = 4096
SECRET = "tunnel-test-secret"
INSTALL_LATENCY = 0.3


class RecordingEvents:
    """A BaseEvents that remembers what the tunnel delivered."""

    def __init__(self) -> None:
        self.heartbeats: list[BaseHeartbeat] = []
        self.baseline_asked: list[BaseMetadata] = []

    def on_heartbeat(self, heartbeat: BaseHeartbeat, *, authenticated: bool = False) -> Refusal | None:
        self.heartbeats.append(heartbeat)
        return None

    def address_of(self, identity: str) -> str | None:
        latest = self.latest().get(identity)
        return latest.ip if latest is not None else None

    def on_health(self, identity: str, health: BaseHealth) -> None:
        raise AssertionError("the HTTP tunnel returns health to its caller")

    def on_bizs(self, identity: str, bizs: Sequence[BizInfo]) -> None:
        raise AssertionError("the HTTP tunnel returns bizs to its caller")

    def baseline(self, metadata: BaseMetadata) -> list[BizSpec]:
        self.baseline_asked.append(metadata)
        return [BizSpec("biz1", "1.0.0", "file:///tmp/biz1.jar")]

    def latest(self) -> dict[str, BaseHeartbeat]:
        return {hb.identity: hb for hb in self.heartbeats}


def _settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "http_tunnel_host": "127.0.0.1",
        "http_tunnel_port": 0,
        "http_max_body_bytes": MAX_BODY,
        "arklet_query_timeout_s": 1.0,
        "arklet_install_timeout_s": 3.0,
        "arklet_max_inflight_per_base": 2,
        "heartbeat_secret": SECRET,
        "base_networks": "10.0.0.0/8",  # VALID's localIP; the address rule has its own tests (test_security)
    }
    values.update(overrides)
    return Settings(**values)


def _auth(identity: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {base_token(SECRET.encode(), identity)}"}


class Env:
    def __init__(self, tunnel: HttpTunnel, events: RecordingEvents, sim: Simulator, control_port: int) -> None:
        self.tunnel = tunnel
        self.events = events
        self.sim = sim
        self.control_port = control_port

    async def base(self, identity: str) -> BaseHeartbeat:
        """The base's latest heartbeat as vkprovider would hold it (waits for the first one)."""
        deadline = time.monotonic() + 5
        while identity not in self.events.latest():
            assert time.monotonic() < deadline, f"no heartbeat from {identity}"
            await asyncio.sleep(0.02)
        return self.events.latest()[identity]


@pytest_asyncio.fixture(scope="module")
async def env() -> AsyncIterator[Env]:
    events = RecordingEvents()
    tunnel = HttpTunnel(_settings())
    await tunnel.start(events)
    sim = Simulator(
        SimConfig(
            bases=3,
            endpoint=f"http://127.0.0.1:{tunnel.port}",
            heartbeat_interval_s=0.3,
            heartbeat_first_spread_s=0.1,
            zones=("zone-a", "zone-b"),
            stack="java",
            token_secret=SECRET,
            seed=1,
            behaviour=ArkletBehaviour(
                install_latency_s=INSTALL_LATENCY, uninstall_latency_s=0.02, fail_bizs=frozenset({"bad"})
            ),
        )
    )
    await sim.start()
    control, control_port = await start_control_api(sim, "127.0.0.1", 0)
    try:
        yield Env(tunnel, events, sim, control_port)
    finally:
        await control.cleanup()
        await sim.stop()
        await tunnel.stop()


# --- heartbeats -------------------------------------------------------------------------------------------


async def test_heartbeats_arrive_from_every_base(env: Env) -> None:
    for identity, sim_base in env.sim.bases.items():
        hb = await env.base(identity)
        assert hb.tunnel == "http"
        assert (hb.ip, hb.port, hb.state, hb.host_name) == ("127.0.0.1", sim_base.port, "ACTIVATED", identity)
        assert (hb.metadata.name, hb.metadata.version, hb.metadata.cluster_name) == (
            "base",
            "1.0.0",
            "default",
        )
        assert dict(hb.labels) == {
            "topology.kubernetes.io/zone": sim_base.zone,
            "base.koupleless.io/stack": "java",
        }
    assert {hb.identity for hb in env.events.heartbeats} == {"sim-0000", "sim-0001", "sim-0002"}
    assert {dict(env.events.latest()[i].labels)["topology.kubernetes.io/zone"] for i in env.sim.bases} == {
        "zone-a",
        "zone-b",
    }


async def test_query_baseline(env: Env) -> None:
    meta = {"clusterName": "default", "identity": "sim-0000", "name": "base", "version": "1.0.0"}
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"http://127.0.0.1:{env.tunnel.port}/queryBaseline", data=orjson.dumps(meta), headers=_auth("sim-0000")
        ) as r:
            assert r.status == 200
            assert await r.json() == [
                {"bizName": "biz1", "bizVersion": "1.0.0", "bizUrl": "file:///tmp/biz1.jar"}
            ]
        async with session.post(f"http://127.0.0.1:{env.tunnel.port}/queryBaseline", data=b"[]") as r:
            assert r.status == 400
    assert env.events.baseline_asked[-1].identity == "sim-0000"


# --- arklet commands --------------------------------------------------------------------------------------


async def test_install_query_uninstall_cycle(env: Env) -> None:
    base = await env.base("sim-0000")
    spec = BizSpec("cycle", "1.0.0", "file:///tmp/cycle.jar")
    result = await env.tunnel.install_biz(base, spec)
    assert result.outcome is CommandOutcome.SUCCESS, result
    assert [(b.name, b.state) for b in result.bizs] == [("cycle", BizState.ACTIVATED)]
    (biz,) = [b for b in await env.tunnel.query_all_biz(base) if b.name == "cycle"]
    assert biz.state is BizState.ACTIVATED
    assert [(r.state, r.reason) for r in biz.records] == [
        (BizState.RESOLVED, "Created"),
        (BizState.ACTIVATED, "Started"),
    ]
    assert (await env.tunnel.install_biz(base, spec)).outcome is CommandOutcome.REPEAT
    assert (await env.tunnel.uninstall_biz(base, "cycle", "1.0.0")).ok
    assert [b for b in await env.tunnel.query_all_biz(base) if b.name == "cycle"] == []
    assert (await env.tunnel.uninstall_biz(base, "cycle", "1.0.0")).outcome is CommandOutcome.NOT_FOUND
    assert env.sim.stats()["installsByBiz"]["sim-0000/cycle:1.0.0"] == 2


async def test_new_version_deactivates_the_old_one(env: Env) -> None:
    base = await env.base("sim-0001")
    assert (await env.tunnel.install_biz(base, BizSpec("mv", "1", "http://repo/mv-1.jar"))).ok
    assert (await env.tunnel.install_biz(base, BizSpec("mv", "2", "http://repo/mv-2.jar"))).ok
    states = {b.version: b.state for b in await env.tunnel.query_all_biz(base) if b.name == "mv"}
    assert states == {"1": BizState.DEACTIVATED, "2": BizState.ACTIVATED}


async def test_conflict_while_an_install_runs(env: Env) -> None:
    base = await env.base("sim-0001")
    spec = BizSpec("slow", "1.0.0", "file:///tmp/slow.jar")
    first = asyncio.create_task(env.tunnel.install_biz(base, spec))
    await asyncio.sleep(INSTALL_LATENCY / 3)
    second = await env.tunnel.uninstall_biz(base, "slow", "1.0.0")
    assert second.outcome is CommandOutcome.CONFLICT and "exist unfinished command" in second.message
    assert (await first).ok


async def test_failures_come_back_as_results(env: Env) -> None:
    base = await env.base("sim-0002")
    failed = await env.tunnel.install_biz(base, BizSpec("bad", "1.0.0", "file:///tmp/bad.jar"))
    assert failed.outcome is CommandOutcome.FAILED
    assert "Install Biz: bad:1.0.0 fail" in failed.message and "RuntimeException" in failed.message
    bad_url = await env.tunnel.install_biz(base, BizSpec("ftp", "1.0.0", "ftp://repo/x.jar"))
    assert bad_url.outcome is CommandOutcome.FAILED and bad_url.message.startswith("Internal Error:")
    assert not [b for b in await env.tunnel.query_all_biz(base) if b.name in ("bad", "ftp")]


async def test_batch_install(env: Env) -> None:
    base = await env.base("sim-0002")
    specs = [
        BizSpec("ba", "1", "file:///tmp/ba.jar"),
        BizSpec("bb", "1", "file:///tmp/bb.jar"),
        BizSpec("bad", "1", "file:///tmp/bad-1.jar"),
    ]
    results = await env.tunnel.batch_install_biz(base, specs)
    assert {url: r.outcome for url, r in results.items()} == {
        "file:///tmp/ba.jar": CommandOutcome.SUCCESS,
        "file:///tmp/bb.jar": CommandOutcome.SUCCESS,
        "file:///tmp/bad-1.jar": CommandOutcome.FAILED,
    }
    again = await env.tunnel.batch_install_biz(base, specs[:1])
    assert again["file:///tmp/ba.jar"].outcome is CommandOutcome.REPEAT
    assert await env.tunnel.batch_install_biz(base, []) == {}


async def test_config_and_the_fence_reach_arklet(env: Env) -> None:
    """installBiz carries args, envs and bizModelVersion; an uninstall with another pod's bizModelVersion comes
    back EXPIRED (arklet 1.4.3's rule, simulated) and leaves the biz running; its owner's goes through."""
    base = await env.base("sim-0000")
    spec = BizSpec("fenced", "1.0.0", "file:///tmp/fenced.jar").with_config(["--a=1"], {"K": "v", "E": ""})
    assert (await env.tunnel.install_biz(base, spec, biz_model_version="uid-1")).ok
    arklet = env.sim.base("sim-0000").arklet
    sent = arklet.bizs["fenced:1.0.0"]
    assert (sent.args, sent.envs, arklet.model_versions["fenced:1.0.0"]) == (("--a=1",), {"K": "v", "E": ""}, "uid-1")
    stale = await env.tunnel.uninstall_biz(base, "fenced", "1.0.0", biz_model_version="uid-2")
    assert stale.outcome is CommandOutcome.EXPIRED and "command is expired" in stale.message
    assert "fenced:1.0.0" in arklet.bizs
    assert (await env.tunnel.uninstall_biz(base, "fenced", "1.0.0", biz_model_version="uid-1")).ok


def _requests(command: str) -> float:
    return sum(REGISTRY.get_sample_value("vkprovider_tunnel_request_duration_seconds_count",
                                         {"tunnel": "http", "command": command, "result": result}) or 0.0
               for result in ("success", "failed", "timeout", "transport_error"))


async def test_a_base_without_batch_installs_is_served_one_by_one() -> None:
    """arklet < 2.1.7 answers batchInstallBiz with CMD_NOT_FOUND: the bizs are installed one by one (each with its
    own bizModelVersion), and that base is never sent a batch again."""
    events = RecordingEvents()
    tunnel = HttpTunnel(_settings())
    await tunnel.start(events)
    sim = Simulator(SimConfig(bases=1, endpoint=f"http://127.0.0.1:{tunnel.port}", heartbeat_interval_s=5,
                              heartbeat_first_spread_s=0.05, token_secret=SECRET, identity_prefix="old",
                              behaviour=ArkletBehaviour(install_latency_s=0.01, batch_install=False,
                                                        fail_bizs=frozenset({"bad"}))))
    await sim.start()
    try:
        deadline = time.monotonic() + 3
        while "old-0000" not in events.latest():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        base = events.latest()["old-0000"]
        a = BizSpec("oa", "1", "file:///tmp/oa.jar").with_config(["--x"], {})
        b = BizSpec("bad", "1", "file:///tmp/bad.jar")
        batches = _requests("batchInstallBiz")
        results = await tunnel.batch_install_biz(base, [a, b], biz_model_versions={a.key: "uid-a"})
        assert {url: r.outcome for url, r in results.items()} == {a.url: CommandOutcome.SUCCESS,
                                                                  b.url: CommandOutcome.FAILED}
        arklet = sim.base("old-0000").arklet
        assert (arklet.batch_calls, arklet.install_calls) == (0, 2)
        assert arklet.model_versions == {"oa:1": "uid-a"} and arklet.bizs["oa:1"].args == ("--x",)
        assert _requests("batchInstallBiz") == batches + 1  # the one CMD_NOT_FOUND
        c = BizSpec("oc", "1", "file:///tmp/oc.jar")
        assert (await tunnel.batch_install_biz(base, [c]))[c.url].ok
        assert _requests("batchInstallBiz") == batches + 1  # not asked again
        assert (arklet.batch_calls, arklet.install_calls) == (0, 3)
    finally:
        await sim.stop()
        await tunnel.stop()


async def test_health(env: Env) -> None:
    health = await env.tunnel.health(await env.base("sim-0000"))
    assert health == BaseHealth(
        cpu_count=4,
        memory_max_bytes=512 * 1024 * 1024,
        memory_committed_bytes=96 * 1024 * 1024,
        memory_used_bytes=90 * 1024 * 1024,
        heap_max_bytes=2048 * 1024 * 1024,
        master_biz_name="base",
        master_biz_version="1.0.0",
        master_biz_state="ACTIVATED",
    )


async def test_concurrency_is_limited_per_base_not_globally(env: Env) -> None:
    base_a, base_b = await env.base("sim-0000"), await env.base("sim-0001")
    tasks = [
        asyncio.create_task(env.tunnel.install_biz(base_a, BizSpec(f"lim{i}", "1", f"file:///l{i}.jar")))
        for i in range(3)
    ]
    tasks.append(asyncio.create_task(env.tunnel.install_biz(base_b, BizSpec("limb", "1", "file:///lb.jar"))))
    await asyncio.sleep(INSTALL_LATENCY / 2)
    installing_a = [k for k, b in env.sim.base("sim-0000").arklet.bizs.items() if k.startswith("lim")]
    installing_b = [k for k in env.sim.base("sim-0001").arklet.bizs if k.startswith("limb")]
    assert len(installing_a) == 2  # arklet_max_inflight_per_base=2: the third waits
    assert installing_b == ["limb:1"]  # another base is not held up by base A
    assert all(r.ok for r in await asyncio.gather(*tasks))


async def test_stopped_base_fails_fast_and_restarts_empty(env: Env) -> None:
    identity = "sim-0002"
    base = await env.base(identity)
    assert (await env.tunnel.install_biz(base, BizSpec("lost", "1", "file:///lost.jar"))).ok
    await env.sim.stop_base(identity)
    for call in (
        env.tunnel.health(base),
        env.tunnel.query_all_biz(base),
        env.tunnel.install_biz(base, BizSpec("x", "1", "file:///x.jar")),
    ):
        started = time.monotonic()
        with pytest.raises(TunnelError, match="sim-0002"):
            await call
        assert time.monotonic() - started < 2.0
    count = len(env.events.heartbeats)
    await asyncio.sleep(0.5)
    assert identity not in {hb.identity for hb in env.events.heartbeats[count:]}
    await env.sim.start_base(identity)
    assert env.sim.base(identity).port == base.port
    assert await env.tunnel.query_all_biz(base) == []
    count = len(env.events.heartbeats)
    deadline = time.monotonic() + 3
    while identity not in {hb.identity for hb in env.events.heartbeats[count:]}:
        assert time.monotonic() < deadline, "restarted base does not heartbeat"
        await asyncio.sleep(0.05)


async def test_base_that_never_answers_times_out(env: Env) -> None:
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.read()
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    silent = BaseHeartbeat(BaseMetadata("silent", "base", "1", "default"), "silent", "127.0.0.1", port)
    try:
        started = time.monotonic()
        with pytest.raises(TunnelError, match="no answer within 1s"):
            await env.tunnel.health(silent)
        assert time.monotonic() - started < 2.5  # a timeout is not retried
    finally:
        server.close()


async def test_sim_reproduces_arklet_http_quirks(env: Env) -> None:
    port = env.sim.base("sim-0000").port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
    raw = await asyncio.wait_for(reader.read(), 2)  # the connection closes after the body
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head == b"HTTP/1.1 200 OK"  # no Content-Type, no Content-Length
    assert orjson.loads(body)["code"] == "SUCCESS"
    writer.close()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/health") as resp:
            assert resp.status == 500
        with pytest.raises(TimeoutError):  # malformed JSON: no answer at all
            async with session.post(
                f"http://127.0.0.1:{port}/installBiz", data=b"{nope", timeout=aiohttp.ClientTimeout(total=0.3)
            ) as resp:
                await resp.read()
        async with session.post(f"http://127.0.0.1:{port}/installBiz", data=b"") as resp:
            assert orjson.loads(await resp.read())["code"] == "CMD_PROCESS_INTERNAL_ERROR"


async def test_control_api(env: Env) -> None:
    url = f"http://127.0.0.1:{env.control_port}"
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{url}/bases/sim-0001/bizs", json={"bizName": "orphan", "bizVersion": "9"}
        ) as r:
            assert (await r.json())["code"] == "SUCCESS"
        async with session.get(f"{url}/bases") as r:
            bases = {b["identity"]: b for b in await r.json()}
        assert {"bizName": "orphan", "bizVersion": "9", "bizState": "activated", "args": [],
                "envs": {}} in bases["sim-0001"]["bizs"]
        assert bases["sim-0001"]["running"] is True and bases["sim-0001"]["clusterName"] == "default"
        async with session.post(f"{url}/bases/nobody/stop") as r:
            assert r.status == 404
        async with session.post(f"{url}/bases/sim-0001/usage?metaspaceMiB=480") as r:
            answer = await r.json()
        mib = 1024 * 1024
        assert (answer["metaspaceUsedBytes"], answer["metaspaceMaxBytes"]) == (480 * mib, 512 * mib), answer
        health = await env.tunnel.health(await env.base("sim-0001"))
        assert health.memory_used_bytes == 480 * 1024 * 1024 and health.memory_max_bytes == 512 * 1024 * 1024
        for bad in ("-1", "x", "nan", "inf", ""):
            async with session.post(f"{url}/bases/sim-0001/usage?metaspaceMiB={bad}") as r:
                assert r.status == 400, bad
        async with session.get(f"{url}/bases") as r:
            bases = {b["identity"]: b for b in await r.json()}
        assert bases["sim-0001"]["usage"]["metaspaceUsedBytes"] == 480 * mib and bases["sim-0001"]["healthCalls"] >= 1
        assert bases["sim-0000"]["usage"]["metaspaceUsedBytes"] == 90 * mib
        async with session.post(f"{url}/bases?count=1") as r:
            (added,) = await r.json()
        assert added["identity"] == "sim-0003"
        await env.base("sim-0003")
        async with session.post(f"{url}/reset-stats") as r:
            assert r.status == 200
        async with session.get(f"{url}/stats") as r:
            stats = await r.json()
        assert (stats["bases"], stats["installCalls"], stats["installsByBiz"]) == (4, 0, {})
        assert stats["bizs"] >= 1


# --- a hostile heartbeat endpoint -------------------------------------------------------------------------

VALID = {
    "baseMetadata": {"clusterName": "default", "identity": "10.0.0.5", "name": "base", "version": "1.0.0"},
    "localHostName": "h",
    "localIP": "10.0.0.5",
    "port": 1238,
    "state": "activated",
}
_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
_not_a_string = st.none() | st.booleans() | st.integers() | st.lists(st.integers(), max_size=2) | st.just({})
_bad_label_value = st.sampled_from(["", "a b", "x" * 64, "-lead", "ünï", "a/b"])
_BAD_BY_FIELD: dict[tuple[str, ...], st.SearchStrategy[Any]] = {
    ("baseMetadata",): _not_a_string | st.text(max_size=5),
    ("baseMetadata", "identity"): _not_a_string | _bad_label_value | st.sampled_from(["a_b", "a.", "A..b_"]),
    ("baseMetadata", "name"): _not_a_string | _bad_label_value,
    ("baseMetadata", "version"): _not_a_string | _bad_label_value,
    ("baseMetadata", "clusterName"): _not_a_string | _bad_label_value,
    ("localIP",): _not_a_string | st.sampled_from(["", "localhost", "10.0.0.256", "1.2.3", "::g"]),
    ("port",): st.none()
    | st.booleans()
    | st.text(max_size=5)
    | st.integers(max_value=0)
    | st.integers(min_value=65536)
    | st.floats(allow_nan=False, allow_infinity=False),
    ("state",): _not_a_string | st.sampled_from(["", "dead", "ACTIVE"]),
    ("labels",): st.lists(st.text(max_size=3), max_size=2)
    | st.dictionaries(st.just("topology.kubernetes.io/zone"), _bad_label_value | _not_a_string, min_size=1),
}


@st.composite
def _broken_heartbeat(draw: st.DrawFn) -> bytes:
    body = orjson.loads(orjson.dumps(VALID))
    path = draw(st.sampled_from(sorted(_BAD_BY_FIELD)))
    target = body
    for key in path[:-1]:
        target = target[key]
    if draw(st.booleans()) and path[-1] not in ("labels", "state"):
        del target[path[-1]]  # a required key is missing
    else:
        target[path[-1]] = draw(_BAD_BY_FIELD[path])
    return json.dumps(body).encode()  # stdlib: integers beyond 64 bits are fair game


_malformed_bodies = st.one_of(
    _broken_heartbeat(),
    _json_values.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=200).filter(lambda b: not b.strip().startswith(b"{")),
    st.integers(min_value=MAX_BODY + 1, max_value=MAX_BODY * 3).map(lambda n: b'{"x":"' + b"a" * n + b'"}'),
)


async def test_fuzzed_heartbeats_are_all_rejected_and_the_server_keeps_serving() -> None:
    bodies: list[bytes] = []

    @settings(
        max_examples=500,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(_malformed_bodies)
    def collect(body: bytes) -> None:
        bodies.append(body)

    collect()
    assert len(bodies) >= 500
    events = RecordingEvents()
    tunnel = HttpTunnel(_settings())
    await tunnel.start(events)
    url = f"http://127.0.0.1:{tunnel.port}/heartbeat"
    statuses: list[int] = []
    limit = asyncio.Semaphore(16)
    rejected_before = sum(
        REGISTRY.get_sample_value("vkprovider_heartbeats_total", {"tunnel": "http", "result": r}) or 0
        for r in ("bad_json", "invalid", "too_large")
    )
    try:
        async with aiohttp.ClientSession() as session:

            async def send(body: bytes) -> None:
                async with limit, session.post(url, data=body) as resp:
                    await resp.read()
                    statuses.append(resp.status)

            await asyncio.gather(*(send(body) for body in bodies))
            assert len(statuses) == len(bodies)
            assert all(400 <= s < 500 for s in statuses), sorted(set(statuses))
            assert {400, 413} <= set(statuses)
            assert events.heartbeats == []
            async with session.post(url, data=orjson.dumps(VALID), headers=_auth("10.0.0.5")) as resp:
                assert (resp.status, await resp.text()) == (200, "SUCCESS")
        assert [hb.identity for hb in events.heartbeats] == ["10.0.0.5"]
        rejected_after = sum(
            REGISTRY.get_sample_value("vkprovider_heartbeats_total", {"tunnel": "http", "result": r}) or 0
            for r in ("bad_json", "invalid", "too_large")
        )
        assert rejected_after - rejected_before == len(bodies)
    finally:
        await tunnel.stop()


async def test_heartbeat_token() -> None:
    events = RecordingEvents()
    tunnel = HttpTunnel(_settings(heartbeat_token="s3cret", heartbeat_secret=None))
    await tunnel.start(events)
    url = f"http://127.0.0.1:{tunnel.port}/heartbeat"
    try:
        async with aiohttp.ClientSession() as session:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                async with session.post(url, data=orjson.dumps(VALID), headers=headers) as resp:
                    assert resp.status == 401
                    assert "error" in await resp.json()
            async with session.post(
                url, data=orjson.dumps(VALID), headers={"Authorization": "Bearer s3cret"}
            ) as r:
                assert r.status == 200
            async with session.get(url) as resp:
                assert resp.status == 405
        assert len(events.heartbeats) == 1
    finally:
        await tunnel.stop()


async def test_sim_with_token_is_accepted() -> None:
    events = RecordingEvents()
    tunnel = HttpTunnel(_settings(heartbeat_token="tok", heartbeat_secret=None))
    await tunnel.start(events)
    sim = Simulator(
        SimConfig(
            bases=2,
            endpoint=f"http://127.0.0.1:{tunnel.port}",
            heartbeat_interval_s=5,
            heartbeat_first_spread_s=0.05,
            token="tok",
            identity_prefix="tok",
        )
    )
    await sim.start()
    try:
        deadline = time.monotonic() + 3
        while set(events.latest()) != {"tok-0000", "tok-0001"}:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert sim.stats()["heartbeatFailures"] == 0
    finally:
        await sim.stop()
        await tunnel.stop()
