"""Each tunnel's ``run()`` is its root task (issue 28): it runs as long as the tunnel lives, and returns or raises
only when the tunnel died - the MQTT connection loop ended, the heartbeat listener closed - or after ``stop()``;
called again after it raised, it starts the tunnel's work afresh (the supervisor keeps it). Cancelling ``run()``
leaves the tunnel alone (``stop()`` ends it). The MQTT tunnel is pointed at a port nothing listens on (its loop
keeps retrying), its client made to fail the way a bug would, or given a mosquitto of its own to lose and get back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import aiomqtt
import pytest

from tests.helpers import wait_for
from tests.mqtt_broker import MqttBroker
from vkprovider.config import Settings
from vkprovider.core.backoff import Backoff
from vkprovider.core.model import BaseHealth, BaseHeartbeat, BaseMetadata, BizInfo, BizSpec
from vkprovider.supervisor import Supervisor
from vkprovider.tunnels.base import Refusal, TunnelError
from vkprovider.tunnels.http_tunnel import HttpTunnel
from vkprovider.tunnels.mqtt import MqttTunnel

LIVES_S = 0.5  # how long a run() that must not end is watched
QUICK = Backoff(initial_s=0.05, max_s=60.0)  # the supervisor restarts a dead tunnel task at once


class Sink:
    def on_heartbeat(self, heartbeat: BaseHeartbeat, *, authenticated: bool = False) -> Refusal | None:
        return None

    def address_of(self, identity: str) -> str | None:
        return None

    def on_health(self, identity: str, health: BaseHealth) -> None:
        pass

    def on_bizs(self, identity: str, bizs: Sequence[BizInfo]) -> None:
        pass

    def baseline(self, metadata: BaseMetadata) -> list[BizSpec] | None:
        return None


def unreachable_mqtt() -> MqttTunnel:
    return MqttTunnel(Settings(env="run", mqtt_enabled=True, mqtt_broker="127.0.0.1", mqtt_port=1))


def connection_loop() -> asyncio.Task[object]:
    (loop,) = [task for task in asyncio.all_tasks() if task.get_name() == "mqtt-tunnel"]
    return loop


async def still_running(task: asyncio.Task[None]) -> bool:
    done, _ = await asyncio.wait({task}, timeout=LIVES_S)
    return not done


async def test_mqtt_run_lives_while_the_loop_retries_and_returns_after_stop() -> None:
    tunnel = unreachable_mqtt()
    await tunnel.start(Sink())
    try:
        assert not tunnel.connected and tunnel.last_error is not None
        run = asyncio.create_task(tunnel.run())
        assert await still_running(run)  # not connected, retrying: the tunnel lives
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        assert not connection_loop().done()  # cancelling run() is not stopping the tunnel
        again = asyncio.create_task(tunnel.run())
        assert await still_running(again)
    finally:
        await tunnel.stop()
    assert await asyncio.wait_for(again, 5) is None


async def test_mqtt_run_raises_when_the_connection_loop_is_cancelled() -> None:
    tunnel = unreachable_mqtt()
    await tunnel.start(Sink())
    try:
        run = asyncio.create_task(tunnel.run())
        connection_loop().cancel()
        with pytest.raises(TunnelError, match="connection loop was cancelled"):
            await asyncio.wait_for(run, 5)
    finally:
        await tunnel.stop()


async def test_mqtt_run_raises_what_killed_the_connection_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(self: aiomqtt.Client) -> aiomqtt.Client:
        raise RuntimeError("a bug in the connection loop")

    monkeypatch.setattr(aiomqtt.Client, "__aenter__", broken)
    tunnel = unreachable_mqtt()
    await asyncio.wait_for(tunnel.start(Sink()), 5)  # a loop that dies at once does not hold the start
    try:
        with pytest.raises(RuntimeError, match="a bug in the connection loop"):
            await asyncio.wait_for(tunnel.run(), 5)
    finally:
        with contextlib.suppress(RuntimeError):  # stop() awaits the dead loop (Provider.stop suppresses it)
            await tunnel.stop()


async def test_mqtt_run_before_start_is_an_error() -> None:
    with pytest.raises(TunnelError, match="not started"):
        await unreachable_mqtt().run()


async def test_http_run_lives_with_the_listener_and_raises_when_it_closes() -> None:
    tunnel = HttpTunnel(Settings(http_tunnel_host="127.0.0.1", http_tunnel_port=0))
    await tunnel.start(Sink())
    try:
        run = asyncio.create_task(tunnel.run())
        assert await still_running(run)
        assert tunnel._served is not None
        await tunnel._served.stop()  # the listener closed under the tunnel
        with pytest.raises(TunnelError, match="heartbeat listener closed"):
            await asyncio.wait_for(run, 5)
    finally:
        await tunnel.stop()


async def test_http_run_returns_after_stop() -> None:
    tunnel = HttpTunnel(Settings(http_tunnel_host="127.0.0.1", http_tunnel_port=0))
    await tunnel.start(Sink())
    run = asyncio.create_task(tunnel.run())
    try:
        assert await still_running(run)
        run.cancel()  # cancelling run() leaves the listener serving
        with pytest.raises(asyncio.CancelledError):
            await run
        run = asyncio.create_task(tunnel.run())
        assert await still_running(run)
    finally:
        await tunnel.stop()
    assert await asyncio.wait_for(run, 5) is None


async def test_http_run_before_start_is_an_error() -> None:
    with pytest.raises(TunnelError, match="not started"):
        await HttpTunnel(Settings(http_tunnel_host="127.0.0.1", http_tunnel_port=0)).run()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MqttBroker]:
    """A mosquitto of this test's own, to stop and start again without disturbing others."""
    own = MqttBroker.create(tmp_path)
    own.start()
    try:
        yield own
    finally:
        own.stop()


@pytest.fixture
async def kept(broker: MqttBroker) -> AsyncIterator[tuple[MqttTunnel, Supervisor]]:
    """An MQTT tunnel connected to ``broker`` whose run() is kept by a supervisor, as ``Provider`` does."""
    tunnel = MqttTunnel(Settings(env="run", mqtt_enabled=True, mqtt_broker=broker.host, mqtt_port=broker.port,
                                 mqtt_username=broker.username, mqtt_password=broker.password,
                                 mqtt_allow_insecure_password=True))
    await tunnel.start(Sink())
    assert tunnel.connected, tunnel.last_error
    supervisor = Supervisor()
    supervisor.keep("tunnel-mqtt", tunnel.run, backoff=QUICK)
    try:
        yield tunnel, supervisor
    finally:
        supervisor.stopping()
        await tunnel.stop()
        await supervisor.stop()


def supervisor_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "vkprovider.supervisor"]


async def test_a_broker_that_goes_away_and_comes_back_is_reconnected(
        kept: tuple[MqttTunnel, Supervisor], broker: MqttBroker, caplog: pytest.LogCaptureFixture) -> None:
    tunnel, supervisor = kept
    connections = tunnel.connections
    await asyncio.to_thread(broker.stop)
    await wait_for(lambda: not tunnel.connected, 15.0, what="the tunnel saw the broker go")
    await asyncio.to_thread(broker.start)
    await wait_for(lambda: tunnel.connected and tunnel.connections > connections, 30.0, what="reconnected")
    assert supervisor.failed is None and not supervisor.tasks["tunnel-mqtt"].done()
    assert supervisor_lines(caplog) == []  # a lost broker is the loop's to retry, not a dead task


async def test_a_connection_loop_killed_by_a_bug_is_restarted_and_reported_once(
        kept: tuple[MqttTunnel, Supervisor], broker: MqttBroker, caplog: pytest.LogCaptureFixture) -> None:
    tunnel, supervisor = kept
    connection = tunnel._connection
    deliver = connection._on_message
    bugs = 0

    def buggy(message: aiomqtt.Message) -> None:
        nonlocal bugs
        if bugs == 0:
            bugs += 1
            raise RuntimeError("a bug in message handling")
        deliver(message)

    connection._on_message = buggy
    connections = tunnel.connections
    async with aiomqtt.Client(broker.host, broker.port, username=broker.username,
                              password=broker.password) as base:
        await base.publish("koupleless_run/base-1/base/heart", b"{}", qos=1)
    await wait_for(lambda: tunnel.connected and tunnel.connections > connections, 30.0, what="a new loop connected")
    assert bugs == 1 and supervisor.failed is None
    assert [line.split(": restarting")[0] for line in supervisor_lines(caplog)] == [
        "root task tunnel-mqtt failed (RuntimeError: a bug in message handling)"]


async def test_a_closed_heartbeat_listener_is_opened_again_by_the_supervisor(
        caplog: pytest.LogCaptureFixture) -> None:
    tunnel = HttpTunnel(Settings(http_tunnel_host="127.0.0.1", http_tunnel_port=0))
    await tunnel.start(Sink())
    supervisor = Supervisor()
    supervisor.keep("tunnel-http", tunnel.run, backoff=QUICK)
    try:
        closed = tunnel._served
        assert closed is not None
        await closed.stop()  # the listener closed under the tunnel
        await wait_for(lambda: tunnel._served is not closed, 15.0, what="listening again")
        _, writer = await asyncio.open_connection("127.0.0.1", tunnel.port)
        writer.close()
        assert supervisor.failed is None
        assert [line.split(": restarting")[0] for line in supervisor_lines(caplog)] == [
            f"root task tunnel-http failed (TunnelError: the heartbeat listener closed (port {closed.port}))"]
    finally:
        supervisor.stopping()
        await tunnel.stop()
        await supervisor.stop()
