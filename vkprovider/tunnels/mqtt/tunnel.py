"""``MqttTunnel``: the ``Tunnel`` protocol over arklet's MQTT messages - what bases send in, commands out.

The broker connection is ``connection``'s, the topics and envelope ``topics``'s, the matching of answers to
waiting callers (and the order of biz lists, issue 27) ``answers``'s; this module decides what each message means
and turns each command into a publish plus a wait for its answer. Nothing a base sends may crash the connection
loop: a message that cannot be used is dropped and counted by reason (``vkprovider_mqtt_dropped_total``), an
unexpected exception under ``error``. Over MQTT the broker authenticates clients and its ACLs say who may publish
on a base's topics, so heartbeats are delivered as authenticated.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

import aiomqtt
from prometheus_client import Counter

from vkprovider.config import Settings
from vkprovider.core import wire
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
from vkprovider.tunnels.mqtt.answers import (
    AnswerTimeout,
    BizListOrder,
    KeyedLocks,
    Placement,
    Waiters,
    await_answer,
)
from vkprovider.tunnels.mqtt.connection import Connection
from vkprovider.tunnels.mqtt.topics import (
    DROP_REASONS,
    KIND_BATCH_RESPONSE,
    KIND_BIZ,
    KIND_BIZ_OPERATION,
    KIND_HEALTH,
    KIND_HEART,
    KIND_QUERY_BASELINE,
    KIND_SIMPLE_BIZ,
    MessageDropped,
    as_bytes,
    baseline_topic,
    command_topic,
    parse_topic,
    read_envelope,
    topic_env,
)

log = logging.getLogger(__name__)

TUNNEL_NAME: Final = "mqtt"

MQTT_DROPPED_TOTAL = Counter(
    "vkprovider_mqtt_dropped_total", "MQTT messages from bases that were dropped, by reason.", ["reason"]
)
for _reason in DROP_REASONS:
    MQTT_DROPPED_TOTAL.labels(_reason)
METRICS = metrics.TunnelMetrics.create(TUNNEL_NAME)

_T = TypeVar("_T")


def _now_ms() -> int:
    return int(time.time() * 1000)


class MqttTunnel:
    """Tunnel over an MQTT broker. One client connection serves every base of this env."""

    name = TUNNEL_NAME

    def __init__(self, settings: Settings, *, clock_ms: Callable[[], int] = _now_ms) -> None:
        self._settings = settings
        self._env = topic_env(settings.env)
        self._clock_ms = clock_ms
        self._events: BaseEvents | None = None
        self._connection = Connection(settings, on_message=self._on_message, on_lost=self._fail_waiters)
        self._queries = Waiters()  # (identity, "health" | "bizs") -> callers of health / query_all_biz
        self._ops = Waiters()  # (identity, command, name, version) -> caller of installBiz / uninstallBiz
        self._batches = Waiters()  # identity -> caller of batch_install_biz
        self._op_locks = KeyedLocks()
        # bases whose arklet answers a baseline with a biz list, not batchInstallBizResponse: twice in a row proves it
        self._batch = BatchSupport(strikes=2, lacks="batchInstallBizResponse (arklet < 1.4.1)")
        self._batch_requested: dict[str, frozenset[tuple[str, str]]] = {}  # identity -> name:version in flight
        self._batch_responders: set[str] = set()  # bases seen answering with batchInstallBizResponse
        self._orders: dict[str, BizListOrder] = {}  # identity -> its biz lists' order (bases this replica commands)
        age_ms = int(settings.mqtt_max_message_age_s * 1000)
        self._order_memory_ms = 2 * age_ms if age_ms > 0 else 120_000

    # --- lifecycle ---------------------------------------------------------------------------------------

    @property
    def client_id(self) -> str:
        return self._connection.client_id

    @property
    def connected(self) -> bool:
        return self._connection.connected

    @property
    def broker(self) -> str:
        return self._connection.broker

    @property
    def last_error(self) -> str | None:
        """Why the last connection attempt failed or the connection was lost; None while connected."""
        return self._connection.last_error

    @property
    def connections(self) -> int:
        """How many times the tunnel connected (and subscribed); tests use it to see a reconnect."""
        return self._connection.connections

    async def start(self, events: BaseEvents) -> None:
        """Start the connection loop; returns once the first attempt ended (connected or not)."""
        self._events = events
        await self._connection.start()

    async def run(self) -> None:
        """The tunnel's root task: lives as long as its connection loop (``Connection.run``)."""
        await self._connection.run()

    async def wait_connected(self, timeout_s: float) -> None:
        """Wait until the tunnel is connected and subscribed (tests, readiness)."""
        await self._connection.wait_connected(timeout_s)

    async def stop(self) -> None:
        await self._connection.stop()
        self._fail_waiters(TunnelError("mqtt tunnel stopped"))

    def _fail_waiters(self, error: TunnelError) -> None:
        # Answers published while we are disconnected are lost (clean session): fail now, not at the timeout.
        for waiters in (self._queries, self._ops, self._batches):
            waiters.fail_all(error)

    # --- what bases send ---------------------------------------------------------------------------------

    def _on_message(self, message: aiomqtt.Message) -> None:
        """Handle one message; nothing a base sends may crash the loop."""
        topic = message.topic.value
        try:
            where = parse_topic(topic, self._env)
            if where is None:
                raise MessageDropped("topic", topic[:120])
            payload = as_bytes(message.payload)
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
            METRICS.heartbeats[result].inc()

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
        self._connection.spawn(self._send_baseline(identity, specs), f"mqtt-baseline {identity}")

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

    async def _listen_to(self, identity: str, timeout_s: float) -> None:
        await self._connection.listen_to(identity, timeout_s)

    async def _publish(self, topic: str, payload: bytes, timeout_s: float) -> None:
        await self._connection.publish(topic, payload, timeout_s)

    def release(self, base: BaseHeartbeat) -> None:
        """This replica no longer commands ``base``: stop receiving its answers."""
        self._orders.pop(base.identity, None)
        self._connection.forget(base.identity)

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
            return await await_answer(self._queries, key, send, timeout_s, f"{command} to {identity}")
        finally:
            if kind == "bizs" and key not in self._queries and identity in self._orders:
                self._orders[identity].not_asking()  # a list that comes now answers nobody: untimed

    async def health(self, base: BaseHeartbeat) -> BaseHealth:
        answer = await _timed("health", self._query(base, "health", KIND_HEALTH), _succeeded)
        if not _succeeded(answer):
            message = answer.get("message") or answer.get("code")
            raise TunnelError(f"health on {base.identity} failed: {str(message)[:200]}")
        try:
            return wire.parse_health(answer.get("data"))
        except wire.WireError as exc:
            raise TunnelError(f"health from {base.identity}: {exc.reason}") from None

    async def query_all_biz(self, base: BaseHeartbeat) -> list[BizInfo]:
        bizs: list[BizInfo] = await _timed("queryAllBiz", self._query(base, "queryAllBiz", "bizs"), lambda _: True)
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
                response = await await_answer(self._ops, key, send, timeout_s,
                                              f"{command} {name}:{version} to {base.identity}")
            return wire.parse_command_result(response)

        return await _timed(command, call(), lambda result: result.ok)

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
                        return await await_answer(self._batches, base.identity, send, timeout_s,
                                                  f"batchInstallBiz to {base.identity}")
                    finally:
                        self._batch_requested.pop(base.identity, None)

            answer = await _timed("batchInstallBiz", call(), _batch_ok)
            if isinstance(answer, Mapping):
                return wire.parse_batch_install_result(answer, urls)
            # twice in a row, never a batchInstallBizResponse: an old arklet
            self._batch.no_batch_answer(base.identity, base.identity)
            return _results_from_bizs(bizs, answer)
        return await install_one_by_one(
            lambda biz: self.install_biz(base, biz, biz_model_version=versions.get(biz.key, "")), bizs)


async def _timed(command: str, call: Awaitable[_T], judge: Callable[[_T], bool]) -> _T:
    """Await one command, observed in ``vkprovider_tunnel_request_seconds`` by outcome."""
    started = time.perf_counter()
    result = "transport_error"
    try:
        answer = await call
        result = "success" if judge(answer) else "failed"
        return answer
    except AnswerTimeout:
        result = "timeout"
        raise
    finally:
        METRICS.requests[command, result].observe(time.perf_counter() - started)


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
