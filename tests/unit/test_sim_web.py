"""The simulator's bases with addresses of their own and web servers for their bizs (no control plane: local sockets
only): the biz HTTP paths, the health knob, heartbeats from each base's own address accepted by vkprovider's HTTP
tunnel, and module probes run by vkprovider.probes against a simulated base."""

from __future__ import annotations

import argparse
import random
import socket
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.helpers import wait_for
from vkprovider.config import Settings
from vkprovider.core.model import BaseHealth, BaseHeartbeat, BaseMetadata, BizInfo, BizSpec
from vkprovider.core.probe import container_probes
from vkprovider.probes import ContainerInput, ProbeManager
from vkprovider.sim import ArkletBehaviour, SimConfig, Simulator
from vkprovider.sim.cli import add_arguments, config_from_args
from vkprovider.sim.control import start_control_api
from vkprovider.sim.simulator import base_address
from vkprovider.sim.web import BizHealth
from vkprovider.tunnels.base import Refusal
from vkprovider.tunnels.http_tunnel import HttpTunnel

SECRET = "sim-web-secret"
QUICK = ArkletBehaviour(install_latency_s=0.0, uninstall_latency_s=0.0)


def _prefix() -> str:
    """A loopback /24 of this test's own (helpers' tests may run at the same time on this machine)."""
    return f"127.77.{random.randint(1, 250)}.1"


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as resp:
        return resp.status, await resp.text()


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[Simulator]:
    first = _prefix()
    port = _free_port(first)
    simulator = Simulator(SimConfig(bases=2, loopback_ips=first, web_port=port, behaviour=QUICK))
    await simulator.start(heartbeats=False)
    try:
        yield simulator
    finally:
        await simulator.stop()


@pytest_asyncio.fixture
async def control(sim: Simulator) -> AsyncIterator[str]:
    """The simulator's control API (the CLI serves it in a real run)."""
    runner, port = await start_control_api(sim, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_each_base_has_its_own_address_and_serves_its_bizs_there(sim):
    b0, b1 = sim.bases.values()
    assert b0.address != b1.address and b0.web_port == b1.web_port  # one port, like 8080 on every JVM
    assert (b0.heartbeat_data()["localIP"], b1.heartbeat_data()["localIP"]) == (b0.address, b1.address)
    await b0.arklet.install_direct("biz1", "0.0.1", "file:///tmp/biz1.jar")
    await b1.arklet.install_direct("biz1", "0.0.2", "file:///tmp/biz1.jar")
    async with aiohttp.ClientSession() as session:
        assert await _get(session, f"http://{b0.address}:{b0.web_port}/biz1/version") == (200, "0.0.1")
        assert await _get(session, f"http://{b1.address}:{b1.web_port}/biz1/version") == (200, "0.0.2")
        assert await _get(session, f"http://{b0.address}:{b0.web_port}/biz1/") == (200, "biz1:0.0.1")
        assert await _get(session, f"http://{b0.address}:{b0.web_port}/biz1/health") == (200, '{"status":"UP"}')
        assert (await _get(session, f"http://{b0.address}:{b0.web_port}/biz1/nothing"))[0] == 404
        assert (await _get(session, f"http://{b0.address}:{b0.web_port}/biz2/version"))[0] == 404
        assert await _get(session, f"http://{b0.address}:{b0.web_port}/actuator/health") == (200, '{"status":"UP"}')
        # the arklet answers on the base's own address too
        async with session.post(f"http://{b1.address}:{b1.port}/queryAllBiz", data=b"{}") as resp:
            assert b'"bizVersion":"0.0.2"' in await resp.read()


async def test_a_biz_that_is_not_activated_is_404(sim):
    base = next(iter(sim.bases.values()))
    await base.arklet.install_direct("biz1", "0.0.1", "file:///tmp/biz1.jar")
    url = f"http://{base.address}:{base.web_port}/biz1/version"
    async with aiohttp.ClientSession() as session:
        assert (await _get(session, url))[0] == 200
        base.arklet.bizs["biz1:0.0.1"].move("deactivated", "Switched", now_ms=1)
        assert (await _get(session, url))[0] == 404
        await base.arklet.uninstall({"bizName": "biz1", "bizVersion": "0.0.1"})
        assert (await _get(session, url))[0] == 404
        await base.set_state("deactivated")
        assert (await _get(session, f"http://{base.address}:{base.web_port}/actuator/health"))[0] == 503


async def test_the_health_knob_through_the_control_api(sim, control):
    base = next(iter(sim.bases.values()))
    await base.arklet.install_direct("biz1", "0.0.1", "file:///tmp/biz1.jar")
    control = f"{control}/bases/{base.identity}/bizs/biz1/health"
    health = f"http://{base.address}:{base.web_port}/biz1/health"
    async with aiohttp.ClientSession() as session:
        async with session.post(control, json={"status": 500}) as resp:
            assert resp.status == 200
        assert await _get(session, health) == (500, '{"status":"DOWN"}')
        await base.arklet.uninstall({"bizName": "biz1", "bizVersion": "0.0.1"})
        await base.arklet.install_direct("biz1", "0.0.1", "file:///tmp/biz1.jar")
        assert (await _get(session, health))[0] == 500  # the knob outlives a reinstall
        async with session.get(control) as resp:
            assert (await resp.json())["status"] == 500
        for bad in ({"status": 42}, {"status": "500"}, {"delaySeconds": 600}, [1]):
            async with session.post(control, json=bad) as resp:
                assert resp.status == 400, bad
        async with session.post(control, json={"status": 200}) as resp:
            assert resp.status == 200
        assert (await _get(session, health))[0] == 200
        assert base.biz_health == {}


async def test_the_default_is_unchanged():
    simulator = Simulator(SimConfig(bases=2, behaviour=QUICK))
    await simulator.start(heartbeats=False)
    try:
        for base in simulator.bases.values():
            assert base.address == "127.0.0.1" and base.web is None and base.web_port is None
            assert base.heartbeat_data()["localIP"] == "127.0.0.1"
            assert base.describe()["address"] == "127.0.0.1"
    finally:
        await simulator.stop()


def test_loopback_addresses_and_bad_ones():
    config = SimConfig(loopback_ips="127.10.0.254")
    assert [base_address(config, i) for i in (0, 1, 2)] == ["127.10.0.254", "127.10.0.255", "127.10.1.0"]
    with pytest.raises(ValueError, match="outside the loopback network"):
        base_address(SimConfig(loopback_ips="127.255.255.255"), 1)
    with pytest.raises(ValueError, match="outside the loopback network"):
        Simulator(SimConfig(loopback_ips="10.0.0.1"))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--loopback-ips", "127.10.0.1", "--bases", "3"])
    assert (config_from_args(args).loopback_ips, config_from_args(args).web_port) == ("127.10.0.1", 8080)
    assert config_from_args(parser.parse_args([])).web_port is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--loopback-ips", "10.0.0.1"])


class Heartbeats:
    """The controllers' side of a heartbeat, reduced to remembering it."""

    def __init__(self) -> None:
        self.seen: dict[str, BaseHeartbeat] = {}

    def on_heartbeat(self, heartbeat: BaseHeartbeat, *, authenticated: bool = False) -> Refusal | None:
        self.seen[heartbeat.identity] = heartbeat
        return None

    def address_of(self, identity: str) -> str | None:
        hb = self.seen.get(identity)
        return hb.ip if hb is not None else None

    def on_health(self, identity: str, health: BaseHealth) -> None:
        raise AssertionError("the HTTP tunnel returns health to its caller")

    def on_bizs(self, identity: str, bizs: Sequence[BizInfo]) -> None:
        raise AssertionError("the HTTP tunnel returns bizs to its caller")

    def baseline(self, metadata: BaseMetadata) -> list[BizSpec]:
        return []


async def test_heartbeats_come_from_each_bases_own_address():
    """vkprovider's HTTP tunnel takes a heartbeat only when localIP is the address it came from (no
    VKP_BASE_NETWORKS here): every base's is accepted, and the tunnel reaches each arklet there."""
    events = Heartbeats()
    tunnel = HttpTunnel(Settings(http_tunnel_host="127.0.0.1", http_tunnel_port=0, heartbeat_secret=SECRET))
    await tunnel.start(events)  # type: ignore[arg-type]
    simulator = Simulator(SimConfig(bases=3, endpoint=f"http://127.0.0.1:{tunnel.port}", loopback_ips=_prefix(),
                                    heartbeat_interval_s=0.5, heartbeat_first_spread_s=0.1, token_secret=SECRET,
                                    behaviour=QUICK))
    await simulator.start()
    try:
        await wait_for(lambda: len(events.seen) == 3, timeout=20, what="a heartbeat from every base")
        for identity, base in simulator.bases.items():
            assert events.seen[identity].ip == base.address
            assert base.heartbeat_failures == 0
            await base.arklet.install_direct("biz1", f"0.0.{base.index}", "file:///tmp/biz1.jar")
            (biz,) = await tunnel.query_all_biz(events.seen[identity])
            assert biz.version == f"0.0.{base.index}"  # the tunnel called this base and no other
    finally:
        await simulator.stop()
        await tunnel.stop()


async def test_module_probes_against_a_simulated_base():
    """A module pod's readiness and liveness probes, as the controller will run them: the pod IP is the base's
    address, the path the biz's; the health knob flips readiness and then asks for a restart."""
    first = _prefix()
    simulator = Simulator(SimConfig(bases=1, loopback_ips=first, web_port=_free_port(first),
                                    behaviour=QUICK))
    await simulator.start(heartbeats=False)
    base = next(iter(simulator.bases.values()))
    container: dict[str, Any] = {
        "name": "biz1", "image": "http://h/biz1.jar", "ports": [{"name": "http", "containerPort": base.web_port}],
        "readinessProbe": {"httpGet": {"port": "http", "path": "/biz1/health"}, "periodSeconds": 1},
        "livenessProbe": {"httpGet": {"port": "http", "path": "/biz1/health"}, "periodSeconds": 1,
                          "failureThreshold": 3},
    }
    probes = container_probes(container)
    changes: list[str] = []
    manager = ProbeManager(on_change=changes.append)
    try:
        await base.arklet.install_direct("biz1", "0.0.1", "file:///tmp/biz1.jar")
        manager.sync("ns/p", "u1", base.address, {"biz1": ContainerInput(probes, activated_at=time.monotonic())})
        await wait_for(lambda: manager.state("ns/p")["biz1"].ready, timeout=20, what="ready")
        base.biz_health["biz1"] = BizHealth(503)
        await wait_for(lambda: manager.state("ns/p")["biz1"].restart, timeout=20, what="a restart due")
        state = manager.state("ns/p")["biz1"]
        assert not state.ready and state.message == "Liveness probe failed: HTTP probe failed with statuscode: 503"
        assert changes.count("ns/p") >= 2
    finally:
        await manager.close()
        await simulator.stop()
