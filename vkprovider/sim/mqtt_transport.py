"""The simulated arklet's MQTT side: what arklet's ``MqttTunnel`` (arklet-tunnel-mqtt) does, for many bases.

Each simulated base behaves like one arklet with the MQTT tunnel: it subscribes (QoS 1) to
``koupleless_{env}/{identity}/+`` (commands) and ``koupleless_{env}/{identity}/base/baseline``, asks for its
baseline once per JVM start on ``base/queryBaseline``, heartbeats on ``base/heart`` and answers on
``base/bizOperation``, ``base/health``, ``base/simpleBiz`` and ``base/batchInstallBizResponse``, every payload
wrapped ``{"publishTimestamp": ms, "data": X}`` and published at QoS 1, not retained. Casing follows arklet's
fastjson output: enums by name (``"ACTIVATED"``, ``"SUCCESS"``), but ``simpleBiz[].state`` and the heartbeat's
``state`` lowercase.

The topic strings are written out here independently of ``vkprovider.tunnels.mqtt_tunnel`` on purpose: the
simulator plays the other side of the protocol, so a topic mistake in the tunnel must not be mirrored here.

Bases share ONE broker connection per simulator process (multiplexed by topic) instead of one connection per
base as real JVMs have: the protocol does not depend on connections (topics carry the identity and nothing uses
client ids, wills or sessions), and 1,000 connections from one process would measure the simulator, not
vkprovider. The connection restores every running base's subscriptions after a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import ssl
import time
from collections.abc import Callable
from typing import Any, Final

import aiomqtt
import orjson

from vkprovider.core.backoff import MQTT_RECONNECT
from vkprovider.sim.arklet import SimArklet, SimBiz

log = logging.getLogger(__name__)

QOS: Final = 1
SUBSCRIBE_BATCH: Final = 100
CONNECT_WAIT_S: Final = 15.0


def _now_ms() -> int:
    return int(time.time() * 1000)


def _upper_enums(value: Any) -> Any:
    """Arklet's fastjson writes enums by name: biz states inside answers become uppercase."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key == "bizState" and isinstance(item, str):
                out[key] = item.upper()
            elif key == "bizStateRecords" and isinstance(item, list):
                out[key] = [_record_upper(record) for record in item]
            else:
                out[key] = _upper_enums(item)
        return out
    if isinstance(value, list):
        return [_upper_enums(item) for item in value]
    return value


def _record_upper(record: Any) -> Any:
    if isinstance(record, dict) and isinstance(record.get("state"), str):
        return {**record, "state": record["state"].upper()}
    return record


def mqtt_output(envelope: dict[str, Any]) -> dict[str, Any]:
    """An HTTP-shaped arklet answer as arklet's ``Output`` over MQTT: code, message, data (no stack trace)."""
    output = {key: envelope[key] for key in ("code", "message", "data") if key in envelope}
    converted: dict[str, Any] = _upper_enums(output)
    return converted


def simple_biz(biz: SimBiz) -> dict[str, Any]:
    """Arklet's ``SimpleBizInfo``: lowercase state, the newest record with an uppercase (enum) state."""
    latest = biz.records[-1] if biz.records else None
    return {
        "name": biz.name,
        "version": biz.version,
        "state": biz.state.lower(),
        "latestStateRecord": None
        if latest is None
        else {
            "changeTime": latest.change_time_ms,
            "state": latest.state.upper(),
            "reason": latest.reason,
            "message": latest.message,
        },
    }


class MqttBaseTransport:
    """One simulated base's MQTT side. ``get_arklet`` is read per command, so a restart needs no new object."""

    def __init__(
        self,
        connection: MqttSimConnection,
        identity: str,
        get_arklet: Callable[[], SimArklet],
        heartbeat: Callable[[], dict[str, Any]],
        *,
        interval_s: float,
        first_spread_s: float,
        rng: random.Random,
        on_result: Callable[[bool], None],
    ) -> None:
        self.identity = identity
        self._connection = connection
        self._get_arklet = get_arklet
        self._heartbeat = heartbeat
        self._interval_s = interval_s
        self._first_spread_s = first_spread_s
        self._rng = rng
        self._on_result = on_result
        self._beats: asyncio.Task[None] | None = None
        self._commands: set[asyncio.Task[None]] = set()
        self.running = False
        # A test knob: while holding, queryAllBiz answers are taken (and stamped) but not published, as if the
        # broker or the network delayed them; ``release_biz_lists`` publishes them late, their stamps unchanged.
        self.holding_biz_lists = False
        self.held_biz_lists: list[bytes] = []
        self.query_calls = 0
        prefix = f"koupleless_{connection.env}/{identity}"
        self.prefix = prefix
        self.subscriptions = (f"{prefix}/+", f"{prefix}/base/baseline")

    def topic(self, kind: str) -> str:
        return f"{self.prefix}/base/{kind}"

    async def start(self) -> None:
        """The JVM starts: subscribe, ask for the baseline once, then heartbeat forever."""
        if self.running:
            return
        self.running = True
        await self._connection.attach(self)
        metadata = self._heartbeat()["baseMetadata"]
        await self._connection.publish(self.topic("queryBaseline"), metadata)
        self._beats = asyncio.create_task(self._beat_forever(), name=f"sim-mqtt-heartbeat {self.identity}")

    async def stop(self) -> None:
        """The JVM dies: no more heartbeats, no more answers, subscriptions gone."""
        self.running = False
        tasks = [t for t in (self._beats, *self._commands) if t is not None]
        self._beats = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._connection.detach(self)

    async def beat_once(self) -> bool:
        ok = await self._connection.publish(self.topic("heart"), self._heartbeat())
        self._on_result(ok)
        return ok

    async def _beat_forever(self) -> None:
        await asyncio.sleep(self._rng.uniform(0, self._first_spread_s))
        await self.beat_once()
        await asyncio.sleep(self._rng.uniform(0, self._interval_s))
        while True:
            await self.beat_once()
            await asyncio.sleep(self._interval_s * self._rng.uniform(0.98, 1.02))

    async def release_biz_lists(self, count: int | None = None) -> int:
        """Stop holding; publish the ``count`` oldest held answers (all when None) as they were taken, and drop
        the rest (answers a broker lost). Returns how many were published."""
        held, self.held_biz_lists = self.held_biz_lists, []
        self.holding_biz_lists = False
        released = held if count is None else held[:count]
        for payload in released:
            await self._connection.publish_raw(self.topic("simpleBiz"), payload)
        return len(released)

    def on_message(self, command: str, payload: bytes) -> None:
        """A command arrived (the last topic segment, ``baseline`` included); answered in its own task."""
        if not self.running:
            return
        task = asyncio.create_task(self._answer(command, payload), name=f"sim-mqtt {self.identity} {command}")
        self._commands.add(task)
        task.add_done_callback(self._commands.discard)

    async def _answer(self, command: str, payload: bytes) -> None:
        try:
            body = orjson.loads(payload) if payload.strip() else {}
        except orjson.JSONDecodeError:
            log.debug("base %s: %s with a body that is not JSON: no answer", self.identity, command)
            return
        arklet = self._get_arklet()
        if command in ("installBiz", "uninstallBiz"):
            if not isinstance(body, dict):
                return
            envelope = await arklet.handle(command, body)
            answer = {
                "command": command,
                "bizName": body.get("bizName"),
                "bizVersion": body.get("bizVersion"),
                "response": mqtt_output(envelope),
            }
            await self._connection.publish(self.topic("bizOperation"), answer)
        elif command == "health":
            await self._connection.publish(self.topic("health"), mqtt_output(arklet.health()))
        elif command == "queryAllBiz":
            self.query_calls += 1
            payload = self._connection.envelope([simple_biz(b) for b in arklet.bizs.values()])
            if self.holding_biz_lists:
                self.held_biz_lists.append(payload)
            else:
                await self._connection.publish_raw(self.topic("simpleBiz"), payload)
        elif command == "baseline":
            if not isinstance(body, list):
                return
            if not arklet.behaviour.batch_install:  # arklet < 1.4.1: one by one, then its biz list
                for item in body:
                    if isinstance(item, dict):
                        await arklet.handle("installBiz", item)
                payload = self._connection.envelope([simple_biz(b) for b in arklet.bizs.values()])
                await self._connection.publish_raw(self.topic("simpleBiz"), payload)
                return
            envelope = await arklet.handle("batchInstallBiz", {"bizList": body})
            answer = {"command": "batchInstallBiz", "response": mqtt_output(envelope)}
            await self._connection.publish(self.topic("batchInstallBizResponse"), answer)
        else:
            # arklet throws "unsupported command" and publishes nothing
            log.debug("base %s: unsupported command %s", self.identity, command)


class MqttSimConnection:
    """The one broker connection of a simulator process, shared by all its MQTT bases."""

    def __init__(
        self,
        *,
        broker: str,
        port: int,
        env: str,
        username: str | None = None,
        password: str | None = None,
        ca_path: str | None = None,
        client_prefix: str = "koupleless",
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self.broker = broker
        self.port = port
        self.env = env.lower()
        self._username = username
        self._password = password
        self._tls = ssl.create_default_context(cafile=ca_path) if ca_path else None
        self.client_id = f"{client_prefix}@@@sim-{secrets.token_hex(4)}"
        self._clock_ms = clock_ms
        self._bases: dict[str, MqttBaseTransport] = {}
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._attempted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.last_error: str | None = None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def start(self) -> None:
        """Connect; raises ``RuntimeError`` when the first attempt fails (a simulator without a broker is
        useless), then keeps the connection up in the background."""
        self._task = asyncio.create_task(self._run(), name="sim-mqtt")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._attempted.wait(), CONNECT_WAIT_S)
        if not self.connected:
            await self.stop()
            raise RuntimeError(f"sim cannot connect to the MQTT broker {self.broker}:{self.port}: "
                               f"{self.last_error or 'no answer'}")

    async def stop(self) -> None:
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            client = aiomqtt.Client(
                self.broker,
                self.port,
                username=self._username or None,
                password=self._password if self._username else None,
                identifier=self.client_id,
                clean_session=True,
                tls_context=self._tls,
                keepalive=30,
                max_inflight_messages=1000,
            )
            client.pending_calls_threshold = 100_000  # 1,000 bases publish at once: not worth a warning
            try:
                async with client:
                    await self._subscribe(client, [t for base in self._bases.values() for t in base.subscriptions])
                    self._client = client
                    self._connected.set()
                    self._attempted.set()
                    self.last_error = None
                    failures = 0
                    log.info("sim connected to %s:%d as %s", self.broker, self.port, self.client_id)
                    async for message in client.messages:
                        self._route(message)
            except aiomqtt.MqttError as exc:
                if str(exc) != self.last_error:
                    log.warning("sim mqtt connection to %s:%d: %s", self.broker, self.port, exc)
                self.last_error = str(exc)
            finally:
                self._client = None
                self._connected.clear()
            self._attempted.set()
            if self._stopping:
                break
            failures += 1
            await asyncio.sleep(MQTT_RECONNECT.delay(failures))

    @staticmethod
    async def _subscribe(client: aiomqtt.Client, topics: list[str]) -> None:
        for offset in range(0, len(topics), SUBSCRIBE_BATCH):
            await client.subscribe([(topic, QOS) for topic in topics[offset : offset + SUBSCRIBE_BATCH]])

    def _route(self, message: aiomqtt.Message) -> None:
        parts = message.topic.value.split("/")
        if len(parts) == 3:
            identity, command = parts[1], parts[2]
        elif len(parts) == 4 and parts[2] == "base" and parts[3] == "baseline":
            identity, command = parts[1], "baseline"
        else:
            return
        base = self._bases.get(identity)
        payload = message.payload
        if base is None or not isinstance(payload, bytes | bytearray):
            return
        base.on_message(command, bytes(payload))

    async def attach(self, base: MqttBaseTransport) -> None:
        self._bases[base.identity] = base
        client = self._client
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError):  # a reconnect subscribes again
                await self._subscribe(client, list(base.subscriptions))

    async def detach(self, base: MqttBaseTransport) -> None:
        if self._bases.get(base.identity) is base:
            del self._bases[base.identity]
        client = self._client
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.unsubscribe(list(base.subscriptions))

    def envelope(self, data: Any) -> bytes:
        """``data`` in arklet's envelope, stamped now."""
        return orjson.dumps({"publishTimestamp": self._clock_ms(), "data": data})

    async def publish(self, topic: str, data: Any) -> bool:
        """Publish ``data`` in arklet's envelope at QoS 1, not retained; False when it could not be sent."""
        return await self.publish_raw(topic, self.envelope(data))

    async def publish_raw(self, topic: str, payload: bytes) -> bool:
        """Publish an enveloped payload at QoS 1, not retained; False when it could not be sent."""
        client = self._client
        if client is None:
            return False
        try:
            await client.publish(topic, payload, qos=QOS, retain=False, timeout=10.0)
        except aiomqtt.MqttError as exc:
            log.debug("sim publish to %s failed: %s", topic, exc)
            return False
        return True
