"""The MQTT tunnel: bases that run arklet's MqttTunnel talk to vkprovider through a broker.

Arklet over MQTT is fire-and-forget in both directions: bases publish heartbeats and answers on
``koupleless_{env}/{identity}/base/<kind>`` and read commands from ``koupleless_{env}/{identity}/<command>``.
This module turns that back into the request/response ``Tunnel`` API the controllers use (a command waits for
the matching answer, with a timeout) and avoids the Go controller's known faults:

- commands are published at QoS 1 and never retained, so they cannot replay when a base resubscribes;
- the subscriptions are a fixed set of per-kind wildcards (``koupleless_{env}/+/base/heart`` ...), made again
  on every (re)connect, so nothing depends on per-node subscriptions that a reconnect would lose, and an answer
  can never arrive before its subscription exists;
- TLS always verifies the broker's certificate and host name against ``MQTT_CA_PATH``;
- a message's age window (``VKP_MQTT_MAX_MESSAGE_AGE``, 60 s by default, both directions) is wide enough for
  ordinary clock skew; retained, oversized and malformed messages are dropped and counted, never fatal.

Biz lists are placed by the base's own clock, never by when they arrive (issue 27). A ``queryAllBiz`` answer
carries no query id, may come after its query timed out, and may be overtaken by a command answer; applied as
"read now" it used to undo a newer install or uninstall (Ready regressed, the command was sent again). Each
message carries the ``publishTimestamp`` of the base that sent it, and arklet takes a list when it publishes it,
so per base (``BizListOrder``):

- a list published before the newest list already taken from that base is stale, and dropped (``stale``);
- a list answers the ``query_all_biz`` waiting for it only if it was published after every command answer
  (bizOperation, batchInstallBizResponse) the base had delivered when that query was sent. The caller merges it
  as a read sent when it asked (``BaseLedger`` token): every result recorded before that is in the list, every
  one recorded after is newer than the token and kept;
- any other list - the answer of a query that timed out, one nobody asked for, or one older than a command answer
  delivered before its query - goes to ``BaseEvents.on_bizs``, merged as a list of unknown send time
  (``BaseLedger.apply_untimed``): it never overwrites a command result newer than the last read, and the first
  rule guarantees it is not older than that read.

A base's stamps are remembered for twice the age window (a message older than that is dropped by the age check
anyway), so a base whose clock stepped back is out of order for at most that long.

The pure parts (topic parsing, envelope checks, TLS context) are module functions so they can be unit-tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Any, Final, TypeVar

import aiomqtt
import orjson
from prometheus_client import Counter

from vkprovider.config import Settings
from vkprovider.core import wire
from vkprovider.core.backoff import MQTT_RECONNECT
from vkprovider.core.model import (
    BaseHealth,
    BaseHeartbeat,
    BizInfo,
    BizKey,
    BizSpec,
    BizState,
    CommandOutcome,
    CommandResult,
)
from vkprovider.tunnels import metrics
from vkprovider.tunnels.base import BaseEvents, TunnelError
from vkprovider.tunnels.batch import BatchSupport, install_one_by_one
from vkprovider.tunnels.metrics import HEARTBEATS_TOTAL, TUNNEL_REQUEST_SECONDS

log = logging.getLogger(__name__)

TUNNEL_NAME: Final = "mqtt"
QOS: Final = 1

KIND_HEART: Final = "heart"
KIND_QUERY_BASELINE: Final = "queryBaseline"
KIND_HEALTH: Final = "health"
KIND_SIMPLE_BIZ: Final = "simpleBiz"
KIND_BIZ: Final = "biz"  # the Go controller also listens for full queryAllBiz answers here
KIND_BIZ_OPERATION: Final = "bizOperation"
KIND_BATCH_RESPONSE: Final = "batchInstallBizResponse"
BASE_KINDS: Final = (
    KIND_HEART,
    KIND_QUERY_BASELINE,
    KIND_HEALTH,
    KIND_SIMPLE_BIZ,
    KIND_BIZ,
    KIND_BIZ_OPERATION,
    KIND_BATCH_RESPONSE,
)

DROP_REASONS: Final = ("too_large", "bad_json", "invalid", "expired", "clock_skew", "retained", "topic", "error",
                       "stale")
MQTT_DROPPED_TOTAL = Counter(
    "vkprovider_mqtt_dropped_total", "MQTT messages from bases that were dropped, by reason.", ["reason"]
)
for _reason in DROP_REASONS:
    MQTT_DROPPED_TOTAL.labels(_reason)
metrics.precreate(TUNNEL_NAME)

FIRST_CONNECT_WAIT_S: Final = 10.0
"""``start`` waits this long for the first connection attempt to end, then returns anyway (the loop retries)."""
MAX_INFLIGHT: Final = 1000
_AUTH_CODES: Final = frozenset({4, 5, 134, 135})  # MQTT 3.1.1 and 5 "bad user name or password" / "not authorized"

_T = TypeVar("_T")


# --- pure parts ----------------------------------------------------------------------------------------------


def topic_env(env: str) -> str:
    """Arklet lowercases its runtime env in topics; so do we."""
    return env.lower()


#: What every replica hears from every base (wildcards): heartbeats, and a base asking for its baseline.
SHARED_KINDS: Final = (KIND_HEART, KIND_QUERY_BASELINE)
#: Answers a base sends to whoever commands it: only the replica holding its vnode subscribes to these.
ANSWER_KINDS: Final = (KIND_HEALTH, KIND_SIMPLE_BIZ, KIND_BIZ, KIND_BIZ_OPERATION, KIND_BATCH_RESPONSE)


def subscriptions(env: str) -> list[str]:
    """What every replica subscribes to: one wildcard per shared kind of base message."""
    return [f"koupleless_{topic_env(env)}/+/base/{kind}" for kind in SHARED_KINDS]


def answer_subscriptions(env: str, identity: str) -> list[str]:
    """The answer topics of one base, subscribed by the replica that commands it (before its first command)."""
    return [f"koupleless_{topic_env(env)}/{identity}/base/{kind}" for kind in ANSWER_KINDS]


def command_topic(env: str, identity: str, command: str) -> str:
    """Where a base reads ``command`` (installBiz, uninstallBiz, health, queryAllBiz)."""
    return f"koupleless_{topic_env(env)}/{identity}/{command}"


def baseline_topic(env: str, identity: str) -> str:
    """Where a base reads its baseline (also the batch-install request of arklet >= 1.4.1)."""
    return f"koupleless_{topic_env(env)}/{identity}/base/baseline"


def parse_topic(topic: str, env: str) -> tuple[str, str] | None:
    """``koupleless_{env}/{identity}/base/{kind}`` → ``(identity, kind)``; None for anything else."""
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != f"koupleless_{topic_env(env)}" or parts[2] != "base":
        return None
    identity, kind = parts[1], parts[3]
    if not identity or kind not in BASE_KINDS:
        return None
    return identity, kind


class MessageDropped(Exception):
    """A message that must be ignored; ``reason`` is one of ``DROP_REASONS``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def open_envelope(payload: bytes, *, now_ms: int, max_age_s: float, max_bytes: int, retained: bool = False) -> Any:
    """Check one ``{"publishTimestamp": ms, "data": X}`` message and return X (see ``read_envelope``)."""
    return read_envelope(payload, now_ms=now_ms, max_age_s=max_age_s, max_bytes=max_bytes, retained=retained)[1]


def read_envelope(payload: bytes, *, now_ms: int, max_age_s: float, max_bytes: int,
                  retained: bool = False) -> tuple[int, Any]:
    """Check one ``{"publishTimestamp": ms, "data": X}`` message and return (publishTimestamp, X).

    Raises ``MessageDropped`` for a message that is too large, retained (a replay from the broker's store, not
    something a base just said), not a JSON envelope, or outside the age window ``max_age_s`` on either side
    of ``now_ms`` (``max_age_s <= 0`` disables the age check).
    """
    if len(payload) > max_bytes:
        raise MessageDropped("too_large", f"{len(payload)} bytes")
    if retained:
        raise MessageDropped("retained")
    try:
        decoded = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise MessageDropped("bad_json", "not JSON") from None
    if not isinstance(decoded, dict) or "data" not in decoded:
        raise MessageDropped("bad_json", "not a {publishTimestamp, data} envelope")
    stamp = decoded.get("publishTimestamp")
    if isinstance(stamp, bool) or not isinstance(stamp, int):
        raise MessageDropped("invalid", "publishTimestamp is not an integer")
    if max_age_s > 0:
        age_ms = now_ms - stamp
        if age_ms > max_age_s * 1000:
            raise MessageDropped("expired", f"{age_ms / 1000:.1f}s old")
        if -age_ms > max_age_s * 1000:
            raise MessageDropped("clock_skew", f"{-age_ms / 1000:.1f}s in the future")
    return stamp, decoded["data"]


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


def _as_bytes(payload: object) -> bytes | None:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, bytearray):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode()
    return None


def _now_ms() -> int:
    return int(time.time() * 1000)


class Placement(enum.Enum):
    """Where a biz list goes (``BizListOrder.place``)."""

    STALE = "stale"  # older than a list already taken: dropped
    ANSWER = "answer"  # the answer of the pending query: to its caller
    UNTIMED = "untimed"  # late, unasked or older than a command answer: to BaseEvents.on_bizs


class BizListOrder:
    """One base's biz lists ordered by its publishTimestamp against its other lists and its command answers (the
    module docstring's rules). Times are passed in: ``now_ms`` is this process's wall clock, only used to forget
    stamps after ``memory_ms``."""

    __slots__ = ("_answer", "_asked_after", "_list", "_memory_ms")

    def __init__(self, memory_ms: int) -> None:
        self._memory_ms = memory_ms
        self._list: tuple[int, int] | None = None  # (newest list stamp taken, when it came)
        self._answer: tuple[int, int] | None = None  # (newest command answer stamp, when it came)
        self._asked_after: int | None = None  # a query is pending, sent after answers up to this stamp

    def _recent(self, record: tuple[int, int] | None, now_ms: int) -> int | None:
        if record is None or now_ms - record[1] > self._memory_ms:
            return None
        return record[0]

    def answered(self, stamp: int, now_ms: int) -> None:
        """A command answer (published at ``stamp``) is being handed to its caller."""
        newest = self._recent(self._answer, now_ms)
        if newest is None or stamp >= newest:
            self._answer = (stamp, now_ms)

    def asking(self, now_ms: int) -> None:
        """A queryAllBiz is being sent."""
        newest = self._recent(self._answer, now_ms)
        self._asked_after = -1 if newest is None else newest

    def not_asking(self) -> None:
        """Nobody waits for the pending query any more (answered, timed out, failed)."""
        self._asked_after = None

    def place(self, stamp: int, now_ms: int) -> Placement:
        newest = self._recent(self._list, now_ms)
        if newest is not None and stamp < newest:
            return Placement.STALE
        if newest is None or stamp > newest:
            self._list = (stamp, now_ms)
        if self._asked_after is not None and stamp > self._asked_after:
            self._asked_after = None
            return Placement.ANSWER
        return Placement.UNTIMED


# --- waiting for answers -------------------------------------------------------------------------------------


class _Waiters:
    """Callers waiting for the next answer under a key; every waiter owns its future."""

    def __init__(self) -> None:
        self._by_key: dict[Hashable, list[asyncio.Future[Any]]] = {}

    def add(self, key: Hashable) -> tuple[asyncio.Future[Any], bool]:
        """A new waiter, and whether it is the first for ``key`` (the one that must send the command)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        waiting = self._by_key.setdefault(key, [])
        waiting.append(future)
        return future, len(waiting) == 1

    def discard(self, key: Hashable, future: asyncio.Future[Any]) -> None:
        waiting = self._by_key.get(key)
        if waiting is None:
            return
        with contextlib.suppress(ValueError):
            waiting.remove(future)
        if not waiting:
            del self._by_key[key]

    def pending(self) -> list[Hashable]:
        return list(self._by_key)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._by_key

    def resolve(self, key: Hashable, value: object) -> bool:
        """Hand ``value`` to every waiter of ``key``; False when nobody waited."""
        waiting = self._by_key.pop(key, [])
        for future in waiting:
            if not future.done():
                future.set_result(value)
        return bool(waiting)

    def fail(self, key: Hashable, error: BaseException) -> None:
        for future in self._by_key.pop(key, []):
            if not future.done():
                future.set_exception(error)

    def fail_all(self, error: BaseException) -> None:
        for key in list(self._by_key):
            self.fail(key, error)


class _KeyedLocks:
    """One lock per key, dropped when idle, so the map does not grow with dead bases."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


# --- the tunnel ----------------------------------------------------------------------------------------------


class MqttTunnel:
    """Tunnel over an MQTT broker. One client connection serves every base of this env."""

    name = TUNNEL_NAME

    def __init__(self, settings: Settings, *, clock_ms: Callable[[], int] = _now_ms) -> None:
        self._settings = settings
        self._env = topic_env(settings.env)
        self._clock_ms = clock_ms
        suffix = settings.client_id or secrets.token_hex(4)
        self.client_id = f"{settings.mqtt_client_prefix}-{self._env}-{suffix}"
        self._events: BaseEvents | None = None
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._attempted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._background: set[asyncio.Task[Any]] = set()
        self._queries = _Waiters()  # (identity, "health" | "bizs") -> callers of health / query_all_biz
        self._ops = _Waiters()  # (identity, command, name, version) -> caller of installBiz / uninstallBiz
        self._batches = _Waiters()  # identity -> caller of batch_install_biz
        self._op_locks = _KeyedLocks()
        # bases whose arklet answers a baseline with a biz list, not batchInstallBizResponse: twice in a row proves it
        self._batch = BatchSupport(strikes=2, lacks="batchInstallBizResponse (arklet < 1.4.1)")
        self._batch_requested: dict[str, frozenset[tuple[str, str]]] = {}  # identity -> name:version in flight
        self._batch_responders: set[str] = set()  # bases seen answering with batchInstallBizResponse
        self._answering: set[str] = set()  # bases whose answer topics are subscribed on this connection
        self._wanted: set[str] = set()  # bases this replica commands (subscribed again after a reconnect)
        self._subscribe_lock = _KeyedLocks()
        self._orders: dict[str, BizListOrder] = {}  # identity -> its biz lists' order (bases this replica commands)
        age_ms = int(settings.mqtt_max_message_age_s * 1000)
        self._order_memory_ms = 2 * age_ms if age_ms > 0 else 120_000
        self.last_error: str | None = None
        self.connections = 0
        """How many times the tunnel connected (and subscribed); tests use it to see a reconnect."""

    # --- lifecycle ---------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def broker(self) -> str:
        return f"{self._settings.mqtt_broker}:{self._settings.mqtt_port}"

    async def start(self, events: BaseEvents) -> None:
        """Start the connection loop; returns once the first attempt ended (connected or not)."""
        self._events = events
        self._stopping = False
        tls = build_tls_context(self._settings)  # an unreadable CA or key fails the start, loudly
        self._task = asyncio.create_task(self._run(tls), name="mqtt-tunnel")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._attempted.wait(), FIRST_CONNECT_WAIT_S)
        if not self.connected:
            log.error("mqtt tunnel not connected to %s yet (%s); retrying in the background",
                      self.broker, self.last_error or "no answer")

    async def wait_connected(self, timeout_s: float) -> None:
        """Wait until the tunnel is connected and subscribed (tests, readiness)."""
        await asyncio.wait_for(self._connected.wait(), timeout_s)

    async def stop(self) -> None:
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for background in list(self._background):
            background.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._fail_waiters(TunnelError("mqtt tunnel stopped"))

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
        self._fail_waiters(TunnelError(f"disconnected from the MQTT broker {self.broker}"))

    def _fail_waiters(self, error: TunnelError) -> None:
        # Answers published while we are disconnected are lost (clean session): fail now, not at the timeout.
        for waiters in (self._queries, self._ops, self._batches):
            waiters.fail_all(error)

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        async def run() -> None:
            await coro

        task = asyncio.create_task(run(), name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- what bases send ---------------------------------------------------------------------------------

    def _on_message(self, message: aiomqtt.Message) -> None:
        """Handle one message; nothing a base sends may crash the loop."""
        topic = message.topic.value
        try:
            where = parse_topic(topic, self._env)
            if where is None:
                raise MessageDropped("topic", topic[:120])
            payload = _as_bytes(message.payload)
            if payload is None:
                raise MessageDropped("invalid", "payload is not bytes")
            stamp, data = read_envelope(
                payload,
                now_ms=self._clock_ms(),
                max_age_s=self._settings.mqtt_max_message_age_s,
                max_bytes=self._settings.mqtt_max_payload_bytes,
                retained=bool(message.retain),
            )
            self._handle(where[0], where[1], data, stamp)
        except MessageDropped as dropped:
            MQTT_DROPPED_TOTAL.labels(dropped.reason).inc()
            log.debug("dropped mqtt message on %s: %s", topic[:120], dropped)
        except Exception:
            MQTT_DROPPED_TOTAL.labels("error").inc()
            log.exception("mqtt message on %s could not be handled", topic[:120])

    def _handle(self, identity: str, kind: str, data: Any, stamp: int) -> None:
        if kind == KIND_HEART:
            self._on_heartbeat(identity, data)
        elif kind == KIND_QUERY_BASELINE:
            self._on_query_baseline(identity, data)
        elif kind == KIND_HEALTH:
            self._on_health(identity, data)
        elif kind in (KIND_SIMPLE_BIZ, KIND_BIZ):
            self._on_bizs(identity, data, stamp)
        elif kind == KIND_BIZ_OPERATION:
            self._on_biz_operation(identity, data, stamp)
        elif kind == KIND_BATCH_RESPONSE:
            self._on_batch_response(identity, data, stamp)

    def _order(self, identity: str) -> BizListOrder:
        order = self._orders.get(identity)
        if order is None:
            order = self._orders[identity] = BizListOrder(self._order_memory_ms)
        return order

    def _on_heartbeat(self, identity: str, data: Any) -> None:
        result = "error"
        try:
            if not isinstance(data, Mapping):
                result = "invalid"
                raise MessageDropped("invalid", "heartbeat data is not an object")
            try:
                heartbeat = wire.parse_heartbeat(data, tunnel=TUNNEL_NAME, allow_port_zero=True,
                                                 env=self._settings.env)
            except wire.WireError as exc:
                result = "invalid"
                raise MessageDropped("invalid", f"heartbeat: {exc.reason}") from None
            if heartbeat.identity != identity:
                result = "invalid"
                raise MessageDropped("invalid", f"heartbeat of {heartbeat.identity} on the topic of {identity}")
            assert self._events is not None
            # Over MQTT the broker authenticates clients and its ACLs say who may publish on a base's topics.
            refused = self._events.on_heartbeat(heartbeat, authenticated=True)
            if refused is not None:
                result = refused.result
                raise MessageDropped("invalid", f"heartbeat of {identity}: {refused.reason}")
            result = "accepted"
        finally:
            HEARTBEATS_TOTAL.labels(TUNNEL_NAME, result).inc()

    def _on_query_baseline(self, identity: str, data: Any) -> None:
        if not isinstance(data, Mapping):
            raise MessageDropped("invalid", "queryBaseline data is not an object")
        # arklet before 2.x leaves "name" out of this BaseMetadata; the baseline is looked up by identity only.
        raw = {"name": "TO_BE_IMPLEMENTED", "version": "1.0.0", "clusterName": "default", **data}
        try:
            metadata = wire.parse_base_metadata(raw, env=self._settings.env)
        except wire.WireError as exc:
            raise MessageDropped("invalid", f"queryBaseline: {exc.reason}") from None
        if metadata.identity != identity:
            raise MessageDropped("invalid", f"queryBaseline of {metadata.identity} on the topic of {identity}")
        assert self._events is not None
        specs = self._events.baseline(metadata)
        if specs is None:
            return  # another replica holds this base's vnode: it answers
        self._spawn(self._send_baseline(identity, specs), f"mqtt-baseline {identity}")

    async def _send_baseline(self, identity: str, specs: Sequence[BizSpec]) -> None:
        try:
            await self._publish(baseline_topic(self._env, identity), wire.baseline_response(specs),
                                self._settings.arklet_query_timeout_s)
            log.info("sent baseline of %d biz(s) to %s", len(specs), identity)
        except TunnelError as exc:
            log.warning("baseline for %s not sent: %s", identity, exc)

    def _on_health(self, identity: str, data: Any) -> None:
        if not isinstance(data, Mapping):
            raise MessageDropped("invalid", "health data is not an object")
        if self._queries.resolve((identity, KIND_HEALTH), data):
            return
        if data.get("code") != "SUCCESS":
            return
        try:
            health = wire.parse_health(data.get("data"))
        except wire.WireError as exc:
            raise MessageDropped("invalid", f"health: {exc.reason}") from None
        assert self._events is not None
        self._events.on_health(identity, health)

    def _on_bizs(self, identity: str, data: Any, stamp: int) -> None:
        # base/simpleBiz carries the list itself; base/biz (full queryAllBiz answer) an envelope around it.
        if isinstance(data, Mapping) and "code" in data:
            if data.get("code") != "SUCCESS":
                return
            data = data.get("data")
        try:
            bizs = wire.parse_biz_list(data)
        except wire.WireError as exc:
            raise MessageDropped("invalid", f"biz list: {exc.reason}") from None
        placement = self._order(identity).place(stamp, self._clock_ms())
        if placement is Placement.STALE:
            raise MessageDropped("stale", f"biz list of {identity} published before one already taken")
        if placement is Placement.ANSWER and self._queries.resolve((identity, "bizs"), bizs):
            return
        requested = self._batch_requested.get(identity)
        if (identity in self._batches and identity not in self._batch_responders and requested is not None
                and requested <= {(b.name, b.version) for b in bizs}):
            # arklet < 1.4.1 answers a baseline by installing one by one and then reporting its bizs here; a
            # list that does not show every requested biz is an unrelated report, not the answer.
            self._batches.resolve(identity, bizs)
        assert self._events is not None
        self._events.on_bizs(identity, bizs)

    def _on_biz_operation(self, identity: str, data: Any, stamp: int) -> None:
        if not isinstance(data, Mapping) or not isinstance(data.get("response"), Mapping):
            raise MessageDropped("invalid", "bizOperation without a response object")
        self._order(identity).answered(stamp, self._clock_ms())
        command, name, version = data.get("command"), data.get("bizName"), data.get("bizVersion")
        if self._ops.resolve((identity, command, name, version), data["response"]):
            return
        if name is None:
            # arklet's failure path may omit the biz: give it to the oldest caller of that command on that base.
            for key in self._ops.pending():
                if isinstance(key, tuple) and key[:2] == (identity, command):
                    self._ops.resolve(key, data["response"])
                    return
        log.debug("unrequested %s answer from %s for %s:%s", command, identity, name, version)

    def _on_batch_response(self, identity: str, data: Any, stamp: int) -> None:
        if not isinstance(data, Mapping) or not isinstance(data.get("response"), Mapping):
            raise MessageDropped("invalid", "batchInstallBizResponse without a response object")
        self._order(identity).answered(stamp, self._clock_ms())
        self._batch_responders.add(identity)  # a new-enough arklet: never fall back to single installs
        self._batch.batch_answer(identity)
        if not self._batches.resolve(identity, data["response"]):
            log.debug("batchInstallBizResponse from %s nobody waited for (a baseline answer)", identity)

    # --- commands ----------------------------------------------------------------------------------------

    def _not_connected(self) -> TunnelError:
        detail = f": {self.last_error}" if self.last_error else ""
        return TunnelError(f"not connected to the MQTT broker {self.broker}{detail}")

    async def _listen_to(self, identity: str, timeout_s: float) -> None:
        """Subscribe to a base's answer topics before the first command to it (once per connection)."""
        self._wanted.add(identity)
        if identity in self._answering:
            return
        async with self._subscribe_lock.hold(identity):
            if identity in self._answering:
                return
            client = self._client
            if client is None or not self._connected.is_set():
                raise self._not_connected()
            try:
                await client.subscribe([(t, QOS) for t in answer_subscriptions(self._env, identity)],
                                       timeout=timeout_s)
            except aiomqtt.MqttError as exc:
                raise TunnelError(f"subscribing to the answers of {identity} failed: {exc}") from exc
            if self._client is client:
                self._answering.add(identity)

    def release(self, base: BaseHeartbeat) -> None:
        """This replica no longer commands ``base``: stop receiving its answers."""
        identity = base.identity
        self._wanted.discard(identity)
        self._orders.pop(identity, None)
        if identity not in self._answering:
            return
        self._answering.discard(identity)
        client = self._client
        if client is not None and self._connected.is_set():
            self._spawn(self._unsubscribe(client, identity), f"mqtt-unsubscribe {identity}")

    async def _unsubscribe(self, client: aiomqtt.Client, identity: str) -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            await client.unsubscribe(answer_subscriptions(self._env, identity))

    async def _publish(self, topic: str, payload: bytes, timeout_s: float) -> None:
        client = self._client
        if client is None or not self._connected.is_set():
            raise self._not_connected()
        try:
            await client.publish(topic, payload, qos=QOS, retain=False, timeout=timeout_s)
        except aiomqtt.MqttError as exc:
            raise TunnelError(f"publish to {topic} failed: {exc}") from exc

    async def _await(
        self,
        waiters: _Waiters,
        key: Hashable,
        send: Callable[[], Awaitable[None]] | None,
        timeout_s: float,
        what: str,
    ) -> Any:
        """Register a waiter under ``key``, send the command (when ``send`` is given), wait for the answer."""
        future, first = waiters.add(key)
        try:
            if send is not None and first:
                try:
                    await send()
                except TunnelError as exc:
                    waiters.discard(key, future)
                    if future.done() and not future.cancelled():
                        future.exception()  # failed by a disconnect meanwhile: mark it retrieved
                    waiters.fail(key, exc)  # callers that joined this command will not get an answer either
                    raise
            try:
                return await asyncio.wait_for(future, timeout_s)
            except TimeoutError:
                raise _Timeout(f"{what}: no answer within {timeout_s:g}s") from None
        finally:
            waiters.discard(key, future)

    async def _timed(self, command: str, call: Awaitable[_T], judge: Callable[[_T], bool]) -> _T:
        started = time.perf_counter()
        result = "transport_error"
        try:
            answer = await call
            result = "success" if judge(answer) else "failed"
            return answer
        except _Timeout:
            result = "timeout"
            raise
        finally:
            TUNNEL_REQUEST_SECONDS.labels(TUNNEL_NAME, command, result).observe(time.perf_counter() - started)

    async def _query(self, base: BaseHeartbeat, command: str, kind: str) -> Any:
        """health / queryAllBiz: concurrent callers for one base share one command and its next answer."""
        identity = base.identity
        topic = command_topic(self._env, identity, command)
        timeout_s = self._settings.arklet_query_timeout_s
        key = (identity, kind)

        async def send() -> None:
            await self._listen_to(identity, timeout_s)
            if kind == "bizs":
                self._order(identity).asking(self._clock_ms())
            await self._publish(topic, b"{}", timeout_s)

        try:
            return await self._await(self._queries, key, send, timeout_s, f"{command} to {identity}")
        finally:
            if kind == "bizs" and key not in self._queries and identity in self._orders:
                self._orders[identity].not_asking()  # a list that comes now answers nobody: untimed

    async def health(self, base: BaseHeartbeat) -> BaseHealth:
        answer = await self._timed("health", self._query(base, "health", KIND_HEALTH), _succeeded)
        if not _succeeded(answer):
            message = answer.get("message") or answer.get("code")
            raise TunnelError(f"health on {base.identity} failed: {str(message)[:200]}")
        try:
            return wire.parse_health(answer.get("data"))
        except wire.WireError as exc:
            raise TunnelError(f"health from {base.identity}: {exc.reason}") from None

    async def query_all_biz(self, base: BaseHeartbeat) -> list[BizInfo]:
        bizs: list[BizInfo] = await self._timed(
            "queryAllBiz", self._query(base, "queryAllBiz", "bizs"), lambda _: True
        )
        return bizs

    async def _biz_operation(self, base: BaseHeartbeat, command: str, name: str, version: str,
                             body: bytes) -> CommandResult:
        key = (base.identity, command, name, version)
        topic = command_topic(self._env, base.identity, command)
        timeout_s = self._settings.arklet_install_timeout_s

        async def send() -> None:
            await self._listen_to(base.identity, self._settings.arklet_query_timeout_s)
            await self._publish(topic, body, self._settings.arklet_query_timeout_s)

        async def call() -> CommandResult:
            # One command per base, command and name:version at a time, so an answer has exactly one owner.
            async with self._op_locks.hold(key):
                response = await self._await(self._ops, key, send, timeout_s,
                                             f"{command} {name}:{version} to {base.identity}")
            return wire.parse_command_result(response)

        return await self._timed(command, call(), lambda result: result.ok)

    async def install_biz(
        self, base: BaseHeartbeat, biz: BizSpec, *, replace_other_versions: bool = False,
        biz_model_version: str = "",
    ) -> CommandResult:
        body = wire.install_request(biz, replace_other_versions=replace_other_versions,
                                    biz_model_version=biz_model_version)
        return await self._biz_operation(base, "installBiz", biz.name, biz.version, body)

    async def uninstall_biz(self, base: BaseHeartbeat, name: str, version: str, *,
                            biz_model_version: str = "") -> CommandResult:
        body = wire.uninstall_request(name, version, biz_model_version=biz_model_version)
        return await self._biz_operation(base, "uninstallBiz", name, version, body)

    async def batch_install_biz(
        self, base: BaseHeartbeat, bizs: Sequence[BizSpec], *, biz_model_versions: Mapping[BizKey, str] | None = None
    ) -> dict[str, CommandResult]:
        """Arklet >= 1.4.1 batch-installs what it receives on ``base/baseline`` and answers on
        ``base/batchInstallBizResponse``; an older one installs one by one and answers with its biz list."""
        if not bizs:
            return {}
        versions = biz_model_versions or {}
        urls = [biz.url for biz in bizs]
        if self._batch.supported(base.identity):
            topic = baseline_topic(self._env, base.identity)
            timeout_s = self._settings.arklet_install_timeout_s
            payload = wire.baseline_response(bizs, biz_model_versions=versions)

            async def send() -> None:
                await self._listen_to(base.identity, self._settings.arklet_query_timeout_s)
                await self._publish(topic, payload, self._settings.arklet_query_timeout_s)

            async def call() -> Any:
                async with self._op_locks.hold(("batch", base.identity)):
                    self._batch_requested[base.identity] = frozenset((b.name, b.version) for b in bizs)
                    try:
                        return await self._await(self._batches, base.identity, send, timeout_s,
                                                 f"batchInstallBiz to {base.identity}")
                    finally:
                        self._batch_requested.pop(base.identity, None)

            answer = await self._timed("batchInstallBiz", call(), _batch_ok)
            if isinstance(answer, Mapping):
                return wire.parse_batch_install_result(answer, urls)
            # twice in a row, never a batchInstallBizResponse: an old arklet
            self._batch.no_batch_answer(base.identity, base.identity)
            return _results_from_bizs(bizs, answer)
        return await install_one_by_one(
            lambda biz: self.install_biz(base, biz, biz_model_version=versions.get(biz.key, "")), bizs)

class _Timeout(TunnelError):
    """The base did not answer in time."""


def _succeeded(answer: Mapping[str, Any]) -> bool:
    return answer.get("code") == "SUCCESS"


def _batch_ok(answer: object) -> bool:
    return isinstance(answer, Mapping) and answer.get("code") == "SUCCESS"


def _results_from_bizs(bizs: Sequence[BizSpec], reported: Sequence[BizInfo]) -> dict[str, CommandResult]:
    """Judge a baseline answered by a biz list: a requested biz that runs (or waits to be switched) succeeded."""
    running = {info.key: info for info in reported if info.state in (BizState.ACTIVATED, BizState.DEACTIVATED)}
    results: dict[str, CommandResult] = {}
    for biz in bizs:
        info = running.get(biz.key)
        if info is not None:
            results[biz.url] = CommandResult(CommandOutcome.SUCCESS, "installed from the baseline", (info,))
        else:
            results[biz.url] = CommandResult(CommandOutcome.FAILED, "not running after the baseline install")
    return results
