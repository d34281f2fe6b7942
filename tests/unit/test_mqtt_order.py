"""Issue 27, item 4: MQTT biz lists are placed by the base's own publishTimestamp, never by when they arrive.

The pure ordering (``BizListOrder``) as a table, then the tunnel's message path with fake messages and a caller
waiting in ``query_all_biz`` (no broker): a list answers the waiting query only when published after every
command answer delivered before the query was sent; late, unasked and overtaken lists go to ``on_bizs`` (merged
untimed by the sink); a list older than one already taken is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from vkprovider.config import Settings
from vkprovider.core.model import BaseHealth, BaseHeartbeat, BaseMetadata, BizInfo, BizSpec
from vkprovider.tunnels.base import Refusal
from vkprovider.tunnels.mqtt import MqttTunnel
from vkprovider.tunnels.mqtt.answers import BizListOrder, Placement
from vkprovider.tunnels.mqtt.tunnel import MQTT_DROPPED_TOTAL

MEMORY = 120_000


def test_biz_lists_are_placed_by_the_bases_clock() -> None:
    order = BizListOrder(MEMORY)
    now = 1_000_000
    assert order.place(100, now) is Placement.UNTIMED  # nobody asked
    order.answered(200, now)  # an install answered (published at 200)
    order.asking(now)  # then a query is sent
    assert order.place(150, now) is Placement.UNTIMED  # taken before that install: not the query's answer
    assert order.place(120, now) is Placement.STALE  # older than a list already taken
    assert order.place(250, now) is Placement.ANSWER  # after the install: the answer
    assert order.place(260, now) is Placement.UNTIMED  # the query is answered: a second list answers nobody
    order.asking(now)
    order.not_asking()  # its caller gave up (timed out)
    assert order.place(300, now) is Placement.UNTIMED  # the late answer
    order.asking(now)
    assert order.place(300, now) is Placement.ANSWER  # the same stamp again is no older: an answer
    # A base whose clock stepped back: out of order only until its stamps are forgotten.
    assert order.place(10, now + MEMORY) is Placement.STALE
    assert order.place(10, now + MEMORY + 1) is Placement.UNTIMED


# ---------------------------------------------------------------------------------- the tunnel's message path

NOW = 1_700_000_000_000
ENV = "ord"


class Sink:
    def __init__(self) -> None:
        self.pushed: list[list[BizInfo]] = []

    def on_heartbeat(self, heartbeat: BaseHeartbeat, *, authenticated: bool = False) -> Refusal | None:
        return None

    def address_of(self, identity: str) -> str | None:
        return None

    def on_health(self, identity: str, health: BaseHealth) -> None:
        pass

    def on_bizs(self, identity: str, bizs: Sequence[BizInfo]) -> None:
        self.pushed.append(list(bizs))

    def baseline(self, metadata: BaseMetadata) -> list[BizSpec] | None:
        return None


@dataclass
class FakeTopic:
    value: str


@dataclass
class FakeMessage:
    topic: FakeTopic
    payload: bytes
    retain: bool = False


def message(kind: str, data: Any, stamp: int) -> FakeMessage:
    return FakeMessage(FakeTopic(f"koupleless_{ENV}/b-1/base/{kind}"),
                       orjson.dumps({"publishTimestamp": stamp, "data": data}))


def biz_list(*names: str) -> list[dict[str, Any]]:
    return [{"name": name, "version": "1", "state": "activated"} for name in names]


def install_answer(name: str) -> dict[str, Any]:
    return {"command": "installBiz", "bizName": name, "bizVersion": "1",
            "response": {"code": "SUCCESS", "data": {"code": "SUCCESS", "bizInfos": []}}}


@pytest.fixture
def tunnel() -> tuple[MqttTunnel, Sink, list[str]]:
    tunnel = MqttTunnel(Settings(env=ENV, mqtt_enabled=True, arklet_query_timeout_s=0.3), clock_ms=lambda: NOW)
    sink = Sink()
    sent: list[str] = []

    async def listen(identity: str, timeout_s: float) -> None:
        pass

    async def publish(topic: str, payload: bytes, timeout_s: float) -> None:
        sent.append(topic)

    tunnel._events = sink
    tunnel._listen_to = listen  # type: ignore[method-assign]
    tunnel._publish = publish  # type: ignore[method-assign]
    return tunnel, sink, sent


BASE = BaseHeartbeat(BaseMetadata("b-1", "base", "1.0.0", "default"), "127.0.0.1", "h", 1238, tunnel="mqtt")


async def asked(tunnel: MqttTunnel, sent: list[str]) -> asyncio.Task[list[BizInfo]]:
    count = len(sent)
    task = asyncio.create_task(tunnel.query_all_biz(BASE))
    while len(sent) == count:
        await asyncio.sleep(0)
    return task


def waiting(tunnel: MqttTunnel) -> bool:
    """The query_all_biz caller still waits for its answer."""
    return ("b-1", "bizs") in tunnel._queries


def names(bizs: Sequence[BizInfo]) -> list[str]:
    return [b.name for b in bizs]


async def test_a_list_published_before_an_install_answer_does_not_answer_a_later_query(tunnel) -> None:
    mqtt, sink, sent = tunnel
    mqtt._on_message(message("bizOperation", install_answer("b"), NOW - 2000))  # b installed (recorded)
    task = await asked(mqtt, sent)  # queryAllBiz sent after that
    mqtt._on_message(message("simpleBiz", biz_list("a"), NOW - 3000))  # taken before b was installed
    assert waiting(mqtt) and [names(p) for p in sink.pushed] == [["a"]]  # merged untimed, not "read now"
    mqtt._on_message(message("simpleBiz", biz_list("a", "b"), NOW - 1000))
    assert names(await task) == ["a", "b"]


async def test_a_late_answer_goes_to_on_bizs_and_an_older_list_is_dropped(tunnel) -> None:
    mqtt, sink, sent = tunnel
    task = await asked(mqtt, sent)
    with pytest.raises(Exception, match="no answer"):
        await task  # the base is slow: the query times out
    mqtt._on_message(message("simpleBiz", biz_list("a"), NOW - 500))  # its answer, late
    assert [names(p) for p in sink.pushed] == [["a"]]
    stale = MQTT_DROPPED_TOTAL.labels("stale")
    before = stale._value.get()
    mqtt._on_message(message("simpleBiz", biz_list(), NOW - 900))  # published before the one just taken
    assert stale._value.get() == before + 1 and len(sink.pushed) == 1
    task = await asked(mqtt, sent)
    mqtt._on_message(message("simpleBiz", biz_list(), NOW - 800))  # still older: no answer to the new query
    assert waiting(mqtt)
    mqtt._on_message(message("simpleBiz", biz_list("a", "c"), NOW - 100))
    assert names(await task) == ["a", "c"] and len(sink.pushed) == 1
