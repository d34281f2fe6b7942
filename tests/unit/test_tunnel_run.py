"""Each tunnel's ``run()`` is its root task (issue 28): it runs as long as the tunnel lives, and returns or raises
only when the tunnel died - the MQTT connection loop ended, the heartbeat listener closed - or after ``stop()``.
Cancelling ``run()`` leaves the tunnel alone (``stop()`` ends it). No broker: the MQTT tunnel is pointed at a port
nothing listens on (its loop keeps retrying), or its client is made to fail the way a bug would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import aiomqtt
import pytest

from vkprovider.config import Settings
from vkprovider.core.model import BaseHealth, BaseHeartbeat, BaseMetadata, BizInfo, BizSpec
from vkprovider.tunnels.base import Refusal, TunnelError
from vkprovider.tunnels.http_tunnel import HttpTunnel
from vkprovider.tunnels.mqtt import MqttTunnel

LIVES_S = 0.5  # how long a run() that must not end is watched


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
