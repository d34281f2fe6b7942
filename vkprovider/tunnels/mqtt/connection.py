"""The MQTT tunnel's one client connection to the broker: connecting, subscribing, publishing, reconnecting.

Kept apart from the tunnel (``tunnel``), which decides what messages mean: this module knows the broker and
aiomqtt, not arklet's commands. Its rules:

- one connection serves every base of this env; on any failure the loop waits (``core.backoff.MQTT_RECONNECT``,
  exponential with jitter) and starts over, and one clear line says why (``describe_connect_error`` names the
  setting to check), logged again only when the reason changes;
- the subscriptions are a fixed set of per-kind wildcards (``koupleless_{env}/+/base/heart`` ...) plus the answer
  topics of the bases this replica commands, all made again on every (re)connect, so nothing depends on
  per-node subscriptions that a reconnect would lose, and an answer can never arrive before its subscription
  exists (``listen_to`` subscribes before the first command to a base);
- clean sessions: answers published while disconnected are lost, so a disconnect fails the callers waiting for
  them at once (``on_lost``), not at their timeouts;
- TLS always verifies the broker's certificate and host name against ``MQTT_CA_PATH``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, Final

import aiomqtt

from vkprovider.config import Settings
from vkprovider.core.backoff import MQTT_RECONNECT
from vkprovider.tunnels.base import TunnelError
from vkprovider.tunnels.mqtt.answers import KeyedLocks
from vkprovider.tunnels.mqtt.topics import QOS, answer_subscriptions, subscriptions, topic_env

log = logging.getLogger(__name__)

FIRST_CONNECT_WAIT_S: Final = 10.0
"""``start`` waits this long for the first connection attempt to end, then returns anyway (the loop retries)."""
MAX_INFLIGHT: Final = 1000
_AUTH_CODES: Final = frozenset({4, 5, 134, 135})  # MQTT 3.1.1 and 5 "bad user name or password" / "not authorized"


def build_tls_context(settings: Settings) -> ssl.SSLContext | None:
    """TLS when ``MQTT_CA_PATH`` is set: the broker's certificate and host name are always verified."""
    if not settings.mqtt_ca_path:
        if settings.mqtt_client_crt_path:
            log.warning("MQTT_CLIENT_CRT_PATH is set but MQTT_CA_PATH is not: connecting without TLS")
        return None
    context = ssl.create_default_context(cafile=settings.mqtt_ca_path)
    if settings.mqtt_client_crt_path:
        context.load_cert_chain(settings.mqtt_client_crt_path, settings.mqtt_client_key_path or None)
    return context


def describe_connect_error(exc: BaseException) -> str:
    """One line saying why a connection failed, naming the setting to check."""
    text = str(exc) or type(exc).__name__
    rc = getattr(exc, "rc", None)
    code = getattr(rc, "value", rc)
    lowered = text.lower()
    if code in _AUTH_CODES or "not authori" in lowered or "bad user name" in lowered:
        return f"authentication refused by the broker (check MQTT_USERNAME / MQTT_PASSWORD): {text}"
    if "ssl" in lowered or "certificate" in lowered or "tls" in lowered or "handshake" in lowered:
        return f"TLS handshake failed (check MQTT_CA_PATH and the broker's certificate and host name): {text}"
    return f"cannot connect: {text}"


class Connection:
    """The broker connection of one tunnel: hands every message to ``on_message`` (which must not raise) and
    calls ``on_lost`` with the error to fail waiting callers with when a live connection goes away."""

    def __init__(self, settings: Settings, *, on_message: Callable[[aiomqtt.Message], None],
                 on_lost: Callable[[TunnelError], None]) -> None:
        self._settings = settings
        self._env = topic_env(settings.env)
        self._on_message = on_message
        self._on_lost = on_lost
        suffix = settings.client_id or secrets.token_hex(4)
        self.client_id = f"{settings.mqtt_client_prefix}-{self._env}-{suffix}"
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._attempted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._tls: ssl.SSLContext | None = None
        self._raised: asyncio.Task[None] | None = None  # the dead loop whose end ``run`` raised
        self._stopping = False
        self._background: set[asyncio.Task[Any]] = set()
        self._answering: set[str] = set()  # bases whose answer topics are subscribed on this connection
        self._wanted: set[str] = set()  # bases this replica commands (subscribed again after a reconnect)
        self._subscribe_lock = KeyedLocks()
        self.last_error: str | None = None
        self.connections = 0
        """How many times the tunnel connected (and subscribed); tests use it to see a reconnect."""

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def broker(self) -> str:
        return f"{self._settings.mqtt_broker}:{self._settings.mqtt_port}"

    # --- lifecycle ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the connection loop; returns once the first attempt ended (connected or not)."""
        self._stopping = False
        self._tls = build_tls_context(self._settings)  # an unreadable CA or key fails the start, loudly
        self._task = asyncio.create_task(self._run(self._tls), name="mqtt-tunnel")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._attempted.wait(), FIRST_CONNECT_WAIT_S)
        if not self.connected:
            log.error("mqtt tunnel not connected to %s yet (%s); retrying in the background",
                      self.broker, self.last_error or "no answer")

    async def wait_connected(self, timeout_s: float) -> None:
        """Wait until the tunnel is connected and subscribed (tests, readiness)."""
        await asyncio.wait_for(self._connected.wait(), timeout_s)

    async def run(self) -> None:
        """Until the connection loop ends: returns after ``stop``, else raises what ended it (the supervisor
        keeps ``run``: called again, it starts a new loop). Cancelling this leaves the loop running."""
        task = self._task
        if task is None:
            raise TunnelError("the mqtt tunnel is not started")
        if task is self._raised and not self._stopping:  # its end was raised already: a new loop
            task = self._task = asyncio.create_task(self._run(self._tls), name="mqtt-tunnel")
        await asyncio.wait({task})
        if self._stopping:
            return
        self._raised = task
        if task.cancelled():
            raise TunnelError(f"the mqtt connection loop was cancelled (broker {self.broker})")
        task.result()  # what killed the loop
        raise TunnelError(f"the mqtt connection loop ended (broker {self.broker})")

    async def stop(self) -> None:
        """End the connection loop and the tasks it spawned."""
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for background in list(self._background):
            background.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    def _new_client(self, tls: ssl.SSLContext | None) -> aiomqtt.Client:
        s = self._settings
        client = aiomqtt.Client(
            s.mqtt_broker,
            s.mqtt_port,
            username=s.mqtt_username or None,
            password=s.mqtt_password if s.mqtt_username else None,
            identifier=self.client_id,
            clean_session=True,
            tls_context=tls,
            keepalive=30,
            max_inflight_messages=MAX_INFLIGHT,
            timeout=max(s.arklet_query_timeout_s, 5.0),
        )
        client.pending_calls_threshold = MAX_INFLIGHT  # many commands in flight are normal, not worth a warning
        return client

    async def _run(self, tls: ssl.SSLContext | None) -> None:
        """Connect, subscribe, read; on any failure wait (exponential backoff with jitter) and start over."""
        try:
            await self._connect_forever(tls)
        finally:
            self._attempted.set()  # a loop that died at once does not hold ``start`` for FIRST_CONNECT_WAIT_S

    async def _connect_forever(self, tls: ssl.SSLContext | None) -> None:
        failures = 0
        while not self._stopping:
            client = self._new_client(tls)
            try:
                async with client:
                    await client.subscribe([(topic, QOS) for topic in subscriptions(self._env)])
                    self._answering.clear()
                    wanted = sorted(self._wanted)
                    for offset in range(0, len(wanted), 100):  # the bases this replica commands, again
                        chunk = wanted[offset : offset + 100]
                        await client.subscribe([(t, QOS) for i in chunk for t in answer_subscriptions(self._env, i)])
                        self._answering.update(chunk)
                    self._client = client
                    self.connections += 1
                    self.last_error = None
                    failures = 0
                    self._connected.set()
                    self._attempted.set()
                    log.info("mqtt tunnel connected to %s as %s (tls=%s), subscribed to koupleless_%s/+/base/"
                             "{heart,queryBaseline} and the answers of %d base(s)", self.broker, self.client_id,
                             tls is not None, self._env, len(wanted))
                    async for message in client.messages:
                        self._on_message(message)
            except aiomqtt.MqttError as exc:
                was_connected = self._connected.is_set()
                self._disconnected()
                reason = f"connection to {self.broker} lost: {exc}" if was_connected else describe_connect_error(exc)
                if reason != self.last_error:
                    log.error("mqtt tunnel: %s", reason)
                self.last_error = reason
            finally:
                self._disconnected()
            self._attempted.set()
            if self._stopping:
                break
            failures += 1
            await asyncio.sleep(MQTT_RECONNECT.delay(failures))

    def _disconnected(self) -> None:
        if self._client is None:
            return
        self._client = None
        self._connected.clear()
        self._on_lost(TunnelError(f"disconnected from the MQTT broker {self.broker}"))

    def spawn(self, coro: Awaitable[Any], name: str) -> None:
        """Run ``coro`` beside the loop (a publish a handler must not wait for); ``stop`` cancels it. Such a task
        is short and not a root task: it fails alone, with one line in the log (the loop and ``run`` go on)."""
        async def run() -> None:
            try:
                await coro
            except Exception:
                log.exception("mqtt tunnel: %s failed", name)

        task = asyncio.create_task(run(), name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- subscriptions and publishing --------------------------------------------------------------------

    def not_connected(self) -> TunnelError:
        detail = f": {self.last_error}" if self.last_error else ""
        return TunnelError(f"not connected to the MQTT broker {self.broker}{detail}")

    async def listen_to(self, identity: str, timeout_s: float) -> None:
        """Subscribe to a base's answer topics before the first command to it (once per connection)."""
        self._wanted.add(identity)
        if identity in self._answering:
            return
        async with self._subscribe_lock.hold(identity):
            if identity in self._answering:
                return
            client = self._client
            if client is None or not self._connected.is_set():
                raise self.not_connected()
            try:
                await client.subscribe([(t, QOS) for t in answer_subscriptions(self._env, identity)],
                                       timeout=timeout_s)
            except aiomqtt.MqttError as exc:
                raise TunnelError(f"subscribing to the answers of {identity} failed: {exc}") from exc
            if self._client is client:
                self._answering.add(identity)

    def forget(self, identity: str) -> None:
        """Stop receiving a base's answers (this replica no longer commands it)."""
        self._wanted.discard(identity)
        if identity not in self._answering:
            return
        self._answering.discard(identity)
        client = self._client
        if client is not None and self._connected.is_set():
            self.spawn(self._unsubscribe(client, identity), f"mqtt-unsubscribe {identity}")

    async def _unsubscribe(self, client: aiomqtt.Client, identity: str) -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            await client.unsubscribe(answer_subscriptions(self._env, identity))

    async def publish(self, topic: str, payload: bytes, timeout_s: float) -> None:
        """Publish at QoS 1, never retained; ``TunnelError`` when not connected or the publish failed."""
        client = self._client
        if client is None or not self._connected.is_set():
            raise self.not_connected()
        try:
            await client.publish(topic, payload, qos=QOS, retain=False, timeout=timeout_s)
        except aiomqtt.MqttError as exc:
            raise TunnelError(f"publish to {topic} failed: {exc}") from exc
